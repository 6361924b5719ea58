"""Every bench/ script runs in its tiny mode, so none rots unnoticed (bench/export.py crashed
for weeks after `jobs.export.latency` changed). One test function per script; a tiny mode
writes nothing to bench/RESULTS.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
