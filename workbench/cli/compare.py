"""`workbench diff A B`: two runs or jobs side by side: params, code, environment, datasets and
final metrics. Params, datasets and metrics are read through the run catalog
(`workbench.catalog.tracking`), code and environment from what was recorded at submit and start
(`workbench.db.repro`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from workbench.jsonout import dumps
from workbench.paths import Home
from workbench.queue import argtypes as checked

Row = dict[str, Any]  # {"key", "a", "b", "same"}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "diff", help="two runs or jobs side by side: params, code, environment, data, metrics"
    )
    p.add_argument("a", type=checked.job_id, metavar="A", help="a job id")
    p.add_argument("b", type=checked.job_id, metavar="B", help="another job id")
    p.add_argument("--all", action="store_true", help="also the rows that are the same")
    p.add_argument("--json", action="store_true", help="every row, with `same` for each")
    p.set_defaults(handler=cmd_diff)


def _row(key: str, a: Any, b: Any) -> Row:
    return {"key": key, "a": a, "b": b, "same": a == b}


def _rows(a: dict[str, Any], b: dict[str, Any]) -> list[Row]:
    return [_row(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b), key=str)]


def side(store: Any, job_id: int) -> dict[str, dict[str, Any]]:
    """What `diff` compares of one job, by section: {"params", "code", "environment",
    "datasets", "metrics"}, each {name: value}. Raises NoSuchJob for an unknown id."""
    from workbench.catalog import tracking
    from workbench.db.repro import repro_of

    job = store.get(job_id)
    run = tracking.get_run(store, job_id)
    params: dict[str, Any] = {"kind": job.kind}
    if job.argv:
        params["command"] = " ".join(job.argv)
    datasets: dict[str, Any] = {}
    metrics: dict[str, Any] = dict(store.last_metrics(job_id))
    if run is not None:
        params.update({k: v for k, v in run.params.items()})
        if run.dataset:
            datasets[run.dataset] = f"v{run.dataset_version} ({run.dataset_hash[:12]})"
        metrics.update(run.metrics)
    record = repro_of(store, job_id) or {}
    code = record.get("code") or {}
    env = record.get("environment") or {}
    started = record.get("started") or {}
    code_side: dict[str, Any] = {}
    if code:
        code_side = {
            "git": code.get("git"),
            "commit": code.get("commit"),
            "branch": code.get("branch"),
            "dirty": code.get("dirty"),
            "diff": code.get("diff") or "",
            "untracked": ", ".join(code.get("untracked") or []) or None,
            "path": code.get("root") or code.get("path"),
        }
    if record.get("snapshot"):
        code_side["snapshot"] = record["snapshot"].get("path")
    environment: dict[str, Any] = {}
    if env:
        python = env.get("python") or {}
        environment = {
            "python": python.get("version"),
            "torch": env.get("torch"),
            "cuda build": env.get("cuda"),
            "host": env.get("host"),
            "platform": env.get("platform"),
        }
        for name, version in (env.get("distributions") or {}).items():
            environment[f"package {name}"] = version
    if started:
        environment["driver"] = started.get("driver")
        environment["gpus"] = ", ".join(started.get("gpus") or []) or None
        environment["started on"] = started.get("host")
    return {
        "params": params,
        "code": code_side,
        "environment": environment,
        "datasets": datasets,
        "metrics": metrics,
    }


SECTIONS = ("params", "code", "environment", "datasets", "metrics")


def compare(store: Any, a: int, b: int) -> dict[str, Any]:
    """{"a": id, "b": id, section: [rows]} for every section of SECTIONS (see `side`)."""
    left, right = side(store, a), side(store, b)
    out: dict[str, Any] = {"a": a, "b": b}
    for section in SECTIONS:
        out[section] = _rows(left[section], right[section])
    return out


def _cell(value: Any, width: int = 40) -> str:
    if value is None:
        return "-"
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    text = " ".join(text.split()) if "\n" not in text else f"{len(text.splitlines())} lines"
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_diff(args: argparse.Namespace) -> int:
    from workbench.db.store import NoSuchJob, Store

    home = Home.current().ensure()
    store = Store.open(home.state_db)
    try:
        result = compare(store, args.a, args.b)
    except NoSuchJob as error:
        print(f"workbench: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(dumps(result))
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("", f"job {args.a}", f"job {args.b}", ""):
        table.add_column(column)
    hidden = 0
    for section in SECTIONS:
        rows = result[section]
        shown = [r for r in rows if args.all or not r["same"] or section in ("params", "metrics")]
        hidden += len(rows) - len(shown)
        if not shown:
            continue
        table.add_row(f"[bold]{section}[/]", "", "", "")
        for row in shown:
            table.add_row(
                "  " + escape(str(row["key"])),
                escape(_cell(row["a"])),
                escape(_cell(row["b"])),
                "" if row["same"] else "[yellow]differs[/]",
            )
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    if hidden:
        console.print(f"{hidden} rows the same not shown (--all shows them)")
    return 0
