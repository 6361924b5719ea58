"""The one JSON writer for everything the workbench prints as JSON: NaN and infinities become
null (they are not JSON), anything else json cannot encode becomes its text."""

from __future__ import annotations

import json
import math
from typing import Any


def plain(value: Any) -> Any:
    """`value` with every non-finite float as None, and NumPy scalars and arrays (anything with
    `tolist`, found without importing NumPy) as Python values, through dicts, lists and
    tuples."""
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """`json.dumps` that always writes valid JSON (RFC 8259): NaN, Infinity and -Infinity
    anywhere in `value` are written as null; other objects (dates, decimals, paths) as their
    `str`. The common case (no such float) costs one plain `json.dumps`."""
    options.setdefault("default", str)
    try:
        return json.dumps(value, allow_nan=False, **options)
    except ValueError:
        return json.dumps(plain(value), allow_nan=False, **options)
