"""Queue benchmarks: CLI submit latency at 200 and 4,000 queued jobs, submit-to-start latency,
throughput of trivial jobs at parallelism 1 and 8, and the daemon's idle CPU, each beside a
baseline measured in the same run. Usage: python bench/queue.py [--quick]"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import median, percentile, table, write_section

from workbench.daemon.client import Client, ensure_daemon
from workbench.daemon.link import lock_holder, wake
from workbench.db.store import JobRequest
from workbench.paths import Home


def trivial(
    name: str, group: str = "default", paused: bool = False, argv: list[str] | None = None
) -> JobRequest:
    argv = argv or ["true"]
    return JobRequest(
        name,
        "command",
        {"argv": argv},
        "/",
        dict(os.environ),
        argv=argv,
        group=group,
        paused=paused,
    )


def timed_runs(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def stop(home: Home) -> None:
    """Stop the home's daemon and delete the home."""
    pid = lock_holder(home)
    if pid and pid > 0:
        os.kill(pid, 15)
        while lock_holder(home):
            time.sleep(0.01)
    shutil.rmtree(home.root, ignore_errors=True)


def bench_submit_latency(runs: int) -> list[list[str]]:
    rows = []
    baseline = timed_runs([sys.executable, "-c", "pass"], dict(os.environ), runs)
    base = median(baseline)
    results = {}
    for queued in (200, 4000):
        root = Path(tempfile.mkdtemp(prefix="wb-bench-"))
        env = {**os.environ, "WORKBENCH_HOME": str(root)}
        home = Home(root).ensure()
        client = Client(home)
        client.store.set_draining(True)  # keep the queue full: nothing starts
        client.store.submit_many([trivial(f"fill-{i}") for i in range(queued)])
        ensure_daemon(home)
        times = timed_runs([sys.executable, "-m", "workbench", "submit", "--", "true"], env, runs)
        results[queued] = median(times)
        rows.append(
            [
                f"CLI submit, {queued} queued",
                f"{median(times) * 1000:.1f} ms",
                f"python -c pass: {base * 1000:.1f} ms",
                f"{median(times) / base:.2f}x",
            ]
        )
        stop(home)
        client.close()
    rows.append(
        [
            "submit at 4,000 vs 200 queued",
            f"{results[4000] * 1000:.1f} ms",
            f"at 200: {results[200] * 1000:.1f} ms",
            f"{results[4000] / results[200]:.2f}x (goal <= 1.2)",
        ]
    )
    return rows


def bench_submit_to_start(samples: int) -> list[list[str]]:
    root = Path(tempfile.mkdtemp(prefix="wb-bench-"))
    home = Home(root).ensure()
    client = Client(home)
    ensure_daemon(home)
    delays = []
    for i in range(samples):
        request = trivial(f"probe-{i}", argv=["date", "+%s.%N"])
        job_id = client.store.submit(request)
        wake(home)
        returned = time.time()
        client.wait([job_id])
        started = float((home.run_dir(job_id) / "log").read_text().strip())
        delays.append(started - returned)
    stop(home)
    client.close()
    return [
        [
            "submit-to-start (median)",
            f"{median(delays) * 1000:.1f} ms",
            "pueue 140 ms, task-spooler 3 ms (published)",
            "goal < 20 ms",
        ],
        ["submit-to-start (p95)", f"{percentile(delays, 95) * 1000:.1f} ms", "", ""],
    ]


def bench_throughput(jobs: int) -> list[list[str]]:
    rows = []
    # Baseline: the same number of `true` processes spawned serially by a bare Python loop.
    start = time.perf_counter()
    for _ in range(jobs):
        subprocess.run(["true"], check=True)
    bare = jobs / (time.perf_counter() - start)
    for parallel in (1, 8):
        root = Path(tempfile.mkdtemp(prefix="wb-bench-"))
        home = Home(root).ensure()
        client = Client(home)
        client.store.set_group("bench", parallel)
        ensure_daemon(home)
        start = time.perf_counter()
        ids = client.submit_many([trivial(f"t{i}", group="bench") for i in range(jobs)])
        client.wait(ids, poll_s=0.01)
        rate = jobs / (time.perf_counter() - start)
        states = client.store.counts_by_state()
        rows.append(
            [
                f"{jobs} trivial jobs, parallelism {parallel}",
                f"{rate:.0f} jobs/s",
                f"bare subprocess loop: {bare:.0f} /s",
                f"{rate / bare:.2f}x" + (" (goal >= 50 jobs/s)" if parallel == 8 else ""),
            ]
        )
        assert states == {"succeeded": jobs}, states
        stop(home)
        client.close()
    return rows


def bench_idle_cpu(seconds: float) -> list[list[str]]:
    root = Path(tempfile.mkdtemp(prefix="wb-bench-"))
    home = Home(root).ensure()
    pid = ensure_daemon(home)
    time.sleep(2)
    proc = psutil.Process(pid)
    before = proc.cpu_times()
    start = time.perf_counter()
    time.sleep(seconds)
    after = proc.cpu_times()
    elapsed = time.perf_counter() - start
    used = (after.user - before.user) + (after.system - before.system)
    stop(home)
    return [
        [
            f"daemon idle CPU over {seconds:.0f} s (1 Hz sampling)",
            f"{used / elapsed * 100:.2f}% of a core",
            "",
            "goal < 0.5%",
        ]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    args = parser.parse_args()
    runs, samples, jobs, idle = (5, 10, 100, 5.0) if args.quick else (20, 50, 500, 30.0)
    rows = [
        *bench_submit_latency(runs),
        *bench_submit_to_start(samples),
        *bench_throughput(jobs),
        *bench_idle_cpu(idle),
    ]
    text = table(["measure", "workbench", "baseline (same run)", "ratio / goal"], rows)
    print(text)
    if not args.quick:
        write_section("queue", "python bench/queue.py", text)


if __name__ == "__main__":
    main()
