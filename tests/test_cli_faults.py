"""The CLI under QA's second round of bad input: TOML that is not UTF-8, a WORKBENCH_HOME that
cannot be one, private state files in a shared home, runaway retries, a batch killed by
SIGTERM, damage outside the queue tables, progress wording, and the TUI without a terminal."""

from __future__ import annotations

import io
import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import stop_daemon, wait_for, workbench

from workbench.db import scheduling
from workbench.db.store import Event, JobRequest, JobState, Store
from workbench.paths import Home

NOT_UTF8 = b"\xff\xfe[pipeline]\n"


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr


# ---- 1. TOML files that are not UTF-8 ----------------------------------------------------


@pytest.mark.parametrize("where", ["batch", "spec", "config"])
def test_toml_that_is_not_utf8_is_refused_naming_the_file(
    home: Home, tmp_path: Path, where: str
) -> None:
    path = home.config if where == "config" else tmp_path / "p.toml"
    path.write_bytes(NOT_UTF8)
    args = {
        "batch": ["--batch", str(path)],
        "spec": ["submit", "--spec", str(path)],
        "config": ["submit", "--", "true"],
    }[where]
    result = workbench(*args)
    _no_traceback(result)
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr and "UTF-8" in result.stderr


def test_every_user_toml_goes_through_one_reader(home: Home) -> None:
    """The lake's settings read the same config.toml: the same clear error, not a decode error."""
    from workbench.catalog.lake import settings
    from workbench.userfiles import UserFileError

    home.config.write_bytes(NOT_UTF8)
    with pytest.raises(UserFileError, match="not UTF-8"):
        settings(home)


# ---- 2. a WORKBENCH_HOME that cannot be one ----------------------------------------------


def test_a_bad_workbench_home_is_named_with_exit_3(tmp_path: Path) -> None:
    a_file = tmp_path / "f"
    a_file.touch()
    homes = [str(a_file), str(a_file / "sub")]
    if Path("/proc/1").is_dir():
        homes.append("/proc/1")
    for root in homes:
        result = workbench("ls", env={"WORKBENCH_HOME": root})
        _no_traceback(result)
        assert result.returncode == 3, (root, result.stderr)
        assert f"WORKBENCH_HOME {root}" in result.stderr


def test_an_empty_workbench_home_means_the_default(tmp_path: Path) -> None:
    env = {"WORKBENCH_HOME": "", "HOME": str(tmp_path), "XDG_DATA_HOME": ""}
    result = subprocess.run(
        [sys.executable, "-m", "workbench", "ls"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    default = tmp_path / ".local" / "share" / "workbench"
    assert (default / "state.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".local"]  # nothing made in the cwd


def test_an_oserror_about_another_path_is_not_hidden(home: Home) -> None:
    from workbench.cli.main import _home_fault

    assert _home_fault(PermissionError(13, "Permission denied", "/etc/elsewhere")) is None
    assert _home_fault(ValueError("a bug")) is None
    inside = PermissionError(13, "Permission denied", str(home.runs))
    assert str(home.runs) in (_home_fault(inside) or "")


# ---- 3. private state files in a shared home ---------------------------------------------


def test_a_home_others_can_read_gets_only_private_files_and_jobs_keep_the_users_umask(
    tmp_path: Path,
) -> None:
    """(A home others can write is refused: tests/test_home_trust.py.)"""
    root = Path(tempfile.mkdtemp(prefix="wb-", dir="/tmp"))
    os.chmod(root, 0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {"WORKBENCH_HOME": str(root)}
    previous = os.umask(0o022)
    try:
        result = workbench(
            "submit", "--wait", "--cwd", str(work), "--env", "TOKEN=s3cret", "--",
            "sh", "-c", "echo hi > out.txt; mkdir made",
            env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert workbench("logs", "1", env=env).returncode == 0
        assert workbench("ls", env=env).returncode == 0
        wait_for(lambda: (root / "state.db.bak").exists(), what="the backup")
    finally:
        os.umask(previous)
        stop_daemon(Home(root))
    try:
        assert stat.S_IMODE(root.stat().st_mode) == 0o755  # the folder keeps its mode
        created = [p for p in root.rglob("*")]
        assert any(p.name == "exit.json" for p in created)
        leaked = [
            f"{p.relative_to(root)} {stat.S_IMODE(p.lstat().st_mode):o}"
            for p in created
            if p.lstat().st_mode & 0o077
        ]
        assert leaked == []
        # The job's own files follow the submitter's umask, not the workbench's.
        assert stat.S_IMODE((work / "out.txt").stat().st_mode) == 0o644
        assert stat.S_IMODE((work / "made").stat().st_mode) == 0o755
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_the_state_backup_is_private_whatever_the_umask(home: Home) -> None:
    store = Store.open(home.state_db)
    previous = os.umask(0o022)
    try:
        store.backup_to(home.root / "state.db.bak")
    finally:
        os.umask(previous)
        store.close()
    assert stat.S_IMODE((home.root / "state.db.bak").stat().st_mode) == 0o600


# ---- 4. retries: capped, and backed off --------------------------------------------------


def test_runaway_retries_are_refused_naming_the_key(home: Home, tmp_path: Path) -> None:
    result = workbench("submit", "--retries", "9223372036854775807", "--", "false")
    _no_traceback(result)
    assert result.returncode == 2 and "'retries'" in result.stderr and "100" in result.stderr
    spec = tmp_path / "s.toml"
    spec.write_text('kind = "command"\nargv = ["false"]\nretries = 101\n')
    result = workbench("submit", "--spec", str(spec))
    assert result.returncode == 2 and "'retries'" in result.stderr
    assert workbench("submit", "--paused", "--retries", "100", "--", "false").returncode == 0


def _fail_once(store: Store, job_id: int) -> None:
    store.transition(job_id, Event.START, "starting")
    store.transition(job_id, Event.LAUNCHED, "started")
    store.fail_and_requeue(job_id, "exited with code 1", "automatic retry")


def test_automatic_retries_back_off_in_the_store_and_the_scheduler(home: Home) -> None:
    store = Store.open(home.state_db)
    (job_id,) = store.submit_many(
        [JobRequest("f", "command", {"argv": ["false"]}, "/", {}, retries=8)]
    )
    delays = []
    for attempt in range(1, 9):
        before = time.time()
        _fail_once(store, job_id)
        job = store.get(job_id)
        assert job.state == JobState.QUEUED
        not_before = store.conn.execute(
            "SELECT not_before FROM jobs WHERE id=?", (job_id,)
        ).fetchone()[0]
        delays.append(round(not_before - before))
        assert job.reason is not None
        assert job.reason.startswith(f"retrying in {delays[-1]}s (attempt {attempt + 1} of 9)"), (
            job.reason
        )
        # Backing off: not a candidate yet, so no pass can start it early.
        assert [j.id for j in scheduling.queue_head(store, None, 10)] == []
        # When the back-off ends the daemon is told to look again, once.
        assert not scheduling.retry_due(store, not_before - 0.5)
        assert scheduling.retry_due(store, not_before + 0.5)
        assert not scheduling.retry_due(store, not_before + 0.6)
        store.conn.execute("UPDATE jobs SET not_before=? WHERE id=?", (time.time() - 1, job_id))
        assert [j.id for j in scheduling.queue_head(store, None, 10)] == [job_id]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    # A retry by hand runs at once.
    store.conn.execute("UPDATE jobs SET not_before=? WHERE id=?", (time.time() + 99, job_id))
    store.transition(job_id, Event.START, "starting")
    store.transition(job_id, Event.LAUNCHED, "started")
    store.transition(job_id, Event.EXIT_FAILED, "exited with code 1")
    store.request(job_id, "retry")
    assert [j.id for j in scheduling.queue_head(store, None, 10)] == [job_id]
    store.close()


def test_the_daemon_waits_out_each_back_off(home: Home) -> None:
    result = workbench("submit", "--wait", "--retries", "2", "--", "false", timeout=120)
    assert result.returncode == 1, result.stderr
    store = Store.open(home.state_db)
    starts = [
        t
        for (t,) in store.conn.execute(
            "SELECT t FROM job_events WHERE job_id=1 AND state=? ORDER BY id",
            (JobState.STARTING,),
        )
    ]
    store.close()
    assert len(starts) == 3
    # Lower bounds only (the back-off is a "not before"): 1 s, then 2 s.
    assert starts[1] - starts[0] >= 1.0 and starts[2] - starts[1] >= 2.0


# ---- 6. damage outside the queue's own tables --------------------------------------------


def test_damage_in_sqlite_sequence_is_refused_by_every_client(home: Home) -> None:
    store = Store.open(home.state_db)
    store.submit_many([JobRequest("j", "command", {"argv": ["true"]}, "/", {}, paused=True)])
    store.close()
    conn = sqlite3.connect(home.state_db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (root_page,) = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name='sqlite_sequence'"
    ).fetchone()
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(home.state_db.read_bytes())
    offset = (root_page - 1) * page_size
    data[offset : offset + 64] = b"\x55" * 64
    home.state_db.write_bytes(bytes(data))
    before = home.state_db.read_bytes()
    for args in (["ls"], ["show", "1"], ["submit", "--", "true"]):
        result = workbench(*args)
        _no_traceback(result)
        assert result.returncode == 3, (args, result.stdout, result.stderr)
        assert "state file damaged" in result.stderr
    assert home.state_db.read_bytes() == before


# ---- 7. progress wording -----------------------------------------------------------------


def test_progress_lines_do_not_repeat_the_state_as_its_reason(home: Home) -> None:
    from workbench.queue.pipeline import _Reporter

    store = Store.open(home.state_db)
    (job_id,) = store.submit_many(
        [JobRequest("ingest-train", "command", {"argv": ["true"]}, "/", {}, stage="ingest-train")]
    )
    store.transition(job_id, Event.START, "starting")
    err = io.StringIO()
    with _Reporter(False, io.StringIO(), err) as reporter:
        reporter.update([store.get(job_id)])
    store.close()
    assert f"[ingest-train] job {job_id} starting\n" in err.getvalue()
    assert "(starting)" not in err.getvalue()


# ---- 8. the TUI needs a terminal ---------------------------------------------------------


def test_the_tui_refuses_to_write_escape_codes_into_a_pipe(home: Home) -> None:
    result = workbench(timeout=60)
    assert result.returncode == 2, result.stderr
    assert "terminal" in result.stderr
    assert "\x1b" not in result.stdout and "\x1b" not in result.stderr
    _no_traceback(result)


def test_the_tui_refuses_when_only_stdout_is_a_pipe(home: Home) -> None:
    import pty

    main, secondary = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "workbench"],
            stdin=secondary,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.close(main)
        os.close(secondary)
    assert proc.returncode == 2 and "stdout is not one" in proc.stderr
    assert proc.stdout == ""


def test_what_a_command_writes_for_the_user_keeps_the_users_umask(
    home: Home, tmp_path: Path
) -> None:
    previous = os.umask(0o022)
    try:
        result = workbench("sql", "SELECT 1 AS x", "--out", str(tmp_path / "out.csv"))
    finally:
        os.umask(previous)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((tmp_path / "out.csv").stat().st_mode) == 0o644
