"""The stop protocol of a job, as the daemon and its executors carry it out (README, "Stopping,
resuming and reproducing a job"): which signal stops it, how long it has before SIGKILL, whether
it is warned before its time limit, whether it may be preempted and restarted from its
checkpoint folder; and the files and environment variables that tell the job about it.

The contract with the job (every executor sets these in its environment):
- WORKBENCH_STOP_FILE: a path that exists once the daemon has asked the job to stop; its text is
  the reason. It is written before the job is signalled.
- WORKBENCH_CHECKPOINT_DIR: a folder kept across the restarts of the same job.
- WORKBENCH_RESTARTS: how many earlier starts this job had (0 on its first)."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from workbench import safefs

if TYPE_CHECKING:
    from workbench.db.store import Job, JobRequest

STOP_FILE = "stop"  # in the run folder; removed at every start
CHECKPOINT_DIR = "checkpoints"  # in the run folder; kept across restarts
NOT_CHECKPOINTABLE = "is not checkpointable, so it is not preempted"


@dataclass(frozen=True)
class StopPolicy:
    """How one job is stopped. `signal` is the stop signal's number, `grace_s` the seconds
    between it and SIGKILL, `warn_before_s` how long before the time limit the stop signal is
    sent as a warning (None: no warning), `checkpointable` whether the job resumes from its
    checkpoint folder after a preemption (a command job says so; the built-in train kind
    always does)."""

    signal: int = signal.SIGTERM
    grace_s: float = 10.0
    warn_before_s: float | None = None
    checkpointable: bool = False

    @property
    def signal_name(self) -> str:
        """`TERM`, `USR1`...: the name Slurm's `--signal` and bash's `kill -s` take."""
        return signal.Signals(self.signal).name.removeprefix("SIG")


def policy_for(job: Job | JobRequest, default_grace_s: float) -> StopPolicy:
    """The stop policy of `job`: a command job's spec keys (`stop_signal`, `kill_grace`,
    `signal_before`, `checkpointable`, checked at submit by `jobs.command.prepare`), else
    SIGTERM and the configured grace; the built-in train kind is checkpointable. A value the
    store holds that is not valid (an older row) falls back to the default."""
    spec: dict[str, object] = job.spec if isinstance(job.spec, dict) else {}
    if job.kind != "command":
        return StopPolicy(grace_s=default_grace_s, checkpointable=job.kind == "train")
    try:
        number = signal.Signals[f"SIG{spec.get('stop_signal') or 'TERM'!s}"].value
    except KeyError:
        number = signal.SIGTERM
    grace = _positive(spec.get("kill_grace"))
    warn = _positive(spec.get("signal_before"))
    return StopPolicy(
        number,
        grace if grace is not None else default_grace_s,
        warn,
        bool(spec.get("checkpointable", False)),
    )


def _positive(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def warn_at(policy: StopPolicy, deadline: float | None, warned: bool) -> float | None:
    """When a job whose time limit ends at `deadline` (epoch seconds) is warned of it: its
    `signal_before` ahead of the limit; None when it asks for no warning, has no limit, or was
    warned already."""
    if policy.warn_before_s is None or deadline is None or warned:
        return None
    return deadline - policy.warn_before_s


def kept_because(job: Job | JobRequest) -> str | None:
    """Why a job that may not be preempted is kept, in the words the scheduler's wait reason
    uses ("job 7 (group g) borrows beyond its group's quota and ..."); None for the general
    "opted out of preemption"."""
    if job.kind == "command" and not job.preemptible and not job.spec.get("checkpointable"):
        return NOT_CHECKPOINTABLE
    return None


def write_stop(run_dir: Path, why: str) -> None:
    """Write the stop file (atomically: a job that sees it reads the whole reason). Best effort:
    a folder that is gone or full must not keep the daemon from signalling."""
    try:  # through the folder's descriptor, following no link
        safefs.write_atomic(run_dir / STOP_FILE, (" ".join(why.split()) + "\n").encode())
    except OSError:
        pass


def clear_stop(run_dir: Path) -> None:
    """Remove an earlier start's stop file (a new start has not been asked to stop)."""
    try:
        safefs.unlink(run_dir / STOP_FILE)
    except OSError:
        pass


def contract_env(run_dir: Path, restarts: int) -> dict[str, str]:
    """The stop protocol's variables for a job's environment (see the module's docstring). The
    checkpoint folder is made on the job's side once its run folder is (the local wrapper's
    `_prepare`, the Slurm batch script), never here: the daemon writes nothing into a run
    folder that a link may still stand in for."""
    checkpoints = run_dir / CHECKPOINT_DIR
    return {
        "WORKBENCH_CHECKPOINT_DIR": str(checkpoints),
        "WORKBENCH_RESTARTS": str(restarts),
        "WORKBENCH_STOP_FILE": str(run_dir / STOP_FILE),
    }


def restart_marker(restarts: int, run_dir: Path) -> str:
    """The line a restarted job's log gets (its earlier output is in the same log)."""
    return (
        f"restart {restarts}: the same run, resuming from its checkpoint folder"
        f" {run_dir / CHECKPOINT_DIR}"
    )
