"""The evaluation and model catalog: test results per job, exported models with their cards
(lineage: dataset version, run, test, export), for `workbench models` and the Models screen."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from workbench.db import catalog as db_catalog
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
    db_catalog.record_evaluation(
        store, job_id, run_job_id, info.dataset, info.version, model_format, model_path, result
    )


def evaluations(store: Store, run_job_id: int | None = None) -> list[dict[str, Any]]:
    """Test results, newest first (of one run, when given)."""
    rows = db_catalog.evaluation_rows(store, run_job_id)
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
    return db_catalog.record_model(store, export_job_id, run_job_id, path, fmt, sha256, card)


def list_models(store: Store) -> list[dict[str, Any]]:
    """Exported models with their cards, newest first."""
    rows = db_catalog.model_rows(store)
    keys = db_catalog.MODEL_COLUMNS
    out = []
    for row in rows:
        item = dict(zip(keys, row, strict=True))
        item["card"] = json.loads(item["card"])
        out.append(item)
    return out
