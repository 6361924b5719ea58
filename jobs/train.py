"""The `train` kind: a PyTorch model on a lake dataset, seeded, checkpointed every epoch and on
SIGTERM, resumable with the same result, streaming metrics into the store. torch is imported
inside `run`: the CLI imports this module to validate specs."""

from __future__ import annotations

import json
import math
import platform
import random
import re
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jobs.context import Cancelled, JobContext, JobFailed
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
class Spec:
    """Train `model` on `dataset` (its latest version, or `version`) to predict `target`."""

    dataset: str
    target: str
    version: int | None = None
    features: list[str] | None = None
    model: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    dropout: float = 0.0
    task: Literal["auto", "classification", "regression"] = "auto"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: Literal["none", "cosine", "step"] = "none"
    seed: int = 0
    val_fraction: float = 0.2
    early_stopping: int = 0
    clip_grad: float | None = None
    ddp_cpu_procs: int = 0
    sweep: dict[str, Any] | None = None


def prepare(spec: Spec, base_dir: Path, where: str) -> Spec:
    """Check what can be checked before the job runs; a user model file is resolved and must exist."""
    from jobs.architectures import REGISTRY

    if spec.epochs < 1:
        raise SpecError(f"{where}: key 'epochs': must be at least 1")
    if spec.batch_size < 1:
        raise SpecError(f"{where}: key 'batch_size': must be at least 1")
    if not 0 <= spec.val_fraction < 1:
        raise SpecError(f"{where}: key 'val_fraction': must be in [0, 1)")
    if spec.lr <= 0:
        raise SpecError(f"{where}: key 'lr': must be positive")
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


# ---- sweeps -------------------------------------------------------------------------------


def parse_sweep(table: dict[str, Any], where: str) -> Sweep:
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
        if key not in SWEEP_KEYS:
            raise SpecError(
                f"{where}: key 'sweep.{key}': not a parameter a sweep can vary ({', '.join(sorted(SWEEP_KEYS))})"
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


def infer_task(column: Any, requested: str) -> Literal["classification", "regression"]:
    import pyarrow.compute as pc
    import pyarrow.types as pt

    if requested != "auto":
        return "classification" if requested == "classification" else "regression"
    if pt.is_floating(column.type) or pt.is_decimal(column.type):
        return "regression"
    if pt.is_integer(column.type) and len(pc.unique(column.drop_null())) > 20:
        return "regression"
    return "classification"


@dataclass
class Prepared:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    pre: Preprocessor
    features: list[str]
    dropped_null_targets: int


def split_indices(rows: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    order = np.random.default_rng(seed).permutation(rows)
    cut = round(rows * val_fraction)
    return np.sort(order[cut:]), np.sort(order[:cut])


def prepare_data(table: Any, spec: Spec, where: str) -> Prepared:
    import pyarrow.compute as pc

    from jobs.bundle import DataError, Preprocessor

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
    valid = pc.is_valid(table.column(spec.target))
    dropped = table.num_rows - pc.sum(valid).as_py() if table.num_rows else 0
    table = table.filter(valid)
    if table.num_rows < 2:
        raise JobFailed(f"{where} has {table.num_rows} rows with a target: too few to train on")
    task = infer_task(table.column(spec.target), spec.task)
    train_idx, val_idx = split_indices(table.num_rows, spec.val_fraction, spec.seed)
    train_table = table.take(train_idx)
    try:
        pre = Preprocessor.fit(train_table, features, spec.target, task)
        x_train = pre.transform(train_table)
        y_train = pre.encode_target(train_table)
        val_table = table.take(val_idx)
        x_val = pre.transform(val_table)
        y_val = (
            pre.encode_target(val_table) if task == "regression" else _encode_known(pre, val_table)
        )
    except DataError as error:
        raise JobFailed(str(error)) from None
    return Prepared(x_train, y_train, x_val, y_val, pre, features, int(dropped))


def _encode_known(pre: Preprocessor, table: Any) -> np.ndarray:
    """Validation labels; a class only in the validation split maps to -1 (never counted right)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    index = pc.index_in(
        pc.cast(table.column(pre.target), pa.string()), value_set=pa.array(pre.classes, pa.string())
    )
    return np.asarray(index.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


# ---- environment --------------------------------------------------------------------------


def git_commit(folder: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def environment(device: torch.device, cwd: str) -> dict[str, Any]:
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
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.epochs)
    if spec.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=max(1, spec.epochs // 3), gamma=0.1
        )
    return None


def evaluate(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, task: str
) -> dict[str, float]:
    import torch

    if len(x) == 0:
        return {}
    with torch.no_grad():
        out = model(x).float()
        if task == "classification":
            known = y >= 0
            loss = (
                torch.nn.functional.cross_entropy(out[known], y[known]).item()
                if known.any()
                else float("nan")
            )
            accuracy = (out.argmax(1) == y).float().mean().item()
            return {"val_loss": loss, "val_accuracy": accuracy}
        pred = out.squeeze(1)
        mse = torch.mean((pred - y) ** 2).item()
        return {"val_loss": mse, "val_rmse": math.sqrt(mse)}


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
    classification = data.pre.task == "classification"
    x_train = torch.from_numpy(data.x_train).to(device)
    y_train = torch.from_numpy(data.y_train).to(device)
    x_val = torch.from_numpy(data.x_val).to(device)
    y_val = torch.from_numpy(data.y_val).to(device)
    rows = len(x_train)
    steps_per_epoch = math.ceil(rows / spec.batch_size)
    shuffle = torch.Generator().manual_seed(spec.seed)
    start_epoch, start_batch, order = 0, 0, None
    best: dict[str, Any] = {"value": None, "epoch": -1, "state": None, "since": 0}
    monitor = "val_accuracy" if classification else "val_loss"
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
    autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()

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
    for epoch in range(start_epoch, spec.epochs):
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
            loss = (
                torch.nn.functional.cross_entropy(out, yb)
                if classification
                else torch.nn.functional.mse_loss(out.squeeze(1), yb)
            )
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
            optimizer.step()
            epoch_loss += loss_value * len(index)
            seen += len(index)
            metrics.add(step, {"train_loss": loss_value})
        start_batch = 0
        elapsed = time.perf_counter() - started
        model.eval()
        last_eval = evaluate(model, x_val, y_val, data.pre.task)
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        epoch_metrics: dict[str, float | None] = {
            "epoch": epoch + 1,
            "train_loss_epoch": epoch_loss / max(seen, 1),
            "lr": lr,
            "samples_per_s": seen / elapsed if elapsed > 0 else None,
            **last_eval,
        }
        if device.type == "cuda":
            epoch_metrics["gpu_mem_bytes"] = float(torch.cuda.max_memory_allocated(device))
        metrics.add((epoch + 1) * steps_per_epoch, epoch_metrics)
        metrics.flush()
        value = last_eval.get(monitor)
        better = value is not None and (
            best["value"] is None
            or (value > best["value"] if classification else value < best["value"])
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
        summary = ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items())
        say(
            f"epoch {epoch + 1}/{spec.epochs}: train_loss {epoch_loss / max(seen, 1):.4f}, {summary}"
        )
        if record:
            ctx.progress(
                (epoch + 1) / spec.epochs,
                f"epoch {epoch + 1}/{spec.epochs}"
                + (f" {monitor} {value:.3f}" if value is not None else ""),
            )
        order = None
        save(epoch + 1, 0, None)
        if spec.early_stopping and best["since"] >= spec.early_stopping:
            say(f"early stopping: {monitor} has not improved for {spec.early_stopping} epochs")
            stopped_early = True
            epoch += 1
            break
    else:
        epoch = spec.epochs
    if spec.early_stopping and best["state"] is not None:
        model.load_state_dict(best["state"])
        last_eval = evaluate(model, x_val, y_val, data.pre.task)
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
        table, info = lake.read_arrow(ctx.home, spec.dataset, spec.version, ctx.store)
    except lake.LakeError as error:
        raise JobFailed(str(error)) from None
    where = f"dataset {info.dataset} v{info.version}"
    data = prepare_data(table, spec, where)
    primary = rank == 0
    say = ctx.log if primary else (lambda message: None)
    if data.dropped_null_targets:
        say(f"{data.dropped_null_targets} rows without a {spec.target!r} value left out")
    device = _select_device(ctx, rank, world)
    env = environment(device, ctx.job.cwd)
    params = {k: v for k, v in asdict(spec).items() if k != "sweep"}
    record = {
        "params": params,
        "dataset": {
            "name": info.dataset,
            "version": info.version,
            "content_hash": info.content_hash,
            "rows": info.rows,
        },
        "features": data.features,
        "task": data.pre.task,
        "classes": data.pre.classes,
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
    meta = {**record, "metrics": outcome.metrics, "run_job_id": ctx.job.id}
    save_bundle(bundle, model.cpu(), architecture, data.pre, meta)
    record.update(
        {
            "metrics": outcome.metrics,
            "best_epoch": outcome.best_epoch,
            "epochs_run": outcome.epochs_run,
            "stopped_early": outcome.stopped_early,
            "bundle": str(bundle),
        }
    )
    ctx.artifact("run.json").write_text(json.dumps(record, indent=2, default=str))
    tracking.finish_run(ctx.store, ctx.job.id, outcome.metrics, str(bundle))
    ctx.log(
        f"model saved to {bundle}: " + ", ".join(f"{k} {v:.4f}" for k, v in outcome.metrics.items())
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
