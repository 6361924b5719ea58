"""Records files written carelessly or with intent: whatever a job appends to its records.jsonl
never stops the daemon applying the lines after it, never keeps the job from ending and never
touches another job's rows."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import workbench

from workbench.db.journal import RecordError, apply_records
from workbench.db.store import Event, JobRequest, Store
from workbench.paths import Home

HOSTILE = [
    # an integer SQLite cannot store, in a typed record and in a dataset version
    b'{"kind":"metrics","step":18446744073709551616,"values":{"a":1}}',
    b'{"kind":"dataset","name":"d","version":18446744073709551616,"content_hash":"x"}',
    b'{"kind":"metrics","step":1,"t":"noon","values":{"a":1}}',
    # JSON nested past Python's recursion limit
    b'{"kind":"params","values":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"kind":"progress","message":"\xff\xfe"}',
]
GOOD = b'{"kind":"metrics","step":7,"values":{"loss":0.25}}'


def _running_job(store: Store, home: Home) -> int:
    job_id = store.submit(JobRequest("script", "command", {"argv": ["python"]}, "/", {}))
    store.transition(job_id, Event.START, "starting")
    store.transition(job_id, Event.LAUNCHED, "started", pid=3)
    home.run_dir(job_id).mkdir(parents=True, exist_ok=True)
    return job_id


def test_a_line_sqlite_or_json_cannot_hold_is_skipped_and_the_rest_applied(home: Home) -> None:
    """Before: an OverflowError or RecursionError escaped apply_records with the offset left
    behind the line, so every look re-read it (a traceback in daemon.log twice a second) and
    the job's end, which applies its records first, was never recorded."""
    store = Store.open(home.state_db)
    for bad in HOSTILE:
        job_id = _running_job(store, home)
        records = home.run_dir(job_id) / "records.jsonl"
        data = bad + b"\n" + GOOD + b"\n"
        records.write_bytes(data)
        notes: list[str] = []
        try:
            offset = apply_records(store, job_id, records, 0, notes)
        except RecordError:  # reported as the line's problem, the offset moved past it
            (offset,) = store.conn.execute(
                "SELECT records_offset FROM jobs WHERE id=?", (job_id,)
            ).fetchone()
        assert offset == len(data), bad[:60]
        rows = store.conn.execute(
            "SELECT step, name, value FROM metrics WHERE job_id=?", (job_id,)
        ).fetchall()
        assert rows == [(7, "loss", 0.25)], bad[:60]


def test_a_job_on_this_machine_cannot_record_sql_writes(home: Home, tmp_path: Path) -> None:
    """A local command job appends a `writes` line (the form a built-in kind on a cluster node
    uses) that renames another job's run and deletes every metric, then a line SQLite cannot
    hold: before, the writes were applied as they came, and the overflow left every line after
    it unapplied (the job ended without its good record). Now the writes are refused, the job
    ends succeeded with its good record, and the other job's rows are intact."""
    store = Store.open(home.state_db)
    other = _running_job(store, home)
    other_records = home.run_dir(other) / "records.jsonl"
    other_records.write_bytes(b'{"kind":"metrics","step":0,"values":{"acc":0.5}}\n')
    apply_records(store, other, other_records, 0)
    store.transition(other, Event.EXIT_OK, "done", exit_code=0)
    forged = json.dumps(
        {
            "writes": [
                ["UPDATE runs SET name='taken' WHERE job_id=?", [other]],
                ["DELETE FROM metrics", []],
            ]
        }
    ).encode()
    lines = [forged, HOSTILE[0], HOSTILE[3], GOOD]
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os
            path = os.path.join(os.environ["WORKBENCH_RUN_DIR"], "records.jsonl")
            with open(path, "ab") as handle:
                for line in {lines!r}:
                    handle.write(line + b"\\n")
            """
        )
    )
    submitted = workbench("submit", "--", sys.executable, str(script))
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout.split()[-1])
    waited = workbench("wait", str(job_id), timeout=60)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    (state,) = store.conn.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
    assert state == "succeeded"
    assert store.conn.execute(
        "SELECT step, name, value FROM metrics WHERE job_id=?", (job_id,)
    ).fetchall() == [(7, "loss", 0.25)]
    assert store.conn.execute(
        "SELECT step, name, value FROM metrics WHERE job_id=?", (other,)
    ).fetchall() == [(0, "acc", 0.5)]
    (name,) = store.conn.execute("SELECT name FROM runs WHERE job_id=?", (other,)).fetchone()
    assert name == "script"
    workbench("daemon", "stop")


def test_records_a_failed_write_did_not_apply_are_read_again(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A look whose write fails (a long lock, disk full) leaves the file unread: before, the
    follower took the file's size as seen first, so the records waited for the file to grow and
    were lost at the job's end if it never did."""
    from workbench.daemon import records as follower_module

    store = Store.open(home.state_db)
    job_id = _running_job(store, home)
    (home.run_dir(job_id) / "records.jsonl").write_bytes(GOOD + b"\n")
    logged: list[str] = []
    follower = follower_module.RecordFollower(home, store, logged.append)
    real = follower_module.apply_records
    failures = [sqlite3.OperationalError("database is locked")]

    def flaky(*args: Any, **kwargs: Any) -> int:
        if failures:
            raise failures.pop()
        return real(*args, **kwargs)

    monkeypatch.setattr(follower_module, "apply_records", flaky)
    try:
        follower.follow([job_id])
    except sqlite3.OperationalError:
        pass  # the daemon's step logs it and goes on
    follower.ended([job_id])
    assert store.conn.execute(
        "SELECT step, name, value FROM metrics WHERE job_id=?", (job_id,)
    ).fetchall() == [(7, "loss", 0.25)]


def test_a_backlog_is_applied_a_chunk_per_transaction(home: Home) -> None:
    """Before, one look read everything new into memory and applied it in one transaction
    (100 MB of lines: some 17 s holding state.db's write lock and the daemon's loop, every submit
    waiting). Now a call applies at most CHUNK_BYTES of whole lines, and apply_all_records
    (a job's end) goes on until every whole line is in."""
    from workbench.db import journal

    store = Store.open(home.state_db)
    job_id = _running_job(store, home)
    records = home.run_dir(job_id) / "records.jsonl"
    line = '{"kind":"metrics","step":%d,"values":{"loss":0.5}}\n'
    count = journal.CHUNK_BYTES // 40 + 1000
    records.write_text("".join(line % step for step in range(count)) + '{"kind":"metr')
    offset = apply_records(store, job_id, records, 0)
    assert 0 < offset <= journal.CHUNK_BYTES
    offset = journal.apply_all_records(store, job_id, records, offset)
    assert offset == records.stat().st_size - len('{"kind":"metr')  # the half line waits
    (applied,) = store.conn.execute(
        "SELECT count(*) FROM metrics WHERE job_id=?", (job_id,)
    ).fetchone()
    assert applied == count


def test_a_line_too_long_to_read_is_skipped_in_blocks(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line over MAX_LINE_BYTES is skipped without being read whole; the line after it is
    applied, and a long line not yet ended waits."""
    from workbench.db import journal

    monkeypatch.setattr(journal, "MAX_LINE_BYTES", 1 << 20)
    store = Store.open(home.state_db)
    job_id = _running_job(store, home)
    records = home.run_dir(job_id) / "records.jsonl"
    records.write_bytes(b'{"kind":"params","values":{"a":"' + b"x" * (3 << 20))
    assert apply_records(store, job_id, records, 0, max_bytes=1 << 16) == 0
    with open(records, "ab") as handle:
        handle.write(b'"}}\n' + GOOD + b"\n")
    notes: list[str] = []
    offset = journal.apply_all_records(store, job_id, records, 0, notes)
    assert offset == records.stat().st_size
    assert "skipped" in notes[0]
    assert store.conn.execute(
        "SELECT step, name, value FROM metrics WHERE job_id=?", (job_id,)
    ).fetchall() == [(7, "loss", 0.25)]


def test_records_past_the_tracking_apis_limits_are_refused(home: Home) -> None:
    """The API refuses a name over 200 chars, over 1000 metrics and over 64 KiB of params; a
    line appended by hand was applied whatever its size (a 10 MB metric name in every `runs`
    listing). Now the daemon holds the same limits and says which was passed."""
    store = Store.open(home.state_db)
    job_id = _running_job(store, home)
    records = home.run_dir(job_id) / "records.jsonl"
    lines = [
        {"kind": "metrics", "step": 0, "values": {"n" * 201: 1.0}},
        {"kind": "metrics", "step": 0, "values": {f"m{i}": 1.0 for i in range(1001)}},
        {"kind": "params", "values": {"blob": "x" * (65 * 1024)}},
        {"kind": "params", "values": {"lr": 0.1}},
    ]
    records.write_text("".join(json.dumps(line) + "\n" for line in lines) + GOOD.decode() + "\n")
    notes: list[str] = []
    apply_records(store, job_id, records, 0, notes)
    assert len(notes) == 3 and "name over 200" in notes[0] and "1001 values" in notes[1]
    assert store.conn.execute("SELECT name FROM metrics WHERE job_id=?", (job_id,)).fetchall() == [
        ("loss",)
    ]
    (params,) = store.conn.execute("SELECT params FROM runs WHERE job_id=?", (job_id,)).fetchone()
    assert json.loads(params) == {"lr": 0.1}


def test_a_records_file_that_is_a_fifo_or_a_link_is_refused_not_waited_on(home: Home) -> None:
    """Before: a job that made records.jsonl a FIFO had the daemon's open block for good (every
    job on the machine stalled); one that linked it to another job's file had that file read as
    its own records."""
    import threading

    store = Store.open(home.state_db)
    other = _running_job(store, home)
    (home.run_dir(other) / "records.jsonl").write_bytes(GOOD + b"\n")
    fifo_job, link_job = _running_job(store, home), _running_job(store, home)
    os.mkfifo(home.run_dir(fifo_job) / "records.jsonl")
    (home.run_dir(link_job) / "records.jsonl").symlink_to(home.run_dir(other) / "records.jsonl")
    outcomes: dict[int, str] = {}

    def look(job_id: int) -> None:
        path = home.run_dir(job_id) / "records.jsonl"
        try:
            outcomes[job_id] = f"offset {apply_records(Store.open(home.state_db), job_id, path, 0)}"
        except RecordError as error:
            outcomes[job_id] = str(error)

    for job_id in (fifo_job, link_job):
        thread = threading.Thread(target=look, args=(job_id,), daemon=True)
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), "apply_records blocked"
        assert "not a regular file" in outcomes[job_id], outcomes[job_id]
    assert not store.conn.execute(
        "SELECT 1 FROM metrics WHERE job_id IN (?, ?)", (fifo_job, link_job)
    ).fetchall()


def test_a_command_job_on_slurm_cannot_record_sql_writes(home: Home) -> None:
    """The Slurm executor applied a command job's `writes` lines as a built-in kind's (a script
    on a node could delete every job's metrics); it now takes only their typed records."""
    from types import SimpleNamespace

    from workbench.daemon.executors.slurm import SlurmExecutor

    store = Store.open(home.state_db)
    other = _running_job(store, home)
    other_records = home.run_dir(other) / "records.jsonl"
    other_records.write_bytes(GOOD + b"\n")
    apply_records(store, other, other_records, 0)
    job_id = _running_job(store, home)
    forged = json.dumps({"writes": [["DELETE FROM metrics", []]]}).encode()
    (home.run_dir(job_id) / "records.jsonl").write_bytes(forged + b"\n" + GOOD + b"\n")
    executor = SimpleNamespace(store=store, home=home)
    problem = SlurmExecutor._records(executor, store.get(job_id), 0)  # type: ignore[arg-type]
    assert problem is not None and "may not record SQL writes" in problem
    assert store.conn.execute("SELECT job_id FROM metrics ORDER BY job_id").fetchall() == [
        (other,),
        (job_id,),
    ]
