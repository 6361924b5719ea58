"""bench/attacks.py in its tiny mode: every attack once, none works (exit 0), nothing written
to bench/RESULTS.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# One pytest-xdist worker runs these with the team tests (`--dist loadgroup`): Unix users.
pytestmark = pytest.mark.xdist_group("unix-users")

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


@pytest.mark.slow
def test_team_attacks_tiny_mode_gains_nothing() -> None:
    """`attacks.py --team --tiny`: every team-mode attack once as a second user against a real
    system daemon: privilege gained 0, other users' data read 0, the daemon still serving
    (exit 0); nothing written to bench/RESULTS.md. Needs root (it adds users): skipped
    otherwise, and a failure under CI=1, as the team mode tests."""
    import os

    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the team-mode attacks cannot run in CI without root")
        pytest.skip("the team-mode attacks add Unix users: run as root")
    results = ROOT / "bench" / "RESULTS.md"
    before = results.read_bytes()
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "attacks.py"), "--team", "--tiny"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Privilege gained 0, other users' data read 0" in done.stdout
    assert results.read_bytes() == before
