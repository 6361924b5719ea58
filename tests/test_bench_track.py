"""bench/track.py in its tiny mode: every part runs (log beside CSV, store growth, runs --json,
the Runs screen) and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_track_bench_tiny_mode_runs_every_part() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "track.py"), "--tiny"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for part in ("`log` calls of 10 metrics", "per million points", "`runs --json`",
                 "Runs screen", "% of a core"):  # fmt: skip
        assert part in result.stdout
