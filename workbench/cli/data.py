"""Data commands: `workbench ingest`, `workbench sql`, `workbench datasets`."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from workbench.cli import args as checked
from workbench.paths import Home
from workbench.units import format_duration, format_size


def register(sub: Any) -> None:
    p = sub.add_parser("ingest", help="queue an ingest job: files or globs into a dataset version")
    p.add_argument(
        "sources", nargs="+", metavar="SRC", help="CSV/TSV, Parquet, JSON or NDJSON files or globs"
    )
    p.add_argument("--dataset", required=True, help="dataset name (letters, digits, _)")
    p.add_argument("--format", choices=["auto", "csv", "tsv", "parquet", "json", "ndjson"])
    p.add_argument("--mode", choices=["replace", "append"], help="append: keep the previous rows")
    p.add_argument("--type", action="append", metavar="COL=TYPE", help="override a column's type")
    p.add_argument("--delimiter")
    p.add_argument("--no-header", action="store_true", help="the CSV files have no header row")
    p.add_argument("--null", action="append", metavar="TEXT", help="a string that means null")
    p.add_argument(
        "--max-rejects",
        type=checked.count,
        help="fail when more rows than this are bad (default 10)",
    )
    p.add_argument(
        "--cpus",
        type=checked.amount,
        help="cores to reserve; DuckDB uses that many threads (default 1)",
    )
    p.add_argument("--wait", action="store_true", help="wait for it; exit 0 iff it succeeded")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_ingest)

    p = sub.add_parser("sql", help="run a read-only SQL query over the lake (DuckDB)")
    p.add_argument(
        "query", help='SQL; datasets are views (name, "name@v2"), plus jobs, metrics, runs...'
    )
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object per row")
    output.add_argument("--csv", action="store_true")
    p.add_argument("--limit", type=checked.count, help="stop after this many rows")
    p.add_argument(
        "--out", metavar="FILE", help="write the whole result to FILE (.csv or .parquet)"
    )
    p.set_defaults(handler=cmd_sql)

    p = sub.add_parser("datasets", help="datasets in the lake: versions, rows, size")
    p.add_argument("name", nargs="?", help="one dataset: all its versions")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_datasets)


def cmd_ingest(args: argparse.Namespace) -> int:
    from workbench.cli.main import UsageError, _client, _print_json, _wait_exit
    from workbench.queue.requests import build_request

    table: dict[str, Any] = {"kind": "ingest", "source": args.sources, "dataset": args.dataset}
    if args.format:
        table["format"] = args.format
    if args.mode:
        table["mode"] = args.mode
    if args.delimiter:
        table["delimiter"] = args.delimiter
    if args.no_header:
        table["header"] = False
    if args.null:
        table["null"] = args.null
    if args.max_rejects is not None:
        table["max_rejects"] = args.max_rejects
    if args.cpus is not None:
        table["cpus"] = args.cpus
    if args.type:
        types = {}
        for pair in args.type:
            column, sep, kind = pair.partition("=")
            if not sep or not column or not kind:
                raise UsageError(f"--type: expected COLUMN=TYPE, got {pair!r}")
            types[column] = kind
        table["types"] = types
    request = build_request(table, Path.cwd(), "ingest")
    client = _client()
    job_id = client.submit(request)
    if args.json:
        from workbench.present import job_json

        _print_json(job_json(client.store.get(job_id)))
    else:
        print(job_id)
    if not args.wait:
        return 0
    job = _follow(client, job_id, quiet=args.json)
    return _wait_exit([job], quiet=args.json)


def _follow(client: Any, job_id: int, quiet: bool) -> Any:
    """Wait for one job, with a rich progress bar on a terminal."""
    from workbench.db.store import SETTLED

    if quiet or not sys.stderr.isatty():
        return client.wait([job_id])[0]
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(f"job {job_id}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=Console(file=sys.stderr),
    ) as progress:
        task = progress.add_task("queued", total=1.0)
        while True:
            job = client.store.get(job_id)
            progress.update(
                task, completed=job.progress or 0.0, description=job.progress_msg or job.state
            )
            if job.state in SETTLED:
                return job
            time.sleep(0.1)


def _open(home: Home) -> Any:
    from workbench.db.store import Store

    home.ensure()
    return Store.open(home.state_db)


def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    from workbench.catalog import lake
    from workbench.queue.spec import SpecError

    home = Home.current()
    store = _open(home)
    con = lake.connect(home, store, for_sql=args.query)
    started = time.perf_counter()
    try:
        lake.check_read_only(con, args.query)
        query = args.query.strip().rstrip(";")
        if args.limit is not None:
            query = f"SELECT * FROM ({query}) LIMIT {int(args.limit)}"
        if args.out:
            rows = _write_result(con.sql(query), Path(args.out))
            print(f"{rows} rows written to {args.out}")
            lake.record_query(store, args.query, time.perf_counter() - started, rows, None)
            return 0
        result = con.execute(query)
    except (lake.QueryRefused, duckdb.Error) as error:
        lake.record_query(store, args.query, None, None, str(error))
        raise SpecError(f"sql: {error}") from None
    columns = [d[0] for d in result.description or []]
    rows = 0
    out = sys.stdout
    if args.json:
        while batch := result.fetchmany(10_000):
            for row in batch:
                out.write(json.dumps(dict(zip(columns, row, strict=True)), default=str) + "\n")
            rows += len(batch)
    elif args.csv:
        writer = csv.writer(out)
        writer.writerow(columns)
        while batch := result.fetchmany(10_000):
            writer.writerows(batch)
            rows += len(batch)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(*columns, header_style="bold")
        shown = result.fetchmany(200)
        for row in shown:
            table.add_row(*["NULL" if v is None else str(v) for v in row])
        rest = 0
        while batch := result.fetchmany(100_000):  # counted, not kept
            rest += len(batch)
        rows = len(shown) + rest
        console = Console(width=None if sys.stdout.isatty() else 160)
        console.print(table)
        if rest:
            console.print(f"({rows} rows; first 200 shown: use --csv or --json for all)")
    lake.record_query(store, args.query, time.perf_counter() - started, rows, None)
    return 0


def _write_result(result: Any, target: Path) -> int:
    """Stream a query's result to CSV or Parquet in record batches (never all in memory)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from workbench.queue.spec import SpecError

    suffix = target.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise SpecError(f"--out: {target.name}: give a .csv or .parquet file")
    target.parent.mkdir(parents=True, exist_ok=True)
    reader = result.to_arrow_reader(100_000)
    tmp = target.with_name(target.name + ".part")
    rows = 0
    writer: Any = None
    try:
        for batch in reader:
            if writer is None:
                writer = (
                    pq.ParquetWriter(tmp, batch.schema)
                    if suffix == ".parquet"
                    else pacsv.CSVWriter(tmp, batch.schema)
                )
            writer.write_batch(batch)
            rows += batch.num_rows
        if writer is None:
            writer = (
                pq.ParquetWriter(tmp, reader.schema)
                if suffix == ".parquet"
                else pacsv.CSVWriter(tmp, reader.schema)
            )
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(target)
    return rows


def cmd_datasets(args: argparse.Namespace) -> int:
    from workbench.catalog import lake

    home = Home.current()
    store = _open(home)
    if args.name:
        infos = lake.versions(store, args.name)
        if not infos:
            lake.version_info(store, args.name)  # raises with the known names
    else:
        infos = lake.latest_versions(store)
    if args.json:
        if args.name:
            print(json.dumps([i.to_json() for i in infos]))
        else:
            from workbench.db import catalog as db_catalog

            counts = db_catalog.version_counts(store)
            print(json.dumps([{**i.to_json(), "versions": counts[i.dataset]} for i in infos]))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("dataset", "version", "rows", "rejected", "size", "columns", "age", "source"):
        table.add_column(column)
    now = time.time()
    for info in infos:
        first_source = info.sources[0]["path"] if info.sources else "-"
        more = f" +{len(info.sources) - 1}" if len(info.sources) > 1 else ""
        table.add_row(
            info.dataset,
            f"v{info.version}",
            str(info.rows),
            str(info.rejected_rows),
            format_size(info.bytes),
            str(len(info.schema)),
            format_duration(now - info.created_at),
            f"{first_source}{more}",
        )
    console = Console(width=None if sys.stdout.isatty() else 160)
    if infos:
        console.print(table)
    else:
        console.print("no datasets yet (workbench ingest FILE --dataset NAME)")
    return 0
