"""The real `workbench` in a real terminal (tmux) at 80x24 and 160x48: a job submitted from the
CLI appears with its reason column on screen, and is cancelled with keys (after the confirmation
a running job asks for); the screen is read back with capture-pane."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for, workbench

from workbench.paths import Home

# A tmux server of our own, not the user's, with its socket in a folder this module removes
# (`-L NAME` left /tmp/tmux-UID/NAME behind after every run).
SOCKET_DIR = Path(tempfile.mkdtemp(prefix="wb-tmux-", dir="/tmp"))
SOCKET = SOCKET_DIR / f"wb-smoke-{os.getpid()}"


@pytest.fixture(scope="module", autouse=True)
def _socket_removed() -> Iterator[None]:
    yield
    tmux("kill-server", check=False)
    shutil.rmtree(SOCKET_DIR, ignore_errors=True)


def tmux(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["tmux", "-S", str(SOCKET), *args], capture_output=True, text=True, check=check
    )


def capture(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session).stdout


def keys(session: str, *names: str) -> None:
    tmux("send-keys", "-t", session, *names)


@pytest.mark.slow
@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_tui_in_tmux_submit_see_cancel(home: Home, size: tuple[int, int]) -> None:
    assert shutil.which("tmux"), "tmux is needed (installed by .ci/setup)"
    session = f"wb-smoke-{int(time.time() * 1000)}"
    command = f"env -u COLUMNS -u LINES WORKBENCH_HOME={home.root} {sys.executable} -m workbench"
    width, height = size
    tmux("new-session", "-d", "-s", session, "-x", str(width), "-y", str(height), command)
    try:
        wait_for(
            lambda: "Dashboard" in capture(session),
            timeout=30,
            what=f"the TUI to draw: {capture(session)!r}",
        )
        keys(session, "j")
        wait_for(
            lambda: "no jobs yet" in capture(session) or " reason" in capture(session),
            what="the queue",
        )
        blocker = workbench("submit", "--name", "held", "--paused", "--", "true").stdout.strip()
        waiting = workbench(
            "submit", "--name", "waits", "--after", blocker, "--", "true"
        ).stdout.strip()
        job_id = workbench("submit", "--name", "smoke-sleeper", "--", "sleep", "300").stdout.strip()
        wait_for(
            lambda: "smoke-sleeper" in capture(session) and "running" in capture(session),
            what="the job to appear running",
        )
        screen = capture(session)
        assert all(len(line) <= width for line in screen.splitlines())
        waits_line = next(line for line in screen.splitlines() if "waits" in line)
        assert f"waiting for dependency {blocker}" in waits_line, waits_line  # the reason shows
        keys(session, "c")  # the cursor is on the newest job: the running sleeper
        wait_for(lambda: "Cancel running job" in capture(session), what="the confirmation")
        keys(session, "y")
        wait_for(lambda: "cancelled" in capture(session), what="the job cancelled by key")
        assert waiting in capture(session)
        shown = workbench("show", job_id, "--json").stdout
        assert '"state": "cancelled"' in shown
        keys(session, "q")
        wait_for(
            lambda: tmux("has-session", "-t", session, check=False).returncode != 0,
            what="the TUI to quit",
        )
    finally:
        tmux("kill-server", check=False)


@pytest.mark.slow
def test_tui_in_tmux_key_burst_in_one_write(home: Home) -> None:
    """Screen keys and a `q` typed in one write (as over SSH): every screen is opened while the
    app quits; it ends with status 0 and no traceback on the screen."""
    assert shutil.which("tmux"), "tmux is needed (installed by .ci/setup)"
    session = f"wb-burst-{int(time.time() * 1000)}"
    # The app's exit status is written by the pane's shell: tmux 3.3a marks a pane dead when
    # its terminal closes and sometimes leaves its process unreaped, with no status, for good.
    status_file = home.root / "tui-exit-status"
    command = (
        f"env -u COLUMNS -u LINES WORKBENCH_HOME={home.root} {sys.executable} -m workbench;"
        f" echo $? > {status_file}"
    )
    tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24", command)
    try:
        tmux("set-option", "-t", session, "remain-on-exit", "on")
        wait_for(lambda: "Dashboard" in capture(session), timeout=30, what="the TUI to draw")
        tmux("send-keys", "-t", session, "-l", "SELECT 'qTjrmd' AS x FROM t")

        def exited() -> str:
            return status_file.read_text().strip() if status_file.exists() else ""

        status = wait_for(exited, timeout=30, what="the TUI to quit")
        screen = capture(session)
        assert status == "0", screen
        assert "Traceback" not in screen and "NoMatches" not in screen, screen
    finally:
        tmux("kill-server", check=False)
