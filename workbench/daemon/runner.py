"""What a job's run folder records about its process: the wrapper's identity and launch token, the
exit status with its resource use, and a job's own failure message; plus process identity checks."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench import safefs
from workbench.jobmodel.resources import OOM_AT_MEM, OVER_MEM

EXIT_FILE = "exit.json"
WRAPPER_FILE = "wrapper.json"  # {"token", "pid", "start_time"}: written by the wrapper first
LOG_FILE = "log"
FAILURE_FILE = "failure"  # a job may write why it failed here; it becomes the job's reason
TOKEN_ENV = "WORKBENCH_LAUNCH_TOKEN"  # in every job process's environment


@dataclass(frozen=True)
class ExitStatus:
    """How a job's main process ended (a code, or the signal that killed it), and what the job
    used: `cpu_s` CPU seconds (user + system) of all its processes, `peak_mem_bytes` its peak
    memory (the cgroup's peak where there is one, else the largest process's peak RSS),
    `leftovers` how many processes were still running when the main process exited, and where
    each usage figure came from (`cpu_source`, `peak_mem_source`: USAGE_SOURCES or None).
    `oom_kills`: processes the kernel's OOM killer killed in the job's cgroup (memory.events),
    `mem_enforced`: whether its `--mem` was the cgroup's memory.max."""

    exit_code: int | None
    signal: int | None
    ended_at: float
    cpu_s: float | None = None
    peak_mem_bytes: int | None = None
    leftovers: int = 0
    cpu_source: str | None = None
    peak_mem_source: str | None = None
    oom_kills: int = 0
    mem_enforced: bool = False

    @property
    def ok(self) -> bool:
        """Exited with code 0."""
        return self.exit_code == 0

    def describe(self) -> str:
        """`exited with code N` or `killed by SIGNAME`."""
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = str(self.signal)
            return f"killed by {name}"
        return f"exited with code {self.exit_code}"

    @property
    def code(self) -> int:
        """A shell-style code: the exit code, or 128 + signal."""
        if self.signal is not None:
            return 128 + self.signal
        return self.exit_code if self.exit_code is not None else 1

    def to_json(self) -> dict[str, Any]:
        """The record exit.json holds (plus the launch token, added by `write_exit`)."""
        return {
            "exit_code": self.exit_code,
            "signal": self.signal,
            "ended_at": self.ended_at,
            "cpu_s": self.cpu_s,
            "peak_mem_bytes": self.peak_mem_bytes,
            "leftovers": self.leftovers,
            "cpu_source": self.cpu_source,
            "peak_mem_source": self.peak_mem_source,
            "oom_kills": self.oom_kills,
            "mem_enforced": self.mem_enforced,
        }

    def usage_columns(self) -> dict[str, Any]:
        """The store's usage columns for this end (`workbench.db.store.Job`): CPU seconds, peak
        memory bytes and their sources; a figure without a value has no source either."""
        return {
            "cpu_s": self.cpu_s,
            "cpu_source": self.cpu_source if self.cpu_s is not None else None,
            "peak_mem_bytes": self.peak_mem_bytes,
            "peak_mem_source": self.peak_mem_source if self.peak_mem_bytes is not None else None,
        }


def status_from_wait(wait_status: int) -> ExitStatus:
    """An ExitStatus from a `waitpid` status word."""
    if os.WIFSIGNALED(wait_status):
        return ExitStatus(None, os.WTERMSIG(wait_status), time.time())
    return ExitStatus(os.waitstatus_to_exitcode(wait_status), None, time.time())


def write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    """Write `value` as JSON under a temporary name, then rename: readers never see half a file.
    Follows no link at `path` or its folder (`workbench.safefs`). Raises OSError (e.g. ENOSPC,
    ELOOP) and leaves no partial file behind."""
    safefs.write_atomic(path, json.dumps(value).encode())


def _read_json(path: Path) -> Any:
    """The JSON in the run-folder file `path`, read without following a link; raises OSError
    or ValueError."""
    return json.loads(safefs.read_bytes(path, _RECORD_LIMIT))


_RECORD_LIMIT = 1 << 20  # a record is a few hundred bytes; a larger file is not one of ours


def write_exit(run_dir: Path, status: ExitStatus, token: str) -> None:
    """Record how the attempt with launch `token` ended (atomically; raises OSError if it cannot
    be written)."""
    write_json_atomic(run_dir / EXIT_FILE, {**status.to_json(), "token": token})


def memory_note(limit_bytes: int | None, status: ExitStatus) -> str:
    """What an ended attempt's reason says of its memory against its `--mem` (`limit_bytes`):
    that the OOM killer stopped it at the cgroup's memory.max, or, where the limit could not be
    enforced (no cgroup v2 memory controller), that its peak went over it; else ""."""
    from workbench.units import format_size

    if not limit_bytes:
        return ""
    if status.oom_kills and status.mem_enforced:
        count = status.oom_kills
        return (
            f"; {OOM_AT_MEM}: the OOM killer stopped {count} process{'es' if count != 1 else ''}"
            f" at its --mem limit of {format_size(limit_bytes)}"
        )
    peak = status.peak_mem_bytes
    if not status.mem_enforced and peak is not None and peak > limit_bytes:
        return (
            f"; {OVER_MEM}: peak {format_size(peak)} of {format_size(limit_bytes)} (not"
            " enforced: no cgroup v2 memory controller)"
        )
    return ""


def read_exit(run_dir: Path, token: str | None = None) -> ExitStatus | None:
    """The status the wrapper recorded, or None if it never did (it was killed or is running).
    With `token`, a record left by another attempt counts as none."""
    try:
        data = _read_json(run_dir / EXIT_FILE)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if token is not None and data.get("token") not in (None, token):
        return None
    cpu_s, peak = _usage(data)
    return ExitStatus(
        data.get("exit_code"),
        data.get("signal"),
        float(data.get("ended_at", 0)),
        cpu_s,
        peak,
        int(data.get("leftovers") or 0),
        _source(data.get("cpu_source")),
        _source(data.get("peak_mem_source")),
        int(data.get("oom_kills") or 0) if isinstance(data.get("oom_kills"), int) else 0,
        data.get("mem_enforced") is True,
    )


USAGE_SOURCES = ("cgroup", "rusage")  # the job's cgroup v2 files, or getrusage(RUSAGE_CHILDREN)


def _source(value: Any) -> str | None:
    return value if value in USAGE_SOURCES else None


def _usage(data: dict[str, Any]) -> tuple[float | None, int | None]:
    """(cpu_s, peak_mem_bytes) of an exit record, each None unless a finite number >= 0."""

    def number(key: str) -> float | None:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        try:
            as_float = float(value)
        except OverflowError:  # an integer too large for a float
            return None
        return as_float if math.isfinite(as_float) and as_float >= 0 else None

    cpu_s = number("cpu_s")
    peak = number("peak_mem_bytes")
    return cpu_s, None if peak is None else int(peak)


def read_usage(run_dir: Path) -> tuple[float | None, int | None]:
    """What the job's last attempt used, as its `exit.json` records it: (CPU seconds, peak
    memory in bytes). Either is None where the record lacks it: no file (never ran, or still
    running), a partial or unreadable file, or a value that is not a finite number >= 0."""
    try:
        data = _read_json(run_dir / EXIT_FILE)
    except (OSError, ValueError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    return _usage(data)


@dataclass(frozen=True)
class WrapperRecord:
    """Who runs a job: the wrapper's pid and start time, the launch token it was given, and the
    `CUDA_VISIBLE_DEVICES` it was launched with (GPU indices or MIG instance UUIDs; None: unset)."""

    token: str
    pid: int
    start_time: float | None
    devices: str | None = None


def write_wrapper(run_dir: Path, record: WrapperRecord) -> None:
    """Write `wrapper.json` atomically (raises OSError when it cannot)."""
    write_json_atomic(
        run_dir / WRAPPER_FILE,
        {
            "token": record.token,
            "pid": record.pid,
            "start_time": record.start_time,
            "devices": record.devices,
        },
    )


def read_wrapper(run_dir: Path) -> WrapperRecord | None:
    """The wrapper record of a run folder, None if there is none (or it is unreadable)."""
    try:
        data = _read_json(run_dir / WRAPPER_FILE)
        devices = data.get("devices")
        return WrapperRecord(
            str(data["token"]),
            int(data["pid"]),
            data.get("start_time"),
            devices if isinstance(devices, str) else None,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_failure(run_dir: Path) -> str | None:
    """The message a job left in its run folder about why it failed, if any."""
    try:
        text = safefs.read_bytes(run_dir / FAILURE_FILE, 4096).decode(errors="replace").strip()
    except OSError:
        return None
    return text[:500] or None


def _boot_time() -> float:
    """When the system booted (`btime` in /proc/stat, as psutil reads it), cached."""
    if not _BOOT_TIME:
        with open("/proc/stat", "rb") as stat:
            for line in stat:
                if line.startswith(b"btime"):
                    _BOOT_TIME.append(float(line.split()[1]))
                    break
    return _BOOT_TIME[0]


_BOOT_TIME: list[float] = []
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_start_time(pid: int) -> float | None:
    """Start time of a live process (seconds since the epoch, to 1/100 s: the kernel's clock
    ticks, as psutil computes it), None if it is gone or a zombie. Reads /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return round(_boot_time() + int(fields[19]) / _CLOCK_TICKS, 2)


def same_process(pid: int, start_time: float | None) -> bool:
    """True if `pid` is alive and is the process that started at `start_time` (not a reused pid)."""
    now_start = process_start_time(pid)
    return now_start is not None and start_time is not None and abs(now_start - start_time) < 0.05
