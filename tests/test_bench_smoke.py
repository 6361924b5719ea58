"""Every bench/ script runs in its tiny mode, so none rots unnoticed (bench/export.py crashed
for weeks after `jobs.export.latency` changed). One test function per script; a tiny mode
writes nothing to bench/RESULTS.md."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench(script: str, *args: str, timeout: float = 300) -> str:
    before = (ROOT / "bench" / "RESULTS.md").read_text()
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert (ROOT / "bench" / "RESULTS.md").read_text() == before  # tiny modes record nothing
    return result.stdout


def test_bench_export_tiny() -> None:
    out = _bench("export.py", "--tiny")
    assert "linear, batch 256" in out and "p10-p90" in out and "2 intra-op threads" in out


def test_bench_defaults_tiny() -> None:
    out = _bench("defaults.py", "--tiny")
    assert "| iris" in out and "| diabetes" in out and "sklearn baseline" in out


def test_bench_serve_tiny() -> None:
    out = _bench("serve.py", "--tiny")
    assert "| mlp" in out and "HTTP rows/s" in out and "in-process" in out


def _rows(out: str) -> dict[str, list[str]]:
    """The Markdown table rows in `out`, keyed by their first cell; where several tables have a
    row of that name, the first one's."""
    rows: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.startswith("| "):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows.setdefault(cells[0], cells[1:])
    return rows


def _number(cell: str) -> float:
    """The first number in a cell (`72,791`, `2.51 s`, `0.96x, range ...`)."""
    match = re.search(r"-?\d[\d,]*(?:\.\d+)?", cell)
    assert match, cell
    return float(match.group().replace(",", ""))


def test_bench_train_tiny() -> None:
    out = _bench("train.py", "--tiny")
    rows = _rows(out)
    job, bare, ratio = rows["train job samples/s, 1 thread(s) (median)"]
    assert _number(job) > 100 and _number(bare.removesuffix(" (bare loop)")) > 100, out
    # the ratio is the job's rate over the bare loop's, as printed (to rounding)
    assert _number(ratio) == pytest.approx(_number(job) / _number(bare), abs=0.01), out
    first_step, _, span = rows["job start -> first step, 1 thread(s) (median)"]
    assert 0 < _number(first_step) < 120 and f"range {first_step[:-2]}-{first_step}" in span, out
    assert "over 1 rounds" in ratio and "digits tiled x1 (1797 rows" in out and "1 epochs" in out


def test_bench_store_tiny() -> None:
    out = _bench("store.py", "--tiny")
    rows = _rows(out)
    for size in ("20 jobs", "200 jobs"):
        for command in ("`ls`", "`ls --json`", "`ls --all --json`", "`submit`"):
            took, base, ratio = rows[f"{command}, {size}"]
            assert 0 < _number(took) < 30_000 and 0 < _number(base.split(":")[1]) < 30_000, out
            assert _number(ratio) == pytest.approx(
                _number(took) / _number(base.split(":")[1]), rel=0.1
            ), out  # one repeat: the ratio is of the two times printed (rounded to ms)
        assert 0 < _number(rows[f"open + quick_check, {size}"][0]) < 5_000, out
    small = _number(rows["open + quick_check, 20 jobs"][1].removeprefix("state.db"))
    large = _number(rows["open + quick_check, 200 jobs"][1].removeprefix("state.db"))
    assert 0 < small < large, out  # ten times the jobs: a bigger file
    assert "submit at 200 vs 20 jobs" in rows and "held" not in out.split("\n\n")[0]


def test_bench_scheduler_tiny() -> None:
    out = _bench("scheduler.py", "--tiny")
    rows = _rows(out)
    for policy in ("ours", "FIFO first-fit", "task-spooler"):
        util, useful, idle, *_ = rows[policy]
        assert 10 < _number(util) <= 100 and 0 < _number(useful) <= _number(util), out
        assert 0 <= _number(idle) < 100, out
    # the model's point: a free-memory test double-books GPUs, ours and FIFO reserve memory
    assert _number(rows["task-spooler"][-2]) > 0, out
    assert _number(rows["ours"][-2]) == 0 and _number(rows["FIFO first-fit"][-2]) == 0, out
    assert _number(rows["FIFO first-fit"][-1]) == 0, out  # FIFO never preempts
    assert 20 <= _number(rows["0"][0]) <= 60, out  # seed 0 of the --quick day offers ~40%
    passes = re.search(r"wall-clock fastest ([\d.]+) ms, median ([\d.]+) ms", out)
    assert passes and 0 < float(passes[1]) <= float(passes[2]) < 1_000, out
    assert "(1 seeds;" in out and "2 interleaved repeats" in out
