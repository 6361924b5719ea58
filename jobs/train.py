"""The `train` kind: a PyTorch model on a lake dataset, seeded, checkpointed every epoch and on
SIGTERM, resumable with the same result, streaming metrics into the store. torch is imported
inside `run`: the CLI imports this module to validate specs."""

from __future__ import annotations

import math
import platform
import random
import re
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jobs.context import Cancelled, JobContext, JobFailed
from workbench.catalog.tracking import metric_order
from workbench.queue.spec import SpecError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from jobs.bundle import Preprocessor

SWEEP_KEYS = {
    "lr",
    "batch_size",
    "hidden",
    "dropout",
    "weight_decay",
    "epochs",
    "model",
    "optimizer",
    "seed",
}


@dataclass(frozen=True)
class Range:
    """A random-search range: `{ min = 1e-4, max = 1e-1, log = true }`."""

    min: float
    max: float
    log: bool = False
    integer: bool = False


@dataclass(frozen=True)
class Sweep:
    """`[stage.sweep]`: lists (grid) or ranges with `count` (random search); `metric` picks the
    best point (e.g. "val_accuracy", or "-val_loss" for lower is better); `parallel` caps how
    many points train at once."""

    params: dict[str, Any] = field(default_factory=dict)
    count: int = 0
    metric: str = ""
    parallel: int = 2
    seed: int = 0


@dataclass(frozen=True)
class EarlyStopping:
    """`early_stopping = { metric = "val_f1_macro", patience = 5, min_delta = 0.001 }`: stop
    when `metric` (any reported validation metric; a leading "-" or a loss/error name means
    lower is better) has not improved by more than `min_delta` for `patience` epochs, and keep
    the best epoch's weights. The default metric is val_accuracy (classification) or -val_loss."""

    patience: int
    metric: str = ""
    min_delta: float = 0.0


AUTO_CLASSES = 50
"""Task inference: a string, boolean or dictionary target is classification; a float or
decimal one regression; an integer one classification when it has at most AUTO_CLASSES
distinct values, else regression. `task = ...` overrides."""

LOSSES = {
    "classification": ("cross_entropy", "focal"),
    "regression": ("mse", "huber"),
}


@dataclass(frozen=True)
class Spec:
    """Train `model` on `dataset` (its latest version, or `version`) to predict `target`.

    Validation: a `val_fraction` of the rows, stratified by class for classification
    (`stratify`), drawn with `split_seed` (independent of the weights' `seed`), or the whole
    of `val_dataset` instead. Imbalance: `class_weight` ("balanced": n / (classes * count) as
    scikit-learn's compute_class_weight, or a table class -> weight), `loss`, and for two
    classes a decision `threshold` on the probability of the second class (a number, or "f1":
    the threshold with the best F1 on the validation split)."""

    dataset: str
    target: str
    version: int | None = None
    features: list[str] | None = None
    model: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    dropout: float = 0.0
    task: Literal["auto", "classification", "regression"] = "auto"
    epochs: int | None = None
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: Literal["none", "cosine", "step"] = "none"
    seed: int = 0
    split_seed: int = 0
    val_fraction: float = 0.2
    stratify: bool = True
    val_dataset: str | None = None
    val_version: int | None = None
    early_stopping: int | EarlyStopping = 0
    warmup_epochs: float = 0.0
    class_weight: str | dict[str, float] | None = None
    loss: Literal["auto", "cross_entropy", "focal", "mse", "huber"] = "auto"
    focal_gamma: float = 2.0
    threshold: float | str | None = None
    clip_grad: float | None = None
    ddp_cpu_procs: int = 0
    sweep: dict[str, Any] | None = None

    @property
    def stopping(self) -> EarlyStopping | None:
        """Early stopping as a table (an integer `early_stopping` is the patience)."""
        if isinstance(self.early_stopping, EarlyStopping):
            return self.early_stopping
        return EarlyStopping(self.early_stopping) if self.early_stopping else None


AUTO_MIN_STEPS = 2000
"""Without `epochs`, training runs at least this many optimiser steps (the fixed 20 epochs at
batch 64 were 20-120 steps on datasets of a few hundred rows, and underfit: mpg .755 against
logistic regression's .943)."""
AUTO_MIN_EPOCHS = 20
AUTO_MAX_EPOCHS = 500
AUTO_PATIENCE = 25
"""Early stopping's patience (epochs) on val_loss when `epochs` is left to the default and a
validation split exists; the best epoch's weights are kept. val_loss rather than accuracy:
on a validation split of 30 rows accuracy stops moving long before the model has learnt."""


def resolve_length(spec: Spec, train_rows: int, val_rows: int) -> tuple[Spec, str | None]:
    """`spec` with `epochs` set when it was left out: enough epochs for AUTO_MIN_STEPS
    optimiser steps at `batch_size` over `train_rows`, within [AUTO_MIN_EPOCHS,
    AUTO_MAX_EPOCHS], and early stopping (AUTO_PATIENCE on the default monitor) on when there
    are validation rows and `early_stopping` was not given. Returns the line for the log, or
    None when `epochs` was given."""
    if spec.epochs is not None:
        return spec, None
    steps = max(1, math.ceil(train_rows / spec.batch_size))
    epochs = min(AUTO_MAX_EPOCHS, max(AUTO_MIN_EPOCHS, math.ceil(AUTO_MIN_STEPS / steps)))
    stopping = spec.early_stopping
    why = (
        f"epochs {epochs} by default: at least {AUTO_MIN_STEPS} optimiser steps"
        f" ({steps} per epoch at batch {spec.batch_size} over {train_rows} rows), within"
        f" {AUTO_MIN_EPOCHS}-{AUTO_MAX_EPOCHS} epochs"
    )
    if not stopping and val_rows and AUTO_PATIENCE:
        stopping = EarlyStopping(AUTO_PATIENCE, "-val_loss")
        why += (
            f"; early stopping after {AUTO_PATIENCE} epochs without a lower val_loss, keeping"
            " the best epoch"
        )
    why += " (set `epochs` to choose)"
    return replace(spec, epochs=epochs, early_stopping=stopping), why


def validation_metric_names(task: str | None) -> list[str]:
    """What a train job reports on its validation split each epoch (for `task`, or either)."""
    from jobs.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS

    names = {
        "classification": CLASSIFICATION_METRICS,
        "regression": REGRESSION_METRICS,
        None: CLASSIFICATION_METRICS + REGRESSION_METRICS,
    }[task]
    return ["val_loss", *(f"val_{n}" for n in names)]


def prepare(spec: Spec, base_dir: Path, where: str) -> Spec:
    """Check what can be checked before the job runs; a user model file is resolved and must exist."""
    from jobs.architectures import REGISTRY

    if spec.epochs is not None and spec.epochs < 1:
        raise SpecError(f"{where}: key 'epochs': must be at least 1")
    if spec.batch_size < 1:
        raise SpecError(f"{where}: key 'batch_size': must be at least 1")
    if not 0 <= spec.val_fraction < 1:
        raise SpecError(f"{where}: key 'val_fraction': must be in [0, 1)")
    if spec.lr <= 0:
        raise SpecError(f"{where}: key 'lr': must be positive")
    _check_ranges(spec, where)
    _check_training_keys(spec, where)
    model = spec.model
    if model not in REGISTRY:
        path, sep, function = model.rpartition(":")
        if not sep or not path.endswith(".py") or not function:
            raise SpecError(
                f"{where}: key 'model': {model!r} is neither a registered model"
                f" ({', '.join(REGISTRY)}) nor path/to/model.py:function"
            )
        resolved = (base_dir / path).resolve()
        if not resolved.is_file():
            raise SpecError(f"{where}: key 'model': no such file {resolved}")
        model = f"{resolved}:{function}"
    if spec.sweep is not None and "point" not in spec.sweep:
        raise SpecError(
            f"{where}: key 'sweep': a sweep expands into one job per point in a pipeline file (workbench --batch)"
        )
    return replace(spec, model=model)


def _check_ranges(spec: Spec, where: str) -> None:
    """Submit-time ranges of the optimiser and architecture keys, and a target that is not
    among the features (training on the label scores 1.0 and learns nothing). Raises
    SpecError naming the key."""
    if spec.clip_grad is not None and not spec.clip_grad > 0:
        raise SpecError(
            f"{where}: key 'clip_grad': the largest gradient norm must be positive, got"
            f" {spec.clip_grad} (leave it out for no clipping)"
        )
    if spec.features is not None:
        if spec.target in spec.features:
            raise SpecError(
                f"{where}: key 'features': lists the target {spec.target!r}; a model given its"
                " own label learns nothing"
            )
        doubled = sorted({f for f in spec.features if spec.features.count(f) > 1})
        if doubled:
            raise SpecError(f"{where}: key 'features': {doubled[0]!r} is listed twice")
        if not spec.features:
            raise SpecError(f"{where}: key 'features': give at least one column")
    if any(width < 1 for width in spec.hidden):
        raise SpecError(
            f"{where}: key 'hidden': every layer needs at least 1 unit, got {spec.hidden}"
        )
    for key in ("seed", "split_seed"):
        if getattr(spec, key) < 0:
            raise SpecError(f"{where}: key '{key}': must not be negative (NumPy seeds are >= 0)")
    if spec.weight_decay < 0:
        raise SpecError(f"{where}: key 'weight_decay': must not be negative")
    if not 0 <= spec.momentum < 1:
        raise SpecError(f"{where}: key 'momentum': must be in [0, 1), got {spec.momentum}")
    if not 0 <= spec.dropout < 1:
        raise SpecError(f"{where}: key 'dropout': a probability in [0, 1), got {spec.dropout}")


def dataset_refs(spec: dict[str, Any]) -> list[Any]:
    """The datasets and columns a train spec names, for `catalogcheck` at submit: `dataset`
    (and `val_dataset`) with `target` and `features`."""
    from workbench.queue.catalogcheck import DatasetRef

    features = [("features", str(f)) for f in spec.get("features") or []]
    columns = (("target", str(spec["target"])), *features)
    refs = [DatasetRef("dataset", str(spec["dataset"]), spec.get("version"), columns)]
    if spec.get("val_dataset"):
        refs.append(
            DatasetRef(
                "val_dataset",
                str(spec["val_dataset"]),
                spec.get("val_version"),
                columns,
                "val_version",
            )
        )
    return refs


def _check_training_keys(spec: Spec, where: str) -> None:
    """Submit-time checks of the loss, imbalance, validation and early-stopping keys."""
    import difflib

    task = None if spec.task == "auto" else spec.task
    if spec.loss != "auto" and task is not None and spec.loss not in LOSSES[task]:
        raise SpecError(
            f"{where}: key 'loss': {spec.loss!r} is not a {task} loss ({', '.join(LOSSES[task])})"
        )
    if isinstance(spec.class_weight, str) and spec.class_weight != "balanced":
        raise SpecError(
            f"{where}: key 'class_weight': \"balanced\" or a table class -> weight, got {spec.class_weight!r}"
        )
    if isinstance(spec.class_weight, dict):
        for name, weight in spec.class_weight.items():
            if not weight > 0:
                raise SpecError(f"{where}: key 'class_weight.{name}': weights must be positive")
    if task == "regression" and (spec.class_weight is not None or spec.threshold is not None):
        key = "class_weight" if spec.class_weight is not None else "threshold"
        raise SpecError(f"{where}: key '{key}': applies to classification, not regression")
    if isinstance(spec.threshold, str) and spec.threshold != "f1":
        raise SpecError(
            f"{where}: key 'threshold': a probability in (0, 1) or \"f1\", got {spec.threshold!r}"
        )
    if isinstance(spec.threshold, float) and not 0 < spec.threshold < 1:
        raise SpecError(f"{where}: key 'threshold': must be in (0, 1)")
    if spec.focal_gamma < 0:
        raise SpecError(f"{where}: key 'focal_gamma': must not be negative")
    if spec.warmup_epochs < 0:
        raise SpecError(f"{where}: key 'warmup_epochs': must not be negative")
    if spec.val_dataset is None and spec.val_version is not None:
        raise SpecError(f"{where}: key 'val_version': give 'val_dataset' too")
    stopping = spec.stopping
    if stopping is not None:
        if stopping.patience < 1:
            raise SpecError(f"{where}: key 'early_stopping.patience': must be at least 1")
        if stopping.min_delta < 0:
            raise SpecError(f"{where}: key 'early_stopping.min_delta': must not be negative")
        known = validation_metric_names(task)
        name = stopping.metric.removeprefix("-")
        if stopping.metric and name not in known:
            close = [n for n in known if name in n] or difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
            raise SpecError(
                f"{where}: key 'early_stopping.metric': {stopping.metric!r} is not a reported"
                f" validation metric{hint}; known: {', '.join(known)}"
            )


# ---- sweeps -------------------------------------------------------------------------------


def parse_sweep(
    table: dict[str, Any], where: str, keys: Iterable[str] | None = SWEEP_KEYS
) -> Sweep:
    """`[stage.sweep]` checked: every varied parameter is one of `keys` (any name when None)."""
    from workbench.queue.spec import coerce

    settings = {k: table[k] for k in ("count", "metric", "parallel", "seed") if k in table}
    params = {k: v for k, v in table.items() if k not in settings}
    sweep = Sweep(
        params=params,
        count=coerce(settings.get("count", 0), int, f"{where}: key 'sweep.count'"),
        metric=coerce(settings.get("metric", ""), str, f"{where}: key 'sweep.metric'"),
        parallel=coerce(settings.get("parallel", 2), int, f"{where}: key 'sweep.parallel'"),
        seed=coerce(settings.get("seed", 0), int, f"{where}: key 'sweep.seed'"),
    )
    if not params:
        raise SpecError(f"{where}: key 'sweep': give at least one parameter to vary")
    for key, value in params.items():
        if keys is not None and key not in keys:
            raise SpecError(
                f"{where}: key 'sweep.{key}': not a parameter a sweep can vary ({', '.join(sorted(keys))})"
            )
        if isinstance(value, dict):
            from workbench.queue.spec import from_table

            from_table(Range, value, f"{where}: key 'sweep.{key}'")
            if not sweep.count:
                raise SpecError(
                    f"{where}: key 'sweep.count': a range ({key}) needs a count of random points"
                )
        elif not isinstance(value, list) or not value:
            raise SpecError(
                f"{where}: key 'sweep.{key}': expected a list of values or a {{min, max}} range"
            )
    if sweep.parallel < 1:
        raise SpecError(f"{where}: key 'sweep.parallel': must be at least 1")
    return sweep


def sweep_points(sweep: Sweep) -> list[dict[str, Any]]:
    """Grid over the lists; with ranges, `count` random points (seeded), lists sampled too."""
    from workbench.queue.spec import from_table

    ranges = {k: from_table(Range, v, k) for k, v in sweep.params.items() if isinstance(v, dict)}
    lists = {k: v for k, v in sweep.params.items() if isinstance(v, list)}
    if not ranges:
        keys = list(lists)
        return [
            dict(zip(keys, values, strict=True)) for values in product(*(lists[k] for k in keys))
        ]
    rng = random.Random(sweep.seed)
    points = []
    for _ in range(sweep.count):
        point: dict[str, Any] = {k: rng.choice(v) for k, v in lists.items()}
        for key, bounds in ranges.items():
            if bounds.log:
                value = math.exp(rng.uniform(math.log(bounds.min), math.log(bounds.max)))
            else:
                value = rng.uniform(bounds.min, bounds.max)
            point[key] = round(value) if bounds.integer else value
        points.append(point)
    return points


def expand(
    table: dict[str, Any], where: str
) -> tuple[list[tuple[str, dict[str, Any]]], Sweep | None]:
    """A stage table with a `sweep` -> one table per point (named by its parameters)."""
    if "sweep" not in table:
        return [("", table)], None
    sweep = parse_sweep(table["sweep"], where)
    base = {k: v for k, v in table.items() if k != "sweep"}
    out = []
    for point in sweep_points(sweep):
        label = ",".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items()
        )
        out.append((label, {**base, **point, "sweep": {"metric": sweep.metric, "point": label}}))
    return out, sweep


# ---- data ---------------------------------------------------------------------------------


def _whole_numbers(column: Any) -> bool:
    """Whether every present value of a float column is a whole number (none infinite)."""
    import numpy as np

    from jobs.bundle import as_float

    values = as_float(column, "target")
    if np.isinf(values).any():
        return False  # regression, whose check names the infinite values
    values = values[~np.isnan(values)]
    return bool(values.size) and bool((values == np.round(values)).all())


def infer_task(column: Any, requested: str) -> tuple[Literal["classification", "regression"], str]:
    """The task for a target column, and the reason in words (logged by the job).

    The rule (AUTO_CLASSES): strings, booleans and dictionaries are classification; floats and
    decimals regression, except floats holding only whole numbers (pandas writes an integer
    column with missing values as 0.0/1.0), which follow the integer rule; integers
    classification with at most AUTO_CLASSES distinct values, else regression. A `task` other
    than "auto" wins."""
    import pyarrow.compute as pc
    import pyarrow.types as pt

    if requested != "auto":
        chosen: Literal["classification", "regression"] = (
            "classification" if requested == "classification" else "regression"
        )
        return chosen, f"task {chosen} (set by key 'task')"
    if pt.is_floating(column.type) and _whole_numbers(column):
        distinct = len(pc.unique(column.drop_null()))
        if distinct <= AUTO_CLASSES:
            return "classification", (
                f"task classification: the {column.type} target holds only whole numbers,"
                f" {distinct} distinct (an integer column with missing values is written as"
                f' floats, e.g. 0.0/1.0, by pandas); set task = "regression" to override'
            )
    if pt.is_floating(column.type) or pt.is_decimal(column.type):
        return "regression", f"task regression: the target is {column.type}; set task to override"
    if pt.is_integer(column.type):
        distinct = len(pc.unique(column.drop_null()))
        if distinct > AUTO_CLASSES:
            codes = distinct <= 4 * AUTO_CLASSES and distinct * 5 <= len(column)
            return "regression", (
                f"task regression: the integer target has {distinct} distinct values"
                f' (more than {AUTO_CLASSES}); set task = "classification" to override'
                + (
                    f" (with {len(column)} rows, {distinct} values may be class codes)"
                    if codes
                    else ""
                )
            )
        return "classification", (
            f"task classification: the integer target has {distinct} distinct values"
            f' (at most {AUTO_CLASSES}); set task = "regression" to override'
        )
    return (
        "classification",
        f"task classification: the target is {column.type}; set task to override",
    )


@dataclass
class Prepared:
    """Encoded training and validation data.

    `x_*`: float32 (rows, in_features). `y_train`/`y_val`: what the loss takes (int64 class
    codes, -1 for a validation label training never saw; or float32 standardised targets).
    `y_val_true`: the validation labels for metrics (int64 codes, or float64 in the target's
    own units)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    y_val_true: np.ndarray
    pre: Preprocessor
    features: list[str]
    dropped_null_targets: int
    task_reason: str = ""
    validation: str = ""
    warnings: list[str] = field(default_factory=list)


def split_indices(
    rows: int, val_fraction: float, seed: int, strata: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row indices, each sorted. Without `strata`, a seeded permutation's
    first round(rows * val_fraction) rows validate. With `strata` (one label per row) each
    stratum gives round(its rows * val_fraction) of its own permuted rows, so class
    proportions hold in both parts."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if strata is None:
        order = rng.permutation(rows)
        cut = round(rows * val_fraction)
        return np.sort(order[cut:]), np.sort(order[:cut])
    _, groups = np.unique(strata, return_inverse=True)
    counts = np.bincount(groups.ravel()) if rows else np.zeros(0, dtype=np.int64)
    by_group = np.argsort(groups.ravel(), kind="stable")
    val_parts = []
    for start, count in zip(np.r_[0, np.cumsum(counts)[:-1]], counts, strict=True):
        members = by_group[start : start + count][rng.permutation(count)]
        val_parts.append(members[: round(count * val_fraction)])
    val = np.sort(np.concatenate(val_parts)) if val_parts else np.zeros(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(rows), val)
    return train, val


def split_table(table: Any, spec: Spec, task: str) -> tuple[Any, Any]:
    """(train, validation) tables of the rows with a target, as `split_indices` draws them
    (stratified by the target for classification unless `stratify = false`)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    strata = None
    if task == "classification" and spec.stratify:
        labels = pc.cast(table.column(spec.target), pa.string()).combine_chunks()
        strata = np.asarray(pc.dictionary_encode(labels).indices.to_numpy(zero_copy_only=False))
    train_idx, val_idx = split_indices(table.num_rows, spec.val_fraction, spec.split_seed, strata)
    return table.take(train_idx), table.take(val_idx)


def with_target(table: Any, target: str) -> tuple[Any, int]:
    """The rows whose target is present (not null, not NaN), and how many were left out."""
    import pyarrow.compute as pc
    import pyarrow.types as pt

    column = table.column(target)
    valid = pc.is_valid(column)
    if pt.is_floating(column.type):
        valid = pc.and_(valid, pc.invert(pc.fill_null(pc.is_nan(column), False)))
    kept = table.filter(valid)
    return kept, table.num_rows - kept.num_rows


def prepare_data(
    table: Any, spec: Spec, where: str, val_table: Any = None, val_where: str = ""
) -> Prepared:
    """Split (or take `val_table` as the validation rows), fit the preprocessing on the
    training rows, encode both. Raises JobFailed naming the column or dataset at fault."""
    from jobs.bundle import DataError, Preprocessor, encoding_warnings

    columns = table.column_names
    if spec.target not in columns:
        raise JobFailed(
            f"target column {spec.target!r} is not in {where} (columns: {', '.join(columns)})"
        )
    features = (
        spec.features if spec.features is not None else [c for c in columns if c != spec.target]
    )
    missing = [f for f in features if f not in columns]
    if missing:
        raise JobFailed(f"feature {missing[0]!r} is not in {where} (columns: {', '.join(columns)})")
    if not features:
        raise JobFailed(f"no features: {where} has only the target column")
    table, dropped = with_target(table, spec.target)
    if table.num_rows < 2:
        raise JobFailed(f"{where} has {table.num_rows} rows with a target: too few to train on")
    task, reason = infer_task(table.column(spec.target), spec.task)
    if task == "regression":
        import numpy as np

        from jobs.bundle import as_float

        values = as_float(table.column(spec.target), spec.target)
        infinite = int(np.isinf(values).sum())
        if infinite:
            raise JobFailed(
                f"target {spec.target!r} has {infinite} infinite values in {where}: fix or drop them"
            )
        if values.size and float(values.max()) == float(values.min()):
            raise JobFailed(
                f"target {spec.target!r} has a single value ({values[0]:g}) in {where}: nothing"
                " to learn"
            )
    if spec.loss != "auto" and spec.loss not in LOSSES[task]:
        raise JobFailed(f"key 'loss': {spec.loss!r} is not a {task} loss ({reason})")
    if task == "regression" and (spec.class_weight is not None or spec.threshold is not None):
        raise JobFailed(f"keys 'class_weight'/'threshold' apply to classification ({reason})")
    if val_table is not None:
        for name in [*features, spec.target]:
            if name not in val_table.column_names:
                raise JobFailed(f"column {name!r} is not in the validation data {val_where}")
        val_table, val_dropped = with_target(val_table, spec.target)
        dropped += val_dropped
        train_table = table
        validation = f"{val_where} ({val_table.num_rows} rows)"
    else:
        train_table, val_table = split_table(table, spec, task)
        stratified = " stratified by class" if task == "classification" and spec.stratify else ""
        validation = (
            f"{val_table.num_rows} rows of {where} (val_fraction {spec.val_fraction},"
            f" split_seed {spec.split_seed}{stratified})"
        )
    try:
        pre = Preprocessor.fit(train_table, features, spec.target, task)
        if task == "classification" and isinstance(spec.threshold, float):
            if len(pre.classes) != 2:
                raise JobFailed(
                    f"key 'threshold': applies to two classes; {spec.target!r} has {len(pre.classes)}"
                )
            pre.threshold = spec.threshold
        if spec.threshold == "f1" and (len(pre.classes) != 2 or val_table.num_rows == 0):
            raise JobFailed(
                "key 'threshold': \"f1\" is chosen on the validation rows of a two-class target;"
                f" {spec.target!r} has {len(pre.classes)} classes and {val_table.num_rows} validation rows"
            )
        x_train = pre.transform(train_table)
        x_val = pre.transform(val_table)
        if task == "regression":
            y_train = pre.scale_target(pre.encode_target(train_table))
            y_val_true = pre.encode_target(val_table)
            y_val = pre.scale_target(y_val_true)
        else:
            y_train = pre.encode_target(train_table)
            y_val = y_val_true = _encode_known(pre, val_table)
    except DataError as error:
        raise JobFailed(str(error)) from None
    warnings = encoding_warnings(train_table, pre)
    if task == "classification" and str(table.column(spec.target).type).startswith(
        ("float", "double", "halffloat")
    ):
        warnings.append(
            f"target {spec.target!r} is {table.column(spec.target).type} but taken as classes"
            f" {', '.join(pre.classes)}: {reason}"
        )
    if "may be class codes" in reason:
        warnings.append(reason)
    for column, count in pre.unseen_categories(val_table).items():
        warnings.append(
            f"feature {column!r}: {count} validation values are categories training never saw"
            " (encoded as no category)"
        )
    return Prepared(
        x_train,
        y_train,
        x_val,
        y_val,
        y_val_true,
        pre,
        features,
        int(dropped),
        reason,
        validation,
        warnings,
    )


def _encode_known(pre: Preprocessor, table: Any) -> np.ndarray:
    """Validation labels; a class only in the validation split maps to -1 (never counted right)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from jobs.bundle import label_strings

    index = pc.index_in(
        label_strings(table.column(pre.target)), value_set=pa.array(pre.classes, pa.string())
    )
    return np.asarray(index.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


def class_weights(spec: Spec, pre: Preprocessor, y_train: np.ndarray) -> np.ndarray | None:
    """Per-class loss weights (float32, one per class) or None. "balanced" gives
    n_rows / (n_classes * rows_of_class), scikit-learn's compute_class_weight formula; a table
    names classes (others weigh 1). Raises JobFailed for a class the data lacks."""
    import numpy as np

    if spec.class_weight is None or pre.task != "classification":
        return None
    counts = np.bincount(y_train, minlength=len(pre.classes)).astype(np.float64)
    if spec.class_weight == "balanced":
        weights = np.where(
            counts > 0, len(y_train) / (len(pre.classes) * np.maximum(counts, 1)), 1.0
        )
        return weights.astype(np.float32)
    assert isinstance(spec.class_weight, dict)
    weights = np.ones(len(pre.classes), dtype=np.float32)
    for name, weight in spec.class_weight.items():
        if name not in pre.classes:
            raise JobFailed(
                f"key 'class_weight': class {name!r} is not in the training data"
                f" (classes: {', '.join(pre.classes)})"
            )
        weights[pre.classes.index(name)] = weight
    return weights


def best_f1_threshold(scores: np.ndarray, positive: np.ndarray) -> float:
    """The decision threshold t (predict positive where score >= t) with the highest F1 of the
    positive class over the distinct validation scores; ties go to the higher threshold."""
    import numpy as np

    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, hits = scores[order], positive[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    true_pos = np.cumsum(hits)[last]
    predicted = last + 1
    f1 = 2 * true_pos / (predicted + hits.sum())
    best = int(np.argmax(f1))  # first maximum: the highest threshold
    return float(sorted_scores[last[best]])


# ---- environment --------------------------------------------------------------------------


def git_commit(folder: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def bf16_autocast(device: torch.device) -> bool:
    """Whether training on `device` runs its forward pass under bfloat16 autocast: on a CUDA
    device that supports bf16 (Ampere and later), never on the CPU."""
    import torch

    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def environment(device: torch.device, cwd: str) -> dict[str, Any]:
    """What the run ran on, for run.json and the runs table: versions, the device and its
    name, threads, the autocast dtype ("bfloat16", or None for full float32) and the git
    commit of `cwd`."""
    import numpy
    import torch

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": name,
        "autocast": "bfloat16" if bf16_autocast(device) else None,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "git_commit": git_commit(cwd),
    }


def oom_message(device_name: str, requested: str | None, free_bytes: int, total_bytes: int) -> str:
    """What a user needs after CUDA ran out of memory."""
    from workbench.units import format_size

    asked = f"tried to allocate {requested}" if requested else "an allocation failed"
    return (
        f"CUDA out of memory on {device_name}: {asked}; {format_size(free_bytes)} free of"
        f" {format_size(total_bytes)}. Lower batch_size, or ask for a GPU with more memory (gpu_mem)"
    )


# ---- training -----------------------------------------------------------------------------


class _MetricBuffer:
    """Per-step metrics, written to the store in batches (at most once a second)."""

    def __init__(self, ctx: JobContext, enabled: bool = True):
        self.ctx = ctx
        self.enabled = enabled
        self.rows: list[tuple[int, str, float | None]] = []
        self.flushed = -math.inf  # the first step is written at once: curves appear without delay

    def add(self, step: int, values: dict[str, float | None]) -> None:
        if not self.enabled:
            return
        self.rows.extend((step, k, v) for k, v in values.items())
        if time.monotonic() - self.flushed > 1.0:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.ctx.store.add_metric_rows(self.ctx.job.id, self.rows)
            self.rows = []
        self.flushed = time.monotonic()


def _select_device(ctx: JobContext, rank: int = 0, world: int = 1) -> torch.device:
    """The granted GPU (this rank's under DDP), else the CPU with the granted threads."""
    import torch

    if ctx.gpu_indices and torch.cuda.is_available():
        torch.cuda.set_device(rank)
        ctx.cap_gpu_memory(rank)  # GPU pooling: stay within the reserved share of a shared GPU
        return torch.device("cuda", rank)
    if ctx.gpu_indices:
        ctx.log("GPUs were granted but torch sees no CUDA device; training on the CPU")
    torch.set_num_threads(max(1, ctx.cpus // world))
    return torch.device("cpu")


def _optimizer(spec: Spec, model: torch.nn.Module) -> torch.optim.Optimizer:
    import torch

    if spec.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
        )
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)


def _scheduler(spec: Spec, optimizer: torch.optim.Optimizer) -> Any:
    import torch

    if spec.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.epochs or 1)
    if spec.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=max(1, (spec.epochs or 1) // 3), gamma=0.1
        )
    return None


def make_criterion(spec: Spec, task: str, weights: torch.Tensor | None) -> Any:
    """The training loss: (outputs, targets) -> scalar tensor. Classification: cross-entropy,
    or focal loss FL = -(1 - p_t)^gamma log p_t (Lin et al. 2017, "Focal Loss for Dense Object
    Detection"), both with optional per-class weights (a weighted mean, as torch's
    cross_entropy). Regression (standardised targets): mean squared error, or Huber (delta 1)."""
    import torch.nn.functional as F

    loss = spec.loss if spec.loss != "auto" else LOSSES[task][0]
    if loss == "cross_entropy":
        if weights is None:
            return F.cross_entropy
        return lambda out, y: F.cross_entropy(out, y, weight=weights)
    if loss == "focal":
        gamma = spec.focal_gamma

        def focal(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            log_p = F.log_softmax(out.float(), dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
            term = -((1 - log_p.exp()) ** gamma) * log_p
            if weights is None:
                return term.mean()
            w = weights[y]
            return (term * w).sum() / w.sum()

        return focal
    if loss == "huber":
        return lambda out, y: F.huber_loss(out.squeeze(1), y, delta=1.0)
    return lambda out, y: F.mse_loss(out.squeeze(1), y)


def evaluate(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    y_true: np.ndarray,
    pre: Preprocessor,
    criterion: Any,
) -> dict[str, float]:
    """Validation metrics: `val_loss` (the training loss) and `val_<metric>` for every metric
    of jobs.metrics' report (classification with the decision threshold; regression in the
    target's own units). Undefined values are NaN."""
    import torch

    from jobs.metrics import classification_report, headline, regression_report, softmax

    if len(x) == 0:
        return {}
    with torch.no_grad():
        out = model(x).float()
        if pre.task == "classification":
            known = y >= 0
            loss = criterion(out[known], y[known]).item() if known.any() else math.nan
            report = classification_report(
                y_true, softmax(out.cpu().numpy()), pre.classes, pre.threshold
            )
        else:
            loss = criterion(out, y).item()
            report = regression_report(y_true, pre.restore_target(out.squeeze(1).cpu().numpy()))
    return {"val_loss": loss, **{f"val_{k}": v for k, v in headline(report).items()}}


def _finite(values: dict[str, float]) -> dict[str, float | None]:
    """NaN and infinite values as None: what the store and run records hold."""
    return {k: (v if math.isfinite(v) else None) for k, v in values.items()}


_SHOWN = ("val_loss", "val_accuracy", "val_f1_macro", "val_pr_auc", "val_rmse", "val_r2")


@dataclass
class Outcome:
    metrics: dict[str, float]
    best_epoch: int
    epochs_run: int
    stopped_early: bool


def fit(
    ctx: JobContext,
    spec: Spec,
    data: Prepared,
    device: torch.device,
    checkpoint: Path | None = None,
    record: bool = True,
    rank: int = 0,
    world: int = 1,
) -> tuple[torch.nn.Module, Outcome]:
    """The training loop: resumable from `checkpoint`, bit-for-bit on CPU. With `record` off
    (repeated trainings inside a test job) no metrics or progress are written. With `world` > 1
    it is one rank of DDP: each rank takes its share of every batch, gradients are averaged,
    and only rank 0 writes checkpoints, metrics and progress."""
    import torch

    from jobs.architectures import build
    from jobs.bundle import atomic_torch_save

    spec, _ = resolve_length(spec, len(data.x_train), len(data.x_val))
    assert spec.epochs is not None
    epochs: int = spec.epochs
    torch.manual_seed(spec.seed)
    params = {"hidden": spec.hidden, "dropout": spec.dropout}
    try:
        model = build(spec.model, data.pre.in_features, data.pre.out_features, params).to(device)
    except ValueError as error:
        raise JobFailed(str(error)) from None
    primary = rank == 0
    record = record and primary
    say = ctx.log if primary else (lambda message: None)
    trained: torch.nn.Module = model
    if world > 1:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = _optimizer(spec, model)
    scheduler = _scheduler(spec, optimizer)
    weights = class_weights(spec, data.pre, data.y_train)
    criterion = make_criterion(
        spec, data.pre.task, torch.from_numpy(weights).to(device) if weights is not None else None
    )
    x_train = torch.from_numpy(data.x_train).to(device)
    y_train = torch.from_numpy(data.y_train).to(device)
    x_val = torch.from_numpy(data.x_val).to(device)
    y_val = torch.from_numpy(data.y_val).to(device)
    rows = len(x_train)
    steps_per_epoch = math.ceil(rows / spec.batch_size)
    warmup_steps = round(spec.warmup_epochs * steps_per_epoch)
    shuffle = torch.Generator().manual_seed(spec.seed)
    start_epoch, start_batch, order = 0, 0, None
    best: dict[str, Any] = {"value": None, "epoch": -1, "state": None, "since": 0}
    stopping = spec.stopping
    monitor = (stopping.metric if stopping else "") or (
        "val_accuracy" if data.pre.task == "classification" else "-val_loss"
    )
    monitor_name, higher = metric_order(monitor)
    min_delta = stopping.min_delta if stopping else 0.0
    if checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None and saved.get("scheduler"):
            scheduler.load_state_dict(saved["scheduler"])
        shuffle.set_state(saved["shuffle"])
        torch.set_rng_state(saved["rng"])
        start_epoch, start_batch, order = saved["epoch"], saved["batch"], saved["order"]
        best = saved["best"]
        ctx.store.drop_metrics_after(ctx.job.id, start_epoch * steps_per_epoch + start_batch)
        say(f"resumed from {checkpoint} at epoch {start_epoch + 1}, batch {start_batch}")
    metrics = _MetricBuffer(ctx, record)
    autocast = bf16_autocast(device)

    def save(epoch: int, batch: int, batch_order: torch.Tensor | None) -> None:
        if checkpoint is None or not primary:
            return
        atomic_torch_save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "shuffle": shuffle.get_state(),
                "rng": torch.get_rng_state(),
                "epoch": epoch,
                "batch": batch,
                "order": batch_order,
                "best": best,
            },
            checkpoint,
        )

    last_eval: dict[str, float] = {}
    stopped_early = False
    epoch = start_epoch
    for epoch in range(start_epoch, epochs):
        trained.train()
        if order is None:  # a checkpoint taken inside an epoch keeps its order
            order = torch.randperm(rows, generator=shuffle)
        epoch_loss, seen, started = 0.0, 0, time.perf_counter()
        for batch in range(start_batch, steps_per_epoch):
            stop = ctx.cancel_requested
            if world > 1:  # every rank stops at the same batch, or the others would hang
                flag = torch.tensor([1.0 if stop else 0.0])
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = bool(flag.item())
            if stop:
                save(epoch, batch, order)
                metrics.flush()
                raise Cancelled(
                    f"stopped by SIGTERM at epoch {epoch + 1}, batch {batch}; checkpoint saved, retry resumes"
                )
            index = order[batch * spec.batch_size : (batch + 1) * spec.batch_size]
            mine = index[rank::world] if world > 1 else index
            xb, yb = x_train[mine], y_train[mine]
            optimizer.zero_grad(set_to_none=True)
            if autocast:
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    out = trained(xb).float()
            else:  # entering a disabled autocast context still costs time on every step
                out = trained(xb)
            loss = criterion(out, yb)
            if world > 1:
                shared = loss.detach().clone()
                dist.all_reduce(shared, op=dist.ReduceOp.SUM)
                loss_value = shared.item() / world
            else:
                loss_value = loss.item()
            step = epoch * steps_per_epoch + batch + 1
            if not math.isfinite(loss_value):
                metrics.flush()
                raise JobFailed(
                    f"loss became {loss_value} at step {step} (epoch {epoch + 1}, batch {batch + 1}); try a lower lr or clip_grad"
                )
            loss.backward()  # type: ignore[no-untyped-call]
            if spec.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip_grad)
            if step <= warmup_steps:  # linear warm-up: lr * step / warmup_steps
                scheduled = [group["lr"] for group in optimizer.param_groups]
                for group in optimizer.param_groups:
                    group["lr"] *= step / warmup_steps
                optimizer.step()
                for group, lr_now in zip(optimizer.param_groups, scheduled, strict=True):
                    group["lr"] = lr_now
            else:
                optimizer.step()
            epoch_loss += loss_value * len(index)
            seen += len(index)
            metrics.add(step, {"train_loss": loss_value})
        start_batch = 0
        elapsed = time.perf_counter() - started
        model.eval()
        last_eval = evaluate(model, x_val, y_val, data.y_val_true, data.pre, criterion)
        lr = optimizer.param_groups[0]["lr"]
        last_step = (epoch + 1) * steps_per_epoch
        if last_step <= warmup_steps:  # the rate the epoch's last step used
            lr *= last_step / warmup_steps
        if scheduler is not None:
            scheduler.step()
        epoch_metrics: dict[str, float | None] = {
            "epoch": epoch + 1,
            "train_loss_epoch": epoch_loss / max(seen, 1),
            "lr": lr,
            "samples_per_s": seen / elapsed if elapsed > 0 else None,
            **_finite(last_eval),
        }
        if device.type == "cuda":
            epoch_metrics["gpu_mem_bytes"] = float(torch.cuda.max_memory_allocated(device))
        metrics.add((epoch + 1) * steps_per_epoch, epoch_metrics)
        metrics.flush()
        value = last_eval.get(monitor_name)
        if value is not None and not math.isfinite(value):
            value = None  # a NaN never improves
        better = value is not None and (
            best["value"] is None
            or (value > best["value"] + min_delta if higher else value < best["value"] - min_delta)
        )
        if better:
            best = {
                "value": value,
                "epoch": epoch,
                "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "since": 0,
            }
        else:
            best["since"] += 1
        summary = ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items() if k in _SHOWN)
        say(f"epoch {epoch + 1}/{epochs}: train_loss {epoch_loss / max(seen, 1):.4f}, {summary}")
        if record:
            ctx.progress(
                (epoch + 1) / epochs,
                f"epoch {epoch + 1}/{epochs}"
                + (f" {monitor_name} {value:.3f}" if value is not None else ""),
            )
        order = None
        save(epoch + 1, 0, None)
        if stopping and best["since"] >= stopping.patience:
            say(
                f"early stopping: {monitor_name} has not improved by more than {min_delta} for"
                f" {stopping.patience} epochs; keeping epoch {best['epoch'] + 1}"
            )
            stopped_early = True
            epoch += 1
            break
    else:
        epoch = epochs
    if not last_eval and start_epoch >= epochs:
        # Resumed from a checkpoint saved after the last epoch (stopped while it finished up):
        # no epoch ran here, so evaluate the saved weights, as the last epoch did.
        last_eval = evaluate(model, x_val, y_val, data.y_val_true, data.pre, criterion)
    if stopping and best["state"] is not None:
        model.load_state_dict(best["state"])
        last_eval = evaluate(model, x_val, y_val, data.y_val_true, data.pre, criterion)
    if spec.threshold == "f1":
        from jobs.metrics import softmax

        with torch.no_grad():
            scores = softmax(model(x_val).float().cpu().numpy())[:, 1]
        data.pre.threshold = best_f1_threshold(scores, data.y_val_true == 1)
        say(
            f"threshold {data.pre.threshold:.4f}: the best F1 of {data.pre.classes[1]!r} on validation"
        )
        last_eval = evaluate(model, x_val, y_val, data.y_val_true, data.pre, criterion)
    return model, Outcome(dict(last_eval), int(best["epoch"]) + 1, epoch, stopped_early)


def world_size(ctx: JobContext, spec: Spec) -> int:
    """Processes to train with: the GPUs granted, or `ddp_cpu_procs` (gloo on the CPU)."""
    if spec.ddp_cpu_procs > 1:
        return spec.ddp_cpu_procs
    return max(1, len(ctx.gpu_indices))


def launch_ddp(ctx: JobContext, world: int) -> None:
    """Run this job as `world` DDP ranks under torchrun (c10d rendezvous on loopback)."""
    import sys

    argv = [
        sys.executable, "-P", "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={world}", "-m", "jobs.train", str(ctx.job.id),
    ]  # fmt: skip
    ctx.log(f"training with DDP: {world} processes ({'nccl' if ctx.gpu_indices else 'gloo'})")
    code = subprocess.run(argv, check=False).returncode
    if code != 0:
        failure = ctx.run_dir / "failure"
        if failure.exists():
            raise JobFailed(failure.read_text().strip())
        log = ctx.run_dir / "log"
        text = log.read_text(errors="replace") if log.exists() else ""
        errors = re.findall(r"^\w*(?:Error|Exception)\b.*$", text, re.MULTILINE)
        raise JobFailed(f"torchrun exited with code {code}" + (f": {errors[-1]}" if errors else ""))


def run(ctx: JobContext) -> None:
    spec = ctx.spec(Spec)
    world = world_size(ctx, spec)
    if world > 1:
        launch_ddp(ctx, world)
        return
    train_rank(ctx, spec)


def train_rank(ctx: JobContext, spec: Spec, rank: int = 0, world: int = 1) -> None:
    """Train in this process (one rank when `world` > 1); rank 0 records the run."""
    import torch

    from jobs.bundle import save_bundle
    from workbench.catalog import lake, tracking

    try:
        table, info = lake.read_arrow(ctx.home, spec.dataset, spec.version, ctx.store, ctx.shared)
    except lake.LakeError as error:
        raise JobFailed(str(error)) from None
    where = f"dataset {info.dataset} v{info.version}"
    val_table, val_info = None, None
    if spec.val_dataset is not None:
        try:
            val_table, val_info = lake.read_arrow(
                ctx.home, spec.val_dataset, spec.val_version, ctx.store, ctx.shared
            )
        except lake.LakeError as error:
            raise JobFailed(f"key 'val_dataset': {error}") from None
    data = prepare_data(
        table,
        spec,
        where,
        val_table,
        f"dataset {val_info.dataset} v{val_info.version}" if val_info else "",
    )
    primary = rank == 0
    say = ctx.log if primary else (lambda message: None)
    spec, length = resolve_length(spec, len(data.x_train), len(data.x_val))
    say(data.task_reason)
    if length:
        say(length)
    for warning in data.warnings:
        say(f"warning: {warning}")
    say(f"validation: {data.validation}")
    if data.dropped_null_targets:
        say(f"{data.dropped_null_targets} rows without a {spec.target!r} value left out")
    device = _select_device(ctx, rank, world)
    env = environment(device, ctx.job.cwd)
    params = {k: v for k, v in asdict(spec).items() if k != "sweep"}
    record: dict[str, Any] = {
        "params": params,
        "dataset": {
            "name": info.dataset,
            "version": info.version,
            "content_hash": info.content_hash,
            "rows": info.rows,
        },
        "validation_dataset": {
            "name": val_info.dataset,
            "version": val_info.version,
            "content_hash": val_info.content_hash,
        }
        if val_info
        else None,
        "features": data.features,
        "task": data.pre.task,
        "task_reason": data.task_reason,
        "warnings": data.warnings,
        "classes": data.pre.classes,
        "dropped_null_targets": data.dropped_null_targets,
        "train_rows": len(data.x_train),
        "val_rows": len(data.x_val),
        "environment": env,
        "seed": spec.seed,
    }
    if primary:
        tracking.start_run(
            ctx.store,
            ctx.job.id,
            ctx.job.name,
            spec.model,
            data.pre.task,
            info,
            params,
            env,
            (spec.sweep or {}).get("metric"),
        )
    say(
        f"train {spec.model} on {where} ({len(data.x_train)} train / {len(data.x_val)} validation rows,"
        f" {data.pre.in_features} inputs, task {data.pre.task}) on {env['device_name']} ({device})"
    )
    try:
        model, outcome = fit(
            ctx, spec, data, device, ctx.checkpoint_dir / "last.pt", rank=rank, world=world
        )
    except torch.cuda.OutOfMemoryError as error:
        free, total = torch.cuda.mem_get_info(device)
        requested = (
            str(error).split("Tried to allocate", 1)[1].split(".", 1)[0].strip()
            if "Tried to allocate" in str(error)
            else None
        )
        raise JobFailed(oom_message(env["device_name"], requested, free, total)) from None
    if not primary:
        return
    architecture = {
        "name": spec.model,
        "params": {"hidden": spec.hidden, "dropout": spec.dropout},
        "in_features": data.pre.in_features,
        "out_features": data.pre.out_features,
    }
    bundle = ctx.artifact("model.pt")
    metrics = {k: v for k, v in _finite(outcome.metrics).items() if v is not None}
    record["threshold"] = data.pre.threshold
    meta = {**record, "metrics": metrics, "run_job_id": ctx.job.id}
    save_bundle(bundle, model.cpu(), architecture, data.pre, meta)
    record.update(
        {
            "metrics": metrics,
            "best_epoch": outcome.best_epoch,
            "epochs_run": outcome.epochs_run,
            "stopped_early": outcome.stopped_early,
            "bundle": str(bundle),
        }
    )
    ctx.write_json("run.json", record)
    tracking.finish_run(ctx.store, ctx.job.id, metrics, str(bundle))
    ctx.log(
        f"model saved to {bundle}: "
        + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in _SHOWN)
    )


def ddp_worker(job_id: int) -> int:
    """One torchrun rank: join the process group, train this rank's share, leave."""
    import traceback

    import torch
    import torch.distributed as dist

    from jobs.context import JobContext

    ctx = JobContext.from_environment(job_id)
    backend = "nccl" if ctx.gpu_indices and torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        train_rank(ctx, ctx.spec(Spec), rank, world)
    except Cancelled as stop:
        if rank == 0:
            ctx.fail(str(stop))
        return 143
    except JobFailed as failure:
        if rank == 0:
            ctx.fail(str(failure))
        return 1
    except Exception as error:
        traceback.print_exc()
        if rank == 0:
            ctx.fail(f"{type(error).__name__}: {error}")
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(ddp_worker(int(sys.argv[1])))
