"""Data benchmarks, each against a baseline in the same run (interleaved, repeated; ratios as
median with their range): `workbench ingest --wait` of a generated CSV with default settings
against DuckDB's own `COPY (SELECT * FROM read_csv(...)) TO '...parquet'`; the ingest's
whole-input types against the same ingest with `--sample-size` (DuckDB's sample); and, over 10
million rows, `workbench sql` (the printed first 200 rows, and `--json --limit 100`) and the Data
screen's first page against DuckDB's Python API. The same for a Parquet source. Where the
remaining time goes: the job's own phase timings (its log) and cProfile's top costs of
`workbench sql`.
Usage: nice python bench/ingest.py [--rows N] [--big N] [--repeat N] [--quick | --tiny]
[--core | --sql-only] (--tiny: a smoke run of every measure on a few thousand rows; --core: only
the CSV and Parquet ingests against DuckDB's COPY and the fixed cost, for a loaded machine;
--sql-only: only the `sql` and Data screen measures, no ingest; none of these writes to
RESULTS.md)"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/queue.py would shadow the standard library's `queue` (Textual imports it): keep this
# folder out of the front of the path and import the shared helpers from its end.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.append(str(HERE))
from _results import median, table, write_section  # noqa: E402

from workbench.db.store import Store  # noqa: E402
from workbench.paths import Home  # noqa: E402

PAGE = 100
SHOWN = 200  # rows `workbench sql` prints without a limit
DEFAULT_ROWS = 3_000_000
DEFAULT_CPUS = min(4, os.cpu_count() or 1)  # the ingest kind's default reservation


def spread(ratios: list[float]) -> str:
    """`1.23x (1.10-1.40)`: the median ratio and its range over the repeats."""
    return f"{median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


# Every process of a run (ours and the bare DuckDB baseline) may cache its bytecode: with
# PYTHONDONTWRITEBYTECODE set (as on the shared machine) each start compiles every module
# again (~0.1 s for the CLI), which no user's installed workbench pays.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def bare_process(glob: str, rows: int) -> float:
    """A new Python process that fetches `rows` rows of the Parquet glob with DuckDB: what a
    user's own script would cost for the same rows."""
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import duckdb; c = duckdb.connect();"
            f" c.execute(\"SELECT * FROM read_parquet('{glob}')\").fetchmany({rows})",
        ],
        check=True,
    )
    return time.perf_counter() - started


def generate_csv(path: Path, rows: int) -> None:
    """A CSV with integers, floats, strings, dates, booleans and some nulls."""
    import duckdb

    duckdb.connect().execute(
        f"COPY (SELECT i AS id, i * 0.25 AS x, 'name_' || (i % 1000) AS label,"
        f" DATE '2020-01-01' + (i % 3650)::INTEGER AS day, i % 7 = 0 AS flag,"
        f" CASE WHEN i % 11 = 0 THEN NULL ELSE i % 97 END AS maybe"
        f" FROM range({rows}) t(i)) TO '{path}' (HEADER, DELIMITER ',')"
    )


def generate_ndjson(path: Path, rows: int) -> None:
    """The same columns as NDJSON."""
    import duckdb

    duckdb.connect().execute(
        f"COPY (SELECT i AS id, i * 0.25 AS x, 'name_' || (i % 1000) AS label,"
        f" i % 7 = 0 AS flag, CASE WHEN i % 11 = 0 THEN NULL ELSE i % 97 END AS maybe"
        f" FROM range({rows}) t(i)) TO '{path}' (FORMAT json)"
    )


def duckdb_json_copy(source: Path, out: Path) -> float:
    """DuckDB's own NDJSON to Parquet, with its sampled types (what the ingest does not do)."""
    import duckdb

    con = duckdb.connect()
    started = time.perf_counter()
    con.execute(
        f"COPY (SELECT * FROM read_json('{source}', format = 'newline_delimited'))"
        f" TO '{out}' (FORMAT parquet)"
    )
    elapsed = time.perf_counter() - started
    con.close()
    return elapsed


def duckdb_copy(csv: Path, out: Path) -> float:
    """The baseline: DuckDB's Python API converting the same file, timed."""
    import duckdb

    con = duckdb.connect()
    started = time.perf_counter()
    con.execute(f"COPY (SELECT * FROM read_csv('{csv}')) TO '{out}' (FORMAT parquet)")
    elapsed = time.perf_counter() - started
    con.close()
    return elapsed


def duckdb_parquet_copy(source: Path, out: Path) -> float:
    """The Parquet baseline: DuckDB's Python API rewriting the same Parquet file, timed."""
    import duckdb

    con = duckdb.connect()
    started = time.perf_counter()
    con.execute(f"COPY (SELECT * FROM read_parquet('{source}')) TO '{out}' (FORMAT parquet)")
    elapsed = time.perf_counter() - started
    con.close()
    return elapsed


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(argv: list[str], port: int, cwd: Path) -> subprocess.Popen[bytes]:
    """A server process on loopback `port`, once it accepts connections (stop it by pid)."""
    import socket

    server = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.1)


def remote_sources(env: dict[str, str], work: Path, csv: Path, repeat: int) -> list[list[str]]:
    """The same CSV from a local http.server and from moto's S3 server (both on loopback):
    `workbench ingest URL --wait` against DuckDB's own reader of the same URL (httpfs) writing
    Parquet, interleaved. Rows of the results table; none for S3 where moto is missing."""
    import duckdb

    from workbench.catalog import extensions

    folder = work / "www"
    folder.mkdir()
    shutil.copy(csv, folder / "data.csv")
    rows: list[list[str]] = []
    http_port = free_port()
    servers = [
        start_server(
            [sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1"],
            http_port,
            folder,
        )
    ]
    sources = {"http(s) URL": (f"http://127.0.0.1:{http_port}/data.csv", env)}
    try:
        import importlib.util

        if importlib.util.find_spec("moto") is not None:  # moto[server], the dev extra
            s3_port = free_port()
            servers.append(
                start_server(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                    s3_port,
                    work,
                )
            )
            s3_env = dict(
                env,
                AWS_ACCESS_KEY_ID="bench",
                AWS_SECRET_ACCESS_KEY="bench",
                AWS_DEFAULT_REGION="us-east-1",
                AWS_ENDPOINT_URL=f"http://127.0.0.1:{s3_port}",
            )
            import boto3

            client = boto3.client(
                "s3",
                endpoint_url=s3_env["AWS_ENDPOINT_URL"],
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
                region_name="us-east-1",
            )
            client.create_bucket(Bucket="bench")
            client.upload_file(str(csv), "bench", "data.csv")
            sources["s3:// (moto)"] = ("s3://bench/data.csv", s3_env)
        from jobs.ingest_sources import s3_secret_sql

        for label, (url, source_env) in sources.items():
            ours: list[float] = []
            theirs: list[float] = []
            for attempt in range(repeat):
                con = duckdb.connect()
                extensions.load(con, "httpfs", "aws")
                if url.startswith("s3://"):
                    # DuckDB's credential chain reads this process's own environment.
                    os.environ.update({k: v for k, v in source_env.items() if k.startswith("AWS_")})
                    con.execute(s3_secret_sql(source_env))
                out = work / f"remote-{attempt}.parquet"
                started = time.perf_counter()
                con.execute(f"COPY (SELECT * FROM read_csv('{url}')) TO '{out}' (FORMAT parquet)")
                theirs.append(time.perf_counter() - started)
                con.close()
                name = f"remote{len(rows)}_{attempt}"
                ours.append(workbench(source_env, "ingest", url, "--dataset", name, "--wait")[0])
            rows.append(
                [
                    f"  the same CSV from a {label} on loopback, CLI --wait",
                    f"{median(ours):.2f} s",
                    f"DuckDB read_csv of the URL (httpfs): {median(theirs):.2f} s",
                    spread([x / y for x, y in zip(theirs, ours, strict=True)]),
                ]
            )
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)
    return rows


def job_phases(home: Home, job_id: int) -> str:
    """The timing lines of an ingest job's log (encodings, types, read and write, publish)."""
    log = (home.run_dir(job_id) / "log").read_text()
    keep = ("checked", "types decided", "published")
    return "; ".join(line.strip() for line in log.splitlines() if any(k in line for k in keep))


def top_costs(env: dict[str, str], args: list[str], count: int = 6) -> str:
    """cProfile's top `count` functions by own time in `workbench ARGS` (a new process)."""
    import pstats

    with tempfile.NamedTemporaryFile(suffix=".prof") as handle:
        subprocess.run(
            [sys.executable, "-m", "cProfile", "-o", handle.name, "-m", "workbench", *args],
            env=env,
            capture_output=True,
            check=True,
        )
        stats = pstats.Stats(handle.name)
        total = stats.total_tt  # type: ignore[attr-defined]
        rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:count]  # type: ignore[attr-defined]
        parts = []
        for (filename, line, name), (_, _, own, _, _) in rows:
            where = Path(filename).name if filename != "~" else "builtin"
            parts.append(f"{name} ({where}:{line}) {own * 1000:.0f} ms")
        return f"total {total * 1000:.0f} ms: " + ", ".join(parts)


def workbench(env: dict[str, str], *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "workbench", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"workbench {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return elapsed, done.stdout


def first_page_duckdb(glob: str) -> float:
    import duckdb

    con = duckdb.connect()
    started = time.perf_counter()
    cursor = con.execute(f"SELECT * FROM read_parquet('{glob}')")
    rows = cursor.fetchmany(PAGE)
    elapsed = time.perf_counter() - started
    assert len(rows) == PAGE
    con.close()
    return elapsed


def first_page_screen(home: Home) -> float:
    """Time from ctrl+r to the first page of results in the Data screen (headless Pilot)."""
    from textual.widgets import DataTable, TextArea

    from screens.app import WorkbenchApp
    from screens.source import Source

    async def measure() -> float:
        app = WorkbenchApp(Source(home))
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.press("s")
            await pilot.pause()
            app.screen.query_one("#sql", TextArea).text = "SELECT * FROM big"
            started = time.perf_counter()
            await pilot.press("ctrl+r")
            results = app.screen.query_one("#results", DataTable)
            deadline = started + 120
            while results.row_count < PAGE and time.perf_counter() < deadline:
                await asyncio.sleep(0.002)
            elapsed = time.perf_counter() - started
            assert results.row_count == PAGE, results.row_count
            return elapsed

    return asyncio.run(measure())


def sql_measures(
    env: dict[str, str], home: Home, big_rows: int, repeat: int
) -> tuple[list[list[str]], dict[str, str]]:
    """`workbench sql` (the printed first 200 rows, and `--json --limit 100`) and the Data
    screen's first page over a published `big_rows`-row dataset, each against DuckDB's Python
    API (a new process for the CLI), interleaved `repeat` times: rows of the results table,
    and cProfile's top costs of each `sql` command."""
    import duckdb

    from workbench.catalog import lake

    rows_out: list[list[str]] = []
    store = Store.open(home.state_db)
    try:

        def write(tmp: Path) -> None:
            duckdb.connect().execute(
                f"COPY (SELECT range AS id, range * 2 AS twice, md5(range::VARCHAR) AS h"
                f" FROM range({big_rows})) TO '{tmp / 'part-0.parquet'}' (FORMAT parquet)"
            )

        big = lake.publish(home, store, "big", write)
    finally:
        store.close()
    direct: list[float] = []
    screen: list[float] = []
    cli: list[float] = []
    direct_process: list[float] = []
    table_cli: list[float] = []
    table_direct: list[float] = []
    for _ in range(repeat):
        direct.append(first_page_duckdb(big.glob))
        screen.append(first_page_screen(home))
        cli.append(workbench(env, "sql", "--json", "--limit", str(PAGE), "SELECT * FROM big")[0])
        direct_process.append(bare_process(big.glob, PAGE))
        table_cli.append(workbench(env, "sql", "SELECT * FROM big")[0])
        table_direct.append(bare_process(big.glob, SHOWN + 1))
    rows_out.append(
        [
            f"first page ({PAGE} rows) of SELECT * over {big_rows:,} rows, Data screen",
            f"{median(screen) * 1000:.0f} ms",
            f"DuckDB Python API in process: {median(direct) * 1000:.0f} ms",
            spread([x / y for x, y in zip(screen, direct, strict=True)]),
        ]
    )
    rows_out.append(
        [
            f"same, `workbench sql --json --limit {PAGE}` (new process)",
            f"{median(cli) * 1000:.0f} ms",
            f"python -c duckdb fetchmany (new process): {median(direct_process) * 1000:.0f} ms",
            f"{spread([x / y for x, y in zip(cli, direct_process, strict=True)])} (goal <= 1.5)",
        ]
    )
    rows_out.append(
        [
            f'`workbench sql "SELECT * FROM big"` (no limit: prints {SHOWN} rows)',
            f"{median(table_cli) * 1000:.0f} ms",
            f"python -c duckdb fetchmany({SHOWN + 1}) (new process):"
            f" {median(table_direct) * 1000:.0f} ms",
            f"{spread([x / y for x, y in zip(table_cli, table_direct, strict=True)])}"
            " (goal <= 1.5)",
        ]
    )
    costs = {
        "LIMIT 100": top_costs(env, ["sql", "--json", "--limit", str(PAGE), "SELECT * FROM big"]),
        "SELECT *": top_costs(env, ["sql", "SELECT * FROM big"]),
    }
    return rows_out, costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="rows of the generated CSV")
    parser.add_argument("--big", type=int, default=10_000_000, help="rows for the first page")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--tiny", action="store_true", help="a smoke run; writes no results")
    parser.add_argument(
        "--core",
        action="store_true",
        help="only CSV and Parquet against DuckDB's COPY, and the fixed cost; writes no results",
    )
    parser.add_argument(
        "--sql-only",
        action="store_true",
        help="only the `workbench sql` and Data screen measures over --big rows (no ingest);"
        " prints them and writes nothing to RESULTS.md",
    )
    args = parser.parse_args()
    if args.quick:
        args.rows, args.big, args.repeat = 300_000, 1_000_000, 1
    if args.tiny:
        args.rows, args.big, args.repeat = 3_000, 20_000, 1

    work = Path(tempfile.mkdtemp(prefix="wb-bench-ingest-"))
    env = dict(os.environ, WORKBENCH_HOME=str(work / "home"))
    os.environ["WORKBENCH_HOME"] = env["WORKBENCH_HOME"]
    home = Home(work / "home")
    rows_out: list[list[str]] = []
    if args.sql_only:
        try:
            sql_rows, costs = sql_measures(env, home, args.big, args.repeat)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        report = table(["measure", "workbench", "baseline (same run)", "ratio / goal"], sql_rows)
        report += "\n\nWhere the time goes (the last run):\n" + "".join(
            f"- `sql` {name}, cProfile own time: {text}\n" for name, text in costs.items()
        )
        print(report)
        return
    try:
        csv = work / "data.csv"
        generate_csv(csv, args.rows)
        size_mib = csv.stat().st_size / 1024**2
        print(f"generated {args.rows:,} rows, {size_mib:.0f} MiB", file=sys.stderr)

        ours: list[float] = []
        job_times: list[float] = []
        sampled_times: list[float] = []
        base: list[float] = []
        from workbench.catalog import lake

        def job_seconds(dataset: str) -> float:
            store = Store.open(home.state_db)
            try:
                info = lake.version_info(store, dataset)
            finally:
                store.close()
            assert info.rows == args.rows, (info.rows, args.rows)
            return info.duration_s or 0.0

        for attempt in range(args.repeat):
            # Interleaved: DuckDB, then the default and the sampled ingest, their order swapped
            # every run (the second of two runs finds the file warmer). Each ingest writes its
            # own dataset, so identical content is not deduplicated away.
            base.append(duckdb_copy(csv, work / f"copy-{attempt}.parquet"))

            def whole(attempt: int = attempt) -> None:
                elapsed, _ = workbench(
                    env, "ingest", str(csv), "--dataset", f"whole{attempt}", "--wait"
                )
                ours.append(elapsed)
                job_times.append(job_seconds(f"whole{attempt}"))

            def sampled(attempt: int = attempt) -> None:
                workbench(
                    env, "ingest", str(csv), "--dataset", f"sampled{attempt}", "--sample-size",
                    "20480", "--wait",
                )  # fmt: skip
                sampled_times.append(job_seconds(f"sampled{attempt}"))

            steps = (whole,) if args.core else (whole, sampled)
            for step in steps if attempt % 2 == 0 else steps[::-1]:
                step()
            elapsed = ours[-1]
            print(
                f"  run {attempt + 1}: duckdb {base[-1]:.2f}s, workbench ingest --wait"
                f" {elapsed:.2f}s (in job {job_times[-1]:.2f}s"
                + (f"; sampled types in job {sampled_times[-1]:.2f}s)" if sampled_times else ")"),
                file=sys.stderr,
            )
        b, o, j = median(base), median(ours), median(job_times)
        rows_out.append(
            [
                f"ingest {args.rows:,}-row CSV ({size_mib:.0f} MiB), CLI --wait, default settings"
                f" ({DEFAULT_CPUS} threads), median of {args.repeat}",
                f"{o:.2f} s ({args.rows / o / 1e6:.2f} M rows/s)",
                f"DuckDB COPY ({os.cpu_count()} threads): {b:.2f} s"
                f" ({args.rows / b / 1e6:.2f} M rows/s)",
                f"{spread([x / y for x, y in zip(base, ours, strict=True)])} (goal >= 0.85)",
            ]
        )
        rows_out.append(
            [
                "  same, inside the job (types, read, rejects, hash, publish)",
                f"{j:.2f} s",
                f"DuckDB COPY: {b:.2f} s",
                spread([x / y for x, y in zip(base, job_times, strict=True)]),
            ]
        )
        if not args.core:
            rows_out.append(
                [
                    "  whole-input types vs sampled (--sample-size 20480), inside the job (time ratio)",
                    f"{j:.2f} s",
                    f"sampled: {median(sampled_times):.2f} s",
                    f"{spread([x / y for x, y in zip(job_times, sampled_times, strict=True)])}"
                    " (goal <= 1.3)",
                ]
            )

        # Parquet: the same rows, ingested against DuckDB rewriting the file.
        parquet = work / "data.parquet"
        import duckdb

        duckdb.connect().execute(
            f"COPY (SELECT * FROM read_csv('{csv}')) TO '{parquet}' (FORMAT parquet)"
        )
        pq_base: list[float] = []
        pq_ours: list[float] = []
        for attempt in range(args.repeat):
            pq_base.append(duckdb_parquet_copy(parquet, work / f"pq-{attempt}.parquet"))
            pq_ours.append(
                workbench(env, "ingest", str(parquet), "--dataset", f"pq{attempt}", "--wait")[0]
            )
        rows_out.append(
            [
                f"ingest the same rows as Parquet, CLI --wait, median of {args.repeat}",
                f"{median(pq_ours):.2f} s",
                f"DuckDB COPY read_parquet: {median(pq_base):.2f} s",
                f"{spread([x / y for x, y in zip(pq_base, pq_ours, strict=True)])} (goal >= 0.85)",
            ]
        )

        if not args.core:
            # Encryption at rest: the same CSV ingested with --encrypt against plain (interleaved),
            # and a full-scan query over each, through `workbench sql` (a new process each).
            import base64

            key_file = work / "lake.key"
            key_file.write_text(base64.b64encode(os.urandom(32)).decode())
            key_file.chmod(0o600)
            home.config.write_text(f'[lake]\nkey_file = "{key_file}"\n')
            enc_job: list[float] = []
            plain_job: list[float] = []
            enc_sql: list[float] = []
            plain_sql: list[float] = []
            scan = "SELECT count(*), sum(id), max(label) FROM {}"
            for attempt in range(args.repeat):
                workbench(
                    env, "ingest", str(csv), "--dataset", f"enc{attempt}", "--encrypt", "--wait"
                )
                enc_job.append(job_seconds(f"enc{attempt}"))
                plain_job.append(job_times[attempt])
                enc_sql.append(workbench(env, "sql", scan.format(f"enc{attempt}"))[0])
                plain_sql.append(workbench(env, "sql", scan.format(f"whole{attempt}"))[0])
            rows_out.append(
                [
                    "  CSV ingest with --encrypt (AES-GCM), inside the job (time ratio)",
                    f"{median(enc_job):.2f} s",
                    f"plain: {median(plain_job):.2f} s",
                    spread([x / y for x, y in zip(enc_job, plain_job, strict=True)]),
                ]
            )
            rows_out.append(
                [
                    "  full-scan `workbench sql` over the encrypted version (time ratio)",
                    f"{median(enc_sql) * 1000:.0f} ms",
                    f"plain: {median(plain_sql) * 1000:.0f} ms",
                    spread([x / y for x, y in zip(enc_sql, plain_sql, strict=True)]),
                ]
            )

            # Sources beyond files: a URL and an S3 object, against DuckDB's reader of the same.
            rows_out.extend(remote_sources(env, work, csv, args.repeat))

            # NDJSON is always read whole (every record: late keys and types): its cost against
            # DuckDB's sampled read of the same file.
            ndjson = work / "data.ndjson"
            json_rows = max(args.rows // 3, 1000)
            generate_ndjson(ndjson, json_rows)
            json_base: list[float] = []
            json_job: list[float] = []
            for attempt in range(args.repeat):
                json_base.append(duckdb_json_copy(ndjson, work / f"json-{attempt}.parquet"))
                workbench(env, "ingest", str(ndjson), "--dataset", f"json{attempt}", "--wait")
                store = Store.open(home.state_db)
                try:
                    json_job.append(lake.version_info(store, f"json{attempt}").duration_s or 0.0)
                finally:
                    store.close()
            rows_out.append(
                [
                    f"  NDJSON, {json_rows:,} records, read whole, inside the job (time ratio)",
                    f"{median(json_job):.2f} s",
                    f"DuckDB COPY, sampled types: {median(json_base):.2f} s",
                    spread([x / y for x, y in zip(json_job, json_base, strict=True)]),
                ]
            )

        # The fixed part of the end-to-end figure: CLI start, submit, job process start, wait.
        tiny = work / "tiny.csv"
        tiny.write_text("a,b\n1,x\n")
        fixed = median(
            [
                workbench(env, "ingest", str(tiny), "--dataset", f"tiny{n}", "--wait")[0]
                for n in range(args.repeat)
            ]
        )
        store = Store.open(home.state_db)
        try:
            phases = {
                name: job_phases(home, lake.version_info(store, name).job_id or 0)
                for name in (f"whole{args.repeat - 1}", f"pq{args.repeat - 1}")
            }
        finally:
            store.close()
        rows_out.append(
            [
                "  fixed cost: 1-row CSV, CLI --wait",
                f"{fixed:.2f} s",
                "",
                f"{b / max(o - fixed, 1e-9):.2f}x without it",
            ]
        )

        costs: dict[str, str] = {}
        if not args.core:
            sql_rows, costs = sql_measures(env, home, args.big, args.repeat)
            rows_out.extend(sql_rows)
        subprocess.run(
            [sys.executable, "-m", "workbench", "daemon", "stop"], env=env, capture_output=True
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report = table(["measure", "workbench", "baseline (same run)", "ratio / goal"], rows_out)
    report += "\n\nWhere the time goes (the last run):\n"
    report += f"- ingest CSV job: {phases[f'whole{args.repeat - 1}']}\n"
    report += f"- ingest Parquet job: {phases[f'pq{args.repeat - 1}']}\n"
    if not args.core:
        report += "".join(
            f"- `sql` {name}, cProfile own time: {text}\n" for name, text in costs.items()
        )
    print(report)
    if args.tiny or args.core:
        return
    command = "nice python bench/ingest.py" + (" --quick" if args.quick else "")
    name = "ingest"
    if not args.quick and args.rows != DEFAULT_ROWS:
        command += f" --rows {args.rows}"
        name = f"ingest, {args.rows:,}-row CSV"
    if not args.quick and args.repeat != 5:
        command += f" --repeat {args.repeat}"
    write_section(name, command, report)


if __name__ == "__main__":
    main()
