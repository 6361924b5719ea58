"""Smoke test of the team week (bench/scheduler.py --week, bench/week.py) in its tiny mode: one
seeded day through the real pure planning function with shares, FIFO and a static split."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_team_week_runs_in_its_tiny_mode() -> None:
    before = (ROOT / "bench" / "RESULTS.md").read_text()
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scheduler.py"), "--week", "--tiny"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    rows = {
        cells[0]: cells[1:]
        for line in out.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| -")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    shares, fifo, static = rows["shares"], rows["FIFO"], rows["static split"]
    assert 0 < float(fifo[0]) <= 100 and float(static[0]) < float(fifo[0])
    assert float(shares[1]) >= 0.95 > float(fifo[1])  # fairness: shares fair, FIFO not
    assert float(shares[2]) < float(fifo[2])  # the longest spell below the deserved quota
    assert int(fifo[3]) == 0 and int(static[3]) == 0  # only shares preempt
    assert "utilisation within 2 points of FIFO" in out.stdout
    assert (ROOT / "bench" / "RESULTS.md").read_text() == before  # a tiny run records nothing
