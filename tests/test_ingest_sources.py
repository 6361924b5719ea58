"""Data from where it lives: an http:// URL served by a local http.server the test starts (and
stops by pid), and a SQLite file (a table or a query), with the same guarantees as files
(encodings, strict types, rejects, nothing published on failure) and lineage naming the source."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for_port, workbench
from test_ingest import ingest, query

from workbench.catalog import lake
from workbench.daemon.client import Client
from workbench.paths import Home


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, folder) of a `python -m http.server` on a free loopback port."""
    folder = tmp_path / "www"
    folder.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, what="the HTTP server")
        yield f"http://127.0.0.1:{port}", folder
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


def test_csv_from_a_url_keeps_its_values_and_names_its_source(
    client: Client, home: Home, tmp_path: Path, served: tuple[str, Path]
) -> None:
    base, folder = served
    (folder / "crops.csv").write_bytes(b"name;code;n\nAutres c\xe9r\xe9ales;007;75\nBl\xe9;010;3\n")
    url = f"{base}/crops.csv"
    job = ingest(client, tmp_path, source=[url], dataset="crops")
    assert job.state == "succeeded", job.reason
    assert query(home, client, "SELECT name, code, n FROM crops ORDER BY n") == [
        ("Blé", "010", 3),
        ("Autres céréales", "007", 75),
    ]
    source = lake.version_info(client.store, "crops").sources[0]
    assert source["path"] == url and source["url"] == url
    assert len(source["sha256"]) == 64 and source["last_modified"]
    assert source["encoding"] == "cp1252"


def test_a_missing_url_fails_naming_it_and_publishes_nothing(
    client: Client, tmp_path: Path, served: tuple[str, Path]
) -> None:
    base, _ = served
    job = ingest(client, tmp_path, source=[f"{base}/nope.csv"], dataset="gone")
    assert job.state == "failed"
    assert f"{base}/nope.csv" in (job.reason or "") and "404" in (job.reason or "")
    assert not lake.versions(client.store, "gone")


def make_db(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (id INTEGER, big INTEGER, mixed, blob BLOB, ok TEXT)")
    con.executemany(
        "INSERT INTO t VALUES (?, ?, ?, ?, ?)",
        [
            (1, 9007199254740993, 7, b"\x00\xff", "yes"),
            (2, 9223372036854775807, "seven", None, "no"),
            (3, None, 2.5, b"x", None),
        ],
    )
    con.commit()
    con.close()


def test_sqlite_table_and_query_keep_every_value(
    client: Client, home: Home, tmp_path: Path
) -> None:
    make_db(tmp_path / "shop.db")
    job = ingest(client, tmp_path, source=["shop.db"], dataset="shop", table="t")
    assert job.state == "succeeded", job.reason
    rows = query(
        home, client, "SELECT id, CAST(big AS VARCHAR), mixed, blob, ok FROM shop ORDER BY id"
    )
    assert rows == [
        (1, "9007199254740993", "7", b"\x00\xff", "yes"),
        (2, "9223372036854775807", "seven", None, "no"),
        (3, None, "2.5", b"x", None),
    ]
    source = lake.version_info(client.store, "shop").sources[0]
    assert source["database"] == str(tmp_path / "shop.db") and source["table"] == "t"
    assert source["format"] == "sqlite" and source["ran_at"] > 0
    done = workbench(
        "ingest", str(tmp_path / "shop.db"), "--dataset", "q", "--query",
        "SELECT id, ok FROM t WHERE ok IS NOT NULL", "--wait",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert query(home, client, "SELECT * FROM q ORDER BY id") == [(1, "yes"), (2, "no")]
    assert lake.version_info(client.store, "q").sources[0]["query"].startswith("SELECT id, ok")


def test_sqlite_faults_name_the_database(client: Client, tmp_path: Path) -> None:
    make_db(tmp_path / "shop.db")
    job = ingest(client, tmp_path, source=["shop.db"], dataset="s", table="nope")
    assert job.state == "failed" and "no table 'nope'" in (job.reason or "")
    assert "its tables: t" in (job.reason or "")
    writes = ingest(client, tmp_path, source=["shop.db"], dataset="s", query="DELETE FROM t")
    assert writes.state == "failed" and "shop.db" in (writes.reason or "")
    con = sqlite3.connect(tmp_path / "shop.db")
    assert con.execute("SELECT count(*) FROM t").fetchone() == (3,)  # read-only: nothing gone
    con.close()
    refused = workbench("ingest", str(tmp_path / "shop.db"), "--dataset", "s")
    assert refused.returncode == 2 and "'table'" in refused.stderr


def test_csv_from_an_https_url_with_a_trusted_certificate(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real TLS server on loopback (a self-signed certificate made here with openssl, trusted
    through SSL_CERT_FILE, which Python's default context reads)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    folder = tmp_path / "www"
    folder.mkdir()
    (folder / "t.csv").write_text("id,code\n1,007\n2,18446744073709551615\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server_code = (
        "import http.server, ssl, functools, sys\n"
        "handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])\n"
        "server = http.server.HTTPServer(('127.0.0.1', int(sys.argv[2])), handler)\n"
        "context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
        "context.load_cert_chain(sys.argv[3], sys.argv[4])\n"
        "server.socket = context.wrap_socket(server.socket, server_side=True)\n"
        "server.serve_forever()\n"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", server_code, str(folder), str(port), str(cert), str(key)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, what="the HTTP server")
        url = f"https://127.0.0.1:{port}/t.csv"
        untrusted = workbench("ingest", url, "--dataset", "u", "--wait")
        assert untrusted.returncode == 1
        shown = workbench("show", untrusted.stdout.split()[0]).stdout
        assert url in shown and "CERTIFICATE" in shown.upper()
        env = {"SSL_CERT_FILE": str(cert)}
        workbench("daemon", "stop", env=env)
        done = workbench("ingest", url, "--dataset", "t", "--wait", env=env)
        assert done.returncode == 0, done.stderr
        out = workbench("sql", "SELECT code FROM t ORDER BY id", "--csv").stdout
        assert out.splitlines() == ["code", "007", "18446744073709551615"]
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
