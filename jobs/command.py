"""The `command` kind: any argv, run as given in the directory and environment captured at submit;
a pipeline stage of this kind can be swept (`{name}` placeholders in `argv`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.queue.spec import SpecError
from workbench.units import parse_duration

# Signals a job may ask to be stopped with (`stop_signal`): those a program can catch, that
# Slurm's `scancel --signal` takes, and that a shell does not set to be ignored in the jobs it
# starts in the background (bash does so for INT and QUIT), as the Slurm batch script does.
STOP_SIGNALS = ("TERM", "HUP", "USR1", "USR2")

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Spec:
    """`argv` is the program and its arguments; `env` adds to the environment captured at submit.
    `keep_leftovers`: processes the command starts may outlive it (by default they are stopped
    when the command's main process exits, as Slurm does). `sweep` is set by a swept stage on
    each of its points ({metric, point, params}); the run records `params` and `metric`.
    `capture`: files or folders (relative to `cwd`) whose TensorBoard, Lightning CSV or Hugging
    Face metric files written while the job runs become its run's metrics (workbench/capture.py).

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
    sweep: dict[str, Any] = field(default_factory=dict)
    capture: list[str] = field(default_factory=list)


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
    folder = Path(cwd) if cwd is not None else base_dir
    capture = [str((folder / os.path.expanduser(p)).resolve()) for p in spec.capture]
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
        sweep=spec.sweep,
        capture=capture,
    )


def _seconds(value: str | float | None, key: str, where: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as error:
        raise SpecError(f"{where}: key '{key}': {error}") from None


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _fill(arg: str, point: dict[str, Any]) -> str:
    return _PLACEHOLDER.sub(lambda m: _text(point[m[1]]) if m[1] in point else m[0], arg)


def expand(table: dict[str, Any], where: str) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
    """A command stage table with a `sweep` -> one table per point: every `{name}` in `argv`
    replaced by the point's value of `name` (other braces are left alone). The sweep must name
    the logged `metric` that picks the best point, and vary only names `argv` uses. Raises
    SpecError naming the key."""
    from jobs.train import parse_sweep, sweep_points

    if "sweep" not in table:
        return [("", table)], None
    sweep = parse_sweep(table["sweep"], where, keys=None)
    if not sweep.metric:
        raise SpecError(
            f"{where}: key 'sweep.metric': a command sweep must name the metric its script logs"
            ' to pick the best point (e.g. "val_accuracy", or "-val_loss" for lower is better)'
        )
    argv = table.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise SpecError(f"{where}: key 'argv': a list of strings")
    used = {name for arg in argv for name in _PLACEHOLDER.findall(arg)}
    for key in sweep.params:
        if key not in used:
            raise SpecError(f"{where}: key 'sweep.{key}': argv has no {{{key}}} placeholder")
    base = {k: v for k, v in table.items() if k != "sweep"}
    out = []
    for point in sweep_points(sweep):
        label = ",".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items()
        )
        filled = [_fill(arg, point) for arg in argv]
        out.append(
            (
                label,
                {
                    **base,
                    "argv": filled,
                    "sweep": {"metric": sweep.metric, "point": label, "params": point},
                },
            )
        )
    return out, sweep
