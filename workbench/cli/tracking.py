"""`workbench runs`: training runs with their params, dataset version and metrics."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from workbench.jsonout import dumps
from workbench.paths import Home
from workbench.units import format_duration


def register(sub: Any) -> None:
    p = sub.add_parser("runs", help="training runs: status, key params, metrics")
    p.add_argument("--json", action="store_true")
    p.add_argument("--sort", metavar="METRIC", help="sort by a metric (prefix - for lower first)")
    p.set_defaults(handler=cmd_runs)


def cmd_runs(args: argparse.Namespace) -> int:
    from workbench.catalog import tracking
    from workbench.db.store import Store

    home = Home.current().ensure()
    store = Store.open(home.state_db)
    listed = tracking.list_runs(store)
    if args.sort:
        name, higher = tracking.metric_order(args.sort)
        missing = -float("inf") if higher else float("inf")
        listed.sort(key=lambda r: r.metrics.get(name, missing), reverse=higher)
    if args.json:
        print(dumps([r.to_json() for r in listed]))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("job", "name", "state", "model", "dataset", "lr", "epochs", "metrics", "age"):
        table.add_column(column)
    now = time.time()
    for run in listed:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(run.metrics.items()))
        table.add_row(
            str(run.job_id),
            run.name[:40],
            run.state,
            run.model.rsplit("/", 1)[-1],
            f"{run.dataset} v{run.dataset_version}",
            f"{run.params.get('lr', '')}",
            f"{run.params.get('epochs', '')}",
            shown or "-",
            format_duration(now - run.started_at),
        )
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table if listed else "no runs yet (a train job records one)")
    return 0
