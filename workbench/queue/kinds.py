"""The registry of job kinds: the one place to add a kind. Each kind is a module in `jobs/`
exposing `Spec` (a dataclass), optional `prepare(spec, base_dir, where) -> Spec` for checks that
need the file system, optional `DEFAULTS` (resource defaults) and `run(ctx)`. Kind modules must not
import torch or onnxruntime at import time: specs are validated in the CLI."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from workbench.queue.spec import SpecError, from_table, to_table

if TYPE_CHECKING:
    from workbench.db.store import Job

KINDS: dict[str, str] = {
    "command": "jobs.command",
    "ingest": "jobs.ingest",
    "train": "jobs.train",
    "test": "jobs.evaluate",
    "export": "jobs.export",
    "serve": "jobs.serve",
}


def kind_names() -> list[str]:
    return sorted(KINDS)


def load_kind(kind: str, where: str = "spec") -> ModuleType:
    """Import a kind's module (lazily: `workbench` never imports `jobs` at start-up)."""
    if kind not in KINDS:
        raise SpecError(
            f"{where}: key 'kind': unknown kind {kind!r} (known: {', '.join(kind_names())})"
        )
    return importlib.import_module(KINDS[kind])


def validate_spec(kind: str, table: dict[str, Any], base_dir: Path, where: str) -> dict[str, Any]:
    """Check a kind's own keys; returns the spec as a plain dict to store with the job."""
    module = load_kind(kind, where)
    spec = from_table(module.Spec, table, where)
    prepare = getattr(module, "prepare", None)
    if prepare is not None:
        spec = prepare(spec, base_dir, where)
    return to_table(spec)


def kind_defaults(kind: str) -> dict[str, Any]:
    """Resource defaults a kind asks for when the user gives none (e.g. train: cpus)."""
    return dict(getattr(load_kind(kind), "DEFAULTS", {}))


def job_argv(job: Job, python: str) -> list[str]:
    """What the runner executes for a job: the user's argv, or the kind's entry point."""
    if job.kind == "command":
        argv = list(job.argv or job.spec.get("argv") or [])
        capture = job.spec.get("capture") or []
        if capture:  # its metric files followed on its side (workbench/capture.py)
            paths = [word for path in capture for word in ("--path", str(path))]
            return [python, "-P", "-m", "workbench.capture", *paths, "--", *argv]
        return argv
    return [python, "-P", "-m", "jobs", str(job.id)]
