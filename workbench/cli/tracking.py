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
        known = sorted({*SHOWN, *(m for run in listed for m in run.metrics)})
        wanted = args.sort.removeprefix("-")
        if wanted not in known:
            import difflib

            from workbench.cli.main import UsageError

            close = difflib.get_close_matches(wanted, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"runs --sort: no metric {wanted!r}{hint} metrics: {', '.join(known)}")
        listed = tracking.sort_runs(listed, args.sort)
    if args.json:
        print(dumps([r.to_json() for r in listed]))
        return 0
    print_runs(listed)
    return 0


# Columns of `workbench runs`, and the order they are left out in when the terminal is narrow
# (the metrics column is shortened to what fits, then cut; a cell never wraps).
RUN_COLUMNS = ("job", "name", "state", "model", "dataset", "lr", "epochs", "metrics", "age")
RUN_DROPS = ("model", "epochs", "lr", "age", "dataset")


def run_rows(listed: list[Any], now: float) -> list[dict[str, str]]:
    rows = []
    for run in listed:
        keys = [k for k in SHOWN if k in run.metrics] or sorted(run.metrics)
        rows.append(
            {
                "job": str(run.job_id),
                "name": run.name[:40],
                "state": run.state,
                "model": run.model.rsplit("/", 1)[-1],
                "dataset": f"{run.dataset} v{run.dataset_version}" if run.dataset else "-",
                "lr": f"{run.params.get('lr', '')}",
                "epochs": f"{run.params.get('epochs', '')}",
                "metrics": ", ".join(_metric(k, run.metrics[k]) for k in keys) or "-",
                "age": format_duration(now - run.started_at),
            }
        )
    return rows


def fit_run_columns(rows: list[dict[str, str]], width: int) -> list[str]:
    """The columns that fit `width` cells with the metrics column at least 24 wide (or all it
    needs): RUN_DROPS leave first, in order."""
    columns = list(RUN_COLUMNS)

    def need(column: str) -> int:
        return max([len(column)] + [len(r[column]) for r in rows])

    metrics_need = min(24, need("metrics"))
    for drop in ("", *RUN_DROPS):
        if drop:
            columns.remove(drop)
        used = sum(need(c) for c in columns if c != "metrics") + 2 * (len(columns) - 1)
        if used + metrics_need <= width:
            break
    return columns


def print_runs(listed: list[Any]) -> None:
    """The runs table at the terminal's width ($COLUMNS when not a terminal, else 160)."""
    import os

    from rich.console import Console
    from rich.table import Table

    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "160"))
    console = Console(width=width, highlight=False)
    if not listed:
        console.print("no runs yet (a train job, or a script using workbench.track, records one)")
        return
    rows = run_rows(listed, time.time())
    columns = fit_run_columns(rows, console.width)
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2, 0, 0))
    for column in columns:
        table.add_column(
            column,
            no_wrap=True,
            overflow="ellipsis",
            justify="right" if column in ("job", "lr", "epochs") else "left",
        )
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    console.print(table)
