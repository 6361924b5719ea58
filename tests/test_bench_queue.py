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


@pytest.mark.slow
def test_round1_bench_runs_in_its_tiny_mode(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """bench/queue.py's main figures at 20 and 100 held (issue 25): every row of its three
    tables, the times positive, and no job lost or run twice under its injected faults."""
    before = (ROOT / "bench" / "RESULTS.md").read_text()
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "queue.py"), "--tiny"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (ROOT / "bench" / "RESULTS.md").read_text() == before  # a tiny run records nothing
    rows: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("| "):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows.setdefault(cells[0], cells[1:])
    assert rows["measure"][:2] == ["20 held", "100 held"], result.stdout

    def ms(cell: str) -> float:
        return float(cell.split(" ms")[0])

    for name in ("CLI submit, taken by the daemon (median [IQR])", "submit-to-start", "ls"):
        assert all(0 < ms(cell) < 30_000 for cell in rows[name][:2]), (name, result.stdout)
    rates = rows["16 trivial jobs, parallelism 8"][:2]
    assert all(float(cell.split(" jobs/s")[0]) > 0 for cell in rates), result.stdout
    assert rows["submit at 100 vs 20 held"][-1].endswith("x (goal <= 1.2x)"), result.stdout
    assert "drain 8 vs 32 queued, parallelism 8" in rows, result.stdout
    faults = [
        "daemon kill -9 during 10 short jobs",
        "wrapper kill -9 (job with 6 escaping processes)",
        "cancel of a job with 6 escaping processes",
    ]
    for fault in faults:
        injected, _, lost, twice, left = rows[fault]
        assert int(injected) > 0 and lost.startswith("0") and twice == "0", result.stdout
        assert left in ("-", "0"), result.stdout
    bad = next(cells for name, cells in rows.items() if name.startswith("bad inputs"))
    assert bad[-1] == "tracebacks: 0", result.stdout
