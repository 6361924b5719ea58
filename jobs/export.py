"""The `export` kind: a trained run's bundle to ONNX with the whole preprocessing inside the
graph (raw numeric matrix, or one raw input per column with the categorical encoding built from
ONNX operators) and a symbolic batch axis, checked with onnx.checker, held to parity with
PyTorch on raw held-out rows, timed against PyTorch, optionally quantized to int8 (its own
catalog row), and described by a model card."""

from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jobs.context import JobContext, JobFailed, workbench_source
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


def dataset_refs(spec: dict[str, Any]) -> list[Any]:
    """The parity dataset an export spec names, if any, for `catalogcheck` at submit."""
    from workbench.queue.catalogcheck import DatasetRef

    if not spec.get("dataset"):
        return []
    return [DatasetRef("dataset", str(spec["dataset"]), spec.get("version"))]


def serving_module(model: torch.nn.Module, pre: Preprocessor) -> torch.nn.Module:
    """The module to export: it takes the encoded feature matrix (float32, what `test` feeds
    the model) and `prepend_encoding` later gives the graph one named raw input per column. For
    regression the output is restored to the target's units in float64 (prediction * std +
    mean), as `Preprocessor.restore_target` does, so targets near 1e8 keep their precision."""
    import torch
    from torch import nn

    class Serving(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model
            self.restore = pre.task == "regression"
            self.register_buffer("y_mean", torch.tensor(pre.target_mean, dtype=torch.float64))
            self.register_buffer("y_std", torch.tensor(pre.target_std, dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.inner(x)
            if self.restore:
                return out.double() * self.get_buffer("y_std") + self.get_buffer("y_mean")
            return out

    return Serving().eval()


def prepend_encoding(model_path: Path, pre: Preprocessor) -> None:
    """Rewrite the ONNX file at `model_path` (input "features": the encoded matrix) so that it
    takes one input per raw feature column, shape (batch, 1): float64 for numeric columns
    (dates and timestamps in `bundle.INPUT_UNITS`), string for the others. The encoding runs in
    the graph with standard ONNX operators, in the precision `Preprocessor.transform` uses:
    numbers Where(IsNaN(x), mean, x), minus mean, over std, all in float64, then cast to float32
    (IEEE operations, so the result equals NumPy's bit for bit; a float32 mean would turn
    1500003353 into 1500003328); categories a one-hot from Equal(x, categories) (string tensors,
    opset 19+) cast to float, so an unknown or empty string encodes as all zeros, as in
    training. Raises JobFailed when the model's opset is below 19 or there are no features."""
    import onnx
    from onnx import TensorProto, compose, helper

    graph_model = onnx.load(str(model_path))
    opset = max(o.version for o in graph_model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 19:
        raise JobFailed(f"string inputs need ONNX opset 19 or later; the exporter wrote {opset}")
    taken = {"output", "features"}
    clash = [c.name for c in pre.columns if c.name in taken or c.name.startswith("wb_pre_")]
    if clash:
        raise JobFailed(
            f"feature column {clash[0]!r} cannot be an ONNX input name (the graph uses it);"
            " rename the column"
        )
    if not pre.columns:
        raise JobFailed("the model has no feature columns to take as inputs")
    nodes, initializers, inputs, blocks = [], [], [], []
    for number, column in enumerate(pre.columns):
        tag = f"wb_pre_{number}"
        if column.kind == "numeric":
            inputs.append(
                helper.make_tensor_value_info(column.name, TensorProto.DOUBLE, ["batch", 1])
            )
            initializers += [
                helper.make_tensor(f"{tag}_mean", TensorProto.DOUBLE, [1], [column.mean]),
                helper.make_tensor(f"{tag}_std", TensorProto.DOUBLE, [1], [column.std]),
            ]
            nodes += [
                helper.make_node("IsNaN", [column.name], [f"{tag}_nan"]),
                helper.make_node(
                    "Where", [f"{tag}_nan", f"{tag}_mean", column.name], [f"{tag}_fill"]
                ),
                helper.make_node("Sub", [f"{tag}_fill", f"{tag}_mean"], [f"{tag}_centred"]),
                helper.make_node("Div", [f"{tag}_centred", f"{tag}_std"], [f"{tag}_scaled"]),
                helper.make_node("Cast", [f"{tag}_scaled"], [f"{tag}_block"], to=TensorProto.FLOAT),
            ]
        else:
            inputs.append(
                helper.make_tensor_value_info(column.name, TensorProto.STRING, ["batch", 1])
            )
            initializers.append(
                helper.make_tensor(
                    f"{tag}_categories",
                    TensorProto.STRING,
                    [1, len(column.categories)],
                    [c.encode() for c in column.categories],  # type: ignore[misc]
                )
            )
            nodes += [
                helper.make_node("Equal", [column.name, f"{tag}_categories"], [f"{tag}_equal"]),
                helper.make_node("Cast", [f"{tag}_equal"], [f"{tag}_block"], to=TensorProto.FLOAT),
            ]
        blocks.append(f"{tag}_block")
    nodes.append(helper.make_node("Concat", blocks, ["wb_pre_features"], axis=1))
    encoder = helper.make_model(
        helper.make_graph(
            nodes,
            "workbench_encoding",
            inputs,
            [
                helper.make_tensor_value_info(
                    "wb_pre_features", TensorProto.FLOAT, ["batch", pre.in_features]
                )
            ],
            initializers,
        ),
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=graph_model.ir_version,
    )
    merged = compose.merge_models(encoder, graph_model, io_map=[("wb_pre_features", "features")])
    versions: dict[str, int] = {}
    for entry in merged.opset_import:
        versions[entry.domain] = max(versions.get(entry.domain, 0), entry.version)
    del merged.opset_import[:]
    merged.opset_import.extend(helper.make_opsetid(d, v) for d, v in versions.items())
    onnx.save(merged, str(model_path))


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

    def at(q: float) -> float:
        return samples[min(len(samples) - 1, round(q * (len(samples) - 1)))]

    return {
        "median_ms": statistics.median(samples),
        "p10_ms": at(0.10),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "runs": runs,
    }


def resize_feed(feed: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Each input repeated or cut to `rows` rows (the first axis), keeping its dtype."""
    import numpy as np

    out = {}
    for name, values in feed.items():
        index = np.resize(np.arange(len(values)), rows)
        out[name] = values[index]
    return out


def latency(
    module: torch.nn.Module,
    session: Any,
    x: np.ndarray,
    feed: dict[str, np.ndarray],
    runs: int,
    device: str = "cpu",
) -> dict[str, Any]:
    """Median, p10, p90 and p99 in ms of PyTorch (on `x`, what the module takes) and
    onnxruntime (on `feed`, what the graph takes) at batch 1 and 256, their ratio, and the
    thread settings they ran with (`threads`: torch's intra-op threads, and the session's
    `session.intra_op_num_threads` option; 0 means onnxruntime's default, one per core)."""
    import numpy as np
    import torch

    options = session.get_session_options() if hasattr(session, "get_session_options") else None
    out: dict[str, Any] = {
        "threads": {
            "torch": torch.get_num_threads(),
            "onnxruntime": options.intra_op_num_threads if options is not None else None,
        }
    }
    for batch in (1, 256):
        rows = x[np.resize(np.arange(len(x)), batch)]
        tensor = torch.from_numpy(rows).to(device)
        batch_feed = resize_feed(feed, batch)
        with torch.no_grad():
            torch_time = _timings(lambda t=tensor: module(t), runs)
        ort_time = _timings(lambda f=batch_feed: session.run(None, f), runs)
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


PARITY_BATCHES = (1, 7, 256)
"""Batch sizes at which the exported graph's values are compared with PyTorch's."""


def _standardised(values: np.ndarray, pre: Preprocessor) -> np.ndarray:
    """Regression outputs in training units (rtol on 1e8 would excuse 1e5); others unchanged."""
    if pre.task != "regression":
        return values
    return (values - pre.target_mean) / pre.target_std


def batch_parity(
    module: torch.nn.Module,
    session: Any,
    x: np.ndarray,
    feed: dict[str, np.ndarray],
    pre: Preprocessor,
    atol: float,
    rtol: float,
) -> dict[str, dict[str, Any]]:
    """PyTorch (eager, on the encoded rows `x`) against onnxruntime (on the raw `feed`) at each
    of PARITY_BATCHES: the rows cut into consecutive batches of that size (up to 64 rows at
    batch 1 and 7, every row at 256), each batch run on its own, so a model whose values depend
    on the batch size (a branch on `x.shape[0]`) is caught. {batch: `parity(...)`}."""
    import numpy as np
    import torch

    out: dict[str, dict[str, Any]] = {}
    for batch in PARITY_BATCHES:
        rows = len(x) if batch >= 256 else min(len(x), batch * max(1, 64 // batch))
        expected, got = [], []
        for start in range(0, rows, batch):
            stop = min(rows, start + batch)
            with torch.no_grad():
                expected.append(module(torch.from_numpy(x[start:stop])).numpy())
            chunk = {name: values[start:stop] for name, values in feed.items()}
            got.append(np.asarray(session.run(None, chunk)[0]))
        out[str(batch)] = parity(
            _standardised(np.concatenate(expected), pre),
            _standardised(np.concatenate(got), pre),
            atol,
            rtol,
        )
    return out


def _session(path: Path, threads: int) -> Any:
    """A CPU onnxruntime session with `threads` intra-op threads (the job's CPU share)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _full_parity(
    module: torch.nn.Module,
    model: torch.nn.Module,
    session: Any,
    table: Any,
    x: np.ndarray,
    feed: dict[str, np.ndarray],
    pre: Preprocessor,
    spec: Spec,
) -> dict[str, Any]:
    """`batch_parity` at each of PARITY_BATCHES, and the ONNX model's predictions (through the
    test job's own `Predictor` on the raw table) against the bundle's, as `test` computes them
    (probabilities, or predictions in the target's units compared in standardised units). The
    summary (rows, max_abs_diff, violations) covers all of them."""
    from jobs.evaluate import Predictor

    batches = batch_parity(module, session, x, feed, pre, spec.atol, spec.rtol)
    expected = Predictor("bundle", pre, model=model).predict(table)
    got = Predictor("onnx", pre, session=session, inputs="columns").predict(table)
    test = parity(_standardised(expected, pre), _standardised(got, pre), spec.atol, spec.rtol)
    every = [*batches.values(), test]
    return {
        "rows": test["rows"],
        "max_abs_diff": max(p["max_abs_diff"] for p in every),
        "violations": sum(p["violations"] for p in every),
        "atol": spec.atol,
        "rtol": spec.rtol,
        "units": "standardised target"
        if pre.task == "regression"
        else "logits; test: probabilities",
        "batches": batches,
        "test": test,
    }


def _held_out(
    ctx: JobContext, spec: Spec, pre: Preprocessor, meta: dict[str, Any]
) -> tuple[Any, str]:
    """Rows for parity and quantization accuracy: the run's validation rows (its validation
    dataset, or the split training drew), or `dataset`."""
    from jobs import train
    from workbench.catalog import lake
    from workbench.queue.spec import from_table

    params = dict(meta.get("params", {}))
    trained_on = meta.get("validation_dataset") or meta.get("dataset", {})
    name = spec.dataset or trained_on.get("name")
    version = spec.version if spec.dataset else trained_on.get("version")
    if not name:
        raise JobFailed("no dataset for parity rows: give key 'dataset'")
    try:
        table, info = lake.read_arrow(ctx.home, name, version, ctx.store, ctx.shared)
    except lake.LakeError as error:
        raise JobFailed(str(error)) from None
    where = f"dataset {info.dataset} v{info.version}"
    if not spec.dataset and not meta.get("validation_dataset") and params:
        known = {k: v for k, v in params.items() if k in train.Spec.__dataclass_fields__}
        run_spec = from_table(train.Spec, known, "the run's params")
        rows, _ = train.with_target(table, pre.target)
        _, val = train.split_table(rows, run_spec, pre.task)
        if val.num_rows:
            table = val
            where += " (validation split)"
    return table.slice(0, 2048), where


def _quality(outputs: np.ndarray, labels: np.ndarray | None, pre: Preprocessor) -> float | None:
    """Accuracy (classification, with the decision threshold) or RMSE (regression, in the
    target's units) of graph outputs on the labelled rows."""
    import numpy as np

    from jobs.metrics import predict_labels, softmax

    if labels is None:
        return None
    if pre.task == "classification":
        known = labels >= 0
        predicted = predict_labels(softmax(outputs[known]), pre.threshold)
        return float((predicted == labels[known]).mean()) if known.any() else None
    known = ~np.isnan(labels)
    error = outputs[known, 0].astype(np.float64) - labels[known]
    return float(np.sqrt((error**2).mean())) if known.any() else None


HASH_LABEL = "blake2b-256"
"""The dataset content hash's algorithm (workbench.catalog.lake hashes with BLAKE2b, 32 bytes)."""


def training_provenance(store: Any, job_id: int | None) -> dict[str, Any] | None:
    """How the training job was run, for the card: the code state of its working directory
    (git commit, branch, dirty, the size of its uncommitted diff), its snapshot, and its
    environment (Python, torch, CUDA build, distributions, host; driver and GPUs at its start),
    as recorded at its submit and start (`workbench.db.repro`). None where nothing was."""
    if job_id is None:
        return None
    from workbench.db.repro import repro_of

    try:
        record = repro_of(store, job_id)
    except Exception:  # a store without the table (an older home): the card goes without
        return None
    if record is None:
        return None
    code = dict(record.get("code") or {})
    code.pop("diff", None)  # its size is kept; the text stays in the store (`workbench show`)
    return {
        "job_id": job_id,
        "code": code,
        "snapshot": record.get("snapshot"),
        "environment": record.get("environment"),
        "started": record.get("started"),
    }


def provenance_markdown(training: dict[str, Any] | None) -> list[str]:
    """The card's Markdown lines for `training_provenance`."""
    if not training:
        return []
    from workbench.present import code_text, repro_lines

    lines = []
    if training.get("code"):
        lines.append(f"- training code (job {training['job_id']}): {code_text(training['code'])}")
    for label, text in repro_lines({**training, "code": None}):
        lines.append(f"- training {label}: {text}")
    return lines


def card_markdown(card: dict[str, Any]) -> str:
    """The model card as Markdown."""
    lines = [f"# Model card: {card['name']}", ""]
    lines += [f"- file: `{card['file']}` (sha256 `{card['sha256']}`, {card['bytes']} bytes)"]
    lines += [
        f"- exporter: {card['exporter']}, opset {card['opset']}, batch axis `{card['batch_axis']}`"
    ]
    lines += ["- inputs, one per column, shape (batch, 1):"]
    for item in card["inputs"] if isinstance(card.get("inputs"), list) else []:
        trained = f", trained on {item['source_type']}" if item.get("source_type") else ""
        lines += [
            f"  - `{item['name']}`: {item['type']}{trained}; {item['unit']}; missing: {item['missing']}"
        ]
    lines += [f"- output: {card['output']}"]
    made_by = card.get("workbench") or {}
    lines += [
        f"- exported by workbench {made_by.get('version')}"
        + (
            f", commit {made_by['git_commit']}"
            if made_by.get("git_commit")
            else " (not a git checkout)"
        )
    ]
    data = card["dataset"]
    lines += [
        f"- trained on: dataset {data.get('name')} v{data.get('version')}"
        f" ({data.get('hash_algorithm', HASH_LABEL)} {str(data.get('content_hash'))[:16]}...)"
    ]
    lines += [
        f"- run: job {card['run']['job_id']} ({card['run'].get('model')}), params: {json.dumps(card['run'].get('params', {}))}"
    ]
    lines += provenance_markdown(card.get("training"))
    if card.get("threshold") is not None:
        lines += [f"- decision threshold on p({card['classes'][1]}): {card['threshold']:.4f}"]
    test = card.get("test")
    if test:
        tested = test.get("dataset") or {}
        lines += [
            f"- tested by job {test['job_id']} on dataset {tested.get('name')} v{tested.get('version')}"
            f" ({tested.get('hash_algorithm', HASH_LABEL)} {str(tested.get('content_hash'))[:16]}...): "
            + ", ".join(
                f"{k} {v:.4f}" for k, v in test["metrics"].items() if isinstance(v, int | float)
            )
        ]
    p = card["parity"]
    lines += [
        f"- parity with PyTorch on {p['rows']} rows"
        + (f" at batch {', '.join(p['batches'])} and against `test`" if p.get("batches") else "")
        + f": max abs diff {p['max_abs_diff']:.2e} (atol {p['atol']}, rtol {p['rtol']})"
    ]
    threads = card["latency"]["cpu"].get("threads") or {}
    lines += [
        "",
        f"Latency (ms; threads: torch {threads.get('torch')}, onnxruntime"
        f" {threads.get('onnxruntime')}; p10-p90 and runs in the card's JSON)",
        "",
        "| batch | PyTorch median ms | onnxruntime median ms | p99 ms (torch / ort) | ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for batch, row in _batches(card["latency"]["cpu"]):
        lines.append(
            f"| {batch.split('_')[1]} | {row['torch']['median_ms']:.3f} | {row['onnxruntime']['median_ms']:.3f}"
            f" | {row['torch']['p99_ms']:.3f} / {row['onnxruntime']['p99_ms']:.3f} | {row['ort_over_torch_median']:.2f} |"
        )
    if card.get("quantized"):
        q = card["quantized"]
        lines += [
            "",
            f"int8 (dynamic): `{q['file']}`, {q['bytes']} bytes, sha256 `{q['sha256']}`, catalog model"
            f" {q.get('model_id')}; metric {q['metric']}: fp32 {q['fp32']} -> int8 {q['int8']};"
            f" batch 256 median {q['latency_ms']:.3f} ms",
        ]
    return "\n".join(lines) + "\n"


def _describe_inputs(pre: Preprocessor) -> str:
    return (
        "one named input per raw feature column, shape (batch, 1), the encoding inside the graph: "
        + "; ".join(
            f"{i['name']} ({i['type']}{', ' + i['source_type'] if i['source_type'] else ''}:"
            f" {i['unit']}; missing {i['missing']})"
            for i in pre.describe_inputs()
        )
    )


def _batches(timings: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The per-batch rows of `latency`'s result (without its `threads` entry)."""
    return [(k, v) for k, v in timings.items() if k.startswith("batch_")]


def session_on(
    path: Path, provider: str, options: dict[str, str] | None = None
) -> tuple[Any, str | None]:
    """An onnxruntime session of the model at `path` running on `provider` (e.g.
    "CUDAExecutionProvider", with its provider `options` such as `gpu_mem_limit` in bytes), or
    (None, why not). onnxruntime without that provider, or one that cannot load its libraries
    (a CUDA or cuDNN it was not built for), still makes a session, on the CPU, with only a
    warning: so the session's own providers decide."""
    import onnxruntime as ort

    chosen: list[Any] = [(provider, options)] if options else [provider]
    session = ort.InferenceSession(str(path), providers=chosen)
    used = list(session.get_providers())
    if used[:1] == [provider]:
        return session, None
    if provider not in ort.get_available_providers():
        return None, f"onnxruntime {ort.__version__} has no {provider}"
    return None, (
        f"onnxruntime could not start {provider} (the session runs on {', '.join(used)});"
        " its libraries are missing or do not match this machine's"
    )


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
    if meta.get("registered", {}).get("format") == "torchscript":
        raise JobFailed(
            f"model {spec.model!r}: a TorchScript model cannot be exported to ONNX here"
            " (torch.onnx's exporter traces Python modules); register a state dict with"
            " build='module:function', or an ONNX file, to export it"
        )
    torch.set_num_threads(max(1, ctx.cpus))
    module = serving_module(model, pre)
    table, where = _held_out(ctx, spec, pre, meta)
    try:
        x = pre.transform(table)
        feed_all = pre.raw_columns(table)
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
    inputs = "columns"
    prepend_encoding(path, pre)
    proto = onnx.load(str(path))
    output_kind = "prediction" if pre.task == "regression" else "logits"
    for key, value in {
        "workbench.preprocessor": json.dumps(pre.to_dict()),
        "workbench.inputs": inputs,
        "workbench.input_spec": json.dumps(pre.describe_inputs()),
        "workbench.output": output_kind,
        "workbench.numeric_preprocessing": "0",
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
        f"exported with {EXPORTER} in {time.perf_counter() - started:.1f}s; onnx.checker passed"
        f" (opset {opset}); inputs: one per column ("
        + ", ".join(f"{i['name']} {i['type']}" for i in pre.describe_inputs())
        + ")"
    )
    session = _session(path, ctx.cpus)
    batch_axes = {i.name: i.shape[0] for i in session.get_inputs()}
    fixed = {n: a for n, a in batch_axes.items() if not isinstance(a, str)}
    if fixed:
        name, axis = next(iter(fixed.items()))
        raise JobFailed(
            f"the exported batch axis of input {name!r} is fixed at {axis}, not symbolic"
        )
    batch_axis = next(iter(batch_axes.values()))
    feed = {i.name: feed_all[i.name] for i in session.get_inputs()}
    for batch in PARITY_BATCHES:
        shape = session.run(None, resize_feed(feed, batch))[0].shape
        if shape[0] != batch:
            raise JobFailed(f"the exported model returned {shape[0]} rows for a batch of {batch}")
    ctx.progress(0.4, "parity")
    check = _full_parity(module, model, session, table, x, feed, pre, spec)
    ctx.log(
        f"parity on {check['rows']} held-out rows of {where} (raw column inputs), at batch"
        f" {', '.join(check['batches'])} and against the test job's predictions:"
        f" max abs diff {check['max_abs_diff']:.2e}"
    )
    failed = {k: v for k, v in check["batches"].items() if v["violations"]}
    if check["test"]["violations"]:
        failed["test"] = check["test"]
    if failed:
        where_failed, worst = next(iter(failed.items()))
        raise JobFailed(
            f"onnxruntime and PyTorch differ beyond tolerance on {worst['violations']} values"
            + (
                " (against the predictions `test` computes"
                if where_failed == "test"
                else f" (at batch {where_failed}"
            )
            + f"; max abs diff {worst['max_abs_diff']:.3e}; atol {spec.atol}, rtol {spec.rtol})"
        )
    got = np.asarray(session.run(None, feed)[0])
    ctx.progress(0.55, "timing")
    timings: dict[str, Any] = {"cpu": latency(module, session, x, feed, spec.latency_runs)}
    gpu_provider: dict[str, str | None] | None = None
    if ctx.gpu_indices:
        gpu_session, why_not = (
            session_on(path, "CUDAExecutionProvider")
            if torch.cuda.is_available()
            else (None, "torch sees no CUDA device")
        )
        gpu_provider = {
            "provider": None if gpu_session is None else "CUDAExecutionProvider",
            "why_not": why_not,
        }
        if gpu_session is not None:
            timings["cuda"] = latency(
                module.to("cuda"), gpu_session, x, feed, spec.latency_runs, device="cuda"
            )
            module.to("cpu")
            ctx.log("onnxruntime on the granted GPU: CUDAExecutionProvider")
        else:
            ctx.log(f"no GPU latency: {why_not}")
    threads = timings["cpu"]["threads"]
    for label, row in _batches(timings["cpu"]):
        ctx.log(
            f"latency {label}: torch {row['torch']['median_ms']:.3f} ms, onnxruntime"
            f" {row['onnxruntime']['median_ms']:.3f} ms (ratio {row['ort_over_torch_median']:.2f};"
            f" p10-p90 torch {row['torch']['p10_ms']:.3f}-{row['torch']['p90_ms']:.3f}, onnxruntime"
            f" {row['onnxruntime']['p10_ms']:.3f}-{row['onnxruntime']['p90_ms']:.3f}; threads torch"
            f" {threads['torch']}, onnxruntime {threads['onnxruntime']})"
        )
    quantized: dict[str, Any] | None = None
    if spec.quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        ctx.progress(0.8, "quantizing")
        qpath = ctx.artifact("model.int8.onnx")
        quantize_dynamic(str(path), str(qpath), weight_type=QuantType.QInt8)
        qsession = _session(qpath, ctx.cpus)
        qout = np.asarray(qsession.run(None, feed)[0])
        metric = "accuracy" if pre.task == "classification" else "rmse"
        feed256 = resize_feed(feed, 256)
        quantized = {
            "file": str(qpath),
            "bytes": qpath.stat().st_size,
            "sha256": file_sha256(qpath),
            "metric": metric,
            "fp32": _quality(got, labels, pre),
            "int8": _quality(qout, labels, pre),
            "max_abs_diff_vs_fp32": float(np.abs(qout - got).max()),
            "parity": parity(
                _standardised(got, pre), _standardised(qout, pre), spec.atol, spec.rtol
            ),
            "latency": _timings(lambda: qsession.run(None, feed256), spec.latency_runs),
        }
        quantized["latency_ms"] = quantized["latency"]["median_ms"]
        ctx.log(
            f"int8: {metric} {quantized['fp32']} -> {quantized['int8']}, {quantized['bytes']} bytes"
        )
    from workbench.catalog import tracking

    run = tracking.get_run(ctx.store, run_id) if run_id is not None else None
    tests = registry.evaluations(ctx.store, run_id) if run_id is not None else []
    test_data = dict(tests[0].get("dataset") or {}) if tests else {}
    if test_data:
        test_data["hash_algorithm"] = HASH_LABEL
    card = {
        "name": f"{meta.get('dataset', {}).get('name', 'model')}-{(run.model if run else 'model').rsplit('/', 1)[-1]}-job{run_id}",
        "file": str(path),
        "sha256": file_sha256(path),
        "bytes": path.stat().st_size,
        "format": "onnx",
        "exporter": EXPORTER,
        "opset": opset,
        "batch_axis": batch_axis,
        "inputs": pre.describe_inputs(),
        "input": _describe_inputs(pre),
        "output": "class logits (softmax for probabilities)"
        if pre.task == "classification"
        else "the prediction in the target's units, float64",
        "task": pre.task,
        "classes": pre.classes,
        "threshold": pre.threshold,
        "dataset": {**meta.get("dataset", {}), "hash_algorithm": HASH_LABEL},
        "datasets": meta.get("datasets") or [meta.get("dataset", {})],
        "run": {
            "job_id": run_id,
            "model": run.model if run else None,
            "params": run.params if run else meta.get("params"),
            "metrics": run.metrics if run else meta.get("metrics"),
        },
        "test": {
            "job_id": tests[0]["job_id"],
            "dataset": test_data,
            "metrics": tests[0]["metrics"],
            "gate_passed": tests[0]["gate_passed"],
        }
        if tests
        else None,
        "parity": check,
        "latency": timings,
        "gpu_provider": gpu_provider,
        "quantized": quantized,
        "environment": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        },
        "export_job_id": ctx.job.id,
        "training": training_provenance(ctx.store, run_id),
        "workbench": workbench_source(),
    }
    model_id = registry.record_model(
        ctx.store, ctx.job.id, run_id, str(path), "onnx", card["sha256"], card
    )
    if quantized is not None:
        int8_card = {
            **card,
            "name": f"{card['name']}-int8",
            "file": quantized["file"],
            "sha256": quantized["sha256"],
            "bytes": quantized["bytes"],
            "format": "onnx-int8",
            "quantized_from": model_id,
            "quantized": None,
            "quality": {
                k: quantized[k] for k in ("metric", "fp32", "int8", "max_abs_diff_vs_fp32")
            },
            "test": None,
            "held_out": {
                "rows": check["rows"],
                "metrics": {quantized["metric"]: quantized["int8"]},
            },
            "parity": {**quantized["parity"], "against": "the fp32 ONNX model", "gated": False},
            "latency": {
                "cpu": {
                    "threads": timings["cpu"]["threads"],
                    "batch_256": {
                        "onnxruntime": quantized["latency"],
                        "ort_over_torch_median": quantized["latency"]["median_ms"]
                        / timings["cpu"]["batch_256"]["torch"]["median_ms"],
                    },
                }
            },
        }
        quantized["model_id"] = registry.record_model(
            ctx.store,
            ctx.job.id,
            run_id,
            quantized["file"],
            "onnx-int8",
            quantized["sha256"],
            int8_card,
        )
    ctx.write_json("model_card.json", card)
    ctx.write_text("model_card.md", card_markdown(card))
    ctx.log(
        f"model {model_id}: {path} (sha256 {card['sha256'][:16]}...), card in {ctx.run_dir / 'model_card.md'}"
    )
