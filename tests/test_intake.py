"""`workbench submit` handed to a running daemon (the quick path): the same jobs, messages and
exit codes as the full CLI, a client that imports no store, and no submission lost or queued
twice when the daemon stops while it holds one."""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import stop_daemon, workbench

from workbench.daemon.client import Client, ensure_daemon
from workbench.db.store import Store
from workbench.paths import Home

FULL = {"WORKBENCH_NO_INTAKE": "1"}  # the full CLI, for comparison
VOLATILE = {
    "id",
    "created_at",
    "started_at",
    "ended_at",
    "state",
    "reason",
    "exit_code",
    "pid",
    "paths",
    "audit",
    "events",
}


@pytest.fixture
def daemon(home: Home) -> Home:
    ensure_daemon(home)
    assert home.intake_socket.exists()
    return home


def _audited_by_daemon(home: Home, job_id: int) -> bool:
    store = Store.open(home.state_db)
    try:
        return any(
            e.action == "submit" and (e.detail or "").startswith("request ")
            for e in store.audit_log(job_id)
        )
    finally:
        store.close()


def _shown(job_id: int) -> dict[str, object]:
    result = workbench("show", str(job_id), "--json", "--env")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    shown["env"].pop("WORKBENCH_NO_INTAKE", None)
    return {k: v for k, v in shown.items() if k not in VOLATILE}


def test_the_daemon_queues_what_the_full_cli_would(daemon: Home, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "job.toml").write_text('kind = "command"\nargv = ["echo", "from spec"]\n')
    cases = [
        ["--name", "n", "--priority", "3", "--env", "A=1", "--paused", "--", "echo", "hi"],
        ["--cwd", "work", "--retries", "2", "--time-limit", "90s", "--paused", "--", "pwd"],
        ["--spec", "work/job.toml", "--paused", "--group", "g"],
        ["--paused", "--", "printf", "%s", "caf\udce9"],  # not UTF-8: kept byte-exact
    ]
    for words in cases:
        quick = subprocess.run(
            [sys.executable, "-m", "workbench", "submit", *words],
            capture_output=True,
            cwd=tmp_path,
            env=os.environ,
        )
        full = subprocess.run(
            [sys.executable, "-m", "workbench", "submit", *words],
            capture_output=True,
            cwd=tmp_path,
            env={**os.environ, **FULL},
        )
        assert quick.returncode == full.returncode == 0, (quick.stderr, full.stderr)
        quick_id, full_id = int(quick.stdout), int(full.stdout)
        assert _audited_by_daemon(daemon, quick_id)
        assert not _audited_by_daemon(daemon, full_id)
        assert _shown(quick_id) == _shown(full_id), words


@pytest.mark.parametrize(
    "words",
    [
        ["--gpus", "nan", "--", "true"],
        ["--cpus", "inf", "--", "true"],
        ["--mem", "99999999999999999999999TiB", "--", "true"],
        ["--priority", "99999999999999999999", "--", "true"],
        ["--cwd", "/nonexistent", "--", "true"],
        ["--after", "999999", "--", "true"],
        ["--after", "x", "--", "true"],
        ["--env", "NOEQUALS", "--", "true"],
        ["--spec", "missing.toml"],
        ["--spec", "x.toml", "--", "true"],
        ["--executor", "cloud", "--", "true"],
        [],
    ],
)
def test_bad_submissions_get_the_full_clis_message_and_exit_code(
    daemon: Home, words: list[str]
) -> None:
    quick = workbench("submit", *words)
    full = workbench("submit", *words, env=FULL)
    assert quick.returncode == full.returncode == 2, (quick.stderr, full.stderr)
    assert quick.stderr == full.stderr
    assert "Traceback" not in quick.stderr
    assert quick.stdout == full.stdout == ""


def test_json_and_wait_through_the_daemon(daemon: Home) -> None:
    shown = json.loads(workbench("submit", "--json", "--name", "j", "--", "true").stdout)
    assert shown["name"] == "j" and shown["state"] in ("queued", "starting", "running", "succeeded")
    assert _audited_by_daemon(daemon, shown["id"])
    ok = workbench("submit", "--wait", "--", "sh", "-c", "exit 0")
    failed = workbench("submit", "--wait", "--", "sh", "-c", "exit 3")
    assert (ok.returncode, failed.returncode) == (0, 1)
    assert "failed" in failed.stderr


def test_a_quick_submit_imports_no_store_parser_or_job_model(daemon: Home) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "workbench", "submit", "--paused", "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "workbench.cli.entry" in imported  # the measurement works
    heavy = {"workbench.cli.main", "workbench.db.store", "sqlite3", "argparse", "dataclasses"}
    assert not imported & heavy, imported & heavy
    assert _audited_by_daemon(daemon, int(result.stdout))


def test_help_slurm_and_a_large_environment_take_the_full_path(daemon: Home) -> None:
    helped = workbench("submit", "--help")
    assert helped.returncode == 0 and "--gpus" in helped.stdout
    slurm = workbench("submit", "--executor", "slurm", "--paused", "--", "true")
    full = workbench("submit", "--executor", "slurm", "--paused", "--", "true", env=FULL)
    assert (slurm.returncode, slurm.stderr) == (full.returncode, full.stderr)
    if slurm.returncode == 0:  # a Slurm cluster answered: the client queued it itself
        assert not _audited_by_daemon(daemon, int(slurm.stdout))
    big = workbench(
        "submit", "--paused", "--", "true", env={f"BIG{i}": "x" * 100_000 for i in range(3)}
    )
    assert big.returncode == 0, big.stderr
    assert not _audited_by_daemon(daemon, int(big.stdout))


def _fake_daemon(home: Home, queue_it: bool, stay: bool = False) -> subprocess.Popen[str]:
    """A stand-in daemon that holds the lock, takes one submission from the intake socket,
    queues it (or not) and stops without answering (or, with `stay`, never answers)."""
    script = textwrap.dedent(
        f"""
        import fcntl, marshal, os, socket, sys
        from workbench.db.store import JobRequest, Store
        from workbench.paths import Home
        home = Home.current()
        fd = os.open(home.lock, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, str(os.getpid()).encode())
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(home.intake_socket))
        print("ready", flush=True)
        request = marshal.loads(sock.recv(1 << 20))
        if {queue_it!r}:
            store = Store.open(home.state_db)
            req = JobRequest("taken", "command", {{"argv": ["true"]}}, "/", {{}}, argv=["true"],
                             paused=True)
            store.submit(req, request_token=request["token"])
        if {stay!r}:
            print("queued", flush=True)
            sys.stdin.read()  # holds the lock until the test closes stdin
        os.unlink(home.intake_socket)
        os._exit(0)  # stops without answering; the lock goes with it
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("queue_it", [True, False])
def test_a_daemon_that_stops_holding_a_submission_neither_loses_nor_doubles_it(
    home: Home, queue_it: bool
) -> None:
    Store.open(home.state_db).close()
    fake = _fake_daemon(home, queue_it)
    try:
        result = workbench("submit", "--paused", "--", "true")
    finally:
        fake.wait(10)
        stop_daemon(home)  # the client started a real one when it submitted by itself
    assert result.returncode == 0, result.stderr
    client = Client(home, start_daemon=False)
    try:
        jobs = client.store.list_jobs()
    finally:
        client.close()
    assert [j.id for j in jobs] == [int(result.stdout)]
    assert jobs[0].name == ("taken" if queue_it else "true")


def test_an_answer_that_never_comes_is_found_in_the_store(home: Home) -> None:
    Store.open(home.state_db).close()
    fake = _fake_daemon(home, queue_it=True, stay=True)
    try:
        result = workbench("submit", "--json", "--paused", "--", "true", timeout=60)
        assert fake.stdout is not None and fake.stdout.readline().strip() == "queued"
    finally:
        assert fake.stdin is not None
        fake.stdin.close()
        fake.wait(10)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["name"] == "taken" and shown["state"] == "paused"


def test_submissions_from_another_uid_are_refused(daemon: Home) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to send as another uid")
    script = textwrap.dedent(
        f"""
        import marshal, os, socket
        os.setuid(65534)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("")
        request = {{"v": 1, "token": "t", "argv": ["--", "true"], "cwd": "/", "env": {{}}}}
        try:
            sock.sendto(marshal.dumps(request), {str(daemon.intake_socket)!r})
        except PermissionError:
            print("refused by the socket's mode")
            raise SystemExit
        sock.settimeout(2)
        try:
            print(sock.recv(1 << 16))
        except TimeoutError:
            print("no answer")
        """
    )
    os.chmod(daemon.root, 0o755)  # let uid 65534 reach the socket file, which is 0600
    os.chmod(daemon.intake_socket, 0o666)  # and write to it: the daemon must still refuse
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.stdout.strip() == "no answer", out.stderr
    client = Client(daemon, start_daemon=False)
    try:
        assert client.store.list_jobs() == []
    finally:
        client.close()


def test_the_marshalled_protocol_round_trips_bytes_that_are_not_utf8() -> None:
    request = {"argv": ["caf\udce9"], "env": {"K": "\udcff"}, "n": 1, "ok": True}
    assert marshal.loads(marshal.dumps(request)) == request
