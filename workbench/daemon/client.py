"""What every client (CLI, TUI, --batch) uses to talk to the queue: the store plus a daemon
that is started on demand and woken after each write."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from workbench import safefs
from workbench.daemon.link import lock_holder, wake
from workbench.db.store import SETTLED, SUCCEEDED, Job, JobRequest, Store
from workbench.jobmodel.secrets import HeldCredentials
from workbench.paths import Home

if TYPE_CHECKING:
    from workbench.queue.pipeline import Pipeline


class DaemonUnavailable(RuntimeError):
    """The daemon is not running and could not be started (exit code 3)."""


def _daemon_log_tail(home: Home, since: int) -> str:
    """The last 2,000 characters daemon.log gained after byte `since`; '' if unreadable."""
    try:
        with open(safefs.open_file(home.daemon_log, os.O_RDONLY), "rb") as log:
            size = os.fstat(log.fileno()).st_size
            log.seek(max(since, size - 8000))  # the tail only, of a log that may be long
            return log.read().decode(errors="replace").strip()[-2000:]
    except OSError:
        return ""


#: How long a daemon that is visibly starting (its process alive, or the lock taken but no pid
#: written yet: it is checking the store and adopting jobs) is waited for, in seconds. On a
#: loaded machine a start-up has been seen to pass 20 s; one that is alive is not a failure.
STARTING_CAP_S = 120.0


#: How many daemons one client starts before it gives up: one more each time the lock is found
#: free with none of its own starting (the one another client was starting exited unready).
START_TRIES = 3


def _spawn_daemon(home: Home) -> Any:
    """Start `workbench daemon run` for `home`, detached in its own session, its output
    appended to daemon.log; returns the `subprocess.Popen`."""
    import subprocess  # ~3 ms, only to start the daemon

    log_fd = safefs.open_file(home.daemon_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    with open(log_fd, "ab") as log, open(os.devnull, "rb") as devnull:
        env = dict(os.environ, WORKBENCH_HOME=str(home.root))
        return subprocess.Popen(
            [sys.executable, "-m", "workbench", "daemon", "run"],
            stdin=devnull,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=env,
            cwd=str(home.root),
        )


def ensure_daemon(home: Home, timeout_s: float = 20.0) -> int:
    """Return the daemon's pid, starting it (detached, in its own session) if none runs.

    Waits `timeout_s` seconds for it to become ready, and up to `STARTING_CAP_S` while it is
    visibly starting. When the lock is free and no daemon of this client's is starting (one
    that another client started exited unready), starts one, up to `START_TRIES` in all.
    Raises DaemonUnavailable when this client's daemon exits without becoming ready, at any
    time, or none becomes ready in time; either way with the tail of daemon.log."""
    pid = lock_holder(home)
    if pid is not None and pid > 0:
        return pid
    home.ensure()
    log_start = home.daemon_log.stat().st_size if home.daemon_log.exists() else 0
    proc: Any = None
    spawned = 0
    started = time.monotonic()
    deadline, cap = started + timeout_s, started + max(timeout_s, STARTING_CAP_S)
    while True:
        pid = lock_holder(home)
        if pid is not None and pid > 0:
            return pid
        if proc is not None and proc.poll() is not None:
            pid = lock_holder(home)
            if pid is not None and pid > 0:
                return pid
            detail = _daemon_log_tail(home, log_start)
            if "already running" not in detail:
                raise DaemonUnavailable(
                    f"the daemon could not start (exit status {proc.returncode}):\n{detail}"
                )
            proc = None  # another client's daemon holds the lock: wait for that one
            log_start = home.daemon_log.stat().st_size if home.daemon_log.exists() else 0
        if pid is None and proc is None and spawned < START_TRIES:
            proc = _spawn_daemon(home)
            spawned += 1
        now = time.monotonic()
        starting = pid == -1 or proc is not None
        if now >= cap or (now >= deadline and not starting):
            break
        time.sleep(0.01)
    detail = _daemon_log_tail(home, 0)
    raise DaemonUnavailable(
        f"the daemon did not become ready within {time.monotonic() - started:.0f}s"
        f" (see {home.daemon_log})" + (f"; its log ends:\n{detail}" if detail else "")
    )


class Client:
    """A connection to one workbench home."""

    def __init__(self, home: Home | None = None, start_daemon: bool = True):
        self.home = (home or Home.current()).ensure()
        self.store = Store.open(self.home.state_db)
        self.start_daemon = start_daemon
        # Credentials this client handed over, by job id (in its memory only): while it waits
        # for those jobs it hands them again to a daemon that lost them (`give_again`).
        self.handed: dict[int, HeldCredentials] = {}
        self._given_at: dict[int, float] = {}

    def close(self) -> None:
        self.store.close()

    def nudge(self) -> None:
        """Make sure a daemon runs, then wake it to look at the store."""
        if self.start_daemon:
            ensure_daemon(self.home)
        wake(self.home)

    def hand_credentials(self, requests: Iterable[JobRequest]) -> list[JobRequest]:
        """Hand the daemon the credentials of `requests` that hold some, before they are
        committed (workbench.daemon.credentials), starting it if need be; returns the requests
        to commit. A job bound to Slurm gets them the same way: the daemon adds them to
        sbatch's environment. Raises DaemonUnavailable when the daemon cannot take them:
        nothing is queued."""
        out = list(requests)
        held = [request.credentials for request in out if request.credentials is not None]
        if not held:
            return out
        from workbench.daemon.credentials import hand_over

        if self.start_daemon:
            ensure_daemon(self.home)
        for credentials in held:
            try:
                hand_over(self.home, credentials.token, credentials.values)
            except (OSError, ValueError) as error:
                raise DaemonUnavailable(
                    f"the daemon could not take the job's credentials ({error}); nothing was queued"
                ) from None
        return out

    def _remember(self, requests: Iterable[JobRequest], ids: Iterable[int]) -> None:
        for request, job_id in zip(requests, ids, strict=False):
            if request.credentials is not None:
                self.handed[job_id] = request.credentials

    def give_again(self, job_ids: Iterable[int]) -> list[int]:
        """Hand the credentials of the jobs among `job_ids` that this client submitted again to
        the daemon when a job waits for them (the daemon restarted after the submit): at most
        once a second per job. Returns the ids handed. Errors are left for the next call."""
        from workbench.daemon.credentials import WAITING_PREFIX, hand_over

        given: list[int] = []
        now = time.monotonic()
        for job_id in job_ids:
            credentials = self.handed.get(job_id)
            if credentials is None or now - self._given_at.get(job_id, -1e9) < 1.0:
                continue
            job = self.store.find(job_id)
            if job is None or not (job.reason or "").startswith(WAITING_PREFIX):
                continue
            self._given_at[job_id] = now
            try:
                hand_over(self.home, credentials.token, credentials.values)
            except (OSError, ValueError):
                continue
            given.append(job_id)
        if given:
            wake(self.home)
        return given

    def submit(self, request: JobRequest) -> int:
        (request,) = self.hand_credentials([request])
        job_id = self.store.submit(request)
        self._remember([request], [job_id])
        self.nudge()
        return job_id

    def submit_many(self, requests: list[JobRequest]) -> list[int]:
        requests = self.hand_credentials(requests)
        ids = self.store.submit_many(requests)
        self._remember(requests, ids)
        self.nudge()
        return ids

    def submit_pipeline(self, pipeline: Pipeline) -> tuple[int, list[int]]:
        """Queue every stage of a validated pipeline (sweeps in their capped groups); returns
        the pipeline's id and its job ids in stage order."""
        for stage in pipeline.stages:
            if stage.group_limit is not None:
                self.store.set_group(*stage.group_limit)
        stages = [(request, stage.after) for stage in pipeline.stages for request in stage.requests]
        handed = self.hand_credentials(request for request, _ in stages)
        stages = [(request, after) for request, (_, after) in zip(handed, stages, strict=True)]
        pipeline_id, ids = self.store.submit_pipeline(pipeline.name, str(pipeline.path), stages)
        self.nudge()
        ordered = [i for stage in pipeline.stages for i in ids[stage.name]]
        self._remember((request for request, _ in stages), ordered)
        return pipeline_id, ordered

    def control(self, job_id: int, action: str) -> str:
        """cancel / pause / resume / retry / rm; returns what happened. A running Slurm job is
        paused with `scontrol suspend` here, where `[executor] suspend = true` allows it."""
        result = None
        if action in ("pause", "resume"):
            from workbench.daemon.executors.slurm_suspend import suspend_or_resume

            result = suspend_or_resume(self.home, self.store, job_id, action)
        if result is None:
            result = self.store.request(job_id, action)
        if action == "rm":  # its output and records go with it (links are removed, not followed)
            from workbench.queue.retention import remove_run_dir

            remove_run_dir(self.home, job_id)
        self.nudge()
        return result

    def set_priority(self, job_id: int, priority: int) -> None:
        self.store.set_priority(job_id, priority)
        self.nudge()

    def wait(
        self, job_ids: Iterable[int], timeout_s: float | None = None, poll_s: float = 0.05
    ) -> list[Job]:
        """Block until every job has ended (or the timeout passes); returns their final rows."""
        ids = list(job_ids)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        version = -1
        while True:
            now_version = self.store.data_version()
            if now_version != version:
                if self.handed and self.give_again([i for i in ids if i in self.handed]):
                    continue
                version = now_version
                states = self.store.states_of(ids)
                if all(states.get(i, SUCCEEDED) in SETTLED for i in ids):
                    break
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(poll_s)
        return [self.store.get(i) for i in ids if self.store.find(i) is not None]
