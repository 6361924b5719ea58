"""The schema of state.db as numbered migrations, and how a file is created and brought up to date."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from workbench.db.connection import StoreError, remove_files

# Schema migrations by version. Numbers are reserved per owner so that parts can grow
# independently: 1 and 10-19 core (jobs, events, metrics, groups, pipelines, audit); 2 telemetry
# (moved to telemetry.db by 11); 3 and 30-39 lake catalog and query history; 4 and 40-49 runs;
# 5 and 50-59 evaluations and models; 60-69 executors. Gaps are fine: each file records which ones it has.
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
    # Queue core v2: the event that caused each state change, the launch token written before a
    # job's wrapper is forked, an index by state for every state query, and the audit trail.
    10: """
    ALTER TABLE job_events ADD COLUMN event TEXT;
    ALTER TABLE jobs ADD COLUMN launch_token TEXT;
    DROP INDEX IF EXISTS jobs_active;
    CREATE INDEX jobs_state ON jobs(state, id);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        t REAL NOT NULL,
        uid INTEGER NOT NULL,
        action TEXT NOT NULL,
        job_id INTEGER,
        detail TEXT
    );
    CREATE INDEX audit_job ON audit(job_id, id);
    """,
    # Telemetry history moved to its own file (telemetry.db, workbench.db.telemetry), so that a
    # 1 Hz sample no longer changes state.db's data_version and wakes every reader of jobs.
    11: """
    DROP TABLE IF EXISTS telemetry;
    DROP TABLE IF EXISTS telemetry_latest;
    """,
    # Captured environments are stored once per distinct content (a shell submitting 20,000
    # jobs captures the same one each time) and apart from the job rows, so listing jobs never
    # walks an environment's overflow pages and the file stays small enough to check per open.
    12: """
    CREATE TABLE envs (id INTEGER PRIMARY KEY, env TEXT NOT NULL UNIQUE);
    ALTER TABLE jobs ADD COLUMN env_id INTEGER;
    INSERT OR IGNORE INTO envs(env) SELECT env FROM jobs;
    UPDATE jobs SET env_id = (SELECT id FROM envs WHERE envs.env = jobs.env), env = '{}';
    CREATE INDEX jobs_env ON jobs(env_id);
    """,
    # Automatic retries back off: a requeued attempt may not start before `not_before` (epoch
    # seconds); the partial index finds the few jobs waiting so without scanning the queue.
    13: """
    ALTER TABLE jobs ADD COLUMN not_before REAL;
    CREATE INDEX jobs_not_before ON jobs(not_before) WHERE not_before IS NOT NULL;
    """,
    # GPU pooling: a job may ask for one MIG instance of a profile ("1g.10gb") instead of GPUs,
    # and may opt out of preemption (never chosen to give borrowed GPUs back).
    14: """
    ALTER TABLE jobs ADD COLUMN mig_profile TEXT;
    ALTER TABLE jobs ADD COLUMN preemptible INTEGER NOT NULL DEFAULT 1;
    """,
    # The daemon's scheduling reads (workbench/db/scheduling.py): the queue in scheduling order
    # (priority high first, then oldest) and the few jobs with a pending intent. Created here so
    # that every client's file has them, and a file from an older version gains them on upgrade.
    15: """
    CREATE INDEX IF NOT EXISTS jobs_queue_order ON jobs(state, priority DESC, id);
    CREATE INDEX IF NOT EXISTS jobs_intent ON jobs(id) WHERE intent IS NOT NULL;
    """,
    # What an ended attempt used, from its exit.json when it is settled (so it outlives a pruned
    # run folder, and listings need no file read): CPU seconds (user + system, all its
    # processes), peak memory in bytes, and where each figure came from ('cgroup' or 'rusage').
    16: """
    ALTER TABLE jobs ADD COLUMN cpu_s REAL;
    ALTER TABLE jobs ADD COLUMN cpu_source TEXT;
    ALTER TABLE jobs ADD COLUMN peak_mem_bytes INTEGER;
    ALTER TABLE jobs ADD COLUMN peak_mem_source TEXT;
    """,
    # Each group's head of the queue, in scheduling order: a pass plans the first jobs of every
    # group with a quota, so a job within its quota is seen however many older jobs wait.
    17: """
    CREATE INDEX IF NOT EXISTS jobs_group_queue ON jobs(state, grp, priority DESC, id);
    """,
    # The devices an attempt was launched with where they are not GPU indices (MIG instances by
    # UUID, as CUDA_VISIBLE_DEVICES carries them): a JSON list, cleared when the job requeues.
    18: """
    ALTER TABLE jobs ADD COLUMN granted_devices TEXT;
    """,
    # Scheduling that cannot starve (workbench/daemon/planning.py): why a queued job was last
    # found unable to start, so a pass skips it by an index instead of reading it page by page:
    # 'deps' (a dependency has not ended as it needs; cleared by a trigger when a dependency
    # changes state or is removed) or 'fit' (resources, a group's cap, drain: the pass re-reads
    # the head of each such shape of job). Any state or priority change of the job clears it.
    20: """
    ALTER TABLE jobs ADD COLUMN blocked_on TEXT;
    CREATE INDEX IF NOT EXISTS jobs_startable ON jobs(priority DESC, id)
        WHERE state = 'queued' AND blocked_on IS NULL;
    CREATE INDEX IF NOT EXISTS jobs_unfit ON jobs(grp, gpus, gpu_mem, mig_profile, time_limit,
        cpus, mem, fail_unrunnable, priority DESC, id)
        WHERE state = 'queued' AND blocked_on = 'fit';
    CREATE TRIGGER IF NOT EXISTS jobs_unblock_on_state AFTER UPDATE OF state ON jobs
        WHEN NEW.state IS NOT OLD.state BEGIN
        UPDATE jobs SET blocked_on = NULL WHERE id = NEW.id AND blocked_on IS NOT NULL;
        UPDATE jobs SET blocked_on = NULL WHERE blocked_on IS NOT NULL
            AND id IN (SELECT job_id FROM job_deps WHERE dep_id = NEW.id);
    END;
    CREATE TRIGGER IF NOT EXISTS jobs_unblock_on_priority AFTER UPDATE OF priority ON jobs
        WHEN NEW.priority IS NOT OLD.priority BEGIN
        UPDATE jobs SET blocked_on = NULL WHERE id = NEW.id AND blocked_on IS NOT NULL;
    END;
    CREATE TRIGGER IF NOT EXISTS jobs_unblock_on_delete AFTER DELETE ON jobs BEGIN
        UPDATE jobs SET blocked_on = NULL WHERE blocked_on IS NOT NULL
            AND id IN (SELECT job_id FROM job_deps WHERE dep_id = OLD.id);
    END;
    """,
    # A request token (the intake's submission id) is an idempotency key: the submit looks it
    # up in the audit trail in the same transaction, by this index, before it queues a job.
    21: """
    CREATE INDEX IF NOT EXISTS audit_request ON audit(detail)
        WHERE action = 'submit' AND detail IS NOT NULL;
    """,
    # Runs of any job (40-49): a run records who produced it (`source`: 'train' for the built-in
    # kind, 'script' for records from the tracking API or captured files), the artifacts it
    # recorded (JSON list), and every dataset version it declared reading (lineage).
    40: """
    ALTER TABLE runs ADD COLUMN source TEXT NOT NULL DEFAULT 'train';
    ALTER TABLE runs ADD COLUMN artifacts TEXT;
    CREATE TABLE run_datasets (
        job_id INTEGER NOT NULL,
        dataset TEXT NOT NULL,
        version INTEGER NOT NULL,
        content_hash TEXT NOT NULL,
        t REAL NOT NULL,
        PRIMARY KEY (job_id, dataset, version)
    );
    """,
    # Reproducibility (50-54): what each job was submitted with (code state of its working
    # directory, environment, snapshot; JSON, see workbench/queue/repro.py) and what the daemon
    # saw when it started (driver, GPU models).
    50: """
    CREATE TABLE job_repro (
        job_id INTEGER PRIMARY KEY,
        record TEXT NOT NULL DEFAULT '{}',
        started TEXT
    );
    """,
    # Executors (60-69): where each job runs ('local' or 'slurm'), its Slurm job id and node,
    # whether Slurm may still hold it (submitted, not yet seen ended), and how much of the job's
    # record file (see workbench/db/journal.py) has been applied.
    60: """
    ALTER TABLE jobs ADD COLUMN executor TEXT NOT NULL DEFAULT 'local';
    ALTER TABLE jobs ADD COLUMN slurm_id TEXT;
    ALTER TABLE jobs ADD COLUMN slurm_open INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN node TEXT;
    ALTER TABLE jobs ADD COLUMN records_offset INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_slurm_open ON jobs(id) WHERE slurm_open = 1;
    CREATE INDEX jobs_on_slurm ON jobs(state, id) WHERE executor = 'slurm';
    """,
    # Team mode (70-79): whose job it is, the submitter's uid from the kernel (SO_PEERCRED);
    # NULL in a per-user home, where every job is the home owner's.
    70: """
    ALTER TABLE jobs ADD COLUMN uid INTEGER;
    """,
    # Shares and usage (80-89): the usage ledger, one row per interval a job held its grant
    # (from entering starting/running to leaving running/paused), with the job's owner, group,
    # GPUs' worth and GPU memory; `wait_s` on a job's first interval (submit to first start).
    # `end_t` NULL: still holding. Rows outlive their jobs (history for `workbench usage`).
    80: """
    CREATE TABLE usage_ledger (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL,
        uid INTEGER,
        grp TEXT NOT NULL,
        gpus REAL NOT NULL,
        gpu_mem_bytes INTEGER NOT NULL,
        start_t REAL NOT NULL,
        end_t REAL,
        wait_s REAL
    );
    CREATE INDEX usage_ledger_open ON usage_ledger(job_id) WHERE end_t IS NULL;
    CREATE INDEX usage_ledger_end ON usage_ledger(end_t);
    """,
    # Idle GPUs: a running job whose GPUs have been at about 0% utilisation since `since`
    # (unix s), flagged once that lasted `[shares] idle_after`; the row goes when it is busy
    # again or stops. Its own table: `ls`, `show` and the TUI read it beside the jobs.
    81: """
    CREATE TABLE idle_jobs (
        job_id INTEGER PRIMARY KEY,
        since REAL NOT NULL,
        gpus TEXT NOT NULL
    );
    """,
    # Slurm, round 2 (90-99): how often Slurm itself requeued a job's current Slurm job (node
    # failure, preemption; squeue's RestartCnt), shown with the job and marked in its log.
    90: """
    ALTER TABLE jobs ADD COLUMN slurm_restarts INTEGER NOT NULL DEFAULT 0;
    """,
    # Per-job sbatch options (`[slurm]` of a spec or stage, `--slurm KEY=VALUE`), as JSON.
    91: """
    ALTER TABLE jobs ADD COLUMN slurm_options TEXT;
    """,
    # What a Slurm job used beyond CPU and memory, from Slurm's accounting (sacct): its elapsed
    # wall seconds and the GPUs it was allocated (AllocTRES); and, for a settled Slurm job whose
    # accounting has not arrived yet, until when (Unix s) the daemon asks sacct for it.
    100: """
    ALTER TABLE jobs ADD COLUMN elapsed_s REAL;
    ALTER TABLE jobs ADD COLUMN alloc_gpus INTEGER;
    ALTER TABLE jobs ADD COLUMN usage_due REAL;
    CREATE INDEX jobs_usage_due ON jobs(id) WHERE usage_due IS NOT NULL;
    """,
    # Credentials held out of the store (workbench.daemon.credentials): the token the daemon
    # knows them by and their names, as JSON {"token", "names", "urls"}; never a value.
    110: """
    ALTER TABLE jobs ADD COLUMN held_credentials TEXT;
    """,
    # Datasets shared read-only with a group (team mode, workbench.daemon.sharing): in the
    # system home's store only; the files are the owner's, in shared/UID/DATASET/vN.
    120: """
    CREATE TABLE shared_datasets (
        owner_uid INTEGER NOT NULL,
        dataset TEXT NOT NULL,
        version INTEGER NOT NULL,
        gid INTEGER NOT NULL,
        folder TEXT NOT NULL,
        parts TEXT NOT NULL,
        rejects TEXT,
        rows INTEGER NOT NULL,
        rejected_rows INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        content_hash TEXT NOT NULL,
        schema TEXT NOT NULL,
        sources TEXT NOT NULL,
        created_at REAL NOT NULL,
        shared_at REAL NOT NULL,
        PRIMARY KEY (owner_uid, dataset, version)
    );
    """,
    # The login name that shared each version, as the kernel's uid named it then: a uid
    # given to a new account after `userdel` does not inherit the old one's shares.
    121: """
    ALTER TABLE shared_datasets ADD COLUMN owner_name TEXT;
    """,
}
SCHEMA_VERSION = max(MIGRATIONS)


def create_database(
    path: Path, migrations: dict[int, str] | None = None, auto_vacuum: bool = False
) -> None:
    """Create a fresh SQLite file atomically (so a zero-length or partial file is never ours),
    with every migration applied; `auto_vacuum` makes it INCREMENTAL (free pages can be given
    back with `PRAGMA incremental_vacuum`)."""
    import tempfile  # only when a file is created: it pulls in random and hashlib

    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".db", dir=path.parent)
    os.close(fd)
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        if auto_vacuum:
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        migrate(conn, path.name, migrations)
        conn.close()
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        remove_files(tmp, tmp + "-wal", tmp + "-shm")


def statements(script: str) -> list[str]:
    """The SQL statements of a migration, split at each `;` that ends a complete statement
    (`sqlite3.complete_statement`), so a trigger's body stays in one piece."""
    out: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                out.append(pending)
            pending = ""
    if pending.strip(" \n;"):
        out.append(pending)
    return out


def applied_versions(conn: sqlite3.Connection) -> set[int]:
    """The migrations a file has (an empty set for a new file)."""
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
    ).fetchone()
    if not has_meta:
        return set()
    listed = conn.execute("SELECT value FROM meta WHERE key='migrations'").fetchone()
    if listed:
        return {int(v) for v in listed[0].split(",") if v}
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    current = int(row[0]) if row else 0
    # Files from before the list was kept applied every migration up to their version.
    return set(range(1, current + 1))


def migrate(
    conn: sqlite3.Connection, name: str = "state.db", migrations: dict[int, str] | None = None
) -> None:
    """Bring a file up to this code's schema (`migrations`, state.db's by default) in one
    transaction.

    Raises StoreError for a file written by a newer workbench (a migration this code lacks)."""
    migrations = MIGRATIONS if migrations is None else migrations
    conn.execute("BEGIN IMMEDIATE")
    try:
        applied = applied_versions(conn)
        unknown = sorted(v for v in applied if v not in migrations)
        if unknown:
            raise StoreError(
                f"{name} has schema version {max(unknown)}, newer than this workbench"
                f" ({max(migrations)}); upgrade gpu-workbench (the file was left untouched)"
            )
        missing = sorted(set(migrations) - applied)
        for version in missing:
            for statement in statements(migrations[version]):
                conn.execute(statement)
            applied.add(version)
        if missing:
            conn.executemany(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                [
                    ("schema_version", str(max(applied))),
                    ("migrations", ",".join(str(v) for v in sorted(applied))),
                ],
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
