"""The `test` kind: a trained run (its bundle) or an exported ONNX model against a labelled
dataset version: task metrics, per-class report, confusion matrix, per-row predictions written
back to the lake, slices worst first, optional repeats over seeds, and a gate."""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.context import JobContext, JobFailed, workbench_source
from workbench.queue.spec import SpecError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow

    from jobs.bundle import Preprocessor

GATE_PREFIXES = ("min_", "max_")


@dataclass(frozen=True)
class Spec:
    """`model`: a pipeline stage (a train stage: its best run; an export stage: its .onnx), a
    train job id, or a .onnx/.pt path; `gate`: bounds such as {min_accuracy = 0.9, max_rmse =
    300}, or per class {min_recall = {pos = 0.5}}; `repeat = N` trains-and-tests N seeds;
    `key`: a column carried into the predictions table to find each row's source."""

    model: str
    dataset: str
    version: int | None = None
    gate: dict[str, float | dict[str, float]] = field(default_factory=dict)
    repeat: int = 0
    slices: list[str] | None = None
    bins: int = 4
    predictions: str | None = None
    key: str | None = None


def prepare(spec: Spec, base_dir: Path, where: str) -> Spec:
    """Submit-time checks: gate names must be metrics of some task (`check_gate_task` checks
    them against the model's task where a pipeline knows it), files must exist."""
    from jobs.metrics import gate_metric_problem

    for key, bound in spec.gate.items():
        problem = gate_metric_problem(key, bound, None)
        if problem:
            raise SpecError(f"{where}: key 'gate.{key}': {problem}")
    if spec.repeat < 0 or spec.repeat == 1:
        raise SpecError(f"{where}: key 'repeat': 0 (off) or at least 2 seeds")
    if spec.bins < 2:
        raise SpecError(f"{where}: key 'bins': at least 2")
    model = spec.model
    if model.endswith((".onnx", ".pt")):
        resolved = (base_dir / model).resolve()
        if not resolved.is_file():
            raise SpecError(f"{where}: key 'model': no such file {resolved}")
        model = str(resolved)
    from dataclasses import replace

    return replace(spec, model=model)


def dataset_refs(spec: dict[str, Any]) -> list[Any]:
    """The dataset a test spec names (and its `key` column), for `catalogcheck` at submit."""
    from workbench.queue.catalogcheck import DatasetRef

    key = (("key", str(spec["key"])),) if spec.get("key") else ()
    return [DatasetRef("dataset", str(spec["dataset"]), spec.get("version"), key)]


def check_gate_task(gate: dict[str, Any], task: str, where: str) -> None:
    """Refuse gate entries that are no metric of `task`; raises SpecError naming the key."""
    from jobs.metrics import gate_metric_problem

    for key, bound in gate.items():
        problem = gate_metric_problem(key, bound, task)
        if problem:
            raise SpecError(f"{where}: key 'gate.{key}': {problem}")


def check_upstream(spec: dict[str, Any], kind: str, upstream: dict[str, Any], where: str) -> None:
    """In a pipeline: the gates of a test stage whose model is a train stage with a `task`
    set are checked against that task at submit. Raises SpecError."""
    task = upstream.get("task")
    if kind == "train" and task in ("classification", "regression"):
        check_gate_task(spec.get("gate") or {}, str(task), where)


class Predictor:
    """Predictions of a bundle (torch) or an exported ONNX model for a table, and its
    preprocessing. `inputs` says what an ONNX graph takes: "columns" (one input per raw feature
    column, the whole encoding inside), "matrix" (the raw numeric features as one matrix) or
    "encoded" (the encoded feature matrix)."""

    def __init__(
        self,
        fmt: str,
        pre: Preprocessor,
        model: Any = None,
        session: Any = None,
        inputs: str = "encoded",
    ):
        self.fmt = fmt
        self.pre = pre
        self.model = model
        self.session = session
        self.inputs = inputs
        self.run_job_id: int | None = None
        """For an exported file: the training run its metadata names (`workbench.meta`)."""

    @classmethod
    def load(cls, fmt: str, path: Path) -> Predictor:
        from jobs.bundle import Preprocessor, load_bundle

        if fmt == "bundle":
            model, pre, _ = load_bundle(path)
            return cls(fmt, pre, model=model)
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        props = session.get_modelmeta().custom_metadata_map
        if "workbench.preprocessor" not in props:
            raise JobFailed(
                f"{path}: this ONNX file has no workbench preprocessing metadata (export it with an export job)"
            )
        pre = Preprocessor.from_dict(json.loads(props["workbench.preprocessor"]))
        inputs = props.get("workbench.inputs") or (
            "matrix" if props.get("workbench.numeric_preprocessing") == "1" else "encoded"
        )
        predictor = cls(fmt, pre, session=session, inputs=inputs)
        run_id = json.loads(props.get("workbench.meta") or "{}").get("run_job_id")
        predictor.run_job_id = int(run_id) if isinstance(run_id, int) else None
        return predictor

    def onnx_feed(self, table: pyarrow.Table) -> dict[str, np.ndarray]:
        """The ONNX session's inputs for `table`, each numeric one in the element type the graph
        declares (float64 for exports since named float64 inputs; float32 in older files)."""
        import numpy as np

        if self.inputs == "encoded":
            return {self.session.get_inputs()[0].name: self.pre.transform(table)}
        raw = self.pre.raw_columns(table)
        if self.inputs == "matrix":  # older exports: the raw numeric features as one matrix
            matrix = np.concatenate([raw[c.name] for c in self.pre.columns], axis=1)
            return {self.session.get_inputs()[0].name: matrix.astype(np.float32)}
        declared = {i.name: i.type for i in self.session.get_inputs()}
        return {
            name: values.astype(np.float32) if declared.get(name) == "tensor(float)" else values
            for name, values in raw.items()
        }

    def predict(self, table: pyarrow.Table) -> np.ndarray:
        """Classification: probabilities, float64 (rows, classes). Regression: predictions in
        the target's units, float64 (rows,)."""
        import numpy as np

        from jobs.metrics import softmax

        if self.fmt == "bundle":
            import torch

            x = torch.from_numpy(self.pre.transform(table))
            with torch.no_grad():
                outputs = np.asarray(self.model(x).float().numpy())
            if self.pre.task == "classification":
                return softmax(outputs)
            return self.pre.restore_target(outputs[:, 0])
        got = np.asarray(self.session.run(None, self.onnx_feed(table))[0])
        if self.pre.task == "classification":
            return softmax(got)
        return got[:, 0].astype(np.float64)  # the graph restores the target's units


def _slices(
    table: pyarrow.Table, pre: Preprocessor, columns: list[str] | None, bins: int
) -> dict[str, np.ndarray]:
    """Masks per value of each categorical column and per quantile bin of each numeric one."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    groups: dict[str, np.ndarray] = {}
    names = columns if columns is not None else pre.features
    for name in names:
        if name not in table.column_names:
            raise JobFailed(f"key 'slices': column {name!r} is not in the dataset")
        column = table.column(name)
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            values = np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False))
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                continue
            edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)))
            for low, high in itertools.pairwise(edges):
                last = high == edges[-1]
                mask = (values >= low) & ((values <= high) if last else (values < high))
                groups[f"{name} in [{low:.4g}, {high:.4g}{']' if last else ')'}"] = mask
            if np.isnan(values).any():
                groups[f"{name} missing"] = np.isnan(values)
        else:
            strings = pc.cast(column, pa.string())
            for value in pc.unique(strings).to_pylist():
                mask = np.asarray(
                    pc.is_null(strings)
                    if value is None
                    else pc.fill_null(pc.equal(strings, value), False)
                )
                groups[f"{name} = {value if value is not None else 'missing'}"] = mask
    return groups


def evaluate_table(
    predictor: Predictor, table: pyarrow.Table
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(report, per-row arrays) for one model on one labelled table. Rows without a label are
    predicted, but left out of the metrics and counted (`report.counts.missing_targets`)."""
    import numpy as np

    from jobs.bundle import DataError
    from jobs.metrics import classification_report, predict_labels, regression_report

    pre = predictor.pre
    try:
        pre.check_columns(table, with_target=True)
        y = pre.encode_target(table)
        predicted_values = predictor.predict(table)
    except DataError as error:
        raise JobFailed(str(error)) from None
    if pre.task == "classification":
        proba = predicted_values
        report = classification_report(y, proba, pre.classes, pre.threshold)
        predicted = predict_labels(proba, pre.threshold)
        names = np.asarray(pre.classes, dtype=object)
        known = y >= 0
        rows = {
            "label": np.where(known, names[np.maximum(y, 0)], None),
            "prediction": names[predicted],
            "confidence": proba[np.arange(len(predicted)), predicted],
            "correct": np.where(known, predicted == y, None),
            "proba": proba,
        }
    else:
        report = regression_report(y, predicted_values)
        rows = {"label": y, "prediction": predicted_values, "error": predicted_values - y}
    return report, rows


def _predictions_table(
    table: pyarrow.Table, pre: Preprocessor, rows: dict[str, Any], key: str | None
) -> pyarrow.Table:
    """Per-row predictions: `row_number` (the row's position in the dataset version, 0-based),
    the `key` column when given, the features, label, prediction and, for classification,
    confidence, correct and one `p_<class>` probability column per class."""
    import numpy as np
    import pyarrow as pa

    columns: dict[str, Any] = {"row_number": pa.array(np.arange(table.num_rows, dtype=np.int64))}
    if key is not None:
        columns[f"key_{key}" if key in pre.features or key == "row_number" else key] = table.column(
            key
        )
    for name in pre.features:
        columns[name] = table.column(name)
    if pre.task == "classification":
        columns["label"] = pa.array(list(rows["label"]), pa.string())
        columns["prediction"] = pa.array(list(rows["prediction"]), pa.string())
        columns["confidence"] = pa.array(rows["confidence"].astype(np.float64))
        columns["correct"] = pa.array(list(rows["correct"]), pa.bool_())
        for index, name in enumerate(pre.classes):
            columns[f"p_{name}"] = pa.array(rows["proba"][:, index].astype(np.float64))
    else:
        label = rows["label"]
        columns["label"] = pa.array(label, pa.float64(), mask=np.isnan(label))
        columns["prediction"] = pa.array(rows["prediction"], pa.float64())
        columns["error"] = pa.array(rows["error"], pa.float64(), mask=np.isnan(rows["error"]))
    return pa.table(columns)


def _repeat(
    ctx: JobContext, run_id: int, times: int, test_table: pyarrow.Table
) -> dict[str, dict[str, float]]:
    """Train the run's configuration with `times` seeds and test each: mean and std per metric."""
    import numpy as np

    from jobs import train
    from jobs.metrics import headline
    from workbench.catalog import lake, tracking
    from workbench.queue.spec import from_table

    run = tracking.get_run(ctx.store, run_id)
    if run is None:
        raise JobFailed("repeat needs a training run as the model (a stage or a job id)")
    params = {
        k: v for k, v in run.params.items() if k in {f for f in train.Spec.__dataclass_fields__}
    }
    base = from_table(train.Spec, params, "repeat")
    data_table, _ = lake.read_arrow(
        ctx.home, run.dataset, run.dataset_version, ctx.store, ctx.shared
    )
    val_table, val_where = None, ""
    if base.val_dataset is not None:
        val_table, val_info = lake.read_arrow(
            ctx.home, base.val_dataset, base.val_version, ctx.store, ctx.shared
        )
        val_where = f"dataset {val_info.dataset} v{val_info.version}"
    device = train._select_device(ctx)
    values: dict[str, list[float]] = {}
    for index in range(times):
        seed = base.seed + index
        spec = from_table(train.Spec, {**params, "seed": seed}, "repeat")
        data = train.prepare_data(
            data_table,
            spec,
            f"dataset {run.dataset} v{run.dataset_version}",
            val_table,
            val_where,
        )
        model, _ = train.fit(ctx, spec, data, device, checkpoint=None, record=False)
        report, _ = evaluate_table(
            Predictor("bundle", data.pre, model=model.cpu().eval()), test_table
        )
        for key, value in headline(report).items():
            values.setdefault(key, []).append(value)
        ctx.log(
            f"repeat {index + 1}/{times} (seed {seed}): "
            + ", ".join(f"{k} {v:.4f}" for k, v in headline(report).items())
        )
        ctx.progress(0.2 + 0.6 * (index + 1) / times, f"repeat {index + 1}/{times}")
    return {
        k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)), "n": len(v)}
        for k, v in values.items()
    }


def report_markdown(result: dict[str, Any]) -> str:
    """The report as Markdown: headline metrics, per-class table, confusion matrix, slices."""
    lines = [
        f"# Test report: {result['model']['reference']} on {result['dataset']['name']} v{result['dataset']['version']}",
        "",
    ]
    lines += ["| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4f} |" for k, v in result["metrics"].items()]
    report = result["report"]
    counts = report.get("counts", {})
    lines += [
        "",
        f"Rows scored: {counts.get('rows')}; left out without a label: {counts.get('missing_targets')};"
        f" NaN outputs: {counts.get('nan_outputs')}"
        + (
            f"; decision threshold {report['threshold']:.4f}"
            if report.get("threshold") is not None
            else ""
        ),
    ]
    if "per_class" in report:
        lines += [
            "",
            "| class | precision | recall | f1 | support |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {c} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
            for c, m in report["per_class"].items()
        ]
        lines += [
            "",
            "Confusion matrix (rows: true, columns: predicted)",
            "",
            "| | " + " | ".join(report["classes"]) + " |",
        ]
        lines += ["| --- |" + " --- |" * len(report["classes"])]
        lines += [
            f"| {c} | " + " | ".join(str(v) for v in row) + " |"
            for c, row in zip(report["classes"], report["confusion_matrix"], strict=True)
        ]
    if result["slices"]:
        lines += ["", "Worst slices", ""]
        lines += [
            f"- {s['slice']}: "
            + ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in s.items()
                if k != "slice"
            )
            for s in result["slices"][:10]
        ]
    if result.get("repeat"):
        lines += ["", "Repeats", ""] + [
            f"- {k}: {v['mean']:.4f} ± {v['std']:.4f} (n={v['n']})"
            for k, v in result["repeat"].items()
        ]
    if result["gate"]:
        lines += ["", f"Gate: {'passed' if result['gate_passed'] else 'FAILED'}"] + [
            f"- {p}" for p in result["gate_problems"]
        ]
    return "\n".join(lines) + "\n"


def run(ctx: JobContext) -> None:
    import numpy as np

    from jobs.bundle import DataError, resolve_model
    from jobs.metrics import check_gate, headline, slice_table
    from workbench.catalog import lake, registry

    spec = ctx.spec(Spec)
    try:
        fmt, path, run_id = resolve_model(ctx, spec.model)
        table, info = lake.read_arrow(ctx.home, spec.dataset, spec.version, ctx.store, ctx.shared)
    except (DataError, lake.LakeError) as error:
        raise JobFailed(str(error)) from None
    ctx.log(f"testing {fmt} {path} on dataset {info.dataset} v{info.version} ({info.rows} rows)")
    predictor = Predictor.load(fmt, path)
    pre = predictor.pre
    if run_id is None and predictor.run_job_id is not None:
        from workbench.catalog import tracking

        if tracking.get_run(ctx.store, predictor.run_job_id) is not None:
            run_id = predictor.run_job_id
            ctx.log(f"{path.name} was exported from training run {run_id}")
    try:
        check_gate_task(spec.gate, pre.task, "key 'gate'")
    except SpecError as error:
        raise JobFailed(str(error)) from None
    if spec.key is not None and spec.key not in table.column_names:
        raise JobFailed(f"key 'key': column {spec.key!r} is not in dataset {info.dataset}")
    started = time.perf_counter()
    report, rows = evaluate_table(predictor, table)
    unseen = pre.unseen_categories(table)
    warnings = [
        f"feature {column!r}: {count} of {table.num_rows} values are categories training never"
        " saw (encoded as no category)"
        for column, count in unseen.items()
    ]
    for warning in warnings:
        ctx.log(f"warning: {warning}")
    ctx.progress(0.2, "evaluated")
    metrics = headline(report)
    counts = report["counts"]
    if counts["missing_targets"]:
        ctx.log(
            f"{counts['missing_targets']} rows without a {pre.target!r} value left out of the metrics"
        )
    if counts["nan_outputs"]:
        ctx.log(
            f"the model gave NaN or infinite outputs for {counts['nan_outputs']} rows: metrics are NaN"
        )
    labelled = rows["label"] != None if pre.task == "classification" else ~np.isnan(rows["label"])  # noqa: E711
    groups = {k: v & labelled for k, v in _slices(table, pre, spec.slices, spec.bins).items()}
    correct = (
        np.asarray(rows["correct"] == True, dtype=bool)  # noqa: E712
        if pre.task == "classification"
        else None
    )
    slices = slice_table(groups, correct, rows.get("error"))
    names = (
        [spec.predictions]
        if spec.predictions
        else [f"run{run_id}_test{ctx.job.id}_predictions", f"run{run_id}_predictions"]
        if run_id is not None
        else [f"test{ctx.job.id}_predictions"]
    )
    per_row = _predictions_table(table, pre, rows, spec.key)
    # The predictions carry the dataset's rows (its key column, labels): encrypted like it.
    try:
        published = [
            lake.publish_arrow(
                ctx.home,
                ctx.store,
                name,
                per_row,
                [{"path": str(path), "job": ctx.job.id}],
                ctx.job.id,
                encrypt=info.encrypted,
            )
            for name in names
        ]
    except lake.LakeError as error:
        raise JobFailed(str(error)) from None
    predictions = published[0]
    ctx.log(
        "per-row predictions: "
        + " and ".join(f"dataset {p.dataset} v{p.version}" for p in published)
        + f" ({predictions.rows} rows"
        + ("; the second is the run's latest test)" if len(published) > 1 else ")")
    )
    if spec.repeat and run_id is None:
        raise JobFailed(
            "repeat needs a training run as the model (a stage or a job id), not a file"
        )
    repeat = (
        _repeat(ctx, run_id, spec.repeat, table) if spec.repeat and run_id is not None else None
    )
    problems = check_gate(spec.gate, metrics, report.get("per_class"))
    result = {
        "model": {"reference": spec.model, "format": fmt, "path": str(path), "run_job_id": run_id},
        "dataset": {
            "name": info.dataset,
            "version": info.version,
            "content_hash": info.content_hash,
            "rows": info.rows,
        },
        "task": pre.task,
        "metrics": metrics,
        "undefined": report.get("undefined", {}),
        "unseen_categories": unseen,
        "warnings": warnings,
        "report": report,
        "slices": slices,
        "predictions": {"dataset": predictions.dataset, "version": predictions.version},
        "latest_predictions": {"dataset": published[-1].dataset, "version": published[-1].version},
        "workbench": workbench_source(),
        "repeat": repeat,
        "gate": spec.gate,
        "gate_passed": not problems,
        "gate_problems": problems,
        "seconds": time.perf_counter() - started,
        "errors": int((~correct[labelled]).sum()) if correct is not None else None,
    }
    ctx.write_json("report.json", result)
    ctx.write_text("report.md", report_markdown(result))
    finite: dict[str, float | None] = {
        k: (v if math.isfinite(v) else None) for k, v in metrics.items()
    }
    registry.record_evaluation(
        ctx.store, ctx.job.id, run_id, info, fmt, str(path), {**result, "metrics": finite}
    )
    ctx.metrics(0, finite)
    ctx.log("metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    for metric, why in report.get("undefined", {}).items():
        ctx.log(f"{metric} is undefined (null in report.json): {why}")
    for line in slices[:3]:
        ctx.log(f"worst slice: {line}")
    if problems:
        raise JobFailed("; ".join(problems))
