"""A daemon never recreates a home that is gone: removed under a running daemon, it exits; a
daemon that starts after its home was removed (a test's temporary home, deleted before the
daemon it started got going) exits instead of creating the home again."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import remove_tree, wait_for

from workbench.daemon.client import ensure_daemon
from workbench.paths import Home


def test_a_daemon_exits_when_its_home_is_removed(home: Home) -> None:
    pid = ensure_daemon(home)
    assert pid > 0
    remove_tree(home.root)  # the daemon may still write in it, as under `rm -rf`
    wait_for(lambda: not _alive(pid), timeout=20, what="the daemon to exit")
    assert not home.root.exists(), "the daemon created its removed home again"


def test_a_daemon_started_after_its_home_was_removed_does_not_create_it() -> None:
    root = Path(tempfile.mkdtemp(prefix="wb-gone-", dir="/tmp"))
    os.rmdir(root)
    done = subprocess.run(
        [sys.executable, "-m", "workbench", "daemon", "run"],
        env={**os.environ, "WORKBENCH_HOME": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        assert done.returncode == 3, done.stderr
        assert "does not exist" in done.stderr
        assert not root.exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped by its parent) counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
