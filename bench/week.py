"""Team week: 5 users on 8 GPUs with bursty, seeded arrivals, run through the real pure planning
function (`workbench.queue.scheduler.plan`) with shares (deserved quota, weight, fair share from
decayed usage, reclaim after the min runtime), against FIFO (the same function without shares:
first come, with backfill) and a static split (each user alone on their own GPUs: 2, 2, 2, 1, 1;
8/5 each on average, whole GPUs) on the same days.

Figures: GPU utilisation; Jain's fairness index of each user's GPU-hours against their
entitlement (at every tick, the max-min fair division of the 8 GPUs by deserved quota and
weight among what users want, `scheduler.fair_shares` without usage, summed over the week);
p95 wait per user (submit to first start); and the longest time any user held less than their
deserved quota while a job of theirs that fits within it waited. A preempted job keeps its
progress (it checkpoints), stops at the next tick and pays RESTART_S to resume.
Run by `python bench/scheduler.py --week [--tiny]`."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from workbench.queue import scheduler as sched

GIB = 1024**3
GPUS = 8
DAY = 86400.0
USERS = ("ana", "ben", "chen", "dara", "eli")
DESERVED = {"ana": 2.0, "ben": 2.0, "chen": 2.0, "dara": 1.0, "eli": 1.0}
# Mean bursts a day and jobs per burst: ana is the heavy user, eli the light one.
BURSTS = {"ana": (3.0, 16), "ben": (2.0, 8), "chen": (1.5, 8), "dara": (2.0, 5), "eli": (1.0, 4)}
MIN_RUNTIME_S = 900.0
RESTART_S = 60.0
HALF_LIFE_S = DAY


@dataclass
class Job:
    """One job: `work_s` seconds of running left, `gpus` whole GPUs, times in seconds."""

    id: int
    user: str
    gpus: float
    submit: float
    work_s: float
    first_start: float | None = None
    started: float = 0.0
    gpu_indices: tuple[int, ...] = ()
    stopping: bool = False


def make_week(seed: int, days: float) -> list[Job]:
    """Bursts per user (a Poisson number a day, at random times), each of several jobs
    submitted within 30 minutes: 1 GPU (2 GPUs for a fifth of the jobs of users who deserve
    2), run times log-normal around 1.5 h, from 10 minutes to 10 hours."""
    rng = random.Random(seed)
    jobs: list[Job] = []
    for user in USERS:
        rate, size = BURSTS[user]
        t = rng.expovariate(rate / DAY)
        while t < days * DAY:
            for _ in range(max(1, int(rng.gauss(size, size / 3)))):
                gpus = 2.0 if DESERVED[user] >= 2 and rng.random() < 0.2 else 1.0
                work = min(max(rng.lognormvariate(math.log(5400), 0.8), 600.0), 36000.0)
                jobs.append(Job(0, user, gpus, t + rng.uniform(0, 1800), work))
            t += rng.expovariate(rate / DAY)
    jobs.sort(key=lambda j: j.submit)
    for number, job in enumerate(jobs, 1):
        job.id = number
    return jobs


@dataclass
class Outcome:
    """One policy's week: utilisation %, Jain's index, p95 wait per user (s), longest spell
    below deserved per user (s), preemptions, offered load %."""

    util: float
    jain: float
    p95_wait: dict[str, float]
    longest_below: dict[str, float]
    preemptions: int
    offered: float
    gpu_hours: dict[str, float] = field(default_factory=dict)


def share_settings() -> sched.Settings:
    return sched.Settings(
        shares={u: sched.Share(DESERVED[u]) for u in USERS},
        default_share=sched.Share(),
        accounts="user",
        min_runtime_s=MIN_RUNTIME_S,
    )


def _slots(indices: range | tuple[int, ...]) -> tuple[sched.GpuSlot, ...]:
    return tuple(sched.GpuSlot(i, 80 * GIB) for i in indices)


def simulate(policy: str, week: list[Job], days: float, tick: float) -> Outcome:
    """Run one policy ("shares", "FIFO" or "static split") over a copy of `week`."""
    jobs = [Job(j.id, j.user, j.gpus, j.submit, j.work_s) for j in week]
    pending = list(jobs)  # by submit time
    queued: dict[int, Job] = {}
    running: dict[int, Job] = {}
    horizon = days * DAY
    shares = share_settings()
    fair_base = share_settings()  # entitlement: deserved and weights, no usage
    usage = {u: 0.0 for u in USERS}
    got = {u: 0.0 for u in USERS}
    entitled = {u: 0.0 for u in USERS}
    below_since: dict[str, float | None] = {u: None for u in USERS}
    longest = {u: 0.0 for u in USERS}
    preemptions = 0
    busy = 0.0
    static: dict[str, tuple[int, ...]] = {}
    start = 0
    for user in USERS:
        count = int(DESERVED[user])
        static[user] = tuple(range(start, start + count))
        start += count
    decay = 2 ** (-tick / HALF_LIFE_S)
    t = 0.0
    while t < horizon:
        for job in list(running.values()):  # preempted last tick: back to the queue
            if job.stopping:
                del running[job.id]
                job.stopping = False
                job.work_s += RESTART_S
                queued[job.id] = job
        while pending and pending[0].submit <= t:
            job = pending.pop(0)
            queued[job.id] = job
        wants = [
            sched.Want(j.id, gpus=j.gpus, account=j.user)
            for j in sorted(queued.values(), key=lambda j: j.id)
        ]
        held = [
            sched.Holding(
                j.id,
                gpu_indices=j.gpu_indices,
                gpus=j.gpus,
                started_at=j.started,
                stopping=j.stopping,
                account=j.user,
            )
            for j in running.values()
        ]
        decisions: list[sched.Decision] = []
        if policy == "static split":
            for user in USERS:
                mine_w = [w for w in wants if w.account == user]
                mine_h = [h for h in held if h.account == user]
                if mine_w:
                    res = sched.Resources(_slots(static[user]), cpus=64)
                    decisions += sched.plan(mine_w, mine_h, {}, res, sched.Settings(), t)
        else:
            settings = shares if policy == "shares" else sched.Settings()
            if policy == "shares":
                settings = sched.Settings(**{**shares.__dict__, "usage": dict(usage)})
            res = sched.Resources(_slots(range(GPUS)), cpus=64)
            decisions = sched.plan(wants, held, {}, res, settings, t)
        for d in decisions:
            if isinstance(d, sched.Start):
                job = queued.pop(d.job_id)
                job.gpu_indices = d.gpu_indices
                job.started = t
                if job.first_start is None:
                    job.first_start = t
                running[job.id] = job
            elif isinstance(d, sched.Preempt) and d.job_id in running:
                running[d.job_id].stopping = True
                preemptions += 1
        # This tick's accounting: what each user holds and wants.
        holds = {u: 0.0 for u in USERS}
        wants_u = {u: 0.0 for u in USERS}
        for job in running.values():
            holds[job.user] += job.gpus
        for job in (*running.values(), *queued.values()):
            wants_u[job.user] += job.gpus
        # Below its deserved quota while wanting it: a queued job that would fit within it.
        starved = {u: False for u in USERS}
        for job in queued.values():
            if holds[job.user] + job.gpus <= DESERVED[job.user] + 1e-9:
                starved[job.user] = True
        fair = sched.fair_shares({u: wants_u[u] for u in USERS if wants_u[u] > 0}, GPUS, fair_base)
        for user in USERS:
            got[user] += holds[user] * tick
            entitled[user] += fair.get(user, 0.0) * tick
            usage[user] = usage[user] * decay + holds[user] * tick / 3600
            if starved[user]:
                since = below_since[user]
                if since is None:
                    below_since[user] = since = t
                longest[user] = max(longest[user], t + tick - since)
            else:
                below_since[user] = None
        busy += sum(holds.values()) * tick
        for job in list(running.values()):  # work done this tick
            if not job.stopping:
                job.work_s -= tick
                if job.work_s <= 0:
                    del running[job.id]
        t += tick
    ratios = [got[u] / entitled[u] for u in USERS if entitled[u] > 0]
    jain = sum(ratios) ** 2 / (len(ratios) * sum(r * r for r in ratios)) if ratios else 1.0
    waits: dict[str, list[float]] = {u: [] for u in USERS}
    for job in jobs:
        if job.submit < horizon:
            end = job.first_start if job.first_start is not None else horizon
            waits[job.user].append(end - job.submit)
    offered = sum(j.gpus * j.work_s for j in week if j.submit < horizon) / (GPUS * horizon)
    return Outcome(
        100 * busy / (GPUS * horizon),
        jain,
        {u: _p95(w) for u, w in waits.items()},
        longest,
        preemptions,
        100 * offered,
        {u: got[u] / 3600 for u in USERS},
    )


def _p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


POLICIES = ("shares", "FIFO", "static split")


def run(seeds: list[int], days: float, tick: float) -> dict[str, list[Outcome]]:
    """Every policy on every seed's week."""
    out: dict[str, list[Outcome]] = {p: [] for p in POLICIES}
    for seed in seeds:
        week = make_week(seed, days)
        for policy in POLICIES:
            out[policy].append(simulate(policy, week, days, tick))
    return out


def grace_s(tick: float) -> float:
    """How long a user may wait below their deserved quota: the min runtime of the youngest
    job to reclaim, a tick for it to stop, a tick to start the reclaimer."""
    return MIN_RUNTIME_S + 2 * tick


def report(seeds: list[int], days: float, tick: float, tiny: bool) -> str:
    """Run, print and return the Markdown body: one row per policy (medians over seeds, with
    the range), p95 wait per user, and the goals' verdicts."""
    results = run(seeds, days, tick)
    grace = grace_s(tick)

    def cell(values: list[float], fmt: str = "{:.1f}") -> str:
        ordered = sorted(values)
        mid = ordered[len(ordered) // 2]
        if len(ordered) == 1:
            return fmt.format(mid)
        return f"{fmt.format(mid)} ({fmt.format(ordered[0])}-{fmt.format(ordered[-1])})"

    rows = []
    for policy, outs in results.items():
        rows.append(
            [
                policy,
                cell([o.util for o in outs]),
                cell([o.jain for o in outs], "{:.3f}"),
                cell([max(o.longest_below.values()) / 60 for o in outs], "{:.0f}"),
                cell([float(o.preemptions) for o in outs], "{:.0f}"),
            ]
            + [cell([o.p95_wait[u] / 3600 for o in outs]) for u in USERS]
        )
    headers = [
        "policy",
        "GPU util %",
        "Jain (GPU-h vs entitlement)",
        "longest below deserved, min",
        "preemptions",
    ] + [f"p95 wait h: {u}" for u in USERS]
    gap = [s.util - f.util for s, f in zip(results["shares"], results["FIFO"], strict=True)]
    worst = max(max(o.longest_below.values()) for o in results["shares"])
    fairness = min(o.jain for o in results["shares"])
    offered = cell([o.offered for o in results["shares"]], "{:.0f}")
    verdicts = [
        f"- utilisation within 2 points of FIFO: shares minus FIFO {min(gap):+.1f} to"
        f" {max(gap):+.1f} points: {'met' if min(gap) >= -2 else 'NOT met'}",
        f"- fairness at least 0.95: lowest {fairness:.3f}: {'met' if fairness >= 0.95 else 'NOT met'}",
        f"- no user below deserved longer than the grace ({grace / 60:.0f} min: min runtime"
        f" {MIN_RUNTIME_S / 60:.0f} min + a tick to stop + a tick to start): longest"
        f" {worst / 60:.0f} min: {'met' if worst <= grace else 'NOT met'}",
    ]
    from _results import table

    body = (
        f"{len(seeds)} seeded weeks ({days:g} days each, {tick:g} s ticks), 5 users on 8 GPUs,"
        f" deserved 2/2/2/1/1 GPUs, weight 1 each, usage half-life 1 day, offered load"
        f" {offered}% of the GPU-hours (medians, range over seeds in brackets). Jain's index is"
        " of each user's GPU-hours over their entitlement: at each tick the max-min fair"
        " division of the GPUs by deserved quota and weight among what users want"
        " (`scheduler.fair_shares`), summed. 'Below deserved' counts while a job of theirs that"
        " fits within their deserved quota waits (in the static split such spells come from a"
        " user's own 2-GPU job keeping their other GPU for itself, as backfill does; with shares"
        " from waiting for the youngest over-quota job's min runtime). The static split gives"
        " each user their"
        " deserved GPUs alone (8/5 each on average: GPUs are whole). A simulation of the"
        " pure planning function: no processes; the machine was shared and loaded, which"
        " changes only how long it took.\n\n" + table(headers, rows) + "\n\n" + "\n".join(verdicts)
    )
    print(body)
    return body
