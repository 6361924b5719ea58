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
    """--live-run-only at its smallest: a real train job runs while each screen idles 1 s,
    beside btop."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "tui.py"), "--live-run-only", "--idle-seconds",
         "1", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Runs, one run training" in result.stdout and "% of a core" in result.stdout
    assert (
        "Queue, one run training" in result.stdout and "Models, one run training" in result.stdout
    )


@pytest.mark.skipif(not shutil.which("tmux"), reason="tmux is needed (installed by .ci/setup)")
def test_bench_tui_runs_open_tiny() -> None:
    """--runs-open-only --tiny: the Runs screen opens over 5 runs of 200 points beside btop."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "tui.py"), "--runs-open-only", "--tiny"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Runs, 5 runs x 200 points: key to rows" in result.stdout and " ms (" in result.stdout
