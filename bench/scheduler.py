"""Scheduler benchmark: a seeded simulated working day on an 8-GPU node through our scheduler, a
FIFO first-fit baseline and a task-spooler-style free-memory threshold, in the same run; and the
time of one scheduling pass with 10,000 queued jobs.
Usage: python bench/scheduler.py [--quick] [--seeds N] [--only SCENARIO] [--tiny] [--week]
(--week: the team week of bench/week.py instead: 5 users' shares against FIFO and a static split.)

The day: many small fractional jobs (0.25 GPU, declared 10-20 GiB) submitted in sweeps, full-GPU
jobs and a few 4-GPU jobs, from two groups with quotas (vision 5 GPUs, sweep 3), submitted at a
rate that follows the hours of a working day (HOURLY), sized to a share of the box's GPU-hours
(SCENARIOS: 80% for the goals; 60%, 100% and the earlier uniform 112% day too). A job allocates
its GPU memory 30 s after it starts (what double-books GPUs under a free-memory test); a job that
finds its memory taken dies of OOM and is submitted again 5 minutes later. A preempted job stops
after a 30 s grace, keeps its progress (train checkpoints on SIGTERM) and pays 60 s to restart.
The same days also go through variants of ours (small jobs at a higher priority, no quotas), and
each policy's GPU-hours left idle while work waited are counted: what bounds the goals this day
does not meet.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import percentile, table, write_section

from workbench.queue import scheduler as sched

GIB = 1024**3
GPUS = 8
CARD = 80 * GIB
DAY = 24 * 3600.0
ALLOC_LAG = 30.0  # seconds from start until a job holds its memory
GRACE = 30.0  # SIGTERM -> exit, for a preempted job
RESTART = 60.0  # work a preempted job repeats (load, resume from checkpoint)
OOM_RESUBMIT = 300.0
NOTEBOOK = 8 * GIB  # held on GPU 7 all day by a process outside the queue
QUOTAS = {"vision": 5.0, "sweep": 3.0}
SIZES = ("small", "full", "4-gpu")


@dataclass
class SimJob:
    """One job of the simulated day; times in seconds from midnight, memory in bytes."""

    id: int
    group: str
    size: str
    gpus: float
    gpu_mem: int | None  # declared
    real_mem: int  # what it allocates, per GPU
    work: float  # seconds of work
    time_limit: float | None
    submitted: float
    remaining: float = 0.0
    first_start: float | None = None
    ended: float | None = None
    preemptions: int = 0
    ooms: int = 0
    queued_at: float = 0.0  # when it last entered the queue (FIFO order)


@dataclass
class Run:
    """A job on its GPUs; `token` tells this attempt's events from an earlier one's."""

    job: SimJob
    gpus: tuple[int, ...]
    started: float
    allocated: bool = False
    stopping_at: float | None = None
    token: int = 0


# The working day's shape: relative submission rate per hour of the day (0-23). Quiet night,
# a morning ramp, a daytime peak with a lunch dip, a tapering evening: the diurnal cycle GPU
# cluster traces show (Philly, Jeon et al., ATC 2019; Helios, Hu et al., SC 2021).
HOURLY = (0.2,) * 7 + (0.4, 0.7) + (1.0,) * 3 + (0.7,) + (1.0,) * 5 + (0.6, 0.5, 0.4) + (0.3,) * 3
# Expected GPU-seconds of one sweep, one full-GPU job and one 4-GPU job (the means of the
# distributions `make_day` draws from), to size a day to an offered load.
SWEEP_GPU_S = 30 * 0.25 * 1200
FULL_GPU_S = (1800 + 3 * 3600) / 2
BIG_GPU_S = 4 * (3600 + 4 * 3600) / 2
# The mix of one day (24 sweeps, 60 full-GPU jobs, 5 4-GPU jobs) offers this share of the box.
BASE_LOAD = (24 * SWEEP_GPU_S + 60 * FULL_GPU_S + 5 * BIG_GPU_S) / (GPUS * DAY)


@dataclass(frozen=True)
class Scenario:
    """How a day's work arrives: `load` the GPU-hours offered over those the box has in a day
    (expected; the realised load is reported), `diurnal` whether submissions follow HOURLY
    (else uniform over the day), `warmup` whether the day before is simulated too (its jobs
    arrive the same way), so the measured day starts with what the night left queued."""

    name: str
    load: float
    diurnal: bool
    warmup: bool


SCENARIOS = {
    "day": Scenario("working day, 80% offered", 0.8, True, True),
    "light": Scenario("working day, 60% offered", 0.6, True, True),
    "heavy": Scenario("working day, 100% offered", 1.0, True, True),
    "saturated": Scenario(
        "uniform arrivals, 112% offered (the earlier model)", BASE_LOAD, False, False
    ),
}


def make_day(seed: int, scenario: Scenario, scale: float = 1.0) -> list[SimJob]:
    """The seeded workload: arrival time, group, shape, declared and real memory, work. Times
    are seconds from the measured day's midnight (negative: the day before, with `warmup`)."""
    rng = random.Random(seed)
    jobs: list[SimJob] = []

    def add(t: float, group: str, size: str) -> None:
        if size == "small":
            declared = rng.choice((10, 16, 20)) * GIB
            job = SimJob(
                0,
                group,
                size,
                0.25,
                declared,
                int(declared * rng.uniform(0.7, 1.0)),
                rng.uniform(600, 1800),
                None,
                t,
            )
        elif size == "full":
            job = SimJob(
                0,
                group,
                size,
                1,
                None,
                rng.randint(30, 70) * GIB,
                rng.uniform(1800, 3 * 3600),
                None,
                t,
            )
        else:
            job = SimJob(
                0,
                group,
                size,
                4,
                None,
                rng.randint(40, 70) * GIB,
                rng.uniform(3600, 4 * 3600),
                None,
                t,
            )
        if rng.random() < 0.6:
            job.time_limit = job.work * rng.uniform(1.1, 2.0) + RESTART * 3
        jobs.append(job)

    def when(day_start: float) -> float:
        if not scenario.diurnal:
            return day_start + rng.uniform(0, DAY)
        hour = rng.choices(range(24), HOURLY)[0]
        return day_start + (hour + rng.random()) * 3600

    factor = scale * scenario.load / BASE_LOAD
    for day_start in (-DAY, 0.0) if scenario.warmup else (0.0,):
        for _ in range(round(24 * factor)):  # sweeps of small jobs
            t = when(day_start)
            for k in range(rng.randint(20, 40)):
                add(t + k, "sweep", "small")
        for _ in range(round(60 * factor)):
            add(when(day_start), rng.choice(("vision", "sweep")), "full")
        for _ in range(max(1, round(5 * factor))):
            add(when(day_start), "vision", "4-gpu")
    jobs.sort(key=lambda j: j.submitted)
    for number, job in enumerate(jobs, 1):
        job.id = number
        job.remaining = job.work
        job.queued_at = job.submitted
    return jobs


def offered(jobs: list[SimJob]) -> float:
    """GPU-seconds submitted within the measured day over those the box has in it."""
    return sum(j.gpus * j.work for j in jobs if 0 <= j.submitted < DAY) / (GPUS * DAY)


# ---- the three policies -------------------------------------------------------------------


@dataclass
class View:
    """What a policy sees: the clock, the queue in submit order, what runs, NVML's memory."""

    now: float
    queued: list[SimJob]
    running: dict[int, Run]
    nvml_used: list[int]  # bytes per GPU as NVML shows them (allocated jobs + the notebook)


Decision = tuple[list[tuple[int, tuple[int, ...]]], list[int]]  # (starts, preemptions)


def _share(view: View) -> list[float]:
    share = [0.0] * GPUS
    for run in view.running.values():
        for g in run.gpus:
            share[g] += min(run.job.gpus, 1.0)
    return share


def fifo_first_fit(view: View) -> Decision:
    """Strict FIFO: the oldest job first, on the first GPUs it fits (fractions packed by declared
    memory); when the head does not fit, nothing behind it starts."""
    share = _share(view)
    reserved = [NOTEBOOK if g == GPUS - 1 else 0 for g in range(GPUS)]
    for run in view.running.values():
        for g in run.gpus:
            reserved[g] += run.job.gpu_mem or (CARD if run.job.gpus >= 1 else 0)
    starts = []
    for job in view.queued:
        need = job.gpu_mem or 0
        if job.gpus >= 1:
            free = [g for g in range(GPUS) if share[g] == 0][: int(job.gpus)]
            if len(free) < job.gpus:
                break
            chosen = tuple(free)
        else:
            fit = [
                g for g in range(GPUS) if share[g] + job.gpus <= 1 and CARD - reserved[g] >= need
            ]
            if not fit:
                break
            chosen = (fit[0],)
        for g in chosen:
            share[g] += min(job.gpus, 1.0)
            reserved[g] += job.gpu_mem or (CARD if job.gpus >= 1 else 0)
        starts.append((job.id, chosen))
    return starts, []


def task_spooler(view: View) -> Decision:
    """task-spooler's GPU mode: FIFO; a GPU is free when NVML shows at least 90% of its memory
    free; a job takes ceil(gpus) free GPUs (it knows no fractions)."""
    free = [g for g in range(GPUS) if CARD - view.nvml_used[g] >= 0.9 * CARD]
    taken: set[int] = set()
    starts = []
    for job in view.queued:
        count = math.ceil(job.gpus)
        left = [g for g in free if g not in taken]
        if len(left) < count:
            break
        chosen = tuple(left[:count])
        taken.update(chosen)
        starts.append((job.id, chosen))
    return starts, []


def ours(
    settings: sched.Settings, priority: Callable[[SimJob], int] = lambda job: 0
) -> Callable[[View], Decision]:
    """Our scheduler through its public pure function, as the daemon calls it (with each job's
    recorded wait reason, so only changed reasons come back); `priority` is each job's
    `--priority` (0 for all: the day's users set none)."""
    reasons: dict[int, str] = {}

    def decide(view: View) -> Decision:
        slots = []
        for g in range(GPUS):
            ours_used = sum(
                r.job.real_mem for r in view.running.values() if g in r.gpus and r.allocated
            )
            other = max(0, view.nvml_used[g] - ours_used)
            others = (sched.OtherProcess(4242, NOTEBOOK),) if g == GPUS - 1 else ()
            slots.append(
                sched.GpuSlot(g, CARD, other, others=others, numa_node=g // 4, switch=g // 2)
            )
        res = sched.Resources(tuple(slots), 64, 0)
        holdings = [
            sched.Holding(
                r.job.id,
                r.job.group,
                r.gpus,
                r.job.gpus,
                r.job.gpu_mem,
                started_at=r.started,
                gpu_mem_seen=r.job.real_mem if r.allocated else None,
                time_limit=r.job.time_limit,
                stopping=r.stopping_at is not None,
            )
            for r in view.running.values()
        ]
        wants = [
            sched.Want(
                j.id,
                priority(j),
                j.group,
                j.gpus,
                j.gpu_mem,
                time_limit=j.time_limit,
                reason=reasons.get(j.id),
            )
            for j in view.queued
        ]
        starts, preempts = [], []
        for d in sched.plan(wants, holdings, {}, res, settings, view.now):
            if isinstance(d, sched.Start):
                starts.append((d.job_id, d.gpu_indices))
                reasons.pop(d.job_id, None)
            elif isinstance(d, sched.Wait):
                reasons[d.job_id] = d.reason
            elif isinstance(d, sched.Preempt):
                preempts.append(d.job_id)
        return starts, preempts

    return decide


# ---- the simulation -----------------------------------------------------------------------


@dataclass
class Outcome:
    """What one policy did with the day."""

    used_gpu_s: float = 0.0  # GPU-seconds held by running jobs (fractions by share) in the day
    wasted_gpu_s: float = 0.0  # of those, work done again: OOM-killed runs, restarts
    waits: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIZES})
    ooms: int = 0
    preemptions: int = 0
    share_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(QUOTAS, 0.0))
    starved_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(QUOTAS, 0.0))
    longest_starved_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(QUOTAS, 0.0))
    unfinished: int = 0
    # GPU-seconds of the day left unheld while at least one job waited in the queue: the room
    # head-of-line blocking, fragmentation and reservations cost, the most a better order of
    # the same jobs could have filled then
    idle_queued_gpu_s: float = 0.0
    # the longest a queued job within its group's quota waited while another group borrowed
    longest_job_starved_s: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(QUOTAS, 0.0)
    )


def simulate(
    jobs: list[SimJob], policy: Callable[[View], Decision], until: float = 3 * DAY
) -> Outcome:
    """Run the day through one policy (event by event) and measure it."""
    jobs = [SimJob(**{**j.__dict__}) for j in jobs]
    by_id = {j.id: j for j in jobs}
    out = Outcome()
    events: list[tuple[float, int, str, int, int]] = []
    seq = 0

    def push(t: float, kind: str, job_id: int, token: int = 0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, job_id, token))

    for job in jobs:
        push(job.submitted, "arrive", job.id)
    queued: dict[int, SimJob] = {}
    running: dict[int, Run] = {}
    mem = [NOTEBOOK if g == GPUS - 1 else 0 for g in range(GPUS)]
    last = 0.0
    starving_since: dict[str, float | None] = dict.fromkeys(QUOTAS)
    token = 0

    def account(now: float) -> None:
        span = min(max(now, 0.0), DAY) - min(max(last, 0.0), DAY)
        if span > 0:
            held = 0.0
            for run in running.values():
                units = run.job.gpus
                held += units
                out.used_gpu_s += units * span
                out.share_s[run.job.group] += units * span
            if queued:
                out.idle_queued_gpu_s += max(0.0, GPUS - held) * span

    def starving(now: float) -> None:
        """A group starves while it is under its quota, has a queued job within it, and another
        group holds more than its own quota (so the wait is the borrower's doing)."""
        usage = dict.fromkeys(QUOTAS, 0.0)
        for run in running.values():
            if run.stopping_at is None:
                usage[run.job.group] += run.job.gpus
        for group, quota in QUOTAS.items():
            borrowed = any(usage[g] > QUOTAS[g] + 1e-9 for g in QUOTAS if g != group)
            waiting = borrowed and any(
                j.group == group and usage[group] + j.gpus <= quota + 1e-9 for j in queued.values()
            )
            since = starving_since[group]
            if waiting and since is None:
                starving_since[group] = now
            elif not waiting and since is not None:
                spell = now - since
                if since < DAY and now > 0:  # a spell that overlaps the measured day
                    out.starved_s[group] += min(now, DAY) - max(since, 0.0)
                    out.longest_starved_s[group] = max(out.longest_starved_s[group], spell)
                starving_since[group] = None
        for job in queued.values():
            group = job.group
            eligible = usage[group] + job.gpus <= QUOTAS[group] + 1e-9 and any(
                usage[g] > QUOTAS[g] + 1e-9 for g in QUOTAS if g != group
            )
            since = job_since.get(job.id)
            if eligible and since is None:
                job_since[job.id] = now
            elif not eligible and since is not None:
                close(job, now)

    job_since: dict[int, float] = {}

    def close(job: SimJob, now: float) -> None:
        since = job_since.pop(job.id)
        if since < DAY and now > 0:
            longest = out.longest_job_starved_s
            longest[job.group] = max(longest[job.group], now - since)

    while events:
        now = events[0][0]
        if now > until:
            break
        account(now)
        last = now
        while events and events[0][0] == now:
            _, _, kind, job_id, tok = heapq.heappop(events)
            job = by_id[job_id]
            if kind == "arrive":
                job.queued_at = now
                queued[job.id] = job
            elif kind == "alloc":
                run = running.get(job_id)
                if run is None or run.token != tok:
                    continue
                if any(mem[g] + job.real_mem > CARD for g in run.gpus):
                    if now - ALLOC_LAG < DAY:
                        out.wasted_gpu_s += job.gpus * ALLOC_LAG
                    out.ooms += 1
                    job.ooms += 1
                    del running[job_id]
                    push(now + OOM_RESUBMIT, "arrive", job.id)
                    continue
                for g in run.gpus:
                    mem[g] += job.real_mem
                run.allocated = True
            elif kind in ("end", "stopped"):
                run = running.get(job_id)
                if run is None or run.token != tok:
                    continue
                del running[job_id]
                if run.allocated:
                    for g in run.gpus:
                        mem[g] -= job.real_mem
                if kind == "end":
                    job.ended = now
                else:
                    job.remaining = max(0.0, job.remaining - (now - run.started)) + RESTART
                    if now < DAY:
                        out.wasted_gpu_s += job.gpus * RESTART
                    queued[job.id] = job
        # Queue order: by when each job (re)entered the queue; a job resubmitted after an OOM
        # kill goes to the back, as a new submission does.
        view = View(
            now, sorted(queued.values(), key=lambda j: (j.queued_at, j.id)), running, list(mem)
        )
        starts, preempts = policy(view)
        for job_id in preempts:
            run = running[job_id]
            if run.stopping_at is None:
                run.stopping_at = now
                out.preemptions += 1
                by_id[job_id].preemptions += 1
                push(now + GRACE, "stopped", job_id, run.token)
        for job_id, gpus in starts:
            job = queued.pop(job_id)
            if job_id in job_since:
                close(job, now)
            token += 1
            running[job_id] = Run(job, gpus, now, token=token)
            if job.first_start is None:
                job.first_start = now
                if 0 <= job.submitted < DAY:  # the measured day's jobs
                    out.waits[job.size].append(now - job.submitted)
            push(now + ALLOC_LAG, "alloc", job_id, token)
            push(now + job.remaining, "end", job_id, token)
        starving(now)
    out.unfinished = sum(1 for j in jobs if j.ended is None)
    return out


# ---- decision time at 10,000 queued ---------------------------------------------------------


def decision_times(
    repeats: int,
) -> tuple[list[float], list[float], list[float], list[float], list[sched.Want]]:
    """One pass of our scheduler and of FIFO first-fit with 10,000 queued jobs on a full box:
    (ours wall-clock s, ours CPU s of this process, FIFO wall-clock s), per repeat; and ours'
    CPU s on a box full of one group's fractions, where the pass decides reclaims for the other
    group's jobs within its quota; and the 10,000 jobs."""
    rng = random.Random(7)
    wants = []
    sim = []
    for number in range(1, 10_001):
        size = rng.choices(SIZES, (8, 3, 1))[0]
        gpus = {"small": 0.25, "full": 1.0, "4-gpu": 4.0}[size]
        group = "sweep" if size == "small" else rng.choice(("vision", "sweep"))
        mem = 16 * GIB if size == "small" else None
        wants.append(sched.Want(number, rng.randint(0, 3), group, gpus, mem, time_limit=3600.0))
        sim.append(SimJob(number, group, size, gpus, mem, mem or 0, 3600, 3600, 0.0))
    slots = tuple(sched.GpuSlot(g, CARD, numa_node=g // 4, switch=g // 2) for g in range(GPUS))
    res = sched.Resources(slots, 64, 0)
    holdings = [
        sched.Holding(100_000 + g, "vision" if g < 5 else "sweep", (g,), 1.0, started_at=0.0)
        for g in range(GPUS)
    ]
    settings = sched.Settings(quotas=QUOTAS)
    running = {
        h.id: Run(SimJob(h.id, h.group, "full", 1, None, 0, 1, None, 0), h.gpu_indices, 0)
        for h in holdings
    }
    view = View(10.0, sim, running, [CARD] * GPUS)
    recorded = {
        d.job_id: d.reason
        for d in sched.plan(wants, holdings, {}, res, settings, 10.0)
        if isinstance(d, sched.Wait)
    }
    wants = [dataclasses.replace(w, reason=recorded.get(w.id)) for w in wants]
    # Sweep holds 28 quarters (7 GPUs' worth, 4 beyond its quota) spread over all 8 GPUs.
    fractions = [
        sched.Holding(200_000 + 4 * g + k, "sweep", (g,), 0.25, 16 * GIB, started_at=4 * g + k)
        for g in range(GPUS)
        for k in range(4 if g % 2 else 3)
    ]
    recorded = {
        d.job_id: d.reason
        for d in sched.plan(wants, fractions, {}, res, settings, 100.0)
        if isinstance(d, sched.Wait)
    }
    reclaiming = [dataclasses.replace(w, reason=recorded.get(w.id)) for w in wants]
    ours_s, ours_cpu_s, fifo_s, reclaim_cpu_s = [], [], [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        sched.plan(wants, holdings, {}, res, settings, 10.0)
        ours_s.append(time.perf_counter() - start)
        ours_cpu_s.append(time.process_time() - cpu)
        start = time.perf_counter()
        fifo_first_fit(view)
        fifo_s.append(time.perf_counter() - start)
        cpu = time.process_time()
        sched.plan(reclaiming, fractions, {}, res, settings, 100.0)
        reclaim_cpu_s.append(time.process_time() - cpu)
    return (
        ours_s,
        ours_cpu_s,
        fifo_s,
        reclaim_cpu_s,
        [dataclasses.replace(w, reason=None) for w in wants],
    )


# ---- report -------------------------------------------------------------------------------


def daemon_pass_times(wants: list[sched.Want], repeats: int) -> tuple[list[float], list[float]]:
    """The daemon's own pass with the same 10,000 jobs queued in a real store: the reads it makes
    (`first_batch`: the queue's head page, jobs with dependencies, the head of each group with a
    quota), the scheduler's input built from them (`wants_of`) and `plan`, on a full box and on
    the box full of fractions where it decides reclaims; CPU s of this process, per repeat. Each
    job's wait reason is recorded by a first pass, as the daemon records it."""
    import tempfile

    from workbench.daemon.planning import QUEUE_PAGE, wants_of
    from workbench.db import scheduling as db
    from workbench.db.store import JobRequest, Store
    from workbench.jobmodel.resources import Resources

    folder = Path(tempfile.mkdtemp(prefix="wb-sched-bench-"))
    store = Store.open(folder / "state.db")
    try:
        store.submit_many(
            [
                JobRequest(
                    f"job {w.id}",
                    "command",
                    {"argv": ["true"]},
                    "/",
                    {},
                    argv=["true"],
                    priority=w.priority,
                    group=w.group,
                    time_limit=w.time_limit,
                    resources=Resources(gpus=w.gpus, gpu_mem=w.gpu_mem),
                )
                for w in wants
            ]
        )
        slots = tuple(sched.GpuSlot(g, CARD, numa_node=g // 4, switch=g // 2) for g in range(GPUS))
        res = sched.Resources(slots, 64, 0)
        full = [
            sched.Holding(100_000 + g, "vision" if g < 5 else "sweep", (g,), 1.0, started_at=0.0)
            for g in range(GPUS)
        ]
        fractions = [
            sched.Holding(200_000 + 4 * g + k, "sweep", (g,), 0.25, 16 * GIB, started_at=4 * g + k)
            for g in range(GPUS)
            for k in range(4 if g % 2 else 3)
        ]
        settings = sched.Settings(quotas=QUOTAS)
        guaranteed = [g for g, quota in QUOTAS.items() if quota > 0]

        def one_pass(running: list[sched.Holding], record: bool) -> float:
            cpu = time.process_time()
            _, batch = db.first_batch(store, guaranteed, QUEUE_PAGE)
            decisions = sched.plan(wants_of(batch, ()), running, {}, res, settings, 100.0)
            spent = time.process_time() - cpu
            if record:
                db.set_reasons(
                    store, [(d.job_id, d.reason) for d in decisions if isinstance(d, sched.Wait)]
                )
            return spent

        full_s, reclaim_s = [], []
        one_pass(full, record=True)
        for _ in range(repeats):
            full_s.append(one_pass(full, record=False))
        one_pass(fractions, record=True)
        for _ in range(repeats):
            reclaim_s.append(one_pass(fractions, record=False))
        return full_s, reclaim_s
    finally:
        store.close()
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """`mean (min-max)` over seeds."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


POLICIES = ("ours", "FIFO first-fit", "task-spooler")


def policy(name: str) -> Callable[[View], Decision]:
    """A fresh policy (ours keeps the reasons it recorded, per simulated day)."""
    if name == "ours":
        return ours(sched.Settings(quotas=QUOTAS, start_grace_s=ALLOC_LAG * 2))
    return fifo_first_fit if name == "FIFO first-fit" else task_spooler


def run_scenario(
    scenario: Scenario, seeds: list[int], scale: float
) -> tuple[dict[str, list[Outcome]], list[float]]:
    """Every policy through the same seeded days, interleaved: ({policy: outcomes}, offered
    loads % per seed)."""
    results: dict[str, list[Outcome]] = {name: [] for name in POLICIES}
    loads = []
    names = list(POLICIES)
    for number, seed in enumerate(seeds):
        day = make_day(seed, scenario, scale)
        loads.append(100 * offered(day))
        rotated = names[number % len(names) :] + names[: number % len(names)]  # interleave
        for name in rotated:
            results[name].append(simulate(day, policy(name)))
        print(f"{scenario.name}, seed {seed}: {len(day)} jobs", file=sys.stderr)
    return results, loads


# What would move the goals that this day does not meet: the same days through variants of ours.
VARIANTS: dict[str, Callable[[], Callable[[View], Decision]]] = {
    "ours, small jobs at --priority 1": lambda: ours(
        sched.Settings(quotas=QUOTAS, start_grace_s=ALLOC_LAG * 2),
        lambda job: 1 if job.size == "small" else 0,
    ),
    "ours, no quotas": lambda: ours(sched.Settings(start_grace_s=ALLOC_LAG * 2)),
}


def run_variants(scenario: Scenario, seeds: list[int], scale: float) -> dict[str, list[Outcome]]:
    """The days of `run_scenario` (same seeds, so the same jobs) through each of VARIANTS."""
    results: dict[str, list[Outcome]] = {name: [] for name in VARIANTS}
    for seed in seeds:
        day = make_day(seed, scenario, scale)
        for name, make in VARIANTS.items():
            results[name].append(simulate(day, make()))
        print(f"{scenario.name}, seed {seed}: variants", file=sys.stderr)
    return results


def utilisation(results: dict[str, list[Outcome]]) -> dict[str, list[float]]:
    """GPU-hours used in the measured day over those available, % (per seed)."""
    return {n: [100 * o.used_gpu_s / (GPUS * DAY) for o in outs] for n, outs in results.items()}


def small_p95_ratio(
    results: dict[str, list[Outcome]], outcomes: list[Outcome] | None = None
) -> list[float]:
    """p95 wait of small jobs, ours (or `outcomes`, of the same days) over FIFO's (per seed)."""
    return [
        percentile(o.waits["small"], 95) / max(percentile(f.waits["small"], 95), 1e-9)
        for o, f in zip(outcomes or results["ours"], results["FIFO first-fit"], strict=True)
    ]


def idle_queued(outcomes: list[Outcome]) -> list[float]:
    """GPU-hours left unheld while a job waited, over those the box has in the day, % (per
    seed)."""
    return [100 * o.idle_queued_gpu_s / (GPUS * DAY) for o in outcomes]


def verdict(values: list[float], ok: Callable[[float], bool]) -> str:
    """`met` / `not met`, with on how many seeds it holds."""
    held = sum(1 for v in values if ok(v))
    word = "met" if held == len(values) else "not met"
    return f"{word} ({held} of {len(values)} seeds)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="two seeds, a lighter day")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--only", choices=sorted(SCENARIOS), help="one scenario, printed, RESULTS.md untouched"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke test: one seed of the --quick day only, 2 pass repeats, RESULTS.md untouched",
    )
    parser.add_argument(
        "--week",
        action="store_true",
        help="the team week instead (bench/week.py): shares vs FIFO vs a static split",
    )
    args = parser.parse_args()
    if args.week:
        import week

        seeds = [0] if args.tiny else list(range(args.seeds))
        days, tick = (1.0, 300.0) if args.tiny else (7.0, 60.0)
        body = week.report(seeds, days, tick, args.tiny)
        if not args.tiny:
            write_section(
                "scheduler: team week",
                f"python bench/scheduler.py --week --seeds {args.seeds}",
                body,
            )
        return
    seeds = [0] if args.tiny else list(range(2 if args.quick else args.seeds))
    scale = 0.5 if args.quick or args.tiny else 1.0
    loadavg = [os.getloadavg()[0]]
    runs = {}
    for key, scenario in SCENARIOS.items():
        if args.only in (None, key) and not (args.tiny and key != "day"):
            runs[key] = run_scenario(scenario, seeds, scale)
            loadavg.append(os.getloadavg()[0])
    main_key = args.only or "day"
    results, loads = runs[main_key]
    variants = run_variants(SCENARIOS[main_key], seeds, scale)
    loadavg.append(os.getloadavg()[0])
    util = utilisation(results)
    useful = {
        n: [100 * (o.used_gpu_s - o.wasted_gpu_s) / (GPUS * DAY) for o in outs]
        for n, outs in results.items()
    }
    rows = []
    for name, outs in results.items():
        row = [name, spread(util[name]), spread(useful[name]), spread(idle_queued(outs))]
        for size in SIZES:
            means = [statistics.mean(o.waits[size]) / 60 for o in outs if o.waits[size]]
            p95s = [percentile(o.waits[size], 95) / 60 for o in outs if o.waits[size]]
            row.append(f"{spread(means, '{:.0f}')} / {spread(p95s, '{:.0f}')}")
        row.append(spread([float(o.ooms) for o in outs], "{:.0f}"))
        row.append(spread([float(o.preemptions) for o in outs], "{:.0f}"))
        rows.append(row)
    main_table = table(
        [
            "policy",
            "GPU util % (used)",
            "useful %",
            "idle, work queued %",
            "small wait min: mean / p95",
            "full-GPU wait min",
            "4-GPU wait min",
            "OOM kills",
            "preemptions",
        ],
        rows,
    )
    gains = [u - f for u, f in zip(util["ours"], util["FIFO first-fit"], strict=True)]
    small_ratio = small_p95_ratio(results)
    group_spell = [o.longest_starved_s["vision"] for o in results["ours"]]
    job_spell = [max(o.longest_job_starved_s.values()) for o in results["ours"]]
    per_seed = table(
        [
            "seed",
            "offered %",
            "util ours / FIFO / task-spooler %",
            "small p95 ours / FIFO",
            "vision: longest spell / longest job wait under quota s",
        ],
        [
            [
                str(seed),
                f"{loads[i]:.0f}",
                " / ".join(f"{util[n][i]:.1f}" for n in POLICIES),
                f"{small_ratio[i]:.2f}",
                f"{group_spell[i]:.0f} / {results['ours'][i].longest_job_starved_s['vision']:.0f}",
            ]
            for i, seed in enumerate(seeds)
        ],
    )
    share_rows = []
    for name, outs in results.items():
        for group, quota in QUOTAS.items():
            share_rows.append(
                [
                    name,
                    group,
                    f"{quota:g}",
                    spread([o.share_s[group] / DAY for o in outs], "{:.2f}"),
                    spread([o.starved_s[group] / 60 for o in outs], "{:.0f}"),
                    spread([o.longest_starved_s[group] for o in outs], "{:.0f}"),
                    spread([o.longest_job_starved_s[group] for o in outs], "{:.0f}"),
                ]
            )
    share_table = table(
        [
            "policy",
            "group",
            "quota",
            "mean GPUs held",
            "min under quota, work waiting, other borrowing",
            "longest such spell s",
            "longest one job waited so s",
        ],
        share_rows,
    )
    scenario_rows = []
    for key, (res_k, loads_k) in runs.items():
        util_k = utilisation(res_k)
        gain_k = [u - f for u, f in zip(util_k["ours"], util_k["FIFO first-fit"], strict=True)]
        scenario_rows.append(
            [
                SCENARIOS[key].name,
                spread(loads_k, "{:.0f}"),
                " / ".join(f"{statistics.mean(util_k[n]):.1f}" for n in POLICIES),
                spread(gain_k),
                spread(small_p95_ratio(res_k), "{:.2f}"),
                spread([o.longest_starved_s["vision"] for o in res_k["ours"]], "{:.0f}"),
                spread([max(o.longest_job_starved_s.values()) for o in res_k["ours"]], "{:.0f}"),
            ]
        )
    scenario_table = table(
        [
            "day",
            "offered %",
            "util ours / FIFO / t-s %",
            "ours - FIFO points",
            "small p95 ours / FIFO",
            "vision longest spell s",
            "longest job wait under quota s",
        ],
        scenario_rows,
    )
    fifo = results["FIFO first-fit"]
    variant_rows = []
    for name, outs in (("ours", results["ours"]), *variants.items(), ("FIFO first-fit", fifo)):
        variant_rows.append(
            [
                name,
                spread(utilisation({name: outs})[name]),
                spread(idle_queued(outs)),
                spread(small_p95_ratio(results, outs), "{:.2f}"),
                *(
                    spread([percentile(o.waits[size], 95) / 60 for o in outs], "{:.0f}")
                    for size in SIZES
                ),
                spread([o.longest_job_starved_s["vision"] for o in outs], "{:.0f}"),
            ]
        )
    variant_table = table(
        [
            "policy",
            "GPU util %",
            "idle, work queued %",
            "small p95 / FIFO's",
            "small p95 min",
            "full-GPU p95 min",
            "4-GPU p95 min",
            "vision: longest job wait under quota s",
        ],
        variant_rows,
    )
    fifo_idle = idle_queued(fifo)
    ours_idle = idle_queued(results["ours"])
    first = "ours, small jobs at --priority 1"
    first_ratio = small_p95_ratio(results, variants[first])
    full_p95 = {
        name: [percentile(o.waits["full"], 95) / 60 for o in outs]
        for name, outs in (("ours", results["ours"]), (first, variants[first]))
    }
    no_quota_ratio = small_p95_ratio(results, variants["ours, no quotas"])
    if args.only:
        print(main_table, per_seed, share_table, scenario_table, variant_table, sep="\n\n")
        print(f"gain {spread(gains)}; small p95 ratio {spread(small_ratio, '{:.2f}')}")
        return
    repeats = 2 if args.tiny else 10 if args.quick else 40
    ours_s, ours_cpu_s, fifo_s, reclaim_cpu_s, queued = decision_times(repeats)
    daemon_full_s, daemon_reclaim_s = daemon_pass_times(queued, repeats)
    daemon_full_ms = [t * 1000 for t in daemon_full_s]
    daemon_reclaim_ms = [t * 1000 for t in daemon_reclaim_s]
    loadavg.append(os.getloadavg()[0])
    ours_ms = [t * 1000 for t in ours_s]
    cpu_ms = [t * 1000 for t in ours_cpu_s]
    reclaim_ms = [t * 1000 for t in reclaim_cpu_s]
    fifo_ms = [t * 1000 for t in fifo_s]
    grace_ok: Callable[[float], bool] = lambda v: v <= GRACE + 1e-6  # noqa: E731
    saturated_note = ""
    if "saturated" in runs:
        fifo_sat = runs["saturated"][0]["FIFO first-fit"]
        saturated_note = (
            f"\n  Where the box is saturated all day (the earlier model), FIFO uses"
            f" {spread(utilisation({'f': fifo_sat})['f'])}%\n  and leaves"
            f" {spread(idle_queued(fifo_sat))}% idle with work queued."
        )
    body = f"""
A seeded simulated working day ({len(seeds)} seeds; mean, and min-max over seeds, in brackets)
on 8 x 80 GiB GPUs (two NUMA nodes, pairs under one PCIe switch; 8 GiB held on GPU 7 by a
process outside the queue), through our scheduler (`workbench.queue.scheduler.plan`, called at
every event as the daemon does), a strict FIFO first-fit baseline (jobs start only in queue
order: when the head does not fit, nothing behind it starts; a fraction goes on the first GPU
where its declared memory fits) and a task-spooler-style free-memory test (a GPU is free when
NVML shows >= 90% of its memory free), in the same run, interleaved. Load average on
{os.cpu_count()} cores while it ran: {min(loadavg):.1f}-{max(loadavg):.1f} (the day is simulated:
the load changes only the pass times below).

**The day.** Submissions follow a working day: relative rate per hour 0.2 from midnight to
07:00, 0.4 and 0.7 over 07-09, 1.0 over 09-12 and 13-18 with 0.7 at lunch, then 0.6, 0.5, 0.4
and 0.3 from 21:00 (the diurnal cycle GPU cluster traces show: Philly, Jeon et al., ATC 2019;
Helios, Hu et al., SC 2021). The day before is simulated the same way, so the measured day
starts with what its night left queued. Each day: sweeps of 20-40 jobs of 0.25 GPU (declaring
10-20 GiB, 10-30 min each) submitted together, full-GPU jobs (0.5-3 h) from both groups, and a
few 4-GPU jobs (1-4 h) from vision; groups vision (quota 5 GPUs) and sweep (quota 3). The day
is sized to offer 80% of the box's GPU-hours (realised per seed below): the daytime peak offers
about 1.4 times what the box can do, the night about a third. Jobs allocate their memory 30 s
after they start; a job that then finds no room dies of OOM and is resubmitted 5 min later, at
the back of the queue. 60% of jobs carry a time limit (1.1-2x their run time); the rest are
estimated at 1 h for backfill. A preempted job stops after a 30 s grace, keeps its progress
(train checkpoints on SIGTERM) and does 60 s of work again.

**Why the model changed.** The earlier model submitted 112% of the box's GPU-hours, uniformly
over the day. A box offered more work than it can do in a day has a queue that grows day after
day: every policy ran with hours of backlog from morning on, so any policy that keeps GPUs busy
saturates the box, FIFO's head-of-line blocking cannot show, and waits measure the backlog.
Real days vary (bursts of sweeps, a daytime peak, a quiet night); the day is now shaped as above
and sized to a load a box can sustain. Its parameters were set before our scheduler was run on
it and not changed after; 60% and 100% offered, and the earlier model itself, are reported too.

{main_table}

Used counts GPU-hours held by running jobs over those the box has in the day (fractions by
share); useful leaves out work done again (OOM-killed starts, the 60 s a preempted job
repeats). Offered: GPU-hours submitted in the day over those the box has. Per seed:

{per_seed}

**Goals** (this day):

- Utilisation at least 15 points above FIFO: {verdict(gains, lambda v: v >= 15)}; ours minus
  FIFO = {spread(gains)} points. What a scheduler can win from FIFO in a day is the room FIFO
  leaves unheld while work waits (head-of-line blocking, fragmentation), plus work moved across
  midnight: FIFO left {spread(fifo_idle)}% of the day's GPU-hours idle with work queued, ours
  {spread(ours_idle)}%. So on this mix no order of the same jobs can be 15 points above FIFO:
  that would take FIFO idling 15% of the box with work queued, a mix with far more multi-GPU
  jobs than "a few" (FIFO packs fractions by declared memory as we do, and only the 4-GPU jobs
  make the box drain while they wait at the head). On a day the box can sustain, every policy
  that keeps up does the work offered.{saturated_note}
- p95 wait of small jobs at most half of FIFO's: {verdict(small_ratio, lambda v: v <= 0.5)};
  ours / FIFO = {spread(small_ratio, "{:.2f}")}. Small jobs wait out the daytime backlog (the
  peak offers 1.4 times the box) under every order; an order shifts that wait between sizes
  but cannot remove it. The variants below, on the same days: with every small job first
  (sweeps submitted at `--priority 1`, the lever a user has; the issue's rules keep priority,
  then age) small jobs' p95 is {spread(first_ratio, "{:.2f}")} of FIFO's
  ({verdict(first_ratio, lambda v: v <= 0.5)}), while full-GPU jobs' p95 goes from
  {spread(full_p95["ours"], "{:.0f}")} to {spread(full_p95[first], "{:.0f}")} min; without
  quotas it is {spread(no_quota_ratio, "{:.2f}")}: vision's guarantee is not what makes small
  jobs wait.
- No group under its quota longer than the preemption grace ({GRACE:.0f} s), counted per
  job: {verdict(job_spell, grace_ok)}; a job within its group's quota waited at most
  {spread(job_spell, "{:.0f}")} s while another group borrowed. Counted per group:
  {verdict(group_spell, grace_ok)}; vision's longest spell under its quota with work waiting
  and sweep borrowing was {spread(group_spell, "{:.0f}")} s. A spell outlasts one job's wait
  when another job of the group arrives during it and needs its own reclaim and grace.
- One scheduling pass under 5 ms with 10,000 queued: see below.

The same days through variants of ours (p95 waits; idle: GPU-hours left unheld while a job
waited, over the day's):

{variant_table}

Each group's share against its quota (a spell counts while the group is under its quota with a
job within it waiting and another group holds more than its own quota; the last column is the
longest one such job waited):

{share_table}

The same comparison on other days (5 seeds each unless `--quick`; means, min-max in brackets):

{scenario_table}

One scheduling pass with 10,000 queued jobs (mixed shapes, two groups with quotas, each job's
wait reason as recorded by the previous pass, as the daemon passes it) on a full box, ours:
wall-clock fastest {min(ours_ms):.1f} ms, median {statistics.median(ours_ms):.1f} ms, p95
{percentile(ours_ms, 95):.1f} ms; CPU time of the pass (this process only, so other processes'
share of the cores is left out) median {statistics.median(cpu_ms):.1f} ms, p95
{percentile(cpu_ms, 95):.1f} ms. Goal under 5 ms: {
        "met" if statistics.median(cpu_ms) < 5 else "not met"
    } by the CPU time's median, {"met" if statistics.median(ours_ms) < 5 else "not met"} by the
wall-clock median. FIFO first-fit, which stops at the first job that does not fit: median
{statistics.median(fifo_ms):.3f} ms. A pass that decides reclaims costs more: on a box full of
one group's fractions (28 quarters over the 8 GPUs, 4 GPUs' worth beyond its quota), with the
same 10,000 queued (reasons as a pass on that box recorded them), the pass preempting for the other group's
jobs within its quota took CPU time median {statistics.median(reclaim_ms):.1f} ms, p95
{percentile(reclaim_ms, 95):.1f} ms: {"under" if statistics.median(reclaim_ms) < 5 else "over"}
5 ms at the median, {"under" if percentile(reclaim_ms, 95) < 5 else "over"} it at the p95.
{len(ours_ms)} interleaved repeats; load average {loadavg[-1]:.1f} on {os.cpu_count()} cores
when they ended. Pass times here vary by up to twice from run to run with what else runs on
the two cores: compare figures within one run. These are `plan` over all 10,000 at once. The
daemon plans the queue's head 128 jobs at a time in scheduling order (reading on only while
jobs start), with every queued job that has dependencies and the first 128 of each group with
a quota. Its own pass with the same 10,000 jobs queued in a real state.db (those reads, the
scheduler's input built from them, and `plan`; CPU time, {len(daemon_full_ms)} repeats): on the
full box median {statistics.median(daemon_full_ms):.1f} ms, p95
{percentile(daemon_full_ms, 95):.1f} ms; deciding reclaims on the box full of fractions median
{statistics.median(daemon_reclaim_ms):.1f} ms, p95 {percentile(daemon_reclaim_ms, 95):.1f} ms.
Goal under 5 ms for the daemon's decision: {
        "met"
        if percentile(daemon_reclaim_ms, 95) < 5 and percentile(daemon_full_ms, 95) < 5
        else "not met"
    } (both p95s).

Checks against a real driver (NVML figures, `CUDA_VISIBLE_DEVICES` honoured, two fractional
train jobs sharing one GPU within their caps, bf16 autocast, ONNX Runtime's CUDA provider) are
one prepared script, `python bench/gpu_check.py --write` (section "GPU check"); its plumbing
runs here against the simulated driver (`--fake`, in the tests). No GPU machine was lent to
this work, so it has not met a real driver and the GPU memory cap
(`torch.cuda.set_per_process_memory_fraction`) is exercised only through its environment
variable here.
"""
    print(body)
    if args.tiny:
        return
    write_section(
        "Scheduler", "python bench/scheduler.py" + (" --quick" if args.quick else ""), body
    )


if __name__ == "__main__":
    main()
