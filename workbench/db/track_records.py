"""Typed records (from workbench.track or a captured TensorBoard/Lightning/Hugging Face file)
applied to state.db: each is validated here, for the job whose records file it came from, and
written inside the caller's transaction (workbench/db/journal.py moves the file's offset in the
same transaction, so each record is applied exactly once).

A record is a JSON object with `kind`:
- `metrics`: {step: int, t: epoch s, values: {name: number | "nan" | "inf" | "-inf"}}
- `params`: {values: {...}} merged into the run's params
- `progress`: {fraction: 0..1 | null, message: str | null}
- `artifact`: {path, bytes}
- `dataset`: {name, version, content_hash} (checked against the lake's catalog)
- `model`: {path, format, sha256, features, target, task, classes, build}
The first record of a job creates its run (source 'script') unless the job already has one.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.db.store import Store

KINDS = ("metrics", "params", "progress", "artifact", "dataset", "model")
MODEL_FORMATS = ("torchscript", "onnx", "state_dict")
# The tracking API's own limits (workbench/track.py), held here too: a records file is any
# bytes a job appended, and a 10 MB metric name or params dict would be in every `runs` listing.
MAX_METRICS = 1000
MAX_NAME_CHARS = 200
MAX_PARAMS_BYTES = 64 * 1024
_SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class TypedRecordError(ValueError):
    """A record that cannot be applied (unknown kind, a bad field, a dataset not in the lake)."""


def _float(value: Any, where: str) -> float:
    if isinstance(value, str) and value in _SPECIAL:
        return _SPECIAL[value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise TypedRecordError(f"{where}: {value!r} is no number")


class RecordApplier:
    """Applies one batch of a job's typed records on `conn` (inside a transaction); `finish()`
    writes what the batch changed in the run row (last metric values, params) once."""

    def __init__(self, conn: sqlite3.Connection, job_id: int, run_dir: Path):
        self.conn = conn
        self.job_id = job_id
        self.run_dir = run_dir.resolve()
        self._run_ready = False
        self._new_metrics: dict[str, float | None] = {}
        self._new_params: dict[str, Any] = {}

    def _ensure_run(self) -> None:
        if self._run_ready:
            return
        row = self.conn.execute("SELECT name, spec FROM jobs WHERE id=?", (self.job_id,)).fetchone()
        name = str(row[0]) if row else f"job {self.job_id}"
        try:  # a swept command stage's point: its parameters and the metric that ranks it
            sweep = json.loads(row[1]).get("sweep") or {} if row else {}
        except (ValueError, AttributeError):
            sweep = {}
        params = sweep.get("params") if isinstance(sweep.get("params"), dict) else {}
        self.conn.execute(
            "INSERT OR IGNORE INTO runs(job_id, name, model, task, dataset, dataset_version,"
            " dataset_hash, params, env, sweep_metric, started_at, source)"
            " VALUES (?, ?, 'script', '', '', 0, '', ?, '{}', ?, ?, 'script')",
            (self.job_id, name, json.dumps(params), sweep.get("metric") or None, time.time()),
        )
        self._run_ready = True

    def apply(self, record: Any) -> None:
        """Validate and write one record. Raises TypedRecordError (nothing written for it)."""
        if not isinstance(record, dict) or record.get("kind") not in KINDS:
            kind = record.get("kind") if isinstance(record, dict) else type(record).__name__
            raise TypedRecordError(f"unknown record kind {kind!r}")
        kind = str(record["kind"])
        getattr(self, f"_{kind}")(record)

    def _metrics(self, record: dict[str, Any]) -> None:
        step, values, t = record.get("step"), record.get("values"), record.get("t", time.time())
        if not isinstance(step, int) or isinstance(step, bool) or not isinstance(values, dict):
            raise TypedRecordError("metrics: needs an integer step and a dict of values")
        if len(values) > MAX_METRICS:
            raise TypedRecordError(
                f"metrics: {len(values)} values in one record (at most {MAX_METRICS})"
            )
        long = next((str(n) for n in values if len(str(n)) > MAX_NAME_CHARS), None)
        if long is not None:
            raise TypedRecordError(f"metric {long[:40]!r}...: a name over {MAX_NAME_CHARS} chars")
        rows = []
        for name, value in values.items():
            number = _float(value, f"metric {name!r}")
            stored = None if math.isnan(number) else number  # as the train kind stores NaN
            rows.append((self.job_id, step, str(name), stored, float(t)))
            self._new_metrics[str(name)] = stored
        self._ensure_run()
        self.conn.executemany(
            "INSERT INTO metrics(job_id, step, name, value, t) VALUES (?,?,?,?,?)", rows
        )

    def _params(self, record: dict[str, Any]) -> None:
        values = record.get("values")
        if not isinstance(values, dict):
            raise TypedRecordError("params: values must be a dict")
        merged = {**self._new_params, **values}
        if len(json.dumps(merged, default=str)) > MAX_PARAMS_BYTES:
            raise TypedRecordError(f"params: over {MAX_PARAMS_BYTES} bytes of JSON")
        self._ensure_run()
        self._new_params.update(values)

    def _progress(self, record: dict[str, Any]) -> None:
        fraction, message = record.get("fraction"), record.get("message")
        if fraction is not None:
            fraction = min(1.0, max(0.0, _float(fraction, "progress")))
            if math.isnan(fraction):
                fraction = None
        self.conn.execute(
            "UPDATE jobs SET progress=?, progress_msg=? WHERE id=?",
            (fraction, None if message is None else str(message)[:200], self.job_id),
        )

    def _inside(self, path: Any, what: str) -> str:
        if not isinstance(path, str):
            raise TypedRecordError(f"{what}: path must be a string")
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.run_dir):
            raise TypedRecordError(f"{what}: {path} is outside the job's run folder")
        return str(resolved)

    def _artifact(self, record: dict[str, Any]) -> None:
        path = self._inside(record.get("path"), "artifact")
        self._ensure_run()
        (listed,) = self.conn.execute(
            "SELECT artifacts FROM runs WHERE job_id=?", (self.job_id,)
        ).fetchone()
        artifacts = [a for a in json.loads(listed or "[]") if a.get("path") != path]
        artifacts.append({"path": path, "bytes": record.get("bytes"), "t": record.get("t")})
        self.conn.execute(
            "UPDATE runs SET artifacts=? WHERE job_id=?", (json.dumps(artifacts), self.job_id)
        )

    def _dataset(self, record: dict[str, Any]) -> None:
        name, version, digest = (
            record.get("name"),
            record.get("version"),
            record.get("content_hash"),
        )
        row = self.conn.execute(
            "SELECT content_hash FROM dataset_versions WHERE dataset=? AND version=?",
            (name, version),
        ).fetchone()
        if row is None:
            raise TypedRecordError(f"dataset {name!r} v{version} is not in the lake")
        if row[0] != digest:
            raise TypedRecordError(f"dataset {name!r} v{version}: content hash does not match")
        self._ensure_run()
        self.conn.execute(
            "INSERT OR IGNORE INTO run_datasets(job_id, dataset, version, content_hash, t)"
            " VALUES (?,?,?,?,?)",
            (self.job_id, name, version, digest, time.time()),
        )
        self.conn.execute(
            "UPDATE runs SET dataset=?, dataset_version=?, dataset_hash=? WHERE job_id=?"
            " AND dataset=''",
            (name, version, digest, self.job_id),
        )

    def _model(self, record: dict[str, Any]) -> None:
        path = self._inside(record.get("path"), "model")
        fmt, task = record.get("format"), record.get("task")
        features = record.get("features")
        if fmt not in MODEL_FORMATS:
            raise TypedRecordError(f"model: format {fmt!r} is none of {', '.join(MODEL_FORMATS)}")
        if task not in ("classification", "regression"):
            raise TypedRecordError(f"model: task {task!r}")
        if not isinstance(features, list) or not features:
            raise TypedRecordError("model: features must be a non-empty list")
        if fmt == "state_dict" and not isinstance(record.get("build"), str):
            raise TypedRecordError("model: a state dict needs build='module:function'")
        if not Path(path).is_file():
            raise TypedRecordError(f"model: no such file {path}")
        self._ensure_run()
        datasets = [
            {"name": d, "version": v, "content_hash": h}
            for d, v, h in self.conn.execute(
                "SELECT dataset, version, content_hash FROM run_datasets WHERE job_id=? ORDER BY t",
                (self.job_id,),
            )
        ]
        first = datasets[0] if datasets else {}
        card = {
            "name": f"{first.get('name', 'model')}-script-job{self.job_id}",
            "file": path,
            "bytes": Path(path).stat().st_size,
            "format": fmt,
            "dataset": first,
            "run": {"job_id": self.job_id, "model": "script"},
            "export_job_id": None,
            "source": "script",
            "job_id": self.job_id,
            "features": [str(f) for f in features],
            "target": str(record.get("target")),
            "task": task,
            "classes": record.get("classes"),
            "build": record.get("build"),
            "datasets": datasets,
        }
        self.conn.execute(
            "INSERT INTO models(export_job_id, run_job_id, path, format, sha256, card, created_at)"
            " VALUES (?,?,?,?,?,?,?)",
            (self.job_id, self.job_id, path, fmt, str(record.get("sha256")), json.dumps(card),
             time.time()),
        )  # fmt: skip
        self.conn.execute(
            "UPDATE runs SET task=?, bundle=? WHERE job_id=? AND source='script'",
            (task, path, self.job_id),
        )

    def finish(self) -> None:
        """Write the batch's last metric values and params into the run row."""
        if not self._new_metrics and not self._new_params:
            return
        row = self.conn.execute(
            "SELECT metrics, params FROM runs WHERE job_id=?", (self.job_id,)
        ).fetchone()
        if row is None:
            return
        metrics = json.loads(row[0]) if row[0] else {}
        metrics.update(self._new_metrics)
        params = json.loads(row[1]) if row[1] else {}
        params.update(self._new_params)
        self.conn.execute(
            "UPDATE runs SET metrics=?, params=? WHERE job_id=?",
            (json.dumps(metrics), json.dumps(params), self.job_id),
        )


def mark_finished(store: Store, job_ids: list[int]) -> None:
    """The script runs of these ended jobs get their end time (a built-in run sets its own)."""
    if not job_ids:
        return
    marks = ",".join("?" * len(job_ids))
    with store.transaction() as conn:
        conn.execute(
            f"UPDATE runs SET finished_at=? WHERE job_id IN ({marks}) AND source='script'"
            " AND finished_at IS NULL",
            (time.time(), *job_ids),
        )
