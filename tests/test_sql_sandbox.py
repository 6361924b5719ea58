"""`workbench sql` and the lake's reader connection: valid JSON, wrapping that survives
comments and semicolons, a sandbox no statement writes through, and limits that stop a query
with a message instead of a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from conftest import workbench

from workbench.catalog import lake
from workbench.db.store import Store
from workbench.paths import Home


@pytest.fixture
def store(home: Home) -> Iterator[Store]:
    s = Store.open(home.state_db)
    yield s
    s.close()


@pytest.fixture
def birds(home: Home, store: Store) -> lake.VersionInfo:
    lake.publish_arrow(home, store, "birds", pa.table({"id": [1, 2, 3], "mass": [1.0, 2.0, 3.0]}))
    return lake.publish_arrow(
        home, store, "birds", pa.table({"id": [1, 2, 3, 4], "mass": [1.0, 2.0, 3.0, 4.5]})
    )


def test_sql_json_writes_nan_and_infinity_as_null_and_csv_keeps_them(
    home: Home, birds: lake.VersionInfo
) -> None:
    sql = "SELECT 'nan'::DOUBLE AS a, 'inf'::DOUBLE AS b, '-inf'::DOUBLE AS c, 1.5::DOUBLE AS d"
    done = workbench("sql", sql, "--json")
    assert done.returncode == 0, done.stderr
    assert "NaN" not in done.stdout and "Infinity" not in done.stdout
    assert json.loads(done.stdout) == {"a": None, "b": None, "c": None, "d": 1.5}
    assert workbench("sql", sql, "--csv").stdout.splitlines() == ["a,b,c,d", "nan,inf,-inf,1.5"]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 42 AS answer -- the answer",
        "SELECT 42 AS answer;",
        "SELECT 42 AS answer ; ;  \n\n",
        "SELECT 42 AS answer; -- the answer",
        "-- the question\nSELECT 42 AS answer /* block */",
    ],
)
@pytest.mark.parametrize("limit", [None, "5"])
def test_trailing_comments_and_semicolons_survive_the_wrapping(
    home: Home, sql: str, limit: str | None
) -> None:
    args = ["sql", sql, "--json"] + (["--limit", limit] if limit else [])
    done = workbench(*args)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"answer": 42}
    table = workbench("sql", sql)
    assert table.returncode == 0 and "42" in table.stdout


def test_data_screen_export_uses_the_same_wrapping(home: Home) -> None:
    from screens.data import Query

    query = Query("SELECT 42 AS answer -- the answer", order=("answer", True))
    con = duckdb.connect()
    assert con.execute(query.full_sql()).fetchall() == [(42,)]
    assert con.execute(query.paged_sql()).fetchall() == [(42,)]


def test_table_output_fetches_only_what_it_shows(home: Home, store: Store) -> None:
    lake.publish_arrow(home, store, "many", pa.table({"n": list(range(5000))}))
    done = workbench("sql", "SELECT * FROM many ORDER BY n")
    assert done.returncode == 0, done.stderr
    assert "first 200 rows shown" in done.stdout
    assert "│ 199 " in done.stdout and "│ 200 " not in done.stdout
    history = lake.query_history(store, 1)[0]
    assert history["rows"] == 200


def test_views_only_for_what_the_query_names(home: Home, store: Store, birds: object) -> None:
    lake.publish_arrow(home, store, "fish", pa.table({"x": [1]}))
    con = lake.connect(home, store, for_sql='SELECT * FROM "birds@v1" JOIN fish ON true')
    try:
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    finally:
        con.close()
    assert {"birds@v1", "fish@v1", "fish"} <= views
    assert "birds@v2" not in views and "birds" not in views


def lake_state(
    home: Home, store: Store
) -> tuple[dict[str, tuple[str, int]], list[tuple[object, ...]]]:
    """Every file under the lake (hash, mode) and every catalog row."""
    files = {}
    for path in sorted(home.lake.rglob("*")):
        if path.is_file():
            files[str(path.relative_to(home.lake))] = (
                hashlib.sha256(path.read_bytes()).hexdigest(),
                path.stat().st_mode,
            )
        else:
            files[str(path.relative_to(home.lake))] = ("dir", path.stat().st_mode)
    rows = store.conn.execute("SELECT * FROM dataset_versions ORDER BY dataset, version").fetchall()
    return files, rows + store.conn.execute("SELECT * FROM datasets").fetchall()


WRITES = [
    "COPY (SELECT 1 AS id) TO '{part}' (FORMAT parquet)",
    "COPY (SELECT 1 AS id) TO '{part}' (FORMAT parquet, USE_TMP_FILE false)",
    "COPY (SELECT 1 AS id) TO '{lake}/birds/new.parquet' (FORMAT parquet)",
    "COPY birds TO '{lake}/birds/v2' (FORMAT parquet, PARTITION_BY (id), OVERWRITE_OR_IGNORE)",
    "EXPORT DATABASE '{lake}/birds/export'",
    "EXPLAIN ANALYZE COPY (SELECT 1 AS id) TO '{part}' (FORMAT parquet)",
    "EXPLAIN ANALYZE COPY (SELECT 1 AS id) TO '{part}' (FORMAT parquet, USE_TMP_FILE false)",
    "EXPLAIN /* c */ ANALYZE COPY (SELECT 1) TO '{lake}/x.csv'",
    "EXPLAIN (ANALYZE, FORMAT json) COPY (SELECT 1) TO '{lake}/x.csv'",
    "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
    "EXPLAIN ANALYZE INSERT INTO birds VALUES (9, 9.0)",
    "EXPLAIN ANALYZE EXPORT DATABASE '{lake}/e'",
    "EXPLAIN ANALYZE ATTACH '{lake}/birds/x.db' AS x",
    "EXPLAIN ANALYZE EXPLAIN ANALYZE COPY (SELECT 1) TO '{lake}/x.csv'",
    "CREATE TABLE t AS SELECT * FROM birds",
    "CREATE OR REPLACE VIEW birds AS SELECT 1 AS id",
    "INSERT INTO birds VALUES (9, 9.0)",
    "ATTACH '{lake}/birds/x.db' AS x",
    "ATTACH '{lake}/birds/x.db' AS x; CREATE TABLE x.t AS SELECT 1",
    "SET allowed_directories = ['{lake}']",
    "RESET allowed_paths",
    "SET enable_external_access = true",
    "PRAGMA enable_external_access",
    "CALL checkpoint()",
    "SELECT * FROM force_checkpoint()",
    "SELECT * FROM query('COPY (SELECT 1) TO ''{lake}/q.csv''')",
    "SELECT * FROM read_csv('{lake}/../state.db')",
    "SELECT 1; COPY (SELECT 1) TO '{lake}/y.csv'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "DROP VIEW birds",
    "PREPARE p AS SELECT 1",
    "VACUUM",
    "BEGIN",
]


@pytest.mark.parametrize("sql", WRITES)
def test_no_write_path_changes_the_lake_or_the_catalog(
    home: Home, store: Store, birds: lake.VersionInfo, sql: str
) -> None:
    """Each statement is tried twice: through the CLI (the statement check and the sandboxed
    connection), and straight on the sandboxed connection (no statement check). Neither may
    change a byte of the lake or a row of the catalog.

    One write gets past DuckDB's own sandbox when the statement check is skipped: a COPY with
    USE_TMP_FILE false onto a part file the connection may read (DuckDB's allowed paths do not
    tell reading from writing). Published files are read-only on disk, which stops it for every
    user but root; the statement check refuses it for everyone."""
    text = sql.format(lake=home.lake, part=birds.path / "part-0.parquet")
    before = lake_state(home, store)
    done = workbench("sql", text)
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr
    assert lake_state(home, store) == before
    if "USE_TMP_FILE false" in text and os.geteuid() == 0:
        return
    con = lake.connect(home, store)
    try:
        try:
            con.execute(text).fetchall()
        except duckdb.Error:
            pass
    finally:
        con.close()
    assert lake_state(home, store) == before
    assert lake.read_arrow(home, "birds")[0].num_rows == 4


@pytest.mark.parametrize(
    ("sql", "refused"),
    [
        ("EXPLAIN SELECT * FROM birds", None),
        ("EXPLAIN ANALYZE SELECT count(*) FROM birds", None),
        ("SUMMARIZE birds", None),
        ("DESCRIBE birds", None),
        ("EXPLAIN COPY (SELECT 1) TO 'x.csv'", None),  # plain EXPLAIN runs nothing
        ("EXPLAIN ANALYZE COPY (SELECT 1) TO 'x.csv'", "EXPLAIN ANALYZE of COPY"),
        ("EXPLAIN ANALYSE CREATE TABLE t AS SELECT 1", "EXPLAIN ANALYZE of CREATE"),
        ("EXPLAIN --c\n ANALYZE INSERT INTO t VALUES (1)", "EXPLAIN ANALYZE of INSERT"),
        ("EXPLAIN (FORMAT json, ANALYZE) COPY (SELECT 1) TO 'x'", "EXPLAIN ANALYZE of COPY"),
        ("CALL checkpoint()", "statement 1 is CALL"),
        ("RESET threads", "statement 1 is RESET"),
    ],
)
def test_explain_analyze_runs_only_for_a_select(
    home: Home, store: Store, birds: object, sql: str, refused: str | None
) -> None:
    con = lake.connect(home, store, with_store_tables=False)
    try:
        if refused is None:
            lake.check_read_only(con, sql)
            if "COPY" not in sql:  # binding a COPY needs its file: the sandbox refuses it
                con.execute(sql).fetchall()
        else:
            with pytest.raises(lake.QueryRefused, match=refused):
                lake.check_read_only(con, sql)
    finally:
        con.close()


def test_spill_goes_inside_workbench_home_and_limits_apply(
    home: Home, store: Store, birds: object
) -> None:
    home.config.write_text('[sql]\nmemory_limit = "300MiB"\nspill_limit = "1GiB"\nthreads = 1\n')
    con = lake.connect(home, store)
    try:
        settings = dict(
            con.execute(
                "SELECT name, value FROM duckdb_settings() WHERE name IN"
                " ('temp_directory', 'memory_limit', 'max_temp_directory_size', 'threads')"
            ).fetchall()
        )
        # A sort larger than the memory limit spills, and finishes.
        row = con.execute(
            "SELECT count(*), max(s) FROM (SELECT md5(range::VARCHAR) || repeat('x', 100) AS s"
            " FROM range(3000000) ORDER BY s)"
        ).fetchone()
    finally:
        con.close()
    assert Path(settings["temp_directory"]).resolve().is_relative_to(home.root.resolve())
    assert settings["memory_limit"].startswith(("300", "314")), settings["memory_limit"]
    assert settings["threads"] == "1"
    assert row is not None and row[0] == 3_000_000
    assert not Path(".tmp").exists() or not any(Path(".tmp").iterdir())


def test_statement_time_limit_stops_a_cross_join_with_a_message(home: Home, birds: object) -> None:
    home.config.write_text('[sql]\ntimeout = "1s"\n')
    started = time.monotonic()
    done = workbench(
        "sql", "SELECT count(*) FROM range(100000000) a, range(100000000) b", timeout=60
    )
    assert time.monotonic() - started < 30
    assert done.returncode == 1
    assert "stopped after 1.0s, the statement time limit" in done.stderr
    assert "Traceback" not in done.stderr


def test_memory_limit_stops_a_huge_list_with_a_message(home: Home, birds: object) -> None:
    home.config.write_text('[sql]\nmemory_limit = "64MiB"\nspill_limit = "64MiB"\n')
    done = workbench("sql", "SELECT list(range) FROM range(100000000)", timeout=120)
    assert done.returncode == 1, done.stdout
    assert "memory limit (64.0 MiB" in done.stderr
    assert "Traceback" not in done.stderr


def test_interrupt_stops_the_query_with_a_message(home: Home, birds: object) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workbench",
            "sql",
            "SELECT count(*) FROM range(100000000) a, range(100000000) b",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        time.sleep(2.0)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130
    assert "sql: interrupted" in stderr
    assert "Traceback" not in stderr


def test_bad_sql_config_is_named(home: Home, birds: object) -> None:
    home.config.write_text('[sql]\ntimeout = "soon"\n')
    done = workbench("sql", "SELECT 1")
    assert done.returncode == 2
    assert "[sql]: key 'timeout'" in done.stderr


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_time_limit_with_out_says_stopped_and_removes_the_part_file(
    home: Home, store: Store, tmp_path: Path, suffix: str
) -> None:
    n = 20_000
    table = pa.table({"id": list(range(n)), "name": [f"n{i}" for i in range(n)]})
    lake.publish_arrow(home, store, "code", table)
    home.config.write_text('[sql]\ntimeout = "1s"\n')
    out = tmp_path / f"o{suffix}"
    sql = "SELECT * FROM code a, code b"  # 400M rows: rows are written when the limit fires
    done = workbench("sql", "--out", str(out), sql, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "stopped after 1.0s, the statement time limit" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .part


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_query_error_midway_through_out_removes_the_part_file(
    home: Home, birds: object, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"o{suffix}"
    sql = (
        "SELECT CASE WHEN range < 500000 THEN range ELSE error('boom') END AS x FROM range(1000000)"
    )
    done = workbench("sql", "--out", str(out), sql)
    assert done.returncode == 2, done.stderr
    assert "boom" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_out_into_a_folder_that_is_a_file_is_named(
    home: Home, birds: object, tmp_path: Path
) -> None:
    (tmp_path / "afile").write_text("x")
    done = workbench("sql", "--out", str(tmp_path / "afile" / "o.csv"), "SELECT 1")
    assert done.returncode == 2
    assert "--out: cannot create" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_sql_that_is_not_utf8_is_refused_with_exit_2(home: Home, birds: object) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "workbench", "sql", b"SELECT 'caf\xe9'"],
        capture_output=True,
        timeout=120,
        env=os.environ.copy(),
    )
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2, stderr
    assert "not valid UTF-8 (byte 0xe9 at character 12)" in stderr
    assert "Traceback" not in stderr


def test_check_read_only_refuses_surrogates_as_a_query_refused() -> None:
    con = duckdb.connect()
    with pytest.raises(lake.QueryRefused, match="not valid UTF-8"):
        lake.check_read_only(con, "SELECT 'caf\udce9'")


@pytest.mark.parametrize(
    ("sql", "named"),
    [
        ("INSTALL httpfs", "INSTALL"),
        ("force install httpfs", "FORCE INSTALL"),
        ("LOAD httpfs", "LOAD"),
        ("/* x */ RESET threads", "RESET"),
        ("SET threads = 1", "SET"),
        ("SELECT 1; INSTALL httpfs", "INSTALL"),
        ("EXPLAIN ANALYZE INSTALL httpfs", "EXPLAIN ANALYZE of INSTALL"),
    ],
)
def test_refusal_names_the_statement_as_written(sql: str, named: str) -> None:
    con = duckdb.connect()
    with pytest.raises(lake.QueryRefused) as refused:
        lake.check_read_only(con, sql)
    number = 2 if sql.startswith("SELECT 1;") else 1
    assert f"statement {number} is {named}:" in str(refused.value)


TEXT_FORMS_SQL = (
    "SELECT 'infinity'::DATE AS d, '-infinity'::DATE AS nd, 'infinity'::TIMESTAMP AS t,"
    " '\\xFF\\x00'::BLOB AS b, INTERVAL 3 DAY AS i, DATE '2024-01-02' AS ok, 7 AS n"
)
TEXT_FORMS = {
    "d": "infinity",
    "nd": "-infinity",
    "t": "infinity",
    "b": "\\xFF\\x00",
    "i": "3 days",
    "ok": "2024-01-02",
}


def test_json_writes_infinite_dates_blobs_and_intervals_in_duckdb_text_form(
    home: Home, birds: object
) -> None:
    done = workbench("sql", "--json", TEXT_FORMS_SQL)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {**TEXT_FORMS, "n": 7}


def test_csv_and_table_write_the_same_text_forms(home: Home, birds: object, tmp_path: Path) -> None:
    expected = ",".join([*TEXT_FORMS.values(), "7"])
    done = workbench("sql", "--csv", TEXT_FORMS_SQL)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == expected
    out = tmp_path / "o.csv"
    assert workbench("sql", "--out", str(out), TEXT_FORMS_SQL).returncode == 0
    assert out.read_text().splitlines()[1].replace('"', "") == expected
    table = workbench("sql", TEXT_FORMS_SQL)
    assert table.returncode == 0, table.stderr
    for text in TEXT_FORMS.values():
        assert text in table.stdout
    assert "9999-12-31" not in table.stdout and "0:00:00" not in table.stdout


def test_text_forms_keep_duplicate_names_and_other_types() -> None:
    con = duckdb.connect()
    sql = lake.text_sql(con, "SELECT 1 AS a, DATE 'infinity' AS a, 2.5 AS x; -- c", None)
    result = con.execute(sql)
    assert [d[0] for d in result.description or []] == ["a", "a", "x"]
    assert result.fetchall() == [(1, "infinity", 2.5)]
