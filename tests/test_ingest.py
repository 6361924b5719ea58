"""Ingest into the lake and query it: real files, a real daemon, real DuckDB."""

from __future__ import annotations

import csv
import gzip
import json
import threading
from pathlib import Path

import duckdb
import pytest
from conftest import wait_state, workbench

from workbench.catalog import lake
from workbench.daemon.client import Client
from workbench.db.store import Job
from workbench.paths import Home
from workbench.queue.requests import build_request

MESSY_CSV = (
    "\ufeffid,name,score,joined\n"
    "1,alice,3.5,2024-01-02\n"
    '2,"bob\nsmith",4,2024-02-03\n'
    "x,carol,abc,2024-03-04\n"
    "4,,NA,\n"
    "5,eve,5,2024-05-06\n"
)


def ingest(client: Client, tmp_path: Path, **table: object) -> Job:
    request = build_request({"kind": "ingest", **table}, tmp_path, "test")
    job_id = client.submit(request)
    return wait_state(client, job_id, {"succeeded", "failed", "cancelled"}, timeout=60)


def query(home: Home, client: Client, sql: str) -> list[tuple[object, ...]]:
    con = lake.connect(home, client.store)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_messy_csv_keeps_good_rows_and_rejects_bad_ones(
    client: Client, home: Home, tmp_path: Path
) -> None:
    (tmp_path / "messy.csv").write_text(MESSY_CSV)
    job = ingest(
        client,
        tmp_path,
        source=["messy.csv"],
        dataset="people",
        types={"id": "INTEGER", "score": "DOUBLE"},
        null=["NA", ""],
    )
    assert job.state == "succeeded", job.reason
    rows = query(home, client, "SELECT id, name, score, joined FROM people ORDER BY id")
    assert [r[:3] for r in rows] == [
        (1, "alice", 3.5),
        (2, "bob\nsmith", 4.0),
        (4, None, None),
        (5, "eve", 5.0),
    ]
    assert str(rows[0][3]) == "2024-01-02"  # inferred as a date, BOM not in the column name
    rejects = query(
        home,
        client,
        "SELECT file, line, column_name, raw_line FROM people_rejects ORDER BY column_name",
    )
    assert rejects == [
        (str(tmp_path / "messy.csv"), 4, "id", "x,carol,abc,2024-03-04"),
        (str(tmp_path / "messy.csv"), 4, "score", "x,carol,abc,2024-03-04"),
    ]
    info = lake.version_info(client.store, "people")
    assert (info.version, info.rows, info.rejected_rows) == (1, 4, 1)
    assert info.sources[0]["bytes"] == (tmp_path / "messy.csv").stat().st_size
    assert len(info.content_hash) == 64


def test_too_many_rejects_fail_naming_the_first_bad_line(
    client: Client, home: Home, tmp_path: Path
) -> None:
    (tmp_path / "messy.csv").write_text(MESSY_CSV)
    job = ingest(
        client,
        tmp_path,
        source=["messy.csv"],
        dataset="strict",
        types={"id": "INTEGER"},
        max_rejects=0,
    )
    assert job.state == "failed"
    assert "messy.csv line 4, column 'id'" in (job.reason or "")
    assert "max_rejects = 0" in (job.reason or "")
    assert not (home.lake / "strict").exists()  # nothing left behind
    with pytest.raises(lake.LakeError, match="no dataset named 'strict'"):
        lake.version_info(client.store, "strict")


def test_override_for_a_missing_column_fails_naming_it(client: Client, tmp_path: Path) -> None:
    (tmp_path / "messy.csv").write_text(MESSY_CSV)
    job = ingest(client, tmp_path, source=["messy.csv"], dataset="typo", types={"idd": "INTEGER"})
    assert job.state == "failed"
    assert "column 'idd' is not in the source (its columns: id, name, score, joined)" in (
        job.reason or ""
    )


def test_parquet_ndjson_gzip_and_glob_sources(client: Client, home: Home, tmp_path: Path) -> None:
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT range AS n, range * 2 AS twice FROM range(100)) TO '{tmp_path / 'n.parquet'}' (FORMAT parquet)"
    )
    (tmp_path / "events.ndjson").write_text(
        "\n".join(json.dumps({"k": i, "tag": f"t{i % 3}"}) for i in range(50)) + "\n"
    )
    with gzip.open(tmp_path / "zipped.csv.gz", "wt") as handle:
        handle.write("a,b\n1,x\n2,y\n")
    parts = tmp_path / "parts"
    parts.mkdir()
    for index in range(12):
        with open(parts / f"part{index:02d}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "value"])
            writer.writerows([[index, v] for v in range(10)])
    assert ingest(client, tmp_path, source=["n.parquet"], dataset="numbers").state == "succeeded"
    assert ingest(client, tmp_path, source=["events.ndjson"], dataset="events").state == "succeeded"
    assert ingest(client, tmp_path, source=["zipped.csv.gz"], dataset="zipped").state == "succeeded"
    assert ingest(client, tmp_path, source=["parts/*.csv"], dataset="many").state == "succeeded"
    assert query(home, client, "SELECT sum(twice) FROM numbers") == [(9900,)]
    assert query(home, client, "SELECT tag, count(*) FROM events GROUP BY tag ORDER BY tag") == [
        ("t0", 17),
        ("t1", 17),
        ("t2", 16),
    ]
    assert query(home, client, "SELECT * FROM zipped ORDER BY a") == [(1, "x"), (2, "y")]
    assert query(home, client, "SELECT count(*), count(DISTINCT file) FROM many") == [(120, 12)]
    assert len(lake.version_info(client.store, "many").sources) == 12


def test_versions_append_and_old_versions_stay_readable(
    client: Client, home: Home, tmp_path: Path
) -> None:
    (tmp_path / "a.csv").write_text("x\n1\n2\n")
    (tmp_path / "b.csv").write_text("x\n3\n")
    assert ingest(client, tmp_path, source=["a.csv"], dataset="d").state == "succeeded"
    assert ingest(client, tmp_path, source=["b.csv"], dataset="d").state == "succeeded"
    assert (
        ingest(client, tmp_path, source=["b.csv"], dataset="d", mode="append").state == "succeeded"
    )
    assert query(home, client, 'SELECT count(*) FROM "d@v1"') == [(2,)]
    assert query(home, client, 'SELECT count(*) FROM "d@v2"') == [(1,)]
    assert query(home, client, "SELECT sum(x) FROM d") == [(6,)]  # v3 = v2 + b.csv again
    assert [v.version for v in lake.versions(client.store, "d")] == [1, 2, 3]
    table, info = lake.read_arrow(home, "d", 1)
    assert table.column("x").to_pylist() == [1, 2] and info.version == 1


def test_submit_refuses_missing_files_and_empty_globs(home: Home, tmp_path: Path) -> None:
    missing = workbench("ingest", str(tmp_path / "nope.csv"), "--dataset", "x")
    assert (
        missing.returncode == 2
        and "no such file" in missing.stderr
        and "nope.csv" in missing.stderr
    )
    empty = workbench("ingest", str(tmp_path / "*.csv"), "--dataset", "x")
    assert empty.returncode == 2 and "no file matches" in empty.stderr
    (tmp_path / "ok.csv").write_text("a\n1\n")
    bad_name = workbench("ingest", str(tmp_path / "ok.csv"), "--dataset", "1-bad")
    assert bad_name.returncode == 2 and "not a usable dataset name" in bad_name.stderr


def test_cli_ingest_sql_and_datasets(home: Home, tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a,b\n1,x\n2,y\n3,z\n")
    assert workbench("ingest", str(tmp_path / "t.csv"), "--dataset", "t", "--wait").returncode == 0
    rows = [
        json.loads(line)
        for line in workbench(
            "sql", "SELECT * FROM t ORDER BY a", "--json", "--limit", "2"
        ).stdout.splitlines()
    ]
    assert rows == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert workbench("sql", "SELECT a FROM t ORDER BY a", "--csv").stdout.splitlines() == [
        "a",
        "1",
        "2",
        "3",
    ]
    listing = json.loads(workbench("datasets", "--json").stdout)
    assert [(d["dataset"], d["version"], d["rows"], d["versions"]) for d in listing] == [
        ("t", 1, 3, 1)
    ]
    jobs = json.loads(workbench("sql", "SELECT kind, state FROM jobs", "--json").stdout)
    assert jobs == {"kind": "ingest", "state": "succeeded"}


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT * FROM read_csv('/etc/passwd')", "Permission Error"),
        ("SELECT * FROM read_parquet('{lake}/../state.db')", "Permission Error"),
        ("COPY (SELECT 1) TO '/tmp/out.csv'", "only SELECT and EXPLAIN"),
        ("ATTACH '/tmp/other.db'", "only SELECT and EXPLAIN"),
        ("INSTALL httpfs", "only SELECT and EXPLAIN"),
        ("SELECT 1; DROP VIEW t", "statement 2 is DROP"),
        ("SET enable_external_access=true", "only SELECT and EXPLAIN"),
    ],
)
def test_sql_sandbox_refuses(home: Home, tmp_path: Path, sql: str, message: str) -> None:
    (tmp_path / "t.csv").write_text("a\n1\n")
    assert workbench("ingest", str(tmp_path / "t.csv"), "--dataset", "t", "--wait").returncode == 0
    result = workbench("sql", sql.format(lake=home.lake))
    assert result.returncode == 2
    assert message in result.stderr


def test_readers_never_fail_while_new_versions_are_published(client: Client, home: Home) -> None:
    import pyarrow as pa

    lake.publish_arrow(home, client.store, "live", pa.table({"v": list(range(1000))}))
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        from workbench.db.store import Store

        store = Store.open(home.state_db)
        try:
            while not stop.is_set():
                info = lake.version_info(store, "live")
                con = duckdb.connect()
                try:
                    count = con.execute(
                        f"SELECT count(*) FROM read_parquet('{info.glob}')"
                    ).fetchone()
                    assert count == (1000,)
                finally:
                    con.close()
        except BaseException as error:
            errors.append(error)
        finally:
            store.close()

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for thread in readers:
        thread.start()
    for n in range(20):  # each version differs: identical content would publish nothing
        lake.publish_arrow(
            home, client.store, "live", pa.table({"v": list(range(n + 1, n + 1001))})
        )
    stop.set()
    for thread in readers:
        thread.join()
    assert errors == []
    assert lake.version_info(client.store, "live").version == 21


def test_cancel_interrupts_a_large_ingest_and_leaves_nothing(
    client: Client, home: Home, tmp_path: Path
) -> None:
    big = tmp_path / "big.csv"  # 229 MiB: deleted here, not left in pytest's folder
    try:
        duckdb.connect().execute(
            f"COPY (SELECT range AS id, random() AS r, md5(range::VARCHAR) AS h FROM range(4000000)) TO '{big}' (HEADER)"
        )
        request = build_request(
            {"kind": "ingest", "source": [str(big)], "dataset": "big"}, tmp_path, "test"
        )
        job_id = client.submit(request)
        wait_state(client, job_id, "running")
        from conftest import wait_for

        wait_for(
            lambda: (client.store.get(job_id).progress or 0) > 0,
            timeout=30,
            what="ingest progress",
        )
        client.control(job_id, "cancel")
        job = wait_state(client, job_id, "cancelled", timeout=15)
        assert job.state == "cancelled"
        assert not (home.lake / "big").exists()
    finally:
        big.unlink(missing_ok=True)
