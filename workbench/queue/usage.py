"""Usage from the ledger (workbench.db.usage): decayed GPU-hours for fair share, and the
per-user and per-group report of `workbench usage`. Pure functions of the ledger's intervals."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from workbench.db.usage import Interval
from workbench.queue.accounts import user_name

GIB = 1024**3


def decayed_gpu_seconds(
    gpus: float, start: float, end: float, now: float, half_life_s: float
) -> float:
    """GPU-seconds of `gpus` held from `start` to `end`, each second weighted by
    2 ** (-(now - t) / half_life_s): the closed form of that integral,
    gpus * H / ln 2 * (2 ** (-(now - end) / H) - 2 ** (-(now - start) / H))."""
    end = min(end, now)
    if end <= start:
        return 0.0
    h = half_life_s
    return gpus * h / math.log(2) * (2 ** (-(now - end) / h) - 2 ** (-(now - start) / h))


def decayed_hours(
    rows: Iterable[Interval], now: float, half_life_s: float, account: Callable[[Interval], str]
) -> dict[str, float]:
    """{account: decayed GPU-hours} (`decayed_gpu_seconds` / 3600, an open interval up to
    `now`), the usage that lowers an over-quota weight (scheduler.effective_weights)."""
    out: dict[str, float] = {}
    for row in rows:
        end = now if row.end is None else row.end
        got = decayed_gpu_seconds(row.gpus, row.start, end, now, half_life_s) / 3600
        key = account(row)
        out[key] = out.get(key, 0.0) + got
    return out


@dataclass(frozen=True)
class UsageRow:
    """One line of `workbench usage`: `kind` "user" or "group"; GPU-hours; GPU memory in
    GiB-hours; jobs that held GPUs in the window; mean and p95 wait (seconds from submit to
    first start) of the jobs first started in it, None when none was."""

    kind: str
    name: str
    gpu_hours: float
    gpu_mem_gib_hours: float
    jobs: int
    wait_mean_s: float | None
    wait_p95_s: float | None


def p95(values: Sequence[float]) -> float | None:
    """The 95th percentile by the nearest-rank method (the ceil(0.95 n)-th smallest), None for
    no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def report(
    rows: Iterable[Interval], since: float | None, until: float, user: str | None = None
) -> list[UsageRow]:
    """Per user, then per group (names sorted): GPU-hours and GPU-memory GiB-hours within
    [since, until] (intervals clipped to it; an open interval runs to `until`), jobs, and
    waits. `user` keeps only that user's intervals (its groups then show only that user's)."""
    totals: dict[tuple[str, str], list[float]] = {}
    jobs: dict[tuple[str, str], set[int]] = {}
    waits: dict[tuple[str, str], list[float]] = {}
    lo = -math.inf if since is None else since
    for row in rows:
        name = user_name(row.uid)
        if user is not None and name != user:
            continue
        start = max(row.start, lo)
        end = min(until, row.end if row.end is not None else until)
        seconds = max(0.0, end - start)
        for key in (("user", name), ("group", row.group)):
            total = totals.setdefault(key, [0.0, 0.0])
            total[0] += row.gpus * seconds / 3600
            total[1] += row.gpu_mem_bytes / GIB * seconds / 3600
            if seconds > 0 or start < until:
                jobs.setdefault(key, set()).add(row.job_id)
            if row.wait_s is not None and lo <= row.start <= until:
                waits.setdefault(key, []).append(row.wait_s)
    out = []
    for kind in ("user", "group"):
        for key in sorted(k for k in totals if k[0] == kind):
            seen = waits.get(key, [])
            out.append(
                UsageRow(
                    kind,
                    key[1],
                    totals[key][0],
                    totals[key][1],
                    len(jobs.get(key, ())),
                    sum(seen) / len(seen) if seen else None,
                    p95(seen),
                )
            )
    return out
