"""The system daemon's reads for the TUI (team mode): a filtered window of the job table
(`page`) and the machine's telemetry (`telemetry`), each as the asking peer may see it.

A page is what the Queue screen shows: rows `offset`.. of the jobs matching a filter (state,
text, owner), their count, the count per state and where one job sits, read without loading
every job (`workbench.db.job_pages`). The rights hold as for `list`: others' jobs show their
public fields only (`workbench.daemon.rights.PUBLIC_FIELDS`), and a text filter matches what
the peer may read of them (their public name, not the command line a default name is made
of), so searching cannot reveal another user's command. Telemetry is the machine's (GPUs, CPU,
memory, disks): everyone's to see, as `nvidia-smi` and `top` show it; a GPU process's job is
named as the job table names it to the peer."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import Any

from workbench.daemon.identity import Peer
from workbench.daemon.rights import Rights, owner_name, public_name, public_name_of
from workbench.db import job_pages
from workbench.db.job_pages import JobFilter
from workbench.db.store import Job, Store
from workbench.jobmodel.states import JobState

MAX_PAGE_ROWS = 1000  # rows of one page (the TUI asks for three screens of rows)
MAX_FILTER_TEXT = 1000  # characters of a text filter
MAX_HISTORY_S = 30 * 86400.0  # the longest telemetry history asked for (what is kept)
MAX_HISTORY_ROWS = 5000  # history rows of one reply: longer ranges are averaged into buckets


class PageError(ValueError):
    """A malformed page or telemetry request (a missing or mistyped field): exit 2."""


def _optional_int(request: dict[str, Any], key: str) -> int | None:
    value = request.get(key)
    if value is None:
        return None
    if type(value) is not int or not -(2**63) < value < 2**63:
        raise PageError(f"field {key!r}: expected an integer")
    return value


def job_filter(request: dict[str, Any]) -> JobFilter:
    """The JobFilter a page request names: `state` (a job state or null), `text` (a string)
    and `owner` (a uid or null: everyone's). Raises PageError naming the field."""
    state = request.get("state")
    if state is not None and (not isinstance(state, str) or state not in set(JobState)):
        raise PageError(f"field 'state': one of {', '.join(s.value for s in JobState)}")
    text = request.get("text") or ""
    if not isinstance(text, str) or len(text) > MAX_FILTER_TEXT or "\0" in text:
        raise PageError(f"field 'text': a string of at most {MAX_FILTER_TEXT} characters")
    return JobFilter(state=state, text=text.strip(), owner=_optional_int(request, "owner"))


def page(
    store: Store,
    rights: Rights,
    peer: Peer,
    request: dict[str, Any],
    view: Callable[[Job], dict[str, Any]],
) -> dict[str, Any]:
    """One window of the job table as `peer` may see it. Request: `state`, `text`, `owner`
    (`job_filter`), `offset` (0-based row, clamped to the last), `limit` (0 to MAX_PAGE_ROWS)
    and `position_of` (a job id, optional). Reply: `{"total": matching jobs, "offset": the
    first row sent, "jobs": [views by `view`, by id], "counts": {state: jobs in it, over the
    whole table}, "idle": {job id: idle GPUs since, Unix s}, "position": the 0-based row
    `position_of` has or would have among the matching jobs (null if not asked)}`. Raises
    PageError naming a bad field.

    Cost: indexed SQL counts and one page of rows, as the per-user TUI reads its store; but a
    text filter asked by a peer who is not an admin reads the id, owner, name, kind, command
    and reason of the jobs whose own text matches (a superset of those whose public text does:
    a public name is part of the name) and checks others' public text in Python, then reads
    the page's rows."""
    where = job_filter(request)
    offset = _optional_int(request, "offset") or 0
    limit = _optional_int(request, "limit") or 0
    if not 0 <= limit <= MAX_PAGE_ROWS or offset < 0:
        raise PageError(f"fields 'offset', 'limit': offset >= 0, limit 0 to {MAX_PAGE_ROWS}")
    position_of = _optional_int(request, "position_of")
    if where.text and not rights.is_admin(peer):
        needle = where.text.lower()
        matching = [
            job_id
            for job_id, uid, name, kind, argv, reason in job_pages.text_rows(store, where)
            if (uid if uid is not None else 0) == peer.uid
            or needle in f"{job_id} {public_name_of(kind, name, argv)} {kind} {reason}".lower()
        ]
        total = len(matching)
        first = max(0, min(offset, total - 1)) if total else 0
        jobs = job_pages.jobs_by_id(store, matching[first : first + limit])
        position = None if position_of is None else bisect.bisect_left(matching, position_of)
    else:
        total = job_pages.count_jobs(store, where)
        first = max(0, min(offset, total - 1)) if total else 0
        jobs = job_pages.page_of_jobs(store, where, first, limit) if limit else []
        position = (
            None if position_of is None else job_pages.position_of_job(store, where, position_of)
        )
    from workbench.db.idle import idle_since

    shown = {job.id for job in jobs}
    idle = {str(j): since for j, (since, _) in idle_since(store).items() if j in shown}
    return {
        "total": total,
        "offset": first,
        "jobs": [view(job) for job in jobs],
        "counts": {str(state): n for state, n in store.counts_by_state().items()},
        "idle": idle,
        "position": position,
    }


def telemetry(store: Store, rights: Rights, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
    """The machine's telemetry as the system daemon samples it: `{"latest": the last snapshot
    (`workbench.telemetry.sampler`'s schema) or null, "history": rows of the last `history`
    seconds (`workbench.telemetry.history.history`) or null when not asked}`; `bucket_s`
    averages history rows into buckets, made at least `history / MAX_HISTORY_ROWS` s wide. A GPU
    process's `job_name` is the name the peer may see and `owner` its job's owner. Raises
    PageError naming a bad field."""
    from workbench.telemetry import history as stored

    seconds = request.get("history")
    bucket_s = request.get("bucket_s")
    for key, value in (("history", seconds), ("bucket_s", bucket_s)):
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not 0 < value <= MAX_HISTORY_S
        ):
            raise PageError(f"field {key!r}: expected seconds (0 to {MAX_HISTORY_S:g})")
    latest = stored.latest(store)
    if latest is not None:
        _name_jobs(store, rights, peer, latest)
    rows = None
    if seconds is not None:
        import time

        bucket = max(float(bucket_s or 0.0), float(seconds) / MAX_HISTORY_ROWS)
        since = time.time() - float(seconds)
        rows = stored.history(store, since, bucket_s=bucket if bucket >= 1.0 else None)
    return {"latest": latest, "history": rows}


def _name_jobs(store: Store, rights: Rights, peer: Peer, snapshot: dict[str, Any]) -> None:
    """Give each GPU process of `snapshot` that is a queue job's the job's name as `peer`
    may see it, and its owner."""
    for gpu in snapshot.get("gpus") or []:
        for process in gpu.get("processes") or []:
            job_id = process.get("job_id")
            job = store.find(job_id) if type(job_id) is int else None
            if job is None:
                continue
            process["job_name"] = job.name if rights.sees_details(peer, job) else public_name(job)
            process["owner"] = owner_name(job)
