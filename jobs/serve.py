"""The `serve` kind: an exported ONNX model behind an HTTP endpoint, as a queue job.

`POST /predict` takes `{"rows": [{"<input>": value, ...}, ...]}` (the model's named inputs:
numbers for numeric columns in the units the card states, text for the others, null for
missing) and answers `{"predictions": [...]}` (with `probabilities` and `classes` for a
classifier), equal to what `test` computes for the same rows. Requests are batched: up to
`max_batch` rows, or whatever arrived within `max_wait_ms` of the first, go to onnxruntime in
one call. `GET /health` answers 200 with the model and the request counts. The server is
Starlette on uvicorn (ASGI), bound to loopback unless `host` names another address; a bad
request gets a 4xx with a message naming the input. On cancel (SIGTERM) uvicorn stops
accepting, answers what is in flight, and the job ends. Request counts and latency
percentiles go to the job's progress line (`ls`, `show`), its metrics and `serve.json`.

It starts only for a catalog model (`workbench models`) whose parity passed and whose test,
if any, passed its gates. onnxruntime and uvicorn are imported in `run` only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from jobs.context import JobContext, JobFailed
from workbench.queue.spec import SpecError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import numpy as np

    from jobs.bundle import Preprocessor

DEFAULTS = {"cpus": 1.0, "preemptible": False}
"""A server is never preempted unless its spec says `preemptible = true`."""

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_ROWS = 10_000
"""Rows one request may carry (413 above)."""
MAX_BODY = 16 * 1024 * 1024
"""Bytes one request body may have (413 above)."""


@dataclass(frozen=True)
class Spec:
    """`model`: an export stage of the same pipeline, an export job's catalog model id
    (`model_id`), or a `.onnx` file the catalog knows; `port` 0 picks a free one (written to
    serve.json and the progress line)."""

    model: str
    host: str = "127.0.0.1"
    port: int = 0
    max_batch: int = 64
    max_wait_ms: float = 2.0


def prepare(spec: Spec, base_dir: Path, where: str) -> Spec:
    """Submit-time checks of the port, batching and file; raises SpecError naming the key."""
    if not 0 <= spec.port <= 65535:
        raise SpecError(f"{where}: key 'port': 0 (any free port) or 1-65535")
    if spec.max_batch < 1:
        raise SpecError(f"{where}: key 'max_batch': at least 1")
    if not 0 <= spec.max_wait_ms <= 1000:
        raise SpecError(f"{where}: key 'max_wait_ms': between 0 and 1000")
    if not spec.host.strip():
        raise SpecError(f"{where}: key 'host': give an address (127.0.0.1 by default)")
    if spec.model.endswith(".pt"):
        raise SpecError(
            f"{where}: key 'model': serve takes an exported .onnx model; export it first"
        )
    if spec.model.endswith(".onnx"):
        resolved = (base_dir / spec.model).resolve()
        if not resolved.is_file():
            raise SpecError(f"{where}: key 'model': no such file {resolved}")
        return replace(spec, model=str(resolved))
    return spec


class BadRequest(ValueError):
    """A request the model cannot take; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def feed_from_rows(rows: Any, pre: Preprocessor) -> dict[str, np.ndarray]:
    """JSON rows -> the graph's named inputs, (n, 1) each: numbers float64 (null -> NaN), text
    object strings (null -> ""). Raises BadRequest naming the input or row at fault.

    The numeric inputs are gathered into one (n, k) list and converted by numpy in one call
    once their Python types were checked a column at a time (`set(map(type, ...))`), rather
    than value by value: the per-request cost the serve bench's profile showed."""
    import numpy as np

    if not isinstance(rows, list) or not rows:
        raise BadRequest('"rows" must be a non-empty list of objects, one per row')
    if len(rows) > MAX_ROWS:
        raise BadRequest(f"{len(rows)} rows in one request; at most {MAX_ROWS}", 413)
    names = [c.name for c in pre.columns]
    expected = set(names)
    for number, row in enumerate(rows):
        if not isinstance(row, dict) or row.keys() != expected:
            _refuse_row(number, row, names)
    numeric = [c.name for c in pre.columns if c.kind == "numeric"]
    feed: dict[str, np.ndarray] = {}
    if numeric:
        matrix = [[row[n] for n in numeric] for row in rows]
        if not {type(v) for line in matrix for v in line} <= _NUMBER_TYPES:
            _refuse_value(rows, numeric, pre)
        try:
            numbers = np.array(matrix, dtype=np.float64)
        except OverflowError:  # an integer past float64's range (about 1.8e308)
            _refuse_huge(rows, numeric)
        by_column = np.ascontiguousarray(numbers.T)
        feed = {n: by_column[j].reshape(-1, 1) for j, n in enumerate(numeric)}
    for column in pre.columns:
        if column.kind == "numeric":
            continue
        values = [row[column.name] for row in rows]
        types = set(map(type, values))
        if not types <= _TEXT_TYPES:
            bad = next(k for k, v in enumerate(values) if type(v) not in _TEXT_TYPES)
            raise BadRequest(
                f"row {bad}: input {column.name!r} takes text, got {values[bad]!r}", 422
            )
        if type(None) in types:
            values = ["" if v is None else v for v in values]
        feed[column.name] = np.array(values, dtype=object).reshape(-1, 1)
    return {n: feed[n] for n in names}


_NUMBER_TYPES = {int, float, type(None)}
"""JSON numbers and null (bool is its own type: `true` is refused, not taken as 1)."""
_TEXT_TYPES = {str, type(None)}


def _refuse_row(number: int, row: Any, names: list[str]) -> None:
    """Raise BadRequest for row `number`, which is no object or has other inputs than `names`."""
    if not isinstance(row, dict):
        raise BadRequest(f"row {number}: expected an object of inputs, got {type(row).__name__}")
    unknown = [k for k in row if k not in names]
    if unknown:
        raise BadRequest(
            f"row {number}: unknown input {unknown[0]!r}; the model takes {', '.join(names)}"
        )
    missing = [n for n in names if n not in row]
    raise BadRequest(f"row {number}: missing input {missing[0]!r} (give null for a missing value)")


def _refuse_value(rows: list[dict[str, Any]], numeric: list[str], pre: Preprocessor) -> None:
    """Raise BadRequest (422) naming the first row and numeric input whose value is no number."""
    units = {c.name: c.describe()["unit"] for c in pre.columns}
    for number, row in enumerate(rows):
        for name in numeric:
            value = row[name]
            if type(value) not in _NUMBER_TYPES:
                raise BadRequest(
                    f"row {number}: input {name!r} takes a number ({units[name]}), got {value!r}",
                    422,
                )


def _refuse_huge(rows: list[dict[str, Any]], numeric: list[str]) -> NoReturn:
    """Raise BadRequest (422) naming the first row and input holding an integer past float64's
    range (JSON allows any number of digits; `10**400` cannot be fed to the model)."""
    for number, row in enumerate(rows):
        for name in numeric:
            try:
                float(row[name] or 0)
            except OverflowError:
                raise BadRequest(
                    f"row {number}: input {name!r}: {str(row[name])[:40]}... is beyond float64's"
                    " range (about 1.8e308)",
                    422,
                ) from None
    raise BadRequest("a number beyond float64's range (about 1.8e308)", 422)


def answer(outputs: np.ndarray, pre: Preprocessor) -> dict[str, Any]:
    """Graph outputs for some rows -> the JSON answer: labels and probabilities (with the
    model's decision threshold), or predictions in the target's units."""
    import numpy as np

    from jobs.metrics import predict_labels, softmax

    if pre.task == "classification":
        proba = softmax(np.asarray(outputs))
        labels = predict_labels(proba, pre.threshold)
        return {
            "predictions": [pre.classes[k] for k in labels],
            "probabilities": proba.tolist(),
            "classes": pre.classes,
        }
    return {"predictions": np.asarray(outputs, dtype=np.float64)[:, 0].tolist()}


class Stats:
    """Requests answered, refused and failed, rows, and request latencies (ms, the last 10,000)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = self.refused = self.errors = self.rows = self.batches = 0
        self.latencies: list[float] = []
        self.started = time.time()

    def record(self, ms: float, rows: int) -> None:
        with self.lock:
            self.requests += 1
            self.rows += rows
            self.latencies.append(ms)
            del self.latencies[:-10_000]

    def snapshot(self) -> dict[str, Any]:
        """Counts and p50/p90/p99 latency in ms (None before the first request)."""
        with self.lock:
            ordered = sorted(self.latencies)
            counts = {
                "requests": self.requests,
                "refused": self.refused,
                "errors": self.errors,
                "rows": self.rows,
                "batches": self.batches,
            }

        def at(q: float) -> float | None:
            return (
                ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else None
            )

        return {
            **counts,
            "p50_ms": at(0.5),
            "p90_ms": at(0.9),
            "p99_ms": at(0.99),
            "uptime_s": time.time() - self.started,
        }


class Batcher:
    """Collects requests' feeds into batches of up to `max_batch` rows (or what arrived within
    `max_wait_ms` of the first) and runs each batch with one onnxruntime call in a worker
    thread, so the event loop keeps accepting. It waits only while more requests are on their
    way (`arriving`: received, their bodies not yet parsed); a lone request runs at once rather
    than after max_wait_ms (the serve bench's 1-client p50 was that wait)."""

    def __init__(self, session: Any, max_batch: int, max_wait_ms: float, stats: Stats):
        self.session = session
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.stats = stats
        self.queue: asyncio.Queue[tuple[dict[str, np.ndarray], asyncio.Future[Any]]] | None = None
        self.task: asyncio.Task[None] | None = None
        self.arriving = 0

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def predict(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        assert self.queue is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self.queue.put((feed, future))
        result: np.ndarray = await future
        return result

    async def _loop(self) -> None:
        import numpy as np

        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            batch = [first]
            rows = len(next(iter(first[0].values())))
            deadline = loop.time() + self.max_wait
            while rows < self.max_batch:
                if self.queue.empty() and self.arriving == 0:
                    break  # nothing else on its way: waiting would only add latency
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout)
                except TimeoutError:
                    break
                batch.append(item)
                rows += len(next(iter(item[0].values())))
            names = list(first[0])
            feed = {n: np.concatenate([f[n] for f, _ in batch]) for n in names}
            try:
                outputs = await loop.run_in_executor(None, self.session.run, None, feed)
            except Exception as error:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            with self.stats.lock:
                self.stats.batches += 1
            start = 0
            for part, future in batch:
                size = len(next(iter(part.values())))
                if not future.done():
                    future.set_result(np.asarray(outputs[0])[start : start + size])
                start += size


def build_app(
    session: Any, pre: Preprocessor, spec: Spec, stats: Stats, about: dict[str, Any]
) -> Any:
    """The Starlette app: POST /predict, GET /health."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    batcher = Batcher(session, spec.max_batch, spec.max_wait_ms, stats)

    def refuse(message: str, status: int) -> JSONResponse:
        with stats.lock:
            stats.refused += 1
        return JSONResponse({"error": message}, status_code=status)

    async def predict(request: Request) -> JSONResponse:
        started = time.perf_counter()
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > MAX_BODY:
            return refuse(f"request body of {size} bytes; at most {MAX_BODY}", 413)
        batcher.arriving += 1
        try:
            chunks: list[bytes] = []
            received = 0
            async for chunk in request.stream():  # counted as it comes: a chunked body has no
                received += len(chunk)  # Content-Length, and a whole one would sit in memory
                if received > MAX_BODY:
                    return refuse(f"request body over {MAX_BODY} bytes", 413)
                chunks.append(chunk)
            body = json.loads(b"".join(chunks))
        except (ValueError, RecursionError) as error:  # RecursionError: nested too deep
            return refuse(f"the body is not JSON: {str(error)[:200]}", 400)
        finally:
            batcher.arriving -= 1
        if not isinstance(body, dict) or "rows" not in body:
            return refuse('expected {"rows": [{"<input>": value, ...}, ...]}', 400)
        try:
            feed = feed_from_rows(body["rows"], pre)
        except BadRequest as error:
            return refuse(str(error), error.status)
        try:
            outputs = await batcher.predict(feed)
        except Exception as error:
            with stats.lock:
                stats.errors += 1
            return JSONResponse({"error": f"the model failed: {error}"}, status_code=500)
        stats.record((time.perf_counter() - started) * 1000, len(body["rows"]))
        return JSONResponse(answer(outputs, pre))

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", **about, "stats": stats.snapshot()})

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await batcher.start()
        yield
        await batcher.stop()

    return Starlette(
        routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health)],
        lifespan=lifespan,
    )


def resolve_served(ctx: JobContext, reference: str) -> tuple[Path, dict[str, Any]]:
    """The .onnx file and its catalog row for `reference` (an export stage of this pipeline, a
    catalog model id, or a .onnx path the catalog knows). Raises JobFailed when the model's
    parity or its test's gates did not pass, or the catalog does not know it."""
    from jobs.bundle import DataError, resolve_model
    from workbench.catalog import registry

    models = registry.list_models(ctx.store)
    if reference.isdigit():
        chosen = [m for m in models if m["id"] == int(reference)]
    else:
        try:
            fmt, path, _ = resolve_model(ctx, reference)
        except DataError as error:
            raise JobFailed(str(error)) from None
        if fmt != "onnx":
            raise JobFailed(f"model {reference!r}: serve takes an exported .onnx model")
        chosen = [m for m in models if Path(m["path"]).resolve() == path.resolve()]
    if not chosen:
        raise JobFailed(
            f"model {reference!r} is no exported model in the catalog (`workbench models`);"
            " serve only what an export job checked"
        )
    model = chosen[0]
    card = model["card"]
    parity = card.get("parity") or {}
    if parity.get("violations") and parity.get("gated", True):
        raise JobFailed(
            f"model {model['id']}: its parity check failed ({parity['violations']} values)"
        )
    test = card.get("test") or {}
    if test and test.get("gate_passed") is False:
        raise JobFailed(f"model {model['id']}: test job {test.get('job_id')} failed its gates")
    path = Path(model["path"])
    if not path.is_file():
        raise JobFailed(f"model {model['id']}: the file {path} is gone")
    return path, model


def gpu_share(ctx: JobContext) -> dict[str, Any] | None:
    """The GPU the scheduler granted this job, or None: `visible` (CUDA_VISIBLE_DEVICES),
    `mem_cap_bytes` (its memory share on a pooled GPU, e.g. 20 GiB for `--gpus 0.25` of an
    80 GiB card; None when held whole), onnxruntime CUDA provider options holding the session
    to that share (`gpu_mem_limit` caps its memory arena, per the onnxruntime CUDA execution
    provider documentation) and a sentence for the log."""
    import os

    if not ctx.gpu_indices:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    cap = ctx.gpu_mem_cap_bytes
    options = {"device_id": "0"}
    if cap is not None:
        options["gpu_mem_limit"] = str(cap)
    share = f"a share of {cap / 1024**3:.1f} GiB" if cap is not None else "the whole GPU"
    return {
        "visible": visible,
        "mem_cap_bytes": cap,
        "provider_options": options,
        "describe": f"GPU {visible} (CUDA_VISIBLE_DEVICES), {share}",
    }


def run(ctx: JobContext) -> None:
    import onnxruntime as ort
    import uvicorn

    from jobs.bundle import Preprocessor

    spec = ctx.spec(Spec)
    path, model = resolve_served(ctx, spec.model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, ctx.cpus)
    providers = ["CPUExecutionProvider"]
    gpu = gpu_share(ctx)
    if gpu is not None:
        from jobs.export import session_on

        ctx.log(f"holding {gpu['describe']}")
        session, why_not = session_on(path, "CUDAExecutionProvider", gpu["provider_options"])
        if session is None:
            ctx.log(f"serving on the CPU: {why_not}")
            session = ort.InferenceSession(str(path), options, providers=providers)
    else:
        session = ort.InferenceSession(str(path), options, providers=providers)
    props = session.get_modelmeta().custom_metadata_map
    if props.get("workbench.inputs") != "columns":
        raise JobFailed(f"{path}: serve takes a model exported with one named input per column")
    pre = Preprocessor.from_dict(json.loads(props["workbench.preprocessor"]))
    stats = Stats()
    about = {
        "model_id": model["id"],
        "file": str(path),
        "sha256": model["sha256"],
        "inputs": pre.describe_inputs(),
        "task": pre.task,
        "gpu": None if gpu is None else {k: gpu[k] for k in ("visible", "mem_cap_bytes")},
        "providers": list(session.get_providers()),
    }
    config = uvicorn.Config(
        build_app(session, pre, spec, stats, about),
        host=spec.host,
        port=spec.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=30,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise JobFailed(f"the server could not start on {spec.host}:{spec.port}")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://{spec.host if ':' not in spec.host else f'[{spec.host}]'}:{port}"
    where = "loopback only" if spec.host in LOOPBACK else f"reachable at {spec.host}"
    ctx.log(
        f"serving model {model['id']} ({path.name}) at {url} ({where}); POST /predict, GET"
        f" /health; batches of up to {spec.max_batch} rows within {spec.max_wait_ms} ms"
    )
    step = 0

    def publish() -> None:
        nonlocal step
        snap = stats.snapshot()
        ctx.write_json("serve.json", {"url": url, "model": about, "spec": spec.__dict__, **snap})
        latency = (
            f", p50 {snap['p50_ms']:.1f} ms, p99 {snap['p99_ms']:.1f} ms"
            if snap["p50_ms"] is not None
            else ""
        )
        ctx.progress(
            None,
            f"serving {url}: {snap['requests']} requests{latency}, {snap['refused']} refused",
            force=True,
        )
        ctx.metrics(
            step,
            {k: snap[k] for k in ("requests", "refused", "errors", "rows", "p50_ms", "p99_ms")},
        )
        step += 1

    publish()
    published = time.monotonic()
    while not ctx.cancel_requested and thread.is_alive():
        time.sleep(0.1)
        if time.monotonic() - published >= 1.0:
            publish()
            published = time.monotonic()
    server.should_exit = True
    thread.join(timeout=40)
    publish()
    snap = stats.snapshot()
    ctx.log(
        f"stopped: {snap['requests']} requests answered, {snap['refused']} refused,"
        f" {snap['errors']} failed"
    )
    if not ctx.cancel_requested:
        raise JobFailed("the server stopped on its own")
    ctx.check_cancelled()
