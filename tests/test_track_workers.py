"""Points logged in multiprocessing workers (what a PyTorch DataLoader's workers are)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

WORKERS = textwrap.dedent(
    """
    import multiprocessing
    import workbench.track as wt

    def work(k):
        for step in range(10):
            wt.log({f"worker{k}": 1.0}, step=step)

    if __name__ == "__main__":
        wt.log({"parent": 1.0}, step=0)
        context = multiprocessing.get_context("fork")
        workers = [context.Process(target=work, args=(k,)) for k in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    """
)


def test_a_forked_multiprocessing_worker_writes_its_points_when_it_ends(tmp_path: Path) -> None:
    """Before: a worker ends with os._exit, so the atexit flush never ran and every point it
    logged in its last FLUSH_INTERVAL_S (here all 20) was lost though nothing was killed."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    script = tmp_path / "job.py"
    script.write_text(WORKERS)
    env = {**os.environ, "WORKBENCH_JOB_ID": "1", "WORKBENCH_RUN_DIR": str(run_dir)}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    names = sorted(name for line in lines for name in json.loads(line)["values"])
    assert names == ["parent"] + ["worker0"] * 10 + ["worker1"] * 10


def test_a_step_past_64_bits_is_refused_with_one_warning(tmp_path: Path) -> None:
    """Before: written to the records file, where the daemon could not store it (it skips the
    line now, but the script was never told)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    script = tmp_path / "job.py"
    script.write_text(
        "import workbench.track as wt\n"
        "wt.log({'loss': 1.0}, step=2**64)\n"
        "wt.log({'loss': 1.0}, step=float(2**70))\n"
        "wt.log({'loss': 0.5}, step=3)\n"
    )
    env = {**os.environ, "WORKBENCH_JOB_ID": "1", "WORKBENCH_RUN_DIR": str(run_dir)}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("past 64 bits") == 1
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [3]
