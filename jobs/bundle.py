"""The trained-model bundle: architecture, weights and the preprocessing fitted on the training
split, so test and export apply exactly the transform training used.

A train job's run folder holds:
- `checkpoints/last.pt`: the resumable state (model, optimizer, scheduler, RNG, position), written
  atomically every epoch and on SIGTERM;
- `model.pt`: the bundle (`save_bundle` / `load_bundle`), written when training ends;
- `run.json`: params, dataset version and hash, environment, final metrics.

The preprocessing is plain NumPy/Arrow (no torch), vectorised, with errors that name the column."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import pyarrow
    import torch

Task = Literal["classification", "regression"]
MAX_CATEGORIES = 1000
BUNDLE_FORMAT = 1


class DataError(ValueError):
    """Data the model cannot use; the message names the column and what is wrong."""


@dataclass
class Column:
    """How one feature column becomes model inputs."""

    name: str
    kind: Literal["numeric", "categorical"]
    mean: float = 0.0
    std: float = 1.0
    categories: list[str] = field(default_factory=list)
    source: str = ""
    """The Arrow type the column had in training ("" in bundles written before it was kept)."""

    @property
    def width(self) -> int:
        return 1 if self.kind == "numeric" else len(self.categories)

    @property
    def family(self) -> str:
        """What kind of value the column takes: number, date, timestamp, string or boolean."""
        return type_family(self.source) if self.source else ""

    def describe(self) -> dict[str, Any]:
        """The column as an input of an exported model: name, ONNX element type, shape, the
        value's unit and what stands for a missing value (`INPUT_UNITS`)."""
        family = self.family or ("number" if self.kind == "numeric" else "string")
        if self.kind == "numeric":
            return {
                "name": self.name,
                "type": "float64",
                "shape": ["batch", 1],
                "source_type": self.source or None,
                "unit": INPUT_UNITS.get(family, INPUT_UNITS["number"]),
                "missing": "NaN",
            }
        return {
            "name": self.name,
            "type": "string",
            "shape": ["batch", 1],
            "source_type": self.source or None,
            "unit": INPUT_UNITS["string"]
            + (" (booleans as 'true'/'false')" if family == "boolean" else ""),
            "categories": len(self.categories),
            "missing": '""',
        }


INPUT_UNITS = {
    "number": "the value as it is",
    "date": "seconds since 1970-01-01 (a DATE d is d's days since 1970-01-01 times 86400)",
    "timestamp": "microseconds since 1970-01-01 00:00:00 UTC",
    "string": "the text; a value not seen in training encodes as no category",
}
"""The unit of each kind of exported input (`as_float` converts dates and timestamps so)."""


def type_family(arrow_type: Any) -> str:
    """An Arrow type (or its string form) -> number, date, timestamp, string, boolean, null or
    other: the kinds of value a feature column may hold, compared between training and use."""
    text = str(arrow_type)
    if text == "null":
        return "null"
    if text.startswith("date"):
        return "date"
    if text.startswith("timestamp"):
        return "timestamp"
    if text == "bool":
        return "boolean"
    if text in ("string", "large_string", "utf8", "large_utf8") or text.startswith("dictionary"):
        return "string"
    if text.startswith(("int", "uint", "float", "double", "halffloat", "decimal")):
        return "number"
    return "other"


def _is_numeric(arrow_type: Any) -> bool:
    import pyarrow.types as pt

    return bool(
        pt.is_integer(arrow_type) or pt.is_floating(arrow_type) or pt.is_decimal(arrow_type)
    )


def _is_categorical(arrow_type: Any) -> bool:
    import pyarrow.types as pt

    return bool(
        pt.is_string(arrow_type)
        or pt.is_large_string(arrow_type)
        or pt.is_boolean(arrow_type)
        or pt.is_dictionary(arrow_type)
    )


def as_float(column: Any, name: str) -> np.ndarray:
    """An Arrow column as float64, null -> NaN: dates as seconds since 1970-01-01, timestamps
    as microseconds since 1970-01-01 UTC whatever their stored unit (`INPUT_UNITS`). Raises
    DataError naming the column when its values are not numbers."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.types as pt

    try:
        if pt.is_date(column.type):
            column = pc.cast(pc.cast(column, pa.timestamp("s")), pa.int64())
        elif pt.is_timestamp(column.type):
            column = pc.cast(pc.cast(column, pa.timestamp("us")), pa.int64())
        elif pt.is_temporal(column.type):
            column = pc.cast(column, pa.int64())
        return np.asarray(
            pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise DataError(
            f"column {name!r} holds {column.type} values, not numbers: {str(error).splitlines()[0]}"
        ) from None


HIGH_CARDINALITY = 0.5
"""A categorical feature whose distinct values exceed this share of the training rows (and
20) is reported: its one-hot columns are mostly seen once."""
NUMERIC_LOOKING = 0.9
"""A text feature is reported as numeric-looking when this share of its values read as numbers
(thousands separators "," allowed, as in "1,234.5")."""
_NUMBER = r"^[+-]?((\d{1,3}(,\d{3})+|\d+)(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"


def encoding_warnings(table: pyarrow.Table, pre: Preprocessor) -> list[str]:
    """What the encoding fitted on `table` (the training rows) does that a user would want to
    know: categorical features with very many distinct values (HIGH_CARDINALITY) and text
    features whose values read as numbers (NUMERIC_LOOKING). One sentence each, naming the
    column."""
    import pyarrow.compute as pc

    out = []
    rows = max(1, table.num_rows)
    for spec in pre.columns:
        if spec.kind != "categorical":
            continue
        count = len(spec.categories)
        if count > 20 and count > HIGH_CARDINALITY * rows:
            out.append(
                f"feature {spec.name!r} has {count} distinct values in {rows} training rows: its"
                f" one-hot encoding adds {count} inputs, most seen once (an identifier? leave it"
                " out with `features = [...]`)"
            )
        strings = _as_strings(table.column(spec.name)).drop_null()
        if spec.family == "string" and len(strings):
            numeric = pc.match_substring_regex(pc.utf8_trim_whitespace(strings), _NUMBER)
            share = float(pc.mean(pc.cast(numeric, "int8")).as_py() or 0.0)
            if share >= NUMERIC_LOOKING:
                sample = next((v for v in strings.to_pylist() if "," in v), strings[0].as_py())
                out.append(
                    f"feature {spec.name!r} is text, but {share:.0%} of its values read as numbers"
                    f" (e.g. {sample!r}): it is one-hot encoded as {count} categories; declare it"
                    " numeric at ingest or clean it to use it as a number"
                )
    return out


def label_strings(column: Any) -> Any:
    """A target column as class names (strings), NaN of a float column as missing (null)."""
    import pyarrow.compute as pc
    import pyarrow.types as pt

    if pt.is_floating(column.type):
        column = pc.if_else(pc.fill_null(pc.is_nan(column), False), None, column)
    return _as_strings(column)


def _as_strings(column: Any) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.cast(column, pa.string())


@dataclass
class Preprocessor:
    """Feature encoding (standardised numbers, one-hot categories, fills for missing values) and
    the target's encoding: class names for classification (and the binary decision `threshold`
    on the probability of `classes[1]`, None for the argmax), or for regression the mean and
    standard deviation the float64 target is standardised with for training."""

    columns: list[Column]
    target: str
    task: Task
    classes: list[str] = field(default_factory=list)
    target_mean: float = 0.0
    target_std: float = 1.0
    threshold: float | None = None

    @property
    def features(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def in_features(self) -> int:
        return sum(c.width for c in self.columns)

    @property
    def out_features(self) -> int:
        return len(self.classes) if self.task == "classification" else 1

    @property
    def numeric_only(self) -> bool:
        return all(c.kind == "numeric" for c in self.columns)

    @classmethod
    def fit(
        cls, table: pyarrow.Table, features: list[str], target: str, task: Task
    ) -> Preprocessor:
        import pyarrow.compute as pc

        columns = []
        for name in features:
            column = table.column(name)
            if _is_numeric(column.type) or str(column.type).startswith(("timestamp", "date")):
                values = as_float(column, name)
                finite = values[np.isfinite(values)]
                mean = float(finite.mean()) if finite.size else 0.0
                std = float(finite.std()) if finite.size else 1.0
                columns.append(
                    Column(
                        name, "numeric", mean, std if std > 1e-12 else 1.0, source=str(column.type)
                    )
                )
            elif _is_categorical(column.type):
                distinct = pc.unique(_as_strings(column).drop_null()).to_pylist()
                if len(distinct) > MAX_CATEGORIES:
                    raise DataError(
                        f"feature {name!r} has {len(distinct)} distinct values, too many to one-hot"
                        f" encode (limit {MAX_CATEGORIES}); leave it out with `features = [...]`"
                    )
                columns.append(
                    Column(
                        name,
                        "categorical",
                        categories=sorted(str(v) for v in distinct),
                        source=str(column.type),
                    )
                )
            else:
                raise DataError(
                    f"feature {name!r} has type {column.type}, which cannot be encoded as model"
                    " input (numbers, strings, booleans, dates and timestamps can)"
                )
        classes: list[str] = []
        target_mean, target_std = 0.0, 1.0
        if task == "regression":
            values = as_float(table.column(target), target)
            finite = values[np.isfinite(values)]
            if finite.size:
                target_mean = float(finite.mean())
                spread = float(finite.std())
                target_std = spread if spread > 1e-12 * max(1.0, abs(target_mean)) else 1.0
        if task == "classification":
            classes = sorted(
                str(v)
                for v in pc.unique(label_strings(table.column(target)).drop_null()).to_pylist()
            )
            if len(classes) < 2:
                only = classes[0] if classes else "nothing"
                raise DataError(
                    f"target {target!r} has a single class ({only!r}) in the training data: nothing to learn"
                )
        return cls(columns, target, task, classes, target_mean, target_std)

    def check_columns(self, table: pyarrow.Table, with_target: bool = False) -> None:
        names = set(table.column_names)
        missing = [f for f in self.features if f not in names]
        if with_target and self.target not in names:
            missing.append(self.target)
        if missing:
            raise DataError(
                f"the data lacks column {missing[0]!r} that the model needs"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + f"; its columns: {', '.join(table.column_names)}"
            )
        for spec in self.columns:
            got = type_family(table.column(spec.name).type)
            if spec.family and got not in (spec.family, "null"):
                raise DataError(
                    f"column {spec.name!r} holds {table.column(spec.name).type} values ({got}) where"
                    f" the model was trained on {spec.source} ({spec.family}):"
                    f" {spec.describe()['unit']}"
                )

    def unseen_categories(self, table: pyarrow.Table) -> dict[str, int]:
        """Per categorical feature, how many present values of `table` are no category the
        model knows (they encode as all zeros, as in training); columns with none left out."""
        import pyarrow as pa
        import pyarrow.compute as pc

        counts: dict[str, int] = {}
        for spec in self.columns:
            if spec.kind != "categorical" or spec.name not in table.column_names:
                continue
            strings = _as_strings(table.column(spec.name))
            known = pc.is_in(strings, value_set=pa.array(spec.categories, pa.string()))
            unseen = int(pc.sum(pc.and_(pc.is_valid(strings), pc.invert(known))).as_py() or 0)
            if unseen:
                counts[spec.name] = unseen
        return counts

    def describe_inputs(self) -> list[dict[str, Any]]:
        """One entry per named input of an exported model (`Column.describe`), in order."""
        return [c.describe() for c in self.columns]

    def transform(self, table: pyarrow.Table) -> np.ndarray:
        """Feature matrix, float32, shape (rows, in_features)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        self.check_columns(table)
        blocks = []
        for spec in self.columns:
            column = table.column(spec.name)
            if spec.kind == "numeric":
                values = as_float(column, spec.name)
                values = np.where(np.isfinite(values), values, spec.mean)
                blocks.append(((values - spec.mean) / spec.std).reshape(-1, 1))
            else:
                index = pc.index_in(
                    _as_strings(column), value_set=pa.array(spec.categories, pa.string())
                )
                codes = np.asarray(
                    index.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64
                )
                onehot = np.zeros((len(codes), len(spec.categories)), dtype=np.float64)
                known = codes >= 0
                onehot[np.nonzero(known)[0], codes[known]] = 1.0
                blocks.append(onehot)
        if not blocks:
            return np.zeros((table.num_rows, 0), dtype=np.float32)
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def raw_columns(self, table: pyarrow.Table) -> dict[str, np.ndarray]:
        """One array per feature column, shape (rows, 1), as an exported model with the whole
        encoding inside its graph takes them: numbers (dates, timestamps in `INPUT_UNITS`)
        float64 with NaN where missing, so the graph standardises exactly as `transform`;
        everything else strings ("" where missing, which matches no category)."""
        self.check_columns(table)
        out: dict[str, np.ndarray] = {}
        for spec in self.columns:
            column = table.column(spec.name)
            if spec.kind == "numeric":
                out[spec.name] = as_float(column, spec.name).reshape(-1, 1)
            else:
                strings = _as_strings(column).to_pylist()
                out[spec.name] = np.array(
                    [["" if v is None else v] for v in strings], dtype=object
                ).reshape(-1, 1)
        return out

    def encode_target(self, table: pyarrow.Table) -> np.ndarray:
        """Labels as class indices (int64, -1 where the label is missing), or for regression
        the values as float64 (NaN where missing). Raises DataError naming a label the model
        never saw in training."""
        import pyarrow as pa
        import pyarrow.compute as pc

        column = table.column(self.target)
        if self.task == "regression":
            return as_float(column, self.target)
        strings = label_strings(column)
        index = pc.index_in(strings, value_set=pa.array(self.classes, pa.string()))
        codes = np.asarray(index.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
        unseen_mask = pc.and_(pc.is_null(index), pc.is_valid(strings))
        if pc.any(unseen_mask).as_py():
            unseen = sorted({str(v) for v in pc.filter(strings, unseen_mask).to_pylist()})
            raise DataError(
                f"target {self.target!r} has values never seen in training: {', '.join(map(repr, unseen[:5]))}"
                f" (known classes: {', '.join(self.classes)})"
            )
        return codes

    def scale_target(self, values: np.ndarray) -> np.ndarray:
        """Regression targets (float64) -> the standardised float32 values training fits."""
        return ((values - self.target_mean) / self.target_std).astype(np.float32)

    def restore_target(self, outputs: np.ndarray) -> np.ndarray:
        """Model outputs in standardised units -> predictions in the target's units, float64."""
        return np.asarray(outputs, dtype=np.float64) * self.target_std + self.target_mean

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": [asdict(c) for c in self.columns],
            "target": self.target,
            "task": self.task,
            "classes": self.classes,
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessor:
        return cls(
            [Column(**c) for c in data["columns"]],
            data["target"],
            data["task"],
            list(data["classes"]),
            float(data.get("target_mean", 0.0)),
            float(data.get("target_std", 1.0)),
            data.get("threshold"),
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary name, then rename: a crash never leaves half a file."""
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_bundle(
    path: Path,
    model: torch.nn.Module,
    architecture: dict[str, Any],
    pre: Preprocessor,
    meta: dict[str, Any],
) -> None:
    """`architecture`: {"name", "params", "in_features", "out_features"} as models.build takes."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    write_bundle(path, architecture, state, pre, meta)


def write_bundle(
    path: Path,
    architecture: dict[str, Any],
    state: dict[str, Any],
    pre: Preprocessor,
    meta: dict[str, Any],
) -> None:
    """Write a bundle file (BUNDLE_FORMAT) atomically: the architecture, a state dict (tensors on
    the CPU), the preprocessing and the metadata, as `load_bundle` reads them."""
    atomic_torch_save(
        {
            "format": BUNDLE_FORMAT,
            "architecture": architecture,
            "state_dict": state,
            "preprocessor": pre.to_dict(),
            "meta": meta,
        },
        path,
    )


def load_bundle(path: Path) -> tuple[torch.nn.Module, Preprocessor, dict[str, Any]]:
    """The model (eval mode, CPU), its preprocessing and its metadata."""
    import torch

    from jobs.architectures import build

    data = torch.load(path, map_location="cpu", weights_only=False)
    if data.get("format") != BUNDLE_FORMAT:
        raise DataError(f"{path}: not a model bundle of format {BUNDLE_FORMAT}")
    arch = data["architecture"]
    if arch.get("torchscript"):  # a script's TorchScript model (see script_model_bundle)
        model = torch.jit.load(arch["torchscript"], map_location="cpu")  # type: ignore[no-untyped-call]
    else:
        model = build(
            arch["name"], arch["in_features"], arch["out_features"], arch.get("params", {})
        )
        model.load_state_dict(data["state_dict"])
    model.eval()
    return model, Preprocessor.from_dict(data["preprocessor"]), dict(data["meta"])


def import_user_model(reference: str) -> Any:
    """`path/to/model.py:build` or `package.module:build` -> the callable; an import error
    propagates with its traceback."""
    path_text, _, function = reference.rpartition(":")
    if not path_text.endswith(".py"):
        module_obj = importlib.import_module(path_text)
        if not hasattr(module_obj, function):
            raise DataError(f"model {reference!r}: module {path_text} defines no {function!r}")
        return getattr(module_obj, function)
    path = Path(path_text)
    spec = importlib.util.spec_from_file_location(f"workbench_user_model_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise DataError(f"model {reference!r}: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, function):
        raise DataError(f"model {reference!r}: {path} defines no {function!r}")
    return getattr(module, function)


def _exported_by_stage(ctx: Any, stage: str) -> tuple[str, Path, int | None] | None:
    """The fp32 .onnx an export stage of this pipeline wrote: ("onnx", path, its run's job id)."""
    from workbench.catalog import registry

    if not ctx.job.pipeline_id:
        return None
    jobs = [
        j.id
        for j in ctx.store.list_jobs(pipeline_id=ctx.job.pipeline_id)
        if j.stage == stage and j.kind == "export"
    ]
    for model in registry.list_models(ctx.store):
        if model["export_job_id"] in jobs and model["format"] == "onnx":
            path = Path(model["path"])
            if not path.is_file():
                raise DataError(f"model {stage!r}: the exported file {path} is gone")
            return "onnx", path, model["run_job_id"]
    return None


def script_model_bundle(ctx: Any, run: Any) -> tuple[str, Path]:
    """The model a script registered (workbench.track's `register_model`) as test and export
    take a built-in run's: ("bundle", a bundle written into this job's run folder) for a
    TorchScript file or a state dict with its `build` reference, ("onnx", a copy carrying the
    preprocessing metadata) for an ONNX file. The preprocessing is the identity on the numeric
    `features` it declared (the script's model takes them raw); the classes are those it gave,
    else the target's distinct values in the first dataset it declared, sorted as strings.
    Raises DataError when the run registered no model, or its file is gone."""
    import json

    import pyarrow.compute as pc

    from workbench.catalog import lake, registry

    found = [
        m
        for m in registry.list_models(ctx.store)
        if m["run_job_id"] == run.job_id and m["card"].get("source") == "script"
    ]
    if not found:
        raise DataError(f"run {run.job_id} registered no model (workbench.track.register_model)")
    model_row = found[0]
    card = model_row["card"]
    path = Path(model_row["path"])
    if not path.is_file():
        raise DataError(f"run {run.job_id}: its registered model {path} is gone")
    task = card["task"]
    classes = [str(c) for c in card.get("classes") or []]
    datasets = card.get("datasets") or list(run.datasets)
    if task == "classification" and not classes:
        if not datasets:
            raise DataError(
                f"run {run.job_id}: its model gives no classes and it declared no dataset to"
                " take them from (register_model(..., classes=[...]))"
            )
        first = datasets[0]
        table, _ = lake.read_arrow(ctx.home, first["name"], first["version"], ctx.store, ctx.shared)
        classes = sorted(
            str(v)
            for v in pc.unique(_as_strings(table.column(card["target"])).drop_null()).to_pylist()
        )
    pre = Preprocessor(
        [Column(str(f), "numeric") for f in card["features"]], card["target"], task, classes
    )
    first = datasets[0] if datasets else {}
    meta = {
        "dataset": {k: first.get(k) for k in ("name", "version", "content_hash")} if first else {},
        "datasets": datasets,
        "params": dict(run.params),
        "metrics": dict(run.metrics),
        "source": "script",
        "registered": {
            "path": str(path),
            "format": model_row["format"],
            "sha256": model_row["sha256"],
        },
    }
    out_features = len(classes) if task == "classification" else 1
    if model_row["format"] == "onnx":
        import onnx

        graph = onnx.load(str(path))
        for key, value in (
            ("workbench.preprocessor", json.dumps(pre.to_dict())),
            ("workbench.inputs", "encoded"),
        ):
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        target = Path(ctx.artifact("script_model.onnx"))
        onnx.save(graph, str(target))
        return "onnx", target
    import torch

    architecture: dict[str, Any] = {
        "name": card.get("build") or "torchscript",
        "params": {},
        "in_features": pre.in_features,
        "out_features": out_features,
    }
    if model_row["format"] == "torchscript":
        architecture["torchscript"] = str(path)
        state: dict[str, Any] = {}
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise DataError(f"{path}: not a state dict ({type(state).__name__})")
    target = Path(ctx.artifact("script_model.pt"))
    write_bundle(target, architecture, state, pre, meta)
    return "bundle", target


def resolve_model(ctx: Any, reference: str) -> tuple[str, Path, int | None]:
    """A model reference -> (format, path, train job id). `reference` is a pipeline stage name
    (a train stage: its run, the best point when the stage was a sweep; an export stage: the
    .onnx it wrote), a train job id, or a `.onnx` / `.pt` file."""
    from workbench.catalog import tracking

    if reference.endswith((".onnx", ".pt")):
        path = Path(reference)
        if not path.is_file():
            raise DataError(f"model {reference!r}: no such file")
        return ("onnx" if reference.endswith(".onnx") else "bundle"), path, None
    if reference.isdigit():
        run = tracking.get_run(ctx.store, int(reference))
        if run is None:
            raise DataError(f"model {reference!r}: job {reference} is not a training run")
    else:
        candidates = (
            tracking.stage_runs(ctx.store, ctx.job.pipeline_id, reference)
            if ctx.job.pipeline_id
            else []
        )
        if not candidates:
            exported = _exported_by_stage(ctx, reference)
            if exported is not None:
                return exported
            raise DataError(
                f"model {reference!r}: no training run or exported model of a stage with that"
                " name in this pipeline"
            )
        metric = candidates[0].sweep_metric or (
            "val_accuracy" if candidates[0].task == "classification" else "-val_loss"
        )
        best = tracking.best_run(candidates, metric) if len(candidates) > 1 else candidates[0]
        if best is None:
            raise DataError(f"model {reference!r}: none of its {len(candidates)} runs succeeded")
        run = best
        if len(candidates) > 1:
            ctx.log(
                f"stage {reference!r} swept {len(candidates)} points; using the best by {metric}: job {run.job_id} {run.name}"
            )
    if run.source == "script":
        fmt, path = script_model_bundle(ctx, run)
        return fmt, path, run.job_id
    if not run.bundle or not Path(run.bundle).is_file():
        raise DataError(f"model {reference!r}: run {run.job_id} has no saved model ({run.state})")
    return "bundle", Path(run.bundle), run.job_id
