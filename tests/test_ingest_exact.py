"""Ingest changes no value without failing or saying so: encodings, integers past 2**53, values
past the type sample, declared decimals, ambiguous dates, mixed time zones, duplicate headers and
boolean words. Every input is generated here; each case failed before the strict reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import workbench
from test_ingest import ingest, query
from test_ingest_values import LATE, schema

from workbench.catalog import lake
from workbench.daemon.client import Client
from workbench.paths import Home


def log_of(home: Home, job_id: int) -> str:
    return (home.run_dir(job_id) / "log").read_text()


def test_latin1_csv_over_a_utf8_version_keeps_every_row(
    client: Client, home: Home, tmp_path: Path
) -> None:
    (tmp_path / "c.csv").write_bytes("name;n\nAutres céréales;75\nBlé;3\n".encode())
    first = ingest(client, tmp_path, source=["c.csv"], dataset="crops")
    assert first.state == "succeeded", first.reason
    (tmp_path / "c.csv").write_bytes(b"name;n\nAutres c\xe9r\xe9ales;75\nBl\xe9;3\n")
    job = ingest(client, tmp_path, source=["c.csv"], dataset="crops")
    assert job.state == "succeeded", job.reason
    info = lake.version_info(client.store, "crops")
    assert (info.version, info.rows, info.rejected_rows) == (1, 2, 0)  # the same content
    assert query(home, client, "SELECT name, n FROM crops ORDER BY n") == [
        ("Blé", 3),
        ("Autres céréales", 75),
    ]
    log = log_of(home, job.id)
    assert "not UTF-8" in log and "read as cp1252" in log and "identical to crops v1" in log
    (tmp_path / "c.csv").write_bytes(b"name;n\nAutres c\xe9r\xe9ales;76\n")
    job = ingest(client, tmp_path, source=["c.csv"], dataset="crops")
    info = lake.version_info(client.store, "crops")
    assert (info.version, info.rows, info.sources[0]["encoding"]) == (2, 1, "cp1252")


def test_declared_encoding_is_used(client: Client, home: Home, tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_bytes("name;n\nœuf;1\n".encode("cp1252"))
    job = ingest(client, tmp_path, source=["c.csv"], dataset="e", encoding="cp1252")
    assert job.state == "succeeded", job.reason
    assert query(home, client, "SELECT name FROM e") == [("œuf",)]
    bad = ingest(client, tmp_path, source=["c.csv"], dataset="e2", encoding="utf-8")
    assert bad.state == "failed"
    assert "not valid utf-8" in (bad.reason or "").lower() and "line 2" in (bad.reason or "")


def test_cli_encoding_flag(home: Home, tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_bytes(b"name;n\nBl\xe9;3\n")
    done = workbench(
        "ingest", str(tmp_path / "c.csv"), "--dataset", "c", "--encoding", "latin-1", "--wait"
    )
    assert done.returncode == 0, done.stderr
    out = workbench("sql", "SELECT name FROM c", "--json")
    assert json.loads(out.stdout) == {"name": "Blé"}
    refused = workbench("ingest", str(tmp_path / "c.csv"), "--dataset", "c", "--encoding", "nope")
    assert refused.returncode == 2 and "encoding" in refused.stderr and "nope" in refused.stderr


def test_bad_utf8_lines_in_a_utf8_file_are_rejected_with_their_bytes(
    client: Client, home: Home, tmp_path: Path
) -> None:
    raw = "name,n\nTōkyō,1\n".encode() + b"Bl\xe9,2\n" + "Kyōto,3\n".encode()
    (tmp_path / "m.csv").write_bytes(raw)
    job = ingest(client, tmp_path, source=["m.csv"], dataset="m")
    assert job.state == "succeeded", job.reason
    info = lake.version_info(client.store, "m")
    assert (info.rows, info.rejected_rows) == (2, 1)
    rejects = query(home, client, "SELECT line, raw_bytes FROM m_rejects")
    assert rejects == [(3, b"Bl\xe9,2")]


def test_replace_never_publishes_zero_rows_from_a_non_empty_input(
    client: Client, home: Home, tmp_path: Path
) -> None:
    (tmp_path / "a.csv").write_text("a,b\n1,2\n3,4\n")
    assert ingest(client, tmp_path, source=["a.csv"], dataset="d").state == "succeeded"
    (tmp_path / "a.csv").write_text("a,b\n1,2,3\n4,5,6\n")  # every row ragged
    job = ingest(client, tmp_path, source=["a.csv"], dataset="d")
    assert job.state == "failed"
    assert "no row" in (job.reason or "") and "keeps" in (job.reason or "")
    assert lake.version_info(client.store, "d").version == 1


def test_integers_past_2_53_keep_every_digit_csv(
    client: Client, home: Home, tmp_path: Path
) -> None:
    (tmp_path / "b.csv").write_text(
        "id,n\n1,18446744073709551615\n2,9007199254740995\n3,9007199254740996\n4,9007199254740997\n"
    )
    job = ingest(client, tmp_path, source=["b.csv"], dataset="b")
    assert job.state == "succeeded", job.reason
    assert "DOUBLE" not in schema(client, "b")["n"]
    got = query(home, client, "SELECT CAST(n AS VARCHAR) FROM b ORDER BY id")
    assert [r[0] for r in got] == [
        "18446744073709551615",
        "9007199254740995",
        "9007199254740996",
        "9007199254740997",
    ]


def test_integers_past_2_53_keep_every_digit_ndjson(
    client: Client, home: Home, tmp_path: Path
) -> None:
    values = [
        9007199254740993,
        9223372036854775808,
        9007199254740995,
        9007199254740996,
        9007199254740997,
    ]
    (tmp_path / "b.ndjson").write_text(
        "".join(json.dumps({"id": i, "n": v}) + "\n" for i, v in enumerate(values))
    )
    job = ingest(client, tmp_path, source=["b.ndjson"], dataset="b")
    assert job.state == "succeeded", job.reason
    assert "DOUBLE" not in schema(client, "b")["n"]
    got = query(home, client, "SELECT CAST(n AS VARCHAR) FROM b ORDER BY id")
    assert [r[0] for r in got] == [str(v) for v in values]
    typed = ingest(client, tmp_path, source=["b.ndjson"], dataset="t", types={"n": "HUGEINT"})
    assert typed.state == "succeeded", typed.reason
    got = query(home, client, "SELECT CAST(n AS VARCHAR) FROM t ORDER BY id")
    assert [r[0] for r in got] == [str(v) for v in values]


@pytest.mark.parametrize("sample", [None, 1000])
def test_leading_zero_code_past_the_sample_is_kept_as_text(
    client: Client, home: Home, tmp_path: Path, sample: int | None
) -> None:
    with open(tmp_path / "codes.csv", "w") as handle:
        handle.write("id,code\n")
        handle.writelines(f"{i},{100 + i}\n" for i in range(LATE))
        handle.write(f"{LATE},007\n")
    table: dict[str, object] = {"source": ["codes.csv"], "dataset": "codes"}
    if sample:
        table["sample_size"] = sample
    job = ingest(client, tmp_path, **table)
    if sample is None:
        assert job.state == "succeeded", job.reason
        assert schema(client, "codes")["code"] == "VARCHAR"
        assert query(home, client, f"SELECT code FROM codes WHERE id = {LATE}") == [("007",)]
        assert "'code'" in log_of(home, job.id) and "007" in log_of(home, job.id)
    else:  # sampled types: the value is rejected with its line, never changed
        assert job.state == "succeeded", job.reason
        rows = query(home, client, "SELECT line, column_name, raw_line FROM codes_rejects")
        assert rows == [(LATE + 2, "code", f"{LATE},007")]
        assert query(home, client, f"SELECT count(*) FROM codes WHERE id = {LATE}") == [(0,)]


@pytest.mark.parametrize("sample", [None, 1000])
def test_timestamp_past_a_date_sample_is_not_cut_to_a_date(
    client: Client, home: Home, tmp_path: Path, sample: int | None
) -> None:
    with open(tmp_path / "d.csv", "w") as handle:
        handle.write("id,day\n")
        handle.writelines(f"{i},2021-01-{1 + i % 28:02d}\n" for i in range(LATE))
        handle.write(f"{LATE},2021-03-04 10:11:12\n")
    table: dict[str, object] = {"source": ["d.csv"], "dataset": "d"}
    if sample:
        table["sample_size"] = sample
    job = ingest(client, tmp_path, **table)
    assert job.state == "succeeded", job.reason
    if sample is None:
        assert schema(client, "d")["day"] in ("TIMESTAMP", "VARCHAR")
        got = query(home, client, f"SELECT CAST(day AS VARCHAR) FROM d WHERE id = {LATE}")
        assert got == [("2021-03-04 10:11:12",)]
        assert "'day'" in log_of(home, job.id)
    else:
        assert schema(client, "d")["day"] == "DATE"
        rows = query(home, client, "SELECT line, column_name FROM d_rejects")
        assert rows == [(LATE + 2, "day")]


def test_declared_decimal_that_would_round_fails(client: Client, tmp_path: Path) -> None:
    for value in ("1.005", "19.999"):
        (tmp_path / "p.csv").write_text(f"id,amount\n1,2.50\n2,{value}\n")
        job = ingest(
            client, tmp_path, source=["p.csv"], dataset="p", types={"amount": "DECIMAL(10,2)"}
        )
        assert job.state == "failed", value
        reason = job.reason or ""
        assert "'amount'" in reason and value in reason and "line 3" in reason, reason
    (tmp_path / "p.csv").write_text("id,amount\n1,2.50\n2,19.990\n")
    job = ingest(client, tmp_path, source=["p.csv"], dataset="p", types={"amount": "DECIMAL(10,2)"})
    assert job.state == "succeeded", job.reason


def test_ambiguous_dates_stay_text_unless_a_format_is_given(
    client: Client, home: Home, tmp_path: Path
) -> None:
    (tmp_path / "a.csv").write_text("d\n03/04/2021\n05/06/2021\n")
    job = ingest(client, tmp_path, source=["a.csv"], dataset="a")
    assert job.state == "succeeded", job.reason
    assert schema(client, "a")["d"] == "VARCHAR"
    assert query(home, client, "SELECT d FROM a ORDER BY d") == [("03/04/2021",), ("05/06/2021",)]
    assert "date-format" in log_of(home, job.id)
    job = ingest(client, tmp_path, source=["a.csv"], dataset="b", date_format="%m/%d/%Y")
    assert job.state == "succeeded", job.reason
    assert schema(client, "b")["d"] == "DATE"
    got = query(home, client, "SELECT CAST(d AS VARCHAR) FROM b ORDER BY d")
    assert got == [("2021-03-04",), ("2021-05-06",)]
    assert "%m/%d/%Y" in log_of(home, job.id)


@pytest.mark.parametrize("tz", ["UTC", "America/New_York"])
@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_naive_and_offset_timestamps_in_one_column_stay_text(
    home: Home, tmp_path: Path, tz: str, fmt: str
) -> None:
    values = ["2026-04-29T14:38:00+02:00", "2026-04-29T14:38:00"]
    path = tmp_path / f"t.{fmt}"
    if fmt == "csv":
        path.write_text("id,t\n" + "".join(f"{i},{v}\n" for i, v in enumerate(values)))
    else:
        path.write_text("".join(json.dumps({"id": i, "t": v}) + "\n" for i, v in enumerate(values)))
    env = {"TZ": tz}
    done = workbench("ingest", str(path), "--dataset", "t", "--wait", env=env)
    assert done.returncode == 0, done.stderr
    out = workbench("sql", "SELECT t FROM t ORDER BY id", "--json", env=env)
    assert [json.loads(line)["t"] for line in out.stdout.splitlines()] == values
    # Offsets alone convert, to the same instant whatever the submitter's zone.
    path.write_text(
        "id,t\n0,2026-04-29T14:38:00+02:00\n1,2026-04-29T12:00:00Z\n"
        if fmt == "csv"
        else '{"id":0,"t":"2026-04-29T14:38:00+02:00"}\n{"id":1,"t":"2026-04-29T12:00:00Z"}\n'
    )
    done = workbench("ingest", str(path), "--dataset", "u", "--wait", env=env)
    assert done.returncode == 0, done.stderr
    out = workbench("sql", "SELECT epoch(t) AS e FROM u ORDER BY id", "--json", env=env)
    assert [json.loads(line)["e"] for line in out.stdout.splitlines()] == [
        1777466280.0,
        1777464000.0,
    ]


def test_duplicate_and_empty_headers_get_logged_names_that_never_collide(
    client: Client, home: Home, tmp_path: Path
) -> None:
    (tmp_path / "h.csv").write_text("id,name,name,name_1,\n1,a,b,c,d\n")
    job = ingest(client, tmp_path, source=["h.csv"], dataset="h")
    assert job.state == "succeeded", job.reason
    assert [n for n, _ in lake.version_info(client.store, "h").schema] == [
        "id",
        "name",
        "name_2",
        "name_1",
        "column_5",
    ]
    assert query(home, client, "SELECT name, name_2, name_1, column_5 FROM h") == [
        ("a", "b", "c", "d")
    ]
    log = log_of(home, job.id)
    assert "name_2" in log and "column_5" in log


def test_boolean_words_stay_text_unless_declared(
    client: Client, home: Home, tmp_path: Path
) -> None:
    (tmp_path / "y.csv").write_text("id,ok,flag\n1,yes,true\n2,no,false\n")
    job = ingest(client, tmp_path, source=["y.csv"], dataset="y")
    assert job.state == "succeeded", job.reason
    types = schema(client, "y")
    assert (types["ok"], types["flag"]) == ("VARCHAR", "BOOLEAN")
    assert query(home, client, "SELECT ok FROM y ORDER BY id") == [("yes",), ("no",)]
    job = ingest(client, tmp_path, source=["y.csv"], dataset="z", types={"ok": "BOOLEAN"})
    assert job.state == "succeeded", job.reason
    assert query(home, client, "SELECT ok FROM z ORDER BY id") == [(True,), (False,)]
