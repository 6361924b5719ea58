"""Settling, as their owners, the own-home jobs of team jobs that ended without starting (team
mode): the system daemon's collaborator that closes what `workbench.daemon.teamrun` would have.

A built-in kind submitted in team mode is a job queued in its owner's own home plus a command
job in the team queue that runs it there (`workbench.cli.team.queue_built_in`). A team job
cancelled or removed before it started (by its owner or an admin), blocked by a failed
dependency or failed as unrunnable never runs teamrun, so its own-home job would wait for ever.
The root daemon never writes a user's home: it starts, as the owner, `python -P -m
workbench.daemon.teamrun --settle WHAT` through the run-as helper (`python -I -m
workbench.daemon.runas UID -- ...`, the switch a job's wrapper makes), which cancels that job
only if it is still queued (`teamrun.settle_unstarted`); a retried team job runs it again.

Each team job is settled at most once per daemon run; at start the daemon looks back over the
events of the last `LOOK_BACK_S`. The processes are spawned and reaped, never waited for;
a failure is logged, never raised. The owner's client still settles them too (the fallback)."""

from __future__ import annotations

import collections
import os
import pwd
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from workbench.daemon import runas, teamrun
from workbench.db.store import Job, Store
from workbench.db.team_ends import (
    EndedUnstarted,
    cursor_since,
    ended_unstarted_after,
    team_of_spec,
)

LOOK_BACK_S = 3600.0  # at start: team jobs that ended this long before it are settled again
LOOK_EVERY_S = 0.5  # how often the store's new events are read
MAX_RUNNING = 4  # settling processes at once (the rest wait their turn)
KILL_AFTER_S = 60.0  # a settling process still running after this is killed


@dataclass(frozen=True)
class _Settling:
    """One settling process: its team job, what became of it, and when it was started."""

    team_job: int
    what: str
    process: subprocess.Popen[bytes]
    started: float


class TeamSettler:
    """Settles the own-home jobs of team jobs that ended unstarted (module docstring). `tick`
    runs in the daemon's loop; `removed` may be called from any thread (the gate's)."""

    def __init__(
        self,
        store: Store,
        log: Callable[[str], None],
        python: str = sys.executable,
        now: float | None = None,
    ):
        """`log` takes a line for the daemon's log; `python` is the interpreter the settling
        process runs (the daemon's, which every user can run: `workbench.system`); `now`
        (Unix s) the daemon's start, from which LOOK_BACK_S is counted."""
        self.store = store
        self.log = log
        self.python = python
        self._since = (time.time() if now is None else now) - LOOK_BACK_S
        self._cursor: int | None = None  # the last event read; found at the first tick
        self._next_look = 0.0
        self._version = -1  # the store's data version at the last look: unchanged, none
        self._seen: set[int] = set()  # team jobs settled (or being settled) in this run
        self._removed: collections.deque[EndedUnstarted] = collections.deque()  # thread-safe
        self._waiting: collections.deque[EndedUnstarted] = collections.deque()
        self._running: list[_Settling] = []

    def removed(self, job: Job) -> None:
        """Team job `job` (as read before its removal) was removed: settle its own-home job
        if it never started (its events are gone with it, so the store cannot tell later)."""
        team_of = team_of_spec(job.spec)
        if team_of is None or job.uid is None or job.started_at:  # one that started: teamrun's
            return
        self._removed.append(EndedUnstarted(job.id, job.uid, "removed", team_of))

    def tick(self, monotonic: float | None = None) -> None:
        """Reap finished settling processes, read the events written since the last look
        (every LOOK_EVERY_S), start what waits. Never raises: a failure is logged."""
        now = time.monotonic() if monotonic is None else monotonic
        try:
            self._reap(now)
            while self._removed:
                self._want(self._removed.popleft())
            if now >= self._next_look:
                self._next_look = now + LOOK_EVERY_S
                self._look()
            while self._waiting and len(self._running) < MAX_RUNNING:
                self._start(self._waiting.popleft(), now)
        except Exception as error:  # the loop must go on; the owner's client settles too
            self.log(f"team settling: {type(error).__name__}: {error}")

    def _look(self) -> None:
        """Read the events written since the last look, if anyone wrote to the store."""
        version = self.store.data_version()
        if version == self._version:
            return
        if self._cursor is None:
            self._cursor = cursor_since(self.store, self._since)
        found, self._cursor = ended_unstarted_after(self.store, self._cursor)
        self._version = version  # read: the next look waits for another write
        for ended in found:
            self._want(ended)

    def _want(self, ended: EndedUnstarted) -> None:
        if ended.job_id not in self._seen:
            self._seen.add(ended.job_id)
            self._waiting.append(ended)

    def _start(self, ended: EndedUnstarted, now: float) -> None:
        try:
            entry = pwd.getpwuid(ended.uid)
        except KeyError:
            self.log(f"team job {ended.job_id}: its owner uid {ended.uid} is gone; not settled")
            return
        env = {
            "PATH": os.environ.get("PATH") or os.defpath,
            "LANG": "C.UTF-8",
            "HOME": entry.pw_dir,
            "USER": entry.pw_name,
            "LOGNAME": entry.pw_name,
            teamrun.HOME_ENV: str(ended.team_of["home"]),
            teamrun.JOB_ENV: str(ended.team_of["job"]),
            "WORKBENCH_JOB_ID": str(ended.job_id),
        }
        # The root step (`runas`) runs isolated (-I: no PYTHON* variables, no user site) with
        # only these variables, none of which a loader or Python reads; it becomes the owner
        # and execs teamrun, which opens the owner's home as the owner.
        argv = [self.python, "-I", "-m", runas.__name__, str(ended.uid), "--"]
        argv += [self.python, "-P", "-m", teamrun.__name__, teamrun.SETTLE_FLAG, ended.state]
        try:
            process = subprocess.Popen(
                argv,
                env=env,
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                umask=0o077,
            )
        except (OSError, subprocess.SubprocessError) as error:
            self.log(f"team job {ended.job_id}: could not settle its own-home job: {error}")
            return
        self.log(
            f"team job {ended.job_id} {ended.state} before it started: settling job"
            f" {ended.team_of['job']} of {ended.team_of['home']} as {entry.pw_name}"
        )
        assert process.stderr is not None
        os.set_blocking(process.stderr.fileno(), False)
        self._running.append(_Settling(ended.job_id, ended.state, process, now))

    def _reap(self, now: float) -> None:
        running = []
        for settling in self._running:
            code = settling.process.poll()
            if code is None and now - settling.started > KILL_AFTER_S:
                settling.process.kill()
                code = settling.process.wait()
            if code is None:
                running.append(settling)
                continue
            said = _read_some(settling.process)
            if code != 0:
                self.log(
                    f"team job {settling.team_job} ({settling.what}): settling its own-home job"
                    f" exited {code}: {said or 'no message'}"
                )
        self._running = running

    def close(self) -> None:
        """Let go of the settling processes still running (they end by themselves)."""
        for settling in self._running:
            if settling.process.stderr is not None:
                settling.process.stderr.close()
        self._running = []


def _read_some(process: subprocess.Popen[bytes]) -> str:
    """What the process wrote to stderr (its last 1,000 characters), without blocking."""
    assert process.stderr is not None
    try:
        data = process.stderr.read() or b""
    except OSError:
        data = b""
    finally:
        process.stderr.close()
    return data.decode(errors="replace").strip()[-1000:]
