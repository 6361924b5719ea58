"""Data from object storage and from a database server: `s3://bucket/key` against moto's S3
server and a PostgreSQL table or query against a PostgreSQL server, each on loopback, started
and stopped (by pid) by the test, with the same guarantees as a file (exact types, dedup by
content) and lineage naming the source (and for the database the query and when it ran);
credentials come from the environment and never reach a log, the lineage or `show --json`."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for_port, workbench

from workbench.paths import Home

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "wbtestaccesskey01",
    "AWS_SECRET_ACCESS_KEY": "wb-test-secret-NEVER-SHOWN-9931",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def s3(home: Home) -> Iterator[tuple[dict[str, str], Any]]:
    """(environment naming the server and credentials, a boto3 client) for moto's S3 server on
    a free loopback port."""
    pytest.importorskip("moto", reason="moto[server] is in the dev extra")
    import boto3

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=30, what="the S3 server")
        env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        client.create_bucket(Bucket="lake-src")
        yield env, client
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


def test_an_s3_object_ingests_exactly_with_its_lineage_and_no_credential_shown(
    home: Home, s3: tuple[dict[str, str], Any]
) -> None:
    env, client = s3
    body = "id,code,name\n1,007,Autres c\xe9r\xe9ales\n2,010,Bl\xe9\n3,x,bad\n".encode("cp1252")
    client.put_object(Bucket="lake-src", Key="crops/2026.csv", Body=body)
    url = "s3://lake-src/crops/2026.csv"
    done = workbench("ingest", url, "--dataset", "crops", "--type", "id=INTEGER", "--wait", env=env)
    assert done.returncode == 0, done.stderr
    out = workbench("sql", "SELECT id, code, name FROM crops ORDER BY id", "--json")
    assert [json.loads(line) for line in out.stdout.splitlines()] == [
        {"id": 1, "code": "007", "name": "Autres céréales"},
        {"id": 2, "code": "010", "name": "Blé"},
        {"id": 3, "code": "x", "name": "bad"},
    ]
    shown = json.loads(workbench("datasets", "crops", "--json").stdout)[0]
    (source,) = shown["sources"]
    assert source["path"] == url and source["bytes"] == len(body)
    assert source["endpoint"] == env["AWS_ENDPOINT_URL"] and source["encoding"] == "cp1252"
    # The same object again: no new version.
    again = workbench(
        "ingest", url, "--dataset", "crops", "--type", "id=INTEGER", "--wait", env=env
    )
    assert again.returncode == 0, again.stderr
    assert [v["version"] for v in json.loads(workbench("datasets", "crops", "--json").stdout)] == [
        1
    ]
    secret = env["AWS_SECRET_ACCESS_KEY"]
    for command in (["show", "1", "--json"], ["logs", "1"], ["datasets", "crops", "--json"]):
        result = workbench(*command)
        assert result.returncode == 0, (command, result.stderr)
        assert secret not in result.stdout


def test_a_missing_object_or_bucket_fails_naming_the_url(
    home: Home, s3: tuple[dict[str, str], Any]
) -> None:
    env, _ = s3
    for url in ("s3://lake-src/nope.csv", "s3://no-such-bucket/a.csv"):
        done = workbench("ingest", url, "--dataset", "gone", "--wait", env=env)
        assert done.returncode != 0
        shown = json.loads(workbench("show", "1" if "nope" in url else "2", "--json").stdout)
        assert url in shown["reason"] and "Traceback" not in shown["reason"], shown["reason"]
    assert not (home.lake / "gone").exists()


def pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@pytest.fixture
def postgres() -> Iterator[str]:
    """A PostgreSQL server of its own on a free loopback port (data in a temporary folder, trust auth
    for user `wb`), stopped by its pid; its URI. As root, it runs as the `postgres` user
    (PostgreSQL refuses root). Skipped with a reason where PostgreSQL is not installed, except
    under CI=1 (.ci/setup installs it), where that fails."""
    initdb, pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        if os.environ.get("CI") == "1":
            pytest.fail("PostgreSQL (initdb, pg_ctl) is not installed; .ci/setup installs it")
        pytest.skip("PostgreSQL (initdb, pg_ctl) is not installed: apt-get install postgresql")
    import tempfile

    # Its own folder in /tmp: pytest's tmp_path sits under a folder only root may enter.
    folder = Path(tempfile.mkdtemp(prefix="wb-pg-", dir="/tmp"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres user to run PostgreSQL as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = folder / "data"
    made = subprocess.run(
        [*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "wb", "-E", "UTF8"],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}"
    started = subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"],
        capture_output=True,
        text=True,
    )
    assert started.returncode == 0, started.stderr + (folder / "log").read_text()
    pid = int((data / "postmaster.pid").read_text().split()[0])
    try:
        yield f"postgresql://wb@127.0.0.1:{port}/postgres"
    finally:
        os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        shutil.rmtree(folder, ignore_errors=True)


def psql(uri: str, sql: str) -> None:
    import duckdb

    from workbench.catalog import extensions

    con = duckdb.connect()
    try:
        extensions.load(con, "postgres")
        con.execute(f"ATTACH '{uri}' AS pg (TYPE postgres)")
        con.execute("CALL postgres_execute('pg', ?)", [sql])
    finally:
        con.close()


def test_a_postgresql_table_and_query_ingest_exactly_with_the_query_and_its_time(
    home: Home, postgres: str, tmp_path: Path
) -> None:
    psql(
        postgres,
        "CREATE TABLE sales (id bigint, big numeric, amount numeric(10,2), name text,"
        " seen timestamptz, code text);"
        " INSERT INTO sales VALUES"
        " (9223372036854775807, 123456789012345678901234567890.123456789, 1.01, 'café',"
        "  '2026-04-29T14:38:00+02:00', '007'),"
        " (2, 0.1, 19.99, NULL, NULL, 'x');",
    )
    before = time.time()
    done = workbench(
        "ingest",
        postgres,
        "--table",
        "sales",
        "--dataset",
        "sales",
        "--wait",
        env={"TZ": "America/New_York"},
    )
    assert done.returncode == 0, done.stderr
    out = workbench(
        "sql",
        "SELECT id, big, CAST(amount AS VARCHAR) AS amount, name, epoch(seen) AS seen, code FROM sales ORDER BY id",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    assert [json.loads(line) for line in out.stdout.splitlines()] == [
        {"id": 2, "big": "0.1", "amount": "19.99", "name": None, "seen": None, "code": "x"},
        {
            "id": 9223372036854775807,
            "big": "123456789012345678901234567890.123456789",
            "amount": "1.01",
            "name": "café",
            "seen": 1777466280.0,
            "code": "007",
        },
    ]
    (source,) = json.loads(workbench("datasets", "sales", "--json").stdout)[0]["sources"]
    assert source["database"] == postgres and source["table"] == "sales"
    assert before <= source["ran_at"] <= time.time() and source["rows"] == 2
    # A query, and the same rows again: no new version.
    query = "SELECT id, code FROM sales WHERE id = 2"
    done = workbench("ingest", postgres, "--query", query, "--dataset", "q", "--wait")
    assert done.returncode == 0, done.stderr
    (source,) = json.loads(workbench("datasets", "q", "--json").stdout)[0]["sources"]
    assert source["query"] == query
    again = workbench("ingest", postgres, "--query", query, "--dataset", "q", "--wait")
    assert again.returncode == 0
    assert len(json.loads(workbench("datasets", "q", "--json").stdout)) == 1


def test_a_postgresql_query_that_writes_or_fails_is_refused_naming_the_database(
    home: Home, postgres: str
) -> None:
    psql(postgres, "CREATE TABLE t (a int); INSERT INTO t VALUES (1);")
    for query in ("DELETE FROM t RETURNING a", "SELECT * FROM missing_table"):
        done = workbench("ingest", postgres, "--query", query, "--dataset", "w", "--wait")
        assert done.returncode != 0
    jobs = json.loads(workbench("ls", "--json").stdout)
    for job in jobs:
        assert postgres in job["reason"] and "Traceback" not in job["reason"], job["reason"]
    check = workbench(
        "ingest", postgres, "--query", "SELECT count(*) AS n FROM t", "--dataset", "n", "--wait"
    )
    assert check.returncode == 0, check.stderr
    out = workbench("sql", "SELECT n FROM n", "--json")
    assert json.loads(out.stdout) == {"n": 1}
    assert not (home.lake / "w").exists()
