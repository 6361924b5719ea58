"""The stop file the daemon writes into a job's run folder (which the job owns)."""

from __future__ import annotations

import os
from pathlib import Path

from workbench.daemon.stopping import STOP_FILE, write_stop


def test_the_stop_file_is_never_written_through_a_planted_link(tmp_path: Path) -> None:
    """Before: a job that linked `.stop.<daemon pid>.tmp` to a file of its user's had the
    daemon write the stop reason into that file (truncating it)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    victim = tmp_path / "bashrc"
    victim.write_text("precious\n")
    (run_dir / f".{STOP_FILE}.{os.getpid()}.tmp").symlink_to(victim)
    write_stop(run_dir, "cancelled by   the user")
    assert victim.read_text() == "precious\n"
    stop = run_dir / STOP_FILE
    assert not stop.is_symlink() and stop.read_text() == "cancelled by the user\n"
