"""The single source of truth: SQLite in WAL mode, shared by the daemon, the CLI, the TUI and jobs."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Job states (INTERFACE.md). `paused` covers both a stopped running job and a held queued one.
QUEUED, RUNNING, PAUSED, BLOCKED = "queued", "running", "paused", "blocked"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, PAUSED, BLOCKED, SUCCEEDED, FAILED, CANCELLED)
ENDED = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE = frozenset({QUEUED, RUNNING, PAUSED, BLOCKED})
SETTLED = ENDED | {BLOCKED}  # nothing more happens to these unless someone retries them

DEP_CONDITIONS = ("ok", "any", "fail")

# Schema migrations by version. Numbers are reserved per owner so that parts can grow
# independently: 1 core (jobs, events, metrics, groups, pipelines); 2 telemetry; 3 lake
# catalog and query history; 4 runs; 5 evaluations and models. Gaps are fine.
MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        spec TEXT NOT NULL,
        argv TEXT,
        cwd TEXT NOT NULL,
        env TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        grp TEXT NOT NULL DEFAULT 'default',
        gpus REAL NOT NULL DEFAULT 0,
        gpu_mem INTEGER,
        cpus REAL NOT NULL DEFAULT 0,
        mem INTEGER,
        retries INTEGER NOT NULL DEFAULT 0,
        attempt INTEGER NOT NULL DEFAULT 1,
        time_limit REAL,
        fail_unrunnable INTEGER NOT NULL DEFAULT 0,
        pipeline_id INTEGER,
        stage TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL,
        exit_code INTEGER,
        reason TEXT,
        pid INTEGER,
        pid_start REAL,
        granted_gpus TEXT,
        intent TEXT,
        progress REAL,
        progress_msg TEXT,
        peak_gpu_mem INTEGER,
        mean_gpu_util REAL
    );
    CREATE INDEX jobs_active ON jobs(state) WHERE state IN ('queued', 'running', 'paused', 'blocked');
    CREATE INDEX jobs_pipeline ON jobs(pipeline_id) WHERE pipeline_id IS NOT NULL;
    CREATE TABLE job_deps (
        job_id INTEGER NOT NULL,
        dep_id INTEGER NOT NULL,
        cond TEXT NOT NULL,
        PRIMARY KEY (job_id, dep_id)
    );
    CREATE INDEX job_deps_dep ON job_deps(dep_id);
    CREATE TABLE job_events (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL,
        t REAL NOT NULL,
        state TEXT NOT NULL,
        reason TEXT
    );
    CREATE INDEX job_events_job ON job_events(job_id, id);
    CREATE TABLE metrics (
        job_id INTEGER NOT NULL,
        step INTEGER NOT NULL,
        name TEXT NOT NULL,
        value REAL,
        t REAL NOT NULL
    );
    CREATE INDEX metrics_job ON metrics(job_id, name, step);
    CREATE TABLE groups (name TEXT PRIMARY KEY, parallel INTEGER NOT NULL);
    CREATE TABLE pipelines (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        path TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # Telemetry (workbench/telemetry.py reads and writes these). One row per tick, keyed by
    # time in ms; rows older than the history setting are thinned into 60 s averages.
    # gpus: JSON [[index, util %, memory util %, memory used bytes, power W, temp C], ...].
    2: """
    CREATE TABLE telemetry (
        t_ms INTEGER PRIMARY KEY,
        span_s REAL NOT NULL,
        cpu REAL,
        load1 REAL,
        mem_used INTEGER,
        swap_used INTEGER,
        net_rx REAL,
        net_tx REAL,
        disk_read REAL,
        disk_write REAL,
        gpus TEXT
    );
    CREATE TABLE telemetry_latest (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        t REAL NOT NULL,
        snapshot TEXT NOT NULL
    );
    """,
    3: """
    CREATE TABLE datasets (
        name TEXT PRIMARY KEY,
        created_at REAL NOT NULL
    );
    CREATE TABLE dataset_versions (
        dataset TEXT NOT NULL,
        version INTEGER NOT NULL,
        path TEXT NOT NULL,
        sources TEXT NOT NULL,
        schema TEXT NOT NULL,
        rows INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        content_hash TEXT NOT NULL,
        rejected_rows INTEGER NOT NULL DEFAULT 0,
        duration_s REAL,
        created_at REAL NOT NULL,
        job_id INTEGER,
        note TEXT,
        PRIMARY KEY (dataset, version)
    );
    CREATE TABLE query_history (
        id INTEGER PRIMARY KEY,
        t REAL NOT NULL,
        sql TEXT NOT NULL,
        duration_s REAL,
        rows INTEGER,
        error TEXT
    );
    """,
    4: """
    CREATE TABLE runs (
        job_id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        model TEXT NOT NULL,
        task TEXT NOT NULL,
        dataset TEXT NOT NULL,
        dataset_version INTEGER NOT NULL,
        dataset_hash TEXT NOT NULL,
        params TEXT NOT NULL,
        env TEXT NOT NULL,
        metrics TEXT,
        sweep_metric TEXT,
        bundle TEXT,
        started_at REAL NOT NULL,
        finished_at REAL
    );
    """,
    5: """
    CREATE TABLE evaluations (
        job_id INTEGER PRIMARY KEY,
        run_job_id INTEGER,
        dataset TEXT NOT NULL,
        dataset_version INTEGER NOT NULL,
        model_format TEXT NOT NULL,
        model_path TEXT NOT NULL,
        metrics TEXT NOT NULL,
        gate_passed INTEGER NOT NULL,
        result TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE models (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        export_job_id INTEGER NOT NULL,
        run_job_id INTEGER,
        path TEXT NOT NULL,
        format TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        card TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # Executors (60-69): where each job runs ('local' or 'slurm'), its Slurm job id and node,
    # whether Slurm may still hold it (submitted, not yet seen ended), and how much of the job's
    # record file (see workbench/db/journal.py) has been ingested.
    60: """
    ALTER TABLE jobs ADD COLUMN executor TEXT NOT NULL DEFAULT 'local';
    ALTER TABLE jobs ADD COLUMN slurm_id TEXT;
    ALTER TABLE jobs ADD COLUMN slurm_open INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN node TEXT;
    ALTER TABLE jobs ADD COLUMN records_offset INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_slurm_open ON jobs(id) WHERE slurm_open = 1;
    """,
}
SCHEMA_VERSION = max(MIGRATIONS)


class StoreError(RuntimeError):
    """The state file cannot be used; the message says why and how to recover."""


class JobError(ValueError):
    """A job-control request that cannot be done (no such job, wrong state)."""


class NoSuchJob(JobError):
    """An id that names no job (a usage error: exit code 2)."""


@dataclass(frozen=True)
class JobRequest:
    """Everything a client decides at submit time."""

    name: str
    kind: str
    spec: dict[str, Any]
    cwd: str
    env: dict[str, str]
    argv: list[str] | None = None
    priority: int = 0
    group: str = "default"
    gpus: float = 0.0
    gpu_mem: int | None = None
    cpus: float = 0.0
    mem: int | None = None
    retries: int = 0
    time_limit: float | None = None
    fail_unrunnable: bool = False
    after: tuple[tuple[int, str], ...] = ()
    pipeline_id: int | None = None
    stage: str | None = None
    paused: bool = False
    executor: str = "local"


@dataclass(frozen=True)
class Job:
    """One row of the queue, as read from the store."""

    id: int
    name: str
    kind: str
    state: str
    spec: dict[str, Any]
    argv: list[str] | None
    cwd: str
    env: dict[str, str]
    priority: int
    group: str
    gpus: float
    gpu_mem: int | None
    cpus: float
    mem: int | None
    retries: int
    attempt: int
    time_limit: float | None
    fail_unrunnable: bool
    pipeline_id: int | None
    stage: str | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    reason: str | None
    pid: int | None
    pid_start: float | None
    granted_gpus: list[int] | None
    intent: str | None
    progress: float | None
    progress_msg: str | None
    peak_gpu_mem: int | None
    mean_gpu_util: float | None
    deps: tuple[tuple[int, str], ...] = field(default=())

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    def to_json(self, with_env: bool = False) -> dict[str, Any]:
        """The job as `--json` prints it (env only on request: it can be large)."""
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "state": self.state,
            "reason": self.reason,
            "spec": self.spec,
            "argv": self.argv,
            "cwd": self.cwd,
            "priority": self.priority,
            "group": self.group,
            "resources": {
                "gpus": self.gpus,
                "gpu_mem": self.gpu_mem,
                "cpus": self.cpus,
                "mem": self.mem,
            },
            "granted_gpus": self.granted_gpus,
            "retries": self.retries,
            "attempt": self.attempt,
            "time_limit": self.time_limit,
            "after": [{"job": d, "cond": c} for d, c in self.deps],
            "pipeline_id": self.pipeline_id,
            "stage": self.stage,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "exit_code": self.exit_code,
            "pid": self.pid,
            "progress": self.progress,
            "progress_msg": self.progress_msg,
            "peak_gpu_mem": self.peak_gpu_mem,
            "mean_gpu_util": self.mean_gpu_util,
        }
        if with_env:
            out["env"] = self.env
        return out


@dataclass(frozen=True)
class JobEvent:
    """One state change of a job, with its time and reason."""

    job_id: int
    t: float
    state: str
    reason: str | None


_JOB_COLUMNS = (
    "id, name, kind, state, spec, argv, cwd, env, priority, grp, gpus, gpu_mem, cpus, mem,"
    " retries, attempt, time_limit, fail_unrunnable, pipeline_id, stage, created_at, started_at,"
    " ended_at, exit_code, reason, pid, pid_start, granted_gpus, intent, progress, progress_msg,"
    " peak_gpu_mem, mean_gpu_util"
)


def _job_from_row(row: sqlite3.Row | tuple[Any, ...], deps: tuple[tuple[int, str], ...]) -> Job:
    (
        id_, name, kind, state, spec, argv, cwd, env, priority, grp, gpus, gpu_mem, cpus, mem,
        retries, attempt, time_limit, fail_unrunnable, pipeline_id, stage, created_at, started_at,
        ended_at, exit_code, reason, pid, pid_start, granted_gpus, intent, progress, progress_msg,
        peak_gpu_mem, mean_gpu_util,
    ) = row  # fmt: skip
    return Job(
        id=id_,
        name=name,
        kind=kind,
        state=state,
        spec=json.loads(spec),
        argv=json.loads(argv) if argv else None,
        cwd=cwd,
        env=json.loads(env),
        priority=priority,
        group=grp,
        gpus=gpus,
        gpu_mem=gpu_mem,
        cpus=cpus,
        mem=mem,
        retries=retries,
        attempt=attempt,
        time_limit=time_limit,
        fail_unrunnable=bool(fail_unrunnable),
        pipeline_id=pipeline_id,
        stage=stage,
        created_at=created_at,
        started_at=started_at,
        ended_at=ended_at,
        exit_code=exit_code,
        reason=reason,
        pid=pid,
        pid_start=pid_start,
        granted_gpus=json.loads(granted_gpus) if granted_gpus else None,
        intent=intent,
        progress=progress,
        progress_msg=progress_msg,
        peak_gpu_mem=peak_gpu_mem,
        mean_gpu_util=mean_gpu_util,
        deps=deps,
    )


def _create_database(path: Path) -> None:
    """Create a fresh state file atomically, so a zero-length or partial file is never ours."""
    fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".db", dir=path.parent)
    os.close(fd)
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        _migrate(conn)
        conn.close()
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        for leftover in (tmp, tmp + "-wal", tmp + "-shm"):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        has_meta = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        current = 0
        if has_meta:
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"state.db has schema version {current}, newer than this workbench"
                f" ({SCHEMA_VERSION}); upgrade gpu-workbench"
            )
        for version in sorted(v for v in MIGRATIONS if v > current):
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(version),),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def recovery_advice(path: Path) -> str:
    """What to tell a user whose state file cannot be read."""
    backup = path.with_name(path.name + ".bak")
    lines = [
        f"{path} cannot be read; it was left untouched.",
        "To recover:",
        f"  - try SQLite's recovery: sqlite3 {path} .recover | sqlite3 {path}.recovered"
        f" and move {path.name}.recovered to {path.name}",
    ]
    if backup.exists():
        lines.append(
            f"  - or restore the backup taken at the last good daemon start: cp {backup} {path}"
        )
    lines.append(f"  - or start afresh (losing the queue and history): mv {path} {path}.broken")
    return "\n".join(lines)


class Store:
    """One connection to state.db. Each process opens its own; writes are short transactions."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path, check: bool = False) -> Store:
        """Open (creating if absent) and migrate. `check` runs an integrity check first."""
        path = Path(path)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _create_database(path)
        try:
            if path.stat().st_size == 0:
                raise sqlite3.DatabaseError("file is empty")
            conn = sqlite3.connect(
                path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout=30000")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.DatabaseError(f"cannot switch to WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous=NORMAL")
            if check:
                result = conn.execute("PRAGMA quick_check").fetchall()
                if result != [("ok",)]:
                    raise sqlite3.DatabaseError("; ".join(str(r[0]) for r in result[:3]))
            _migrate(conn)
        except sqlite3.DatabaseError as error:
            raise StoreError(
                f"state file unreadable ({error}).\n{recovery_advice(path)}"
            ) from error
        return cls(conn, path)

    def close(self) -> None:
        self.conn.close()

    def backup_to(self, target: Path) -> None:
        """A consistent copy of the state file (SQLite's online backup), written atomically."""
        tmp = target.with_name(target.name + ".tmp")
        dest = sqlite3.connect(tmp)
        with dest:
            self.conn.backup(dest)
        dest.close()
        os.replace(tmp, target)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front so reads inside are current."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def data_version(self) -> int:
        """Changes when another connection commits (cheap; used to poll for changes)."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    # ---- meta and settings -------------------------------------------------------------

    def get_setting(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_setting(self, key: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    @property
    def draining(self) -> bool:
        """Drain mode: running jobs finish, nothing new starts."""
        return self.get_setting("drain") == "1"

    def set_draining(self, on: bool) -> None:
        self.set_setting("drain", "1" if on else "0")

    def group_limits(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT name, parallel FROM groups").fetchall())

    def set_group(self, name: str, parallel: int) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO groups(name, parallel) VALUES (?, ?)", (name, parallel)
            )

    # ---- submit ------------------------------------------------------------------------

    def _insert(self, conn: sqlite3.Connection, req: JobRequest, now: float) -> int:
        state = PAUSED if req.paused else QUEUED
        cur = conn.execute(
            "INSERT INTO jobs(name, kind, state, spec, argv, cwd, env, priority, grp, gpus, gpu_mem,"
            " cpus, mem, retries, time_limit, fail_unrunnable, pipeline_id, stage, created_at,"
            " executor) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                req.name,
                req.kind,
                state,
                json.dumps(req.spec),
                json.dumps(req.argv) if req.argv is not None else None,
                req.cwd,
                json.dumps(req.env),
                req.priority,
                req.group,
                req.gpus,
                req.gpu_mem,
                req.cpus,
                req.mem,
                req.retries,
                req.time_limit,
                int(req.fail_unrunnable),
                req.pipeline_id,
                req.stage,
                now,
                req.executor,
            ),
        )
        job_id = int(cur.lastrowid or 0)
        for dep_id, cond in req.after:
            if cond not in DEP_CONDITIONS:
                raise JobError(f"unknown dependency condition {cond!r}")
            if not conn.execute("SELECT 1 FROM jobs WHERE id=?", (dep_id,)).fetchone():
                raise NoSuchJob(f"dependency {dep_id}: no such job")
            conn.execute(
                "INSERT OR REPLACE INTO job_deps(job_id, dep_id, cond) VALUES (?,?,?)",
                (job_id, dep_id, cond),
            )
        self._event(conn, job_id, state, "submitted", now)
        return job_id

    def submit(self, req: JobRequest) -> int:
        """Queue one job; cost is independent of how many jobs the store holds."""
        with self.transaction() as conn:
            return self._insert(conn, req, time.time())

    def submit_many(self, build: Sequence[JobRequest]) -> list[int]:
        """Queue several jobs in one transaction (all or none)."""
        now = time.time()
        with self.transaction() as conn:
            return [self._insert(conn, req, now) for req in build]

    def submit_pipeline(
        self, name: str, path: str, stages: Sequence[tuple[JobRequest, Sequence[tuple[str, str]]]]
    ) -> tuple[int, dict[str, list[int]]]:
        """Queue a pipeline's jobs in one transaction. Each stage is (request, [(stage, cond)]),
        in an order where every stage comes after the stages it depends on; several requests may
        share a stage name (a sweep), and a dependency on that stage waits for all of them."""
        now = time.time()
        ids: dict[str, list[int]] = {}
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO pipelines(name, path, created_at) VALUES (?,?,?)", (name, path, now)
            )
            pipeline_id = int(cur.lastrowid or 0)
            for request, after in stages:
                deps = tuple((dep, cond) for stage, cond in after for dep in ids[stage])
                stage = request.stage or request.name
                req = dataclasses.replace(request, pipeline_id=pipeline_id, stage=stage, after=deps)
                ids.setdefault(stage, []).append(self._insert(conn, req, now))
        return pipeline_id, ids

    # ---- reads -------------------------------------------------------------------------

    def _deps_for(self, ids: Iterable[int]) -> dict[int, tuple[tuple[int, str], ...]]:
        ids = list(ids)
        out: dict[int, list[tuple[int, str]]] = {i: [] for i in ids}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for job_id, dep_id, cond in self.conn.execute(
                f"SELECT job_id, dep_id, cond FROM job_deps WHERE job_id IN ({marks})"
                " ORDER BY job_id, dep_id",
                chunk,
            ):
                out[job_id].append((dep_id, cond))
        return {k: tuple(v) for k, v in out.items()}

    def _jobs_where(self, where: str, params: Sequence[Any] = ()) -> list[Job]:
        rows = self.conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs {where}", params).fetchall()
        deps = self._deps_for(r[0] for r in rows)
        return [_job_from_row(r, deps[r[0]]) for r in rows]

    def get(self, job_id: int) -> Job:
        jobs = self._jobs_where("WHERE id=?", (job_id,))
        if not jobs:
            raise NoSuchJob(f"no job with id {job_id}")
        return jobs[0]

    def find(self, job_id: int) -> Job | None:
        jobs = self._jobs_where("WHERE id=?", (job_id,))
        return jobs[0] if jobs else None

    def list_jobs(
        self,
        states: Iterable[str] | None = None,
        limit: int | None = None,
        pipeline_id: int | None = None,
    ) -> list[Job]:
        """Jobs by id, newest last; `limit` keeps the newest N."""
        clauses: list[str] = []
        params: list[Any] = []
        if states is not None:
            states = list(states)
            clauses.append(f"state IN ({','.join('?' * len(states))})")
            params.extend(states)
        if pipeline_id is not None:
            clauses.append("pipeline_id=?")
            params.append(pipeline_id)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        if limit is not None:
            where += f" ORDER BY id DESC LIMIT {int(limit)}"
            return list(reversed(self._jobs_where(where, params)))
        return self._jobs_where(where + " ORDER BY id", params)

    def active_jobs(self, light: bool = False) -> list[Job]:
        """Queued, running, paused and blocked jobs (uses the partial index).

        `light` leaves out the captured environment and the spec (empty dicts): the daemon's
        scheduling pass reads every active job on each wake and needs neither."""
        where = "WHERE state IN ('queued', 'running', 'paused', 'blocked') ORDER BY id"
        if not light:
            return self._jobs_where(where)
        columns = _JOB_COLUMNS.replace(" spec,", " '{}',").replace(" env,", " '{}',")
        rows = self.conn.execute(f"SELECT {columns} FROM jobs {where}").fetchall()
        deps = self._deps_for(r[0] for r in rows)
        return [_job_from_row(r, deps[r[0]]) for r in rows]

    def states_of(self, ids: Iterable[int]) -> dict[int, str]:
        """Current state per job id (ids that no longer exist are absent)."""
        ids = list(set(ids))
        out: dict[int, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            out.update(
                self.conn.execute(
                    f"SELECT id, state FROM jobs WHERE id IN ({marks})", chunk
                ).fetchall()
            )
        return out

    def events(self, job_id: int) -> list[JobEvent]:
        rows = self.conn.execute(
            "SELECT job_id, t, state, reason FROM job_events WHERE job_id=? ORDER BY id", (job_id,)
        ).fetchall()
        return [JobEvent(*r) for r in rows]

    def dependents(self, job_id: int) -> list[int]:
        return [
            r[0] for r in self.conn.execute("SELECT job_id FROM job_deps WHERE dep_id=?", (job_id,))
        ]

    def counts_by_state(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())

    # ---- state changes -----------------------------------------------------------------

    @staticmethod
    def _event(
        conn: sqlite3.Connection, job_id: int, state: str, reason: str | None, now: float
    ) -> None:
        conn.execute(
            "INSERT INTO job_events(job_id, t, state, reason) VALUES (?,?,?,?)",
            (job_id, now, state, reason),
        )

    def set_state(
        self,
        job_id: int,
        state: str,
        reason: str | None,
        expect: Iterable[str] | None = None,
        **columns: Any,
    ) -> bool:
        """Move a job to `state` (only from `expect` states, if given), recording an event."""
        with self.transaction() as conn:
            return self._set_state(conn, job_id, state, reason, expect, time.time(), columns)

    def fail_and_requeue(
        self,
        job_id: int,
        reason: str,
        retry_reason: str,
        expect: Iterable[str],
        **columns: Any,
    ) -> bool:
        """A failed attempt with retries left: record the failure (event, exit code) and queue
        the next attempt in one transaction, so no reader (`wait`, `--batch`) sees it failed."""
        now = time.time()
        with self.transaction() as conn:
            changed = self._set_state(conn, job_id, FAILED, reason, expect, now, columns)
            if changed:
                self._requeue(conn, job_id, retry_reason, now)
        return changed

    def _set_state(
        self,
        conn: sqlite3.Connection,
        job_id: int,
        state: str,
        reason: str | None,
        expect: Iterable[str] | None,
        now: float,
        columns: dict[str, Any],
    ) -> bool:
        sets = ["state=?", "reason=?"]
        params: list[Any] = [state, reason]
        if state in ENDED:
            columns.setdefault("ended_at", now)
            columns.setdefault("intent", None)
        for key, value in columns.items():
            sets.append(f"{key}=?")
            params.append(
                json.dumps(value) if key == "granted_gpus" and value is not None else value
            )
        where = "id=?"
        params.append(job_id)
        if expect is not None:
            expect = list(expect)
            where += f" AND state IN ({','.join('?' * len(expect))})"
            params.extend(expect)
        changed = conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE {where}", params).rowcount
        if changed:
            self._event(conn, job_id, state, reason, now)
        return bool(changed)

    def set_reason(self, job_id: int, reason: str | None) -> None:
        """Update why a queued job is waiting (no event: this changes often)."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET reason=? WHERE id=? AND reason IS NOT ?", (reason, job_id, reason)
            )

    def update(self, job_id: int, **columns: Any) -> None:
        """Set plain columns of a job (pid, progress, intent...) without a state change."""
        if not columns:
            return
        sets = ", ".join(f"{k}=?" for k in columns)
        values = [
            json.dumps(v) if k == "granted_gpus" and v is not None else v
            for k, v in columns.items()
        ]
        with self.transaction() as conn:
            conn.execute(f"UPDATE jobs SET {sets} WHERE id=?", [*values, job_id])

    def set_progress(self, job_id: int, fraction: float | None, message: str | None = None) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET progress=?, progress_msg=? WHERE id=?", (fraction, message, job_id)
            )

    def request(self, job_id: int, action: str) -> str:
        """A client's job-control intent: cancel, pause, resume, retry, rm.

        Jobs that are not running change state here at once; for a running job the intent is
        recorded and the daemon (which owns the process) carries it out. Returns what happened.
        """
        now = time.time()
        with self.transaction() as conn:
            row = conn.execute("SELECT state, pid FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise NoSuchJob(f"no job with id {job_id}")
            state, pid = row
            started = pid is not None
            if action == "cancel":
                if state in ENDED:
                    raise JobError(f"job {job_id} already {state}")
                if state in (QUEUED, BLOCKED) or (state == PAUSED and not started):
                    conn.execute(
                        "UPDATE jobs SET state=?, reason=?, ended_at=?, intent=NULL WHERE id=?",
                        (CANCELLED, "cancelled before it started", now, job_id),
                    )
                    self._event(conn, job_id, CANCELLED, "cancelled before it started", now)
                    return "cancelled"
                conn.execute("UPDATE jobs SET intent='cancel' WHERE id=?", (job_id,))
                return "cancelling"
            if action == "pause":
                if state == QUEUED:
                    conn.execute(
                        "UPDATE jobs SET state=?, reason=? WHERE id=?", (PAUSED, "held", job_id)
                    )
                    self._event(conn, job_id, PAUSED, "held before it started", now)
                    return "paused"
                if state == RUNNING:
                    conn.execute("UPDATE jobs SET intent='pause' WHERE id=?", (job_id,))
                    return "pausing"
                raise JobError(
                    f"job {job_id} is {state}; only queued or running jobs can be paused"
                )
            if action == "resume":
                if state != PAUSED:
                    raise JobError(f"job {job_id} is {state}, not paused")
                if not started:
                    conn.execute(
                        "UPDATE jobs SET state=?, reason=NULL WHERE id=?", (QUEUED, job_id)
                    )
                    self._event(conn, job_id, QUEUED, "released", now)
                    return "queued"
                conn.execute("UPDATE jobs SET intent='resume' WHERE id=?", (job_id,))
                return "resuming"
            if action == "retry":
                if state not in (FAILED, CANCELLED, BLOCKED):
                    raise JobError(
                        f"job {job_id} is {state}; only failed, cancelled or blocked jobs can be retried"
                    )
                self._requeue(conn, job_id, "retry requested", now)
                return "queued"
            if action == "rm":
                if state in (RUNNING,) or (state == PAUSED and started):
                    raise JobError(f"job {job_id} is {state}; cancel it before removing it")
                conn.execute("DELETE FROM jobs WHERE id=?", (job_id,))
                conn.execute("DELETE FROM job_events WHERE job_id=?", (job_id,))
                conn.execute("DELETE FROM job_deps WHERE job_id=?", (job_id,))
                conn.execute("DELETE FROM metrics WHERE job_id=?", (job_id,))
                return "removed"
            raise JobError(f"unknown action {action!r}")

    def _requeue(self, conn: sqlite3.Connection, job_id: int, reason: str, now: float) -> None:
        """Back to the queue as a new attempt; dependents blocked by it wait again."""
        conn.execute(
            "UPDATE jobs SET state=?, reason=?, attempt=attempt+1, started_at=NULL, ended_at=NULL,"
            " exit_code=NULL, pid=NULL, pid_start=NULL, granted_gpus=NULL, intent=NULL,"
            " progress=NULL, progress_msg=NULL, slurm_id=NULL, slurm_open=0, node=NULL, records_offset=0"
            " WHERE id=?",
            (QUEUED, reason, job_id),
        )
        self._event(conn, job_id, QUEUED, reason, now)
        for (dependent,) in conn.execute(
            "SELECT j.id FROM jobs j JOIN job_deps d ON d.job_id=j.id WHERE d.dep_id=? AND j.state=?",
            (job_id, BLOCKED),
        ).fetchall():
            self._requeue_blocked(conn, dependent, now)

    def _requeue_blocked(self, conn: sqlite3.Connection, job_id: int, now: float) -> None:
        conn.execute(
            "UPDATE jobs SET state=?, reason=NULL, slurm_id=NULL, slurm_open=0, node=NULL, records_offset=0"
            " WHERE id=?",
            (QUEUED, job_id),
        )
        self._event(conn, job_id, QUEUED, "a dependency was retried", now)
        for (dependent,) in conn.execute(
            "SELECT j.id FROM jobs j JOIN job_deps d ON d.job_id=j.id WHERE d.dep_id=? AND j.state=?",
            (job_id, BLOCKED),
        ).fetchall():
            self._requeue_blocked(conn, dependent, now)

    def requeue(self, job_id: int, reason: str) -> None:
        """Automatic retry by the daemon."""
        with self.transaction() as conn:
            self._requeue(conn, job_id, reason, time.time())

    def set_priority(self, job_id: int, priority: int) -> None:
        with self.transaction() as conn:
            if not conn.execute(
                "UPDATE jobs SET priority=? WHERE id=?", (priority, job_id)
            ).rowcount:
                raise NoSuchJob(f"no job with id {job_id}")

    # ---- metrics -----------------------------------------------------------------------

    def add_metrics(self, job_id: int, step: int, values: dict[str, float | None]) -> None:
        now = time.time()
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO metrics(job_id, step, name, value, t) VALUES (?,?,?,?,?)",
                [(job_id, step, name, value, now) for name, value in values.items()],
            )

    def add_metric_rows(self, job_id: int, rows: Sequence[tuple[int, str, float | None]]) -> None:
        """Many (step, name, value) rows in one transaction."""
        now = time.time()
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO metrics(job_id, step, name, value, t) VALUES (?,?,?,?,?)",
                [(job_id, step, name, value, now) for step, name, value in rows],
            )

    def metrics(
        self, job_id: int, names: Iterable[str] | None = None
    ) -> dict[str, list[tuple[int, float | None]]]:
        """Series per metric name: [(step, value), ...] in step order."""
        params: list[Any] = [job_id]
        where = "job_id=?"
        if names is not None:
            names = list(names)
            where += f" AND name IN ({','.join('?' * len(names))})"
            params.extend(names)
        out: dict[str, list[tuple[int, float | None]]] = {}
        for name, step, value in self.conn.execute(
            f"SELECT name, step, value FROM metrics WHERE {where} ORDER BY name, step, rowid",
            params,
        ):
            out.setdefault(name, []).append((step, value))
        return out

    def last_metrics(self, job_id: int) -> dict[str, float | None]:
        """The latest value of each metric of a job."""
        rows = self.conn.execute(
            "SELECT name, value FROM metrics WHERE rowid IN"
            " (SELECT max(rowid) FROM metrics WHERE job_id=? GROUP BY name)",
            (job_id,),
        ).fetchall()
        return dict(rows)
