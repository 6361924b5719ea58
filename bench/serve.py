"""The serve kind's HTTP path against onnxruntime called in-process, in the same run: requests/s
and p50/p99 latency at 1, 8 and 64 concurrent clients (each a keep-alive HTTP/1.1 connection
sending one-row requests back to back) for the quickstart's MLP and a CNN on 64 numeric
inputs (8x8 digits), exported as the export job does (one named float64 input per column).
The server is `jobs.serve.build_app` on uvicorn in this process (the job adds only the queue
around it). Baselines: one-row `session.run` calls in a loop (latency), and a loop over
batches of as many rows as there are clients (throughput).

Usage: python bench/serve.py [--seconds S] [--tiny]. --tiny: the MLP, 1 and 8 clients, a
fraction of a second each, nothing written to RESULTS.md (the smoke test)."""

from __future__ import annotations

import argparse
import http.client
import json
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


def exported(name: str, folder: Path) -> tuple[Any, Any, list[dict[str, float]]]:
    """(onnxruntime session, Preprocessor, rows) of `name` on 64 numeric columns."""
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
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rows = [{n: float(data[r, i]) for i, n in enumerate(names)} for r in range(512)]
    return session, pre, rows


def serve(session: Any, pre: Any) -> tuple[Any, int]:
    import uvicorn

    from jobs.serve import Spec, Stats, build_app

    app = build_app(session, pre, Spec(model="bench"), Stats(), {})
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server, server.servers[0].sockets[0].getsockname()[1]


def clients(
    port: int, rows: list[dict[str, float]], count: int, seconds: float
) -> dict[str, float]:
    """`count` threads, each a keep-alive connection posting one row at a time for `seconds`."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def one(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        k = index
        while time.perf_counter() < stop:
            body = json.dumps({"rows": [rows[k % len(rows)]]})
            started = time.perf_counter()
            connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            assert response.status == 200, response.status
            mine.append((time.perf_counter() - started) * 1000)
            k += count
        connection.close()
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {
        "rps": len(latencies) / elapsed,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
    }


def in_process(
    session: Any, pre: Any, rows: list[dict[str, float]], batch: int, seconds: float
) -> dict[str, float]:
    """session.run over `batch`-row feeds built the way the server builds them."""
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measure")
    parser.add_argument("--tiny", action="store_true", help="smoke test")
    args = parser.parse_args()
    models = ("mlp",) if args.tiny else ("mlp", "cnn")
    counts = (1, 8) if args.tiny else (1, 8, 64)
    seconds = 0.3 if args.tiny else args.seconds
    folder = Path(tempfile.mkdtemp(prefix="wb-bench-serve-"))
    out = []
    verdicts = []
    for name in models:
        session, pre, rows = exported(name, folder)
        server, port = serve(session, pre)
        for count in counts:
            http_side = clients(port, rows, count, seconds)
            base = in_process(session, pre, rows, count, seconds)
            out.append(
                [
                    name,
                    str(count),
                    f"{http_side['rps']:.0f}",
                    f"{http_side['p50']:.2f} / {http_side['p99']:.2f}",
                    f"{base['rps']:.0f} (batch {count})",
                    f"{base['p50']:.3f} / {base['p99']:.3f}",
                    f"{http_side['rps'] / base['rps']:.2f}x",
                    f"{http_side['p50'] - base['p50']:+.2f}",
                ]
            )
            if count == 1:
                verdicts.append(
                    f"{name} p50 {'met' if http_side['p50'] - base['p50'] <= 2 else 'missed'}"
                )
            if count == 64:
                ratio = http_side["rps"] / base["rps"]
                verdicts.append(f"{name} throughput {'met' if ratio >= 0.7 else 'missed'}")
        server.should_exit = True
    text = table(
        [
            "model",
            "clients",
            "HTTP rows/s",
            "HTTP p50 / p99 ms",
            "in-process rows/s",
            "in-process call p50 / p99 ms",
            "HTTP / in-process rows/s",
            "p50 over in-process ms",
        ],
        out,
    )
    note = (
        f"\n\n{seconds:g} s per measure; one-row JSON requests over keep-alive HTTP/1.1 to"
        " jobs.serve's Starlette app on uvicorn (max_batch 64, max_wait_ms 2), onnxruntime with 2"
        " intra-op threads on the CPU on both sides, the client threads in the same process."
        " Goal: p50 at 1 client within 2 ms of in-process; rows/s at 64 clients at least 0.7x the"
        f" in-process loop over batches of 64 ({', '.join(verdicts)}). The machine (2 cores) was"
        " shared with other developers' work, and the client threads share the server's"
        " process and GIL, so the HTTP figures are a floor; each request's 64 named inputs are"
        " checked and converted in Python."
    )
    print(text + note)
    if not args.tiny:
        write_section("serve", f"python bench/serve.py --seconds {args.seconds:g}", text + note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
