"""The run catalog: one row per job that reported a run (the built-in `train` kind, or any job
through workbench.track or a captured file) with its params, dataset versions and hashes,
environment and latest metrics; what `workbench runs` and the Runs screen list and compare."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workbench.db import catalog as db_catalog
from workbench.db.store import Store
from workbench.jobmodel.states import JobState

if TYPE_CHECKING:
    from workbench.catalog.lake import VersionInfo


@dataclass(frozen=True)
class Run:
    """A job's run joined with its queue state. `source` is 'train' (the built-in kind) or
    'script' (records from workbench.track or captured files); `datasets` every version the run
    declared reading ({name, version, content_hash}), `artifacts` the files it recorded."""

    job_id: int
    name: str
    state: str
    model: str
    task: str
    dataset: str
    dataset_version: int
    dataset_hash: str
    params: dict[str, Any]
    env: dict[str, Any]
    metrics: dict[str, float]
    sweep_metric: str | None
    bundle: str | None
    started_at: float
    finished_at: float | None
    stage: str | None
    pipeline_id: int | None
    source: str = "train"
    datasets: tuple[dict[str, Any], ...] = ()
    artifacts: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "name": self.name,
            "state": self.state,
            "model": self.model,
            "task": self.task,
            "dataset": self.dataset,
            "dataset_version": self.dataset_version,
            "dataset_hash": self.dataset_hash,
            "params": self.params,
            "env": self.env,
            "metrics": self.metrics,
            "sweep_metric": self.sweep_metric,
            "bundle": self.bundle,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "stage": self.stage,
            "pipeline_id": self.pipeline_id,
            "source": self.source,
            "datasets": list(self.datasets),
            "artifacts": list(self.artifacts),
        }


def _run(row: tuple[Any, ...], datasets: list[dict[str, Any]] | None = None) -> Run:
    (job_id, name, state, model, task, dataset, version, digest, params, env, metrics, sweep,
     bundle, started, finished, stage, pipeline, source, artifacts) = row  # fmt: skip
    if not datasets and dataset:
        datasets = [{"name": dataset, "version": version, "content_hash": digest}]
    return Run(
        job_id, name, state or "removed", model, task, dataset, version, digest,
        json.loads(params), json.loads(env), json.loads(metrics) if metrics else {},
        sweep, bundle, started, finished, stage, pipeline, source or "train",
        tuple(datasets or ()), tuple(json.loads(artifacts) if artifacts else ()),
    )  # fmt: skip


def _datasets_by_job(store: Store, job_id: int | None = None) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for run_job, name, version, digest in db_catalog.run_dataset_rows(store, job_id):
        out.setdefault(run_job, []).append(
            {"name": name, "version": version, "content_hash": digest}
        )
    return out


def start_run(
    store: Store,
    job_id: int,
    name: str,
    model: str,
    task: str,
    info: VersionInfo,
    params: dict[str, Any],
    env: dict[str, Any],
    sweep_metric: str | None,
) -> None:
    """Record a run as it starts (again, on a retry: the row is replaced, metrics kept)."""
    db_catalog.start_run(
        store, job_id, name, model, task, info.dataset, info.version, info.content_hash,
        params, env, sweep_metric,
    )  # fmt: skip


def finish_run(store: Store, job_id: int, metrics: dict[str, float], bundle: str) -> None:
    db_catalog.finish_run(store, job_id, metrics, bundle)


def list_runs(store: Store) -> list[Run]:
    """Every run, by job id."""
    datasets = _datasets_by_job(store)
    return [_run(r, datasets.get(r[0])) for r in db_catalog.run_rows(store)]


def get_run(store: Store, job_id: int) -> Run | None:
    rows = db_catalog.run_rows(store, job_id)
    return _run(rows[0], _datasets_by_job(store, job_id).get(job_id)) if rows else None


def metric_order(metric: str) -> tuple[str, bool]:
    """`val_accuracy` -> higher is better; `-val_loss`, or any *loss / *rmse / *mae -> lower."""
    if metric.startswith("-"):
        return metric[1:], False
    lower = metric.endswith(("loss", "rmse", "mae", "mse", "error"))
    return metric, not lower


def metric_sort_key(value: Any, higher_is_better: bool) -> tuple[int, float]:
    """Sort key (ascending) that puts the best value first and NaN, infinite or missing values
    last, whichever way the metric runs."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        return (1, 0.0)
    return (0, -float(value) if higher_is_better else float(value))


def sort_runs(runs: list[Run], metric: str) -> list[Run]:
    """Runs best first by `metric` (see `metric_order`); NaN, infinite and missing values last.
    Ties are broken by the lower `val_loss`, then by the older job (smaller id)."""
    name, higher = metric_order(metric)
    return sorted(
        runs,
        key=lambda r: (
            metric_sort_key(r.metrics.get(name), higher),
            metric_sort_key(r.metrics.get("val_loss"), False),
            r.job_id,
        ),
    )


def best_run(runs: list[Run], metric: str) -> Run | None:
    """The succeeded run with the best finite value of `metric` (ties as in `sort_runs`);
    None when no run has one."""
    name, _ = metric_order(metric)
    scored = [
        r
        for r in runs
        if r.state == JobState.SUCCEEDED and metric_sort_key(r.metrics.get(name), True)[0] == 0
    ]
    return sort_runs(scored, metric)[0] if scored else None


def stage_runs(store: Store, pipeline_id: int, stage: str) -> list[Run]:
    return [r for r in list_runs(store) if r.pipeline_id == pipeline_id and r.stage == stage]
