"""Hostile requests to the serve kind's app, called through ASGI (no model run, no network): a
chunked body past the cap, JSON nested past the recursion limit and an integer past float64 get
a 4xx naming the fault, never a 500 or an unbounded read."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jobs.bundle import Column, Preprocessor
from jobs.serve import MAX_BODY, BadRequest, Spec, Stats, build_app, feed_from_rows

PRE = Preprocessor([Column("x", "numeric")], "y", "regression")


def call(chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, Any]]:
    """POST /predict with `chunks` as the body's messages; returns (status, JSON answer)."""
    app = build_app(None, PRE, Spec(model="m.onnx"), Stats(), {})
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


def test_a_chunked_body_past_the_cap_is_refused_as_it_comes() -> None:
    """Before: with no Content-Length the whole body was read into memory, then parsed."""
    chunk = b" " * (1 << 20)
    status, answer = call([b'{"rows": ['] + [chunk] * (MAX_BODY // len(chunk) + 2), [])
    assert status == 413 and "over" in answer["error"]


def test_json_nested_too_deep_is_a_bad_request() -> None:
    """Before: RecursionError escaped the handler (a 500 and a traceback in the job's log)."""
    deep = b"[" * 100_000 + b"]" * 100_000
    status, answer = call([deep], [(b"content-length", str(len(deep)).encode())])
    assert status == 400 and "not JSON" in answer["error"]


def test_an_integer_past_float64_names_its_row_and_input() -> None:
    """Before: OverflowError from float(10**400), a 500."""
    try:
        feed_from_rows([{"x": 1.0}, {"x": 10**400}], PRE)
    except BadRequest as error:
        assert error.status == 422 and "row 1" in str(error) and "'x'" in str(error)
    else:
        raise AssertionError("accepted")
