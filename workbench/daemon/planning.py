"""A scheduling pass: which queued jobs the scheduler (`workbench.queue.scheduler.plan`, a pure
function) is shown, and what is done with its decisions.

A pass must see every job that could start now, whatever waits before it, at a cost that does
not grow with the jobs that cannot. So a job found waiting is marked with what it waits on
(`jobs.blocked_on`, migration 20) and skipped by index until that can have changed:

- `deps`: a dependency has not ended as the job needs. A trigger clears the mark when any of its
  dependencies changes state or is removed, and the next pass reads the job again.
- `fit`: resources (GPUs, CPUs, memory), its group's cap, drain mode. Every pass re-reads the
  head page of each distinct shape of such jobs (what it asks for, of which group: see
  `scheduler.Want.shape`): jobs of one shape wait for the same reason, so the head speaks for
  the rest, and a page that all starts asks for another pass at once.

Unmarked jobs (new, queued again, a dependency moved, a priority changed) are all read, once:
each either starts, ends (blocked, refused) or is marked. A held (paused) job is not queued, so
it is never read."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping

from workbench.config import Config, group_quotas
from workbench.db import scheduling as db
from workbench.db.store import Store
from workbench.jobmodel.states import Event, JobState
from workbench.queue import scheduler
from workbench.queue.accounts import account_of

QUEUE_PAGE = 128  # jobs of one waiting shape re-read per pass; more pages while they all start

Starts = list[tuple[db.QueuedJob, tuple[int, ...]]]


def wants_of(
    batch: list[db.QueuedJob], not_preemptible: Iterable[str], by: str = ""
) -> list[scheduler.Want]:
    """Queued jobs as the scheduler takes them; jobs of a group in `not_preemptible`
    (`[groups.NAME] preemptible = false`) are never preempted; each counts against its
    account (`accounts.account_of`: its owner's user name with shares by user)."""
    kept = set(not_preemptible)
    return [
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
            mig_profile=j.mig_profile,
            preemptible=j.preemptible and j.group not in kept,
            time_limit=j.time_limit,
            account=account_of(by, j.group, j.uid),
            reason=j.reason,
        )
        for j in batch
    ]


def settings_of(
    config: Config, store: Store, usage: Mapping[str, float] | None = None
) -> scheduler.Settings:
    """The scheduler's settings as config.toml and the store (drain, `workbench group`) say now;
    `usage` is each account's decayed GPU-hours (the usage ledger), for fair share."""
    shares = config.shares
    quotas = group_quotas(config, store)
    by_account = dict(shares.shares)
    if shares.by == "group":  # `workbench group NAME --quota G` sets the deserved quota too
        for group, quota in quotas.items():
            by_account[group] = dataclasses.replace(
                by_account.get(group, scheduler.Share()), deserved=quota
            )
    return scheduler.Settings(
        drain=store.draining,
        group_limits={**config.group_parallel, **store.group_limits()},
        default_parallel=config.default_parallel,
        quotas=quotas,
        start_grace_s=config.start_grace_s,
        default_runtime_s=config.default_runtime_s,
        backfill_depth=config.backfill_depth,
        strict=config.strict,
        shares=by_account if shares.by else {},
        default_share=shares.default if shares.by else None,
        accounts=shares.by or "group",
        usage=dict(usage or {}),
        usage_k=shares.usage_k,
        min_runtime_s=shares.min_runtime_s,
        reclaim_idle=shares.reclaim_idle,
        departments=shares.departments if shares.by else {},
        department_of=shares.department_of if shares.by else {},
    )


class Planner:
    """Runs scheduling passes for one daemon. `holdings()` gives what running jobs hold;
    `launch(starts)` starts jobs (returns how many began); `reclaim(decision, now)` preempts a
    job or reports one over its GPU memory reservation. `start_details` receives each start's
    decision (MIG devices, GPU memory cap) by job id before `launch` is called; `usage` gives
    each account's decayed GPU-hours for fair share (the usage ledger)."""

    def __init__(
        self,
        store: Store,
        holdings: Callable[[], list[scheduler.Holding]],
        launch: Callable[[Starts], int],
        reclaim: Callable[[scheduler.Preempt | scheduler.Exceeds, float], None],
        start_details: dict[int, scheduler.Start],
        usage: Callable[[], Mapping[str, float]] | None = None,
        lacking: Callable[[list[int]], set[int]] | None = None,
    ):
        self.store = store
        # Marks the jobs among the ids that lack their credentials and returns their ids:
        # they are left out of the pass (workbench.daemon.credentials).
        self.lacking = lacking
        self.usage = usage  # each account's decayed GPU-hours (the usage ledger), or None
        self.holdings = holdings
        self.launch = launch
        self.reclaim = reclaim
        self.start_details = start_details
        self._fresh = True  # a new daemon: marks an earlier one set may no longer hold
        self.last_read = 0  # queued jobs the last pass read (the bench reports it)

    def run(self, config: Config, resources: scheduler.Resources) -> bool:
        """One pass: read what could start, plan, launch, record reasons and marks. True when
        a shape's head page all started, so another pass should follow at once."""
        store = self.store
        if self._fresh:
            db.clear_marks(store, db.FIT)
            self._fresh = False
        settings = settings_of(config, store, self.usage() if self.usage else None)
        now = time.time()
        mark = db.events_mark(store)  # before the dependencies' states are read
        batch = db.startable(store, now)
        unmarked = {j.id for j in batch}
        full_pages: list[set[int]] = []
        for shape in db.unfit_shapes(store):
            page = db.shape_head(store, shape, QUEUE_PAGE, now)
            batch.extend(j for j in page if j.id not in unmarked)
            if len(page) == QUEUE_PAGE:
                full_pages.append({j.id for j in page})
        if self.lacking is not None and batch:
            waiting = self.lacking([j.id for j in batch])
            batch = [j for j in batch if j.id not in waiting]
        self.last_read = len(batch)
        started = self._plan(batch, unmarked, resources, settings, config, mark)
        return any(page <= started for page in full_pages)

    def _plan(
        self,
        batch: list[db.QueuedJob],
        unmarked: set[int],
        resources: scheduler.Resources,
        settings: scheduler.Settings,
        config: Config,
        mark: int,
    ) -> set[int]:
        """Plan `batch` against what runs; launch the starts; write reasons, and marks for the
        jobs in `unmarked` that wait. Returns the ids started."""
        store = self.store
        dep_ids = {d for j in batch for d, _ in j.deps}
        dep_states = {k: str(v) for k, v in store.states_of(dep_ids).items()} if dep_ids else {}
        wants = wants_of(batch, config.not_preemptible, config.shares.by)
        by_id = {j.id: j for j in batch}
        starts: Starts = []
        settled: set[int] = set()
        reasons: list[tuple[int, str | None]] = []
        now = time.time()
        self.start_details.clear()
        for decision in scheduler.plan(
            wants, self.holdings(), dep_states, resources, settings, now
        ):
            if isinstance(decision, scheduler.Preempt | scheduler.Exceeds):
                self.reclaim(decision, now)
                continue
            job = by_id[decision.job_id]
            if isinstance(decision, scheduler.Start):
                self.start_details[job.id] = decision  # MIG devices, GPU memory cap
                starts.append((job, decision.gpu_indices))
            elif isinstance(decision, scheduler.Wait):
                if job.reason != decision.reason:
                    reasons.append((job.id, decision.reason))
            elif isinstance(decision, scheduler.Block):
                settled.add(job.id)
                store.transition(job.id, Event.BLOCK, decision.reason, only_from=[JobState.QUEUED])
            elif isinstance(decision, scheduler.Fail):
                settled.add(job.id)
                store.transition(job.id, Event.REFUSE, decision.reason, only_from=[JobState.QUEUED])
        self.launch(starts)
        started = {job.id for job, _ in starts}
        marks = [
            (
                want.id,
                db.DEPS if scheduler.waits_on_dependencies(want, dep_states) else db.FIT,
            )
            for want in wants
            if want.id in unmarked and want.id not in started and want.id not in settled
        ]
        db.record_waits(store, reasons, marks, mark)
        return started
