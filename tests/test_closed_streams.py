"""A CLI started with a standard stream closed (`<&-`, `>&-`, as cron or a careless wrapper
does) behaves as with /dev/null there: a clear message and its exit code, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import workbench

from workbench.paths import Home


def _run(redirect: str, *args: str) -> subprocess.CompletedProcess[str]:
    words = " ".join(args)
    return subprocess.run(
        ["bash", "-c", f'exec "$0" -m workbench {words} {redirect}', sys.executable],
        stdout=None if redirect == ">&-" else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


def test_bulk_submit_from_a_closed_stdin_says_it_is_empty(home: Home) -> None:
    """Before: AttributeError ('NoneType' object has no attribute 'read') and a traceback."""
    done = _run("<&-", "submit", "--bulk", "-")
    assert done.returncode == 2, done.stderr
    assert "stdin: no command in it" in done.stderr
    assert "Traceback" not in done.stderr


def test_no_command_from_a_closed_stdin_explains_the_tui_needs_a_terminal(home: Home) -> None:
    done = _run("<&-")
    assert "Traceback" not in done.stderr
    assert "needs a terminal" in done.stderr


def test_ls_with_a_closed_stdout_exits_cleanly(home: Home) -> None:
    assert workbench("submit", "--", "true").returncode == 0
    done = _run(">&-", "ls")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    workbench("daemon", "stop")
