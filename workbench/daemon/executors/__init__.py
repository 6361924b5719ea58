"""The executor seam: the daemon hands each job to an executor (start, poll, signal, cancel, adopt,
logs) and talks to nothing else about job processes. `local` is the first; a cluster one plugs in
beside it by implementing `Executor`."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from workbench.daemon.runner import ExitStatus


class LaunchError(RuntimeError):
    """A job could not be started; the message is the job's failure reason (it names the cause,
    e.g. the missing working directory)."""


@dataclass(frozen=True)
class Launch:
    """Everything an executor needs to start one attempt of a job.

    `token` is unique per attempt; the daemon stores it with the job (state `starting`) before
    calling `start`, and the executor must leave it where `find` can see it, so that a restarted
    daemon recognises this attempt and never starts a second one. `argv` may hold surrogate-escaped
    bytes (non-UTF-8 arguments) and is run byte-exact. `kill_grace_s` is the time between SIGTERM
    and SIGKILL for cancel, time limit and leftover processes. `keep_leftovers` lets processes a
    job started outlive its main process (the default stops them). `stop_signal` is what cancel,
    time limit and preemption send first (the job's `stop_signal`, default SIGTERM)."""

    job_id: int
    token: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    run_dir: Path
    log_cap_bytes: int
    kill_grace_s: float
    header: str | None = None
    keep_leftovers: bool = False
    mem_bytes: int | None = None  # `--mem`: the job cgroup's memory.max where it can be set
    stop_signal: int = signal.SIGTERM
    # The job's owner in system mode (`Job.uid`): the wrapper becomes this user before it
    # writes anything (`workbench.daemon.runas`); None (a per-user home): the daemon's own.
    uid: int | None = None


@dataclass(frozen=True)
class Handle:
    """How to find a started job again, also after a daemon restart: the daemon persists every
    field. Local: `pid` and `start_time` (seconds since the epoch) are the wrapper's, which
    identifies it against pid reuse. A cluster executor sets `external_id` (e.g. a Slurm job id)
    and may leave `pid` None."""

    token: str
    run_dir: Path
    pid: int | None = None
    start_time: float | None = None
    external_id: str | None = None


@dataclass(frozen=True)
class Ended:
    """A job attempt that is over. `status` is its main process's end and resource use; `lost`
    is set (the reason, in words) when the executor lost the job rather than seeing it end
    (e.g. its wrapper was killed), in which case every process of the job has already been stopped
    and `status` describes the wrapper's end. `stopped` counts processes stopped on the way."""

    handle: Handle
    status: ExitStatus
    lost: str | None = None
    stopped: int = 0
    notes: tuple[str, ...] = field(default=())


class Executor(Protocol):
    """What runs jobs for the daemon. Methods are called from the daemon's single thread and must
    not block for long (no more than a few milliseconds, except `start` of a local job: one fork).
    None of them may raise for a job that has vanished: they report it instead."""

    name: str

    def start(self, launch: Launch) -> Handle:
        """Start the attempt and return its handle (at once; the job runs on its own).
        Raises LaunchError if it cannot start (the message is for the user)."""
        ...

    def start_many(self, launches: list[Launch]) -> list[Handle | Exception]:
        """`start` for several attempts at once (one round trip where the executor can): per
        attempt its Handle, or the LaunchError / OSError `start` would have raised."""
        ...

    def find(self, token: str, run_dir: Path) -> Handle | None:
        """The handle of an attempt started with `token` whose start was never recorded (the
        daemon died between `start` and committing the handle), or None if that attempt never
        began, so it may be started again. Must be certain: None means it does not run."""
        ...

    def adopt(self, handle: Handle) -> bool:
        """True if the attempt behind `handle` is still alive (to be watched again), False if it
        is over (its end is then reported by the next `poll`)."""
        ...

    def watch_fd(self, handle: Handle) -> int | None:
        """A file descriptor that becomes readable when the attempt ends (a pidfd), for the
        daemon's selector; None if the executor can only be polled. The caller closes it."""
        ...

    def poll(self, handles: list[Handle]) -> list[Ended]:
        """The attempts among `handles` that are over, with how they ended. An attempt whose
        processes are gone without a recorded end is reported `lost`, after its remaining
        processes were stopped. Reports each ended handle every time it is asked."""
        ...

    def signal(self, handle: Handle, sig: int) -> int:
        """Send `sig` to every process of the attempt (not to the executor's own wrapper);
        returns how many processes were signalled (0 if none is left)."""
        ...

    def cancel(self, handle: Handle, grace_s: float, why: str | None = None) -> None:
        """Stop the attempt: SIGTERM (and SIGCONT, in case it is paused) to every process now,
        SIGKILL to whatever is left `grace_s` seconds later, enforced by the executor even if
        the daemon dies meanwhile; `why` (cancelled, a time limit, a preemption...) goes into
        the job's log where the executor writes it. Returns at once; the end is reported by
        `poll`."""
        ...

    def stop_all(self, handle: Handle) -> int:
        """SIGKILL every process of the attempt at once (the wrapper included) and return how
        many were found; used when the attempt is lost. Safe to call when nothing is left."""
        ...

    def log_path(self, handle: Handle) -> Path:
        """The file the attempt's output goes to (its previous generation is `log.1`)."""
        ...

    def describe(self) -> str:
        """One line for `daemon status`: the executor and how it contains jobs."""
        ...

    def close(self) -> None:
        """Release what the executor holds (local: its launcher process) when the daemon stops.
        Running jobs are not affected."""
        ...
