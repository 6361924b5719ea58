"""Shared fixtures: a temporary WORKBENCH_HOME per test, and a daemon that is always stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from workbench.daemon.client import Client
from workbench.daemon.link import lock_holder
from workbench.db.store import Job
from workbench.paths import Home

ROOT = Path(__file__).resolve().parent.parent
_SESSION_HOME: Path | None = None


SESSION_HOME_VARIABLE = "WORKBENCH_TEST_SESSION_HOME"  # the home pytest_configure made


def pytest_configure(config: pytest.Config) -> None:
    """Give the whole session a throwaway WORKBENCH_HOME, so a test that picks no home of its own
    (a pipeline check reading the catalog, a CLI call) never reads or writes the real user's
    home. Fixtures that make a home set the variable over it; monkeypatch restores this one."""
    import tempfile

    global _SESSION_HOME
    inherited = os.environ.get("WORKBENCH_HOME")
    # A pytest-xdist worker inherits the controller's environment: it gets a home of its own.
    if inherited is None or inherited == os.environ.get(SESSION_HOME_VARIABLE):
        _SESSION_HOME = Path(tempfile.mkdtemp(prefix="wb-session-", dir="/tmp"))
        os.environ["WORKBENCH_HOME"] = os.environ[SESSION_HOME_VARIABLE] = str(_SESSION_HOME)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `pytest -n N --dist loadgroup`, the tests of a file run in one worker, in the file's
    order (as without workers: its module fixtures are built once), unless the file names a group
    shared with other files (`pytestmark = pytest.mark.xdist_group(...)`: a machine part)."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop a daemon a test may have started in the session's home, and remove that home."""
    if _SESSION_HOME is not None:
        os.environ.pop("WORKBENCH_HOME", None)
        os.environ.pop(SESSION_HOME_VARIABLE, None)
        remove_home(Home(_SESSION_HOME))


def stop_daemon(home: Home) -> None:
    """Stop the daemon of `home`, if any, and wait until it is gone."""
    pid = lock_holder(home)
    if not pid or pid < 0:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and lock_holder(home):
        time.sleep(0.02)
    if lock_holder(home):
        os.kill(pid, signal.SIGKILL)


def kill_leftover_jobs(home: Home) -> None:
    """Kill process groups of jobs a test left running (never leak processes into the next test)."""
    if not home.state_db.exists():
        return
    from workbench.db.store import Store, StoreError

    try:
        store = Store.open(home.state_db)
    except StoreError:
        return
    try:
        from workbench.daemon.executors.containment import pids_with_token, signal_each

        for job in store.list_jobs(states=["starting", "running", "paused"]):
            if job.launch_token:
                signal_each(pids_with_token(job.launch_token), signal.SIGKILL)
            if job.pid:
                signal_each([job.pid], signal.SIGKILL)
    finally:
        store.close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    """A fresh WORKBENCH_HOME (short path: Unix socket paths are limited to 108 bytes)."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="wb-", dir="/tmp"))
    monkeypatch.setenv("WORKBENCH_HOME", str(root))
    monkeypatch.delenv("WORKBENCH_FAKE_NVML", raising=False)
    the_home = Home(root).ensure()
    yield the_home
    remove_home(the_home)


def remove_home(home: Home) -> None:
    """Undo a test's home: stop its daemon and leftover jobs, remove its cgroup scope and
    delete the folder (every fixture that makes a home ends with this)."""
    import shutil

    from workbench.daemon.executors.containment import home_scope, remove_scope

    stop_daemon(home)
    kill_leftover_jobs(home)
    remove_scope(home_scope(home.root))  # a daemon the test killed with SIGKILL left it
    shutil.rmtree(home.root, ignore_errors=True)


@pytest.fixture
def client(home: Home) -> Iterator[Client]:
    c = Client(home)
    yield c
    c.close()


def workbench(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as a subprocess (`python -m workbench ...`)."""
    return subprocess.run(
        [sys.executable, "-m", "workbench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        input=input,
    )


def imports_of(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `python -X importtime -m workbench ARGS`; the result and the modules it imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "workbench", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    return result, imported


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.02, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll until predicate() is truthy; fail the test with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_for_port(port: int, timeout: float = 10.0, what: str = "a server") -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:`port` (a server a test
    started); fail the test naming `what` after `timeout` seconds."""

    def accepts() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return False
        return True

    wait_for(accepts, timeout=timeout, interval=0.05, what=f"{what} on port {port}")


def remove_tree(path: Path, timeout: float = 20.0) -> None:
    """`shutil.rmtree(path)` as `rm -rf` does it to a folder a live process writes in: a file
    written between rmtree's listing and its rmdir fails it with "Directory not empty" (ENOTEMPTY),
    so it is tried again until one pass removes the whole folder; a folder already gone is fine.

    Raises AssertionError after `timeout` seconds of ENOTEMPTY.
    """
    import errno
    import shutil

    deadline = time.monotonic() + timeout
    while True:
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if error.errno != errno.ENOTEMPTY or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def wait_state(client: Client, job_id: int, states: set[str] | str, timeout: float = 20.0) -> Job:
    """Wait for a job to reach one of `states` (a running job: once its pid is recorded too)."""
    wanted = {states} if isinstance(states, str) else states

    def reached() -> Job | None:
        job = client.store.get(job_id)
        if job.state not in wanted or (job.state == "running" and job.pid is None):
            return None
        return job

    result: Job = wait_for(
        reached,
        timeout,
        what=f"job {job_id} to be {'/'.join(sorted(wanted))} (now {client.store.get(job_id).state})",
    )
    return result
