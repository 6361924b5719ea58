"""The supervisor: admits queued jobs, hands each to an executor, carries out intents, samples
telemetry, and re-adopts jobs that outlived a previous daemon. One per WORKBENCH_HOME."""

from __future__ import annotations

import errno
import fcntl
import math
import os
import selectors
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import replace

import psutil

from workbench import safefs
from workbench.config import Config, load_config
from workbench.daemon import launching, runner, stopping
from workbench.daemon.credentials import CredentialVault
from workbench.daemon.executors import Executor, Handle, LaunchError
from workbench.daemon.executors.containment import home_scope, remove_empty_cgroups
from workbench.daemon.executors.local import LocalExecutor
from workbench.daemon.executors.slurm import SlurmExecutor
from workbench.daemon.gate import Gate, open_gate
from workbench.daemon.homewatch import HomeGone, HomeWatch
from workbench.daemon.idle import IdleWatch
from workbench.daemon.intake import Intake
from workbench.daemon.ledger import UsageLedger
from workbench.daemon.planning import Planner
from workbench.daemon.records import RecordFollower
from workbench.daemon.settling import Tracked, settle
from workbench.daemon.teamsettle import TeamSettler
from workbench.daemon.wakesock import WakeSocket
from workbench.daemon.wakeups import Wakeups, monotonic_at
from workbench.db import executors as placement_db
from workbench.db import scheduling as db
from workbench.db.connection import full_message
from workbench.db.store import Store
from workbench.jobmodel.states import Event, JobState
from workbench.paths import Home
from workbench.queue import scheduler
from workbench.queue.accounts import account_of
from workbench.queue.retention import prune_ended, sweep_orphans
from workbench.queue.spec import SpecError
from workbench.telemetry.gpu import Gpus, gpu_slots, job_gpu_memory
from workbench.telemetry.sampler import Sampler
from workbench.units import format_duration

PRUNE_INTERVAL_S = 3600.0
SLURM_POLL_S = 1.0  # a Slurm tick; it asks squeue only when its adaptive poll is due
DEBUG_LAUNCH_DELAY_ENV = (
    "WORKBENCH_DEBUG_DELAY_LAUNCH_COMMIT_S"  # tests: die between fork and commit
)
_RETRY_S = 1.0  # how soon a write that failed (disk full, busy) is tried again
_STOP_BACKSTOP_S = 5.0  # after the kill grace, the daemon itself kills what a cancel left
_WRITE_ERRORS = db.RETRYABLE_ERRORS  # a write that may work when retried
_NO_SPACE_RETRY_S = 5.0  # how soon launches are tried again after one found no space
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a launch that failed for want of space or inodes


class DaemonError(RuntimeError):
    """The daemon could not start; the message says why."""


class Daemon:
    """One supervisor process. Single-threaded: the local executor forks wrappers from it."""

    def __init__(self, home: Home, config: Config, executor: Executor | None = None):
        self.home = home
        self.config = config
        self._given_executor = executor
        self.executor: Executor = executor or LocalExecutor("subreaper")  # replaced in start()
        self.tracked: dict[int, Tracked] = {}
        self.stopping = False
        self.home_gone = False  # set when the home folder was removed under the daemon
        self.selector = selectors.DefaultSelector()
        self.cpus = os.cpu_count() or 1
        self.mem_bytes = psutil.virtual_memory().total
        self._lock_fd = -1
        self.wakes: WakeSocket | None = None  # daemon.sock: wake-ups and credentials
        self.intake: Intake | None = None
        self.gate: Gate | None = None  # system mode: every user's requests
        self.team_settle: TeamSettler | None = None  # system mode: team jobs ended unstarted
        self.records: RecordFollower | None = None
        self._last_version = -1
        self._last_stamp: tuple[int, int] = (-1, -1)
        self._dirty = True
        self._next_sample = 0.0
        self._next_poll = 0.0
        self._launch_paused_until = 0.0
        self.wakeups = Wakeups()  # times a pass is due though nothing was written
        self._next_prune = 0.0
        self._poll_soon: set[int] = set()  # attempts to poll on the next step
        self.gpus: Gpus | None = None
        self.sampler: Sampler | None = None
        self.usage: UsageLedger | None = None  # the usage ledger (GPU-hours per account)
        self.idle: IdleWatch | None = None  # idle GPU detection
        self.gpu_slots: tuple[scheduler.GpuSlot, ...] = ()
        self.gpu_mem_seen: dict[int, int] = {}  # job id -> most GPU memory seen on one GPU
        self.gpu_names: dict[int, str] = {}  # GPU index -> model, as the last sample saw it
        self._start_details: dict[int, scheduler.Start] = {}  # this pass's starts, by job id
        self.log_failures = 0  # messages the daemon could not write (its log's disk was full)
        self.passes = 0  # scheduling passes run
        self._config_stamp: tuple[int, int, int] | None = None  # config.toml as last read
        self.slurm: SlurmExecutor | None = None  # created when the first Slurm job appears
        self._next_slurm_tick = 0.0
        try:  # a debug setting: anything but a finite number of seconds means none
            delay = float(os.environ.get(DEBUG_LAUNCH_DELAY_ENV) or 0.0)
        except ValueError:
            delay = 0.0
        self._debug_launch_delay_s = delay if 0.0 < delay < 3600.0 else 0.0

    # ---- its own log: never raises ---------------------------------------------------------

    def log(self, message: str) -> None:
        """A line in daemon.log. A full disk or a closed stream is counted, never raised: the
        daemon's error path must not be what stops it."""
        try:
            sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
            sys.stderr.flush()
        except Exception:
            self.log_failures += 1

    # ---- start-up ----------------------------------------------------------------------

    def _take_lock(self) -> None:
        self._lock_fd = safefs.open_file(self.home.lock, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DaemonError(f"a daemon is already running for {self.home.root}") from None
        os.ftruncate(self._lock_fd, 0)

    def _announce_ready(self) -> None:
        os.write(self._lock_fd, str(os.getpid()).encode())
        os.fsync(self._lock_fd)

    def start(self) -> None:
        """Take the lock, open the store, adopt what a previous daemon left, then say ready.
        Raises DaemonError when another daemon holds the lock, StoreError for a bad store,
        HomeGone when the home folder does not exist (it is never created here)."""
        begun = time.monotonic()
        self.home_watch = HomeWatch(self.home.root)
        self.home.ensure()  # its folders (runs, lake), in a home that exists
        self._take_lock()
        if self._given_executor is None:
            scope = home_scope(self.home.root)
            self.executor = LocalExecutor(self.config.containment, scope, (self._lock_fd,))
        self._config_stamp = self._config_file_stamp()
        self.store = Store.open(self.home.state_db, check="full")
        self.usage = UsageLedger(self.store, lambda: self.config, self._card_bytes)
        self.idle = IdleWatch(self.store, self.home, self.log)
        usage = self.usage
        # Marks an earlier daemon left (`credentials`) hold for this one too: it holds none.
        self.credentials = CredentialVault(self.store, self.log)
        self.planner = Planner(
            self.store,
            self._holdings,
            self._launch_many,
            self._reclaim,
            self._start_details,
            usage=lambda: usage.decayed() if self.config.shares.by else {},
            lacking=self.credentials.mark_lacking,
        )
        try:
            self.store.backup_to(self.home.state_db.with_name("state.db.bak"))
        except _WRITE_ERRORS as error:
            self.log(f"could not back up the state file ({error}); going on without a backup")
        self.gpus = Gpus.open()
        self.sampler = Sampler(self.store, self.home, self.gpus, self.config)
        self.records = RecordFollower(self.home, self.store, self.log)
        self.wakes = WakeSocket(self.home.socket, self.log, self.credentials.take)
        wake_sock = self.wakes.bind()
        if wake_sock is not None:
            self.selector.register(wake_sock, selectors.EVENT_READ, ("wake", None))
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.selector.register(read_fd, selectors.EVENT_READ, ("signal", None))
        self._sample()
        self._adopt()
        self._sweep_orphans()
        self.intake = Intake(self.home, self.store, self.log)
        intake_sock = self.intake.bind()
        if intake_sock is not None:
            self.selector.register(intake_sock, selectors.EVENT_READ, ("intake", None))
        settler = TeamSettler(self.store, self.log)
        self.gate = open_gate(
            self.home,
            self.store,
            lambda: self.config,
            self.log,
            self.credentials.put,
            settler.removed,
        )
        if self.gate is not None:
            self.team_settle = settler
        if self.gate is not None and self.gate.sock is not None:
            self.selector.register(self.gate.sock, selectors.EVENT_READ, ("gate", None))
        took = time.monotonic() - begun
        self.log(f"started (pid {os.getpid()}, in {took:.2f}s); {self.executor.describe()}")
        self._announce_ready()

    def _sweep_orphans(self) -> None:
        """What a killed `rm` or ingest left: run folders of removed jobs, lake staging folders
        of writers that died (`retention.sweep_orphans`)."""
        try:
            runs, staging = sweep_orphans(self.store, self.home)
        except _WRITE_ERRORS as error:
            self.log(f"could not remove orphaned folders ({error})")
            return
        if runs or staging:
            self.log(f"removed {runs} orphaned run folder(s), {staging} lake staging folder(s)")

    def _config_file_stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.home.config)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _reread_config(self) -> None:
        """config.toml changed (a stat per step tells): read it again, so `[groups.*]` quotas,
        limits and opt-outs and `[scheduler]` apply at once, as `workbench group` already shows
        them. A file that cannot be used is logged and the settings in force are kept. What
        the daemon set up at its start (containment, executor, sampling) changes at its next."""
        stamp = self._config_file_stamp()
        if stamp == self._config_stamp:
            return
        self._config_stamp = stamp
        try:
            config = load_config(self.home.config)
        except (SpecError, OSError) as error:
            self.log(f"config.toml changed but cannot be used ({error}); keeping the settings")
            return
        self.config = replace(
            config, containment=self.config.containment, executor=self.config.executor
        )
        self.log("config.toml changed: group quotas and limits, scheduler settings apply now")
        self._dirty = True

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    # ---- re-adoption -------------------------------------------------------------------

    def _adopted_mig(self, job: db.LiveJob) -> tuple[str, ...]:
        """The MIG instance an adopted job holds: the one its row records (`granted_devices`,
        written with its launch token), else the `CUDA_VISIBLE_DEVICES` its wrapper recorded
        for this attempt (a job started before the row kept it), else one of its profile on its
        granted GPU that no other followed job holds. Only the last is a guess; a wrong one
        names another job's instance, and hands the job's own out again while it runs."""
        if job.mig_profile is None:
            return ()
        taken = {u for t in self.tracked.values() for u in t.holding.mig_uuids}
        known = {inst.uuid for slot in self.gpu_slots for inst in slot.mig}
        launched: tuple[str, ...] = tuple(job.granted_devices or ())
        if not launched:
            record = runner.read_wrapper(self.home.run_dir(job.id))
            if record is not None and record.token == job.launch_token and record.devices:
                launched = tuple(u for u in record.devices.split(",") if u)
        if launched and all(u in known and u not in taken for u in launched):
            return launched
        for slot in self.gpu_slots:
            if slot.index not in job.granted_gpus:
                continue
            for inst in slot.mig:
                if inst.profile == job.mig_profile and inst.uuid not in taken:
                    return (inst.uuid,)
        return ()

    def _adopt(self) -> None:
        """Follow jobs a previous daemon left live. A `starting` job is found by its launch token
        (adopted if its wrapper began, queued again if it never did: never run twice); a running
        one is watched again, and one that ended meanwhile is settled by the next poll."""
        on_slurm = self._slurm_job_ids()  # followed by the Slurm executor from the store
        for job in db.live_jobs(self.store):
            if job.id in on_slurm:
                continue
            run_dir = self.home.run_dir(job.id)
            row = self.store.find(job.id)
            holding = scheduler.Holding(
                job.id,
                job.group,
                tuple(job.granted_gpus or ()),
                job.gpus,
                job.gpu_mem,
                job.cpus,
                job.mem,
                started_at=job.started_at or time.time(),
                time_limit=job.time_limit,
                mig_uuids=self._adopted_mig(job),
                mig_profile=job.mig_profile,
                preemptible=job.preemptible,
                kept_because=stopping.kept_because(row) if row is not None else None,
                account=account_of(
                    self.config.shares.by, job.group, row.uid if row is not None else None
                ),
            )
            policy = stopping.policy_for(row, self.config.kill_grace_s) if row else None
            deadline = None
            if job.time_limit and job.started_at:
                deadline = job.started_at + job.time_limit
            stop = job.intent if job.intent in db.STOP_INTENTS else None
            if job.state == JobState.STARTING or job.pid is None:
                found = self.executor.find(job.launch_token, run_dir) if job.launch_token else None
                if found is None:
                    self.store.transition(
                        job.id,
                        Event.REQUEUE,
                        "the daemon stopped before its wrapper started; queued again",
                        only_from=[JobState.STARTING, JobState.RUNNING],
                    )
                    continue
                self.store.transition(
                    job.id,
                    Event.ADOPT,
                    f"adopted by a restarted daemon (wrapper pid {found.pid})",
                    only_from=[JobState.STARTING, JobState.RUNNING],
                    pid=found.pid,
                    pid_start=found.start_time,
                )
                self._resume_stop(self._track(job.id, found, holding, deadline, policy), job, stop)
                continue
            handle = Handle(job.launch_token or "", run_dir, job.pid, job.pid_start)
            self._resume_stop(self._track(job.id, handle, holding, deadline, policy), job, stop)
        self._next_poll = 0.0  # look at every adopted job at once: some may have ended
        if isinstance(self.executor, LocalExecutor) and self.executor.cgroup_root is not None:
            keep = {t.handle.token for t in self.tracked.values()}
            remove_empty_cgroups(self.executor.cgroup_root, keep)

    def _resume_stop(self, tracked: Tracked, job: db.LiveJob, intent: str | None) -> None:
        """An adopted job an earlier daemon was preempting (or stopping for its GPU memory):
        settle it as that daemon would have, and make sure it stops (SIGTERM again, harmless
        when its wrapper already has it; the kill grace runs from now)."""
        if intent is None:
            return
        reason = job.reason or ("preempted" if intent == db.PREEMPT_INTENT else "stopped")
        if intent == db.PREEMPT_INTENT:
            tracked.preempted = reason
        else:
            tracked.over_reservation = reason
        self._cancel(tracked, time.time(), reason)

    def _track(
        self,
        job_id: int,
        handle: Handle,
        holding: scheduler.Holding,
        deadline: float | None,
        policy: stopping.StopPolicy | None = None,
    ) -> Tracked:
        """Follow a job attempt; `holding.preemptible` is the job's own flag (its group's, from
        config.toml, is applied in `_holding_now`); `policy` how it is stopped (default: SIGTERM
        and the configured grace)."""
        tracked = Tracked(job_id, handle, holding, deadline=deadline)
        tracked.policy = policy or stopping.StopPolicy(grace_s=self.config.kill_grace_s)
        tracked.opted_out = not holding.preemptible
        fd = self.executor.watch_fd(handle)
        if fd is not None:
            tracked.watch_fd = fd
            self.selector.register(fd, selectors.EVENT_READ, ("exit", job_id))
        else:  # nothing to watch (it may have ended already): look at it on the next step
            self._poll_soon.add(job_id)
        self.tracked[job_id] = tracked
        return tracked

    def _unwatch(self, tracked: Tracked) -> None:
        if tracked.watch_fd >= 0:
            self.selector.unregister(tracked.watch_fd)
            os.close(tracked.watch_fd)
            tracked.watch_fd = -1

    # ---- job endings -------------------------------------------------------------------

    def _collect(self, job_ids: list[int]) -> None:
        """Ask the executor which of these attempts are over; keep each end until recorded."""
        watching = [self.tracked[i] for i in job_ids if i in self.tracked]
        handles = [t.handle for t in watching if t.ended is None]
        if not handles:
            return
        by_token = {t.handle.token: t for t in watching}
        for ended in self.executor.poll(handles):
            tracked = by_token.get(ended.handle.token)
            if tracked is not None:
                tracked.ended = ended
                self._unwatch(tracked)

    def _record_endings(self) -> None:
        """Record every collected end in one transaction; if the write fails (disk full, a long
        lock) it is retried on the next step, and the jobs stay tracked (their resources held)
        until it commits: an outcome is never dropped."""
        done = [t for t in self.tracked.values() if t.ended is not None]
        if not done:
            return
        try:
            if self.records is not None:  # what the job reported is in before its end
                self.records.ended([t.job_id for t in done])
            jobs = db.jobs_by_id(self.store, [t.job_id for t in done])
            changes = [c for t in done if t.job_id in jobs for c in settle(t, jobs[t.job_id])]
            db.apply_many(self.store, changes)
        except _WRITE_ERRORS as error:
            self.log(f"could not record the end of {len(done)} job(s) yet ({error}); retrying")
            return
        if self.records is not None:
            self.records.forget(t.job_id for t in done)
        for tracked in done:
            del self.tracked[tracked.job_id]
            self.gpu_mem_seen.pop(tracked.job_id, None)
        self._dirty = True  # their resources are free

    # ---- intents, limits ---------------------------------------------------------------

    def _carry_out_intents(self, now: float) -> None:
        on_slurm = self._slurm_job_ids()
        for intent in db.intents(self.store):
            if intent.job_id in on_slurm:
                continue  # the Slurm executor carries these out
            tracked = self.tracked.get(intent.job_id)
            if tracked is None or tracked.ended is not None:
                # A cancel, or why the daemon stopped it, decides how its end is recorded.
                if intent.intent != "cancel" and intent.intent not in db.STOP_INTENTS:
                    self.store.update(intent.job_id, intent=None)
                continue
            if intent.intent == "cancel":
                if tracked.cancel_sent_at is None:
                    self._cancel(tracked, now, "cancelled")
            elif intent.intent == "pause" and intent.state == JobState.RUNNING:
                self.executor.signal(tracked.handle, signal.SIGSTOP)
                why = "paused"
                self.store.transition(
                    intent.job_id, Event.PAUSE, why, only_from=[JobState.RUNNING], intent=None
                )
            elif intent.intent == "resume" and intent.state == JobState.PAUSED:
                self.executor.signal(tracked.handle, signal.SIGCONT)
                self.store.transition(
                    intent.job_id, Event.RESUME, "resumed", only_from=[JobState.PAUSED], intent=None
                )
            elif intent.intent in ("pause", "resume") and intent.state != JobState.STARTING:
                self.store.update(intent.job_id, intent=None)

    def _cancel(self, tracked: Tracked, now: float, why: str) -> None:
        """The job's stop signal, SIGKILL after its kill grace; `why` goes into its stop file
        (written first: the job may read it in its handler) and its log."""
        tracked.cancel_sent_at = now
        stopping.write_stop(tracked.handle.run_dir, why)
        self.executor.cancel(tracked.handle, tracked.policy.grace_s, why)

    def _warn(self, tracked: Tracked, now: float) -> None:
        """The warning before the time limit (`signal_before`): the stop file says when the
        limit comes, then the job gets its stop signal; it is stopped at the limit as usual."""
        tracked.warned = True
        assert tracked.deadline is not None
        limit = format_duration(tracked.deadline - tracked.holding.started_at)
        left = format_duration(max(0.0, tracked.deadline - now))
        stopping.write_stop(
            tracked.handle.run_dir, f"time limit of {limit} reached in {left}; save and exit"
        )
        self.executor.signal(tracked.handle, tracked.policy.signal)

    def _enforce_deadlines(self, now: float) -> None:
        """Time limits (a cancel); and a backstop for a cancel the executor did not finish."""
        for tracked in self.tracked.values():
            if tracked.ended is not None:
                continue
            warn_at = stopping.warn_at(tracked.policy, tracked.deadline, tracked.warned)
            if warn_at is not None and now >= warn_at and tracked.cancel_sent_at is None:
                self._warn(tracked, now)
            if tracked.deadline is not None and not tracked.timed_out and now >= tracked.deadline:
                tracked.timed_out = True
                if tracked.cancel_sent_at is None:
                    limit = format_duration(tracked.deadline - tracked.holding.started_at)
                    self._cancel(tracked, now, f"time limit of {limit} exceeded")
            sent = tracked.cancel_sent_at
            if (
                sent is not None
                and not tracked.forced
                and now >= sent + tracked.policy.grace_s + _STOP_BACKSTOP_S
            ):
                tracked.forced = True
                stopped = self.executor.stop_all(tracked.handle)
                self.log(
                    f"job {tracked.job_id}: still running after its kill grace; {stopped} processes killed"
                )

    def _next_deadline(self) -> float:
        soonest = math.inf
        for tracked in self.tracked.values():
            if tracked.ended is not None or not tracked.launch_committed:
                soonest = min(soonest, time.time() + _RETRY_S)
                continue
            if tracked.deadline is not None and not tracked.timed_out:
                soonest = min(soonest, tracked.deadline)
            warn_at = stopping.warn_at(tracked.policy, tracked.deadline, tracked.warned)
            if warn_at is not None and tracked.cancel_sent_at is None:
                soonest = min(soonest, warn_at)
            if tracked.cancel_sent_at is not None and not tracked.forced:
                soonest = min(
                    soonest, tracked.cancel_sent_at + tracked.policy.grace_s + _STOP_BACKSTOP_S
                )
        return soonest

    # ---- scheduling --------------------------------------------------------------------

    def _sample(self) -> None:
        """One telemetry tick (history, per-job GPU use) and the GPU inventory for the scheduler:
        memory used by processes that are not our jobs', unhealthy slots for failed GPUs. A failed
        tick (disk full) is logged and skipped: it must not hold up the queue."""
        assert self.sampler is not None
        self._next_sample = time.monotonic() + self.config.sample_interval_s
        owners = {t.handle.pid: t.job_id for t in self.tracked.values() if t.handle.pid}
        try:
            tick = self.sampler.tick(owners)
        except _WRITE_ERRORS as error:
            self.log(f"telemetry sample skipped ({error})")
            return
        self.gpu_names = {s.index: s.name for s in tick.gpus}
        placement = self.gpus.placement() if self.gpus is not None else None
        granted = {
            pid: (job_id, self.tracked[job_id].holding.gpu_indices)
            for pid, job_id in tick.owners.items()
            if job_id in self.tracked
        }
        slots = gpu_slots(tick.gpus, set(tick.owners), placement, granted)
        if slots != self.gpu_slots:
            # Memory freed or taken outside the queue, a GPU lost or back, MIG changed: a
            # waiting job may fit now, and its reason (which names these) may be stale.
            self.gpu_slots = slots
            self._dirty = True
        grants = {job_id: t.holding.gpu_indices for job_id, t in self.tracked.items()}
        for job_id, used in job_gpu_memory(tick.gpus, tick.owners, grants).items():
            if used > self.gpu_mem_seen.get(job_id, 0):
                self.gpu_mem_seen[job_id] = used
                self._dirty = True  # reservations grow; a job may be over its own
        if self.usage is not None:
            try:
                self.usage.sync()
            except _WRITE_ERRORS as error:
                self.log(f"usage ledger not updated ({error}); tried again next tick")
        if self.idle is not None:
            util = {s.index: s.util_gpu for s in tick.gpus if s.ok}
            try:
                if self.idle.observe(self.config.shares, time.time(), util, grants):
                    self._dirty = True  # an idle job may be reclaimed, or no longer
            except _WRITE_ERRORS as error:
                self.log(f"idle GPU flags not updated ({error}); tried again next tick")

    def _card_bytes(self) -> int:
        """One GPU's memory (bytes; the largest), for a grant without `gpu_mem`; 0 with none."""
        return max((s.memory_total_bytes for s in self.gpu_slots), default=0)

    def _schedule(self) -> None:
        """Start what can start (workbench.daemon.planning: every job that could start now is
        seen, whatever waits before it); another pass follows at once when a page all started."""
        if time.monotonic() < self._launch_paused_until:
            self.wakeups.at("launch", self._launch_paused_until)  # a pass when it ends
            return
        if self.wakes is not None and self.wakes.drain():  # credentials sent before a submit
            self._dirty = True
        resources = scheduler.Resources(self.gpu_slots, self.cpus, self.mem_bytes)
        if self.planner.run(self.config, resources):
            self._dirty = True

    def _holdings(self) -> list[scheduler.Holding]:
        return [self._holding_now(t) for t in self.tracked.values()]

    def _holding_now(self, tracked: Tracked) -> scheduler.Holding:
        """What the job holds, with the GPU memory last seen and whether it is stopping; a new
        value only when those changed (a pass looks at every running job)."""
        seen = self.gpu_mem_seen.get(tracked.job_id)
        stopping = tracked.cancel_sent_at is not None or tracked.ended is not None
        holding = tracked.holding
        # Its own opt-out, or its group's as config.toml says now (it is read again on change).
        preemptible = not tracked.opted_out and holding.group not in self.config.not_preemptible
        idle = self.idle is not None and self.idle.is_idle(tracked.job_id)
        if (
            holding.gpu_mem_seen != seen
            or holding.stopping != stopping
            or holding.preemptible != preemptible
            or holding.idle != idle
        ):
            holding = tracked.holding = replace(
                holding, gpu_mem_seen=seen, stopping=stopping, preemptible=preemptible, idle=idle
            )
        return holding

    def _reclaim(self, decision: scheduler.Preempt | scheduler.Exceeds, now: float) -> None:
        """GPU pooling: preempt a running job (SIGTERM, then the kill grace; it is queued again
        when it ends), or report one using more GPU memory than it reserved (in its reason, and
        stopped when the policy is strict)."""
        tracked = self.tracked.get(decision.job_id)
        if tracked is None or tracked.ended is not None or not tracked.launch_committed:
            return
        if isinstance(decision, scheduler.Exceeds):
            job = self.store.find(decision.job_id)
            reason = decision.reason + ("; stopped (strict)" if decision.stop else "")
            if decision.stop and tracked.cancel_sent_at is None:
                if self._record_stop(decision.job_id, db.STOP_INTENT, reason):
                    tracked.over_reservation = reason
                    self._cancel(tracked, now, reason)
            elif job is not None and job.reason != reason:
                self.store.set_reason(decision.job_id, reason)
            return
        if tracked.cancel_sent_at is None and self._record_stop(
            decision.job_id, db.PREEMPT_INTENT, decision.reason
        ):
            tracked.preempted = decision.reason
            self.log(f"job {decision.job_id}: {decision.reason}")
            self._cancel(tracked, now, decision.reason)

    def _record_stop(self, job_id: int, intent: str, reason: str) -> bool:
        """Write down why the daemon stops a job before it signals it, so a daemon that starts
        after this one died settles the job the same way (a preempted job goes back to the
        queue, not to `failed`). A job the user asked to cancel keeps that intent. False when
        the write failed (it is tried again on the next pass; nothing is signalled meanwhile)."""
        try:
            db.record_stop(self.store, job_id, intent, reason)
        except _WRITE_ERRORS as error:
            self.log(f"job {job_id}: could not record why it is stopped ({error}); retrying")
            self._dirty = True
            return False
        return True

    def _granted_devices(self, job_id: int) -> list[str] | None:
        """The MIG instances (UUIDs) the scheduler chose for a job starting now, or None."""
        start = self._start_details.get(job_id)
        return list(start.devices) if start is not None and start.devices else None

    def _launch_many(self, starts: list[tuple[db.QueuedJob, tuple[int, ...]]]) -> int:
        """Start jobs in three steps, each one transaction for all of them: mark them `starting`
        with fresh launch tokens; hand each to the executor; record the handles (`running`).
        A daemon that dies anywhere in between leaves the tokens, by which the next daemon finds
        each attempt (or knows it never began): no job runs twice."""
        if not starts:
            return 0
        now = time.time()
        tokens = {job.id: uuid.uuid4().hex for job, _ in starts}
        marked = db.apply_many(
            self.store, launching.starting_changes(starts, tokens, now, self._granted_devices)
        )
        chosen = [
            (job, gpus)
            for (job, gpus), state in zip(starts, marked, strict=True)
            if state is not None
        ]
        rows = db.jobs_by_id(self.store, [job.id for job, _ in chosen])
        outcomes: list[db.Change] = []
        launched: list[Tracked] = []
        ready = [(queued, gpus, rows[queued.id]) for queued, gpus in chosen if queued.id in rows]
        preempted = db.preemption_counts(self.store, [job.id for _, _, job in ready])
        held = self.credentials.environments([job.id for _, _, job in ready])
        specs = [
            launching.launch_spec(
                self.home,
                job,
                q,
                gpus,
                tokens[job.id],
                now,
                preempted=preempted.get(job.id, 0),
                start=self._start_details.get(job.id),
                kill_grace_s=self.config.kill_grace_s,
                log_cap_bytes=self.config.log_cap_bytes,
                as_owner=self.gate is not None,
                credentials=held.get(job.id),
            )
            for q, gpus, job in ready
        ]
        for (queued, gpus, job), result in zip(ready, self.executor.start_many(specs), strict=True):
            if isinstance(result, LaunchError):
                outcomes.append(
                    db.Change(
                        job.id,
                        Event.EXIT_FAILED,
                        str(result),
                        (JobState.STARTING,),
                        {"exit_code": 127},
                    )
                )
                continue
            if isinstance(result, Exception):  # no process: try again a little later
                self.log(f"job {job.id}: could not start ({result}); queued again")
                self._launch_paused_until = time.monotonic() + _RETRY_S
                self.wakeups.at("launch", self._launch_paused_until)
                reason = f"could not start ({result}); queued again"
                if isinstance(result, OSError) and result.errno in _NO_SPACE:
                    reason = full_message(self.home.state_db)  # tried again after a back-off
                    self._launch_paused_until = time.monotonic() + _NO_SPACE_RETRY_S
                    self.wakeups.at("launch", self._launch_paused_until)
                outcomes.append(db.Change(job.id, Event.REQUEUE, reason, (JobState.STARTING,)))
                continue
            start = self._start_details.pop(job.id, None)
            holding = launching.holding_at_start(
                queued, job, gpus, now, start, self.config.shares.by
            )
            deadline = now + job.time_limit if job.time_limit else None
            policy = stopping.policy_for(job, self.config.kill_grace_s)
            tracked = self._track(job.id, result, holding, deadline, policy)
            tracked.launch_committed = False
            launched.append(tracked)
        if self._debug_launch_delay_s:
            time.sleep(self._debug_launch_delay_s)
        for tracked in launched:
            outcomes.append(launching.launched_change(tracked.job_id, tracked.handle))
        try:
            db.apply_many(self.store, outcomes)
        except _WRITE_ERRORS as error:
            self.log(f"could not record {len(outcomes)} start(s) yet ({error}); retrying")
            return len(launched)
        for tracked in launched:
            tracked.launch_committed = True
        self._record_starts(launched)
        return len(launched)

    def _record_starts(self, launched: list[Tracked]) -> None:
        """What each job saw at its start, for reproducing it (`launching.record_starts`). Best
        effort: a failed write loses only this record."""
        started = {t.job_id: t.holding.gpu_indices for t in launched}
        try:
            launching.record_starts(self.store, self.gpus, self.gpu_names, started)
        except _WRITE_ERRORS as error:
            self.log(f"could not record what {len(started)} job(s) started with ({error})")

    def _commit_launches(self) -> None:
        """Record starts whose first write failed (starting -> running), all in one go."""
        pending = [t for t in self.tracked.values() if not t.launch_committed]
        if not pending:
            return
        try:
            db.apply_many(
                self.store, [launching.launched_change(t.job_id, t.handle) for t in pending]
            )
        except _WRITE_ERRORS as error:
            self.log(f"could not record {len(pending)} start(s) yet ({error}); retrying")
            return
        for tracked in pending:
            tracked.launch_committed = True

    # ---- the loop ----------------------------------------------------------------------

    def _slurm_job_ids(self) -> set[int]:
        """Jobs the Slurm executor looks after (the local scheduler leaves them alone)."""
        return {p.job_id for p in placement_db.slurm_placements(self.store)}

    def _slurm_tick(self) -> None:
        """Follow the jobs on Slurm: a tick every SLURM_POLL_S, which asks squeue only when
        its poll is due (executors/slurm_reconcile.Poll) or something must be done at once."""
        if self.slurm is not None:
            self.slurm.tick()
            self._next_slurm_tick = time.monotonic() + SLURM_POLL_S

    def _pass(self) -> None:
        self.passes += 1
        now = time.time()
        if self.slurm is not None or self._slurm_job_ids():
            if self.slurm is None:
                self.slurm = SlurmExecutor(
                    self.home, self.store, self.config, credentials=self.credentials
                )
            self.slurm.submit_ready()
        self._carry_out_intents(now)
        self._enforce_deadlines(now)
        self._schedule()
        retry_at = db.next_retry(self.store, time.time())
        if retry_at is not None:
            self.wakeups.at("retry", monotonic_at(retry_at))

    def _timeout(self) -> float:
        """Sleep until the next thing due: a sample, a kill deadline, a time limit, a retry."""
        if self._poll_soon or self._dirty:  # a pass is due now (e.g. a page that all started)
            return 0.0
        wait = min(
            1.0,
            self._next_sample - time.monotonic(),
            self._next_poll - time.monotonic(),
            self._next_deadline() - time.time(),
            self.wakeups.next() - time.monotonic(),
        )
        if self.slurm is not None:
            wait = min(wait, self._next_slurm_tick - time.monotonic())
        if self.records is not None and self.tracked:
            wait = min(wait, self.records.timeout())
        return max(0.0, wait)

    def run(self) -> None:
        """Start, then loop until SIGTERM/SIGINT/SIGHUP; jobs keep running after it returns."""
        self.start()
        try:
            self._guarded(self._pass)
            while not self.stopping:
                self._guarded(self._step)
        finally:
            self.stop()
        if self.home_gone:
            raise HomeGone(f"WORKBENCH_HOME {self.home.root} was removed; the daemon exited")

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run one step; an unexpected error is logged (never raised, even when the log cannot
        be written) instead of ending the supervisor: running jobs and the queue outlive a pass."""
        try:
            step()
        except Exception:
            try:
                detail = traceback.format_exc()
            except Exception:
                detail = "unexpected error (no traceback)"
            self.log(detail.rstrip())
            self._dirty = True
            time.sleep(0.2)

    def _step(self) -> None:
        """Sleep until something happens, then react: wake-ups, job exits, samples, deadlines.
        A scheduling pass runs only when something that can change a decision happened."""
        if self.home_watch.gone():
            self.log(f"WORKBENCH_HOME {self.home.root} was removed or replaced; exiting")
            self.home_gone = True
            self.stopping = True
            return
        exited: list[int] = []
        for key, _ in self.selector.select(self._timeout()):
            what, job_id = key.data
            if what == "wake":
                if self.wakes is not None and self.wakes.drain():
                    self._dirty = True
            elif what == "intake":
                if self.intake is not None and self.intake.take_all():
                    self._dirty = True
            elif what == "gate" and self.gate is not None:
                self.gate.accept_all()
            elif what == "exit":
                exited.append(job_id)
            elif what == "signal":
                try:
                    os.read(key.fd, 512)
                except BlockingIOError:
                    pass
        exited.extend(self._poll_soon)
        self._poll_soon.clear()
        if time.monotonic() >= self._next_poll:
            exited = list(self.tracked)  # a periodic look at every attempt (adopted, fd-less)
            self._next_poll = time.monotonic() + 5.0
        if exited:
            self._collect(exited)
        self._commit_launches()
        self._record_endings()
        if self.records is not None and self.tracked and self.records.due():
            self.records.follow(list(self.tracked))
        if time.monotonic() >= self._next_sample:
            self._sample()
        if self.team_settle is not None:
            self.team_settle.tick()
        if self.slurm is not None and time.monotonic() >= self._next_slurm_tick:
            self._slurm_tick()
        self._reread_config()
        if self.config.retention_jobs_s is not None and time.monotonic() >= self._next_prune:
            self._prune(self.config.retention_jobs_s)
        version = self.store.data_version(include_own=False)
        if version != self._last_version:
            self._last_version = version
            stamp = db.schedule_stamp(self.store)
            if stamp != self._last_stamp:
                self._last_stamp = stamp
                self._dirty = True
        if self.wakeups.take_due(time.monotonic()):
            self._dirty = True  # a back-off ended
        now = time.time()
        if self._dirty or db.retry_due(self.store, now):  # or a retry's back-off ended
            self._dirty = False
            self._pass()
        elif self._next_deadline() <= now:
            self._enforce_deadlines(now)

    def _prune(self, older_than_s: float) -> None:
        """Retention (`[retention] jobs`): remove ended jobs past the age, hourly."""
        self._next_prune = time.monotonic() + PRUNE_INTERVAL_S
        try:
            removed = prune_ended(self.store, self.home, older_than_s)
        except _WRITE_ERRORS as error:
            self.log(f"pruning ended jobs failed ({error}); trying again in an hour")
            return
        if removed:
            self.log(f"pruned {len(removed)} ended job(s) past the retention age")

    def stop(self) -> None:
        """Leave: running jobs keep running and are re-adopted by the next daemon."""
        self.log(
            f"stopping: {self.passes} scheduling passes,"
            f" {self.wakes.refused if self.wakes else 0} refused wake-ups,"
            f" {self.log_failures} log lines lost"
        )
        if self.intake is not None:
            self.intake.close()
        if self.gate is not None:
            self.gate.close()
        if self.team_settle is not None:
            self.team_settle.close()
        if self.wakes is not None:
            self.wakes.close()
        if self.gpus is not None:
            self.gpus.close()
        self.executor.close()
        self.store.close()
        if self._lock_fd >= 0:
            os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)


def serve(home: Home) -> int:
    """`workbench daemon run`: the supervisor in the foreground. A home that does not exist is
    not created (exit 3): a daemon started late, after its home was removed, must not bring it
    back."""
    try:
        if home.root.is_dir():  # its trust checked, its folders made; a missing one stays so
            home.ensure()
        daemon = Daemon(home, load_config(home.config))
        daemon.run()
    except Exception as error:  # the client that started us reads this from daemon.log
        try:
            print(f"workbench daemon: {error}", file=sys.stderr, flush=True)
        except Exception:
            pass
        return 3
    return 0
