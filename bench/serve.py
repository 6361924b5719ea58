"""The serve kind's HTTP path against onnxruntime called in-process, in the same run: requests/s
and p50/p99 latency at 1, 8 and 64 concurrent clients (each a keep-alive HTTP/1.1 connection
sending one-row requests back to back) for the quickstart's MLP and a CNN on 64 numeric
inputs (8x8 digits), exported as the export job does (one named float64 input per column).

The server runs as a real queue job (`kind = "serve"`, started by the daemon of a temporary
WORKBENCH_HOME, the model recorded in its catalog); the clients run in separate processes
(up to 16, the rest as threads inside them), so they share no GIL with the server or with
the baseline. Baselines, in this process: one-row `session.run` calls in a loop (latency) and
a loop over batches of as many rows as there are clients (throughput), each feed built from
the same JSON rows with `jobs.serve.feed_from_rows`, onnxruntime with as many intra-op threads
as the server's job has CPUs. Each round measures HTTP then in-process for every client count
(interleaved, so load drifts hit both); the table gives medians over the rounds and the
ratios' spread (min-max).

Usage: python bench/serve.py [--seconds S] [--rounds R] [--cpus C] [--tiny]. --tiny: the MLP,
1 and 8 clients, a fraction of a second, one round, nothing written to RESULTS.md (the smoke
test)."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/queue.py
sys.path.append(str(HERE))
sys.path.insert(0, str(HERE.parent))
from _results import percentile, table, write_section  # noqa: E402


def exported(
    name: str, folder: Path, threads: int
) -> tuple[Path, Any, Any, list[dict[str, float]]]:
    """(the .onnx file, an onnxruntime session on `threads` intra-op threads, Preprocessor,
    rows) of `name` on 64 numeric columns."""
    import numpy as np
    import onnxruntime as ort
    import pyarrow as pa
    import torch

    from jobs.architectures import build
    from jobs.bundle import Preprocessor
    from jobs.export import export_onnx, prepend_encoding, serving_module

    rng = np.random.default_rng(0)
    data = rng.uniform(0, 16, size=(512, 64))
    names = [f"p{i}" for i in range(64)]
    frame = pa.table({**{n: data[:, i] for i, n in enumerate(names)}, "digit": ["0", "1"] * 256})
    pre = Preprocessor.fit(frame, names, "digit", "classification")
    torch.manual_seed(0)
    model = build(name, 64, 2, {"hidden": [64, 64]}).eval()
    path = folder / f"{name}.onnx"
    export_onnx(serving_module(model, pre), torch.from_numpy(pre.transform(frame)[:8]), path)
    prepend_encoding(path, pre)
    import onnx

    proto = onnx.load(str(path))
    for key, value in {
        "workbench.preprocessor": json.dumps(pre.to_dict()),
        "workbench.inputs": "columns",
    }.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rows = [{n: float(data[r, i]) for i, n in enumerate(names)} for r in range(512)]
    return path, session, pre, rows


class QueueServer:
    """A temporary WORKBENCH_HOME whose daemon runs each model's server as a `serve` job."""

    def __init__(self, cpus: float):
        from workbench.daemon.client import Client
        from workbench.paths import Home

        self.root = Path(tempfile.mkdtemp(prefix="wb-bench-serve-home-"))
        os.environ["WORKBENCH_HOME"] = str(self.root)
        os.environ.pop("WORKBENCH_FAKE_NVML", None)
        self.home = Home(self.root).ensure()
        self.client = Client(self.home)
        self.cpus = cpus

    def start(self, path: Path) -> tuple[int, int]:
        """Record `path` in the catalog, submit its serve job; (job id, port) once it answers."""
        from workbench.catalog import registry
        from workbench.queue.requests import build_request

        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        model = registry.record_model(
            self.client.store, 0, None, str(path), "onnx", sha, {"parity": {"violations": 0}}
        )
        request = build_request(
            {"kind": "serve", "model": str(model), "cpus": self.cpus}, path.parent, "bench"
        )
        job_id = self.client.submit(request)
        status = self.home.run_dir(job_id) / "serve.json"
        deadline = time.monotonic() + 120
        while not status.exists():
            job = self.client.store.get(job_id)
            if job.state in ("failed", "cancelled") or time.monotonic() > deadline:
                log = self.home.run_dir(job_id) / "log"
                raise SystemExit(
                    f"serve job {job_id} {job.state}: {job.reason}\n"
                    + (log.read_text()[-2000:] if log.exists() else "")
                )
            time.sleep(0.05)
        url = json.loads(status.read_text())["url"]
        return job_id, int(url.rsplit(":", 1)[1])

    def cpu_seconds(self, job_id: int) -> float:
        """User + system CPU seconds so far of the job's processes (its wrapper and below)."""
        import psutil

        pid = self.client.store.get(job_id).pid
        if pid is None:
            return 0.0
        root = psutil.Process(pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def stop(self, job_id: int) -> None:
        self.client.control(job_id, "cancel")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.client.store.get(job_id).state in ("cancelled", "failed", "succeeded"):
                return
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the daemon (by the pid holding its lock) and remove the home."""
        import shutil

        from workbench.daemon.link import lock_holder

        self.client.close()
        pid = lock_holder(self.home)
        if pid and pid > 0:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while lock_holder(self.home) and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(self.root, ignore_errors=True)


def load(
    port: int, bodies: list[bytes], threads: int, start_at: float, seconds: float, out: Any
) -> None:
    """One client process: `threads` keep-alive connections posting `bodies` in turn from
    `start_at` (time.monotonic, shared by the processes of one machine) for `seconds`; sends
    the latencies (ms) of the requests that ended inside the window to `out`."""

    def one(index: int, mine: list[float]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}
        connection.request("POST", "/predict", bodies[index], headers)  # warm the connection
        connection.getresponse().read()
        while time.monotonic() < start_at:
            time.sleep(0.001)
        stop = start_at + seconds
        k = index
        while True:
            started = time.monotonic()
            if started >= stop:
                break
            connection.request("POST", "/predict", bodies[k % len(bodies)], headers)
            response = connection.getresponse()
            response.read()
            ended = time.monotonic()
            if response.status != 200:
                raise SystemExit(f"HTTP {response.status}")
            if ended <= stop:
                mine.append((ended - started) * 1000)
            k += threads
        connection.close()

    lists: list[list[float]] = [[] for _ in range(threads)]
    workers = [threading.Thread(target=one, args=(i, lists[i])) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.send([v for part in lists for v in part])
    out.close()


def clients(port: int, rows: list[dict[str, float]], count: int, seconds: float) -> dict[str, Any]:
    """`count` clients in min(count, 16) processes, each posting one row at a time."""
    context = multiprocessing.get_context("spawn")
    processes = min(count, 16)
    bodies = [json.dumps({"rows": [row]}).encode() for row in rows]
    start_at = time.monotonic() + 1.5 + 0.1 * processes  # the processes start and connect
    pipes = []
    children = []
    for p in range(processes):
        here, there = context.Pipe(duplex=False)
        share = count // processes + (1 if p < count % processes else 0)
        child = context.Process(
            target=load, args=(port, bodies[p::processes], share, start_at, seconds, there)
        )
        child.start()
        there.close()
        pipes.append(here)
        children.append(child)
    latencies: list[float] = []
    for pipe in pipes:
        latencies.extend(pipe.recv())
    for child in children:
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"a client process failed ({child.exitcode})")
    return {
        "rps": len(latencies) / seconds,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "processes": processes,
    }


def in_process(
    session: Any, pre: Any, rows: list[dict[str, float]], batch: int, seconds: float
) -> dict[str, float]:
    """session.run over `batch`-row feeds built from the JSON rows the way the server builds
    them (`feed_from_rows`), back to back for `seconds`."""
    from jobs.serve import feed_from_rows

    latencies = []
    rows_done = 0
    stop = time.perf_counter() + seconds
    k = 0
    started = time.perf_counter()
    while time.perf_counter() < stop:
        part = [rows[(k + i) % len(rows)] for i in range(batch)]
        t0 = time.perf_counter()
        session.run(None, feed_from_rows(part, pre))
        latencies.append((time.perf_counter() - t0) * 1000)
        rows_done += batch
        k += batch
    elapsed = time.perf_counter() - started
    return {
        "rps": rows_done / elapsed,
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 99),
    }


def spread(values: list[float], digits: int = 2) -> str:
    """median (min-max) of `values`, or the one value."""
    middle = f"{statistics.median(values):.{digits}f}"
    if len(values) == 1:
        return middle
    return f"{middle} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measure")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--cpus", type=int, default=1, help="the serve job's cpus (ORT threads)")
    parser.add_argument("--tiny", action="store_true", help="smoke test")
    args = parser.parse_args()
    models = ("mlp",) if args.tiny else ("mlp", "cnn")
    counts = (1, 8) if args.tiny else (1, 8, 64)
    seconds = 0.3 if args.tiny else args.seconds
    rounds = 1 if args.tiny else args.rounds
    folder = Path(tempfile.mkdtemp(prefix="wb-bench-serve-"))
    queue = QueueServer(args.cpus)
    out = []
    verdicts = []
    try:
        for name in models:
            path, session, pre, rows = exported(name, folder, args.cpus)
            job_id, port = queue.start(path)
            seen: dict[int, list[tuple[dict[str, Any], dict[str, float]]]] = {c: [] for c in counts}
            for _ in range(rounds):
                for count in counts:
                    cpu = queue.cpu_seconds(job_id)
                    http_side = clients(port, rows, count, seconds)
                    requests = http_side["rps"] * seconds
                    # the server's CPU per request, its clients' connecting and warm-up included
                    http_side["cpu_ms"] = (queue.cpu_seconds(job_id) - cpu) * 1000 / requests
                    seen[count].append((http_side, in_process(session, pre, rows, count, seconds)))
            queue.stop(job_id)
            for count in counts:
                pairs = seen[count]
                ratio = [h["rps"] / b["rps"] for h, b in pairs]
                over = [h["p50"] - b["p50"] for h, b in pairs]
                out.append(
                    [
                        name,
                        f"{count} ({pairs[0][0]['processes']} proc.)",
                        spread([h["rps"] for h, _ in pairs], 0),
                        f"{spread([h['p50'] for h, _ in pairs])} /"
                        f" {spread([h['p99'] for h, _ in pairs])}",
                        f"{spread([b['rps'] for _, b in pairs], 0)} (batch {count})",
                        f"{spread([b['p50'] for _, b in pairs], 3)}",
                        spread(ratio),
                        spread(over),
                        spread([h["cpu_ms"] for h, _ in pairs], 3),
                    ]
                )
                if count == 1:
                    met = statistics.median(over) <= 2
                    verdicts.append(f"{name} p50 {'met' if met else 'missed'}")
                if count == 64:
                    met = statistics.median(ratio) >= 0.7
                    verdicts.append(f"{name} throughput {'met' if met else 'missed'}")
    finally:
        queue.close()
    text = table(
        [
            "model",
            "clients",
            "HTTP rows/s",
            "HTTP p50 / p99 ms",
            "in-process rows/s",
            "in-process call p50 ms",
            "HTTP / in-process rows/s",
            "p50 over in-process ms",
            "server CPU ms / request",
        ],
        out,
    )
    load_now = os.getloadavg()[0]
    note = (
        f"\n\nMedians (min-max) over {rounds} interleaved round(s) of {seconds:g} s per measure;"
        " one-row JSON requests over keep-alive HTTP/1.1 to a `serve` queue job (Starlette on"
        f" uvicorn, max_batch 64, max_wait_ms 2, cpus {args.cpus}: onnxruntime"
        f" intra_op_num_threads {args.cpus}); the clients in separate processes (up to 16, the"
        " rest as threads in them); the in-process baseline in the bench's process with"
        f" onnxruntime on {args.cpus} intra-op thread(s), its feeds built from the same JSON"
        " rows by feed_from_rows. Goal: p50 at 1 client within 2 ms of in-process; rows/s at 64"
        f" clients at least 0.7x the in-process loop over batches of 64 ({', '.join(verdicts)})."
        " The machine (2 cores) was shared with other developers' work and loaded (load average"
        f" {load_now:.1f} at the end); the server, its clients and the baseline share those"
        " cores."
    )
    print(text + note)
    if not args.tiny:
        command = (
            f"python bench/serve.py --seconds {args.seconds:g} --rounds {args.rounds}"
            f" --cpus {args.cpus}"
        )
        write_section("serve", command, text + note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
