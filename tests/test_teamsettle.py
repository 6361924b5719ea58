"""The system daemon's settling of team jobs that ended before they started
(`workbench.daemon.teamsettle`, `workbench.db.team_ends`, `teamrun --settle`): which jobs it
finds, once each, and the own-home job it cancels as its owner. The end to end tests with
real users are in tests/test_team_share.py."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from workbench.daemon import teamrun
from workbench.daemon.teamsettle import TeamSettler
from workbench.db.store import Event, JobRequest, JobState, Store
from workbench.db.team_ends import cursor_since, ended_unstarted_after
from workbench.paths import Home


def _own_job(home: Home) -> int:
    """A built-in kind's job queued in its owner's own home for the team queue."""
    store = Store.open(home.state_db)
    try:
        (job_id,) = store.submit_many(
            [JobRequest("t", "ingest", {}, "/", {}, executor=teamrun.EXECUTOR)]
        )
    finally:
        store.close()
    return job_id


def _team_job(store: Store, home: Path, own_id: int, team_of: bool = True) -> int:
    """The command job of the system daemon that runs `own_id` of `home` (or, without
    `team_of`, a plain command job)."""
    spec = {"team_of": {"kind": "ingest", "home": str(home), "job": own_id}} if team_of else {}
    request = JobRequest("t", "command", spec, "/", {}, argv=["true"], uid=os.getuid(), paused=True)
    (job_id,) = store.submit_many([request])
    return job_id


def test_the_team_jobs_that_ended_unstarted_are_found(home: Home, tmp_path: Path) -> None:
    """Cancelled (held or queued), blocked and failed-before-start team jobs are found; one
    that started, a plain command job and one still waiting are not. A look with nothing
    new reads only the last events again (its caller keeps what it handled)."""
    store = Store.open(tmp_path / "system.db")
    own = home.root
    cancelled = _team_job(store, own, 1)
    blocked = _team_job(store, own, 2)
    started = _team_job(store, own, 3)
    plain = _team_job(store, own, 4, team_of=False)
    waiting = _team_job(store, own, 5)
    cursor = cursor_since(store, time.time() - 60)
    store.request(cancelled, "cancel")
    store.request(plain, "cancel")
    store.request(blocked, "resume")
    store.transition(blocked, Event.BLOCK, "its dependency failed")
    store.request(started, "resume")
    store.transition(started, Event.START, "starting", started_at=time.time())
    store.transition(started, Event.LAUNCHED, "started")
    store.transition(started, Event.CANCEL, "cancelled")
    found, cursor = ended_unstarted_after(store, cursor)
    assert {(f.job_id, f.state, f.team_of["job"]) for f in found} == {
        (cancelled, "cancelled", 1),
        (blocked, "blocked", 2),
    }
    assert ended_unstarted_after(store, cursor) == (found, cursor)
    assert waiting not in {f.job_id for f in found}
    # At a daemon's start: events before the look-back are not read again.
    assert ended_unstarted_after(store, cursor_since(store, time.time() + 60))[0] == found
    store.close()


def test_a_team_job_ended_after_the_newest_were_removed_is_found(
    home: Home, tmp_path: Path
) -> None:
    """Event ids are reused after an `rm` of the newest job: the events after it took ids at
    or below the cursor, and a cursor that read only above it passed them over."""
    store = Store.open(tmp_path / "system.db")
    first = _team_job(store, home.root, 1)
    second = _team_job(store, home.root, 2)
    store.request(first, "cancel")
    found, cursor = ended_unstarted_after(store, 0)
    assert [f.job_id for f in found] == [first]
    store.request(first, "rm")
    store.request(second, "cancel")  # its event takes the id the removed one freed
    assert store.conn.execute("SELECT max(id) FROM job_events").fetchone()[0] <= cursor
    found, _ = ended_unstarted_after(store, cursor)
    assert [f.job_id for f in found] == [second]
    store.close()


def _settle(home: Home, own_id: int, what: str = "cancelled") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, teamrun.HOME_ENV: str(home.root), teamrun.JOB_ENV: str(own_id)}
    env["WORKBENCH_JOB_ID"] = "9"
    argv = [sys.executable, "-P", "-m", "workbench.daemon.teamrun", "--settle", what]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_teamrun_settle_cancels_a_waiting_job_which_a_retried_team_job_runs(home: Home) -> None:
    """`teamrun --settle WHAT` cancels the own-home job only while it waits, with the reason
    that lets a retried team job start it (`teamrun._start`); again, it does nothing."""
    own_id = _own_job(home)
    done = _settle(home, own_id)
    assert done.returncode == 0, done.stderr
    store = Store.open(home.state_db)
    job = store.get(own_id)
    assert job.state == JobState.CANCELLED, job
    assert job.reason == f"{teamrun.STOPPED_PREFIX} (team job 9 cancelled before it started)"
    assert _settle(home, own_id).returncode == 0
    assert teamrun._start(store, own_id, "9")  # the team job retried: it runs after all
    assert store.get(own_id).state == JobState.RUNNING
    assert _settle(home, own_id).returncode == 0
    assert store.get(own_id).state == JobState.RUNNING  # started: left to its team job
    # Ended, so that nothing takes this test's process (its pid) for the job's.
    store.transition(own_id, Event.EXIT_OK, "exited 0", exit_code=0)
    store.close()
    assert _settle(home, own_id, "whatever").returncode == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="the run-as helper switches user: root only")
def test_the_settler_settles_each_own_home_job_as_its_owner(home: Home) -> None:
    """The daemon's collaborator: a cancelled team job's own-home job is cancelled within a
    tick or two, a removed one's too (told by the gate), each once; a team job naming no
    usable home is logged, never raised."""
    root = Path(tempfile.mkdtemp(prefix="wb-sys-", dir="/tmp"))
    store = Store.open(root / "state.db")
    lines: list[str] = []
    settler = TeamSettler(store, lines.append)
    cancelled_own, removed_own = _own_job(home), _own_job(home)
    cancelled = _team_job(store, home.root, cancelled_own)
    removed = _team_job(store, home.root, removed_own)
    nowhere = _team_job(store, root / "no-home", 1)
    store.request(cancelled, "cancel")
    store.request(nowhere, "cancel")
    before = store.get(removed)
    store.request(removed, "rm")
    settler.removed(before)
    own = Store.open(home.state_db)
    deadline = time.monotonic() + 30
    while own.get(removed_own).state == JobState.QUEUED or not any("exited" in x for x in lines):
        assert time.monotonic() < deadline, (lines, own.get(removed_own))
        settler.tick()
        time.sleep(0.1)
    while settler._running:
        settler.tick()
        time.sleep(0.05)
    assert own.get(cancelled_own).state == JobState.CANCELLED
    assert f"team job {removed} removed" in (own.get(removed_own).reason or "")
    failed = [line for line in lines if "exited" in line]
    assert len(failed) == 1 and f"team job {nowhere}" in failed[0] and "exited 2" in failed[0]
    assert any(f"team job {removed} removed before it started" in line for line in lines)
    settler._next_look = 0.0
    settler.tick()
    assert not settler._running  # each once
    own.close()
    store.close()
