"""Store and CLI at scale: `workbench ls` (text, `--json`, `--all --json`), a CLI submit, opening
the store with its integrity check, and the file's size, at 200, 5,000 and 20,000 jobs in the
store; `python -c pass` measured interleaved in the same run as the baseline.

Each store holds 5% active jobs (queued) and 95% ended ones, every job with a realistic captured
environment; one more holds 20,000 held jobs (all active, as bench/queue.py fills its queue).
Usage: python bench/store.py [--quick] [--repeat N] [--tiny]"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.append(str(HERE))
from _results import median, table, write_section  # noqa: E402

from workbench.db.store import Event, JobRequest, Store  # noqa: E402

SIZES = (200, 5_000, 20_000)
TINY = (20, 200)  # --tiny: the smoke test's sizes
HELD = 20_000  # the extra store: every job held (active), as bench/queue.py fills its queue


def fill(root: Path, jobs: int, held: bool = False) -> None:
    """A home with `jobs` jobs: 5% queued, the rest succeeded (`held`: all held); each with a
    captured env."""
    (root / "lake").mkdir()
    (root / "runs").mkdir()
    store = Store.open(root / "state.db")
    env = dict(os.environ)
    env.update({f"PROJECT_SETTING_{i}": "x" * 40 for i in range(20)})
    requests = [
        JobRequest(
            f"job {i}", "command", {"argv": ["true"]}, "/tmp", env, argv=["true"], paused=held
        )
        for i in range(jobs)
    ]
    ids = store.submit_many(requests)
    ended = [] if held else ids[: int(jobs * 0.95)]
    for job_id in ended:
        store.transition(job_id, Event.START, "starting")
        store.transition(job_id, Event.LAUNCHED, "started", pid=1)
        store.transition(job_id, Event.EXIT_OK, "exited with code 0", exit_code=0)
    store.close()


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def spread(ratios: list[float]) -> str:
    return f"{median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 and 5,000 jobs, 3 repeats")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke test: 20 and 200 jobs, 1 repeat, no held store; RESULTS.md untouched",
    )
    args = parser.parse_args()
    sizes: list[int | str] = list(TINY if args.tiny else SIZES[:2] if args.quick else SIZES)
    if not (args.quick or args.tiny):
        sizes.append("held")
    repeat = 1 if args.tiny else 3 if args.quick else args.repeat
    python = sys.executable
    rows: list[list[str]] = []
    submits: dict[int | str, float] = {}
    roots = {size: Path(tempfile.mkdtemp(prefix="wb-bench-", dir="/tmp")) for size in sizes}
    wb = [python, "-m", "workbench"]
    envs = {size: {**os.environ, "WORKBENCH_HOME": str(root)} for size, root in roots.items()}
    names = ("pass", "ls", "ls --json", "ls --all --json", "submit", "open")
    samples = {size: {k: [] for k in names} for size in sizes}
    label = {size: f"{HELD:,} held" if size == "held" else f"{size:,} jobs" for size in sizes}
    try:
        for size, root in roots.items():
            if size == "held":
                fill(root, HELD, held=True)
            else:
                assert isinstance(size, int)
                fill(root, size)
            for action in ("drain", "start"):
                subprocess.run(
                    [*wb, "daemon", action], env=envs[size], check=True, capture_output=True
                )
        # Interleaved: each round measures every command at every size, so a change in the
        # machine's load touches all of them alike.
        for _ in range(repeat):
            for size, root in roots.items():
                env = envs[size]
                samples[size]["pass"].append(timed([python, "-c", "pass"], env))
                samples[size]["ls"].append(timed([*wb, "ls"], env))
                samples[size]["ls --json"].append(timed([*wb, "ls", "--json"], env))
                samples[size]["ls --all --json"].append(timed([*wb, "ls", "--all", "--json"], env))
                samples[size]["submit"].append(
                    timed([*wb, "submit", "--paused", "--", "true"], env)
                )
                start = time.perf_counter()
                Store.open(root / "state.db").close()
                samples[size]["open"].append(time.perf_counter() - start)
        for size, root in roots.items():
            subprocess.run([*wb, "daemon", "stop"], env=envs[size], check=True, capture_output=True)
            size_mb = (root / "state.db").stat().st_size / 1e6
            base = samples[size]["pass"]
            for name in ("ls", "ls --json", "ls --all --json", "submit"):
                ratios = [a / b for a, b in zip(samples[size][name], base, strict=True)]
                rows.append(
                    [
                        f"`{name}`, {label[size]}",
                        f"{median(samples[size][name]) * 1000:.0f} ms",
                        f"python -c pass: {median(base) * 1000:.0f} ms",
                        spread(ratios),
                    ]
                )
            submits[size] = median(samples[size]["submit"])
            rows.append(
                [
                    f"open + quick_check, {label[size]}",
                    f"{median(samples[size]['open']) * 1000:.1f} ms",
                    f"state.db {size_mb:.1f} MB",
                    "",
                ]
            )
    finally:
        for size, root in roots.items():
            subprocess.run([*wb, "daemon", "stop"], env=envs[size], capture_output=True)
            shutil.rmtree(root, ignore_errors=True)
    base = [t for size in sizes for t in samples[size]["pass"]]
    if len(submits) > 1:
        first, last = sizes[0], max(s for s in sizes if isinstance(s, int))
        rows.append(
            [
                f"submit at {last:,} vs {first:,} jobs",
                f"{submits[last] * 1000:.0f} ms",
                f"at {first:,}: {submits[first] * 1000:.0f} ms",
                f"{submits[last] / submits[first]:.2f}x (goal <= 1.2)",
            ]
        )
    body = (
        table(["measure", "workbench (median)", "baseline (same run)", "ratio (min-max)"], rows)
        + "\n\n`ls` prints the counts per state, the jobs with processes, the 50 oldest waiting jobs"
        " and the 20 latest ended ones; `ls --json` every active job and the 20 latest ended ones,"
        " and `ls --all --json` every job, each a page of 1,000 at a time. Environments are never"
        " read, and JSON rows are written from the stored row without parsing the spec. A submit"
        " is taken by the running daemon (started by the first one; see bench/queue.py for submit"
        " with and without it). Goal: `ls` and `ls --json` under 0.5 s at"
        f" 20,000 jobs. Spread of the baseline: {statistics.pstdev(base) * 1000:.1f} ms. Load"
        f" average at the end of the run: {os.getloadavg()[0]:.1f} (a shared machine: compare each"
        " figure with the baseline beside it)."
    )
    print(body)
    if args.tiny:
        return 0
    command = "python bench/store.py" + (" --quick" if args.quick else "")
    write_section("store and CLI at scale", command, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
