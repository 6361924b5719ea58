"""The lake and its catalog in process (no daemon): atomic publish, versions, read_arrow, the
sandboxed reader connection with its views, the read-only statement check, query history."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from workbench.catalog import lake
from workbench.db.store import Store
from workbench.paths import Home


@pytest.fixture
def store(home: Home) -> Iterator[Store]:
    s = Store.open(home.state_db)
    yield s
    s.close()


def penguins_like(n: int, offset: int = 0) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(offset, offset + n), pa.int64()),
            "species": [["Adelie", "Gentoo", "Chinstrap"][i % 3] for i in range(n)],
            "mass": [None if i % 10 == 0 else 3000.0 + i for i in range(n)],
        }
    )


def test_publish_and_read_back_with_catalog_record(home: Home, store: Store) -> None:
    info = lake.publish_arrow(
        home, store, "birds", penguins_like(50), sources=[{"path": "x.csv"}], job_id=None
    )
    assert (info.dataset, info.version, info.rows) == ("birds", 1, 50)
    assert info.path == home.lake / "birds" / "v1"
    assert [p.name for p in info.path.iterdir()] == ["part-0.parquet"]
    assert info.schema == [("id", "BIGINT"), ("species", "VARCHAR"), ("mass", "DOUBLE")]
    assert info.sources == [{"path": "x.csv"}]
    assert info.bytes == (info.path / "part-0.parquet").stat().st_size
    assert len(info.content_hash) == 64

    table, read_info = lake.read_arrow(home, "birds")
    assert read_info == info
    assert table.num_rows == 50
    assert table.column("mass").null_count == 5
    assert table.column("species").to_pylist()[:3] == ["Adelie", "Gentoo", "Chinstrap"]

    second = lake.publish_arrow(home, store, "birds", penguins_like(7, offset=100))
    assert second.version == 2 and second.rows == 7
    assert second.content_hash != info.content_hash
    assert lake.read_arrow(home, "birds")[0].num_rows == 7
    old, old_info = lake.read_arrow(home, "birds", version=1, store=store)
    assert old.num_rows == 50 and old_info.version == 1
    assert [v.version for v in lake.versions(store, "birds")] == [1, 2]
    assert [v.version for v in lake.latest_versions(store)] == [2]


def test_same_content_gives_the_same_hash(home: Home, store: Store) -> None:
    a = lake.publish_arrow(home, store, "a", penguins_like(20))
    b = lake.publish_arrow(home, store, "b", penguins_like(20))
    c = lake.publish_arrow(home, store, "c", penguins_like(21))
    assert a.content_hash == b.content_hash != c.content_hash


def test_missing_dataset_and_version_are_named(home: Home, store: Store) -> None:
    with pytest.raises(lake.LakeError, match="the lake is empty"):
        lake.version_info(store, "nothing")
    lake.publish_arrow(home, store, "birds", penguins_like(3))
    with pytest.raises(lake.LakeError, match=r"no dataset named 'bird' \(known: birds\)"):
        lake.read_arrow(home, "bird")
    with pytest.raises(lake.LakeError, match="dataset 'birds' has no version 9"):
        lake.read_arrow(home, "birds", version=9)


@pytest.mark.parametrize("name", ["1abc", "a-b", "a b", "../x", "", "a@v2"])
def test_unusable_dataset_names_are_refused(home: Home, store: Store, name: str) -> None:
    with pytest.raises(lake.LakeError, match="not a usable dataset name"):
        lake.publish_arrow(home, store, name, penguins_like(1))
    assert not any(home.lake.iterdir())


def test_failed_write_leaves_no_version_and_no_temp_files(home: Home, store: Store) -> None:
    def half_written(tmp: Path) -> int:
        (tmp / "part-0.parquet").write_bytes(b"PAR1 not really")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        lake.publish(home, store, "fresh", half_written)
    assert not (home.lake / "fresh").exists()
    assert lake.versions(store, "fresh") == []

    lake.publish_arrow(home, store, "kept", penguins_like(4))
    with pytest.raises(RuntimeError):
        lake.publish(home, store, "kept", half_written)
    with pytest.raises(lake.LakeError, match="nothing was written"):
        lake.publish(home, store, "kept", lambda tmp: 0)
    assert sorted(p.name for p in (home.lake / "kept").iterdir()) == ["v1"]
    assert [v.version for v in lake.versions(store, "kept")] == [1]
    # The next good version takes the next number; the failures used none.
    assert lake.publish_arrow(home, store, "kept", penguins_like(2)).version == 2


def test_clean_orphans_removes_dead_writers_folders(home: Home, store: Store) -> None:
    lake.publish_arrow(home, store, "kept", penguins_like(4))
    orphan = home.lake / "kept" / f"{lake.staging_name(7)}deadbeef"  # job 7's, not running
    orphan.mkdir()
    (orphan / "part-0.parquet").write_bytes(b"x")
    writing = home.lake / "kept" / f"{lake.staging_name(8)}cafe"  # job 8's, running
    writing.mkdir()
    assert lake.clean_orphans(home, lambda job_id: job_id == 8) == 1
    assert not orphan.exists() and writing.exists() and (home.lake / "kept" / "v1").exists()


def test_reader_connection_has_views_versions_and_store_tables(home: Home, store: Store) -> None:
    lake.publish_arrow(home, store, "birds", penguins_like(30))
    lake.publish_arrow(home, store, "birds", penguins_like(12))
    con = lake.connect(home, store)
    try:
        assert con.execute("SELECT count(*) FROM birds").fetchone() == (12,)
        assert con.execute('SELECT count(*) FROM "birds@v1"').fetchone() == (30,)
        assert con.execute('SELECT count(*) FROM "birds@v2"').fetchone() == (12,)
        grouped = con.execute(
            "SELECT species, count(*) FROM birds GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert grouped == [("Adelie", 4), ("Chinstrap", 4), ("Gentoo", 4)]
        # The store's tables sit next to the lake (empty here, but with their columns).
        assert con.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
        columns = [r[0] for r in con.execute("DESCRIBE metrics").fetchall()]
        assert columns == ["job_id", "step", "name", "value", "t"]
    finally:
        con.close()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('{lake}/../state.db')",
        "COPY (SELECT 1) TO '/tmp/wb-lake-escape.csv'",
        "ATTACH '/tmp/wb-lake-other.db' AS other",
        "INSTALL httpfs",
        "SET enable_external_access=true",
        "SET allowed_directories=['/']",
    ],
)
def test_sandbox_holds_even_without_the_statement_check(home: Home, store: Store, sql: str) -> None:
    """The connection itself refuses these: the statement check is a second wall, not the only one."""
    lake.publish_arrow(home, store, "birds", penguins_like(3))
    con = lake.connect(home, store)
    try:
        with pytest.raises(duckdb.Error):
            con.execute(sql.format(lake=home.lake)).fetchall()
    finally:
        con.close()
    assert not Path("/tmp/wb-lake-escape.csv").exists()


@pytest.mark.parametrize(
    ("sql", "refused"),
    [
        ("SELECT 1", None),
        ("EXPLAIN SELECT * FROM birds", None),
        ("select 1; select 2", None),
        ("COPY birds TO 'x.csv'", "statement 1 is COPY"),
        ("SELECT 1; CREATE TABLE t AS SELECT 1", "statement 2 is CREATE"),
        ("PRAGMA enable_profiling", "statement 1 is PRAGMA"),
        ("PRAGMA database_list", None),  # DuckDB 1.4 parses a reading PRAGMA as its SELECT
        ("ATTACH 'x.db'", "statement 1 is ATTACH"),
        ("INSTALL httpfs", "only SELECT and EXPLAIN"),
        ("SELEC 1", "syntax error"),
        ("  ", "no statement"),
    ],
)
def test_only_reads_pass_the_statement_check(
    home: Home, store: Store, sql: str, refused: str | None
) -> None:
    lake.publish_arrow(home, store, "birds", penguins_like(3))
    con = lake.connect(home, store, with_store_tables=False)
    try:
        if refused is None:
            lake.check_read_only(con, sql)
        else:
            with pytest.raises(lake.QueryRefused, match=refused):
                lake.check_read_only(con, sql)
    finally:
        con.close()


def test_query_history_newest_first(store: Store) -> None:
    lake.record_query(store, "SELECT 1", 0.01, 1, None)
    lake.record_query(store, "SELEC 1", None, None, "Parser Error: syntax error")
    history = lake.query_history(store)
    assert [h["sql"] for h in history] == ["SELEC 1", "SELECT 1"]
    assert history[0]["error"].startswith("Parser Error")
    assert history[1]["rows"] == 1
    assert len(lake.query_history(store, limit=1)) == 1


def test_readers_in_threads_while_versions_are_published(home: Home, store: Store) -> None:
    """Readers on their own connections keep reading a version while newer ones appear."""
    lake.publish_arrow(home, store, "live", penguins_like(1000))
    errors: list[BaseException] = []
    counts: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        own = Store.open(home.state_db)
        try:
            while not stop.is_set():
                con = lake.connect(home, own, with_store_tables=False)
                try:
                    row = con.execute("SELECT count(*), sum(id) FROM live").fetchone()
                    assert row is not None
                    counts.append(int(row[0]))
                finally:
                    con.close()
        except BaseException as error:  # collected and asserted below
            errors.append(error)
        finally:
            own.close()

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for n in range(2, 12):
        lake.publish_arrow(home, store, "live", penguins_like(1000 * n))
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert counts and set(counts) <= {1000 * n for n in range(1, 12)}


def test_only_the_store_tables_a_query_names_are_loaded(home: Home, store: Store) -> None:
    assert lake.mentioned_store_tables("SELECT * FROM birds") == []
    assert lake.mentioned_store_tables(
        "SELECT j.id, m.value FROM JOBS j JOIN metrics m ON m.job_id = j.id"
    ) == ["jobs", "metrics"]
    lake.publish_arrow(home, store, "birds", penguins_like(3))
    con = lake.connect(home, store, for_sql="SELECT count(*) FROM jobs")
    try:
        assert con.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
        with pytest.raises(duckdb.CatalogException, match="metrics"):
            con.execute("SELECT * FROM metrics")
        with pytest.raises(duckdb.CatalogException, match="birds"):
            con.execute("SELECT * FROM birds")  # not named by the query: no view
    finally:
        con.close()
    con = lake.connect(home, store, for_sql="SELECT count(*) FROM birds")
    try:
        assert con.execute("SELECT count(*) FROM birds").fetchone() == (3,)
    finally:
        con.close()
