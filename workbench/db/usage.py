"""The usage ledger's table (migration 80): one row per interval a job held its grant, built
from the job events (so it is exact, and a daemon that died loses nothing: the next one reads
on from the cursor), read back for fair share and for `workbench usage`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from workbench.db.store import Store
from workbench.jobmodel.states import JobState

CURSOR = "usage_ledger_event"  # meta key: the newest job event the ledger has read
# A job holds its grant from the moment it is started until it leaves running or paused
# (a job paused while running keeps its GPUs; one held before it started has none).
_OPENS = (str(JobState.STARTING), str(JobState.RUNNING))
_KEEPS = (*_OPENS, str(JobState.PAUSED))
MIG_SLICES = 7  # as workbench.queue.scheduler.MIG_SLICES


@dataclass(frozen=True)
class Interval:
    """One interval a job held its grant: `gpus` GPUs' worth (a MIG instance by its slices of
    7), `gpu_mem_bytes` GPU memory reserved in all, `start`/`end` unix seconds (`end` None:
    still holding), `wait_s` seconds from submit to this start on a job's first interval."""

    job_id: int
    uid: int | None
    group: str
    gpus: float
    gpu_mem_bytes: int
    start: float
    end: float | None
    wait_s: float | None


def _units(gpus: float, mig_profile: str | None) -> float:
    if not mig_profile:
        return float(gpus or 0.0)
    head = mig_profile.split("g.", 1)[0]
    return int(head) / MIG_SLICES if head.isdigit() else 1.0 / MIG_SLICES


def _reserved(gpus: float, gpu_mem: int | None, units: float, card_bytes: int) -> int:
    """GPU memory a grant reserves in all: `gpu_mem` on each GPU, else its share of a card of
    `card_bytes` (0 when the machine has no GPU)."""
    if units <= 0:
        return 0
    if gpu_mem:
        return int(gpu_mem) * max(1, math.ceil(gpus or 1))
    return int(units * card_bytes)


def sync(store: Store, card_bytes: int, limit: int = 5000) -> int:
    """Read the job events after the cursor (up to `limit`, oldest first) into the ledger:
    an event into starting/running opens an interval for a GPU job that holds none, one
    leaving running/paused closes it at the event's time. Returns the events read (call again
    while it returns `limit`). One transaction: the rows and the cursor move together.
    `card_bytes` is one GPU's memory, for grants that named no `gpu_mem`. Without new events
    it only reads (two index look-ups): no write lock is taken each telemetry tick."""
    row = store.conn.execute("SELECT value FROM meta WHERE key=?", (CURSOR,)).fetchone()
    newest = store.conn.execute("SELECT max(id) FROM job_events").fetchone()[0] or 0
    if int(row[0] if row and row[0] else 0) >= newest:
        return 0
    with store.transaction() as conn:
        row = conn.execute("SELECT value FROM meta WHERE key=?", (CURSOR,)).fetchone()
        cursor = int(row[0]) if row and row[0] else 0
        events = conn.execute(
            "SELECT e.id, e.job_id, e.t, e.state, j.uid, j.grp, j.gpus, j.gpu_mem,"
            " j.mig_profile, j.created_at FROM job_events e LEFT JOIN jobs j ON j.id = e.job_id"
            " WHERE e.id > ? ORDER BY e.id LIMIT ?",
            (cursor, limit),
        ).fetchall()
        if not events:
            return 0
        ids = sorted({int(e[1]) for e in events})
        open_: dict[int, int] = {}
        seen: set[int] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for rowid, job_id, end in conn.execute(
                f"SELECT id, job_id, end_t FROM usage_ledger WHERE job_id IN ({marks})", chunk
            ):
                seen.add(int(job_id))
                if end is None:
                    open_[int(job_id)] = int(rowid)
        for event_id, job_id, t, state, uid, grp, gpus, gpu_mem, mig, created in events:
            cursor = int(event_id)
            if state in _OPENS and job_id not in open_ and grp is not None:
                units = _units(gpus, mig)
                if units <= 0:
                    continue  # a CPU job holds no GPU
                wait = None if job_id in seen else max(0.0, float(t) - float(created))
                cur = conn.execute(
                    "INSERT INTO usage_ledger(job_id, uid, grp, gpus, gpu_mem_bytes, start_t,"
                    " wait_s) VALUES (?,?,?,?,?,?,?)",
                    (job_id, uid, grp, units, _reserved(gpus, gpu_mem, units, card_bytes), t, wait),
                )
                open_[job_id] = int(cur.lastrowid or 0)
                seen.add(job_id)
            elif state not in _KEEPS and job_id in open_:
                conn.execute("UPDATE usage_ledger SET end_t=? WHERE id=?", (t, open_.pop(job_id)))
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (CURSOR, str(cursor)))
        return len(events)


def intervals(
    store: Store, since: float | None = None, until: float | None = None
) -> list[Interval]:
    """Ledger rows that overlap [since, until] (None: unbounded), oldest first."""
    where, params = [], []
    if since is not None:
        where.append("(end_t IS NULL OR end_t > ?)")
        params.append(since)
    if until is not None:
        where.append("start_t < ?")
        params.append(until)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = store.conn.execute(
        "SELECT job_id, uid, grp, gpus, gpu_mem_bytes, start_t, end_t, wait_s"
        f" FROM usage_ledger {clause} ORDER BY start_t, id",
        params,
    ).fetchall()
    return [
        Interval(int(r[0]), r[1], str(r[2]), float(r[3]), int(r[4]), r[5], r[6], r[7]) for r in rows
    ]
