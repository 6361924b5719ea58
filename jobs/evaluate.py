"""The `test` kind: a trained run (its bundle) or an exported ONNX model against a labelled
dataset version: task metrics, per-class report, confusion matrix, per-row predictions written
back to the lake, slices worst first, optional repeats over seeds, and a gate."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.context import JobContext, JobFailed
from workbench.queue.spec import SpecError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow

    from jobs.bundle import Preprocessor

GATE_PREFIXES = ("min_", "max_")


@dataclass(frozen=True)
class Spec:
    """`model`: a pipeline stage, a train job id, or a .onnx/.pt path; `gate`: bounds such as
    {min_accuracy = 0.9, max_rmse = 300}; `repeat = N` trains-and-tests N seeds."""

    model: str
    dataset: str
    version: int | None = None
    gate: dict[str, float] = field(default_factory=dict)
    repeat: int = 0
    slices: list[str] | None = None
    bins: int = 4
    predictions: str | None = None


def prepare(spec: Spec, base_dir: Path, where: str) -> Spec:
    for key in spec.gate:
        if not key.startswith(GATE_PREFIXES) or len(key) <= 4:
            raise SpecError(
                f"{where}: key 'gate.{key}': gates are min_<metric> or max_<metric> (e.g. min_accuracy, max_rmse)"
            )
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


class Predictor:
    """Outputs of a bundle (torch) or an exported ONNX model for a table, and its preprocessing."""

    def __init__(
        self,
        fmt: str,
        pre: Preprocessor,
        model: Any = None,
        session: Any = None,
        raw_input: bool = False,
    ):
        self.fmt = fmt
        self.pre = pre
        self.model = model
        self.session = session
        self.raw_input = raw_input

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
        return cls(
            fmt, pre, session=session, raw_input=props.get("workbench.numeric_preprocessing") == "1"
        )

    def outputs(self, table: pyarrow.Table) -> np.ndarray:
        import numpy as np

        if self.fmt == "bundle":
            import torch

            x = torch.from_numpy(self.pre.transform(table))
            with torch.no_grad():
                return np.asarray(self.model(x).float().numpy())
        inputs = self.pre.raw_numeric(table) if self.raw_input else self.pre.transform(table)
        name = self.session.get_inputs()[0].name
        return np.asarray(self.session.run(None, {name: inputs})[0], dtype=np.float32)


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
    """(report, per-row arrays) for one model on one labelled table."""
    import numpy as np

    from jobs.bundle import DataError
    from jobs.metrics import classification_report, regression_report, softmax

    pre = predictor.pre
    try:
        pre.check_columns(table, with_target=True)
        y = pre.encode_target(table)
        outputs = predictor.outputs(table)
    except DataError as error:
        raise JobFailed(str(error)) from None
    if pre.task == "classification":
        proba = softmax(outputs)
        report = classification_report(y, proba, pre.classes)
        predicted = proba.argmax(axis=1)
        rows = {
            "label": np.asarray(pre.classes, dtype=object)[y],
            "prediction": np.asarray(pre.classes, dtype=object)[predicted],
            "confidence": proba.max(axis=1),
            "correct": predicted == y,
        }
    else:
        values = outputs[:, 0]
        report = regression_report(y, values)
        rows = {"label": y, "prediction": values, "error": values - y}
    return report, rows


def _predictions_table(
    table: pyarrow.Table, pre: Preprocessor, rows: dict[str, Any]
) -> pyarrow.Table:
    import numpy as np
    import pyarrow as pa

    columns: dict[str, Any] = {"row_id": pa.array(np.arange(table.num_rows, dtype=np.int64))}
    for name in pre.features:
        columns[name] = table.column(name)
    columns["label"] = pa.array(
        list(rows["label"]) if pre.task == "classification" else rows["label"]
    )
    columns["prediction"] = pa.array(
        list(rows["prediction"]) if pre.task == "classification" else rows["prediction"]
    )
    if pre.task == "classification":
        columns["confidence"] = pa.array(rows["confidence"].astype(np.float64))
        columns["correct"] = pa.array(rows["correct"])
    else:
        columns["error"] = pa.array(rows["error"].astype(np.float64))
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
    data_table, _ = lake.read_arrow(ctx.home, run.dataset, run.dataset_version, ctx.store)
    device = train._select_device(ctx)
    values: dict[str, list[float]] = {}
    for index in range(times):
        seed = base.seed + index
        spec = from_table(train.Spec, {**params, "seed": seed}, "repeat")
        data = train.prepare_data(data_table, spec, f"dataset {run.dataset} v{run.dataset_version}")
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
    from jobs.bundle import DataError, resolve_model
    from jobs.metrics import check_gate, headline, slice_table
    from workbench.catalog import lake, registry

    spec = ctx.spec(Spec)
    try:
        fmt, path, run_id = resolve_model(ctx, spec.model)
        table, info = lake.read_arrow(ctx.home, spec.dataset, spec.version, ctx.store)
    except (DataError, lake.LakeError) as error:
        raise JobFailed(str(error)) from None
    ctx.log(f"testing {fmt} {path} on dataset {info.dataset} v{info.version} ({info.rows} rows)")
    predictor = Predictor.load(fmt, path)
    started = time.perf_counter()
    report, rows = evaluate_table(predictor, table)
    pre = predictor.pre
    ctx.progress(0.2, "evaluated")
    metrics = headline(report)
    groups = _slices(table, pre, spec.slices, spec.bins)
    correct = rows.get("correct")
    slices = slice_table(groups, correct, rows.get("error"))
    default_name = (
        f"run{run_id}_predictions" if run_id is not None else f"test{ctx.job.id}_predictions"
    )
    name = spec.predictions or default_name
    predictions = lake.publish_arrow(
        ctx.home,
        ctx.store,
        name,
        _predictions_table(table, pre, rows),
        [{"path": str(path), "job": ctx.job.id}],
        ctx.job.id,
    )
    ctx.log(
        f"per-row predictions: dataset {predictions.dataset} v{predictions.version} ({predictions.rows} rows)"
    )
    if spec.repeat and run_id is None:
        raise JobFailed(
            "repeat needs a training run as the model (a stage or a job id), not a file"
        )
    repeat = (
        _repeat(ctx, run_id, spec.repeat, table) if spec.repeat and run_id is not None else None
    )
    problems = check_gate(spec.gate, metrics)
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
        "report": report,
        "slices": slices,
        "predictions": {"dataset": predictions.dataset, "version": predictions.version},
        "repeat": repeat,
        "gate": spec.gate,
        "gate_passed": not problems,
        "gate_problems": problems,
        "seconds": time.perf_counter() - started,
        "errors": int((~correct).sum()) if correct is not None else None,
    }
    ctx.artifact("report.json").write_text(json.dumps(result, indent=2, default=float))
    ctx.artifact("report.md").write_text(report_markdown(result))
    registry.record_evaluation(ctx.store, ctx.job.id, run_id, info, fmt, str(path), result)
    ctx.metrics(0, {k: v for k, v in metrics.items()})
    ctx.log("metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    for line in slices[:3]:
        ctx.log(f"worst slice: {line}")
    if problems:
        raise JobFailed("; ".join(problems))
