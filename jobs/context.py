"""What a job's `run(ctx)` gets: its spec, logging, progress, metrics, artifacts, cancellation,
checkpoint paths and the resources it was granted."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, TypeVar

from workbench import safefs
from workbench.catalog.lake import LakeError, VersionInfo
from workbench.daemon import upstream
from workbench.daemon.runner import FAILURE_FILE
from workbench.db.journal import RecordingStore
from workbench.db.store import Job, Store
from workbench.paths import Home
from workbench.queue.spec import from_table

T = TypeVar("T")


def workbench_source() -> dict[str, str | None]:
    """The workbench that ran this job: its version (`workbench.__version__`) and, when it is
    installed from a git checkout (editable install), the checkout's commit (`git rev-parse
    HEAD`, with "+dirty" when tracked files differ from it); None otherwise."""
    import subprocess

    import workbench

    root = Path(workbench.__file__).resolve().parent.parent
    commit: str | None = None
    if (root / ".git").exists():
        try:
            head = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            dirty = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            if head.returncode == 0 and head.stdout.strip():
                commit = head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"version": workbench.__version__, "git_commit": commit}


def strict_json(value: Any) -> str:
    """`value` as strict JSON (RFC 8259; what `json.loads` with a raising `parse_constant`
    accepts), indented: NaN and infinities anywhere become null (`workbench.jsonout.dumps`),
    NumPy values plain numbers or lists, anything else its text. Every JSON file a job writes
    goes through this; an undefined metric is null with its reason written beside it."""
    import json

    from workbench.jsonout import plain

    return json.dumps(plain(value), indent=2, allow_nan=False, default=str)


class JobFailed(Exception):
    """Raised by a job to fail with a message for the user (no traceback is printed)."""


class Cancelled(Exception):
    """Raised by `ctx.check_cancelled()` once SIGTERM has arrived."""


class JobContext:
    """The job's handle on the workbench, built in the job process from the store."""

    def __init__(self, home: Home, store: Store, job: Job):
        self.home = home
        self.store = store
        self.job = job
        self.run_dir = home.run_dir(job.id)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cancel_requested = False
        self._last_progress = 0.0
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum: int, frame: object) -> None:
        self.cancel_requested = True

    @classmethod
    def from_environment(cls, job_id: int) -> JobContext:
        """The context of job `job_id`. With `WORKBENCH_RECORDS` set (a job on a cluster node,
        where writing state.db is unsafe) writes go to that record file for the daemon to apply,
        and reads see what the job's dependencies left on the shared filesystem even when the
        daemon has not applied it (`workbench.daemon.upstream.catch_up`): the job never needs
        the daemon alive to find its inputs."""
        home = Home.current()
        records = os.environ.get("WORKBENCH_RECORDS")
        if records:

            def catch_up(copy: Store) -> None:
                for note in upstream.catch_up(copy, job_id, home.runs):
                    print(f"[workbench] a dependency's records: {note}", flush=True)

            store: Store = RecordingStore.open_recording(
                home.state_db, Path(records), job_id, catch_up
            )
        else:
            store = Store.open(home.state_db)
        return cls(home, store, store.get(job_id))

    def shared(self, name: str, version: int | None) -> VersionInfo:
        """A version of a dataset another user shares with this one (`OWNER.DATASET`, team
        mode), from the system daemon's records: read from the owner's share folder with
        this job's own rights. Raises LakeError naming it when it is not visible."""
        from workbench.catalog.shared import find
        from workbench.daemon.sharing import RequestError, visible_shares

        try:
            shares = visible_shares()
        except (OSError, RequestError) as error:
            raise LakeError(
                f"{name}: the system daemon did not list shared datasets ({error})"
            ) from None
        return find(shares, name, version)

    def spec(self, cls: type[T]) -> T:
        """The job's spec as the kind's dataclass (it was validated at submit)."""
        return from_table(cls, self.job.spec, f"job {self.job.id}")

    # ---- output ------------------------------------------------------------------------

    def log(self, message: str) -> None:
        """A line in the job's log."""
        print(message, flush=True)

    def progress(
        self, fraction: float | None, message: str | None = None, force: bool = False
    ) -> None:
        """Fraction done (0..1) and a short message; written at most 4 times a second."""
        now = time.monotonic()
        if force or fraction == 1.0 or now - self._last_progress >= 0.25:
            self._last_progress = now
            self.store.set_progress(self.job.id, fraction, message)

    def metrics(self, step: int, values: dict[str, float | None]) -> None:
        """Per-step metrics (loss, accuracy, samples/s...) into the store."""
        self.store.add_metrics(self.job.id, step, values)

    def artifact(self, name: str) -> Path:
        """A path inside the run folder for a file this job produces."""
        path = self.run_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_text(self, name: str, text: str) -> Path:
        """`text` (UTF-8) in the run folder file `name`, written whole under a temporary name
        and renamed (`safefs.write_atomic`): a reader polling it while the job runs (a client
        waiting for `serve.json`, the TUI) sees no file or all of it, never a part. Raises
        OSError (ENOSPC...) and leaves no partial file."""
        path = self.artifact(name)
        safefs.write_atomic(path, text.encode(), mode=0o644)
        return path

    def write_json(self, name: str, value: Any) -> Path:
        """`value` as strict JSON (RFC 8259, `strict_json`) in the run folder file `name`,
        written whole (`write_text`)."""
        return self.write_text(name, strict_json(value))

    @property
    def checkpoint_dir(self) -> Path:
        path = self.run_dir / "checkpoints"
        safefs.make_dir(path)  # a link planted in its place is removed, not followed
        return path

    # ---- control -----------------------------------------------------------------------

    def check_cancelled(self) -> None:
        if self.cancel_requested:
            raise Cancelled("cancelled (SIGTERM)")

    @property
    def gpu_indices(self) -> list[int]:
        """The GPUs granted (as numbered inside CUDA_VISIBLE_DEVICES: 0..n-1)."""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        return list(range(len([v for v in visible.split(",") if v.strip()])))

    @property
    def gpu_mem_cap_bytes(self) -> int | None:
        """GPU memory (bytes per GPU) the scheduler reserved for this job, from
        WORKBENCH_GPU_MEM_BYTES; None when it holds whole GPUs (or none)."""
        raw = os.environ.get("WORKBENCH_GPU_MEM_BYTES", "")
        return int(raw) if raw.isdigit() and int(raw) > 0 else None

    def cap_gpu_memory(self, device_index: int) -> None:
        """GPU pooling: hold this process to the memory it reserved on a shared GPU, so a
        neighbour packed beside it cannot be pushed out of memory by it (torch's caching
        allocator refuses allocations past the fraction). No-op without a cap or CUDA."""
        cap = self.gpu_mem_cap_bytes
        if cap is None:
            return
        import torch

        if not torch.cuda.is_available():
            return
        total = torch.cuda.get_device_properties(device_index).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device_index)
        self.log(f"GPU memory capped at {cap / 1024**3:.1f} GiB of {total / 1024**3:.1f} GiB")

    @property
    def cpus(self) -> int:
        """Threads this job may use: what it asked for, else every core."""
        granted = os.environ.get("WORKBENCH_CPUS")
        return int(granted) if granted else (os.cpu_count() or 1)

    def fail(self, message: str) -> None:
        """Record why the job failed (the daemon shows it as the job's reason)."""
        safefs.write_bytes(self.run_dir / FAILURE_FILE, message.encode(errors="replace"))
        print(f"error: {message}", file=sys.stderr, flush=True)
