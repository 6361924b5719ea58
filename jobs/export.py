"""The `export` kind: a trained run's bundle to ONNX (numeric preprocessing inside the graph, a
symbolic batch axis), checked with onnx.checker, held to parity with PyTorch on held-out rows,
timed against PyTorch, optionally quantized to int8, and described by a model card."""

from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jobs.context import JobContext, JobFailed
from workbench.queue.spec import SpecError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from jobs.bundle import Preprocessor

EXPORTER = "torch.onnx.export(dynamo=True)"


@dataclass(frozen=True)
class Spec:
    """`model`: a pipeline stage, a train job id, or a model.pt; parity rows come from `dataset`
    (default: the validation split of the run's own dataset)."""

    model: str
    format: Literal["onnx"] = "onnx"
    quantize: bool = False
    dataset: str | None = None
    version: int | None = None
    atol: float = 1e-4
    rtol: float = 1e-3
    latency_runs: int = 50


def prepare(spec: Spec, base_dir: Path, where: str) -> Spec:
    if spec.atol < 0 or spec.rtol < 0:
        raise SpecError(f"{where}: keys 'atol'/'rtol': tolerances must not be negative")
    if spec.latency_runs < 5:
        raise SpecError(f"{where}: key 'latency_runs': at least 5")
    if spec.model.endswith(".pt"):
        resolved = (base_dir / spec.model).resolve()
        if not resolved.is_file():
            raise SpecError(f"{where}: key 'model': no such file {resolved}")
        return replace(spec, model=str(resolved))
    if spec.model.endswith(".onnx"):
        raise SpecError(
            f"{where}: key 'model': export takes a trained run (a stage, a job id or a model.pt), not an ONNX file"
        )
    return spec


def with_preprocessing(model: torch.nn.Module, pre: Preprocessor) -> tuple[torch.nn.Module, bool]:
    """The model with numeric standardisation (and missing-value fills) in front, when every
    feature is numeric; otherwise the model itself, fed encoded features. Returns (module, raw)."""
    import torch
    from torch import nn

    if not pre.numeric_only or not pre.columns:
        return model, False

    class Standardised(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer(
                "mean", torch.tensor([c.mean for c in pre.columns], dtype=torch.float32)
            )
            self.register_buffer(
                "std", torch.tensor([c.std for c in pre.columns], dtype=torch.float32)
            )
            self.inner = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mean = self.get_buffer("mean")
            std = self.get_buffer("std")
            x = torch.where(torch.isnan(x), mean, x)
            return self.inner((x - mean) / std)  # type: ignore[no-any-return]

    return Standardised().eval(), True


def unsupported_operator(error: BaseException) -> str | None:
    """The operator named in an exporter error, if any."""
    text = "".join(str(e) for e in (error, error.__cause__) if e is not None)
    match = re.search(r"(aten[.:]{1,2}[A-Za-z_][\w.]*)", text)
    return match.group(1) if match else None


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """Dynamo exporter, batch axis dynamic, weights inside the one file, quiet."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["features"],
            output_names=["output"],
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,
            verbose=False,
        )


def _timings(call: Any, runs: int) -> dict[str, float]:
    call()  # warm-up
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {
        "median_ms": statistics.median(samples),
        "p99_ms": samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))],
    }


def latency(
    module: torch.nn.Module, session: Any, x: np.ndarray, runs: int, device: str = "cpu"
) -> dict[str, Any]:
    """Median and p99 of PyTorch and onnxruntime at batch 1 and 256, and their ratio."""
    import numpy as np
    import torch

    out: dict[str, Any] = {}
    name = session.get_inputs()[0].name
    for batch in (1, 256):
        rows = np.resize(x, (batch, x.shape[1])).astype(np.float32)
        tensor = torch.from_numpy(rows).to(device)
        with torch.no_grad():
            torch_time = _timings(lambda t=tensor: module(t), runs)
        ort_time = _timings(lambda r=rows: session.run(None, {name: r}), runs)
        out[f"batch_{batch}"] = {
            "torch": torch_time,
            "onnxruntime": ort_time,
            "ort_over_torch_median": ort_time["median_ms"] / torch_time["median_ms"],
        }
    return out


def parity(expected: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> dict[str, Any]:
    import numpy as np

    diff = np.abs(expected - got)
    allowed = atol + rtol * np.abs(expected)
    return {
        "rows": int(expected.shape[0]),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "violations": int((diff > allowed).sum()),
        "atol": atol,
        "rtol": rtol,
    }


def _held_out(
    ctx: JobContext, spec: Spec, pre: Preprocessor, meta: dict[str, Any]
) -> tuple[Any, str]:
    """Rows for parity and quantization accuracy: the run's validation split, or `dataset`."""
    from jobs.train import split_indices
    from workbench.catalog import lake

    trained_on = meta.get("dataset", {})
    name = spec.dataset or trained_on.get("name")
    version = spec.version if spec.dataset else trained_on.get("version")
    if not name:
        raise JobFailed("no dataset for parity rows: give key 'dataset'")
    try:
        table, info = lake.read_arrow(ctx.home, name, version, ctx.store)
    except lake.LakeError as error:
        raise JobFailed(str(error)) from None
    where = f"dataset {info.dataset} v{info.version}"
    if not spec.dataset:
        params = meta.get("params", {})
        import pyarrow.compute as pc

        table = table.filter(pc.is_valid(table.column(pre.target)))
        _, val_idx = split_indices(
            table.num_rows, params.get("val_fraction", 0.2), params.get("seed", 0)
        )
        if len(val_idx):
            table = table.take(val_idx)
            where += " (validation split)"
    return table.slice(0, 2048), where


def _accuracy(outputs: np.ndarray, labels: np.ndarray | None, task: str) -> float | None:
    import numpy as np

    if labels is None:
        return None
    if task == "classification":
        return float((outputs.argmax(axis=1) == labels).mean())
    return float(np.sqrt(((outputs[:, 0] - labels) ** 2).mean()))


def card_markdown(card: dict[str, Any]) -> str:
    lines = [f"# Model card: {card['name']}", ""]
    lines += [f"- file: `{card['file']}` (sha256 `{card['sha256']}`, {card['bytes']} bytes)"]
    lines += [
        f"- exporter: {card['exporter']}, opset {card['opset']}, batch axis `{card['batch_axis']}`"
    ]
    lines += [f"- input: {card['input']}"]
    data = card["dataset"]
    lines += [
        f"- trained on: dataset {data.get('name')} v{data.get('version')} (sha256 {str(data.get('content_hash'))[:16]}...)"
    ]
    lines += [
        f"- run: job {card['run']['job_id']} ({card['run'].get('model')}), params: {json.dumps(card['run'].get('params', {}))}"
    ]
    if card.get("test"):
        lines += [
            "- test metrics: "
            + ", ".join(f"{k} {v:.4f}" for k, v in card["test"]["metrics"].items())
        ]
    p = card["parity"]
    lines += [
        f"- parity with PyTorch on {p['rows']} rows: max abs diff {p['max_abs_diff']:.2e} (atol {p['atol']}, rtol {p['rtol']})"
    ]
    lines += [
        "",
        "| batch | PyTorch median ms | onnxruntime median ms | p99 ms (torch / ort) | ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for batch, row in card["latency"]["cpu"].items():
        lines.append(
            f"| {batch.split('_')[1]} | {row['torch']['median_ms']:.3f} | {row['onnxruntime']['median_ms']:.3f}"
            f" | {row['torch']['p99_ms']:.3f} / {row['onnxruntime']['p99_ms']:.3f} | {row['ort_over_torch_median']:.2f} |"
        )
    if card.get("quantized"):
        q = card["quantized"]
        lines += [
            "",
            f"int8 (dynamic): `{q['file']}`, {q['bytes']} bytes; metric {q['metric']}: fp32 {q['fp32']} -> int8 {q['int8']}; batch 256 median {q['latency_ms']:.3f} ms",
        ]
    return "\n".join(lines) + "\n"


def run(ctx: JobContext) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from jobs.bundle import DataError, file_sha256, load_bundle, resolve_model
    from workbench.catalog import registry

    spec = ctx.spec(Spec)
    try:
        fmt, bundle_path, run_id = resolve_model(ctx, spec.model)
    except DataError as error:
        raise JobFailed(str(error)) from None
    if fmt != "bundle":
        raise JobFailed(f"model {spec.model!r}: export takes a trained run, not an ONNX file")
    model, pre, meta = load_bundle(bundle_path)
    torch.set_num_threads(max(1, ctx.cpus))
    module, raw = with_preprocessing(model, pre)
    table, where = _held_out(ctx, spec, pre, meta)
    try:
        x = pre.raw_numeric(table) if raw else pre.transform(table)
        labels = pre.encode_target(table) if pre.target in table.column_names else None
    except DataError as error:
        raise JobFailed(str(error)) from None
    ctx.progress(0.1, "exporting")
    path = ctx.artifact("model.onnx")
    started = time.perf_counter()
    try:
        export_onnx(module, torch.from_numpy(x[: max(2, min(len(x), 8))]), path)
    except Exception as error:
        operator = unsupported_operator(error)
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
        first = (plain.splitlines() or [type(error).__name__])[0]
        if operator:
            raise JobFailed(
                f"the ONNX exporter cannot handle operator {operator}: {first}"
            ) from None
        raise JobFailed(f"ONNX export failed: {first}") from None
    proto = onnx.load(str(path))
    for key, value in {
        "workbench.preprocessor": json.dumps(pre.to_dict()),
        "workbench.numeric_preprocessing": "1" if raw else "0",
        "workbench.meta": json.dumps(
            {"run_job_id": run_id, "task": pre.task, "classes": pre.classes}
        ),
    }.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    ctx.log(
        f"exported with {EXPORTER} in {time.perf_counter() - started:.1f}s; onnx.checker passed (opset {opset})"
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch_axis = session.get_inputs()[0].shape[0]
    if not isinstance(batch_axis, str):
        raise JobFailed(f"the exported batch axis is fixed at {batch_axis}, not symbolic")
    name = session.get_inputs()[0].name
    for batch in (1, 7, 256):
        rows = np.resize(x, (batch, x.shape[1])).astype(np.float32)
        shape = session.run(None, {name: rows})[0].shape
        if shape[0] != batch:
            raise JobFailed(f"the exported model returned {shape[0]} rows for a batch of {batch}")
    ctx.progress(0.4, "parity")
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).float().numpy()
    got = session.run(None, {name: x})[0]
    check = parity(expected, got, spec.atol, spec.rtol)
    ctx.log(
        f"parity on {check['rows']} held-out rows of {where}: max abs diff {check['max_abs_diff']:.2e}"
    )
    if check["violations"]:
        raise JobFailed(
            f"onnxruntime and PyTorch differ beyond tolerance on {check['violations']} values"
            f" (max abs diff {check['max_abs_diff']:.3e}; atol {spec.atol}, rtol {spec.rtol})"
        )
    ctx.progress(0.55, "timing")
    timings: dict[str, Any] = {"cpu": latency(module, session, x, spec.latency_runs)}
    if (
        ctx.gpu_indices
        and torch.cuda.is_available()
        and "CUDAExecutionProvider" in ort.get_available_providers()
    ):
        gpu_session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
        timings["cuda"] = latency(
            module.to("cuda"), gpu_session, x, spec.latency_runs, device="cuda"
        )
        module.to("cpu")
    for batch, row in timings["cpu"].items():
        ctx.log(
            f"latency {batch}: torch {row['torch']['median_ms']:.3f} ms, onnxruntime"
            f" {row['onnxruntime']['median_ms']:.3f} ms (ratio {row['ort_over_torch_median']:.2f})"
        )
    quantized = None
    if spec.quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        ctx.progress(0.8, "quantizing")
        qpath = ctx.artifact("model.int8.onnx")
        quantize_dynamic(str(path), str(qpath), weight_type=QuantType.QInt8)
        qsession = ort.InferenceSession(str(qpath), providers=["CPUExecutionProvider"])
        qout = qsession.run(None, {qsession.get_inputs()[0].name: x})[0]
        metric = "accuracy" if pre.task == "classification" else "rmse"
        rows256 = np.resize(x, (256, x.shape[1])).astype(np.float32)
        quantized = {
            "file": str(qpath),
            "bytes": qpath.stat().st_size,
            "sha256": file_sha256(qpath),
            "metric": metric,
            "fp32": _accuracy(got, labels, pre.task),
            "int8": _accuracy(qout, labels, pre.task),
            "max_abs_diff_vs_fp32": float(np.abs(qout - got).max()),
            "latency_ms": _timings(
                lambda: qsession.run(None, {qsession.get_inputs()[0].name: rows256}),
                spec.latency_runs,
            )["median_ms"],
        }
        ctx.log(
            f"int8: {metric} {quantized['fp32']} -> {quantized['int8']}, {quantized['bytes']} bytes"
        )
    from workbench.catalog import tracking

    run = tracking.get_run(ctx.store, run_id) if run_id is not None else None
    tests = registry.evaluations(ctx.store, run_id) if run_id is not None else []
    card = {
        "name": f"{meta.get('dataset', {}).get('name', 'model')}-{(run.model if run else 'model').rsplit('/', 1)[-1]}-job{run_id}",
        "file": str(path),
        "sha256": file_sha256(path),
        "bytes": path.stat().st_size,
        "format": "onnx",
        "exporter": EXPORTER,
        "opset": opset,
        "batch_axis": batch_axis,
        "input": "raw numeric features (standardisation and missing-value fills inside the graph): "
        + ", ".join(pre.features)
        if raw
        else f"encoded features ({pre.in_features} values: one-hot categories, standardised numbers) of "
        + ", ".join(pre.features),
        "task": pre.task,
        "classes": pre.classes,
        "dataset": meta.get("dataset", {}),
        "run": {
            "job_id": run_id,
            "model": run.model if run else None,
            "params": run.params if run else meta.get("params"),
            "metrics": run.metrics if run else meta.get("metrics"),
        },
        "test": {
            "job_id": tests[0]["job_id"],
            "metrics": tests[0]["metrics"],
            "gate_passed": tests[0]["gate_passed"],
        }
        if tests
        else None,
        "parity": check,
        "latency": timings,
        "quantized": quantized,
        "environment": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        },
        "export_job_id": ctx.job.id,
    }
    ctx.artifact("model_card.json").write_text(json.dumps(card, indent=2, default=float))
    ctx.artifact("model_card.md").write_text(card_markdown(card))
    model_id = registry.record_model(
        ctx.store, ctx.job.id, run_id, str(path), "onnx", card["sha256"], card
    )
    ctx.log(
        f"model {model_id}: {path} (sha256 {card['sha256'][:16]}...), card in {ctx.run_dir / 'model_card.md'}"
    )
