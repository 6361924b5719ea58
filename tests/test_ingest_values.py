"""Ingest never changes or drops a value without a word: late types, late floats and late keys
in CSV, NDJSON and Parquet, null tokens, empty inputs, content deduplication and retention."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from conftest import workbench
from test_ingest import ingest, query

from workbench.catalog import lake
from workbench.daemon.client import Client
from workbench.paths import Home

LATE = 30_000  # past DuckDB's sample of 20,480 rows


def late_csv(path: Path, column: str, value: str, late_rows: int = LATE) -> None:
    """`id` plus `column` holding whole numbers for `late_rows` rows, then `value`."""
    with open(path, "w") as handle:
        handle.write(f"id,{column},name\n")
        handle.writelines(f"{i},{i % 50},n{i}\n" for i in range(late_rows))
        handle.write(f"{late_rows},{value},last\n")


def late_ndjson(path: Path, records: int, last: dict[str, object], key: str = "tag") -> None:
    with open(path, "w") as handle:
        handle.writelines(json.dumps({"id": i, key: i % 50}) + "\n" for i in range(records))
        handle.write(json.dumps({"id": records, **last}) + "\n")


def schema(client: Client, dataset: str) -> dict[str, str]:
    return dict(lake.version_info(client.store, dataset).schema)


def test_csv_late_string_in_row_30001_widens_the_column(
    client: Client, home: Home, tmp_path: Path
) -> None:
    late_csv(tmp_path / "codes.csv", "code", "X-17")
    job = ingest(client, tmp_path, source=["codes.csv"], dataset="codes")
    assert job.state == "succeeded", job.reason
    info = lake.version_info(client.store, "codes")
    assert (info.rows, info.rejected_rows) == (LATE + 1, 0)
    assert schema(client, "codes")["code"] == "VARCHAR"
    assert query(home, client, f"SELECT code FROM codes WHERE id = {LATE}") == [("X-17",)]
    assert query(home, client, "SELECT code FROM codes WHERE id = 7") == [("7",)]
    log = (home.run_dir(job.id) / "log").read_text()
    assert "'code'" in log and "widened to VARCHAR" in log


def test_csv_late_float_is_never_rounded(client: Client, home: Home, tmp_path: Path) -> None:
    late_csv(tmp_path / "qty.csv", "qty", "2.75")
    assert ingest(client, tmp_path, source=["qty.csv"], dataset="qty").state == "succeeded"
    assert schema(client, "qty")["qty"] == "DOUBLE"
    assert query(home, client, f"SELECT qty FROM qty WHERE id = {LATE}") == [(2.75,)]
    assert query(home, client, "SELECT count(*) FROM qty") == [(LATE + 1,)]


def test_csv_type_override_never_rounds_a_fraction(client: Client, tmp_path: Path) -> None:
    late_csv(tmp_path / "qty.csv", "qty", "2.75", late_rows=10)
    job = ingest(client, tmp_path, source=["qty.csv"], dataset="q", types={"qty": "INTEGER"})
    assert job.state == "failed"
    assert "column 'qty': 2.75 is not a whole number" in (job.reason or "")
    with pytest.raises(lake.LakeError):
        lake.version_info(client.store, "q")


def test_csv_sampled_types_send_a_late_string_to_rejects_with_its_line(
    client: Client, home: Home, tmp_path: Path
) -> None:
    late_csv(tmp_path / "codes.csv", "code", "X-17")
    job = ingest(client, tmp_path, source=["codes.csv"], dataset="codes", sample_size=1000)
    assert job.state == "succeeded", job.reason
    assert schema(client, "codes")["code"] == "BIGINT"
    assert lake.version_info(client.store, "codes").rejected_rows == 1
    rejects = query(home, client, "SELECT line, column_name, raw_line FROM codes_rejects")
    assert rejects == [(LATE + 2, "code", f"{LATE},X-17,last")]  # line 1 is the header


def test_csv_sampled_types_fail_on_a_late_float_instead_of_rounding(
    client: Client, tmp_path: Path
) -> None:
    late_csv(tmp_path / "qty.csv", "qty", "2.75")
    job = ingest(client, tmp_path, source=["qty.csv"], dataset="qty", sample_size=1000)
    assert job.state == "failed"
    assert "column 'qty': 2.75 is not a whole number" in (job.reason or "")
    assert "--sample-size" in (job.reason or "")


def test_csv_files_with_a_late_key_and_another_column_order(
    client: Client, home: Home, tmp_path: Path
) -> None:
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.csv").write_text("id,name\n1,ann\n2,bob\n")
    (tmp_path / "parts" / "b.csv").write_text("name,id,extra\ncy,3,x\n")
    job = ingest(client, tmp_path, source=["parts/*.csv"], dataset="people")
    assert job.state == "succeeded", job.reason
    assert query(home, client, "SELECT id, name, extra FROM people ORDER BY id") == [
        (1, "ann", None),
        (2, "bob", None),
        (3, "cy", "x"),
    ]


@pytest.mark.parametrize("types", [{}, {"tag": "VARCHAR"}])
def test_ndjson_late_string_is_kept_with_or_without_a_type(
    client: Client, home: Home, tmp_path: Path, types: dict[str, str]
) -> None:
    late_ndjson(tmp_path / "tags.ndjson", LATE, {"tag": "seven"})
    job = ingest(client, tmp_path, source=["tags.ndjson"], dataset="tags", types=types)
    assert job.state == "succeeded", job.reason
    assert schema(client, "tags")["tag"] == "VARCHAR"
    assert query(home, client, f"SELECT tag FROM tags WHERE id IN (7, {LATE}) ORDER BY id") == [
        ("7",),
        ("seven",),
    ]


def test_ndjson_late_float_is_never_rounded(client: Client, home: Home, tmp_path: Path) -> None:
    late_ndjson(tmp_path / "qty.ndjson", 25_000, {"qty": 2.75}, key="qty")
    assert ingest(client, tmp_path, source=["qty.ndjson"], dataset="qty").state == "succeeded"
    assert schema(client, "qty")["qty"] == "DOUBLE"
    assert query(home, client, "SELECT qty FROM qty WHERE id = 25000") == [(2.75,)]
    job = ingest(client, tmp_path, source=["qty.ndjson"], dataset="qi", types={"qty": "BIGINT"})
    assert job.state == "failed"
    assert "column 'qty': 2.75 is not a whole number" in (job.reason or "")


def test_ndjson_late_key_is_kept(client: Client, home: Home, tmp_path: Path) -> None:
    late_ndjson(tmp_path / "keys.ndjson", 25_000, {"tag": 1, "late": "here"})
    assert ingest(client, tmp_path, source=["keys.ndjson"], dataset="keys").state == "succeeded"
    assert query(home, client, "SELECT count(*), count(late), max(late) FROM keys") == [
        (25_001, 1, "here")
    ]


def test_ndjson_sampling_is_refused(home: Home, tmp_path: Path) -> None:
    late_ndjson(tmp_path / "t.ndjson", 3, {"tag": 1})
    done = workbench("ingest", str(tmp_path / "t.ndjson"), "--dataset", "t", "--sample-size", "5")
    assert done.returncode == 2
    assert "only CSV/TSV types can be sampled" in done.stderr


def test_parquet_files_with_differing_schemas_in_one_glob(
    client: Client, home: Home, tmp_path: Path
) -> None:
    con = duckdb.connect()
    (tmp_path / "pq").mkdir()
    con.execute(
        f"COPY (SELECT 1::BIGINT AS a, 'x' AS b) TO '{tmp_path / 'pq' / '1.parquet'}' (FORMAT parquet)"
    )
    con.execute(
        f"COPY (SELECT 2.5::DOUBLE AS a, 7::BIGINT AS c) TO '{tmp_path / 'pq' / '2.parquet'}'"
        " (FORMAT parquet)"
    )
    assert ingest(client, tmp_path, source=["pq/*.parquet"], dataset="pq").state == "succeeded"
    assert schema(client, "pq") == {"a": "DOUBLE", "b": "VARCHAR", "c": "BIGINT"}
    assert query(home, client, "SELECT a, b, c FROM pq ORDER BY a") == [
        (1.0, "x", None),
        (2.5, None, 7),
    ]
    typed = ingest(client, tmp_path, source=["pq/*.parquet"], dataset="pt", types={"c": "VARCHAR"})
    assert typed.state == "succeeded", typed.reason
    assert schema(client, "pt")["c"] == "VARCHAR"
    rounded = ingest(
        client, tmp_path, source=["pq/*.parquet"], dataset="pr", types={"a": "INTEGER"}
    )
    assert rounded.state == "failed" and "2.5 is not a whole number" in (rounded.reason or "")


def test_penguins_raw_reads_na_as_null(client: Client, home: Home, tmp_path: Path) -> None:
    import palmerpenguins

    raw = Path(palmerpenguins.__file__).parent / "data" / "penguins-raw.csv"
    job = ingest(client, tmp_path, source=[str(raw)], dataset="raw")
    assert job.state == "succeeded", job.reason
    types = schema(client, "raw")
    for column in ("Culmen Length (mm)", "Body Mass (g)", "Delta 15 N (o/oo)"):
        assert types[column] in ("DOUBLE", "BIGINT"), (column, types[column])
    (mean,) = query(home, client, 'SELECT avg("Body Mass (g)") FROM raw')[0]
    assert mean == pytest.approx(4201.75, abs=0.01)
    info = lake.version_info(client.store, "raw")
    assert info.nulls["Body Mass (g)"] == 2 and info.nulls["Sex"] == 11
    shown = workbench("datasets", "raw")
    assert shown.returncode == 0
    line = next(x for x in shown.stdout.splitlines() if x.startswith("Body Mass (g)"))
    assert line.split()[-2:] == ["BIGINT", "2"] or line.split()[-2:] == ["DOUBLE", "2"]


def test_null_tokens_default_extra_and_off(client: Client, home: Home, tmp_path: Path) -> None:
    tokens = ["", "NA", "N/A", "NaN", "null", "NULL", "None"]
    lines = ["n,s"] + [f"{i},{t}" for i, t in enumerate(tokens)] + ["7,-", "8,text"]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    assert ingest(client, tmp_path, source=["t.csv"], dataset="d").state == "succeeded"
    assert query(home, client, "SELECT list(s ORDER BY n) FROM d") == [
        ([None] * 7 + ["-", "text"],)
    ]
    extra = ingest(client, tmp_path, source=["t.csv"], dataset="e", null=["-"])
    assert extra.state == "succeeded"
    assert query(home, client, "SELECT list(s ORDER BY n) FROM e WHERE s IS NOT NULL") == [
        (["text"],)
    ]
    off = ingest(client, tmp_path, source=["t.csv"], dataset="f", default_nulls=False, null=[""])
    assert off.state == "succeeded"
    assert query(home, client, "SELECT count(s) FROM f") == [(8,)]
    assert query(home, client, "SELECT s FROM f WHERE n = 1") == [("NA",)]


def test_empty_inputs_publish_nothing_and_keep_the_dataset(
    client: Client, home: Home, tmp_path: Path
) -> None:
    (tmp_path / "real.csv").write_text("a,b\n1,x\n2,y\n")
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "blank.ndjson").write_text("\n\n")
    (tmp_path / "none.json").write_text("[]")
    assert ingest(client, tmp_path, source=["real.csv"], dataset="d").state == "succeeded"
    for name in ("empty.csv", "blank.ndjson", "none.json"):
        job = ingest(client, tmp_path, source=[name], dataset="d")  # replace mode
        assert job.state == "failed", name
        assert "nothing to ingest" in (job.reason or ""), job.reason
    assert [v.version for v in lake.versions(client.store, "d")] == [1]
    assert query(home, client, "SELECT count(*) FROM d") == [(2,)]
    assert sorted(p.name for p in (home.lake / "d").iterdir()) == ["v1"]


def test_header_only_csv_publishes_zero_rows_with_its_columns(
    client: Client, tmp_path: Path
) -> None:
    (tmp_path / "h.csv").write_text("id,name,score\n")
    job = ingest(client, tmp_path, source=["h.csv"], dataset="h")
    assert job.state == "succeeded", job.reason
    info = lake.version_info(client.store, "h")
    assert info.rows == 0 and [n for n, _ in info.schema] == ["id", "name", "score"]


def test_identical_content_publishes_no_new_version(
    client: Client, home: Home, tmp_path: Path
) -> None:
    (tmp_path / "a.csv").write_text("x\n1\n2\n")
    first = ingest(client, tmp_path, source=["a.csv"], dataset="d")
    again = ingest(client, tmp_path, source=["a.csv"], dataset="d")
    assert first.state == again.state == "succeeded"
    assert [v.version for v in lake.versions(client.store, "d")] == [1]
    assert "identical to d v1" in (home.run_dir(again.id) / "log").read_text()
    (tmp_path / "a.csv").write_text("x\n1\n3\n")
    assert ingest(client, tmp_path, source=["a.csv"], dataset="d").state == "succeeded"
    assert [v.version for v in lake.versions(client.store, "d")] == [1, 2]


def test_datasets_prune_keeps_the_latest_and_versions_runs_used(home: Home, client: Client) -> None:
    import pyarrow as pa

    for n in range(1, 6):
        lake.publish_arrow(home, client.store, "d", pa.table({"x": list(range(n))}))
    from workbench.db import catalog as db_catalog

    used = lake.version_info(client.store, "d", 2)
    original = db_catalog.versions_in_use
    try:
        db_catalog.versions_in_use = lambda store: {("d", 2)}  # type: ignore[assignment]
        chosen = lake.prunable(client.store, "d", keep_versions=2)
    finally:
        db_catalog.versions_in_use = original  # type: ignore[assignment]
    assert [i.version for i in chosen] == [1, 3]  # v2 a run used; v4 and v5 are the newest two
    assert used.path.exists()

    dry = workbench("datasets", "prune", "--keep", "1", "--dry-run")
    assert dry.returncode == 0 and "would remove 4 version(s)" in dry.stdout
    assert [v.version for v in lake.versions(client.store, "d")] == [1, 2, 3, 4, 5]
    done = workbench("datasets", "prune", "d", "--keep", "2", "--json")
    assert done.returncode == 0, done.stderr
    removed = json.loads(done.stdout)["removed"]
    assert [r["version"] for r in removed] == [1, 2, 3]
    assert [v.version for v in lake.versions(client.store, "d")] == [4, 5]
    assert sorted(p.name for p in (home.lake / "d").iterdir()) == ["v4", "v5"]
    assert query(home, client, "SELECT count(*) FROM d") == [(5,)]
    nothing = workbench("datasets", "prune")
    assert nothing.returncode == 2 and "--keep N or --older-than AGE" in nothing.stderr


def test_retention_from_config_prunes_after_each_ingest(
    client: Client, home: Home, tmp_path: Path
) -> None:
    home.config.write_text("[lake]\nkeep_versions = 2\n")
    for n in range(4):
        (tmp_path / "a.csv").write_text(f"x\n{n}\n")
        assert ingest(client, tmp_path, source=["a.csv"], dataset="d").state == "succeeded"
    assert [v.version for v in lake.versions(client.store, "d")] == [3, 4]
    assert sorted(p.name for p in (home.lake / "d").iterdir()) == ["v3", "v4"]
    older = workbench("datasets", "prune", "--older-than", "0.001s")
    assert older.returncode == 0
    assert [v.version for v in lake.versions(client.store, "d")] == [4]


def test_csv_integers_past_two_to_the_53_stay_exact(
    client: Client, home: Home, tmp_path: Path
) -> None:
    big = 2**53 + 1  # the first integer a DOUBLE cannot hold
    (tmp_path / "big.csv").write_text(f"id,n\n1,5\n2,{big}\n3,-{big + 2}\n")
    job = ingest(client, tmp_path, source=["big.csv"], dataset="big")
    assert job.state == "succeeded", job.reason
    assert schema(client, "big")["n"] == "BIGINT"
    assert query(home, client, "SELECT n FROM big ORDER BY id") == [(5,), (big,), (-(big + 2),)]


def test_cli_null_flags_and_an_empty_compressed_file(home: Home, tmp_path: Path) -> None:
    import gzip

    (tmp_path / "t.csv").write_text("n,s\n1,NA\n2,-\n3,x\n")
    done = workbench(
        "ingest", str(tmp_path / "t.csv"), "--dataset", "t", "--null", "-",
        "--no-default-nulls", "--wait",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = workbench("sql", "SELECT s FROM t ORDER BY n", "--json").stdout.splitlines()
    assert [json.loads(r)["s"] for r in rows] == ["NA", None, "x"]
    with gzip.open(tmp_path / "e.csv.gz", "wt") as handle:
        handle.write("")
    empty = workbench("ingest", str(tmp_path / "e.csv.gz"), "--dataset", "t", "--wait")
    assert empty.returncode == 1
    shown = workbench("show", empty.stdout.split()[0])
    assert "is empty: nothing to ingest" in shown.stdout
