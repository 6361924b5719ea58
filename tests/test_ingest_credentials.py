"""Credentials a job needs (S3 keys and session token, PGPASSWORD, a password written in a
source URL) are never stored or shown: not in state.db (nor its WAL or backup), a run folder,
the daemon's log, the lineage, `show --json --env`, `ls --json`, `logs`, `datasets`, nor any
process's argv. They reach the job through the daemon's memory; a daemon killed while the job
is queued leaves it queued, waiting with a reason that names what is missing and how to give
it again (`workbench credentials ID`). Against moto's S3 server, a PostgreSQL server and an HTTP
server that asks for Basic authentication, all on loopback."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for, wait_for_port, workbench
from test_ingest_object_db import postgres, psql, s3  # noqa: F401 (fixtures)

from workbench.daemon.link import lock_holder
from workbench.paths import Home

SESSION_TOKEN = "wb-session-TOKEN-never-shown-4417"
BODY = b"id,code\n1,007\n2,010\n"
WAIT_CODES = ("--dataset", "codes", "--wait")


def secrets_of(env: dict[str, str]) -> list[str]:
    return [env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")]


def assert_nowhere(home: Home, secrets: list[str], job_ids: list[int]) -> None:
    """No secret in any file of the home (state.db and its WAL and backup, run folders, the
    daemon's log, the lake), in what the CLI shows of the jobs, nor in any process's argv."""
    found: list[str] = []
    for path in home.root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path}: {s}" for s in secrets if s.encode() in data]
    shown = [["ls", "--json", "--all"], ["datasets", "--json"]]
    for job_id in job_ids:
        shown += [["show", str(job_id), "--json", "--env"], ["show", str(job_id)]]
        shown += [["logs", str(job_id)]]
    for command in shown:
        result = workbench(*command)
        found += [f"{command}: {s}" for s in secrets if s in result.stdout + result.stderr]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            data = cmdline.read_bytes()
        except OSError:
            continue
        found += [f"{cmdline}: {s}" for s in secrets if s.encode() in data]
    assert not found, found


def kill_and_restart_daemon(home: Home) -> None:
    """`kill -9` the home's daemon, wait until it is gone, then undrain and start a new one from
    this shell (whatever credentials the test's own environment holds)."""
    daemon = lock_holder(home)
    assert daemon and daemon > 0
    os.kill(daemon, signal.SIGKILL)
    wait_for(lambda: not lock_holder(home), what="the daemon to be gone")
    assert workbench("daemon", "undrain").returncode == 0
    assert workbench("daemon", "start").returncode == 0


def test_s3_credentials_from_the_environment_reach_the_job_and_are_never_stored(
    home: Home,
    s3: tuple[dict[str, str], Any],  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    env, client = s3
    env = {**env, "AWS_SESSION_TOKEN": SESSION_TOKEN}  # moto takes any session token
    client.put_object(Bucket="lake-src", Key="codes.csv", Body=BODY)
    done = workbench("ingest", "s3://lake-src/codes.csv", "--dataset", "codes", "--wait", env=env)
    assert done.returncode == 0, done.stderr
    out = workbench("sql", "SELECT id, code FROM codes ORDER BY id", "--json")
    assert [json.loads(line) for line in out.stdout.splitlines()] == [
        {"id": 1, "code": "007"},
        {"id": 2, "code": "010"},
    ]
    shown = json.loads(workbench("show", "1", "--json", "--env").stdout)
    # The rest of the environment is the job's as captured (the server's address among it).
    assert shown["env"]["AWS_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"]
    assert "AWS_SECRET_ACCESS_KEY" not in shown["env"]
    # A spec file, which the running daemon's intake would take: the client hands them over.
    spec = tmp_path / "ingest.toml"
    spec.write_text('kind = "ingest"\nsource = ["s3://lake-src/codes.csv"]\ndataset = "again"\n')
    done = workbench("submit", "--spec", str(spec), "--wait", env=env)
    assert done.returncode == 0, done.stderr
    # A failure (no such bucket): the error names the URL, never a credential.
    failed = workbench("ingest", "s3://no-such-bucket/a.csv", "--dataset", "x", "--wait", env=env)
    assert failed.returncode != 0 and "s3://no-such-bucket/a.csv" in failed.stderr
    assert_nowhere(home, secrets_of(env), [1, 2, 3])


def test_a_daemon_killed_while_the_job_is_queued_leaves_it_waiting_for_its_credentials(
    home: Home,
    s3: tuple[dict[str, str], Any],  # noqa: F811 (the fixture)
) -> None:
    env, client = s3
    env = {**env, "AWS_SESSION_TOKEN": SESSION_TOKEN}
    client.put_object(Bucket="lake-src", Key="codes.csv", Body=BODY)
    assert workbench("daemon", "drain").returncode == 0  # the job stays queued
    queued = workbench("ingest", "s3://lake-src/codes.csv", "--dataset", "codes", env=env)
    assert queued.returncode == 0, queued.stderr
    job_id = int(queued.stdout)
    # A new daemon, from a shell without the credentials: the job waits, saying why.
    kill_and_restart_daemon(home)
    reason = ""

    def waiting() -> bool:
        nonlocal reason
        job = json.loads(workbench("show", str(job_id), "--json").stdout)
        reason = job["reason"] or ""
        assert job["state"] == "queued", job
        return "credentials" in reason

    wait_for(waiting, what="the job to say it waits for its credentials")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        assert name in reason, reason
    assert f"workbench credentials {job_id}" in reason, reason
    time.sleep(1.5)  # passes come and go: it is not started without them
    assert json.loads(workbench("show", str(job_id), "--json").stdout)["state"] == "queued"
    listed = workbench("ls")
    assert "credentials" in listed.stdout, listed.stdout
    # Given again from a shell that lacks them: refused, naming what is missing.
    lacking = workbench("credentials", str(job_id))
    assert lacking.returncode == 2
    assert "AWS_SECRET_ACCESS_KEY" in lacking.stderr and "Traceback" not in lacking.stderr
    given = workbench("credentials", str(job_id), env=env)
    assert given.returncode == 0, given.stderr
    assert workbench("wait", str(job_id), "--timeout", "120s").returncode == 0
    out = workbench("sql", "SELECT count(*) AS n FROM codes", "--json")
    assert json.loads(out.stdout) == {"n": 2}
    assert_nowhere(home, secrets_of(env), [job_id])


def test_a_client_still_waiting_gives_the_credentials_again_to_a_restarted_daemon(
    home: Home,
    s3: tuple[dict[str, str], Any],  # noqa: F811 (the fixture)
) -> None:
    env, client = s3
    client.put_object(Bucket="lake-src", Key="codes.csv", Body=BODY)
    assert workbench("daemon", "drain").returncode == 0
    waiting = subprocess.Popen(
        [sys.executable, "-m", "workbench", "ingest", "s3://lake-src/codes.csv", *WAIT_CODES],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: workbench("show", "1", "--json").returncode == 0, what="the job")
        kill_and_restart_daemon(home)  # from a shell without them
        out, err = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 0, err
    assert "dataset codes v1: 2 rows" in out
    assert_nowhere(home, [env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]], [1])


def test_a_password_in_a_postgresql_uri_or_pgpassword_is_never_stored_or_shown(
    home: Home,
    postgres: str,  # noqa: F811 (the fixture)
) -> None:
    psql(postgres, "CREATE TABLE t (id int, code text); INSERT INTO t VALUES (1, '007');")
    password = "pg-PASS-in-the-URI-5521"
    with_password = postgres.replace("wb@", f"wb:{password}@")
    done = workbench("ingest", with_password, "--table", "t", "--dataset", "t", "--wait")
    assert done.returncode == 0, done.stderr
    assert password not in done.stderr + done.stdout
    (source,) = json.loads(workbench("datasets", "t", "--json").stdout)[0]["sources"]
    assert source["database"] == postgres
    shown = json.loads(workbench("show", "1", "--json").stdout)
    assert shown["spec"]["source"] == [postgres]
    env_password = "pg-PASS-from-PGPASSWORD-8830"
    again = workbench(
        "ingest",
        postgres,
        "--query",
        "SELECT 2 AS id",
        "--dataset",
        "q",
        "--wait",
        env={"PGPASSWORD": env_password},
    )
    assert again.returncode == 0, again.stderr
    assert_nowhere(home, [password, env_password], [1, 2])
    assert "prefer PGPASSWORD" in done.stderr  # a password on a command line is seen by `ps`


def test_a_url_password_lost_with_the_daemon_is_asked_again_and_never_stored(
    home: Home,
    postgres: str,  # noqa: F811 (the fixture)
) -> None:
    psql(postgres, "CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
    password = "pg-PASS-asked-again-6604"
    assert workbench("daemon", "drain").returncode == 0
    uri = postgres.replace("wb@", f"wb:{password}@")
    assert workbench("ingest", uri, "--table", "t", "--dataset", "t").returncode == 0
    kill_and_restart_daemon(home)

    def reason() -> str:
        return str(json.loads(workbench("show", "1", "--json").stdout)["reason"] or "")

    wait_for(lambda: "credentials" in reason(), what="the job to wait for its password")
    assert f"the password of {postgres}" in reason()
    given = workbench("credentials", "1", input=password + "\n")
    assert given.returncode == 0, given.stderr
    assert workbench("wait", "1", "--timeout", "120s").returncode == 0
    assert_nowhere(home, [password], [1])


@pytest.fixture
def basic_auth_server(tmp_path: Path) -> Iterator[str]:
    """`http://127.0.0.1:PORT` serving BODY at /codes.csv only with `Authorization: Basic`
    for user `wb`, password `http-PASS-3390` (else 401)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    expected = "Basic " + base64.b64encode(b"wb:http-PASS-3390").decode()
    script = f"""
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get("Authorization") != {expected!r}:
            self.send_response(401); self.end_headers(); return
        self.send_response(200); self.send_header("Content-Length", "{len(BODY)}")
        self.end_headers(); self.wfile.write({BODY!r})
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
"""
    server = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, what="the HTTP server")
        yield f"http://127.0.0.1:{port}"
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


def test_a_password_in_an_http_url_authenticates_and_is_never_stored_or_shown(
    home: Home, basic_auth_server: str
) -> None:
    url = basic_auth_server.replace("http://", "http://wb:http-PASS-3390@") + "/codes.csv"
    done = workbench("ingest", url, "--dataset", "codes", "--wait")
    assert done.returncode == 0, done.stderr
    (source,) = json.loads(workbench("datasets", "codes", "--json").stdout)[0]["sources"]
    assert source["url"] == basic_auth_server.replace("http://", "http://wb@") + "/codes.csv"
    assert_nowhere(home, ["http-PASS-3390"], [1])


@pytest.mark.parametrize(
    ("kind", "spec", "env", "kept", "held"),
    [
        # A command job keeps its environment as captured (the user's program may read it).
        ("command", {}, {"AWS_SECRET_ACCESS_KEY": "s"}, {"AWS_SECRET_ACCESS_KEY": "s"}, None),
        # An ingest of a local file needs none: they are left out, nothing is held.
        ("ingest", {"source": ["a.csv"]}, {"AWS_SECRET_ACCESS_KEY": "s", "A": "1"}, {"A": "1"}, None),
        # An S3 source needs the S3 ones, a PostgreSQL one PGPASSWORD.
        ("ingest", {"source": ["s3://b/k"]}, {"AWS_ACCESS_KEY_ID": "i", "PGPASSWORD": "p"}, {}, ("AWS_ACCESS_KEY_ID",)),
        ("ingest", {"source": "postgresql://u@h/d"}, {"AWS_ACCESS_KEY_ID": "i", "PGPASSWORD": "p"}, {}, ("PGPASSWORD",)),
        # A profile is no secret: it stays, and nothing is held.
        ("ingest", {"source": ["s3://b/k"]}, {"AWS_PROFILE": "p"}, {"AWS_PROFILE": "p"}, None),
    ],
)  # fmt: skip
def test_which_credentials_are_held(
    kind: str,
    spec: dict[str, Any],
    env: dict[str, str],
    kept: dict[str, str],
    held: tuple[str, ...] | None,
) -> None:
    from workbench.jobmodel.secrets import hold_credentials

    new_spec, new_env, credentials = hold_credentials(kind, spec, env)
    assert new_spec == spec and new_env == kept
    assert (credentials.needed if credentials else None) == held


def test_s3_credentials_from_a_profile_keep_working_and_hold_nothing(
    home: Home,
    s3: tuple[dict[str, str], Any],  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    env, client = s3
    client.put_object(Bucket="lake-src", Key="codes.csv", Body=BODY)
    aws = tmp_path / "aws"
    aws.mkdir()
    (aws / "credentials").write_text(
        f"[wbprof]\naws_access_key_id = {env['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {env['AWS_SECRET_ACCESS_KEY']}\n"
    )
    profile_env = {
        "AWS_PROFILE": "wbprof",
        "AWS_SHARED_CREDENTIALS_FILE": str(aws / "credentials"),
        "AWS_CONFIG_FILE": str(aws / "config"),
        "AWS_ENDPOINT_URL": env["AWS_ENDPOINT_URL"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    done = workbench(
        "ingest", "s3://lake-src/codes.csv", "--dataset", "codes", "--wait", env=profile_env
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(workbench("show", "1", "--json", "--env").stdout)
    assert shown["env"]["AWS_PROFILE"] == "wbprof"
    # Nothing is held for it, so a daemon restart never leaves it waiting.
    held = workbench("credentials", "1")
    assert held.returncode == 2 and "no credentials held" in held.stderr, held.stderr


def test_a_command_job_keeps_its_environment_and_gets_secret_env_from_the_daemon_only(
    home: Home,
) -> None:
    import hashlib

    # Made here: a command job records the git diff of its folder (this file among it).
    token, key = f"cmd-TOKEN-{os.urandom(8).hex()}", f"cmd-KEY-{os.urandom(8).hex()}"
    digests = [hashlib.sha256(v.encode()).hexdigest() for v in (token, key)]
    script = 'printf %s "$MY_TOKEN" | sha256sum; printf %s "$AWS_SECRET_ACCESS_KEY" | sha256sum'
    env = {"MY_TOKEN": token, "AWS_SECRET_ACCESS_KEY": key}
    done = workbench(
        "submit", "--secret-env", "MY_TOKEN", "--wait", "--", "sh", "-c", script, env=env
    )
    assert done.returncode == 0, done.stderr
    log = workbench("logs", "1").stdout
    assert all(d in log for d in digests), log  # the job got both
    shown = json.loads(workbench("show", "1", "--json", "--env").stdout)
    assert "MY_TOKEN" not in shown["env"]
    assert shown["env"]["AWS_SECRET_ACCESS_KEY"] == "***"  # a command's env: kept, masked
    assert_nowhere(home, [token], [1])
    missing = workbench("submit", "--secret-env", "NOT_SET_ANYWHERE", "--", "true")
    assert missing.returncode == 2 and "NOT_SET_ANYWHERE" in missing.stderr, missing.stderr
