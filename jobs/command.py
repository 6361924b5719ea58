"""The `command` kind: any argv, run as given in the directory and environment captured at submit;
a pipeline stage of this kind can be swept (`{name}` placeholders in `argv`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.queue.spec import SpecError

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Spec:
    """`argv` is the program and its arguments; `env` adds to the environment captured at submit.
    `keep_leftovers`: processes the command starts may outlive it (by default they are stopped
    when the command's main process exits, as Slurm does). `sweep` is set by a swept stage on
    each of its points ({metric, point, params}); the run records `params` and `metric`.
    `capture`: files or folders (relative to `cwd`) whose TensorBoard, Lightning CSV or Hugging
    Face metric files written while the job runs become its run's metrics (workbench/capture.py)."""

    argv: list[str]
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    keep_leftovers: bool = False
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
    folder = Path(cwd) if cwd is not None else base_dir
    capture = [str((folder / os.path.expanduser(p)).resolve()) for p in spec.capture]
    return Spec(
        argv=spec.argv,
        cwd=cwd,
        env=spec.env,
        keep_leftovers=spec.keep_leftovers,
        sweep=spec.sweep,
        capture=capture,
    )


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
