"""The jobs repository over state.db (SQLite in WAL mode), shared by the daemon, clients and jobs.

Every job state change goes through `workbench.jobmodel.states.next_state`; every statement
that touches state.db lives in `workbench.db`.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.db.connection import (
    StoreCorrupt,
    StoreError,
    StoreFull,
    ThreadConnections,
    connect,
    full_message,
    immediate,
    is_full_error,
    quick_check,
    recovery_advice,
    translate,
)
from workbench.db.migrations import SCHEMA_VERSION, create_database, migrate
from workbench.jobmodel.resources import Resources
from workbench.jobmodel.retry import retry_delay_s
from workbench.jobmodel.secrets import HeldCredentials, mask_job_json
from workbench.jobmodel.states import (
    ACTIVE,
    ENDED,
    LIVE,
    SETTLED,
    Event,
    IllegalTransition,
    JobState,
    allowed,
    next_state,
)

if TYPE_CHECKING:
    from workbench.db.telemetry import TelemetryStore

__all__ = [
    "ACTIVE",
    "BLOCKED",
    "CANCELLED",
    "DEP_CONDITIONS",
    "ENDED",
    "FAILED",
    "LIVE",
    "PAUSED",
    "QUEUED",
    "RUNNING",
    "SCHEMA_VERSION",
    "SETTLED",
    "STARTING",
    "STATES",
    "SUCCEEDED",
    "AuditEntry",
    "Event",
    "IllegalTransition",
    "Job",
    "JobError",
    "JobEvent",
    "JobRequest",
    "JobState",
    "NoSuchJob",
    "Resources",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "allowed",
    "decode_text",
    "encode_text",
    "recovery_advice",
    "translate_os",
]

# The tables every client reads or writes: checked on each open.
# Left out of a client's check at open (the daemon checks the whole file): per-step training
# metrics grow large, and no queue command reads or writes them. Every other table is checked,
# `sqlite_sequence` and the schema included, so a client that reads (`ls`) refuses exactly the
# damage a client that writes (`submit`) would hit.
UNCHECKED_AT_OPEN = ("metrics",)

# Short names for modules that compare states; the words themselves live in JobState only.
QUEUED, STARTING, RUNNING, PAUSED = (
    JobState.QUEUED,
    JobState.STARTING,
    JobState.RUNNING,
    JobState.PAUSED,
)
BLOCKED, SUCCEEDED, FAILED, CANCELLED = (
    JobState.BLOCKED,
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.CANCELLED,
)
STATES = tuple(JobState)

DEP_CONDITIONS = ("ok", "any", "fail")


REQUEST_PREFIX = "request "  # the audit detail of a submission the daemon took for a client


class JobError(ValueError):
    """A job-control request that cannot be done (no such job, wrong state)."""


class Withdrawn(Exception):
    """A submission whose submitter left before it was committed (`Store.submit`)."""


class NoSuchJob(JobError):
    """An id that names no job (a usage error: exit code 2)."""


class NotWhereItRuns(JobError):
    """An action the job's executor cannot carry out (a usage error: exit code 2), e.g. `pause`
    of a running Slurm job: suspending one is a Slurm administrator's command."""


@dataclass(frozen=True)
class JobRequest:
    """Everything a client decides at submit time.

    argv items and cwd may hold lone surrogates (bytes that are not UTF-8, decoded with
    `surrogateescape`, as `os.fsdecode` gives them); the store keeps them byte-exact."""

    name: str
    kind: str
    spec: dict[str, Any]
    cwd: str
    env: dict[str, str]
    argv: list[str] | None = None
    priority: int = 0
    group: str = "default"
    resources: Resources = field(default_factory=Resources)
    retries: int = 0
    time_limit: float | None = None
    fail_unrunnable: bool = False
    after: tuple[tuple[int, str], ...] = ()
    pipeline_id: int | None = None
    stage: str | None = None
    paused: bool = False
    executor: str = "local"
    preemptible: bool = True  # false: never preempted to give borrowed GPUs back
    # Per-job sbatch options (`[slurm]`, workbench.queue.requests.SlurmOptions as a table);
    # read back with workbench.db.executors.slurm_options.
    slurm: dict[str, Any] | None = None
    # What it was submitted with, to reproduce it (workbench.queue.repro): {"code",
    # "environment", "snapshot"}; None: not captured.
    repro: dict[str, Any] | None = None
    # Whose job it is: the submitter's uid as the kernel gave it (SO_PEERCRED) in system mode;
    # None in a per-user home, where every job is the home owner's.
    uid: int | None = None
    # Credentials the job gets from the daemon's memory (workbench.jobmodel.secrets): the store
    # keeps their token and names (`jobs.held_credentials`, migration 110), never a value.
    credentials: HeldCredentials | None = None


@dataclass(frozen=True)
class Job:
    """One row of the queue, as read from the store (times are Unix seconds)."""

    id: int
    name: str
    kind: str
    state: JobState
    spec: dict[str, Any]
    argv: list[str] | None
    cwd: str
    env: dict[str, str]
    priority: int
    group: str
    resources: Resources
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
    launch_token: str | None = None
    deps: tuple[tuple[int, str], ...] = field(default=())
    executor: str = "local"  # where it runs: 'local' or 'slurm'
    slurm_id: str | None = None  # its Slurm job id (`123`, `120_3` in an array) once submitted
    node: str | None = None  # the cluster node it runs on (Slurm)
    preemptible: bool = True  # false: never preempted to give borrowed GPUs back
    # What the ended attempt used (None until it is settled, or where it was not measured):
    # CPU seconds (user + system, all its processes) and peak memory in bytes, each with its
    # source, 'cgroup' (the job's cgroup v2) or 'rusage' (getrusage of the wrapper's children).
    cpu_s: float | None = None
    cpu_source: str | None = None
    peak_mem_bytes: int | None = None
    peak_mem_source: str | None = None
    not_before: float | None = None  # a retry backing off may not start before (Unix s)
    # What CUDA_VISIBLE_DEVICES held for this attempt where it is not GPU indices: MIG
    # instances by UUID (`MIG-5e1f...`); None for a whole or fractional GPU, or not started.
    granted_devices: list[str] | None = None
    uid: int | None = None  # its owner's uid (system mode); None: the home owner's
    # A Slurm job's elapsed wall seconds and the GPUs it was allocated, as Slurm's accounting
    # (sacct) has them; None for a local job, or where the cluster keeps no accounting.
    elapsed_s: float | None = None
    alloc_gpus: int | None = None

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    @property
    def gpus(self) -> float:
        return self.resources.gpus

    @property
    def gpu_mem(self) -> int | None:
        return self.resources.gpu_mem

    @property
    def cpus(self) -> float:
        return self.resources.cpus

    @property
    def mem(self) -> int | None:
        return self.resources.mem

    def to_json(self, with_env: bool = False, secret_words: Iterable[str] = ()) -> dict[str, Any]:
        """The job as `--json` prints it. `with_env` adds the captured environment. Values of
        secret-looking variables (in `env` and in a spec's `env`) are always masked; callers
        pass the configured extra words (`workbench.present.job_json` does). Listings write
        the same text straight from rows (`workbench.db.job_pages`): change both together (a
        test compares them)."""
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "state": str(self.state),
            "reason": self.reason,
            "spec": self.spec,
            "argv": self.argv,
            "cwd": self.cwd,
            "priority": self.priority,
            "group": self.group,
            "resources": self.resources.to_json(),
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
            "executor": self.executor,
            "slurm_id": self.slurm_id,
            "node": self.node,
            "preemptible": self.preemptible,
            "cpu_s": self.cpu_s,
            "cpu_source": self.cpu_source,
            "peak_mem_bytes": self.peak_mem_bytes,
            "peak_mem_source": self.peak_mem_source,
            "granted_devices": self.granted_devices,
            "uid": self.uid,
            "elapsed_s": self.elapsed_s,
            "alloc_gpus": self.alloc_gpus,
        }
        if with_env:
            out["env"] = self.env
        return mask_job_json(out, secret_words)


@dataclass(frozen=True)
class JobEvent:
    """One state change of a job: its time, the state it led to, why, and the event's name."""

    job_id: int
    t: float
    state: str
    reason: str | None
    event: str | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One intent a user expressed: when (Unix s), who (uid), what, on which job."""

    id: int
    t: float
    uid: int
    action: str
    job_id: int | None
    detail: str | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_JOB_COLUMNS = (
    "id, name, kind, state, spec, argv, cwd,"
    " coalesce((SELECT env FROM envs WHERE envs.id = jobs.env_id), env),"
    " priority, grp, gpus, gpu_mem, cpus, mem,"
    " retries, attempt, time_limit, fail_unrunnable, pipeline_id, stage, created_at, started_at,"
    " ended_at, exit_code, reason, pid, pid_start, granted_gpus, intent, progress, progress_msg,"
    " peak_gpu_mem, mean_gpu_util, launch_token, executor, slurm_id, node, mig_profile,"
    " preemptible, cpu_s, cpu_source, peak_mem_bytes, peak_mem_source, not_before,"
    " granted_devices, uid, elapsed_s, alloc_gpus"
)
# The same columns with spec and env left out (lists that never show them need not parse them),
# and with only env left out (listings that show specs: an environment is the bulk of a row).
_ENV_COLUMN = " coalesce((SELECT env FROM envs WHERE envs.id = jobs.env_id), env),"
_LIGHT_COLUMNS = _JOB_COLUMNS.replace(" spec,", " '{}',").replace(_ENV_COLUMN, " '{}',")
_NO_ENV_COLUMNS = _JOB_COLUMNS.replace(_ENV_COLUMN, " '{}',")

# Columns a caller may set with `update` or alongside a transition (never `state`).
_SETTABLE = frozenset(
    {
        "started_at",
        "ended_at",
        "exit_code",
        "reason",
        "pid",
        "pid_start",
        "granted_gpus",
        "granted_devices",
        "not_before",
        "intent",
        "progress",
        "progress_msg",
        "peak_gpu_mem",
        "mean_gpu_util",
        "launch_token",
        "slurm_id",
        "node",
        "records_offset",
        "cpu_s",
        "cpu_source",
        "peak_mem_bytes",
        "peak_mem_source",
        "elapsed_s",
        "alloc_gpus",
    }
)


# The job a submission with this request token queued (index audit_request, migration 21).
_BY_REQUEST = "SELECT job_id FROM audit WHERE action='submit' AND detail=? ORDER BY id DESC LIMIT 1"


def encode_text(text: str) -> str:
    """Text for a TEXT column: as is when it is valid UTF-8, else a JSON string literal
    (ASCII, with lone surrogates escaped) so bytes that are not UTF-8 survive exactly."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(text)
    if text.startswith('"'):
        return json.dumps(text)
    return text


def decode_text(stored: str) -> str:
    """Inverse of `encode_text`."""
    if stored.startswith('"'):
        decoded: str = json.loads(stored)
        return decoded
    return stored


def _json_dict(text: str) -> dict[str, Any]:
    """A JSON object column; the empty one (every light read) without running the parser."""
    if text == "{}":
        return {}
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def _job_from_row(row: sqlite3.Row | tuple[Any, ...], deps: tuple[tuple[int, str], ...]) -> Job:
    (
        id_, name, kind, state, spec, argv, cwd, env, priority, grp, gpus, gpu_mem, cpus, mem,
        retries, attempt, time_limit, fail_unrunnable, pipeline_id, stage, created_at, started_at,
        ended_at, exit_code, reason, pid, pid_start, granted_gpus, intent, progress, progress_msg,
        peak_gpu_mem, mean_gpu_util, launch_token, executor, slurm_id, node, mig_profile,
        preemptible, cpu_s, cpu_source, peak_mem_bytes, peak_mem_source, not_before,
        granted_devices, uid, elapsed_s, alloc_gpus,
    ) = row  # fmt: skip
    return Job(
        id=id_,
        name=decode_text(name),
        kind=kind,
        state=JobState(state),
        spec=_json_dict(spec),
        argv=json.loads(argv) if argv else None,
        cwd=decode_text(cwd),
        env=_json_dict(env),
        priority=priority,
        group=grp,
        resources=Resources(
            gpus=gpus, gpu_mem=gpu_mem, cpus=cpus, mem=mem, mig_profile=mig_profile
        ),
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
        launch_token=launch_token,
        executor=executor,
        slurm_id=slurm_id,
        node=node,
        deps=deps,
        preemptible=bool(preemptible),
        cpu_s=cpu_s,
        cpu_source=cpu_source,
        peak_mem_bytes=peak_mem_bytes,
        peak_mem_source=peak_mem_source,
        not_before=not_before,
        granted_devices=json.loads(granted_devices) if granted_devices else None,
        uid=uid,
        elapsed_s=elapsed_s,
        alloc_gpus=alloc_gpus,
    )


def _column_value(key: str, value: Any) -> Any:
    if key not in _SETTABLE:
        raise ValueError(f"not a settable job column: {key!r}")
    if key in ("granted_gpus", "granted_devices") and value is not None:
        return json.dumps(value)
    return value


class Store:
    """state.db for one process: one SQLite connection per thread (opened on first use).

    Writes are short `BEGIN IMMEDIATE` transactions. Errors a user must act on surface as
    StoreError subclasses: StoreCorrupt (damaged file), StoreFull (no space left)."""

    def __init__(self, connections: ThreadConnections, path: Path):
        self._connections = connections
        self.path = path
        self._telemetry: TelemetryStore | None = None
        self._telemetry_lock = threading.Lock()
        self._version_conn: sqlite3.Connection | None = None
        self._version_lock = threading.Lock()
        self._acting = threading.local()  # per thread: whose intents the audit records

    @property
    def telemetry(self) -> TelemetryStore:
        """The history file beside this state file (telemetry.db), opened on first use."""
        from workbench.db.telemetry import TelemetryStore

        with self._telemetry_lock:
            if self._telemetry is None:
                self._telemetry = TelemetryStore(self.path.with_name("telemetry.db"))
            return self._telemetry

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (for the db layer's own modules)."""
        return self._connections.get()

    @classmethod
    def open(cls, path: Path, check: bool | str = True) -> Store:
        """Open (creating if absent), check and migrate.

        `check` runs SQLite's quick_check once on this open, so a damaged file is refused
        (StoreCorrupt, with recovery advice) before anything reads or writes it: True checks
        every table but per-step metrics (UNCHECKED_AT_OPEN), "full" the whole file (the
        daemon at start). A damaged metrics page is still refused when a read reaches it. Raises StoreError (newer schema, unreadable), StoreCorrupt,
        StoreFull."""
        path = Path(path)
        try:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                create_database(path, auto_vacuum=True)
            conn = connect(path)
        except sqlite3.Error as error:
            raise translate(error, path) or StoreCorrupt(
                f"state file unreadable ({error}).\n{recovery_advice(path)}"
            ) from error
        except OSError as error:
            translated = translate_os(error, path)
            if translated is None:
                raise
            raise translated from error
        try:
            if check:
                quick_check(conn, skip=() if check == "full" else UNCHECKED_AT_OPEN)
            migrate(conn)
        except sqlite3.Error as error:
            conn.close()
            raise translate(error, path) or StoreCorrupt(
                f"state file unreadable ({error}).\n{recovery_advice(path)}"
            ) from error
        except BaseException:
            conn.close()
            raise
        return cls(ThreadConnections(path, conn), path)

    def close(self) -> None:
        """Close every thread's connection, the version connection and telemetry.db."""
        self._connections.close()
        with self._version_lock:
            if self._version_conn is not None:
                self._version_conn.close()
                self._version_conn = None
        if self._telemetry is not None:
            self._telemetry.close()

    def backup_to(self, target: Path) -> None:
        """A consistent copy of the state file (SQLite's online backup), written atomically."""
        tmp = target.with_name(target.name + ".tmp")
        # Private from the first byte (it holds job environments), whatever the umask.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600))
        os.chmod(tmp, 0o600)
        dest = sqlite3.connect(tmp)
        with dest:
            self.conn.backup(dest)
        dest.close()
        os.replace(tmp, target)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT on this thread's connection.

        A full disk or a damaged file raises StoreFull / StoreCorrupt (the transaction is
        rolled back, so nothing half-written stays)."""
        try:
            with immediate(self.conn) as conn:
                yield conn
        except sqlite3.Error as error:
            translated = translate(error, self.path)
            if translated is None:
                raise
            raise translated from error

    def data_version(self, include_own: bool = True) -> int:
        """A number that changes whenever anyone (this process included) commits to state.db;
        cheap, for polling. Read on one connection of its own, so readings from any thread
        are comparable with each other. `include_own=False` reads this thread's connection
        instead, which ignores this thread's own commits (a single-threaded writer such as
        the daemon need not wake for what it wrote itself)."""
        if not include_own:
            return int(self.conn.execute("PRAGMA data_version").fetchone()[0])
        with self._version_lock:
            if self._version_conn is None:
                self._version_conn = connect(self.path)
            return int(self._version_conn.execute("PRAGMA data_version").fetchone()[0])

    # ---- meta and settings -------------------------------------------------------------

    def get_setting(self, key: str, default: str | None = None) -> str | None:
        """A value from the meta table (schema version, drain mode...), or `default`."""
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_setting(self, key: str, value: str) -> None:
        """Write one meta value."""
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    @property
    def draining(self) -> bool:
        """Drain mode: running jobs finish, nothing new starts."""
        return self.get_setting("drain") == "1"

    def set_draining(self, on: bool) -> None:
        """Turn drain mode on or off."""
        self.set_setting("drain", "1" if on else "0")

    def group_limits(self) -> dict[str, int]:
        """{group: jobs of it that may run at once} for groups with a limit."""
        return dict(self.conn.execute("SELECT name, parallel FROM groups").fetchall())

    def set_group(self, name: str, parallel: int) -> None:
        """Set a group's limit on running jobs (0: no limit)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO groups(name, parallel) VALUES (?, ?)", (name, parallel)
            )

    # ---- audit -------------------------------------------------------------------------

    def act_as(self, uid: int | None) -> None:
        """Record this thread's next intents in the audit as `uid`'s (the system daemon's gate:
        the peer's uid from the kernel); None: this process's own uid again."""
        self._acting.uid = uid

    def actor(self) -> int:
        """Whose intents this thread records in the audit (see `act_as`)."""
        acting = getattr(self._acting, "uid", None)
        return os.getuid() if acting is None else int(acting)

    def _audit(
        self,
        conn: sqlite3.Connection,
        action: str,
        job_id: int | None,
        detail: str | None,
        now: float,
    ) -> None:
        conn.execute(
            "INSERT INTO audit(t, uid, action, job_id, detail) VALUES (?,?,?,?,?)",
            (now, self.actor(), action, job_id, detail),
        )

    def audit_log(self, job_id: int | None = None, limit: int | None = None) -> list[AuditEntry]:
        """Intents in time order (oldest first); `job_id` keeps one job's, `limit` the newest N."""
        where, params = ("WHERE job_id=?", [job_id]) if job_id is not None else ("", [])
        rows = self.conn.execute(
            f"SELECT id, t, uid, action, job_id, detail FROM audit {where} ORDER BY id DESC"
            + (f" LIMIT {int(limit)}" if limit is not None else ""),
            params,
        ).fetchall()
        return [AuditEntry(*r) for r in reversed(rows)]

    # ---- submit ------------------------------------------------------------------------

    def _insert(
        self, conn: sqlite3.Connection, req: JobRequest, now: float, detail: str | None = None
    ) -> int:
        event = Event.HOLD_SUBMIT if req.paused else Event.SUBMIT
        state = next_state(None, event)
        res = req.resources
        cur = conn.execute(
            "INSERT INTO jobs(name, kind, state, spec, argv, cwd, env, env_id, priority, grp, gpus,"
            " gpu_mem, cpus, mem, retries, time_limit, fail_unrunnable, pipeline_id, stage,"
            " created_at, executor, mig_profile, preemptible, uid)"
            " VALUES (?,?,?,?,?,?,'{}',?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                encode_text(req.name),
                req.kind,
                state,
                json.dumps(req.spec),
                json.dumps(req.argv) if req.argv is not None else None,
                encode_text(req.cwd),
                self._env_id(conn, req.env),
                req.priority,
                req.group,
                res.gpus,
                res.gpu_mem,
                res.cpus,
                res.mem,
                req.retries,
                req.time_limit,
                int(req.fail_unrunnable),
                req.pipeline_id,
                req.stage,
                now,
                req.executor,
                res.mig_profile,
                int(req.preemptible),
                req.uid,
            ),
        )
        job_id = int(cur.lastrowid or 0)
        if req.slurm:
            conn.execute(
                "UPDATE jobs SET slurm_options=? WHERE id=?", (json.dumps(req.slurm), job_id)
            )
        if req.credentials is not None:
            conn.execute(
                "UPDATE jobs SET held_credentials=? WHERE id=?",
                (json.dumps(req.credentials.record()), job_id),
            )
        if req.repro is not None:
            conn.execute(
                "INSERT OR REPLACE INTO job_repro(job_id, record) VALUES (?, ?)",
                (job_id, json.dumps(req.repro)),
            )
        for dep_id, cond in req.after:
            if cond not in DEP_CONDITIONS:
                raise JobError(f"unknown dependency condition {cond!r}")
            if not conn.execute("SELECT 1 FROM jobs WHERE id=?", (dep_id,)).fetchone():
                raise NoSuchJob(f"dependency {dep_id}: no such job")
            conn.execute(
                "INSERT OR REPLACE INTO job_deps(job_id, dep_id, cond) VALUES (?,?,?)",
                (job_id, dep_id, cond),
            )
        self._event(conn, job_id, state, "submitted", now, event)
        self._audit(conn, "submit", job_id, detail, now)
        return job_id

    @staticmethod
    def _env_id(conn: sqlite3.Connection, env: dict[str, str]) -> int:
        """The id of this environment's row (shared by every job that captured the same one)."""
        text = json.dumps(env, sort_keys=True)
        conn.execute("INSERT OR IGNORE INTO envs(env) VALUES (?)", (text,))
        return int(conn.execute("SELECT id FROM envs WHERE env=?", (text,)).fetchone()[0])

    def submit(
        self,
        req: JobRequest,
        request_token: str | None = None,
        still_wanted: Callable[[], bool] | None = None,
    ) -> int:
        """Queue one job; cost is independent of how many jobs the store holds.

        `request_token`: the id of a submission the daemon took for a client, kept in the audit
        entry (`request <token>`) so the client can learn the job's id if the daemon stops
        before it answers (`submitted_by_request`); an idempotency key: a request sent again
        with the same token returns the job the first one queued, and queues nothing. `still_wanted`: asked just before the
        commit (the write lock held, perhaps after a wait for it); False rolls the job back
        and raises Withdrawn, as a client interrupted while it waits leaves no job."""
        detail = None if request_token is None else f"{REQUEST_PREFIX}{request_token}"
        with self.transaction() as conn:
            if detail is not None:  # the token is an idempotency key: a resent request
                earlier = conn.execute(_BY_REQUEST, (detail,)).fetchone()
                if earlier is not None:
                    return int(earlier[0])
            job_id = self._insert(conn, req, time.time(), detail)
            if still_wanted is not None and not still_wanted():
                raise Withdrawn(f"submission {request_token} withdrawn")
            return job_id

    def submitted_by_request(self, request_token: str) -> int | None:
        """The job a submission with this token queued (see `submit`), or None."""
        row = self.conn.execute(_BY_REQUEST, (f"{REQUEST_PREFIX}{request_token}",)).fetchone()
        return None if row is None else int(row[0])

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
        positions: dict[str, list[int]] = {}
        jobs: list[tuple[JobRequest, list[tuple[int, str]]]] = []
        for index, (request, after) in enumerate(stages):
            stage = request.stage or request.name
            links = [(i, cond) for dep, cond in after for i in positions[dep]]
            jobs.append((dataclasses.replace(request, stage=stage, after=()), links))
            positions.setdefault(stage, []).append(index)
        pipeline_id, ids = self.submit_linked(name, path, jobs)
        return pipeline_id, {s: [ids[i] for i in found] for s, found in positions.items()}

    def submit_linked(
        self, name: str, path: str, jobs: Sequence[tuple[JobRequest, Sequence[tuple[int, str]]]]
    ) -> tuple[int, list[int]]:
        """Queue the jobs of one pipeline (named `name`, read from file `path`) in one
        transaction, all or none. Each job is (request, links): the request (its `stage` as
        given) and [(index, cond)] naming earlier jobs of `jobs` by 0-based position, which it
        waits for besides the request's own `after`. Returns (pipeline id, job ids in the order
        given). Raises JobError for a link to itself, a later job or out of range (nothing is
        queued)."""
        now = time.time()
        ids: list[int] = []
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO pipelines(name, path, created_at) VALUES (?,?,?)", (name, path, now)
            )
            pipeline_id = int(cur.lastrowid or 0)
            for position, (request, links) in enumerate(jobs):
                for index, _ in links:
                    if not 0 <= index < position:
                        raise JobError(
                            f"job #{position}: 'after_index' {index} names no earlier job"
                            f" of the pipeline (0 to {position - 1})"
                        )
                deps = (*request.after, *((ids[i], cond) for i, cond in links))
                req = dataclasses.replace(request, pipeline_id=pipeline_id, after=deps)
                ids.append(self._insert(conn, req, now))
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

    def _jobs_where(
        self, where: str, params: Sequence[Any] = (), light: bool | str = False
    ) -> list[Job]:
        columns = {False: _JOB_COLUMNS, True: _LIGHT_COLUMNS, "no-env": _NO_ENV_COLUMNS}[light]
        rows = self.conn.execute(f"SELECT {columns} FROM jobs {where}", params).fetchall()
        deps = self._deps_for(r[0] for r in rows)
        return [_job_from_row(r, deps[r[0]]) for r in rows]

    def get(self, job_id: int) -> Job:
        """One job with its environment and dependencies. Raises NoSuchJob."""
        jobs = self._jobs_where("WHERE id=?", (job_id,))
        if not jobs:
            raise NoSuchJob(f"no job with id {job_id}")
        return jobs[0]

    def find(self, job_id: int) -> Job | None:
        """One job, or None when there is no such id."""
        jobs = self._jobs_where("WHERE id=?", (job_id,))
        return jobs[0] if jobs else None

    def list_jobs(
        self,
        states: Iterable[str] | None = None,
        limit: int | None = None,
        pipeline_id: int | None = None,
        light: bool | str = False,
        before_id: int | None = None,
        oldest_first: bool = False,
        started: bool | None = None,
    ) -> list[Job]:
        """Jobs by id, newest last; `limit` keeps the newest N (the oldest N with
        `oldest_first`), below `before_id` if given.

        `light=True` leaves out spec and env (empty dicts), for lists that never show them;
        `light="no-env"` leaves out only env. `started` keeps jobs that have (or have not yet)
        had a process."""
        clauses: list[str] = []
        params: list[Any] = []
        if states is not None:
            states = [str(s) for s in states]
            clauses.append(f"state IN ({','.join('?' * len(states))})")
            params.extend(states)
        if pipeline_id is not None:
            clauses.append("pipeline_id=?")
            params.append(pipeline_id)
        if before_id is not None:
            clauses.append("id<?")
            params.append(before_id)
        if started is not None:
            clauses.append("pid IS NOT NULL" if started else "pid IS NULL")
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        if limit is not None and oldest_first:
            return self._jobs_where(where + f" ORDER BY id LIMIT {int(limit)}", params, light)
        if limit is not None:
            where += f" ORDER BY id DESC LIMIT {int(limit)}"
            return list(reversed(self._jobs_where(where, params, light)))
        return self._jobs_where(where + " ORDER BY id", params, light)

    def iter_jobs(
        self,
        light: bool | str = True,
        page: int = 1000,
        states: Iterable[str] | None = None,
    ) -> Iterator[Job]:
        """Every job (in `states`, if given), oldest first, read `page` rows at a time, so
        memory stays flat whatever the queue's length."""
        columns = {False: _JOB_COLUMNS, True: _LIGHT_COLUMNS, "no-env": _NO_ENV_COLUMNS}[light]
        for rows in self.row_pages(columns, states, page):
            deps = self._deps_for(r[0] for r in rows)
            yield from (_job_from_row(r, deps[r[0]]) for r in rows)

    def row_pages(
        self, columns: str, states: Iterable[str] | None = None, page: int = 1000
    ) -> Iterator[list[Any]]:
        """Rows of `columns` (the first must be `id`) for every job in `states` (all if None),
        by id, `page` at a time. Each state is read by its own keyset range on the state index
        and the ranges are merged by id, so the cost is linear in the rows read (one range over
        several states would sort what is left of them for every page)."""
        if states is None:
            ranges = [self._range(columns, None, page)]
        else:
            ranges = [self._range(columns, str(state), page) for state in dict.fromkeys(states)]
            if not ranges:
                return
        merged = ranges[0] if len(ranges) == 1 else heapq.merge(*ranges, key=lambda r: r[0])
        batch: list[Any] = []
        for row in merged:
            batch.append(row)
            if len(batch) >= page:
                yield batch
                batch = []
        if batch:
            yield batch

    def _range(self, columns: str, state: str | None, page: int) -> Iterator[Any]:
        where, params = ("", []) if state is None else (" AND state=?", [state])
        after = 0
        while True:
            rows = self.conn.execute(
                f"SELECT {columns} FROM jobs WHERE id>?{where} ORDER BY id LIMIT ?",
                (after, *params, page),
            ).fetchall()
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1][0]

    def active_jobs(self, light: bool | str = False) -> list[Job]:
        """Jobs not yet ended (queued, starting, running, paused, blocked), by id.

        `light` leaves out the captured environment and the spec (empty dicts): the daemon's
        scheduling pass needs neither."""
        states = [str(s) for s in sorted(ACTIVE)]
        where = f"WHERE state IN ({','.join('?' * len(states))}) ORDER BY id"
        return self._jobs_where(where, states, light)

    def states_of(self, ids: Iterable[int]) -> dict[int, JobState]:
        """Current state per job id (ids that no longer exist are absent)."""
        ids = list(set(ids))
        out: dict[int, JobState] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for job_id, state in self.conn.execute(
                f"SELECT id, state FROM jobs WHERE id IN ({marks})", chunk
            ):
                out[job_id] = JobState(state)
        return out

    def job_names(self, ids: Iterable[int]) -> dict[int, str]:
        """{job id: name} for the given ids (missing ids are absent)."""
        ids = sorted(set(ids))
        out: dict[int, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for job_id, name in self.conn.execute(
                f"SELECT id, name FROM jobs WHERE id IN ({marks})", chunk
            ):
                out[job_id] = decode_text(name)
        return out

    def set_gpu_use(self, updates: Sequence[tuple[int, float | None, int]]) -> None:
        """(peak GPU memory bytes, mean GPU util %, job id) per job, in one transaction.

        Rows whose values did not change are not written, so an idle GPU job does not commit
        (and wake every reader) each second."""
        if not updates:
            return
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE jobs SET peak_gpu_mem=?, mean_gpu_util=? WHERE id=?"
                " AND (peak_gpu_mem IS NOT ? OR mean_gpu_util IS NOT ?)",
                [(peak, mean, job, peak, mean) for peak, mean, job in updates],
            )

    def live_job_groups(self) -> dict[int, int]:
        """{process group (the wrapper's pid): job id} for jobs that own processes now."""
        states = [str(s) for s in sorted(LIVE)]
        rows = self.conn.execute(
            f"SELECT pid, id FROM jobs WHERE state IN ({','.join('?' * len(states))})"
            " AND pid IS NOT NULL",
            states,
        ).fetchall()
        return {int(pid): int(job_id) for pid, job_id in rows}

    def events(self, job_id: int) -> list[JobEvent]:
        """A job's state history, oldest first."""
        rows = self.conn.execute(
            "SELECT job_id, t, state, reason, event FROM job_events WHERE job_id=? ORDER BY id",
            (job_id,),
        ).fetchall()
        return [JobEvent(*r) for r in rows]

    def dependents(self, job_id: int) -> list[int]:
        """Ids of the jobs that wait on this one."""
        return [
            r[0] for r in self.conn.execute("SELECT job_id FROM job_deps WHERE dep_id=?", (job_id,))
        ]

    def count_jobs(self, states: Iterable[str], started: bool | None = None) -> int:
        """How many jobs are in `states` (and, with `started`, have had a process or not)."""
        states = [str(s) for s in states]
        where = f"state IN ({','.join('?' * len(states))})"
        if started is not None:
            where += " AND pid IS NOT NULL" if started else " AND pid IS NULL"
        return int(
            self.conn.execute(f"SELECT count(*) FROM jobs WHERE {where}", states).fetchone()[0]
        )

    def counts_by_state(self) -> dict[JobState, int]:
        """How many jobs are in each state (states with none are absent); uses the state index."""
        return {
            JobState(state): count
            for state, count in self.conn.execute(
                "SELECT state, count(*) FROM jobs GROUP BY state"
            ).fetchall()
        }

    # ---- state changes -----------------------------------------------------------------

    @staticmethod
    def _event(
        conn: sqlite3.Connection,
        job_id: int,
        state: JobState,
        reason: str | None,
        now: float,
        event: Event | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO job_events(job_id, t, state, reason, event) VALUES (?,?,?,?,?)",
            (job_id, now, str(state), reason, str(event) if event else None),
        )

    def transition(
        self,
        job_id: int,
        event: Event,
        reason: str | None,
        only_from: Iterable[JobState] | None = None,
        **columns: Any,
    ) -> JobState | None:
        """Apply `event` to a job through the transition table, setting `columns` with it.

        Returns the new state, or None when the job is gone or (with `only_from`) no longer in
        one of those states: the caller lost a race and nothing was written.
        Raises IllegalTransition when the table does not allow the event from the job's state."""
        with self.transaction() as conn:
            return self._apply(conn, job_id, event, reason, time.time(), only_from, columns)

    def fail_and_requeue(
        self,
        job_id: int,
        reason: str,
        retry_reason: str,
        only_from: Iterable[JobState] | None = None,
        **columns: Any,
    ) -> bool:
        """A failed attempt with retries left: record the failure (event, exit code) and queue
        the next attempt in one transaction, so no reader (`wait`, `--batch`) sees it failed."""
        now = time.time()
        with self.transaction() as conn:
            changed = self._apply(conn, job_id, Event.EXIT_FAILED, reason, now, only_from, columns)
            if changed is not None:
                self._apply(conn, job_id, Event.REQUEUE, retry_reason, now, None, {})
        return changed is not None

    def _apply(
        self,
        conn: sqlite3.Connection,
        job_id: int,
        event: Event,
        reason: str | None,
        now: float,
        only_from: Iterable[JobState] | None,
        columns: dict[str, Any],
    ) -> JobState | None:
        row = conn.execute(
            "SELECT state, attempt, retries FROM jobs WHERE id=?", (job_id,)
        ).fetchone()
        if row is None:
            return None
        state = JobState(row[0])
        if only_from is not None and state not in set(only_from):
            return None
        new = next_state(state, event, job_id)
        if event == Event.REQUEUE and state == FAILED:
            # An automatic retry after a failure backs off (jobmodel.retry): the scheduler
            # leaves the job alone until `not_before`, so a job that fails at once cannot spin.
            attempt, retries = int(row[1]), int(row[2])
            delay = retry_delay_s(attempt)
            columns.setdefault("not_before", now + delay)
            said = f"retrying in {delay:.0f}s (attempt {attempt + 1} of {retries + 1})"
            reason = f"{said}; {reason}" if reason else said
        elif event in (Event.RETRY, Event.REQUEUE, Event.UNBLOCK):
            columns.setdefault("not_before", None)  # by hand, or a launch that never ran: now
        sets = ["state=?", "reason=?"]
        params: list[Any] = [str(new), reason]
        if new in ENDED:
            columns.setdefault("ended_at", now)
            columns.setdefault("intent", None)
        if event in (Event.RETRY, Event.REQUEUE, Event.PREEMPT):
            # Back to the queue: a fresh attempt after one that ran (a preempted job resumes the
            # same attempt; a launch that never began, requeued from `starting`, spends none).
            if event == Event.RETRY or (event == Event.REQUEUE and state == FAILED):
                sets.append("attempt=attempt+1")
            for key in (
                "started_at",
                "ended_at",
                "exit_code",
                "pid",
                "pid_start",
                "granted_gpus",
                "granted_devices",
                "intent",
                "progress",
                "progress_msg",
                "launch_token",
                "cpu_s",
                "cpu_source",
                "peak_mem_bytes",
                "peak_mem_source",
                "elapsed_s",
                "alloc_gpus",
            ):
                columns.setdefault(key, None)
        if event in (Event.RETRY, Event.REQUEUE, Event.UNBLOCK):
            # A new attempt on Slurm is a new Slurm job (executors: migration 60).
            columns.setdefault("slurm_id", None)
            columns.setdefault("node", None)
            columns.setdefault("records_offset", 0)
        for key, value in columns.items():
            sets.append(f"{key}=?")
            params.append(_column_value(key, value))
        params.append(job_id)
        conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id=?", params)
        self._event(conn, job_id, new, reason, now, event)
        if new == QUEUED and event in (Event.RETRY, Event.REQUEUE):
            self._unblock_dependents(conn, job_id, now)
        return new

    def _unblock_dependents(self, conn: sqlite3.Connection, job_id: int, now: float) -> None:
        """Dependents blocked by this job wait again (and theirs, transitively)."""
        for (dependent,) in conn.execute(
            "SELECT j.id FROM jobs j JOIN job_deps d ON d.job_id=j.id WHERE d.dep_id=? AND j.state=?",
            (job_id, str(BLOCKED)),
        ).fetchall():
            self._apply(conn, dependent, Event.UNBLOCK, None, now, [BLOCKED], {})
            self._unblock_dependents(conn, dependent, now)

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
        values = [_column_value(k, v) for k, v in columns.items()]
        with self.transaction() as conn:
            conn.execute(f"UPDATE jobs SET {sets} WHERE id=?", [*values, job_id])

    def set_progress(self, job_id: int, fraction: float | None, message: str | None = None) -> None:
        """A job's progress: `fraction` in [0, 1] (None: unknown) and a short message."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET progress=?, progress_msg=? WHERE id=?", (fraction, message, job_id)
            )

    def request(self, job_id: int, action: str, done_in_slurm: str | None = None) -> str:
        """A client's job-control intent: cancel, pause, resume, retry, rm. Audited.

        Jobs that own no process change state here at once; for a live job the intent is
        recorded and the daemon (which owns the process) carries it out. `done_in_slurm` (the
        reason): the client has already suspended (pause) or resumed (resume) the job's Slurm
        job (`workbench.daemon.executors.slurm_suspend`), so it is paused or running at once.
        Returns what happened. Raises NoSuchJob, NotWhereItRuns (`pause` of a running Slurm
        job), or JobError when the job's state does not allow the action."""
        now = time.time()
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT state, pid, executor FROM jobs WHERE id=?", (job_id,)
            ).fetchone()
            if row is None:
                raise NoSuchJob(f"no job with id {job_id}")
            state = JobState(row[0])
            if done_in_slurm is not None and action in ("pause", "resume"):
                event = Event.PAUSE if action == "pause" else Event.RESUME
                target = PAUSED if action == "pause" else RUNNING
                if state != target:  # the daemon may have seen Slurm's change first
                    if not allowed(state, event):
                        raise JobError(f"job {job_id} is {state}")
                    self._apply(conn, job_id, event, done_in_slurm, now, [state], {})
                self._audit(conn, action, job_id, str(target), now)
                return str(target)
            if row[2] == "team" and row[1] is not None and state in (STARTING, RUNNING, PAUSED):
                # workbench.daemon.teamrun: its process is the system daemon's team job, which
                # no daemon of this home stops; an intent here would never be carried out.
                raise NotWhereItRuns(
                    f"job {job_id} runs through the team queue, as a job of the system daemon"
                    " (its history names which): run `workbench " + action + " TEAM_JOB` in"
                    " team mode, which stops it and records its end here"
                )
            if action == "pause" and row[2] == "slurm" and state in (STARTING, RUNNING):
                raise NotWhereItRuns(
                    f"job {job_id} is {state} on Slurm, where suspending a running job is an"
                    " administrator's command (scontrol suspend); cancel it, or pause a Slurm"
                    " job while it is queued (it is then held in Slurm); if you are an operator"
                    " or administrator of the cluster, set [executor] suspend = true"
                )
            held = state == PAUSED and row[1] is None  # paused before it ever started
            if held and row[2] == "slurm":  # or a running Slurm job, suspended there
                last = conn.execute(
                    "SELECT event FROM job_events WHERE job_id=? ORDER BY id DESC LIMIT 1",
                    (job_id,),
                ).fetchone()
                held = not last or last[0] != Event.PAUSE
            outcome = self._request(conn, job_id, action, state, held, now)
            self._audit(conn, action, job_id, outcome, now)
            dropped = action == "rm" and self._drop_backup()
        if action == "rm":
            self.purge_removed([job_id], backup_dropped=dropped)
        return outcome

    def _drop_backup(self) -> bool:
        """Delete `state.db.bak` inside a removing transaction, before it commits: no moment
        after the commit finds the removed rows (an environment's secrets) in a backup, even
        when the process is killed right then. `purge_removed` writes it again from the purged
        file; a process killed first leaves none until the next daemon start makes one.
        Returns whether there was one."""
        try:
            os.unlink(self.path.with_name(self.path.name + ".bak"))
        except FileNotFoundError:
            return False
        return True

    def _request(
        self,
        conn: sqlite3.Connection,
        job_id: int,
        action: str,
        state: JobState,
        held: bool,
        now: float,
    ) -> str:
        live = state in LIVE and not held
        if action == "cancel":
            if not allowed(state, Event.CANCEL):
                raise JobError(f"job {job_id} already {state}")
            if not live:
                new = self._apply(
                    conn, job_id, Event.CANCEL, "cancelled before it started", now, None, {}
                )
                return str(new)
            conn.execute("UPDATE jobs SET intent='cancel' WHERE id=?", (job_id,))
            return "cancelling"
        if action == "pause":
            if state == QUEUED:
                new = self._apply(conn, job_id, Event.HOLD, "held before it started", now, None, {})
                return str(new)
            if state in (STARTING, RUNNING):
                conn.execute("UPDATE jobs SET intent='pause' WHERE id=?", (job_id,))
                return "pausing"
            raise JobError(f"job {job_id} is {state}; only queued or running jobs can be paused")
        if action == "resume":
            if state != PAUSED:
                raise JobError(f"job {job_id} is {state}, not paused")
            if held:
                new = self._apply(conn, job_id, Event.RELEASE, "released", now, None, {})
                return str(new)
            conn.execute("UPDATE jobs SET intent='resume' WHERE id=?", (job_id,))
            return "resuming"
        if action == "retry":
            if not allowed(state, Event.RETRY):
                raise JobError(
                    f"job {job_id} is {state}; only failed, cancelled or blocked jobs can be retried"
                )
            new = self._apply(conn, job_id, Event.RETRY, "retry requested", now, None, {})
            return str(new)
        if action == "rm":
            if live:
                raise JobError(f"job {job_id} is {state}; cancel it before removing it")
            self._delete_jobs(conn, [job_id])
            return "removed"
        raise JobError(f"unknown action {action!r}")

    @staticmethod
    def _delete_jobs(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
        """Delete jobs and what belongs only to them (an environment no other job shares)."""
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            env_ids = [
                r[0]
                for r in conn.execute(
                    f"SELECT DISTINCT env_id FROM jobs WHERE id IN ({marks})"
                    " AND env_id IS NOT NULL",
                    chunk,
                )
            ]
            conn.execute(f"DELETE FROM jobs WHERE id IN ({marks})", chunk)
            conn.executemany(
                "DELETE FROM envs WHERE id=? AND NOT EXISTS (SELECT 1 FROM jobs WHERE env_id=?)",
                [(e, e) for e in env_ids],
            )
            conn.execute(f"DELETE FROM job_events WHERE job_id IN ({marks})", chunk)
            conn.execute(f"DELETE FROM job_deps WHERE job_id IN ({marks})", chunk)
            conn.execute(f"DELETE FROM metrics WHERE job_id IN ({marks})", chunk)
            conn.execute(f"DELETE FROM job_repro WHERE job_id IN ({marks})", chunk)

    def purge_removed(self, ids: Sequence[int], backup_dropped: bool = False) -> None:
        """Make removed jobs' bytes (environments may hold secrets) unreadable everywhere:
        the freed pages are zeroed (secure_delete, set on every connection), the WAL that still
        holds their earlier images is checkpointed and truncated, and the same rows are removed
        from the backup `state.db.bak` (rewritten from the checked, purged file) if there is
        one (or was, until `_drop_backup` deleted it: `backup_dropped`)."""
        self.give_space_back()
        for _ in range(50):  # a reader holding an old snapshot blocks the truncation briefly
            busy = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy:
                break
            time.sleep(0.02)
        backup = self.path.with_name(self.path.name + ".bak")
        if ids and (backup_dropped or backup.exists()):
            self.backup_to(backup)  # rewritten from the purged file: the old bytes are gone

    def give_space_back(self) -> None:
        """Shrink the file by its free pages: at once where it uses incremental auto-vacuum
        (every file this code creates), else by one VACUUM that converts it, when a quarter
        or more of it is free (files from before; skipped while another connection is busy)."""
        conn = self.conn
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
            # executescript steps the pragma to the end (execute frees one page per call).
            conn.executescript("PRAGMA incremental_vacuum;")
            return
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        if pages and free * 4 >= pages:
            try:
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                conn.execute("VACUUM")
            except sqlite3.OperationalError:
                pass  # busy: the next prune tries again

    def ended_before(self, cutoff: float, limit: int = 1000) -> list[int]:
        """Ids of jobs that ended before `cutoff` (Unix s), oldest first, at most `limit`."""
        states = [str(s) for s in sorted(ENDED)]
        rows = self.conn.execute(
            f"SELECT id FROM jobs WHERE state IN ({','.join('?' * len(states))})"
            " AND ended_at < ? ORDER BY id LIMIT ?",
            [*states, cutoff, limit],
        ).fetchall()
        return [r[0] for r in rows]

    def remove_ended(self, ids: Sequence[int], action: str = "prune") -> list[int]:
        """Remove those of `ids` that have ended (with their events, deps and metrics) in one
        transaction, auditing each; returns the ids removed. Their bytes are purged after."""
        now = time.time()
        ended = [str(s) for s in sorted(ENDED)]
        with self.transaction() as conn:
            removed: list[int] = []
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                removed += [
                    r[0]
                    for r in conn.execute(
                        f"SELECT id FROM jobs WHERE id IN ({marks})"
                        f" AND state IN ({','.join('?' * len(ended))})",
                        [*chunk, *ended],
                    )
                ]
            self._delete_jobs(conn, removed)
            conn.executemany(
                "INSERT INTO audit(t, uid, action, job_id, detail) VALUES (?,?,?,?,?)",
                [(now, self.actor(), action, job_id, "removed") for job_id in removed],
            )
            dropped = bool(removed) and self._drop_backup()
        if removed:
            self.purge_removed(removed, backup_dropped=dropped)
        return removed

    def requeue(self, job_id: int, reason: str) -> None:
        """Automatic retry by the daemon."""
        with self.transaction() as conn:
            self._apply(conn, job_id, Event.REQUEUE, reason, time.time(), None, {})

    def set_priority(self, job_id: int, priority: int) -> None:
        """Change a job's priority (audited). Raises NoSuchJob."""
        now = time.time()
        with self.transaction() as conn:
            if not conn.execute(
                "UPDATE jobs SET priority=? WHERE id=?", (priority, job_id)
            ).rowcount:
                raise NoSuchJob(f"no job with id {job_id}")
            self._audit(conn, "priority", job_id, str(priority), now)

    # ---- metrics -----------------------------------------------------------------------

    def add_metrics(self, job_id: int, step: int, values: dict[str, float | None]) -> None:
        """One step's metric values (name -> value) of a job, in one transaction."""
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

    def drop_metrics_after(self, job_id: int, step: int) -> None:
        """Forget a job's metrics past `step` (a resumed run writes them again)."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM metrics WHERE job_id=? AND step>?", (job_id, step))

    def first_metric_time(self, job_id: int, name: str) -> float | None:
        """When a job first reported metric `name` (Unix s), or None."""
        row = self.conn.execute(
            "SELECT min(t) FROM metrics WHERE job_id=? AND name=?", (job_id, name)
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def last_metrics(self, job_id: int) -> dict[str, float | None]:
        """The latest value of each metric of a job."""
        rows = self.conn.execute(
            "SELECT name, value FROM metrics WHERE rowid IN"
            " (SELECT max(rowid) FROM metrics WHERE job_id=? GROUP BY name)",
            (job_id,),
        ).fetchall()
        return dict(rows)


def translate_os(error: OSError, path: Path) -> StoreError | None:
    """A StoreError for OS errors a user must act on (a full disk), else None."""
    if is_full_error(error):
        return StoreFull(full_message(path))
    return None
