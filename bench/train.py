"""Train benchmark: samples/s of a `train` job against a bare PyTorch loop over the same tensors,
model, batch size and threads (same run), and the time from job start to the first training step.
Usage: python bench/train.py [--epochs N] [--tiny]"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workbench.daemon.client import Client

_HERE = Path(__file__).resolve().parent
# bench/queue.py would shadow the standard library's `queue` (pyarrow imports it)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
_spec = importlib.util.spec_from_file_location("_results", _HERE / "_results.py")
assert _spec is not None and _spec.loader is not None
_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_results)
table, write_section = _results.table, _results.write_section


def digits_table(repeat: int) -> object:
    """scikit-learn's digits, tiled `repeat` times (64 pixel columns + the label)."""
    import numpy as np
    import pyarrow as pa
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = np.tile(digits.data, (repeat, 1))
    columns = {f"p{i}": data[:, i] for i in range(64)}
    columns["digit"] = np.tile(digits.target, repeat).astype("int64")
    return pa.table(columns)


def bare_loop(x: object, y: object, batch: int, epochs: int, threads: int) -> float:
    """The floor: a hand-written loop with the same model, optimizer, batch and threads."""
    import torch

    from jobs.architectures import build

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    model = build("mlp", xt.shape[1], int(yt.max()) + 1, {"hidden": [64, 64]})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    rates = []
    for _ in range(epochs):
        order = torch.randperm(len(xt))
        started = time.perf_counter()
        for start in range(0, len(xt), batch):
            index = order[start : start + batch]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[index]), yt[index])
            loss.backward()
            optimizer.step()
        rates.append(len(xt) / (time.perf_counter() - started))
    return sum(rates) / len(rates)


def train_job(
    client: Client, root: Path, epochs: int, batch: int, threads: int
) -> tuple[float, float]:
    """One train job through the queue: (mean samples/s over its epochs, s from start to the
    first step's metric row)."""
    from workbench.queue.requests import build_request

    request = build_request(
        {
            "kind": "train",
            "dataset": "digits",
            "target": "digit",
            "model": "mlp",
            "epochs": epochs,
            "batch_size": batch,
            "lr": 1e-3,
            "cpus": threads,
            "val_fraction": 0.2,
        },
        root,
        "bench",
    )
    job_id = client.submit(request)
    while (job := client.store.get(job_id)).state not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.2)
    if job.state != "succeeded":
        raise RuntimeError(f"train job {job_id} {job.state}: {job.reason}")
    series = client.store.metrics(job_id, ["samples_per_s"])["samples_per_s"]
    rate = sum(v for _, v in series if v) / len(series)
    first_t = client.store.first_metric_time(job_id, "train_loss")
    return rate, first_t - (job.started_at or first_t)


def main() -> int:
    import statistics

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved job/bare-loop pairs")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1, 2],
        help="torch thread counts to measure, each on both sides (default: 1 2)",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke test: 1 epoch on digits once, 1 round, 1 thread; RESULTS.md untouched",
    )
    args = parser.parse_args()
    if args.tiny:
        args.epochs, args.repeat, args.rounds, args.threads = 1, 1, 1, [1]
    root = Path(tempfile.mkdtemp(prefix="wb-bench-", dir="/tmp"))
    os.environ["WORKBENCH_HOME"] = str(root)
    from jobs.bundle import Preprocessor
    from workbench.catalog import lake
    from workbench.daemon.client import Client
    from workbench.paths import Home

    home = Home(root).ensure()
    client = Client(home)
    batch = 64
    try:
        tbl = digits_table(args.repeat)
        lake.publish_arrow(home, client.store, "digits", tbl)
        # the same training rows, in the same float32 form the job trains on
        n_train = tbl.num_rows - round(tbl.num_rows * 0.2)
        features = [c for c in tbl.column_names if c != "digit"]
        pre = Preprocessor.fit(tbl.slice(0, n_train), features, "digit", "classification")
        x = pre.transform(tbl)[:n_train]
        y = pre.encode_target(tbl)[:n_train]
        load_before = os.getloadavg()[0]
        rows, notes = [], []
        for threads in args.threads:
            ratios, job_rates, bare_rates, first_steps = [], [], [], []
            for _ in range(args.rounds):  # interleaved: drift in machine load hits both sides
                job_rate, first_step = train_job(client, root, args.epochs, batch, threads)
                bare_rate = bare_loop(x, y, batch, args.epochs, threads)
                job_rates.append(job_rate)
                bare_rates.append(bare_rate)
                first_steps.append(first_step)
                ratios.append(job_rate / bare_rate)
            rows += [
                [
                    f"train job samples/s, {threads} thread(s) (median)",
                    f"{statistics.median(job_rates):,.0f}",
                    f"{statistics.median(bare_rates):,.0f} (bare loop)",
                    f"{statistics.median(ratios):.2f}x, range {min(ratios):.2f}-{max(ratios):.2f}"
                    f" over {len(ratios)} rounds (goal >= 0.9)",
                ],
                [
                    f"job start -> first step, {threads} thread(s) (median)",
                    f"{statistics.median(first_steps):.2f} s",
                    "-",
                    f"range {min(first_steps):.2f}-{max(first_steps):.2f} s (goal < 3 s)",
                ],
            ]
            notes.append(f"{threads} thread(s): {', '.join(f'{r:.2f}' for r in ratios)}")
        body = table(["measure", "workbench", "baseline", "ratio"], rows)
        body += (
            f"\n\nMLP 64-64-10 on digits tiled x{args.repeat} ({tbl.num_rows} rows, 80% train),"
            f" batch {batch}, Adam, {args.epochs} epochs, on a 2-core machine without GPU shared"
            f" with other work; {args.rounds} rounds per thread count, each a train job then the"
            " bare loop with the same threads. samples/s is the mean over epochs of the training"
            " loop alone (the job's per-epoch metric vs the same measure on the bare loop);"
            f" per-round ratios: {'; '.join(notes)}; 1-minute load average {load_before:.1f}"
            f" before, {os.getloadavg()[0]:.1f} after. With 2 threads while other processes hold"
            " the cores, torch's OpenMP workers wait on each other and both sides fall by an order"
            " of magnitude and the ratio swings with the other load: read the 1-thread row. First step:"
            " job started_at to the first train_loss metric row written (an upper bound: step"
            " metrics are flushed at most once a second; it includes python start, import torch,"
            " reading the lake, fitting preprocessing)."
        )
        print(body)
        if not args.tiny:
            write_section("train", " ".join(["python bench/train.py", *sys.argv[1:]]), body)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        from workbench.daemon.link import lock_holder

        pid = lock_holder(home)
        if pid and pid > 0:
            import signal

            os.kill(pid, signal.SIGTERM)
            time.sleep(1)
        client.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
