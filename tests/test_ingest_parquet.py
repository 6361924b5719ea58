"""A single Parquet source is stored byte for byte (no decode and re-encode), and still checked
whole: every value of the stored copy is decoded once, so a file DuckDB cannot read fails the job
as a rewrite would. Sources a copy would not serve (type overrides, huge row groups, appends,
several files, encryption) are written again as before."""

from __future__ import annotations

import datetime
import decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from test_ingest import ingest, query

from workbench.catalog import lake
from workbench.daemon.client import Client
from workbench.paths import Home


def _log(home: Home, job_id: int) -> str:
    return (home.run_dir(job_id) / "log").read_text()


def _part(client: Client, dataset: str) -> Path:
    (part,) = lake.version_info(client.store, dataset).parts
    return Path(part)


def test_a_parquet_file_is_stored_byte_for_byte_and_reads_the_same(
    client: Client, home: Home, tmp_path: Path
) -> None:
    table = pa.table(
        {
            "id": pa.array([9007199254740993, -1, None], pa.int64()),
            "x": [0.1, float("nan"), None],
            "name": ["Autres céréales", "東京", None],
            "at": pa.array(
                [datetime.datetime(2026, 4, 29, 12, 38, tzinfo=datetime.UTC), None, None],
                pa.timestamp("us", tz="UTC"),
            ),
            "amount": pa.array(
                [decimal.Decimal("1.005"), decimal.Decimal("-19.999"), None], pa.decimal128(10, 3)
            ),
            "tags": [["a", "b"], [], None],
            "flag": [True, False, None],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    job = ingest(client, tmp_path, source=["t.parquet"], dataset="t")
    assert job.state == "succeeded", job.reason
    assert "copied as it is" in _log(home, job.id)
    assert _part(client, "t").read_bytes() == (tmp_path / "t.parquet").read_bytes()
    expected = (
        duckdb.connect()
        .execute(f"SELECT COLUMNS(*)::VARCHAR FROM read_parquet('{tmp_path / 't.parquet'}')")
        .fetchall()
    )
    assert query(home, client, "SELECT COLUMNS(*)::VARCHAR FROM t") == expected
    info = lake.version_info(client.store, "t")
    assert info.rows == 3 and [c for c, _ in info.schema][:3] == ["id", "x", "name"]


def test_a_parquet_file_duckdb_cannot_read_whole_fails_and_publishes_nothing(
    client: Client, tmp_path: Path
) -> None:
    # A string column whose second value is not UTF-8: its footer reads fine, its pages do not.
    offsets = pa.array([0, 2, 4], pa.int32()).buffers()[1]
    text = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(b"ok\xff\xfe")])
    pq.write_table(pa.table({"s": text, "n": [1, 2]}), tmp_path / "bad.parquet")
    job = ingest(client, tmp_path, source=["bad.parquet"], dataset="bad")
    assert job.state == "failed"
    assert "not valid UTF8" in (job.reason or ""), job.reason
    assert not any(v.dataset == "bad" for v in lake.versions(client.store))


def test_parquet_sources_a_copy_would_not_serve_are_written_again(
    client: Client, home: Home, tmp_path: Path
) -> None:
    rows = (1 << 20) + 1
    pq.write_table(
        pa.table({"n": pa.array(range(rows), pa.int64())}),
        tmp_path / "big.parquet",
        row_group_size=rows,
    )
    job = ingest(client, tmp_path, source=["big.parquet"], dataset="big")
    assert job.state == "succeeded", job.reason
    assert "read and written" in _log(home, job.id)
    groups = (
        duckdb.connect()
        .execute(f"SELECT max(row_group_num_rows) FROM parquet_metadata('{_part(client, 'big')}')")
        .fetchone()
    )
    assert groups is not None and groups[0] < rows  # DuckDB's own row groups: scanned in parallel
    assert query(home, client, "SELECT count(*), sum(n) FROM big") == [
        (rows, rows * (rows - 1) // 2)
    ]

    pq.write_table(pa.table({"n": [1, 2], "s": ["a", "b"]}), tmp_path / "small.parquet")
    typed = ingest(
        client, tmp_path, source=["small.parquet"], dataset="typed", types={"n": "VARCHAR"}
    )
    assert typed.state == "succeeded", typed.reason
    assert "read and written" in _log(home, typed.id)
    assert query(home, client, "SELECT typeof(n), n FROM typed ORDER BY s") == [
        ("VARCHAR", "1"),
        ("VARCHAR", "2"),
    ]
    first = ingest(client, tmp_path, source=["small.parquet"], dataset="grown")
    assert "copied as it is" in _log(home, first.id)
    again = ingest(client, tmp_path, source=["small.parquet"], dataset="grown", mode="append")
    assert again.state == "succeeded", again.reason
    assert "read and written" in _log(home, again.id)
    assert query(home, client, "SELECT count(*) FROM grown") == [(4,)]
