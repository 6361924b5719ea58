"""`workbench models`: exported models with their lineage and checks; `workbench serve MODEL`:
one of them behind an HTTP endpoint, as a queue job (the `serve` kind)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from workbench.jsonout import dumps
from workbench.paths import Home
from workbench.units import format_duration, format_size


def register(sub: Any) -> None:
    p = sub.add_parser("models", help="exported models: lineage, parity, latency, file hash")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_models)
    p = sub.add_parser(
        "serve",
        help="queue a serve job: an exported model over HTTP (POST /predict, GET /health)",
    )
    p.add_argument("model", help="a catalog model id (`workbench models`) or an exported .onnx")
    p.add_argument("--host", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, help="port (default 0: any free one, shown by ls/show)")
    p.add_argument("--max-batch", type=int, help="rows batched into one model call (default 64)")
    p.add_argument("--max-wait-ms", type=float, help="how long a batch waits to fill (default 2)")
    p.add_argument("--gpus", help="a GPU count or share (0.25) to hold; default none (CPU)")
    p.add_argument("--cpus", type=float, help="cores to reserve (default 1)")
    p.add_argument(
        "--preemptible", action="store_true", help="let the scheduler preempt it (default never)"
    )
    p.add_argument("--name", help="job name")
    p.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Submit a serve job; prints its id. Bad arguments are SpecErrors (exit 2)."""
    from pathlib import Path

    from workbench.cli.main import _client
    from workbench.queue.requests import build_request

    table: dict[str, Any] = {"kind": "serve", "model": args.model}
    for key in ("host", "port", "max_batch", "max_wait_ms", "gpus", "cpus", "name"):
        if getattr(args, key) is not None:
            table[key] = getattr(args, key)
    if args.preemptible:
        table["preemptible"] = True
    request = build_request(table, Path.cwd(), "serve")
    client = _client()
    print(client.submit(request))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from workbench.catalog import registry
    from workbench.db.store import Store

    home = Home.current().ensure()
    listed = registry.list_models(Store.open(home.state_db))
    if args.json:
        print(dumps(listed))
        return 0
    from rich.console import Console
    from rich.table import Table

    columns = (
        "id",
        "name",
        "dataset",
        "run",
        "test",
        "parity",
        "ort/torch b256",
        "size",
        "sha256",
        "age",
    )
    now = time.time()
    rows = []
    for model in listed:
        card = model["card"]
        test = card.get("test") or card.get("held_out") or {}  # an int8 model: its own
        metrics = test.get("metrics") or {}
        headline = next(((k, v) for k, v in metrics.items() if v is not None), None)
        data = card.get("dataset") or {}
        latency = card.get("latency", {}).get("cpu", {}).get("batch_256", {})
        parity = card.get("parity") or {}
        values = (
            str(model["id"]),
            card.get("name", ""),
            f"{data.get('name')} v{data.get('version')}",
            f"job {model['run_job_id']}",
            f"{headline[0]} {headline[1]:.3f}" if headline else "-",
            f"{parity['max_abs_diff']:.1e}" if "max_abs_diff" in parity else "-",
            f"{latency.get('ort_over_torch_median', 0):.2f}",
            format_size(card.get("bytes")),
            model["sha256"][:12],
            format_duration(now - model["created_at"]),
        )
        rows.append(dict(zip(columns, values, strict=True)))
    import os

    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "160"))
    console = Console(width=width, highlight=False)
    if not listed:
        console.print("no models yet (an export job records one)")
        return 0
    # Whole names always; the least needed columns leave first when the terminal is narrow.
    shown = fit_columns(
        rows,
        columns,
        ("sha256", "age", "size", "ort/torch b256", "run", "dataset", "parity"),
        console.width,
    )
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2, 0, 0))
    for column in shown:
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    for row in rows:
        table.add_row(*(row[c] for c in shown))
    console.print(table)
    return 0


def fit_columns(
    rows: list[dict[str, str]], columns: tuple[str, ...], drops: tuple[str, ...], width: int
) -> list[str]:
    """The columns whose widest values fit `width` cells (two between columns), leaving out
    `drops` in order until they do."""
    shown = list(columns)

    def need(column: str) -> int:
        return max([len(column)] + [len(r[column]) for r in rows])

    for drop in ("", *drops):
        if drop:
            shown.remove(drop)
        if sum(need(c) for c in shown) + 2 * (len(shown) - 1) <= width:
            break
    return shown
