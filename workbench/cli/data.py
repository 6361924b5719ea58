"""Data commands: `workbench ingest`, `workbench sql`, `workbench datasets` (and `prune`)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.jsonout import dumps
from workbench.paths import Home
from workbench.queue import argtypes as checked
from workbench.units import format_duration, format_size, parse_duration

SHOWN_ROWS = 200


def register(sub: Any) -> None:
    p = sub.add_parser("ingest", help="queue an ingest job: files or globs into a dataset version")
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SRC",
        help="CSV/TSV, Parquet, JSON or NDJSON files or globs, http(s):// URLs, s3://bucket/key"
        " objects, or a SQLite database or postgresql:// URI (with --table or --query)",
    )
    p.add_argument("--dataset", required=True, help="dataset name (letters, digits, _)")
    p.add_argument(
        "--format",
        choices=["auto", "csv", "tsv", "parquet", "json", "ndjson", "sqlite", "postgres"],
    )
    p.add_argument("--table", help="SQLite or PostgreSQL: the table to ingest")
    p.add_argument("--query", help="SQLite or PostgreSQL: a read-only query whose result to ingest")
    p.add_argument("--mode", choices=["replace", "append"], help="append: keep the previous rows")
    p.add_argument("--type", action="append", metavar="COL=TYPE", help="override a column's type")
    p.add_argument("--delimiter")
    p.add_argument("--no-header", action="store_true", help="the CSV files have no header row")
    p.add_argument(
        "--null",
        action="append",
        metavar="TEXT",
        help="a string that means null in CSV/TSV (repeatable; added to the defaults: empty,"
        " NA, N/A, NaN, null, NULL, None)",
    )
    p.add_argument(
        "--no-default-nulls",
        action="store_true",
        help="only --null strings (and nothing else) mean null",
    )
    p.add_argument(
        "--sample-size",
        type=int,
        metavar="N",
        help="CSV/TSV: guess types from the first N rows instead of the whole input; a later"
        " value that does not fit is rejected (or fails the job), never rounded",
    )
    p.add_argument(
        "--encoding",
        help="CSV/TSV: the files' encoding (e.g. latin-1, cp1252); without it UTF-8 is checked"
        " and a file with no multi-byte UTF-8 is read as cp1252 or latin-1, logged",
    )
    p.add_argument(
        "--date-format",
        metavar="FORMAT",
        help="CSV/TSV: read dates that are not ISO with this strptime format (e.g. %%d/%%m/%%Y);"
        " without it they stay text",
    )
    p.add_argument(
        "--encrypt",
        action="store_true",
        help="write the version (and its rejects) encrypted with the lake's key: config.toml"
        " [lake] key_file, a file of mode 0600 (AES-GCM Parquet encryption)",
    )
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
        "--columns",
        type=checked.count,
        metavar="N",
        help="table: start at column N (a wide result shows the columns that fit, and says so)",
    )
    p.add_argument(
        "--out", metavar="FILE", help="write the whole result to FILE (.csv or .parquet)"
    )
    p.set_defaults(handler=cmd_sql)

    p = sub.add_parser(
        "datasets",
        help="datasets in the lake: versions, rows, size; `datasets prune` removes old versions",
    )
    p.add_argument("name", nargs="?", help="one dataset: its versions and columns; or `prune`")
    p.add_argument("dataset", nargs="?", help="with prune: only this dataset")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--shared",
        action="store_true",
        help="team mode: the datasets other users share with you (OWNER.DATASET), and yours",
    )
    p.add_argument(
        "--keep", type=int, metavar="N", help="prune: keep the newest N versions of each dataset"
    )
    p.add_argument(
        "--older-than", metavar="AGE", help="prune: remove versions older than AGE (e.g. 30d)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="prune: list what would go, remove nothing"
    )
    p.set_defaults(handler=cmd_datasets)


def cmd_ingest(args: argparse.Namespace) -> int:
    from workbench.catalog import lake
    from workbench.cli.main import UsageError, _client, _print_json, _wait_exit
    from workbench.queue.requests import build_request

    try:
        lake.check_dataset_name(args.dataset, "--dataset")
    except lake.LakeError as error:
        raise UsageError(str(error)) from None
    store = _open(Home.current())
    try:
        other = lake.same_name_ignoring_case(store, args.dataset)
    finally:
        store.close()
    if other is not None:
        raise UsageError(
            f"--dataset: {args.dataset!r}: the lake has {other!r}, the same name but for case"
            f" (SQL names ignore case); choose another name or ingest into {other!r}"
        )
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
    if args.no_default_nulls:
        table["default_nulls"] = False
    if args.sample_size is not None:
        table["sample_size"] = args.sample_size
    if args.max_rejects is not None:
        table["max_rejects"] = args.max_rejects
    if args.encoding:
        table["encoding"] = args.encoding
    if args.table:
        table["table"] = args.table
    if args.query:
        table["query"] = args.query
    if args.date_format:
        table["date_format"] = args.date_format
    if args.encrypt:
        try:
            lake.lake_key(Home.current(), "--encrypt")
        except ValueError as error:  # LakeError, or config.toml that does not parse
            raise UsageError(str(error)) from None
        table["encrypt"] = True
    if args.cpus is not None:
        table["cpus"] = args.cpus
    if args.type:
        types = {}
        for pair in args.type:
            column, sep, kind = pair.partition("=")
            if not sep or not column or not kind:
                raise UsageError(f"--type: expected COLUMN=TYPE, got {pair!r}")
            why = lake.check_type_name(kind)
            if why is not None:
                raise UsageError(f"--type {pair}: {kind!r} is not a DuckDB type ({why})")
            types[column] = kind
        table["types"] = types
    request = build_request(table, Path.cwd(), "ingest")
    if request.credentials is not None and request.credentials.urls:
        print(
            "workbench: the password in "
            + ", ".join(sorted(request.credentials.urls.values()))
            + " is kept out of the job's records and handed to the daemon; a password on a"
            " command line shows in `ps` and in shell history: prefer PGPASSWORD or ~/.pgpass",
            file=sys.stderr,
        )
    from workbench.daemon.executors.slurm import bind_executor

    (request,) = bind_executor([request], None, Home.current(), ["ingest"])
    client = _client()
    job_id = client.submit(request)
    if args.json:
        from workbench.present import job_json

        _print_json(job_json(client.store.get(job_id)))
    else:
        print(job_id)
    if not args.wait:
        return 0
    from workbench.jobmodel.states import JobState

    jobs = _follow(client, job_id, quiet=args.json)
    code: int = _wait_exit(jobs, [job_id], quiet=args.json)
    if not args.json and jobs and jobs[0].state == JobState.SUCCEEDED:
        print(_ingest_summary(client.store, args.dataset))
    return code


def _ingest_summary(store: Any, dataset: str) -> str:
    """`dataset scores v2: 1,820 rows, 3 rejected`: what a finished ingest made."""
    from workbench.catalog import lake

    versions = [info for info in lake.versions(store) if info.dataset == dataset]
    if not versions:
        return f"dataset {dataset}: no version recorded"
    info = max(versions, key=lambda v: v.version)
    return (
        f"dataset {info.dataset} v{info.version}: {info.rows:,} rows,"
        f" {info.rejected_rows:,} rejected"
    )


def _follow(client: Any, job_id: int, quiet: bool) -> list[Any]:
    """Wait for one job, with a rich progress bar on a terminal; its final row in a list (empty
    when it was removed meanwhile)."""
    from workbench.db.store import SETTLED

    if quiet or not sys.stderr.isatty():
        # state.db's data_version every 10 ms (a pragma, no query): the end of a short ingest is
        # seen ~20 ms sooner on average than with the default 50 ms, for <0.1% of a core.
        return list(client.wait([job_id], poll_s=0.01))
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
            client.give_again([job_id])  # to a daemon that restarted and lost them
            job = client.store.find(job_id)
            if job is None:
                return []
            from rich.markup import escape

            from workbench.safetext import display_text

            said = escape(display_text(job.progress_msg or job.state))
            progress.update(task, completed=job.progress or 0.0, description=said)
            if job.state in SETTLED:
                return [job]
            time.sleep(0.1)


def _open(home: Home) -> Any:
    from workbench.db.store import Store

    home.ensure()
    return Store.open(home.state_db)


def _missing_table(message: str) -> str | None:
    """The table a DuckDB `Catalog Error: Table with name X does not exist!` names."""
    import re

    match = re.search(r"Table with name (\S+) does not exist", message)
    return match.group(1).strip('"') if match else None


def _shared_name(query: str, table: str) -> str | None:
    """`OWNER.TABLE` when `query` names `table` after an owner (a shared dataset), else None."""
    import re

    base = re.escape(table.split("@")[0])
    match = re.search(rf'([A-Za-z_][\w.-]*?)\."?{base}\b', query, flags=re.IGNORECASE)
    return f"{match.group(1)}.{table}" if match else None


def _no_such_dataset(store: Any, name: str) -> str:
    """`no dataset 'nosuch'; did you mean 'scores'? datasets: scores, toy; store tables: jobs,
    ...`: what can be queried, instead of DuckDB's guess among its system tables."""
    import difflib

    from workbench.catalog import lake

    datasets = sorted({info.dataset for info in lake.versions(store)})
    tables = list(lake.STORE_TABLES)
    close = difflib.get_close_matches(name, datasets + tables, n=1)
    text = f"no dataset {name!r}"
    if close:
        text += f"; did you mean {close[0]!r}?"
    text += f"; datasets: {', '.join(datasets) if datasets else 'none yet (workbench ingest)'}"
    return text + f"; store tables: {', '.join(tables)}"


def _shared_for(query: str) -> list[Any]:
    """The versions other users share with this one (team mode) that `query` may name: asked
    of the system daemon only when one is installed and the query holds an `OWNER.DATASET`
    word; a daemon that does not answer is noted, and the query runs over the own lake."""
    import re

    if not re.search(r"[A-Za-z_][\w.-]*\.[A-Za-z_]", query):
        return []
    from workbench.system import installed_socket

    if installed_socket() is None:
        return []
    from workbench.catalog import shared
    from workbench.daemon.sharing import RequestError, visible_shares

    try:
        return shared.versions(visible_shares())
    except (OSError, RequestError) as error:
        print(f"sql: note: shared datasets not listed ({error})", file=sys.stderr)
        return []


def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    from workbench.catalog import lake
    from workbench.queue.spec import SpecError

    try:
        lake.check_sql_text(args.query)
    except lake.QueryRefused as error:
        raise SpecError(f"sql: {error}") from None
    home = Home.current()
    store = _open(home)
    try:
        limits = lake.settings(home)
    except ValueError as error:
        raise SpecError(str(error)) from None
    try:
        con = lake.connect(
            home, store, for_sql=args.query, limits=limits, shared=_shared_for(args.query)
        )
    except (duckdb.Error, lake.LakeError) as error:  # a view the catalog cannot make, a key
        raise SpecError(f"sql: {str(error).splitlines()[0]}") from None
    started = time.perf_counter()
    rows = 0
    deadline = lake.Deadline(con, limits)

    if args.out and lake.in_lake(home, Path(args.out)):
        con.close()
        raise SpecError(
            f"sql: --out {args.out}: that is inside the lake ({home.lake}), where published"
            " versions never change; write the result elsewhere"
        )

    def work() -> int:
        lake.check_read_only(con, args.query)
        if args.out:
            # Parquet keeps DuckDB's types; CSV gets the text forms (as --csv does).
            as_text = Path(args.out).suffix.lower() == ".csv"
            sql = (lake.text_sql if as_text else lake.limited_sql)(con, args.query, args.limit)
            written = _write_result(con.sql(sql), Path(args.out))
            print(f"{written} rows written to {args.out}")
            return written
        if args.json or args.csv:
            result = con.execute(lake.text_sql(con, args.query, args.limit))
            return _stream(result, args.json)
        return _print_table(con, args.query, args.limit, args.columns or 1)

    as_table = not (args.out or args.json or args.csv)
    try:
        with deadline:
            rows = _interruptible(con, work, _import_table_modules if as_table else None)
    except (lake.QueryRefused, duckdb.Error, KeyboardInterrupt) as error:
        stopped = deadline.explain(error)
        message = str(stopped or error)
        lake.record_query(store, args.query, None, None, message)
        if stopped is not None:
            print(f"sql: {stopped}", file=sys.stderr)
            return 130 if str(stopped) == "interrupted" else 1
        missing = _missing_table(str(error))
        if missing is not None:
            shared = _shared_name(args.query, missing)
            if shared is not None:
                raise SpecError(
                    f"sql: no shared dataset {shared} that you may read (workbench datasets"
                    " --shared lists them; its owner shares it with `workbench share`)"
                ) from None
            raise SpecError(f"sql: {_no_such_dataset(store, missing)}") from None
        raise SpecError(f"sql: {error}") from None
    finally:
        con.close()
    lake.record_query(store, args.query, time.perf_counter() - started, rows, None)
    store.close()
    _leave_objects_to_exit()
    return 0


def _leave_objects_to_exit() -> None:
    """When this process exits, let the objects that exist now go with it instead of the
    interpreter's last garbage collections walking them all (every imported module's objects:
    ~20 ms of `workbench sql`'s ~0.2 s). Registered with atexit (`gc.freeze` then runs before
    those collections), so an in-process caller is unaffected until it exits itself. Nothing is
    left unwritten: the connections are closed and the standard streams are flushed after."""
    import atexit
    import gc

    atexit.register(gc.freeze)


def _interruptible(
    con: Any, work: Callable[[], int], meanwhile: Callable[[], None] | None = None
) -> int:
    """Run `work` in a thread while this (main) thread waits, so that Ctrl-C reaches Python
    while DuckDB computes and can interrupt the connection; DuckDB's interrupt error then comes
    back from the worker and is reported as `interrupted`. `meanwhile` runs here first, while
    the worker's query runs (DuckDB computes without holding the GIL)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["rows"] = work()
        except BaseException as error:  # handed to the main thread below
            outcome["error"] = error

    interrupted = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        interrupted.set()
        con.interrupt()  # the worker's query ends within milliseconds

    thread = threading.Thread(target=target, name="sql", daemon=True)
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        thread.start()
        if meanwhile is not None:
            meanwhile()
        while thread.is_alive():
            thread.join(0.1)
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted.is_set():
        raise KeyboardInterrupt
    if "error" in outcome:
        raise outcome["error"]
    return int(outcome["rows"])


def _labels(result: Any) -> list[str]:
    """The result's column names, repeated ones renamed as the table names them (`a`, `a_1`:
    JSON would otherwise keep only the last `a`), the renames said on stderr."""
    from workbench.safetext import display_text, unique_labels

    columns, notes = unique_labels([str(d[0]) for d in result.description or []])
    if notes:
        print(
            f"sql: repeated column names renamed: {display_text(', '.join(notes))}",
            file=sys.stderr,
        )
    return columns


def _stream(result: Any, as_json: bool) -> int:
    """Every row to stdout: one JSON object per line (NaN and infinities as null), or CSV
    (where they stay `nan` and `inf`; to a terminal, control characters shown escaped)."""
    from workbench.safetext import display_text

    columns = _labels(result)
    out = sys.stdout
    rows = 0
    if as_json:
        while batch := result.fetchmany(10_000):
            out.write("".join(dumps(dict(zip(columns, row, strict=True))) + "\n" for row in batch))
            rows += len(batch)
        return rows
    writer = csv.writer(out)
    terminal = out.isatty()
    writer.writerow([display_text(c) for c in columns] if terminal else columns)
    while batch := result.fetchmany(10_000):
        if terminal:
            batch = [[display_text(v) if isinstance(v, str) else v for v in r] for r in batch]
        writer.writerows(batch)
        rows += len(batch)
    return rows


def _fitting_columns(labels: list[str], rows: list[tuple[Any, ...]], first: int, width: int) -> int:
    """How many columns from index `first` fit in `width` characters, each at its header's or
    widest shown value's width (at most 24), plus borders; at least one."""
    used = 1
    count = 0
    for index in range(first, len(labels)):
        widest = max([len(labels[index]), *(len(str(r[index])) for r in rows[:50])])
        used += min(max(widest, 4), 24) + 3
        if used > width and count:
            break
        count += 1
    return count


def _import_table_modules() -> None:
    """Import what `_print_table` draws with (rich's console, ~20 ms), meant to run while the
    query does."""
    import rich.console  # noqa: F401

    import workbench.cli.resulttable  # noqa: F401


def _print_table(con: Any, sql: str, limit: int | None, first_column: int = 1) -> int:
    """The first rows as a table: DuckDB computes only what is shown (one row more, to know
    whether there is more), instead of every row being pulled through Python to count them.
    The query runs before rich is imported, so `_import_table_modules` can import it
    meanwhile."""
    from workbench.catalog import lake
    from workbench.safetext import display_text

    shown_limit = SHOWN_ROWS if limit is None else min(limit, SHOWN_ROWS)
    result = con.execute(lake.text_sql(con, sql, shown_limit + 1))
    columns = _labels(result)
    fetched = result.fetchall()
    more = len(fetched) > shown_limit
    shown = fetched[:shown_limit]
    from rich.console import Console

    from workbench.cli.resulttable import print_table

    console = Console(width=None if sys.stdout.isatty() else 160)
    # Cells and headers are shown as text: data is never read as rich markup (`[bold]`, `[/]`).
    labels = [display_text(c) for c in columns]
    first = min(first_column, max(len(labels), 1)) - 1
    count = _fitting_columns(labels, shown, first, console.width)
    print_table(
        console,
        labels[first : first + count],
        [
            ["NULL" if v is None else display_text(str(v)) for v in row[first : first + count]]
            for row in shown
        ],
    )
    if count < len(labels):
        last = first + count
        after = f"; --columns {last + 1} for the next" if last < len(labels) else ""
        console.print(
            f"(columns {first + 1:,}-{last:,} of {len(labels):,} shown{after}; --json or --csv"
            " for every column)",
            markup=False,
        )
    if more and (limit is None or limit > shown_limit):
        console.print(
            f"(first {shown_limit} rows shown; more follow: use --csv, --json or --out for all)"
        )
    return len(shown)


def _write_result(result: Any, target: Path) -> int:
    """Stream a query's result to CSV or Parquet in record batches (never all in memory); the
    file is the user's, so it gets the user's umask, not the workbench's private one."""
    from workbench.paths import users_umask

    with users_umask():
        return _write_result_as_user(result, target)


def _write_result_as_user(result: Any, target: Path) -> int:
    """Stream a query's result to CSV or Parquet in record batches (never all in memory),
    through `target.part`, renamed at the end. On every error (interrupt, time or memory
    limit, a query error, a full disk, Ctrl-C) the part file is removed. DuckDB's errors that
    Arrow's reader hands back as OSError/ArrowException are raised again as DuckDB's own
    (interrupt, out of memory, or a plain duckdb.Error), so the caller reports them as it does
    without --out; a file that cannot be written is a SpecError naming it."""
    import duckdb
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from workbench.queue.spec import SpecError

    suffix = target.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise SpecError(f"--out: {target.name}: give a .csv or .parquet file")
    tmp = target.with_name(target.name + ".part")
    rows = 0
    writer: Any = None

    def open_writer(schema: Any) -> Any:
        try:
            if suffix == ".parquet":
                return pq.ParquetWriter(tmp, schema)
            return pacsv.CSVWriter(tmp, schema)
        except OSError as error:
            raise SpecError(f"--out: cannot write {target}: {error}") from None

    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SpecError(f"--out: cannot create {target.parent}: {error}") from None
        reader = result.fetch_arrow_reader(100_000)  # DuckDB 1.4 and 2.0 both have it
        batches = iter(reader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (OSError, pa.ArrowException) as error:
                raise _duckdb_error(duckdb, error) from None
            if writer is None:
                writer = open_writer(batch.schema)
            try:
                writer.write_batch(batch)
            except OSError as error:
                raise SpecError(f"--out: cannot write {target}: {error}") from None
            rows += batch.num_rows
        if writer is None:
            writer = open_writer(reader.schema)
        writer.close()
        writer = None
        tmp.replace(target)
    except BaseException:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        with contextlib.suppress(OSError):  # e.g. its folder is a file: there is none
            tmp.unlink(missing_ok=True)
        raise
    return rows


def _duckdb_error(duckdb: Any, error: BaseException) -> BaseException:
    """DuckDB's error from the text Arrow's reader wrapped it in ("INTERRUPT Error: ...")."""
    text = str(error)
    if text.startswith("INTERRUPT Error"):
        return duckdb.InterruptException(text)  # type: ignore[no-any-return]
    if text.startswith("Out of Memory Error"):
        return duckdb.OutOfMemoryException(text)  # type: ignore[no-any-return]
    return duckdb.Error(text)  # type: ignore[no-any-return]


def cmd_datasets(args: argparse.Namespace) -> int:
    from workbench.catalog import lake
    from workbench.db import catalog as db_catalog

    if args.shared:
        from workbench.cli.share import print_shared

        return print_shared(args.json)
    home = Home.current()
    store = _open(home)
    if args.name == "prune":
        return _prune(home, store, args)
    if args.dataset or args.keep is not None or args.older_than or args.dry_run:
        from workbench.cli.main import UsageError

        raise UsageError("--keep, --older-than, --dry-run and a second name go with `prune`")
    if args.name:
        infos = lake.versions(store, args.name)
        if not infos:
            lake.version_info(store, args.name)  # raises with the known names
    else:
        infos = lake.latest_versions(store)
    if args.json:
        if args.name:
            print(dumps([i.to_json() for i in infos]))
        else:
            counts = db_catalog.version_counts(store)
            print(dumps([{**i.to_json(), "versions": counts[i.dataset]} for i in infos]))
        return 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from workbench.safetext import display_text

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
            Text(display_text(f"{first_source}{more}")),
        )
    console = Console(width=None if sys.stdout.isatty() else 160)
    if not infos:
        console.print("no datasets yet (workbench ingest FILE --dataset NAME)")
        return 0
    console.print(table)
    if args.name:
        latest = infos[-1]
        columns = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("column", "type", "nulls"):
            columns.add_column(column)
        for name, kind in latest.schema:
            nulls = latest.nulls.get(name)
            columns.add_row(
                Text(display_text(name)),
                Text(display_text(kind)),
                "?" if nulls is None else str(nulls),
            )
        console.print(f"\ncolumns of v{latest.version} ({latest.rows} rows):")
        console.print(columns)
    return 0


def _prune(home: Home, store: Any, args: argparse.Namespace) -> int:
    """`workbench datasets prune [NAME]`: remove old versions by the rule given as options, else
    by `[lake]` in config.toml."""
    from workbench.catalog import lake
    from workbench.cli.main import UsageError

    try:
        rule = lake.settings(home)
        keep = rule.keep_versions if args.keep is None else args.keep
        older = rule.keep_for_s if args.older_than is None else parse_duration(args.older_than)
    except ValueError as error:
        raise UsageError(f"datasets prune: {error}") from None
    if keep < 0:
        raise UsageError("datasets prune: --keep must not be negative")
    if not keep and not older:
        raise UsageError(
            "datasets prune: give --keep N or --older-than AGE (or set keep_versions / keep_for"
            " under [lake] in config.toml)"
        )
    if args.dataset:
        lake.version_info(store, args.dataset)  # a LakeError names the known datasets
    chosen = lake.prunable(store, args.dataset, keep, older)
    freed = 0 if args.dry_run else lake.prune(home, store, chosen)
    if args.json:
        print(
            dumps(
                {
                    "removed" if not args.dry_run else "would_remove": [
                        {"dataset": i.dataset, "version": i.version, "bytes": i.bytes}
                        for i in chosen
                    ],
                    "bytes_freed": freed,
                }
            )
        )
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for info in chosen:
        print(f"{verb} {info.dataset} v{info.version} ({format_size(info.bytes)})")
    total = sum(i.bytes for i in chosen)
    print(f"{verb} {len(chosen)} version(s), {format_size(total)}")
    return 0
