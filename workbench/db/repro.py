"""Reads and writes of what a job was submitted and started with, to reproduce it (table
`job_repro`, migration 50; the records' shape is `workbench.queue.repro`'s). The submit-time
record is written with the job itself (`Store.submit`, from `JobRequest.repro`)."""

from __future__ import annotations

import json
from typing import Any

from workbench.db.store import Store


def record_submitted(store: Store, job_id: int, record: dict[str, Any]) -> None:
    """Keep what a job was submitted with, where it was not written with the job itself (the
    daemon's intake records it once the client has its answer)."""
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO job_repro(job_id, record) VALUES (?, ?)"
            " ON CONFLICT(job_id) DO UPDATE SET record=excluded.record",
            (job_id, json.dumps(record)),
        )


def record_starts(store: Store, started: dict[int, dict[str, Any]]) -> None:
    """Keep what the daemon saw when jobs started ({job id: record}; a job's latest start wins),
    in one transaction."""
    if not started:
        return
    with store.transaction() as conn:
        conn.executemany(
            "INSERT OR IGNORE INTO job_repro(job_id) VALUES (?)", [(i,) for i in started]
        )
        conn.executemany(
            "UPDATE job_repro SET started=? WHERE job_id=?",
            [(json.dumps(record), i) for i, record in started.items()],
        )


def repro_of(store: Store, job_id: int) -> dict[str, Any] | None:
    """{"code", "environment", "snapshot", "started"} of a job (each None where not recorded),
    or None when nothing was (a job submitted before migration 50)."""
    row = store.conn.execute(
        "SELECT record, started FROM job_repro WHERE job_id=?", (job_id,)
    ).fetchone()
    if row is None:
        return None
    try:
        record = json.loads(row[0] or "{}")
        started = json.loads(row[1]) if row[1] else None
    except ValueError:
        return None
    if not isinstance(record, dict):
        record = {}
    return {
        "code": record.get("code"),
        "environment": record.get("environment"),
        "snapshot": record.get("snapshot"),
        "started": started if isinstance(started, dict) else None,
    }


def snapshots_of(store: Store, ids: list[int]) -> set[str]:
    """The snapshot folders the jobs `ids` ran from (see `workbench.queue.repro`)."""
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for (text,) in store.conn.execute(
            f"SELECT json_extract(record, '$.snapshot.path') FROM job_repro"
            f" WHERE job_id IN ({marks})",
            chunk,
        ):
            if isinstance(text, str) and text:
                found.add(text)
    return found


def snapshot_in_use(store: Store, path: str) -> bool:
    """Whether a job the store still holds runs from the snapshot folder `path` (a sweep's
    points share one)."""
    row = store.conn.execute(
        "SELECT 1 FROM job_repro WHERE json_extract(record, '$.snapshot.path') = ? LIMIT 1",
        (path,),
    ).fetchone()
    return row is not None
