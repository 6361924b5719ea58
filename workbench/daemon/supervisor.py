"""The supervisor: admits queued jobs, runs each under its wrapper, carries out intents, samples
telemetry, and re-adopts jobs that outlived a previous daemon. One per WORKBENCH_HOME."""

from __future__ import annotations

import fcntl
import math
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from workbench.config import Config, load_config
from workbench.daemon import runner
from workbench.db.store import PAUSED, QUEUED, RUNNING, STARTING, Event, Job, Store
from workbench.paths import Home
from workbench.queue import scheduler
from workbench.queue.kinds import job_argv
from workbench.telemetry.gpu import Gpus, gpu_slots
from workbench.telemetry.sampler import Sampler
from workbench.units import format_duration


class DaemonError(RuntimeError):
    """The daemon could not start; the message says why."""


@dataclass
class Tracked:
    """A job process this daemon watches (its own child, or adopted from an earlier daemon)."""

    job_id: int
    pid: int
    pidfd: int
    run_dir: Path
    deadline: float | None = None
    cancel_sent_at: float | None = None
    killed: bool = False
    timed_out: bool = False


class Daemon:
    """One supervisor process. Single-threaded: job wrappers are forked from it."""

    def __init__(self, home: Home, config: Config):
        self.home = home
        self.config = config
        self.tracked: dict[int, Tracked] = {}
        self.stopping = False
        self.selector = selectors.DefaultSelector()
        self.cpus = os.cpu_count() or 1
        self.mem_bytes = psutil.virtual_memory().total
        self._lock_fd = -1
        self._sock: socket.socket | None = None
        self._last_version = -1
        self._next_sample = 0.0
        self.gpus: Gpus | None = None
        self.sampler: Sampler | None = None
        self.gpu_slots: tuple[scheduler.GpuSlot, ...] = ()

    # ---- start-up ----------------------------------------------------------------------

    def _take_lock(self) -> None:
        self._lock_fd = os.open(self.home.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DaemonError(f"a daemon is already running for {self.home.root}") from None
        os.ftruncate(self._lock_fd, 0)

    def _announce_ready(self) -> None:
        os.write(self._lock_fd, str(os.getpid()).encode())
        os.fsync(self._lock_fd)

    def _bind_socket(self) -> None:
        try:
            self.home.socket.unlink()
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(self.home.socket))
        except OSError as error:
            print(
                f"workbench daemon: cannot bind {self.home.socket} ({error}); polling instead",
                file=sys.stderr,
            )
            sock.close()
            return
        os.chmod(self.home.socket, 0o600)
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, ("wake", None))
        self._sock = sock

    def start(self) -> None:
        self.home.ensure()
        self._take_lock()
        self.store = Store.open(self.home.state_db, check=True)
        self.store.backup_to(self.home.state_db.with_name("state.db.bak"))
        self.gpus = Gpus.open()
        self.sampler = Sampler(self.store, self.home, self.gpus, self.config)
        self._bind_socket()
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.selector.register(read_fd, selectors.EVENT_READ, ("signal", None))
        self._sample()
        self._adopt()
        self._announce_ready()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    # ---- re-adoption -------------------------------------------------------------------

    def _adopt(self) -> None:
        """Follow jobs a previous daemon started: alive ones are watched, the rest are settled."""
        for job in self.store.list_jobs(states=[STARTING, RUNNING, PAUSED]):
            run_dir = self.home.run_dir(job.id)
            if job.pid is None:
                if job.state in (STARTING, RUNNING):
                    self.store.requeue(job.id, "the daemon stopped while starting it; queued again")
                continue
            if runner.same_process(job.pid, job.pid_start):
                self._track(job, job.pid, run_dir)
                continue
            status = runner.read_exit(run_dir)
            if status is not None:
                self._settle(job, status, Tracked(job.id, job.pid, -1, run_dir))
            else:
                self.store.transition(
                    job.id,
                    Event.LOST,
                    "lost: its process ended while no daemon was watching and left no exit status",
                    only_from=[STARTING, RUNNING, PAUSED],
                )

    def _track(self, job: Job, pid: int, run_dir: Path) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            pidfd = -1
        deadline = None
        if job.time_limit and job.started_at:
            deadline = job.started_at + job.time_limit
        self.tracked[job.id] = Tracked(job.id, pid, pidfd, run_dir, deadline)
        if pidfd >= 0:
            self.selector.register(pidfd, selectors.EVENT_READ, ("exit", job.id))

    # ---- job endings -------------------------------------------------------------------

    def _on_exit(self, job_id: int) -> None:
        tracked = self.tracked.pop(job_id)
        if tracked.pidfd >= 0:
            self.selector.unregister(tracked.pidfd)
            os.close(tracked.pidfd)
        reaped = runner.reap(tracked.pid)
        status = runner.read_exit(tracked.run_dir)
        if status is None:
            # The wrapper itself died (SIGKILL after the grace period, or killed by hand).
            status = reaped or runner.ExitStatus(None, signal.SIGKILL, time.time())
        job = self.store.find(job_id)
        if job is not None:
            self._settle(job, status, tracked)

    def _settle(self, job: Job, status: runner.ExitStatus, tracked: Tracked) -> None:
        """Record how a job ended, and queue it again if it has retries left."""
        fields = {"exit_code": status.code, "ended_at": status.ended_at or time.time()}
        live = [STARTING, RUNNING, PAUSED]
        failure = runner.read_failure(tracked.run_dir)
        if job.intent == "cancel" and not tracked.timed_out:
            reason = f"cancelled ({status.describe()})" + (f": {failure}" if failure else "")
            self.store.transition(job.id, Event.CANCEL, reason, only_from=live, **fields)
        elif tracked.timed_out:
            limit = format_duration(job.time_limit)
            self.store.transition(
                job.id,
                Event.EXIT_FAILED,
                f"time limit of {limit} exceeded",
                only_from=live,
                **fields,
            )
        elif status.ok:
            self.store.transition(
                job.id, Event.EXIT_OK, status.describe(), only_from=live, **fields
            )
        else:
            reason = f"{status.describe()}: {failure}" if failure else status.describe()
            if job.attempt <= job.retries:
                retry = f"automatic retry {job.attempt}/{job.retries} after it {status.describe()}"
                self.store.fail_and_requeue(job.id, reason, retry, only_from=live, **fields)
            else:
                self.store.transition(job.id, Event.EXIT_FAILED, reason, only_from=live, **fields)

    # ---- intents, limits ---------------------------------------------------------------

    def _carry_out_intents(self, active: list[Job], now: float) -> None:
        for job in active:
            tracked = self.tracked.get(job.id)
            if tracked is None:
                continue
            if job.intent == "cancel" and tracked.cancel_sent_at is None:
                self._terminate(tracked, now)
            elif job.intent == "pause" and job.state == RUNNING:
                runner.signal_group(tracked.pid, signal.SIGSTOP)
                self.store.transition(
                    job.id, Event.PAUSE, "paused", only_from=[RUNNING], intent=None
                )
            elif job.intent == "resume" and job.state == PAUSED:
                runner.signal_group(tracked.pid, signal.SIGCONT)
                self.store.transition(
                    job.id, Event.RESUME, "resumed", only_from=[PAUSED], intent=None
                )
            elif job.intent in ("pause", "resume"):
                self.store.update(job.id, intent=None)

    def _enforce_deadlines(self, now: float) -> None:
        """Time limits (SIGTERM), then the kill grace (SIGKILL to the whole group)."""
        for tracked in self.tracked.values():
            if tracked.deadline is not None and not tracked.timed_out and now >= tracked.deadline:
                tracked.timed_out = True
                if tracked.cancel_sent_at is None:
                    self._terminate(tracked, now)
            sent = tracked.cancel_sent_at
            if sent is not None and not tracked.killed and now >= sent + self.config.kill_grace_s:
                tracked.killed = True
                runner.signal_group(tracked.pid, signal.SIGKILL)

    def _next_deadline(self) -> float:
        soonest = math.inf
        for tracked in self.tracked.values():
            if tracked.deadline is not None and not tracked.timed_out:
                soonest = min(soonest, tracked.deadline)
            if tracked.cancel_sent_at is not None and not tracked.killed:
                soonest = min(soonest, tracked.cancel_sent_at + self.config.kill_grace_s)
        return soonest

    def _terminate(self, tracked: Tracked, now: float) -> None:
        """SIGTERM to the group (continued first, in case it is paused); SIGKILL after the grace."""
        tracked.cancel_sent_at = now
        runner.signal_group(tracked.pid, signal.SIGTERM)
        runner.signal_group(tracked.pid, signal.SIGCONT)

    # ---- scheduling --------------------------------------------------------------------

    def _sample(self) -> None:
        """One telemetry tick (history, per-job GPU use) and the GPU inventory for the scheduler:
        memory used by processes that are not our jobs', unhealthy slots for failed GPUs."""
        assert self.sampler is not None
        tick = self.sampler.tick({t.pid: t.job_id for t in self.tracked.values()})
        self.gpu_slots = gpu_slots(tick.gpus, set(tick.owners))
        self._next_sample = time.monotonic() + self.config.sample_interval_s

    def _schedule(self, active: list[Job]) -> None:
        queued = [j for j in active if j.state == QUEUED]
        if not queued:
            return
        holding = [
            scheduler.Holding(
                j.id, j.group, tuple(j.granted_gpus or ()), j.gpus, j.gpu_mem, j.cpus, j.mem
            )
            for j in active
            if j.state in (STARTING, RUNNING, PAUSED)
        ]
        dep_ids = {d for j in queued for d, _ in j.deps}
        dep_states = self.store.states_of(dep_ids) if dep_ids else {}
        settings = scheduler.Settings(
            drain=self.store.draining,
            group_limits=self.store.group_limits(),
            default_parallel=self.config.default_parallel,
        )
        resources = scheduler.Resources(self.gpu_slots, self.cpus, self.mem_bytes)
        by_id = {j.id: j for j in queued}
        for decision in scheduler.plan(
            [
                scheduler.Want(
                    j.id,
                    j.priority,
                    j.group,
                    j.gpus,
                    j.gpu_mem,
                    j.cpus,
                    j.mem,
                    j.deps,
                    j.fail_unrunnable,
                )
                for j in queued
            ],
            holding,
            dep_states,
            resources,
            settings,
        ):
            job = by_id[decision.job_id]
            if isinstance(decision, scheduler.Start):
                self._launch(job, decision.gpu_indices)
            elif isinstance(decision, scheduler.Wait):
                if job.reason != decision.reason:
                    self.store.set_reason(job.id, decision.reason)
            elif isinstance(decision, scheduler.Block):
                self.store.transition(job.id, Event.BLOCK, decision.reason, only_from=[QUEUED])
            elif isinstance(decision, scheduler.Fail):
                self.store.transition(job.id, Event.REFUSE, decision.reason, only_from=[QUEUED])

    def _launch(self, job: Job, gpu_indices: tuple[int, ...]) -> None:
        now = time.time()
        if not self.store.transition(
            job.id,
            Event.START,
            "starting",
            only_from=[QUEUED],
            started_at=now,
            granted_gpus=list(gpu_indices),
        ):
            return  # cancelled or paused by a client in the meantime
        job = self.store.get(job.id)
        run_dir = self.home.run_dir(job.id)
        env = dict(job.env)
        env.update(
            {
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in gpu_indices),
                "PYTHONUNBUFFERED": "1",
                "WORKBENCH_HOME": str(self.home.root),
                "WORKBENCH_JOB_ID": str(job.id),
                "WORKBENCH_RUN_DIR": str(run_dir),
            }
        )
        if job.cpus > 0:
            threads = str(max(1, math.ceil(job.cpus)))
            env.setdefault("OMP_NUM_THREADS", threads)
            env["WORKBENCH_CPUS"] = threads
        argv = job_argv(job, sys.executable)
        cwd = job.cwd if os.path.isdir(job.cwd) else str(self.home.root)
        header = None
        if job.attempt > 1:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
            header = f"attempt {job.attempt} of {job.retries + 1} started {stamp}"
        pid = runner.spawn(argv, env, cwd, run_dir, self.config.log_cap_bytes, header)
        self.store.transition(
            job.id,
            Event.LAUNCHED,
            "started",
            only_from=[STARTING],
            pid=pid,
            pid_start=runner.process_start_time(pid),
        )
        self._track(job, pid, run_dir)

    # ---- the loop ----------------------------------------------------------------------

    def _pass(self) -> None:
        now = time.time()
        active = self.store.active_jobs(light=True)
        self._carry_out_intents(active, now)
        self._enforce_deadlines(now)
        self._schedule(active)

    def _timeout(self) -> float:
        """Sleep until the next thing due: a sample, a kill deadline, a time limit; at most 1 s."""
        wait = min(1.0, self._next_sample - time.monotonic(), self._next_deadline() - time.time())
        return max(0.0, wait)

    def run(self) -> None:
        self.start()
        try:
            self._guarded(self._pass)
            while not self.stopping:
                self._guarded(self._step)
        finally:
            self.stop()

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run one step; an unexpected error is logged (daemon.log) instead of ending the
        supervisor, since running jobs and the queue outlive any one pass."""
        try:
            step()
        except Exception:
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
            time.sleep(1.0)

    def _step(self) -> None:
        """Sleep until something happens, then react: wake-ups, job exits, samples, deadlines."""
        woke = False
        for key, _ in self.selector.select(self._timeout()):
            what, job_id = key.data
            if what == "wake":
                self._drain_socket()
                woke = True
            elif what == "exit" and job_id in self.tracked:
                self._on_exit(job_id)
                woke = True
            elif what == "signal":
                try:
                    os.read(key.fd, 512)
                except BlockingIOError:
                    pass
        if time.monotonic() >= self._next_sample:
            self._sample()
        version = self.store.data_version()
        if woke or version != self._last_version or self._next_deadline() <= time.time():
            self._last_version = version
            self._pass()

    def _drain_socket(self) -> None:
        assert self._sock is not None
        while True:
            try:
                self._sock.recv(64)
            except BlockingIOError:
                return

    def stop(self) -> None:
        """Leave: running jobs keep running and are re-adopted by the next daemon."""
        if self._sock is not None:
            self._sock.close()
            try:
                self.home.socket.unlink()
            except FileNotFoundError:
                pass
        if self.gpus is not None:
            self.gpus.close()
        self.store.close()
        if self._lock_fd >= 0:
            os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)


def serve(home: Home) -> int:
    """`workbench daemon run`: the supervisor in the foreground."""
    home.ensure()
    try:
        daemon = Daemon(home, load_config(home.config))
        daemon.run()
    except Exception as error:  # the client that started us reads this from daemon.log
        print(f"workbench daemon: {error}", file=sys.stderr, flush=True)
        return 3
    return 0
