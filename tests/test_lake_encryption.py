"""Encryption at rest: a dataset (or the whole lake) written as AES-GCM encrypted Parquet with
the key from a 0600 key file named in config.toml; no plaintext value on disk, rejects and
predictions encrypted too, a wrong or missing key refused in words, and the key never in
state.db, a job's record, its log or a command line."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import workbench

from workbench.catalog import encryption, lake
from workbench.db.store import Store
from workbench.paths import Home

SECRET_VALUES = ("ZEBRA-PLAINTEXT-7731", "OKAPI-PLAINTEXT-0042")


def write_key(path: Path, mode: int = 0o600) -> str:
    """A fresh 32-byte key as base64 in `path`; its text."""
    text = base64.b64encode(os.urandom(32)).decode()
    path.write_text(text + "\n")
    path.chmod(mode)
    return text


def configure(home: Home, key_file: Path, whole_lake: bool = False) -> None:
    lines = ["[lake]", f'key_file = "{key_file}"']
    if whole_lake:
        lines.append("encrypt = true")
    home.config.write_text("\n".join(lines) + "\n")


def secret_csv(tmp_path: Path, bad_row: bool = True) -> Path:
    path = tmp_path / "people.csv"
    rows = [f"{i},{SECRET_VALUES[i % 2]},{i * 1.5}" for i in range(40)]
    if bad_row:
        rows.append("41,REJECTED-PLAINTEXT-5150,not-a-number")
    path.write_text("id,name,score\n" + "\n".join(rows) + "\n")
    return path


def every_byte_under(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def ingest_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return workbench("ingest", *args, "--wait", timeout=180)


def test_an_encrypted_dataset_holds_no_plaintext_and_reads_back_with_the_key(
    home: Home, tmp_path: Path
) -> None:
    key_text = write_key(tmp_path / "lake.key")
    configure(home, tmp_path / "lake.key")
    source = secret_csv(tmp_path)
    done = ingest_cli(
        str(source), "--dataset", "people", "--type", "score=DOUBLE", "--encrypt", "--json"
    )
    assert done.returncode == 0, done.stderr + done.stdout
    version = home.lake / "people" / "v1"
    parts = sorted(version.glob("*.parquet"))
    assert {p.name for p in parts} == {"part-0.parquet", "rejects.parquet"}
    assert all(encryption.is_encrypted(p) for p in parts)
    on_disk = every_byte_under(home.lake)
    for value in (*SECRET_VALUES, "REJECTED-PLAINTEXT-5150", "not-a-number"):
        assert value.encode() not in on_disk
    out = workbench(
        "sql", "SELECT name, count(*) AS n FROM people GROUP BY name ORDER BY name", "--json"
    )
    assert out.returncode == 0, out.stderr
    assert [json.loads(line) for line in out.stdout.splitlines()] == [
        {"name": name, "n": 20} for name in sorted(SECRET_VALUES)
    ]
    out = workbench("sql", "SELECT raw_line FROM people_rejects", "--json")
    assert out.returncode == 0, out.stderr
    assert "REJECTED-PLAINTEXT-5150" in out.stdout
    shown = workbench("datasets", "people", "--json")
    assert shown.returncode == 0, shown.stderr
    assert [v["encrypted"] for v in json.loads(shown.stdout)] == [True]
    # The key is nowhere the workbench writes or shows: state.db, logs, job records.
    key_bytes = base64.b64decode(key_text)
    spelled = [key_text.encode(), key_bytes, key_bytes.hex().encode()]
    everything = every_byte_under(home.root)
    for form in spelled:
        assert form not in everything
    for command in (["show", "1", "--json"], ["ls", "--json"], ["logs", "1"]):
        result = workbench(*command)
        assert result.returncode == 0, (command, result.stderr)
        assert key_text not in result.stdout and key_bytes.hex() not in result.stdout


def test_the_key_is_never_on_a_command_line_while_the_ingest_runs(
    home: Home, tmp_path: Path
) -> None:
    key_text = write_key(tmp_path / "lake.key")
    configure(home, tmp_path / "lake.key", whole_lake=True)
    source = tmp_path / "big.csv"
    source.write_text("id,name\n" + "".join(f"{i},{SECRET_VALUES[0]}{i}\n" for i in range(300_000)))
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(
                subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
            )
            stop.wait(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        done = ingest_cli(str(source), "--dataset", "big")
    finally:
        stop.set()
        watcher.join()
    assert done.returncode == 0, done.stderr
    assert any("workbench" in listing or "jobs" in listing for listing in seen)
    key_hex = base64.b64decode(key_text).hex()
    for listing in seen:
        assert key_text not in listing and key_hex not in listing
    assert encryption.is_encrypted(home.lake / "big" / "v1" / "part-0.parquet")


def test_a_wrong_or_missing_key_is_refused_in_words(home: Home, tmp_path: Path) -> None:
    write_key(tmp_path / "lake.key")
    configure(home, tmp_path / "lake.key")
    done = ingest_cli(str(secret_csv(tmp_path, bad_row=False)), "--dataset", "people", "--encrypt")
    assert done.returncode == 0, done.stderr
    write_key(tmp_path / "other.key")
    configure(home, tmp_path / "other.key")
    out = workbench("sql", "SELECT count(*) FROM people")
    assert out.returncode == 2, out.stdout
    assert "does not decrypt with the key in" in out.stderr and "other.key" in out.stderr
    assert "Traceback" not in out.stderr
    home.config.write_text("")
    out = workbench("sql", "SELECT count(*) FROM people")
    assert out.returncode == 2
    assert "people" in out.stderr and "key_file" in out.stderr and "Traceback" not in out.stderr
    # A plain dataset beside it still reads without any key.
    plain = tmp_path / "plain.csv"
    plain.write_text("a\n1\n2\n")
    assert ingest_cli(str(plain), "--dataset", "plain").returncode == 0
    out = workbench("sql", "SELECT sum(a) AS s FROM plain", "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == {"s": 3}, out.stderr


def test_a_key_file_others_can_read_or_that_is_no_key_is_refused_at_submit(
    home: Home, tmp_path: Path
) -> None:
    source = secret_csv(tmp_path, bad_row=False)
    done = ingest_cli(str(source), "--dataset", "people", "--encrypt")
    assert done.returncode == 2 and "key_file" in done.stderr, done.stderr
    write_key(tmp_path / "open.key", mode=0o644)
    configure(home, tmp_path / "open.key")
    done = ingest_cli(str(source), "--dataset", "people", "--encrypt")
    assert done.returncode == 2 and "chmod 600" in done.stderr, done.stderr
    (tmp_path / "short.key").write_text("c2hvcnQ=\n")
    (tmp_path / "short.key").chmod(0o600)
    configure(home, tmp_path / "short.key")
    done = ingest_cli(str(source), "--dataset", "people", "--encrypt")
    assert done.returncode == 2 and "holds 5 bytes" in done.stderr, done.stderr
    assert not (home.lake / "people").exists()


def test_an_encrypted_dataset_stays_encrypted_dedups_and_appends(
    home: Home, tmp_path: Path
) -> None:
    write_key(tmp_path / "lake.key")
    configure(home, tmp_path / "lake.key")
    source = secret_csv(tmp_path, bad_row=False)
    assert ingest_cli(str(source), "--dataset", "people", "--encrypt").returncode == 0
    # The same content again: no new version, though the encrypted bytes would differ.
    again = ingest_cli(str(source), "--dataset", "people")
    assert again.returncode == 0, again.stderr
    assert not (home.lake / "people" / "v2").exists()
    more = tmp_path / "more.csv"
    more.write_text(f"id,name,score\n99,{SECRET_VALUES[0]},1.0\n")
    done = ingest_cli(str(more), "--dataset", "people", "--mode", "append")
    assert done.returncode == 0, done.stderr
    assert encryption.is_encrypted(home.lake / "people" / "v2" / "part-0.parquet")
    out = workbench("sql", "SELECT count(*) AS n FROM people", "--json")
    assert json.loads(out.stdout) == {"n": 41}, out.stderr


def test_predictions_of_an_encrypted_dataset_are_encrypted(home: Home, tmp_path: Path) -> None:
    write_key(tmp_path / "lake.key")
    configure(home, tmp_path / "lake.key")
    store = Store.open(home.state_db)
    try:
        table = pa.table({"id": [1, 2], "label": [SECRET_VALUES[0], SECRET_VALUES[1]]})
        info = lake.publish_arrow(home, store, "scores", table, encrypt=True)
        assert info.encrypted and info.to_json()["encrypted"] is True
        predictions = lake.publish_arrow(
            home, store, "t1_predictions", table, encrypt=info.encrypted
        )
        assert predictions.encrypted
        for value in SECRET_VALUES:
            assert value.encode() not in every_byte_under(home.lake)
        read, _ = lake.read_arrow(home, "t1_predictions", store=store)
        assert read.column("label").to_pylist() == list(SECRET_VALUES)
    finally:
        store.close()


def test_a_key_file_is_read_as_base64_or_hex_and_never_shown(tmp_path: Path) -> None:
    raw = os.urandom(16)
    (tmp_path / "hex.key").write_text(raw.hex())
    (tmp_path / "hex.key").chmod(0o600)
    key = encryption.read_key(tmp_path / "hex.key")
    assert key.secret == raw
    assert raw.hex() not in repr(key) and str(raw) not in repr(key)
    with pytest.raises(encryption.EncryptionError, match=r"(?i)no such file"):
        encryption.read_key(tmp_path / "missing.key")


def test_a_connection_over_every_dataset_leaves_out_what_it_cannot_decrypt(
    home: Home, tmp_path: Path
) -> None:
    """The Data screen's connection (no query named) still serves the plain datasets when the
    key is gone; a query naming the encrypted one says why it cannot be read."""
    write_key(tmp_path / "lake.key")
    configure(home, tmp_path / "lake.key")
    store = Store.open(home.state_db)
    try:
        lake.publish_arrow(home, store, "hidden", pa.table({"a": [1]}), encrypt=True)
        lake.publish_arrow(home, store, "shown", pa.table({"a": [2]}))
        home.config.write_text("")
        con = lake.connect(home, store, with_store_tables=False)
        try:
            assert con.execute("SELECT a FROM shown").fetchall() == [(2,)]
            names = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
            assert "shown" in names and "hidden" not in names
        finally:
            con.close()
        with pytest.raises(lake.LakeError, match=r"'hidden'.*key_file"):
            lake.connect(home, store, for_sql="SELECT * FROM hidden")
    finally:
        store.close()
