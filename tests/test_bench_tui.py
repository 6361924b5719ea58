"""bench/tui.py's tiny mode: first text in a real terminal (tmux) beside btop's, one run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not shutil.which("tmux"), reason="tmux is needed (installed by .ci/setup)")
def test_bench_tui_tiny() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "tui.py"), "--tiny"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "workbench, daemon running" in result.stdout and "btop" in result.stdout
    assert "its first frame" in result.stdout


@pytest.mark.skipif(not shutil.which("tmux"), reason="tmux is needed (installed by .ci/setup)")
def test_bench_tui_live_run_tiny() -> None:
    """--live-run-only at its smallest: a real train job runs while the Runs screen idles 1 s."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "tui.py"), "--live-run-only", "--idle-seconds",
         "1", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Runs, one run training" in result.stdout and "% of a core" in result.stdout
