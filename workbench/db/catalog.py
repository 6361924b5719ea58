"""The catalog's tables in state.db: dataset versions, query history, runs, evaluations, models.

Rows come back as plain tuples in the column order named beside each function; the modules in
`workbench.catalog` turn them into their own types.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from workbench.db.store import Store

# ---- lake: datasets and their versions ------------------------------------------------------

VERSION_COLUMNS = (
    "dataset, version, path, sources, schema, rows, bytes, content_hash, rejected_rows,"
    " duration_s, created_at, job_id"
)


def version_rows(store: Store, dataset: str | None = None) -> list[tuple[Any, ...]]:
    """Rows (VERSION_COLUMNS) of every version, or of one dataset's, oldest first."""
    if dataset is None:
        return store.conn.execute(
            f"SELECT {VERSION_COLUMNS} FROM dataset_versions ORDER BY dataset, version"
        ).fetchall()
    return store.conn.execute(
        f"SELECT {VERSION_COLUMNS} FROM dataset_versions WHERE dataset=? ORDER BY version",
        (dataset,),
    ).fetchall()


def version_row(store: Store, dataset: str, version: int | None) -> tuple[Any, ...] | None:
    """One version's row (VERSION_COLUMNS); the latest when `version` is None."""
    if version is None:
        row: tuple[Any, ...] | None = store.conn.execute(
            f"SELECT {VERSION_COLUMNS} FROM dataset_versions WHERE dataset=?"
            " ORDER BY version DESC LIMIT 1",
            (dataset,),
        ).fetchone()
        return row
    row = store.conn.execute(
        f"SELECT {VERSION_COLUMNS} FROM dataset_versions WHERE dataset=? AND version=?",
        (dataset, version),
    ).fetchone()
    return row


def dataset_names(store: Store) -> list[str]:
    """Every dataset name, sorted."""
    return [r[0] for r in store.conn.execute("SELECT name FROM datasets ORDER BY name")]


def latest_version_rows(store: Store) -> list[tuple[Any, ...]]:
    """The newest version's row (VERSION_COLUMNS) of each dataset, by dataset name."""
    return store.conn.execute(
        f"SELECT {VERSION_COLUMNS} FROM dataset_versions v WHERE version ="
        " (SELECT max(version) FROM dataset_versions w WHERE w.dataset = v.dataset)"
        " ORDER BY dataset"
    ).fetchall()


def version_counts(store: Store) -> dict[str, int]:
    """{dataset: how many versions it has}."""
    return dict(
        store.conn.execute(
            "SELECT dataset, count(*) FROM dataset_versions GROUP BY dataset"
        ).fetchall()
    )


def add_version(
    store: Store,
    dataset: str,
    place: Callable[[int], str],
    sources: list[dict[str, Any]] | list[Any],
    schema: Sequence[tuple[str, str]],
    rows: int,
    size: int,
    digest: str,
    rejected_rows: int,
    started: float,
    job_id: int | None,
    nulls: dict[str, int | None] | None = None,
    dedup: bool = False,
) -> int:
    """Record the next version of `dataset` in one transaction and return its number.

    `place(version)` runs inside the transaction (so two writers never pick the same number):
    it moves the files into place and returns their final path. `nulls` (column -> null count)
    is kept in the schema. With `dedup`, content identical to the latest version's (same hash,
    same rejected rows) records nothing, does not call `place`, and returns that version."""
    nulls = nulls or {}
    with store.transaction() as conn:
        row = conn.execute(
            "SELECT version, content_hash, rejected_rows FROM dataset_versions WHERE dataset=?"
            " ORDER BY version DESC LIMIT 1",
            (dataset,),
        ).fetchone()
        if dedup and row is not None and (row[1], row[2]) == (digest, rejected_rows):
            return int(row[0])
        version = (int(row[0]) if row else 0) + 1
        final = place(version)
        now = time.time()
        conn.execute(
            "INSERT OR IGNORE INTO datasets(name, created_at) VALUES (?, ?)", (dataset, now)
        )
        conn.execute(
            f"INSERT INTO dataset_versions({VERSION_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                dataset,
                version,
                final,
                json.dumps(sources or []),
                json.dumps([{"name": n, "type": t, "nulls": nulls.get(n)} for n, t in schema]),
                rows,
                size,
                digest,
                rejected_rows,
                now - started,
                now,
                job_id,
            ),
        )
    return version


def versions_in_use(store: Store) -> set[tuple[str, int]]:
    """(dataset, version) pairs a training run or an evaluation records having used."""
    tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    used: set[tuple[str, int]] = set()
    for table in ("runs", "evaluations"):
        if table in tables:
            used.update(
                (str(d), int(v))
                for d, v in store.conn.execute(f"SELECT dataset, dataset_version FROM {table}")
            )
    if "run_datasets" in tables:
        used.update(
            (str(d), int(v))
            for d, v in store.conn.execute("SELECT dataset, version FROM run_datasets")
        )
    return used


def delete_version(store: Store, dataset: str, version: int) -> None:
    """Remove one version's catalog row (its files are the caller's to remove)."""
    with store.transaction() as conn:
        conn.execute(
            "DELETE FROM dataset_versions WHERE dataset=? AND version=?", (dataset, version)
        )


def record_query(
    store: Store, sql: str, duration_s: float | None, rows: int | None, error: str | None
) -> None:
    """One line of the SQL screen's history."""
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO query_history(t, sql, duration_s, rows, error) VALUES (?,?,?,?,?)",
            (time.time(), sql, duration_s, rows, error),
        )


def query_history(store: Store, limit: int = 100) -> list[dict[str, Any]]:
    """The newest `limit` queries: {t, sql, duration_s, rows, error}, newest first."""
    rows = store.conn.execute(
        "SELECT t, sql, duration_s, rows, error FROM query_history ORDER BY id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [dict(zip(("t", "sql", "duration_s", "rows", "error"), r, strict=True)) for r in rows]


# The store's tables that the SQL surface shows next to the lake, as read-only queries.
_EXPOSED = {
    "jobs": 'SELECT id, name, kind, state, reason, priority, grp AS "group", gpus, cpus,'
    " attempt, retries, exit_code, created_at, started_at, ended_at, stage, pipeline_id,"
    " progress, peak_gpu_mem, mean_gpu_util FROM jobs",
    "job_events": "SELECT job_id, t, state, reason FROM job_events",
    "metrics": "SELECT job_id, step, name, value, t FROM metrics",
    "runs": "SELECT * FROM runs",
    "evaluations": "SELECT * FROM evaluations",
    "models": "SELECT * FROM models",
}


def exposed_table(store: Store, name: str) -> tuple[list[str], list[tuple[Any, ...]]] | None:
    """(column names, rows) of one store table as the SQL surface shows it (environments and
    specs left out), or None when the table does not exist in this file."""
    exists = store.conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)
    ).fetchone()
    if name not in _EXPOSED or not exists:
        return None
    cursor = store.conn.execute(_EXPOSED[name])
    return [d[0] for d in cursor.description], cursor.fetchall()


def exposed_columns(store: Store) -> dict[str, list[str]]:
    """{store table: its column names} for every store table the SQL surface exposes and this
    file has (no rows read): what the Data screen's catalog lists beside the datasets."""
    present = {
        row[0] for row in store.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
    }
    out: dict[str, list[str]] = {}
    for name, sql in _EXPOSED.items():
        if name in present:
            cursor = store.conn.execute(sql + " LIMIT 0")
            out[name] = [d[0] for d in cursor.description]
    return out


# ---- runs (training), evaluations and exported models ---------------------------------------

RUN_COLUMNS = (
    "r.job_id, r.name, j.state, r.model, r.task, r.dataset, r.dataset_version, r.dataset_hash,"
    " r.params, r.env, r.metrics, r.sweep_metric, r.bundle, r.started_at, r.finished_at, j.stage,"
    " j.pipeline_id, r.source, r.artifacts"
)


def start_run(
    store: Store,
    job_id: int,
    name: str,
    model: str,
    task: str,
    dataset: str,
    version: int,
    content_hash: str,
    params: dict[str, Any],
    env: dict[str, Any],
    sweep_metric: str | None,
) -> None:
    """Record a run as it starts (again, on a retry: the row is replaced, metrics kept)."""
    with store.transaction() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO runs(job_id, name, model, task, dataset, dataset_version,"
            " dataset_hash, params, env, sweep_metric, started_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                job_id, name, model, task, dataset, version, content_hash,
                json.dumps(params), json.dumps(env), sweep_metric or None, time.time(),
            ),
        )  # fmt: skip


def finish_run(store: Store, job_id: int, metrics: dict[str, float], bundle: str) -> None:
    """A run's final metrics and the path of its saved model bundle."""
    with store.transaction() as conn:
        conn.execute(
            "UPDATE runs SET metrics=?, bundle=?, finished_at=? WHERE job_id=?",
            (json.dumps(metrics), bundle, time.time(), job_id),
        )


def run_rows(store: Store, job_id: int | None = None) -> list[tuple[Any, ...]]:
    """Runs (RUN_COLUMNS) joined with their job's state, by job id; one when `job_id` is given."""
    if job_id is None:
        return store.conn.execute(
            f"SELECT {RUN_COLUMNS} FROM runs r LEFT JOIN jobs j ON j.id = r.job_id"
            " ORDER BY r.job_id"
        ).fetchall()
    return store.conn.execute(
        f"SELECT {RUN_COLUMNS} FROM runs r LEFT JOIN jobs j ON j.id = r.job_id WHERE r.job_id=?",
        (job_id,),
    ).fetchall()


def run_dataset_rows(store: Store, job_id: int | None = None) -> list[tuple[Any, ...]]:
    """(job_id, dataset, version, content_hash) of every dataset version runs declared reading
    (workbench.track's `dataset()`), in the order they were declared."""
    where, params = ("WHERE job_id=?", (job_id,)) if job_id is not None else ("", ())
    return store.conn.execute(
        f"SELECT job_id, dataset, version, content_hash FROM run_datasets {where}"
        " ORDER BY job_id, t",
        params,
    ).fetchall()


def record_evaluation(
    store: Store,
    job_id: int,
    run_job_id: int | None,
    dataset: str,
    version: int,
    model_format: str,
    model_path: str,
    result: dict[str, Any],
) -> None:
    """A test job's result (metrics, gate) against a dataset version."""
    with store.transaction() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO evaluations(job_id, run_job_id, dataset, dataset_version,"
            " model_format, model_path, metrics, gate_passed, result, created_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                job_id, run_job_id, dataset, version, model_format, model_path,
                json.dumps(result["metrics"]), int(bool(result["gate_passed"])),
                json.dumps(result, default=float), time.time(),
            ),
        )  # fmt: skip


def evaluation_rows(store: Store, run_job_id: int | None = None) -> list[tuple[Any, ...]]:
    """(job_id, result JSON, created_at) of test results, newest first (of one run, if given)."""
    where, params = ("WHERE run_job_id=?", (run_job_id,)) if run_job_id is not None else ("", ())
    return store.conn.execute(
        f"SELECT job_id, result, created_at FROM evaluations {where} ORDER BY job_id DESC", params
    ).fetchall()


def record_model(
    store: Store,
    export_job_id: int,
    run_job_id: int | None,
    path: str,
    fmt: str,
    sha256: str,
    card: dict[str, Any],
) -> int:
    """An exported model file and its card; returns the model's id."""
    with store.transaction() as conn:
        cursor = conn.execute(
            "INSERT INTO models(export_job_id, run_job_id, path, format, sha256, card, created_at)"
            " VALUES (?,?,?,?,?,?,?)",
            (
                export_job_id,
                run_job_id,
                path,
                fmt,
                sha256,
                json.dumps(card, default=float),
                time.time(),
            ),
        )
        return int(cursor.lastrowid or 0)


MODEL_COLUMNS = (
    "id",
    "export_job_id",
    "run_job_id",
    "path",
    "format",
    "sha256",
    "card",
    "created_at",
)


def model_rows(store: Store) -> list[tuple[Any, ...]]:
    """Exported models (MODEL_COLUMNS), newest first."""
    return store.conn.execute(
        f"SELECT {', '.join(MODEL_COLUMNS)} FROM models ORDER BY id DESC"
    ).fetchall()
