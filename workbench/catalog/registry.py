"""The evaluation and model catalog: test results per job, exported models with their cards
(lineage: dataset version, run, test, export), for `workbench models` and the Models screen."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from workbench.db.store import Store

if TYPE_CHECKING:
    from workbench.catalog.lake import VersionInfo


def record_evaluation(
    store: Store,
    job_id: int,
    run_job_id: int | None,
    info: VersionInfo,
    model_format: str,
    model_path: str,
    result: dict[str, Any],
) -> None:
    with store.transaction() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO evaluations(job_id, run_job_id, dataset, dataset_version,"
            " model_format, model_path, metrics, gate_passed, result, created_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                job_id, run_job_id, info.dataset, info.version, model_format, model_path,
                json.dumps(result["metrics"]), int(bool(result["gate_passed"])),
                json.dumps(result, default=float), time.time(),
            ),
        )  # fmt: skip


def evaluations(store: Store, run_job_id: int | None = None) -> list[dict[str, Any]]:
    """Test results, newest first (of one run, when given)."""
    where, params = ("WHERE run_job_id=?", (run_job_id,)) if run_job_id is not None else ("", ())
    rows = store.conn.execute(
        f"SELECT job_id, result, created_at FROM evaluations {where} ORDER BY job_id DESC", params
    ).fetchall()
    return [{"job_id": r[0], **json.loads(r[1]), "created_at": r[2]} for r in rows]


def record_model(
    store: Store,
    export_job_id: int,
    run_job_id: int | None,
    path: str,
    fmt: str,
    sha256: str,
    card: dict[str, Any],
) -> int:
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


def list_models(store: Store) -> list[dict[str, Any]]:
    """Exported models with their cards, newest first."""
    rows = store.conn.execute(
        "SELECT id, export_job_id, run_job_id, path, format, sha256, card, created_at FROM models"
        " ORDER BY id DESC"
    ).fetchall()
    keys = ("id", "export_job_id", "run_job_id", "path", "format", "sha256", "card", "created_at")
    out = []
    for row in rows:
        item = dict(zip(keys, row, strict=True))
        item["card"] = json.loads(item["card"])
        out.append(item)
    return out
