"""bench/attacks.py in its tiny mode: every attack once, none works (exit 0), nothing written
to bench/RESULTS.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_attacks_bench_tiny_mode_finds_no_attack_that_works() -> None:
    results = ROOT / "bench" / "RESULTS.md"
    before = results.read_bytes()
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "attacks.py"), "--tiny"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| attack " in done.stdout and "rm killed right after its commit" in done.stdout
    assert results.read_bytes() == before
