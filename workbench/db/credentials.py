"""The store's side of credentials held out of it (workbench.daemon.credentials): each job's
token and the names of the credentials it needs (`jobs.held_credentials`, migration 110; never
a value), and the mark of a queued job that waits for them (`jobs.blocked_on = 'credentials'`,
so scheduling passes skip it by index until they are handed again)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from workbench.db.store import Store
from workbench.jobmodel.states import JobState

#: `jobs.blocked_on` of a queued job whose credentials the daemon does not hold.
CREDENTIALS = "credentials"
_CHUNK = 500


@dataclass(frozen=True)
class HeldRecord:
    """What the store knows of a job's held credentials: the daemon's `token` for them, the
    `names` the job needs, and for a URL password's name the URL without it (`urls`)."""

    token: str
    names: tuple[str, ...]
    urls: dict[str, str] = field(default_factory=dict)


def _record(text: str | None) -> HeldRecord | None:
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("token"), str):
        return None
    names = tuple(str(n) for n in data.get("names") or ())
    found = data.get("urls")
    urls: dict[str, str] = found if isinstance(found, dict) else {}
    return HeldRecord(data["token"], names, {str(k): str(v) for k, v in urls.items()})


def held_records(store: Store, job_ids: Iterable[int]) -> dict[int, HeldRecord]:
    """The held-credential records of those of `job_ids` that have one (job id -> record), in
    one indexed read per 500 ids."""
    ids = list(job_ids)
    out: dict[int, HeldRecord] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        for job_id, text in store.conn.execute(
            f"SELECT id, held_credentials FROM jobs WHERE id IN ({marks})"
            " AND held_credentials IS NOT NULL",
            chunk,
        ):
            record = _record(text)
            if record is not None:
                out[int(job_id)] = record
    return out


def mark_waiting(store: Store, reasons: Iterable[tuple[int, str]]) -> None:
    """Mark queued jobs as waiting for their credentials, each with its reason (job id,
    reason), in one transaction; a job no longer queued is left alone."""
    rows = [(CREDENTIALS, reason, job_id, JobState.QUEUED) for job_id, reason in reasons]
    if not rows:
        return
    with store.transaction() as conn:
        conn.executemany("UPDATE jobs SET blocked_on=?, reason=? WHERE id=? AND state=?", rows)


def clear_waiting(store: Store) -> None:
    """Unmark every job waiting for credentials, so the next pass reads them again (credentials
    came, or a daemon starts)."""
    with store.transaction() as conn:
        conn.execute("UPDATE jobs SET blocked_on=NULL WHERE blocked_on=?", (CREDENTIALS,))
