"""bench/ingest.py's tiny mode runs every measure end to end on a few thousand rows (a smoke
test: the figures themselves come from a full run, see bench/RESULTS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_ingest_tiny_runs_every_measure(home: object) -> None:
    results = (ROOT / "bench" / "RESULTS.md").read_bytes()
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ingest.py"), "--tiny"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for measure in (
        "ingest 3,000-row CSV",
        "ingest the same rows as Parquet",
        "CSV ingest with --encrypt",
        "the same CSV from a http(s) URL on loopback",
        "the same CSV from a s3:// (moto) on loopback",
        "full-scan `workbench sql` over the encrypted version",
        "`workbench sql --json --limit 100`",
        '`workbench sql "SELECT * FROM big"`',
        "ingest CSV job: checked the encoding",
        "`sql` LIMIT 100, cProfile own time: total",
    ):
        assert measure in done.stdout, done.stdout
    assert (ROOT / "bench" / "RESULTS.md").read_bytes() == results  # tiny writes nothing


@pytest.mark.slow
def test_bench_ingest_core_runs_only_csv_parquet_and_the_fixed_cost(home: object) -> None:
    results = (ROOT / "bench" / "RESULTS.md").read_bytes()
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ingest.py"), "--tiny", "--core"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for measure in (
        "ingest 3,000-row CSV",
        "ingest the same rows as Parquet",
        "fixed cost: 1-row CSV",
        "ingest Parquet job: types decided",
    ):
        assert measure in done.stdout, done.stdout
    for skipped in ("--encrypt", "sampled", "s3://", "NDJSON", "cProfile"):
        assert skipped not in done.stdout, done.stdout
    assert (ROOT / "bench" / "RESULTS.md").read_bytes() == results


@pytest.mark.slow
def test_bench_ingest_sql_only_runs_the_sql_measures_alone(home: object) -> None:
    """`--sql-only` (what a change to `workbench sql` is measured with): the sql and Data screen
    rows and their profiles, no ingest, nothing written."""
    results = (ROOT / "bench" / "RESULTS.md").read_bytes()
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ingest.py"), "--tiny", "--sql-only"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for measure in (
        "first page (100 rows) of SELECT * over 20,000 rows, Data screen",
        "`workbench sql --json --limit 100`",
        '`workbench sql "SELECT * FROM big"`',
        "`sql` SELECT *, cProfile own time: total",
    ):
        assert measure in done.stdout, done.stdout
    assert "ingest" not in done.stdout
    assert (ROOT / "bench" / "RESULTS.md").read_bytes() == results
