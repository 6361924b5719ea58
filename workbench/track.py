"""The tracking API for any job: `import workbench.track as wt`, then `wt.params`, `wt.log`,
`wt.progress`, `wt.artifact`, `wt.dataset`, `wt.register_model` and the restart/stop helpers.

Standard library only and cheap at import (no torch, DuckDB or SQLite connection until a call
needs one). Inside a workbench job (WORKBENCH_JOB_ID and WORKBENCH_RUN_DIR set) every call appends
typed records (one JSON object a line) to the job's records file, `records.jsonl` in its run
folder, the same way on this machine and on a Slurm node; the daemon validates them and applies
each once (workbench/db/track_records.py). Outside the workbench the same script runs unchanged:
the calls do nothing and one note goes to stderr.

Durability: records are buffered in the process and written by one `write` on an O_APPEND
descriptor at least every FLUSH_INTERVAL_S seconds (a background thread) or every FLUSH_POINTS
records, and at interpreter exit; so `kill -9` of the job loses at most the records of the last
FLUSH_INTERVAL_S seconds (and never more than FLUSH_POINTS of them). `flush()` writes at once.

Tracking never raises into the training loop, with one exception: `dataset()` raises
DatasetError for a dataset or version the lake does not have, since the script cannot go on
without its data. Bad values are handled as the built-in train kind handles them: NaN is stored
as a missing value, +-inf as itself; a value that is no number (a string, a list, a tensor of
several elements) or a call with more than MAX_METRICS metrics is refused with one warning on
stderr per metric name (or per kind of problem), and the script goes on.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

RECORDS_FILE = "records.jsonl"
FLUSH_INTERVAL_S = 0.5
FLUSH_POINTS = 1000
MAX_METRICS = 1000
MAX_NAME_CHARS = 200
MAX_PARAMS_BYTES = 64 * 1024
MODEL_FORMATS = ("torchscript", "onnx", "state_dict")


class DatasetError(LookupError):
    """`dataset()` was asked for a dataset or version the lake does not have (or, outside the
    workbench, no lake can be found)."""


def _warn(message: str) -> None:
    try:
        print(f"workbench.track: {message}", file=sys.stderr, flush=True)
    except Exception:
        pass


class _Writer:
    """The job's records file: a buffer of records, written whole lines at a time by one
    `os.write` on an O_APPEND descriptor (a reader never sees half a line)."""

    def __init__(self, path: Path):
        self.path = path
        self._buffer: list[str] = []
        self._lock = threading.Lock()
        self._fd = -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def add(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"))
        with self._lock:
            self._buffer.append(line)
            full = len(self._buffer) >= FLUSH_POINTS
            start = self._thread is None
            if start:
                self._thread = threading.Thread(
                    target=self._loop, name="workbench-track", daemon=True
                )
        if start:
            assert self._thread is not None
            self._thread.start()
            atexit.register(self.flush)
            # A multiprocessing worker (a DataLoader's) ends with os._exit, which runs no atexit
            # handler, only multiprocessing's finalizers; its registry is emptied when the
            # worker starts, so this is registered here, at the worker's first record.
            util = sys.modules.get("multiprocessing.util")
            if util is not None:
                util.Finalize(None, self.flush, exitpriority=0)
        if full:
            self.flush()

    def after_fork(self) -> None:
        """In a forked child (a DataLoader worker): the parent's buffered records are the
        parent's to write (never twice); the child writes its own through its own thread."""
        self._lock = threading.Lock()
        self._buffer = []
        self._fd = -1
        self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL_S):
            self.flush()

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        size = os.fstat(fd).st_size
        if size:  # a line cut short by a kill of an earlier start is closed, not glued onto
            with open(self.path, "rb") as handle:
                handle.seek(size - 1)
                if handle.read(1) != b"\n":
                    os.write(fd, b"\n")
        return fd

    def flush(self) -> None:
        with self._lock:
            if not self._buffer:
                return
            data = ("\n".join(self._buffer) + "\n").encode()
            self._buffer = []
            try:
                if self._fd < 0:
                    self._fd = self._open()
                os.write(self._fd, data)
            except OSError as error:
                _warn(f"cannot write {self.path} ({error}); records dropped")


class _Tracker:
    """The state of tracking in this process (one per process; see `_tracker()`)."""

    def __init__(self) -> None:
        job = os.environ.get("WORKBENCH_JOB_ID", "")
        run_dir = os.environ.get("WORKBENCH_RUN_DIR", "")
        self.job_id = int(job) if job.isdigit() else None
        self.run_dir = Path(run_dir) if run_dir and self.job_id is not None else None
        self.writer: _Writer | None = None
        if self.run_dir is not None:
            records = os.environ.get("WORKBENCH_RECORDS") or str(self.run_dir / RECORDS_FILE)
            self.writer = _Writer(Path(records))
        self.step = _last_step(self.writer.path) if self.writer is not None and restarts() else -1
        self.warned: set[str] = set()
        self.noted = False

    def active(self) -> bool:
        if self.writer is None and not self.noted:
            self.noted = True
            _warn("not running as a workbench job: tracking calls do nothing")
        return self.writer is not None

    def warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            _warn(message)

    def emit(self, record: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.add(record)


def _last_step(records: Path, tail_bytes: int = 1 << 16) -> int:
    """The last metrics step an earlier start of this job wrote (-1 when none): a restarted
    job's `log()` without a step goes on from it, so its curves continue."""
    try:
        with open(records, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - tail_bytes))
            lines = handle.read().splitlines()
    except OSError:
        return -1
    for line in reversed(lines):
        if line.startswith(b'{"kind":"metrics"'):
            try:
                return int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                continue
    return -1


_state: _Tracker | None = None
_state_lock = threading.Lock()


def _tracker() -> _Tracker:
    global _state
    if _state is None:
        with _state_lock:
            if _state is None:
                _state = _Tracker()
    return _state


def _after_fork_in_child() -> None:
    global _state_lock
    _state_lock = threading.Lock()
    if _state is not None and _state.writer is not None:
        _state.writer.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _reset_for_tests() -> None:
    """Forget the process's tracking state (a test changes the environment between calls)."""
    global _state
    if _state is not None and _state.writer is not None:
        _state.writer.flush()
    _state = None


def _number(value: Any) -> float | None:
    """A metric value as a float (NaN kept: the store records it as missing); None when it is no
    number. Accepts ints, floats, bools, and anything with `__float__` (numpy scalars, one-element
    tensors)."""
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, str | bytes) or not hasattr(value, "__float__"):
        return None
    try:
        if callable(getattr(value, "item", None)):  # numpy scalars, tensors: no grad warning
            value = value.item()
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return None


def _json_value(value: float) -> float | str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


# ---- the API ------------------------------------------------------------------------------


def enabled() -> bool:
    """Whether this process is a workbench job whose records are tracked."""
    return _tracker().writer is not None


def job_id() -> int | None:
    """The workbench job id of this process, None outside the workbench."""
    return _tracker().job_id


def params(values: dict[str, Any]) -> None:
    """The run's parameters (merged into those recorded before). Values should be JSON-like
    (numbers, strings, booleans, lists, dicts); anything else is recorded as its `str`. A
    set larger than MAX_PARAMS_BYTES of JSON is refused with a warning."""
    try:
        tracker = _tracker()
        if not tracker.active():
            return
        if not isinstance(values, dict):
            tracker.warn_once("params", f"params() takes a dict, not {type(values).__name__}")
            return
        clean = {str(k)[:MAX_NAME_CHARS]: v for k, v in values.items()}
        text = json.dumps(clean, default=str, allow_nan=False)
        if len(text) > MAX_PARAMS_BYTES:
            tracker.warn_once(
                "params-size", f"params() of {len(text)} bytes refused (at most {MAX_PARAMS_BYTES})"
            )
            return
        tracker.emit({"kind": "params", "values": json.loads(text), "t": time.time()})
    except Exception as error:  # tracking never stops training
        _tracker().warn_once("params-error", f"params() failed: {error}")


def log(metrics: dict[str, Any], step: int | None = None, epoch: float | None = None) -> None:
    """Metric values at one point: `step` (an int; by default one more than the last step
    logged), `epoch` (recorded as the metric `epoch` at the same step). The time is recorded
    too, so curves can be drawn by step, epoch or time."""
    tracker = _tracker()
    if tracker.writer is None:
        tracker.active()
        return
    try:
        if not isinstance(metrics, dict):
            tracker.warn_once("log", f"log() takes a dict, not {type(metrics).__name__}")
            return
        if len(metrics) > MAX_METRICS:
            tracker.warn_once(
                "log-size", f"log() with {len(metrics)} metrics refused (at most {MAX_METRICS})"
            )
            return
        if step is None:
            step = tracker.step + 1
        elif not isinstance(step, int) or isinstance(step, bool):
            number = _number(step)
            if number is None or not math.isfinite(number):
                tracker.warn_once("step", f"step {step!r} is no integer; points not recorded")
                return
            step = int(number)
        if not -(2**63) <= step < 2**63:  # SQLite's INTEGER: the daemon could not store it
            tracker.warn_once("step-range", f"step {step} is past 64 bits; points not recorded")
            return
        tracker.step = max(tracker.step, step)
        values: dict[str, float | str] = {}
        for name, value in metrics.items():
            number = _number(value)
            if number is None or not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
                tracker.warn_once(
                    f"metric:{name!r}"[:300],
                    f"metric {str(name)[:60]!r}: {type(value).__name__} value is no number (or the"
                    " name is no short string); it is not recorded",
                )
                continue
            values[name] = _json_value(number) if not math.isfinite(number) else number
        if epoch is not None:
            number = _number(epoch)
            if number is not None:
                values["epoch"] = _json_value(number) if not math.isfinite(number) else number
        if values:
            tracker.emit({"kind": "metrics", "step": step, "t": time.time(), "values": values})
    except Exception as error:
        tracker.warn_once("log-error", f"log() failed: {error}")


def progress(fraction: float | None, message: str | None = None) -> None:
    """Fraction done (0..1, clamped) and a short message, shown in the queue."""
    try:
        tracker = _tracker()
        if not tracker.active():
            return
        number = _number(fraction) if fraction is not None else None
        if number is not None and not math.isfinite(number):
            number = None
        if number is not None:
            number = min(1.0, max(0.0, number))
        text = None if message is None else str(message)[:200]
        tracker.emit({"kind": "progress", "fraction": number, "message": text})
    except Exception as error:
        _tracker().warn_once("progress-error", f"progress() failed: {error}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact(path: str | os.PathLike[str], name: str | None = None) -> Path | None:
    """Record a file this job produced: copied into the run folder's `artifacts/` (unless it is
    inside the run folder already). Returns its path there (the given path outside the
    workbench), or None when it cannot be recorded (with a warning)."""
    source = Path(path)
    tracker = _tracker()
    if not tracker.active() or tracker.run_dir is None:
        return source
    try:
        if not source.is_file():
            tracker.warn_once(f"artifact:{source}", f"artifact {source}: no such file")
            return None
        kept = _keep(source, tracker.run_dir, "artifacts", name)
        tracker.emit(
            {"kind": "artifact", "path": str(kept), "bytes": kept.stat().st_size, "t": time.time()}
        )
        return kept
    except Exception as error:
        tracker.warn_once("artifact-error", f"artifact({source}) failed: {error}")
        return None


def _keep(source: Path, run_dir: Path, folder: str, name: str | None) -> Path:
    resolved = source.resolve()
    if resolved.is_relative_to(run_dir.resolve()) and name is None:
        return resolved
    target = run_dir / folder / (name or source.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return target


_RELATIONS: Any = None  # the in-memory DuckDB connection `Dataset.relation()` reads on


class Dataset:
    """One version of a lake dataset, as `dataset()` returns it: `name`, `version`,
    `content_hash`, `rows`, `files` (its Parquet files, sorted) and `relation()` (a DuckDB
    relation over them, when duckdb is installed; an encrypted version is read with the lake's
    key, see `catalog.lake.lake_key`)."""

    def __init__(self, name: str, version: int, content_hash: str, rows: int, path: Path) -> None:
        self.name = name
        self.version = version
        self.content_hash = content_hash
        self.rows = rows
        self.path = path
        self.files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]

    def relation(self, connection: Any = None) -> Any:
        """A DuckDB relation reading this version's files (on `connection`, or a new in-memory
        one). Raises ImportError when duckdb is not installed."""
        import duckdb

        if connection is None:
            # DuckDB 1.4's relation does not keep its connection alive: the module does.
            global _RELATIONS
            if _RELATIONS is None:
                _RELATIONS = duckdb.connect()
            connection = _RELATIONS
        files = [str(f) for f in self.files]
        from workbench.catalog import encryption

        if not any(encryption.is_encrypted(f) for f in files):
            return connection.read_parquet(files)
        from workbench.catalog import lake
        from workbench.paths import Home

        lake.unlock(connection, Home(_home()), files, f"dataset {self.name!r} (encrypted)")
        return connection.sql(f"SELECT * FROM {lake.parquet_source(files, True)}")

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, v{self.version}, {len(self.files)} files)"


def _home() -> Path:
    explicit = os.environ.get("WORKBENCH_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "workbench"


def _node_dataset_version(
    state_db: Path, name: str, version: int | None
) -> tuple[tuple[Any, ...] | None, list[int], list[str]]:
    """`lake_read.dataset_version`, as a job on a cluster node must see it: its dependencies'
    datasets may be on the shared filesystem before the daemon has applied their records (or
    with no daemon alive), so there the catalog is read from a copy of state.db caught up with
    them (workbench.daemon.upstream.node_copy). Raises OSError when state.db cannot be read."""
    from workbench.db.lake_read import dataset_version

    job = os.environ.get("WORKBENCH_JOB_ID", "")
    run_dir = os.environ.get("WORKBENCH_RUN_DIR", "")
    if not (os.environ.get("WORKBENCH_RECORDS") and job.isdigit() and run_dir):
        return dataset_version(state_db, name, version)
    from workbench.daemon.upstream import node_copy
    from workbench.db.lake_read import read_catalog
    from workbench.db.store import StoreError

    try:
        copy = node_copy(state_db, int(job), Path(run_dir).parent)
    except StoreError as error:
        raise OSError(str(error)) from None
    try:
        return read_catalog(copy.conn, name, version)
    finally:
        copy.close()


def dataset(name: str, version: int | None = None) -> Dataset:
    """The Parquet files of version `version` (the latest when None) of lake dataset `name`,
    and its lineage (name, version, content hash) recorded on this job's run. Works outside a
    job too (reading the lake of WORKBENCH_HOME), recording nothing. Raises DatasetError when
    the dataset or the version does not exist (the message lists what does)."""
    state_db = _home() / "state.db"
    if not state_db.is_file():
        raise DatasetError(f"dataset {name!r}: no workbench store at {state_db}")
    try:
        row, versions, known = _node_dataset_version(state_db, name, version)
    except OSError as error:
        raise DatasetError(f"dataset {name!r}: cannot read {state_db}: {error}") from None
    if row is None:
        if versions:
            listed = ", ".join(f"v{v}" for v in versions)
            raise DatasetError(f"dataset {name!r} has no version {version} (it has {listed})")
        shown = ", ".join(known[:20]) or "none"
        raise DatasetError(f"no dataset named {name!r} in the lake (datasets: {shown})")
    found = Dataset(name, int(row[0]), str(row[1]), int(row[2]), Path(row[3]))
    tracker = _tracker()
    if tracker.writer is not None:
        tracker.emit(
            {
                "kind": "dataset",
                "name": name,
                "version": found.version,
                "content_hash": found.content_hash,
                "t": time.time(),
            }
        )
    return found


def register_model(
    path: str | os.PathLike[str],
    *,
    features: list[str],
    target: str,
    task: str = "classification",
    classes: list[str] | None = None,
    build: str | None = None,
    fmt: str | None = None,
    name: str | None = None,
) -> Path | None:
    """Register a model file this job wrote into the models catalog, so that a `test` or
    `export` stage can take it (`model = "<this stage>"`) like a built-in run's model.

    `path`: a TorchScript file (`torch.jit.save`), an ONNX file, or a state dict
    (`torch.save(model.state_dict())`) with `build`, a `module:function` or `file.py:function`
    that returns the untrained module as `function(in_features, out_features)`. The model takes
    the raw numeric `features` columns (float32, in that order) and returns, for
    `task="classification"`, one logit per class of `classes` (by default the target's distinct
    values sorted as strings), for `"regression"` the prediction in the target's units.
    `fmt` is told from the extension when None (.onnx, .pt/.pth with `build` -> state_dict,
    else torchscript). The file is copied into the run folder's `models/`. Returns that path
    (the given path outside the workbench), or None when it is refused (with a warning)."""
    source = Path(path)
    tracker = _tracker()
    if not tracker.active() or tracker.run_dir is None:
        return source
    try:
        if fmt is None:
            fmt = (
                "onnx"
                if source.suffix == ".onnx"
                else ("state_dict" if build is not None else "torchscript")
            )
        problems = []
        if fmt not in MODEL_FORMATS:
            problems.append(f"format {fmt!r} (known: {', '.join(MODEL_FORMATS)})")
        if fmt == "state_dict" and not build:
            problems.append("a state dict needs build='module:function'")
        if task not in ("classification", "regression"):
            problems.append(f"task {task!r} (classification or regression)")
        if not features or not all(isinstance(f, str) for f in features):
            problems.append("features must be a non-empty list of column names")
        if not source.is_file():
            problems.append(f"no such file {source}")
        if problems:
            tracker.warn_once(
                f"model:{source}", f"register_model({source}) refused: {'; '.join(problems)}"
            )
            return None
        if build is not None:
            build = _build_file(build)
        kept = _keep(source, tracker.run_dir, "models", name)
        tracker.emit(
            {
                "kind": "model",
                "path": str(kept),
                "format": fmt,
                "sha256": _sha256(kept),
                "features": list(features),
                "target": str(target),
                "task": task,
                "classes": [str(c) for c in classes] if classes is not None else None,
                "build": build,
                "t": time.time(),
            }
        )
        return kept
    except Exception as error:
        tracker.warn_once("model-error", f"register_model({source}) failed: {error}")
        return None


def _build_file(reference: str) -> str:
    """`module:function` or `file.py:function` -> `/absolute/file.py:function`, so that a test or
    export job (another directory, another sys.path) imports the same code."""
    target, _, function = reference.rpartition(":")
    if not target or not function:
        raise ValueError(f"build {reference!r}: expected 'module:function' or 'file.py:function'")
    if target.endswith(".py"):
        return f"{Path(target).resolve()}:{function}"
    import importlib.util

    spec = importlib.util.find_spec(target)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise ValueError(f"build {reference!r}: cannot find module {target!r}")
    return f"{spec.origin}:{function}"


def flush() -> None:
    """Write the buffered records now."""
    writer = _tracker().writer
    if writer is not None:
        writer.flush()


# ---- restarts and stopping (set by the daemon in the job's environment) ---------------------


def checkpoint_dir() -> Path:
    """A folder kept across restarts of this job (WORKBENCH_CHECKPOINT_DIR; else the run
    folder's `checkpoints/`; outside the workbench `./checkpoints`). Created if missing."""
    explicit = os.environ.get("WORKBENCH_CHECKPOINT_DIR")
    run_dir = _tracker().run_dir
    path = Path(explicit) if explicit else (run_dir or Path.cwd()) / "checkpoints"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _warn(f"cannot create {path}: {error}")
    return path


def restarts() -> int:
    """How many earlier starts this job had (WORKBENCH_RESTARTS; 0 on the first, or outside)."""
    raw = os.environ.get("WORKBENCH_RESTARTS", "")
    return int(raw) if raw.isdigit() else 0


def is_resume() -> bool:
    """Whether this start continues an earlier one (a restart after preemption or requeue)."""
    return restarts() > 0


def stop_requested() -> str | None:
    """The reason the workbench asked this job to stop (the text of WORKBENCH_STOP_FILE, or
    "stop requested" when it is empty), None while no stop was asked (or outside)."""
    path = os.environ.get("WORKBENCH_STOP_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or "stop requested"
    except OSError:
        return None
