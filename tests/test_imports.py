"""Layering and start-up: the core never imports Textual; the CLI and TUI never import torch or
onnxruntime at start-up (checked in a fresh interpreter, as harlequin does)."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import workbench


def modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


HEAVY = {"torch", "onnxruntime", "onnx"}


def test_core_never_imports_textual_or_the_other_packages() -> None:
    names = [
        m.name
        for m in pkgutil.walk_packages(workbench.__path__, "workbench.")
        if not m.name.endswith("__main__")
    ]
    assert "workbench.cli.main" in names and "workbench.db.store" in names
    loaded = modules_after("\n".join(f"import {name}" for name in names))
    assert not {m for m in loaded if m.split(".")[0] in {"textual", "screens", "jobs"}}
    assert not loaded & HEAVY


def test_cli_start_with_every_command_registered_imports_no_ml_runtime() -> None:
    loaded = modules_after("from workbench.cli.main import build_parser\nbuild_parser()")
    assert not loaded & HEAVY


def test_validating_every_kind_imports_no_ml_runtime() -> None:
    loaded = modules_after(
        "from workbench.queue.kinds import KINDS, load_kind\nfor kind in KINDS: load_kind(kind)"
    )
    assert not loaded & HEAVY


def test_tui_start_imports_no_ml_runtime() -> None:
    loaded = modules_after("import screens.app")
    assert "textual" in loaded
    assert not loaded & HEAVY


def test_tracking_api_imports_the_standard_library_only() -> None:
    """`import workbench.track` in a training script costs no store, DuckDB, torch or Textual."""
    bare = modules_after("")  # what the interpreter itself loads (site hooks included)
    loaded = modules_after("import workbench.track")
    outside = {m.split(".")[0] for m in loaded - bare} - set(sys.stdlib_module_names)
    assert outside == {"workbench"}
    assert {m for m in loaded if m.startswith("workbench.")} == {"workbench.track"}
    assert "sqlite3" not in loaded
