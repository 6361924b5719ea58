"""`workbench.daemon.teamrun` (a built-in kind's job run by the team queue in its owner's
home): a stop from the system daemon that comes while it marks the job running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from workbench.daemon import teamrun
from workbench.db.store import JobRequest, JobState, Store
from workbench.paths import Home


class Killed(Exception):
    """The stop signal reached the default handling (the process would have ended)."""


def test_a_stop_while_the_job_starts_cancels_it_without_running_it(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """teamrun set its stop handlers only after marking the job running: a SIGTERM in between
    ended it at once and left the job running in its owner's home, with no process, for ever.
    Now the handlers come first, and a stop before the start settles it cancelled (with the
    reason a retried team job runs it again after) and runs nothing."""
    store = Store.open(home.state_db)
    (job_id,) = store.submit_many(
        [JobRequest("t", "train", {}, "/", {}, executor=teamrun.EXECUTOR)]
    )
    real_start = teamrun._start

    def start_then_stopped(store: Store, job_id: int, team_job: str) -> bool:
        started = real_start(store, job_id, team_job)
        signal.raise_signal(signal.SIGTERM)
        return started

    def default(signum: int, frame: object) -> None:
        raise Killed

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the job was run after its stop")

    monkeypatch.setattr(teamrun, "_start", start_then_stopped)
    monkeypatch.setattr(subprocess, "Popen", never)
    previous = signal.signal(signal.SIGTERM, default)
    try:
        assert teamrun.run(home, job_id, "7") == 143
        assert signal.getsignal(signal.SIGTERM) is default  # given back
    finally:
        signal.signal(signal.SIGTERM, previous)
    job = store.get(job_id)
    assert job.state == JobState.CANCELLED, job
    assert (job.reason or "").startswith(teamrun.STOPPED_PREFIX), job.reason
    store.close()


@pytest.mark.parametrize("which", ["missing", "relative", "another user's"])
def test_a_team_home_that_is_not_the_users_is_refused_and_nothing_made(
    home: Home, tmp_path: Path, which: str
) -> None:
    """WORKBENCH_TEAM_HOME naming a folder that is no workbench home made a fresh store there
    (as root, even the folders above it), and one of another user's ended on a traceback.
    Now exit 2 naming the variable and the home, and nothing is made."""
    Store.open(home.state_db).close()
    target = {
        "missing": str(tmp_path / "nowhere" / "home"),
        "relative": "some/home",
        "another user's": str(home.root),
    }[which]
    if which == "another user's":
        for path in [home.root, *home.root.iterdir()]:
            os.lchown(path, 65534, 65534)
    env = {**os.environ, teamrun.HOME_ENV: target, teamrun.JOB_ENV: "1"}
    done = subprocess.run(
        [sys.executable, "-P", "-m", "workbench.daemon.teamrun"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"teamrun: {teamrun.HOME_ENV} {target}: " in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "some").exists()


@pytest.mark.parametrize("action", ["cancel", "pause", "rm"])
def test_a_running_team_job_cannot_be_stopped_from_its_owners_home(home: Home, action: str) -> None:
    """`workbench cancel ID` in the owner's own home of a job the team queue runs there only
    recorded an intent no daemon ever carried out (no per-user daemon follows executor
    `team`): the job ran on. Now exit 2 (NotWhereItRuns) saying to do it in team mode."""
    from workbench.db.store import NotWhereItRuns

    store = Store.open(home.state_db)
    (job_id,) = store.submit_many(
        [JobRequest("t", "train", {}, "/", {}, executor=teamrun.EXECUTOR)]
    )
    assert teamrun._start(store, job_id, "7")
    try:
        with pytest.raises(NotWhereItRuns, match=f"workbench {action} TEAM_JOB"):
            store.request(job_id, action)
        job = store.get(job_id)
        assert job.state == JobState.RUNNING and job.intent is None, job
    finally:  # its pid is this test's: not a leftover job for the fixture to kill
        store.conn.execute("UPDATE jobs SET pid=NULL, state='failed' WHERE id=?", (job_id,))
        store.conn.commit()
        store.close()
