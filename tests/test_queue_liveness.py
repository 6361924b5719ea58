"""Every waiting state has a wake-up: a launcher killed while jobs are submitted is restarted
and the jobs it dropped start without anything else waking the daemon, and a launch that never
began spends none of the job's retries. A real daemon, a real kill -9."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import psutil
from conftest import wait_for, wait_state

from workbench.daemon.client import Client
from workbench.daemon.link import lock_holder
from workbench.paths import Home
from workbench.queue.requests import build_request


def _launchers(home: Home) -> list[psutil.Process]:
    """The daemon's live launcher processes. A killed one the daemon has not reaped yet is a
    zombie whose command line cannot be read: it is not counted (reading it raised in the
    killer thread, which then stopped killing)."""
    daemon = psutil.Process(lock_holder(home) or 0)
    found = []
    for child in daemon.children():
        try:
            if "workbench.daemon.executors.launcher" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:  # gone, or a zombie (psutil.ZombieProcess)
            continue
    return found


def _jobs(client: Client, tmp_path: Path, count: int) -> list[int]:
    table = {"kind": "command", "argv": ["true"]}
    return client.submit_many([build_request(table, tmp_path, "test") for _ in range(count)])


def test_a_launcher_killed_while_jobs_are_submitted_is_restarted_and_nothing_stalls(
    client: Client, home: Home, tmp_path: Path
) -> None:
    """kill -9 of the launcher with launches in flight: the jobs went back to the queue ("the
    job launcher stopped") and stayed there until something else woke the daemon; each such
    launch also spent a retry (`attempt 3 of 1`)."""
    wait_state(client, _jobs(client, tmp_path, 1)[0], "succeeded")
    stop = threading.Event()
    kills = []

    def killer() -> None:
        while not stop.is_set():
            for launcher in _launchers(home):
                try:
                    launcher.send_signal(signal.SIGKILL)
                    kills.append(launcher.pid)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.005)

    thread = threading.Thread(target=killer)
    thread.start()
    ids: list[int] = []
    try:
        for _ in range(10):
            ids += _jobs(client, tmp_path, 8)
            client.nudge()
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join()
    assert kills, "the launcher was never seen to kill"
    # Nothing else is written from here: only the daemon's own wake-ups can start the jobs.
    wait_for(
        lambda: all(client.store.get(j).state == "succeeded" for j in ids),
        timeout=60,
        what=f"the {len(ids)} jobs to run after {len(kills)} launcher kills",
    )
    jobs = [client.store.get(j) for j in ids]
    assert {j.attempt for j in jobs} == {1}, "a launch that never began spent a retry"
    for job in jobs:
        log = (home.run_dir(job.id) / "log").read_text(errors="replace")
        assert "attempt" not in log
    assert _launchers(home), "the launcher was not started again"


def test_a_launch_requeue_keeps_the_attempt_and_a_retry_backoff_wakes_the_daemon(
    client: Client, home: Home, tmp_path: Path
) -> None:
    """A job that fails once with one retry left backs off (`not_before`); the daemon must wake
    when the back-off ends, with nothing written meanwhile, and run attempt 2 of 2."""
    marker = tmp_path / "ran-once"
    script = f"test -e {marker} || {{ touch {marker}; exit 1; }}"
    table = {"kind": "command", "argv": ["sh", "-c", script], "retries": 1}
    job = client.submit(build_request(table, tmp_path, "test"))
    done = wait_state(client, job, "succeeded", timeout=30)
    assert done.attempt == 2
