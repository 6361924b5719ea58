"""bench/ingest.py's tiny mode runs every measure end to end on a few thousand rows (a smoke
test: the figures themselves come from a full run, see bench/RESULTS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tiny_bench(*flags: str) -> str:
    """The output of `bench/ingest.py --tiny FLAGS`, after checking that it succeeded and wrote
    nothing to RESULTS.md (a tiny run never does)."""
    results = (ROOT / "bench" / "RESULTS.md").read_bytes()
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ingest.py"), "--tiny", *flags],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (ROOT / "bench" / "RESULTS.md").read_bytes() == results
    return done.stdout


@pytest.mark.slow
def test_bench_ingest_tiny_runs_every_measure(home: object) -> None:
    out = tiny_bench()
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
        assert measure in out, out


@pytest.mark.slow
def test_bench_ingest_core_runs_only_csv_parquet_and_the_fixed_cost(home: object) -> None:
    out = tiny_bench("--core")
    for measure in (
        "ingest 3,000-row CSV",
        "ingest the same rows as Parquet",
        "fixed cost: 1-row CSV",
        "ingest Parquet job: types decided",
    ):
        assert measure in out, out
    for skipped in ("--encrypt", "sampled", "s3://", "NDJSON", "cProfile"):
        assert skipped not in out, out


@pytest.mark.slow
def test_bench_ingest_sql_only_runs_the_sql_measures_alone(home: object) -> None:
    """`--sql-only` (what a change to `workbench sql` is measured with): the sql and Data screen
    rows and their profiles, no ingest, nothing written."""
    out = tiny_bench("--sql-only")
    for measure in (
        "first page (100 rows) of SELECT * over 20,000 rows, Data screen",
        "`workbench sql --json --limit 100`",
        '`workbench sql "SELECT * FROM big"`',
        "`sql` SELECT *, cProfile own time: total",
    ):
        assert measure in out, out
    assert "ingest" not in out
