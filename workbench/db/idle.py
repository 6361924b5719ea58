"""Idle GPU flags (migration 81): running jobs whose GPUs have sat at about 0% utilisation for
`[shares] idle_after`, written by the daemon's idle watch, read by `ls`, `show` and the TUI."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from workbench.db.store import Store


def flag(store: Store, job_id: int, since: float, gpus: Iterable[int]) -> None:
    """Mark `job_id` idle since `since` (unix s) on GPUs `gpus`."""
    with store.transaction() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO idle_jobs(job_id, since, gpus) VALUES (?, ?, ?)",
            (job_id, since, json.dumps(sorted(gpus))),
        )


def clear(store: Store, job_ids: Iterable[int]) -> None:
    """Remove the idle flag of these jobs (busy again, or no longer running)."""
    ids = [(i,) for i in job_ids]
    if ids:
        with store.transaction() as conn:
            conn.executemany("DELETE FROM idle_jobs WHERE job_id=?", ids)


def idle_since(store: Store) -> dict[int, tuple[float, tuple[int, ...]]]:
    """{job id: (idle since, unix s; its GPUs)} for every job flagged idle (a few rows)."""
    try:
        rows = store.conn.execute("SELECT job_id, since, gpus FROM idle_jobs").fetchall()
    except (
        sqlite3.OperationalError
    ):  # a store older than migration 81, read by a newer client: none
        return {}
    return {int(r[0]): (float(r[1]), tuple(json.loads(r[2]))) for r in rows}
