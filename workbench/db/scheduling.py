"""The daemon's reads for incremental scheduling: the head of the queue in scheduling order (no
environments, no specs; its indexes come with migration 15), pending intents, the jobs a previous
daemon left live, a stamp that changes only when something that can change a decision happened,
and wait reasons written in one batch."""

from __future__ import annotations

import json
import sqlite3
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from workbench.db.store import Job, Store, StoreError
from workbench.jobmodel.states import Event, JobState

# What a failed store operation may raise that a retry can cure (a full disk, a long lock):
# the daemon keeps the outcome and tries again.
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, OSError, StoreError)


@dataclass(frozen=True)
class QueuedJob:
    """What the scheduler needs of a queued job. `gpu_mem`, `mem` in bytes; `deps` are
    (job id, condition) pairs."""

    id: int
    priority: int
    group: str
    gpus: float
    gpu_mem: int | None
    cpus: float
    mem: int | None
    fail_unrunnable: bool
    reason: str | None
    deps: tuple[tuple[int, str], ...]
    time_limit: float | None = None  # seconds; backfill's estimate of its run time
    mig_profile: str | None = None  # one MIG instance of this profile instead of GPUs
    preemptible: bool = True  # false: never preempted to give borrowed GPUs back
    uid: int | None = None  # its owner (system mode); None: the home owner


_QUEUED_COLUMNS = (
    "id, priority, grp, gpus, gpu_mem, cpus, mem, fail_unrunnable, reason, time_limit,"
    " mig_profile, preemptible, uid"
)


def _deps(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, list[tuple[int, str]]]:
    out: dict[int, list[tuple[int, str]]] = {}
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        marks = ",".join("?" * len(chunk))
        for job_id, dep_id, cond in conn.execute(
            f"SELECT job_id, dep_id, cond FROM job_deps WHERE job_id IN ({marks})"
            " ORDER BY job_id, dep_id",
            chunk,
        ):
            out.setdefault(job_id, []).append((dep_id, cond))
    return out


def _queued(conn: sqlite3.Connection, rows: list[Any]) -> list[QueuedJob]:
    deps = _deps(conn, [r[0] for r in rows])
    return [
        QueuedJob(
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6],
            bool(r[7]),
            r[8],
            tuple(deps.get(r[0], ())),
            r[9],
            r[10],
            bool(r[11]),
            r[12],
        )
        for r in rows
    ]


def queue_head(
    store: Store, after: tuple[int, int] | None, limit: int, group: str | None = None
) -> list[QueuedJob]:
    """Up to `limit` queued jobs in scheduling order (priority high first, then oldest), starting
    after the (priority, id) key `after`; only `group`'s when given. Cost: `limit` rows, whatever
    the queue's length (indexes `jobs_queue_order`, and `jobs_group_queue` for a group).
    Jobs bound to Slurm are left out: Slurm schedules them (workbench.daemon.executors.slurm)."""
    where = "state=? AND executor='local'"
    params: list[Any] = [JobState.QUEUED]
    if group is not None:
        where += " AND grp=?"
        params.append(group)
    if after is not None:
        where += " AND (priority < ? OR (priority = ? AND id > ?))"
        params += [after[0], after[0], after[1]]
    # A job backing off after a failure (not_before) is not yet a candidate.
    rows = store.conn.execute(
        f"SELECT {_QUEUED_COLUMNS} FROM jobs WHERE {where} AND {_NOT_BACKING_OFF}"
        " ORDER BY priority DESC, id LIMIT ?",
        (*params, time.time(), limit),
    ).fetchall()
    return _queued(store.conn, rows)


def group_heads(store: Store, groups: Iterable[str], limit: int) -> list[QueuedJob]:
    """The first `limit` queued jobs of each of `groups`, each in scheduling order
    (`queue_head` of one group: an indexed page per group, whatever the queue's length)."""
    return [job for group in groups for job in queue_head(store, None, limit, group)]


def first_batch(
    store: Store, guaranteed: Sequence[str], limit: int
) -> tuple[list[QueuedJob], list[QueuedJob]]:
    """What a scheduling pass plans first: (the queue's head page of `limit` jobs, that page plus
    every queued job with dependencies and, when the page is full, the head of each group in
    `guaranteed` (groups with a GPU quota), each job once). A job within its group's quota is
    so planned however many older jobs wait ahead of it."""
    page = queue_head(store, None, limit)
    extra = queued_with_deps(store)
    if len(page) == limit and guaranteed:
        extra += group_heads(store, guaranteed, limit)
    in_page = {j.id for j in page}
    return page, [*page, *{j.id: j for j in extra if j.id not in in_page}.values()]


_NOT_BACKING_OFF = "(not_before IS NULL OR not_before <= ?)"
_retry_checked: weakref.WeakKeyDictionary[Store, float] = weakref.WeakKeyDictionary()


def retry_due(store: Store, now: float) -> bool:
    """True if a queued job's back-off (`not_before`, epoch seconds) ended since the last call
    for this store (so the daemon runs a scheduling pass then, although nothing was written).
    One lookup in a partial index of the few jobs backing off."""
    since = _retry_checked.get(store, 0.0)
    _retry_checked[store] = now
    row = store.conn.execute(
        "SELECT 1 FROM jobs WHERE not_before IS NOT NULL AND not_before > ? AND not_before <= ?"
        " AND state=? LIMIT 1",
        (since, now, JobState.QUEUED),
    ).fetchone()
    return row is not None


def next_retry(store: Store, now: float) -> float | None:
    """The earliest `not_before` (epoch seconds) after `now` of a queued job backing off, or
    None. One look-up in the partial index `jobs_not_before`."""
    row = store.conn.execute(
        "SELECT min(not_before) FROM jobs WHERE not_before IS NOT NULL AND not_before > ?"
        " AND state=?",
        (now, JobState.QUEUED),
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def queued_with_deps(store: Store, limit: int = 10000) -> list[QueuedJob]:
    """Queued jobs that wait on other jobs (so a failed dependency blocks them wherever they
    are in the queue). Driven from the dependency table: cost is the number of dependencies,
    not the length of the queue."""
    conn = store.conn
    columns = ", ".join(f"j.{c.strip()}" for c in _QUEUED_COLUMNS.split(","))
    rows = conn.execute(
        f"SELECT {columns} FROM (SELECT DISTINCT job_id FROM job_deps) d"
        " CROSS JOIN jobs j ON j.id = d.job_id WHERE j.state=? AND j.executor='local'"
        " AND (j.not_before IS NULL OR j.not_before <= ?) ORDER BY j.id LIMIT ?",
        (JobState.QUEUED, time.time(), limit),
    ).fetchall()
    return _queued(conn, rows)


@dataclass(frozen=True)
class Intent:
    """A client's pending request for a job the daemon owns: cancel, pause or resume."""

    job_id: int
    state: str
    intent: str


def intents(store: Store) -> list[Intent]:
    """Jobs with a pending intent (read through a partial index: cost is the number of intents)."""
    rows = store.conn.execute(
        "SELECT id, state, intent FROM jobs WHERE intent IS NOT NULL ORDER BY id"
    ).fetchall()
    return [Intent(int(r[0]), str(r[1]), str(r[2])) for r in rows]


@dataclass(frozen=True)
class LiveJob:
    """A job that may own processes: what the daemon needs to watch it again after a restart."""

    id: int
    state: str
    group: str
    gpus: float
    gpu_mem: int | None
    cpus: float
    mem: int | None
    granted_gpus: tuple[int, ...]
    pid: int | None
    pid_start: float | None
    launch_token: str | None
    started_at: float | None
    time_limit: float | None
    mig_profile: str | None = None
    preemptible: bool = True
    intent: str | None = None  # STOP_INTENTS: the daemon was stopping it, and `reason` says why
    reason: str | None = None
    granted_devices: tuple[str, ...] = ()  # the MIG instances (UUIDs) it was launched on


# Intents the daemon itself records before it sends SIGTERM, so that a daemon started after it
# died knows why the job is stopping: `preempt` (GPU pooling: back to the queue) and `stop`
# (it used more GPU memory than it reserved, with `strict`). The job's reason says why.
PREEMPT_INTENT = "preempt"
STOP_INTENT = "stop"
STOP_INTENTS = (PREEMPT_INTENT, STOP_INTENT)


def live_jobs(store: Store) -> list[LiveJob]:
    """Jobs starting or running, and paused jobs that had started (a held job has no pid); not
    those the system daemon runs in this home for its owner (executor `team`,
    workbench.daemon.teamrun): their process is the team job's."""
    rows = store.conn.execute(
        "SELECT id, state, grp, gpus, gpu_mem, cpus, mem, granted_gpus, pid, pid_start,"
        " launch_token, started_at, time_limit, mig_profile, preemptible, intent, reason,"
        " granted_devices FROM jobs"
        " WHERE (state IN (?, ?)"
        " OR (state = ? AND (pid IS NOT NULL OR launch_token IS NOT NULL)))"
        " AND executor != 'team' ORDER BY id",
        (JobState.STARTING, JobState.RUNNING, JobState.PAUSED),
    ).fetchall()
    return [
        LiveJob(
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6],
            tuple(json.loads(r[7]) if r[7] else ()),
            r[8],
            r[9],
            r[10],
            r[11],
            r[12],
            r[13],
            bool(r[14]),
            r[15],
            r[16],
            tuple(json.loads(r[17]) if r[17] else ()),
        )
        for r in rows
    ]


def preemption_counts(store: Store, ids: Sequence[int]) -> dict[int, int]:
    """{job id: times it was preempted} for those of `ids` that ever were (index job_events_job:
    cost is the jobs' events)."""
    out: dict[int, int] = {}
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        marks = ",".join("?" * len(chunk))
        for job_id, count in store.conn.execute(
            f"SELECT job_id, count(*) FROM job_events WHERE job_id IN ({marks}) AND event=?"
            " GROUP BY job_id",
            (*chunk, str(Event.PREEMPT)),
        ):
            out[int(job_id)] = int(count)
    return out


def set_json_entry(store: Store, key: str, entry: str, value: Any) -> None:
    """Set `entry` to `value` in the JSON object kept under meta `key` (e.g. the group quotas),
    reading and writing it in one transaction: two clients setting entries at once keep both
    (a read, then a separate write, lost one)."""
    with store.transaction() as conn:
        row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        data = json.loads(row[0]) if row and row[0] else {}
        data[entry] = value
        conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
            (key, json.dumps(data, sort_keys=True)),
        )


def record_stop(store: Store, job_id: int, intent: str, reason: str) -> None:
    """Record that the daemon is stopping a live job (`intent` one of STOP_INTENTS) and why, in
    its reason; a cancel the user asked for is kept (it decides how the job ends). No event:
    the state changes when the job has stopped."""
    with store.transaction() as conn:
        conn.execute(
            "UPDATE jobs SET intent=CASE WHEN intent='cancel' THEN intent ELSE ? END, reason=?"
            " WHERE id=? AND state IN (?, ?, ?)",
            (intent, reason, job_id, JobState.STARTING, JobState.RUNNING, JobState.PAUSED),
        )


def schedule_stamp(store: Store) -> tuple[int, int]:
    """Changes whenever a job changes state or a client records an intent (every submit,
    state change and intent writes an event or an audit row), but not with progress, metrics,
    wait reasons or telemetry. Two index lookups."""
    conn = store.conn
    events = conn.execute("SELECT max(id) FROM job_events").fetchone()[0] or 0
    try:
        audit = conn.execute("SELECT max(id) FROM audit").fetchone()[0] or 0
    except sqlite3.OperationalError:
        audit = 0
    return int(events), int(audit)


def set_reasons(store: Store, reasons: Iterable[tuple[int, str | None]]) -> None:
    """Update why queued jobs wait, in one transaction (no events: these change often)."""
    pairs = [(reason, job_id, JobState.QUEUED, reason) for job_id, reason in reasons]
    if not pairs:
        return
    with store.transaction() as conn:
        conn.executemany(
            "UPDATE jobs SET reason=? WHERE id=? AND state=? AND reason IS NOT ?", pairs
        )


@dataclass(frozen=True)
class Change:
    """One state change for `apply_many`: `event` for `job_id` if it is in `only_from`."""

    job_id: int
    event: Event
    reason: str | None
    only_from: tuple[JobState, ...]
    columns: dict[str, Any] = field(default_factory=dict)


def apply_many(store: Store, changes: Sequence[Change]) -> list[JobState | None]:
    """Apply several state changes through the transition table in one transaction (all or
    none): the new state of each, or None where the job was gone or no longer in `only_from`.
    Raises StoreFull/StoreError when the write fails, IllegalTransition as `Store.transition`."""
    if not changes:
        return []
    now = time.time()
    with store.transaction() as conn:
        return [
            store._apply(conn, c.job_id, c.event, c.reason, now, c.only_from, dict(c.columns))
            for c in changes
        ]


def jobs_by_id(store: Store, ids: Sequence[int]) -> dict[int, Job]:
    """Full job rows (environment included) for these ids, in batches of 500."""
    out: dict[int, Job] = {}
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        marks = ",".join("?" * len(chunk))
        for job in store._jobs_where(f"WHERE id IN ({marks})", chunk):
            out[job.id] = job
    return out


# ---- what a pass can start (migration 20: `blocked_on`) ----------------------------------

# What decides whether a job fits (the scheduler's `Want.shape`, less priority): jobs of one
# shape waiting on resources wait for the same reason, so a pass re-reads only each shape's head.
Shape = tuple[str, float, int | None, str | None, float | None, float, int | None, int]
# (The partial indexes' conditions are literals in the queries: SQLite uses a partial index
# only where it can see the query's WHERE implies the index's.)
_SHAPE_COLUMNS = "grp, gpus, gpu_mem, mig_profile, time_limit, cpus, mem, fail_unrunnable"
# The state as a literal (a bound parameter hides it from the planner).
_IS_QUEUED = "state=" + repr(str(JobState.QUEUED))
FIT = "fit"  # waits on resources, a group's cap or drain
DEPS = "deps"  # waits on a dependency that has not ended as it needs


def startable(store: Store, now: float) -> list[QueuedJob]:
    """Every queued local job not known to wait (`blocked_on` is NULL: new, queued again, or a
    dependency moved) and not backing off, in scheduling order. Index `jobs_startable`: cost is
    these jobs, however many others wait."""
    rows = store.conn.execute(
        f"SELECT {_QUEUED_COLUMNS} FROM jobs INDEXED BY jobs_startable"
        f" WHERE {_IS_QUEUED} AND blocked_on IS NULL AND executor='local'"
        f" AND {_NOT_BACKING_OFF} ORDER BY priority DESC, id",
        (now,),
    ).fetchall()
    return _queued(store.conn, rows)


def unfit_shapes(store: Store) -> list[Shape]:
    """The distinct shapes of jobs marked as waiting on resources (one pass over the index
    `jobs_unfit`, in SQLite)."""
    rows = store.conn.execute(
        f"SELECT DISTINCT {_SHAPE_COLUMNS} FROM jobs INDEXED BY jobs_unfit"
        f" WHERE {_IS_QUEUED} AND blocked_on='fit' AND executor='local'",
    ).fetchall()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def shape_head(store: Store, shape: Shape, limit: int, now: float) -> list[QueuedJob]:
    """The first `limit` jobs, in scheduling order, of those of `shape` marked as waiting on
    resources (one seek in `jobs_unfit`)."""
    match = " AND ".join(f"{c.strip()} IS ?" for c in _SHAPE_COLUMNS.split(","))
    rows = store.conn.execute(
        f"SELECT {_QUEUED_COLUMNS} FROM jobs INDEXED BY jobs_unfit"
        f" WHERE {_IS_QUEUED} AND blocked_on='fit' AND executor='local' AND {match}"
        f" AND {_NOT_BACKING_OFF} ORDER BY priority DESC, id LIMIT ?",
        (*shape, now, limit),
    ).fetchall()
    return _queued(store.conn, rows)


def events_mark(store: Store) -> int:
    """The newest job event's id: a pass reads it before the dependencies' states, and marks a
    job as waiting on them only if none of them changed since (`record_waits`)."""
    return int(store.conn.execute("SELECT max(id) FROM job_events").fetchone()[0] or 0)


def marked_count(store: Store, kind: str) -> int:
    """How many jobs carry the mark `kind` (FIT or DEPS): the bench and tests read it."""
    return int(
        store.conn.execute("SELECT count(*) FROM jobs WHERE blocked_on=?", (kind,)).fetchone()[0]
    )


def clear_marks(store: Store, kind: str) -> None:
    """Forget every `kind` mark (a daemon's start: what an earlier one found may not hold)."""
    with store.transaction() as conn:
        conn.execute("UPDATE jobs SET blocked_on=NULL WHERE blocked_on=?", (kind,))


def record_waits(
    store: Store,
    reasons: Iterable[tuple[int, str | None]],
    marks: Iterable[tuple[int, str]],
    mark: int,
) -> None:
    """Write why queued jobs wait and what they wait on (`marks`: (job id, FIT or DEPS)), in one
    transaction. A DEPS mark is set only if no dependency of the job has an event newer than
    `mark` and none was removed: a dependency that moved meanwhile leaves the job unmarked,
    so the next pass reads it (the trigger clears marks only for changes after they are set)."""
    pairs = [(reason, job_id, JobState.QUEUED, reason) for job_id, reason in reasons]
    fit = [(FIT, job_id, JobState.QUEUED) for job_id, kind in marks if kind == FIT]
    deps = [(DEPS, job_id, JobState.QUEUED, job_id, mark) for job_id, kind in marks if kind == DEPS]
    if not (pairs or fit or deps):
        return
    with store.transaction() as conn:
        conn.executemany(
            "UPDATE jobs SET reason=? WHERE id=? AND state=? AND reason IS NOT ?", pairs
        )
        conn.executemany(
            "UPDATE jobs SET blocked_on=? WHERE id=? AND state=? AND blocked_on IS NULL", fit
        )
        conn.executemany(
            "UPDATE jobs SET blocked_on=? WHERE id=? AND state=? AND blocked_on IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM job_deps d LEFT JOIN jobs p ON p.id = d.dep_id"
            " WHERE d.job_id=? AND (p.id IS NULL OR EXISTS (SELECT 1 FROM job_events e"
            " WHERE e.job_id = d.dep_id AND e.id > ?)))",
            deps,
        )
