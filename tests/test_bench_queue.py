"""Smoke test of bench/queue.py's round-2 figures at a tiny size (the benchmark runs, and its
table has every row); the real sizes are run by hand (bench/RESULTS.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_round2_bench_runs_in_its_tiny_mode(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "queue.py"), "--round2", "--tiny"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "jobs waiting on a held one" in result.stdout
