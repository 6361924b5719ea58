"""`workbench submit` handed to a running daemon (the quick path): the same jobs, messages and
exit codes as the full CLI, a client that imports no store, and no submission lost or queued
twice when the daemon stops while it holds one."""

from __future__ import annotations

import contextlib
import fcntl
import json
import marshal
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import imports_of, stop_daemon, workbench

from workbench.daemon.client import Client, ensure_daemon
from workbench.daemon.intake import MAX_FLAGS, Intake, read_request, same_view, well_formed
from workbench.daemon.link import INTAKE_VERSION, lock_holder
from workbench.db.store import JobRequest, Store
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
    result, imported = imports_of("submit", "--paused", "--", "true")
    assert result.returncode == 0, result.stderr
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
            print("taken", flush=True)
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
        assert fake.stdout is not None and fake.stdout.readline().strip() == "taken"
    finally:
        assert fake.stdin is not None
        fake.stdin.close()
        fake.wait(10)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["name"] == "taken" and shown["state"] == "paused"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to send from another uid")
def test_submissions_from_another_uid_are_refused(daemon: Home) -> None:
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
    os.chmod(daemon.intake_socket, 0o600)  # a socket others can write is refused by clients
    client = Client(daemon, start_daemon=False)
    try:
        assert client.store.list_jobs() == []
    finally:
        client.close()


def test_the_marshalled_protocol_round_trips_bytes_that_are_not_utf8() -> None:
    request = {"argv": ["caf\udce9"], "env": {"K": "\udcff"}, "n": 1, "ok": True}
    assert marshal.loads(marshal.dumps(request)) == request


# ---- attacks: what once stopped, stalled or fooled the quick path -------------------------


def _datagram(home: Home, request: object, raw: bytes | None = None) -> object:
    """Send one datagram to the intake socket as a client would; the daemon's answer (None if
    none came within 10 s)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("")
        sock.sendto(marshal.dumps(request) if raw is None else raw, str(home.intake_socket))
        sock.settimeout(10)
        try:
            data = b""
            while not data:  # an empty datagram asks whether we are still there
                data = sock.recv(1 << 20)
            return marshal.loads(data)
        except TimeoutError:
            return None


def _request(home: Home, argv: list[str], **fields: object) -> dict[str, object]:
    return {
        "v": INTAKE_VERSION,
        "token": os.urandom(8).hex(),
        "daemon": lock_holder(home),
        "argv": argv,
        "cwd": str(home.root),
        "env": {"PATH": os.environ["PATH"]},
        **fields,
    }


def _jobs(home: Home) -> list[int]:
    store = Store.open(home.state_db)
    try:
        return [j.id for j in store.list_jobs()]
    finally:
        store.close()


@pytest.mark.parametrize(
    "words", [["--hel", "--", "true"], ["--he", "--paused", "echo", "x"], ["--bogus", "--", "true"]]
)
def test_help_abbreviations_and_unknown_flags_answer_as_the_full_cli(
    daemon: Home, words: list[str]
) -> None:
    # `--hel` is argparse's abbreviation of --help: the daemon printed help and exited.
    # An unknown flag is reported by the top-level parser, with its usage, not submit's.
    pid = lock_holder(daemon)
    quick = workbench("submit", *words)
    full = workbench("submit", *words, env=FULL)
    assert (quick.returncode, quick.stdout, quick.stderr) == (
        full.returncode,
        full.stdout,
        full.stderr,
    )
    reply = _datagram(daemon, _request(daemon, words))
    assert isinstance(reply, dict) and "fallback" in reply
    assert lock_holder(daemon) == pid
    assert _jobs(daemon) == []


def test_messages_match_for_undecodable_bytes_and_the_clients_width(daemon: Home) -> None:
    for words, env in [
        (["--paused", "--cwd", "caf\udce9", "--", "true"], {}),  # stderr: backslashreplace
        (["--gpus"], {"COLUMNS": "200"}),  # usage wrapped at the client's width, not 80
        (["--gpus"], {"COLUMNS": "30"}),
    ]:
        quick = workbench("submit", *words, env=env)
        full = workbench("submit", *words, env={**env, **FULL})
        assert quick.returncode == full.returncode == 2
        assert quick.stderr == full.stderr, words


def test_garbage_datagrams_neither_stop_nor_stall_the_daemon(daemon: Home) -> None:
    pid = lock_holder(daemon)
    good = _request(daemon, ["--paused", "--", "true"])
    garbage: list[object] = [
        {**good, "cwd": "/tmp\0x"},
        {**good, "cwd": str(daemon.state_db)},  # a file
        {**good, "cwd": "relative"},
        {**good, "argv": "--paused"},
        {**good, "argv": [1, 2]},
        {**good, "env": [("A", "b")]},
        {**good, "columns": "80"},
        {**good, "v": 1},
        {**good, "daemon": -1},
        {**good, "argv": ["--paused", "--spec", "/dev/zero"]},
    ]
    for request in garbage:
        reply = _datagram(daemon, request)
        assert isinstance(reply, dict) and "fallback" in reply, request
    # Words and an environment exec cannot carry are refused as any submit's (exit 2).
    for request in (
        {**good, "argv": ["--paused", "--", "tr\0ue"]},
        {**good, "env": {"A": "b\0c"}},
        {**good, "env": {"A=B": "c"}},
    ):
        reply = _datagram(daemon, request)
        assert isinstance(reply, dict) and reply.get("exit") == 2, request
    raws = [
        os.urandom(64),
        marshal.dumps([good]),
        marshal.dumps({"token": 5}),
        b"\xfb" + b"\xda\x05token" + b"(" + struct.pack("<i", 2**31 - 1),  # asks for 16 GiB
        b"\xfb" + b"\xda\x05token" + b"[" * 5000,
        marshal.dumps(good)[:-3],
    ]
    for raw in raws:
        assert _datagram(daemon, None, raw) == {"token": None, "fallback": "unreadable submission"}
    assert not well_formed(b"(" + struct.pack("<i", 2**31 - 1))
    assert not well_formed(b"[" + struct.pack("<i", 100) + b"N" * 99)
    assert well_formed(marshal.dumps(good))
    assert _jobs(daemon) == []
    shown = workbench("submit", "--paused", "--", "true")
    assert shown.returncode == 0 and _audited_by_daemon(daemon, int(shown.stdout))
    assert lock_holder(daemon) == pid
    assert "Traceback" not in daemon.daemon_log.read_text()


def test_a_submission_with_many_flags_is_parsed_by_the_client(daemon: Home) -> None:
    # argparse's cost grows with the square of the flags: 30,000 held the loop for 30 s.
    words = ["--paused"] * (MAX_FLAGS + 1) + ["--", "true"]
    reply = _datagram(daemon, _request(daemon, words))
    assert isinstance(reply, dict) and "fallback" in reply
    result = workbench("submit", *words)
    assert result.returncode == 0 and not _audited_by_daemon(daemon, int(result.stdout))


def test_an_answer_too_long_for_a_datagram_still_reaches_the_client(daemon: Home) -> None:
    # The message quotes the argument with each control byte as \x01: four times longer
    # than the request, past the datagram limit. The client used to wait for ever.
    long = "\x01" * 45_000
    quick = workbench("submit", "--after", long, "--", "true", timeout=60)
    full = workbench("submit", "--after", long, "--", "true", env=FULL)
    assert quick.returncode == full.returncode == 2
    assert quick.stderr == full.stderr
    # A queued job whose --json is too long: the client prints it itself.
    quick = workbench("submit", "--json", "--paused", "--", "echo", long, timeout=60)
    assert quick.returncode == 0, quick.stderr
    shown = json.loads(quick.stdout)
    assert shown["argv"] == ["echo", long] and _audited_by_daemon(daemon, shown["id"])


def test_specs_from_streams_fifos_and_nested_too_deep(daemon: Home, tmp_path: Path) -> None:
    text = 'kind = "command"\nargv = ["echo", "piped"]\n'
    for env in ({}, FULL):
        result = workbench("submit", "--paused", "--spec", "/dev/stdin", input=text, env=env)
        assert result.returncode == 0, result.stderr
        assert _shown(int(result.stdout))["argv"] == ["echo", "piped"]
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 3000 + "]" * 3000 + "\n")
    quick = workbench("submit", "--spec", str(deep))
    full = workbench("submit", "--spec", str(deep), env=FULL)
    assert (quick.returncode, quick.stderr) == (full.returncode, full.stderr)
    assert quick.returncode == 2 and "nested too deeply" in quick.stderr
    fifo = tmp_path / "job.toml"
    os.mkfifo(fifo)
    waiting = subprocess.Popen(
        [sys.executable, "-m", "workbench", "submit", "--paused", "--spec", str(fifo)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # The daemon must not block reading the FIFO: it keeps taking submissions.
        reply = _datagram(daemon, _request(daemon, ["--paused", "--", "true"]))
        assert isinstance(reply, dict) and reply.get("exit") == 0, reply
        with open(fifo, "w") as writer:
            writer.write(text)
        out, _ = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
        waiting.wait()
    assert waiting.returncode == 0 and _shown(int(out))["argv"] == ["echo", "piped"]


def test_a_request_sent_to_another_daemon_is_handed_back(daemon: Home) -> None:
    """A client found one daemon holding the lock, which was replaced before its request
    arrived: that client looks in the store once the first is gone and submits by itself, so
    the new daemon must not queue it too."""
    pid = lock_holder(daemon)
    assert pid is not None
    reply = _datagram(daemon, _request(daemon, ["--paused", "--", "true"], daemon=pid + 1))
    assert isinstance(reply, dict) and "fallback" in reply
    assert _jobs(daemon) == []


def test_a_daemon_that_never_answers_is_given_up_on(home: Home) -> None:
    """A stand-in daemon takes the datagram and never answers (a lost answer, a stalled loop):
    the client used to wait for ever. It gives up, finds no job, and submits by itself."""
    Store.open(home.state_db).close()
    fake = _fake_daemon(home, queue_it=False, stay=True)
    try:
        result = workbench("submit", "--paused", "--", "true", timeout=60)
    finally:
        assert fake.stdin is not None
        fake.stdin.close()
        fake.wait(10)
    assert result.returncode == 0, result.stderr
    assert _jobs(home) == [int(result.stdout)]
    assert not _audited_by_daemon(home, int(result.stdout))


def test_a_stalled_daemon_neither_holds_up_a_submit_nor_queues_it_twice(daemon: Home) -> None:
    pid = lock_holder(daemon)
    assert pid is not None and pid > 0
    os.kill(pid, signal.SIGSTOP)
    try:
        result = workbench("submit", "--paused", "--", "true", timeout=60)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert result.returncode == 0, result.stderr
    # Woken, the daemon reads the request and finds its client gone: it queues nothing.
    later = workbench("submit", "--paused", "--", "true")
    assert later.returncode == 0 and _audited_by_daemon(daemon, int(later.stdout))
    assert _jobs(daemon) == [int(result.stdout), int(later.stdout)]


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
def test_a_client_interrupted_while_the_store_is_busy_leaves_no_job(
    daemon: Home, how: signal.Signals
) -> None:
    """As with the full CLI, a submit stopped (Ctrl-C, kill) before its job was committed leaves
    none: the daemon, which waited for the store's lock, used to queue it all the same."""
    busy = sqlite3.connect(daemon.state_db, timeout=0, isolation_level=None)
    busy.execute("BEGIN IMMEDIATE")
    try:
        client = subprocess.Popen(
            [sys.executable, "-m", "workbench", "submit", "--paused", "--", "true"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # handed over (or not yet: either way it must leave no job)
        client.send_signal(how)
        _, err = client.communicate(timeout=30)
    finally:
        busy.execute("ROLLBACK")
        busy.close()
    assert client.returncode == (130 if how == signal.SIGINT else -signal.SIGKILL), err
    assert b"Traceback" not in err
    after = workbench("submit", "--paused", "--", "true")  # taken after the one before
    assert after.returncode == 0 and _audited_by_daemon(daemon, int(after.stdout))
    assert _jobs(daemon) == [int(after.stdout)]


def test_a_damaged_or_replaced_store_gets_the_full_clis_answer(home: Home) -> None:
    """A client checks state.db before it writes and refuses a damaged one (exit 3); the
    daemon, whose connection was opened while the file was sound, used to queue into it."""
    store = Store.open(home.state_db)
    store.submit_many(
        [
            JobRequest(f"j{i}", "command", {"argv": ["true"]}, "/", {"X": "y" * 200}, paused=True)
            for i in range(300)
        ]
    )
    store.close()
    ensure_daemon(home)
    conn = sqlite3.connect(home.state_db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    leaves = conn.execute(
        "SELECT pageno FROM dbstat WHERE name='jobs' AND pagetype='leaf' ORDER BY pageno"
    ).fetchall()
    conn.close()
    good = home.state_db.read_bytes()
    page = leaves[len(leaves) // 2][0] - 1
    with open(home.state_db, "r+b") as damaged:
        damaged.seek(page * 4096 + 100)
        damaged.write(b"\x55" * 300)
    quick = workbench("submit", "--paused", "--", "true")
    full = workbench("submit", "--paused", "--", "true", env=FULL)
    assert quick.returncode == full.returncode == 3, quick.stdout
    assert quick.stderr == full.stderr and "state file damaged" in quick.stderr
    # Replaced (a backup moved over it): the job goes into the new file, as without a daemon.
    (home.root / "restored.db").write_bytes(good)
    os.replace(home.root / "restored.db", home.state_db)
    quick = workbench("submit", "--paused", "--name", "into-the-new-file", "--", "true")
    assert quick.returncode == 0, quick.stderr
    assert Store.open(home.state_db).get(int(quick.stdout)).name == "into-the-new-file"


def test_a_client_with_other_groups_or_mounts_submits_by_itself(daemon: Home) -> None:
    """Added to a group since the daemon started (or in `sg`), a user reads files the daemon
    cannot: the daemon read the spec as itself and answered 'cannot read'."""
    assert same_view(os.getpid(), os.getgid())
    assert not same_view(os.getpid(), os.getgid() + 1)
    if os.getuid() != 0:  # only root can start such clients; the check above still holds
        return
    result = subprocess.run(
        [sys.executable, "-m", "workbench", "submit", "--paused", "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.setgroups([4321]),
    )
    assert result.returncode == 0, result.stderr
    assert not _audited_by_daemon(daemon, int(result.stdout))
    # In another mount namespace (a container sharing the home), paths name other files.
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "--mount", "true"]).returncode != 0:
        return  # namespaces not allowed here
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            sys.executable,
            "-m",
            "workbench",
            "submit",
            "--paused",
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert not _audited_by_daemon(daemon, int(result.stdout))


def test_every_request_a_client_marshals_passes_the_datagram_check() -> None:
    """The check made before `marshal.loads` must never refuse a real request (its client
    would get a fallback for every submit): strings of every kind, shared and interned."""
    shared = "shared value"
    words = ["", "a" * 300, "é" * 300, "caf\udce9", "\U0001f600" * 70, sys.intern("--paused")]
    for n in range(len(words) + 1):
        request = {
            "v": INTAKE_VERSION,
            "token": os.urandom(16).hex(),
            "daemon": 2**22,
            "argv": [*words[:n], "--", *words[n:]],
            "cwd": "/" + words[n % len(words)],
            "env": {f"K{i}": shared if i % 2 else word for i, word in enumerate(words)},
            "columns": 80,
        }
        data = marshal.dumps(request)
        assert well_formed(data) and read_request(data) == request


@pytest.mark.slow
def test_concurrent_submitters_through_daemon_kills_lose_nothing_and_double_nothing(
    daemon: Home,
) -> None:
    """8 submitters, 200 submits, the daemon killed (SIGKILL, then SIGTERM) while they run:
    every submit says exit 0 and the id of the one job queued under its name."""
    import threading

    workers, each = 8, 25
    printed: dict[str, tuple[int, str, str]] = {}
    lock = threading.Lock()

    def submitter(w: int) -> None:
        for j in range(each):
            name = f"w{w}-{j}"
            result = workbench("submit", "--paused", "--name", name, "--", "true")
            with lock:
                printed[name] = (result.returncode, result.stdout.strip(), result.stderr)

    threads = [threading.Thread(target=submitter, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for share, how in ((0.3, signal.SIGKILL), (0.6, signal.SIGTERM)):
        while len(printed) < workers * each * share and any(t.is_alive() for t in threads):
            time.sleep(0.01)
        pid = lock_holder(daemon)
        if pid and pid > 0:
            os.kill(pid, how)
    for thread in threads:
        thread.join(timeout=600)
    assert all(code == 0 for code, _, _ in printed.values()), [r for r in printed.values() if r[0]][
        :3
    ]
    store = Store.open(daemon.state_db)
    try:
        jobs = store.list_jobs()
    finally:
        store.close()
    by_name: dict[str, list[int]] = {}
    for job in jobs:
        by_name.setdefault(job.name, []).append(job.id)
    assert len(jobs) == workers * each
    assert {name: [int(out)] for name, (_, out, _) in printed.items()} == by_name


def test_a_home_others_can_read_gets_the_full_clis_warning(daemon: Home) -> None:
    os.chmod(daemon.root, 0o755)
    for words in (["--paused", "--", "true"], ["--after", "99999", "--", "true"], ["--gpus", "x"]):
        quick = workbench("submit", *words)
        full = workbench("submit", *words, env=FULL)
        assert quick.returncode == full.returncode, words
        assert quick.stderr == full.stderr, words
    assert "is readable by other users" in workbench("submit", "--paused", "--", "true").stderr


def test_a_flood_of_submissions_is_taken_a_batch_per_wake_up(home: Home) -> None:
    """Answering every pending datagram in one call let a stream of them (many clients, or one
    sending garbage) keep the daemon's loop from ever scheduling."""
    store = Store.open(home.state_db)
    intake = Intake(home, store, log=lambda line: None)
    assert intake.bind() is not None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.bind("")
            for _ in range(8):  # the kernel queues 10 datagrams at most by default
                sender.sendto(b"garbage", str(home.intake_socket))
            assert intake.take_all(limit=3) == 0
            answers = 0
            sender.settimeout(1)
            with contextlib.suppress(TimeoutError):
                while True:
                    sender.recv(1 << 16)
                    answers += 1
            assert answers == 3
            intake.take_all()
            assert intake.sock is not None
            with pytest.raises(BlockingIOError):  # all answered: none left pending
                intake.sock.recv(1 << 16, socket.MSG_DONTWAIT)
    finally:
        intake.close()
        store.close()


@pytest.mark.parametrize("content", [b"\xff", "²".encode(), b""])
def test_a_lock_held_without_a_readable_pid_is_no_traceback(home: Home, content: bytes) -> None:
    """The lock file held with other bytes than a pid (being written, or damaged): reading it
    raised UnicodeDecodeError or ValueError ('²' is a digit to str.isdigit) through submit."""
    fd = os.open(home.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, content)
        assert lock_holder(home) == -1
    finally:
        os.close(fd)
    assert lock_holder(home) is None
