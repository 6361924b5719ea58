"""`workbench runs`: runs of every job that reported one (the built-in train kind, scripts using
workbench.track, captured files) with their params, dataset version and metrics."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from workbench.jsonout import dumps
from workbench.paths import Home
from workbench.units import format_duration

SHOWN = ("val_accuracy", "val_f1_macro", "val_pr_auc", "val_loss", "val_rmse", "val_r2")
"""The metrics the table shows when a run has them (`--json` has all)."""


def _metric(name: str, value: Any) -> str:
    return f"{name} {value:.4g}" if isinstance(value, int | float) else f"{name} -"


def register(sub: Any) -> None:
    p = sub.add_parser("runs", help="runs of any job: status, key params, metrics")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--sort",
        metavar="METRIC",
        help="sort by a metric, best first (prefix - for lower is better); NaN and missing last",
    )
    p.set_defaults(handler=cmd_runs)


def cmd_runs(args: argparse.Namespace) -> int:
    from workbench.catalog import tracking
    from workbench.db.store import Store

    home = Home.current().ensure()
    store = Store.open(home.state_db)
    listed = tracking.list_runs(store)
    if args.sort:
        listed = tracking.sort_runs(listed, args.sort)
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
        keys = [k for k in SHOWN if k in run.metrics] or sorted(run.metrics)
        shown = ", ".join(_metric(k, run.metrics[k]) for k in keys)
        table.add_row(
            str(run.job_id),
            run.name[:40],
            run.state,
            run.model.rsplit("/", 1)[-1],
            f"{run.dataset} v{run.dataset_version}" if run.dataset else "-",
            f"{run.params.get('lr', '')}",
            f"{run.params.get('epochs', '')}",
            shown or "-",
            format_duration(now - run.started_at),
        )
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(
        table
        if listed
        else "no runs yet (a train job, or a script using workbench.track, records one)"
    )
    return 0
