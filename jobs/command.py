"""The `command` kind: any argv, run as given in the directory and environment captured at submit."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from workbench.queue.spec import SpecError
from workbench.units import parse_duration

# Signals a job may ask to be stopped with (`stop_signal`): those a program can catch, that
# Slurm's `scancel --signal` takes, and that a shell does not set to be ignored in the jobs it
# starts in the background (bash does so for INT and QUIT), as the Slurm batch script does.
STOP_SIGNALS = ("TERM", "HUP", "USR1", "USR2")


@dataclass(frozen=True)
class Spec:
    """`argv` is the program and its arguments; `env` adds to the environment captured at submit.
    `keep_leftovers`: processes the command starts may outlive it (by default they are stopped
    when the command's main process exits, as Slurm does).

    The stop protocol (README, "Stopping, resuming and reproducing a job"): on cancel, time
    limit and preemption the job gets `stop_signal` (a name of STOP_SIGNALS, default TERM) and
    `kill_grace` (a duration; default `[daemon] kill_grace`) before SIGKILL; `signal_before`
    (a duration) sends `stop_signal` that long before its time limit as a warning.
    `checkpointable`: it saves its state on the stop signal and resumes from
    WORKBENCH_CHECKPOINT_DIR, so it may be preempted and is started again in the same run.
    `snapshot`: run a copy of the working directory's files frozen at submit."""

    argv: list[str]
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    keep_leftovers: bool = False
    stop_signal: str = "TERM"
    kill_grace: str | float | None = None
    signal_before: str | float | None = None
    checkpointable: bool = False
    snapshot: bool | None = None  # None: [submit] snapshot of config.toml


def prepare(spec: Spec, base_dir: Path, where: str) -> Spec:
    if not spec.argv:
        raise SpecError(f"{where}: key 'argv': must not be empty")
    cwd = spec.cwd
    if cwd is not None:
        resolved = (base_dir / cwd).resolve()
        if not resolved.is_dir():
            raise SpecError(f"{where}: key 'cwd': no such directory {resolved}")
        cwd = str(resolved)
    name = spec.stop_signal.strip().upper().removeprefix("SIG")
    if name not in STOP_SIGNALS:
        raise SpecError(
            f"{where}: key 'stop_signal': {spec.stop_signal!r} is not one of"
            f" {', '.join(STOP_SIGNALS)}"
        )
    return Spec(
        argv=spec.argv,
        cwd=cwd,
        env=spec.env,
        keep_leftovers=spec.keep_leftovers,
        stop_signal=name,
        kill_grace=_seconds(spec.kill_grace, "kill_grace", where),
        signal_before=_seconds(spec.signal_before, "signal_before", where),
        checkpointable=spec.checkpointable,
        snapshot=spec.snapshot,
    )


def _seconds(value: str | float | None, key: str, where: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as error:
        raise SpecError(f"{where}: key '{key}': {error}") from None
