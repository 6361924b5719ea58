"""The daemon under faults, end to end with real processes: escaped processes and cancel, jobs that
end with their main process, a killed wrapper, a daemon killed between fork and commit, a full
disk, a missing working directory, wake-ups from other users."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import stop_daemon, wait_for, wait_state, workbench

from workbench.daemon.client import Client, ensure_daemon
from workbench.daemon.executors import containment as cg
from workbench.daemon.link import lock_holder
from workbench.daemon.supervisor import DEBUG_LAUNCH_DELAY_ENV
from workbench.db.store import Store
from workbench.jobmodel.states import Event, JobState
from workbench.paths import Home
from workbench.queue.requests import build_request

MODES = ["subreaper"] + (["cgroup"] if cg.cgroup_base("cgroup", "probe")[0] is not None else [])

ESCAPES = (
    "import os, subprocess, time\n"
    "subprocess.Popen(['bash', '-c', 'setsid sleep 1000 & sleep 1000'])\n"
    "subprocess.Popen(['sleep', '1000'], process_group=0)\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        time.sleep(1000)\n"
    "    os._exit(0)\n"
    "print('started', flush=True)\n"
    "time.sleep(1000)\n"
)


def configure(home: Home, **values: str) -> None:
    lines = ["[daemon]", 'kill_grace = "1s"'] + [f'{k} = "{v}"' for k, v in values.items()]
    home.config.write_text("\n".join(lines) + "\n")


def submit(client: Client, argv: list[str], cwd: Path | None = None, **extra: object) -> int:
    table: dict[str, object] = {"kind": "command", "argv": argv, **extra}
    return client.submit(build_request(table, cwd or Path.cwd(), "test"))


def token_pids(client: Client, job_id: int) -> list[int]:
    token = client.store.get(job_id).launch_token
    assert token
    return cg.pids_with_token(token)


@pytest.mark.parametrize("mode", MODES)
def test_cancel_stops_every_process_the_job_started(client: Client, home: Home, mode: str) -> None:
    """`bash -c 'setsid sleep 1000 & sleep 1000'`, a setpgid child and a double-forked daemon
    all used to survive cancel."""
    configure(home, containment=mode)
    job_id = submit(client, [sys.executable, "-c", ESCAPES])
    wait_state(client, job_id, "running")
    wait_for(lambda: len(token_pids(client, job_id)) >= 6, what="every process of the job")
    assert client.control(job_id, "cancel") == "cancelling"
    wait_state(client, job_id, "cancelled")
    assert token_pids(client, job_id) == []


@pytest.mark.parametrize("mode", MODES)
def test_submit_wait_returns_when_the_main_process_exits(home: Home, mode: str) -> None:
    """`submit --wait -- sh -c 'sleep 25 & echo done'` used to return after 25 s; the leftover
    sleep must not outlive the job either."""
    configure(home, containment=mode)
    done = workbench("submit", "--wait", "--", "sh", "-c", "sleep 25 & echo done", timeout=15)
    assert done.returncode == 0, done.stderr
    job_id = int(done.stdout.split()[0])
    client = Client(home)
    try:
        job = client.store.get(job_id)
        assert job.state == "succeeded"
        assert "1 leftover process stopped" in (job.reason or "")
        assert token_pids(client, job_id) == []
        assert (home.run_dir(job_id) / "log").read_text() == "done\n"
    finally:
        client.close()


def test_keep_leftovers_opts_out(client: Client, home: Home) -> None:
    configure(home)
    job_id = submit(client, ["sh", "-c", "sleep 30 & echo done"], keep_leftovers=True)
    job = wait_state(client, job_id, "succeeded")
    assert "1 leftover process left running" in (job.reason or "")
    survivors = token_pids(client, job_id)
    assert len(survivors) == 1
    os.kill(survivors[0], signal.SIGKILL)


@pytest.mark.parametrize("mode", MODES)
def test_killed_wrapper_stops_the_job_and_retry_runs_one_copy(
    client: Client, home: Home, mode: str
) -> None:
    """kill -9 of a job's wrapper used to leave its processes running untracked; cancel then
    refused and retry started a second copy."""
    configure(home, containment=mode)
    job_id = submit(client, [sys.executable, "-c", ESCAPES])
    job = wait_state(client, job_id, "running")
    wait_for(lambda: len(token_pids(client, job_id)) >= 6, what="every process of the job")
    first_token = job.launch_token
    assert job.pid is not None
    os.kill(job.pid, signal.SIGKILL)
    failed = wait_state(client, job_id, "failed")
    assert (failed.reason or "").startswith("lost: its wrapper")
    assert "without recording how the job ended" in (failed.reason or "")
    assert first_token and cg.pids_with_token(first_token) == []
    assert client.control(job_id, "retry") == "queued"
    wait_state(client, job_id, "running")
    wait_for(lambda: len(token_pids(client, job_id)) >= 6, what="the retried job's processes")
    assert cg.pids_with_token(first_token) == []  # one copy only
    client.control(job_id, "cancel")
    wait_state(client, job_id, "cancelled")


def test_daemon_killed_between_fork_and_pid_commit_runs_the_job_once(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon used to run such a job a second time after a restart. A debug setting holds
    the daemon between the fork and the commit of the pid; the test kills it there."""
    configure(home)
    counter = tmp_path / "runs"
    monkeypatch.setenv(DEBUG_LAUNCH_DELAY_ENV, "60")
    client = Client(home)
    try:
        job_id = submit(client, ["sh", "-c", f"echo run >> {counter}; sleep 2"])
        wait_for(lambda: (home.run_dir(job_id) / "wrapper.json").exists(), what="the fork")
        assert client.store.get(job_id).state == JobState.STARTING
        daemon_pid = lock_holder(home)
        assert daemon_pid and daemon_pid > 0
        os.kill(daemon_pid, signal.SIGKILL)
        wait_for(lambda: not lock_holder(home), what="the daemon to be gone")
        monkeypatch.delenv(DEBUG_LAUNCH_DELAY_ENV)
        ensure_daemon(home)
        job = wait_state(client, job_id, "succeeded")
        assert counter.read_text() == "run\n"
        events = client.store.events(job_id)
        assert any("adopted" in (e.reason or "") for e in events)
        assert job.attempt == 1
    finally:
        client.close()


def test_starting_job_whose_wrapper_never_began_is_queued_again_and_runs_once(
    home: Home, tmp_path: Path
) -> None:
    """A daemon that died after marking a job `starting` but before forking: the next one
    finds no wrapper with the token and queues it again."""
    configure(home)
    counter = tmp_path / "runs"
    client = Client(home, start_daemon=False)
    try:
        job_id = submit(client, ["sh", "-c", f"echo run >> {counter}"])
        client.store.transition(
            job_id, Event.START, "starting", only_from=[JobState.QUEUED], launch_token="f" * 32
        )
        ensure_daemon(home)
        wait_state(client, job_id, "succeeded")
        assert counter.read_text() == "run\n"
        reasons = [e.reason or "" for e in client.store.events(job_id)]
        assert any("before its wrapper started" in r for r in reasons)
    finally:
        client.close()


def test_deleted_working_directory_fails_the_job_naming_it(client: Client, home: Home) -> None:
    """A captured working directory deleted before the job starts: the job used to run inside
    WORKBENCH_HOME."""
    configure(home)
    workdir = Path(home.root.parent / f"{home.root.name}-work")
    workdir.mkdir()
    client.store.set_draining(True)
    job_id = submit(client, ["touch", "ran-here"], cwd=workdir)
    workdir.rmdir()
    client.store.set_draining(False)
    client.nudge()
    job = wait_state(client, job_id, "failed")
    assert str(workdir) in (job.reason or "")
    assert not (home.root / "ran-here").exists()


def _tmpfs(path: Path, size: str) -> bool:
    done = subprocess.run(
        # mode 0700: a tmpfs root is 1777 by default, and a home others can write is refused
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
    )
    return done.returncode == 0


def _fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError:
        pass
    finally:
        os.close(fd)


@pytest.mark.slow
def test_full_disk_keeps_the_daemon_up_and_records_the_outcome_once_space_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a full disk the daemon used to exit within a second (its error handler wrote to the
    full disk) and a job's outcome was lost (the settle write failed after the job was dropped
    from tracking). WORKBENCH_HOME is a small tmpfs here where one can be mounted; without one,
    the daemon's file size limit (RLIMIT_FSIZE) stands in for the full disk."""
    root = Path(f"/tmp/wb-full-{os.getpid()}")
    root.mkdir()
    mounted = _tmpfs(root, "16m")
    monkeypatch.setenv("WORKBENCH_HOME", str(root))
    try:  # a failure here must not leave the mount behind
        home = Home(root).ensure()
        configure(home, sample_interval="0.2s")
        client = Client(home)
    except BaseException:
        if mounted:
            subprocess.run(["umount", "-l", str(root)], check=False)
        subprocess.run(["rm", "-rf", str(root)], check=False)
        raise
    gate = tmp_path / "go"
    filler = root / "filler"
    try:
        job_id = submit(
            client, ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done; echo bye; exit 3"]
        )
        wait_state(client, job_id, "running")
        daemon_pid = lock_holder(home)
        assert daemon_pid and daemon_pid > 0
        os.kill(daemon_pid, signal.SIGSTOP)  # let the job end unseen, then fill the disk
        gate.write_text("go")
        wait_for(lambda: (home.run_dir(job_id) / "exit.json").exists(), what="the job's end")
        side = Store.open(home.state_db)
        side.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every next write needs space
        side.close()
        import resource

        if mounted:
            _fill(filler)
        else:
            soft, hard = resource.prlimit(daemon_pid, resource.RLIMIT_FSIZE)
            resource.prlimit(daemon_pid, resource.RLIMIT_FSIZE, (0, hard))
        os.kill(daemon_pid, signal.SIGCONT)
        time.sleep(3)  # the daemon meets the full disk: settle, telemetry and its log all fail
        assert lock_holder(home) == daemon_pid  # still up
        reader = Store.open(home.state_db, check=False)
        assert reader.get(job_id).state == "running"  # not settled, not lost: still tracked
        reader.close()
        if mounted:
            filler.unlink()
        else:
            resource.prlimit(daemon_pid, resource.RLIMIT_FSIZE, (soft, hard))
        job = wait_state(client, job_id, "failed")
        assert job.exit_code == 3
        assert job.reason == "exited with code 3"
        assert lock_holder(home) == daemon_pid
    finally:
        client.close()
        try:
            filler.unlink()
        except FileNotFoundError:
            pass
        stop_daemon(home)
        if mounted:
            subprocess.run(["umount", "-l", str(root)], check=False)
        subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_job_whose_output_fills_the_disk_is_settled_and_prune_frees_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WORKBENCH_HOME on a 2 MB tmpfs and a job printing 300,000 lines: its log filled the disk,
    so the wrapper could never write exit.json and the job showed running forever; `prune`
    (like every writing command) then failed for want of space, and the log never said that
    output was dropped."""
    root = Path(f"/tmp/wb-fill-{os.getpid()}")
    root.mkdir()
    assert _tmpfs(root, "2m"), "mount -t tmpfs failed"
    monkeypatch.setenv("WORKBENCH_HOME", str(root))
    home = Home(root).ensure()
    configure(home)
    client = Client(home)
    filler = root / "filler"
    try:
        script = "for i in range(300000): print(f'line {i:07d} ' + 'x' * 30)\n"
        job_id = submit(client, [sys.executable, "-c", script])
        job = wait_state(client, job_id, "succeeded")
        assert job.exit_code == 0
        log = (home.run_dir(job_id) / "log").read_bytes()
        last = log.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode()
        assert "bytes of output dropped: the disk holding the log was full" in last, last
        assert not (home.run_dir(job_id) / "log.reserve").exists()
        _fill(filler)  # whatever room the settle left: the disk is full now
        time.sleep(1.1)
        pruned = workbench("prune", "--older-than", "1s", "--json")
        assert pruned.returncode == 0, pruned.stderr
        assert job_id in json.loads(pruned.stdout)["removed"]
        assert not home.run_dir(job_id).exists()
        shown = workbench("show", str(job_id))
        assert shown.returncode == 2 and "Traceback" not in shown.stderr
    finally:
        client.close()
        stop_daemon(home)
        subprocess.run(["umount", "-l", str(root)], check=False)
        subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to send from another uid")
def test_wake_ups_from_other_users_are_refused(client: Client, home: Home) -> None:
    """SO_PASSCRED on the daemon's socket: a datagram from another uid does not wake it."""
    configure(home)
    ensure_daemon(home)
    os.chmod(home.root, 0o755)  # as if the home and socket were opened up by mistake
    os.chmod(home.socket, 0o666)
    child = os.fork()
    if child == 0:
        code = 1
        try:
            import socket

            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"w", str(home.socket))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    wait_for(
        lambda: "refused a wake-up from uid 65534" in home.daemon_log.read_text(),
        what="the refusal in daemon.log",
    )


def test_progress_writes_do_not_wake_the_scheduler(client: Client, home: Home) -> None:
    """Every commit used to wake a full scheduling pass: a job's progress and metrics writes
    made the daemon re-plan the whole queue. Now only submits, exits, intents and freed
    resources do."""
    configure(home)
    script = (
        "import os\n"
        "from workbench.db.store import Store\n"
        "s = Store.open(os.environ['WORKBENCH_HOME'] + '/state.db', check=False)\n"
        "job = int(os.environ['WORKBENCH_JOB_ID'])\n"
        "import time\n"
        "for i in range(60):\n"
        "    s.set_progress(job, i / 60, f'step {i}')\n"
        "    s.add_metrics(job, i, {'loss': 1.0 / (i + 1)})\n"
        "    time.sleep(0.1)\n"
    )
    job_id = submit(client, [sys.executable, "-c", script])
    wait_state(client, job_id, "succeeded")
    stop_daemon(home)
    line = [x for x in home.daemon_log.read_text().splitlines() if "stopping:" in x][-1]
    passes = int(line.split("stopping: ")[1].split()[0])
    # 120 commits over 6 s (the daemon used to plan again at each 1 s wake that saw one):
    # start-up, the submit, the start, the end.
    assert passes <= 5, line


def test_a_pass_reads_the_head_of_the_queue_not_the_held_jobs(home: Home) -> None:
    """One pass used to read (and parse) every active job; the daemon reads the queue's head
    by an index in scheduling order (every store has it: migration 15), without environments."""
    from workbench.db import scheduling
    from workbench.db.store import JobRequest

    store = Store.open(home.state_db)
    try:
        held = [
            JobRequest(f"h{i}", "command", {"argv": ["true"]}, "/", {}, argv=["true"], paused=True)
            for i in range(3000)
        ]
        store.submit_many(held)
        waiting = [
            JobRequest(f"q{i}", "command", {"argv": ["true"]}, "/", {}, argv=["true"], priority=i)
            for i in range(3)
        ]
        ids = store.submit_many(waiting)
        head = scheduling.queue_head(store, None, 128)
        assert [j.id for j in head] == list(reversed(ids))  # priority first
        assert scheduling.queue_head(store, (head[0].priority, head[0].id), 1)[0].id == ids[1]
        plan = " ".join(
            str(row[-1])
            for row in store.conn.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE state='queued'"
                " ORDER BY priority DESC, id LIMIT 128"
            )
        )
        assert "jobs_queue_order" in plan and "TEMP B-TREE" not in plan, plan
    finally:
        store.close()


@pytest.mark.skipif("cgroup" not in MODES, reason="needs a delegated cgroup v2 hierarchy")
def test_a_daemon_killed_with_sigkill_leaves_its_cgroups_for_remove_scope(
    client: Client, home: Home
) -> None:
    """A daemon's normal exit removes its home's folder of job cgroups; one killed with SIGKILL
    cannot, and where its home is then deleted (every test home) no later daemon does: the
    folders piled up by the thousand. `remove_scope` (the `home` fixture calls it) takes the
    empty job cgroups and the folder away."""
    configure(home, containment="cgroup")
    job_id = submit(client, ["sleep", "60"])
    wait_state(client, job_id, "running")
    base, _ = cg.cgroup_base("cgroup", cg.home_scope(home.root))
    assert base is not None and any(p.is_dir() for p in base.iterdir())
    daemon_pid = lock_holder(home)
    assert daemon_pid and daemon_pid > 0
    os.kill(daemon_pid, signal.SIGKILL)
    wait_for(lambda: not lock_holder(home), what="the daemon to be gone")
    jobs = [p for p in base.iterdir() if p.is_dir()]
    for job_cgroup in jobs:
        assert cg.cgroup_kill(job_cgroup)
    wait_for(lambda: not any(cg.cgroup_pids(j) for j in jobs), what="the job's processes to go")
    assert base.is_dir()  # left behind: nobody removed it
    cg.remove_scope(cg.home_scope(home.root))
    assert not base.exists()


def test_a_client_starts_its_own_daemon_when_the_one_being_started_exits_unready(
    home: Home,
) -> None:
    """The lock held with no pid written (another client's daemon starting), then freed with
    no daemon ready (that one exited): the waiting client used to wait out its whole timeout
    without starting one, and fail ("did not become ready within 20s"). It now starts one."""
    import fcntl
    import threading

    configure(home)
    home.ensure()
    fd = os.open(home.lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held, empty: lock_holder says -1, "being started"
    assert lock_holder(home) == -1
    threading.Timer(1.0, lambda: (fcntl.flock(fd, fcntl.LOCK_UN), os.close(fd))).start()
    began = time.monotonic()
    try:
        pid = ensure_daemon(home, timeout_s=15.0)
        assert pid > 0 and pid == lock_holder(home)
        assert time.monotonic() - began < 15.0
    finally:
        stop_daemon(home)


def test_a_daemon_that_exits_unready_is_reported_with_its_log_at_any_time(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon that dies after the client's first timeout passed was reported as "did not
    become ready" with no reason. Now its exit status and the end of its log are given,
    whenever it exits. A `python` that sleeps past the timeout, then fails, stands in."""
    from workbench.daemon import client as client_module

    slow = tmp_path / "python"
    slow.write_text(
        "#!/bin/sh\nsleep 2\necho 'workbench daemon: the store is damaged' >&2\nexit 3\n"
    )
    slow.chmod(0o755)
    monkeypatch.setattr(client_module.sys, "executable", str(slow))
    with pytest.raises(client_module.DaemonUnavailable) as raised:
        ensure_daemon(home, timeout_s=0.5)
    message = str(raised.value)
    assert "could not start (exit status 3)" in message, message
    assert "the store is damaged" in message, message
