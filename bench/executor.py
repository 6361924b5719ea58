"""Executor benchmark: submit-to-start and per-job overhead of the Slurm executor (a real one-node
Slurm on loopback, tests/slurm/up.sh) against the local executor, interleaved in the same run,
against bare `sbatch --wait --wrap` in the same run, and the daemon's CPU and Slurm calls per
minute while it follows 1 and many long jobs (counted by shims on PATH that log each call) among
3,000 held jobs of another user. Needs root and slurm-wlm.
Usage: python bench/executor.py [--quick] [--tiny] [--cluster DIR] [--foreign N]"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import median, percentile, table, write_section

from workbench.daemon.client import Client
from workbench.daemon.link import lock_holder
from workbench.db.store import JobRequest
from workbench.paths import Home

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "slurm"
STAMP = 'date +%s.%N > "$WORKBENCH_RUN_DIR/started"'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_home(kind: str) -> Home:
    home = Home(Path(tempfile.mkdtemp(prefix=f"wb-bench-{kind}-", dir="/tmp"))).ensure()
    home.config.write_text(f'[executor]\nkind = "{kind}"\n')
    return home


def request(argv: list[str], executor: str) -> JobRequest:
    return JobRequest("bench", "command", {"argv": argv}, "/", dict(os.environ), argv=argv,
                      executor=executor)  # fmt: skip


def one_job(client: Client, executor: str) -> tuple[float, float]:
    """(submit-to-start, submit-to-settled) in seconds for one job that stamps its start."""
    argv = ["sh", "-c", STAMP]
    submitted = time.time()
    job_id = client.submit(request(argv, executor))
    (job,) = client.wait([job_id], timeout_s=120, poll_s=0.01)
    settled = time.time()
    assert job.state == "succeeded", (job.state, job.reason)
    started = float((client.home.run_dir(job_id) / "started").read_text())
    return started - submitted, settled - submitted


def batch(client: Client, executor: str, count: int) -> float:
    """Seconds from submitting `count` trivial jobs at once until all have settled."""
    start = time.time()
    ids = client.submit_many([request(["true"], executor)] * count)
    jobs = client.wait(ids, timeout_s=300, poll_s=0.02)
    assert all(j.state == "succeeded" for j in jobs)
    return time.time() - start


def bare_sbatch(folder: Path) -> float:
    """Seconds for `sbatch --wait --wrap` of the same trivial job: submit to done, no daemon."""
    began = time.time()
    subprocess.run(
        ["sbatch", "--wait", "--quiet", f"--output={folder}/bare-%j.out", "--wrap", "true"],
        check=True, capture_output=True,
    )  # fmt: skip
    return time.time() - began


SLURM_COMMANDS = ("sbatch", "squeue", "scancel", "scontrol", "sacct", "sinfo")


def counting_shims(folder: Path) -> Path:
    """A folder of shims that log each Slurm command to `folder/calls` and exec the real one."""
    shims = folder / "shims"
    shims.mkdir(parents=True, exist_ok=True)
    for name in SLURM_COMMANDS:
        real = shutil.which(name)
        if real is None:
            continue
        shim = shims / name
        shim.write_text(
            f'#!/bin/sh\necho "{name} $(date +%s.%N)" >>{folder}/calls\nexec {real} "$@"\n'
        )
        shim.chmod(0o755)
    return shims


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(the process's own utime + stime, that of its children it has waited for: its Slurm
    commands), in seconds (/proc/PID/stat fields 14-17)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


FOREIGN_NAME = "wb-bench-foreign"


def foreign_jobs(count: int) -> list[str]:
    """Submit `count` held jobs that are not ours: as the user `nobody` when run as root (else as
    this user), with no workbench comment, as other users' jobs fill a cluster. Returns their
    Slurm ids (`cancel_foreign` removes them)."""
    submit = (
        f"sbatch --parsable --hold --job-name={FOREIGN_NAME} --output=/dev/null --chdir=/tmp"
        " --time=1 --wrap true"
    )
    argv = ["xargs", "-P", "4", "-I", "{}", "sh", "-c", submit]
    if os.geteuid() == 0:
        conf = f"SLURM_CONF={os.environ.get('SLURM_CONF', '')}"
        argv = ["runuser", "-u", "nobody", "--", "env", conf, f"PATH={os.environ['PATH']}", *argv]
    done = subprocess.run(
        argv, input="".join(f"{i}\n" for i in range(count)), capture_output=True, text=True,
        timeout=60 + count, cwd="/tmp",
    )  # fmt: skip
    ids = [line.split(";")[0] for line in done.stdout.split() if line.strip()]
    if done.returncode != 0 or len(ids) != count:
        cancel_foreign(ids)
        raise RuntimeError(f"foreign jobs: {len(ids)} of {count} submitted: {done.stderr[-500:]}")
    return ids


def cancel_foreign(ids: list[str]) -> None:
    for start in range(0, len(ids), 500):
        subprocess.run(["scancel", *ids[start : start + 500]], capture_output=True, timeout=120)


def following(count: int, settle_s: float, window_s: float) -> tuple[float, float, float]:
    """(daemon CPU % of a core, the same with the Slurm commands it ran, Slurm calls per minute)
    while a fresh daemon follows `count` long jobs on Slurm, measured over `window_s` after
    `settle_s` (the fast window after a submit is 30 s)."""
    home = make_home("slurm")
    calls = home.root / "calls"
    saved = os.environ["PATH"]
    os.environ["PATH"] = f"{counting_shims(home.root)}:{saved}"
    client = Client(home)
    try:
        ids = client.submit_many([request(["sleep", "600"], "slurm")] * count)
        time.sleep(settle_s)
        pid = lock_holder(home)
        assert pid and pid > 0
        cpu0, calls0, t0 = cpu_seconds(pid), _lines(calls), time.monotonic()
        time.sleep(window_s)
        cpu1, calls1, t1 = cpu_seconds(pid), _lines(calls), time.monotonic()
        for job_id in ids:
            client.control(job_id, "cancel")
        client.wait(ids, timeout_s=120, poll_s=0.1)
    finally:
        os.environ["PATH"] = saved
        client.close()
        stop(home)
    minutes = (t1 - t0) / 60
    own = 100 * (cpu1[0] - cpu0[0]) / (t1 - t0)
    with_commands = 100 * (sum(cpu1) - sum(cpu0)) / (t1 - t0)
    return own, with_commands, (calls1 - calls0) / minutes


def _lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


def stop(home: Home) -> None:
    pid = lock_holder(home)
    if pid and pid > 0:
        os.kill(pid, 15)
        while lock_holder(home):
            time.sleep(0.01)
    shutil.rmtree(home.root, ignore_errors=True)


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke test: 2 single jobs and one batch of 2 per executor; RESULTS.md untouched",
    )
    parser.add_argument(
        "--cluster",
        metavar="DIR",
        help="use the test cluster already running under DIR (tests/slurm/up.sh DIR ...)"
        " instead of starting and stopping one",
    )
    parser.add_argument(
        "--foreign",
        type=int,
        metavar="N",
        help="held jobs of another user in the cluster while the daemon follows its own"
        " (default 3000; --tiny: 10)",
    )
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    if args.foreign is None:
        args.foreign = 10 if args.tiny else 3000
    reps = 2 if args.tiny else 5 if args.quick else 15
    batch_size = 2 if args.tiny else 6 if args.quick else 12
    batch_rounds = 1 if args.tiny else 2 if args.quick else 3
    cluster = args.cluster or tempfile.mkdtemp(prefix="wb-bench-slurm-", dir="/tmp")
    if not args.cluster:
        up = subprocess.run(
            ["bash", str(FIXTURE / "up.sh"), cluster, str(free_port()), str(free_port())],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if up.returncode != 0:
            print(up.stdout + up.stderr, file=sys.stderr)
            return 1
    os.environ["SLURM_CONF"] = f"{cluster}/slurm.conf"
    homes = {kind: make_home(kind) for kind in ("local", "slurm")}
    clients = {kind: Client(home) for kind, home in homes.items()}
    try:
        for kind in homes:  # warm up: daemon started, Slurm's first job scheduled
            one_job(clients[kind], kind)
        start_s: dict[str, list[float]] = {"local": [], "slurm": []}
        total_s: dict[str, list[float]] = {"local": [], "slurm": []}
        for rep in range(reps):
            order = ("local", "slurm") if rep % 2 == 0 else ("slurm", "local")
            for kind in order:
                to_start, to_end = one_job(clients[kind], kind)
                start_s[kind].append(to_start)
                total_s[kind].append(to_end)
        batches: dict[str, list[float]] = {"local": [], "slurm": []}
        for rep in range(batch_rounds):
            for kind in ("local", "slurm") if rep % 2 == 0 else ("slurm", "local"):
                batches[kind].append(batch(clients[kind], kind, batch_size))
        bare_s: list[float] = []
        ours_s: list[float] = []
        for _ in range(reps):
            bare_s.append(bare_sbatch(homes["slurm"].root))
            ours_s.append(one_job(clients["slurm"], "slurm")[1])
        squeue_ms = []
        for _ in range(reps):
            began = time.perf_counter()
            subprocess.run(["squeue", "--json"], capture_output=True, check=True)
            squeue_ms.append((time.perf_counter() - began) * 1000)
        many = 4 if args.tiny else 100
        settle_s, window_s = (3.0, 4.0) if args.tiny else (35.0, 60.0)
        began = time.perf_counter()
        foreign = foreign_jobs(args.foreign)
        foreign_s = time.perf_counter() - began
        try:
            squeue_full_ms = []
            for _ in range(reps):
                began = time.perf_counter()
                subprocess.run(["squeue", "--json"], capture_output=True, check=True)
                squeue_full_ms.append((time.perf_counter() - began) * 1000)
            follow = {n: following(n, settle_s, window_s) for n in (1, many)}
        finally:
            cancel_foreign(foreign)
    finally:
        for client in clients.values():
            client.close()
        for home in homes.values():
            stop(home)
        if not args.cluster:
            subprocess.run(["bash", str(FIXTURE / "down.sh"), cluster], timeout=60)
            shutil.rmtree(cluster, ignore_errors=True)

    def ratios(series: dict[str, list[float]]) -> list[float]:
        return [s / max(loc, 1e-6) for s, loc in zip(series["slurm"], series["local"], strict=True)]

    rows = [
        [
            "submit-to-start, median",
            f"{median(start_s['slurm']) * 1000:.0f} ms",
            f"local: {median(start_s['local']) * 1000:.0f} ms",
            f"{median(ratios(start_s)):.0f}x (pairs {spread(ratios(start_s))})",
        ],
        [
            "submit-to-start, p90",
            f"{percentile(start_s['slurm'], 90) * 1000:.0f} ms",
            f"local: {percentile(start_s['local'], 90) * 1000:.0f} ms",
            "",
        ],
        [
            "one job, submit to settled in the store, median",
            f"{median(total_s['slurm']) * 1000:.0f} ms",
            f"local: {median(total_s['local']) * 1000:.0f} ms",
            f"{median(ratios(total_s)):.1f}x (pairs {spread(ratios(total_s))})",
        ],
        [
            f"{batch_size} trivial jobs at once, per job",
            f"{median(batches['slurm']) / batch_size * 1000:.0f} ms",
            f"local: {median(batches['local']) / batch_size * 1000:.0f} ms",
            f"{median(batches['slurm']) / median(batches['local']):.1f}x"
            f" (runs {statistics.mean(batches['slurm']):.1f} s vs"
            f" {statistics.mean(batches['local']):.1f} s)",
        ],
        [
            "submit to done: the daemon vs bare `sbatch --wait --wrap`, median",
            f"{median(ours_s) * 1000:.0f} ms",
            f"sbatch --wait: {median(bare_s) * 1000:.0f} ms",
            f"{median(ours_s) / max(median(bare_s), 1e-6):.2f}x",
        ],
        *[
            [
                f"following {n} long job(s): daemon CPU, Slurm calls per minute",
                f"{follow[n][0]:.2f}% of a core ({follow[n][1]:.2f}% with its Slurm commands)",
                f"{follow[n][2]:.1f} calls/min",
                f"{args.foreign:,} foreign jobs; after {settle_s:.0f} s, over {window_s:.0f} s;"
                " goal < 2%, < 30/min",
            ]
            for n in follow
        ],
        [
            "one `squeue --json` (what the daemon no longer asks)",
            f"{median(squeue_ms):.0f} ms",
            f"with {args.foreign:,} foreign jobs: {median(squeue_full_ms):.0f} ms",
            f"p90 {percentile(squeue_ms, 90):.0f} ms",
        ],
    ]
    body = (
        table(["measure", "slurm executor", "baseline (same run)", "ratio"], rows)
        + f"\n\n{reps} single jobs per executor, interleaved; ratios are per adjacent pair. The"
        " Slurm cluster is one node on loopback (`tests/slurm/up.sh`: `batch_sched_delay=0`,"
        " 2 CPUs, so Slurm runs two 1-CPU jobs at once; the many jobs followed are 2 running and"
        " the rest pending). The daemon asks `squeue --jobs=<ours> -O ...` at an adaptive"
        " interval (1 s for 30 s after a submit or a change, growing to 30 s), and an ended job's"
        " exit.json brings the next poll forward. `sbatch --wait` itself checks on its job every"
        " 2 s or so, which is most of its time here: the daemon settles a job within a second of"
        " its exit.json. Following: a fresh daemon follows 1, then"
        f" {many} jobs that run long, while {args.foreign:,} held jobs of another user (`nobody`,"
        " no workbench comment; submitted in"
        f" {foreign_s:.0f} s) sit in the cluster; Slurm calls per minute count every Slurm"
        " command the daemon ran (shims on PATH), from"
        f" {settle_s:.0f} s after the submit (past the 30 s fast window) for {window_s:.0f} s,"
        " while the interval is still growing (2 calls a minute at the 30 s ceiling). The daemon's"
        " CPU is its own (utime + stime), and with the Slurm commands it ran (its children's"
        " times, which include each squeue's). The machine is shared and loaded (2 cores, five"
        f" developers; load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at"
        " the end), so absolute times vary; the ratios are within one run."
    )
    print(body)
    if args.tiny:
        return 0
    command = "sudo python bench/executor.py" + (" --quick" if args.quick else "")
    write_section("Executor", command, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
