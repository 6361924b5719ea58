"""The `command` kind: any argv, run as given in the directory and environment captured at submit."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from workbench.queue.spec import SpecError


@dataclass(frozen=True)
class Spec:
    """`argv` is the program and its arguments; `env` adds to the environment captured at submit.
    `keep_leftovers`: processes the command starts may outlive it (by default they are stopped
    when the command's main process exits, as Slurm does)."""

    argv: list[str]
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    keep_leftovers: bool = False


def prepare(spec: Spec, base_dir: Path, where: str) -> Spec:
    if not spec.argv:
        raise SpecError(f"{where}: key 'argv': must not be empty")
    cwd = spec.cwd
    if cwd is not None:
        resolved = (base_dir / cwd).resolve()
        if not resolved.is_dir():
            raise SpecError(f"{where}: key 'cwd': no such directory {resolved}")
        cwd = str(resolved)
    return Spec(argv=spec.argv, cwd=cwd, env=spec.env, keep_leftovers=spec.keep_leftovers)
