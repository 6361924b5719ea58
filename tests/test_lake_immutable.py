"""Published versions never change: `sql --out` refuses the lake, versions are read-only
(files and folders), dataset names are unique ignoring case, and every dataset's rejects table
can be queried (empty when the ingest rejected nothing)."""

from __future__ import annotations

import stat
from pathlib import Path

import pyarrow as pa
from conftest import workbench

from workbench.catalog import lake
from workbench.daemon.client import Client
from workbench.db import catalog as db_catalog
from workbench.paths import Home


def test_sql_out_refuses_every_path_in_the_lake(home: Home, client: Client) -> None:
    info = lake.publish_arrow(home, client.store, "d", pa.table({"a": [1, 2]}))
    part = next(info.path.glob("part-*.parquet"))
    before = part.read_bytes()
    for target in (part, info.path / "new.parquet", home.lake / "x.csv", home.lake / "d" / "v9"):
        done = workbench(
            "sql", "SELECT 42 AS a", "--out", str(target) + ("" if target.suffix else ".csv")
        )
        assert done.returncode == 2, (target, done.stderr)
        assert "inside the lake" in done.stderr
    link = home.root.parent / f"{home.root.name}-link"
    link.symlink_to(info.path)
    try:
        done = workbench("sql", "SELECT 42 AS a", "--out", str(link / "p.parquet"))
        assert done.returncode == 2 and "inside the lake" in done.stderr
    finally:
        link.unlink()
    assert part.read_bytes() == before
    assert workbench("sql", "SELECT sum(a) AS s FROM d", "--json").stdout.strip() == '{"s": 3}'


def test_versions_are_read_only_and_prune_still_removes_them(home: Home, client: Client) -> None:
    first = lake.publish_arrow(home, client.store, "d", pa.table({"a": [1]}))
    lake.publish_arrow(home, client.store, "d", pa.table({"a": [2]}))
    for path in [first.path, *first.path.iterdir()]:
        mode = path.stat().st_mode
        assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), path
    lake.prune(home, client.store, [first])
    assert not first.path.exists()


def test_dataset_names_are_unique_ignoring_case(home: Home, client: Client, tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("a\n1\n")
    done = workbench("ingest", str(tmp_path / "a.csv"), "--dataset", "big", "--wait")
    assert done.returncode == 0, done.stderr
    refused = workbench("ingest", str(tmp_path / "a.csv"), "--dataset", "Big", "--wait")
    assert refused.returncode == 2 and "'big'" in refused.stderr and "case" in refused.stderr
    try:
        lake.publish_arrow(home, client.store, "BIG", pa.table({"a": [1]}))
    except lake.LakeError as error:
        assert "case" in str(error)
    else:
        raise AssertionError("publish took a name that differs only in case")


def test_a_lake_that_already_has_both_cases_still_answers(home: Home, client: Client) -> None:
    lake.publish_arrow(home, client.store, "big", pa.table({"a": [1]}))
    other = lake.publish_arrow(home, client.store, "other", pa.table({"a": [2]}))
    # as an older workbench left it: a second dataset named like the first but for case
    client.store.conn.execute("UPDATE datasets SET name = 'Big' WHERE name = 'other'")
    client.store.conn.execute("UPDATE dataset_versions SET dataset = 'Big' WHERE dataset = 'other'")
    assert sorted(db_catalog.dataset_names(client.store)) == ["Big", "big"]
    for sql in ("SELECT a FROM big", "SELECT a FROM Big", "SELECT 1 AS x"):
        done = workbench("sql", sql, "--json")
        assert "Traceback" not in done.stderr and "CatalogException" not in done.stderr, done.stderr
        assert done.returncode == 0, done.stderr
    assert other.path.exists()


def test_rejects_of_a_dataset_without_rejects_is_an_empty_table(home: Home, client: Client) -> None:
    lake.publish_arrow(home, client.store, "clean", pa.table({"a": [1]}))
    done = workbench("sql", "SELECT * FROM clean_rejects", "--json")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    counted = workbench("sql", 'SELECT count(*) AS n FROM "clean@v1_rejects"', "--json")
    assert counted.stdout.strip() == '{"n": 0}'


def test_a_pipeline_into_another_case_fails_in_words(home: Home, tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("a\n1\n")
    assert (
        workbench("ingest", str(tmp_path / "a.csv"), "--dataset", "big", "--wait").returncode == 0
    )
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        '[pipeline]\nname = "p"\n[[stage]]\nname = "load"\nkind = "ingest"\n'
        f'source = ["{tmp_path / "a.csv"}"]\ndataset = "Big"\n'
    )
    batch = workbench("--batch", str(pipeline))
    assert batch.returncode == 1, batch.stderr
    assert "same name but for case" in batch.stdout + batch.stderr
    assert "Traceback" not in batch.stdout + batch.stderr
