"""`python -P -m workbench.daemon.teamrun`: a built-in kind's job (ingest, train, test,
export...) run through the system daemon (team mode), as its owner, against the owner's own
home.

The system daemon runs command jobs only: built-in kinds read and write a home's store and
lake, and the system home's are root's. So the client queues the job in the owner's own home
(its data, runs and lineage stay there, private) bound to executor `team`, which no per-user
daemon starts, and submits to the system daemon a command job that runs this module: the team
queue decides when it runs and on which GPUs (shares, quotas, reclaim), and this process, already
the owner (the system daemon's wrapper switched user), plays the per-user daemon's part for that
one job: it marks it running, runs `python -m jobs ID` with the GPUs it was given, copies its
output to both logs, and settles it from its exit status.

Environment (set by the client at submit): `WORKBENCH_TEAM_HOME` (the owner's home) and
`WORKBENCH_TEAM_JOB` (the job's id there); the system daemon adds `CUDA_VISIBLE_DEVICES`,
`WORKBENCH_GPU_MEM_BYTES`, `WORKBENCH_CPUS` and the stop protocol's `WORKBENCH_STOP_FILE`.

Stopped by the system daemon (cancelled or preempted), the job is marked cancelled with the
stop file's reason; when the team job starts again (after a preemption) it runs again from its
checkpoint in the owner's run folder.

`python -P -m workbench.daemon.teamrun --settle WHAT` (same environment; `WORKBENCH_JOB_ID` the
team job's id) settles the job instead, when its team job ended without ever starting it (WHAT:
cancelled, removed, blocked, failed): the system daemon starts it as the owner
(`workbench.daemon.teamsettle`), so the job does not stay queued for ever. Nothing is run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from workbench.db.store import Event, JobState, Store
from workbench.paths import Home

HOME_ENV = "WORKBENCH_TEAM_HOME"
JOB_ENV = "WORKBENCH_TEAM_JOB"
EXECUTOR = "team"  # jobs.executor of such a job in its owner's home
STOPPED_PREFIX = "stopped by the system daemon"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _log(message: str) -> None:
    print(f"[workbench] {message}", flush=True)


def _pump(source: IO[bytes], sinks: list[IO[bytes]]) -> None:
    """Copy the child's output to each sink as it comes (a line or a read at a time)."""
    for chunk in iter(lambda: source.read1(65536), b""):  # type: ignore[attr-defined]
        for sink in sinks:
            try:
                sink.write(chunk)
                sink.flush()
            except OSError:
                pass


def _start(store: Store, job_id: int, team_job: str) -> bool:
    """Bring the job to running (from queued, or cancelled by an earlier stop of the team
    job); False when it cannot run (its owner cancelled or removed it)."""
    job = store.find(job_id)
    if job is None or job.executor != EXECUTOR:
        return False
    if job.state == JobState.CANCELLED and (job.reason or "").startswith(STOPPED_PREFIX):
        store.transition(job_id, Event.RETRY, f"team job {team_job} started again")
    elif job.state in (JobState.RUNNING, JobState.STARTING):  # the last start's process died
        store.transition(job_id, Event.REQUEUE, f"team job {team_job} started again")
    said = f"running as team job {team_job} of the system daemon"
    if store.transition(job_id, Event.START, said, only_from=[JobState.QUEUED]) is None:
        return False
    store.transition(job_id, Event.LAUNCHED, said, only_from=[JobState.STARTING], pid=os.getpid())
    return True


def unstarted_reason(team_job: int | str, what: str) -> str:
    """The reason of a job whose team job `team_job` ended (`what`: cancelled, removed,
    blocked...) before it started: it begins with STOPPED_PREFIX, so a retried team job
    runs the job again (`_start`)."""
    return f"{STOPPED_PREFIX} (team job {team_job} {what} before it started)"


def settle_unstarted(store: Store, job_id: int, team_job: int | str, what: str) -> bool:
    """Cancel job `job_id` of `store` (a team job's, executor `team`) if it still waits for
    team job `team_job`, which ended (`what`) without starting it; True when it was cancelled
    now. A job in any other state (started, already settled, removed) is left as it is."""
    job = store.find(job_id)
    if job is None or job.executor != EXECUTOR:
        return False
    said = unstarted_reason(team_job, what)
    return store.transition(job_id, Event.CANCEL, said, only_from=[JobState.QUEUED]) is not None


def run(home: Home, job_id: int, team_job: str) -> int:
    """Run job `job_id` of `home` as team job `team_job` (module docstring); its exit code."""
    stopped: list[int] = []

    def on_stop(signum: int, frame: object) -> None:
        stopped.append(signum)  # the job gets the same signal from the wrapper; wait for it

    # Before the job is marked running: a stop that comes meanwhile would otherwise end this
    # process at once and leave the job running in its owner's home, with no process.
    previous = {sig: signal.signal(sig, on_stop) for sig in STOP_SIGNALS}
    store = Store.open(home.state_db)
    try:
        if not _start(store, job_id, team_job):
            _log(f"job {job_id} of {home.root} is not waiting for the team queue; nothing run")
            return 1
        run_dir = home.run_dir(job_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        for name in (HOME_ENV, JOB_ENV):
            env.pop(name, None)
        env.update(
            {
                "WORKBENCH_HOME": str(home.root),
                "WORKBENCH_JOB_ID": str(job_id),
                "WORKBENCH_RUN_DIR": str(run_dir),
                "WORKBENCH_CHECKPOINT_DIR": str(run_dir / "checkpoints"),
            }
        )
        if stopped:  # stopped before the job began: nothing to run
            return _settle(store, job_id, team_job, -signal.SIGTERM, True)
        job = store.get(job_id)
        _log(f"{job.kind} job {job_id} of {home.root}, as team job {team_job}")
        with open(run_dir / "log", "ab") as log:
            child = subprocess.Popen(
                [sys.executable, "-P", "-m", "jobs", str(job_id)],
                cwd=job.cwd or str(home.root),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            assert child.stdout is not None
            pump = threading.Thread(target=_pump, args=(child.stdout, [log, sys.stdout.buffer]))
            pump.start()
            code = child.wait()
            pump.join()
        return _settle(store, job_id, team_job, code, bool(stopped))
    finally:
        store.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _settle(store: Store, job_id: int, team_job: str, code: int, stopped: bool) -> int:
    """Record how the job ended (from its exit code; `stopped`: the system daemon asked it to
    stop); the exit code for the team job."""
    live = [JobState.RUNNING, JobState.PAUSED]
    if code == 0:
        store.transition(job_id, Event.EXIT_OK, "exited 0", only_from=live, exit_code=0)
        return 0
    if stopped or code in (-signal.SIGTERM, -signal.SIGKILL, 143):
        why = _stop_reason() or "cancelled or preempted"
        store.transition(
            job_id,
            Event.CANCEL,
            f"{STOPPED_PREFIX} ({why}, team job {team_job}); a preempted one runs again from"
            " its checkpoint when the team job does",
            only_from=live,
        )
        return 143
    described = f"exited {code}" if code > 0 else f"killed by signal {-code}"
    exit_code = code if code > 0 else 128 - code
    store.transition(job_id, Event.EXIT_FAILED, described, only_from=live, exit_code=exit_code)
    return exit_code


def _stop_reason() -> str | None:
    path = os.environ.get("WORKBENCH_STOP_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text(errors="replace").strip()[:500] or None
    except OSError:
        return None


def _unusable(home: Home) -> str | None:
    """Why `home` is not a workbench home of this user's to run a job of (not absolute, not
    made, or not theirs alone: `workbench.trust.check_home`), or None. Nothing is made there."""
    from workbench.trust import UntrustedHome, check_home

    if not home.root.is_absolute():
        return "not an absolute path"
    try:
        check_home(home.root)
    except UntrustedHome as error:
        return str(error)
    if not home.state_db.is_file():
        return "no workbench home there (no state database)"
    return None


def settle(home: Home, job_id: int, team_job: str, what: str) -> int:
    """`--settle WHAT`: `settle_unstarted` in `home`'s store; exit 0 (settled now, or nothing
    to settle)."""
    store = Store.open(home.state_db)
    try:
        if settle_unstarted(store, job_id, team_job, what):
            _log(f"job {job_id} of {home.root}: cancelled, its team job {team_job} {what}")
    finally:
        store.close()
    return 0


SETTLE_FLAG = "--settle"
_WHAT = frozenset({"cancelled", "removed", "blocked", "failed"})


def main(argv: list[str] | None = None) -> int:
    """Run (no arguments) or settle (`--settle WHAT`) the job the environment names; exit
    2 for bad usage or an unusable home."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and (len(argv) != 2 or argv[0] != SETTLE_FLAG or argv[1] not in _WHAT):
        print(f"usage: teamrun [{SETTLE_FLAG} {'|'.join(sorted(_WHAT))}]", file=sys.stderr)
        return 2
    home_path, job = os.environ.get(HOME_ENV), os.environ.get(JOB_ENV)
    if not home_path or not job or not job.isdigit():
        print(f"teamrun: needs {HOME_ENV} and {JOB_ENV} (set at submit)", file=sys.stderr)
        return 2
    home = Home(Path(home_path))
    problem = _unusable(home)
    if problem is not None:
        print(f"teamrun: {HOME_ENV} {home_path}: {problem}; nothing run", file=sys.stderr)
        return 2
    if argv:
        return settle(home, int(job), os.environ.get("WORKBENCH_JOB_ID", "?"), argv[1])
    started = time.monotonic()
    code = run(home, int(job), os.environ.get("WORKBENCH_JOB_ID", "?"))
    _log(f"job {job} ended with exit code {code} after {time.monotonic() - started:.1f}s")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
