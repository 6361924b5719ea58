"""Telemetry history: the compact row of a snapshot, reading ranges back, thinning old rows."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from workbench.db.store import Store
from workbench.db.telemetry import HISTORY_COLUMNS
from workbench.telemetry.host import _VIRTUAL_DISKS

THIN_BUCKET_S = 60.0
KEEP_THINNED_S = 30 * 86400.0
_HISTORY_COLUMNS = HISTORY_COLUMNS
_HISTORY_NAMES = {
    "mem_used": "memory_used",
    "swap_used": "swap_used",
}
_GPU_HISTORY_FIELDS = ("util", "memory_util", "memory_used", "power_w", "temperature_c")


# ---- history -------------------------------------------------------------------------------


def _history_row(snap: Mapping[str, Any]) -> tuple[Any, ...]:
    """The compact history columns of a snapshot (totals, not per core or interface)."""

    def total(table: Mapping[str, Any], key: str, skip: tuple[str, ...] = ()) -> float | None:
        values = [
            v[key] for name, v in table.items() if not name.startswith(skip) and v[key] is not None
        ]
        return round(sum(values), 1) if values else None

    gpus = [
        [
            g["index"],
            g["util_gpu"],
            g["util_memory"],
            g["memory_used_bytes"] if g["ok"] else None,
            g["power_draw_w"],
            g["temperature_c"],
        ]
        for g in snap["gpus"]
    ]
    load = snap["cpu"]["load_avg"]
    return (
        snap["cpu"]["total"],
        load[0] if load else None,
        snap["memory"]["used_bytes"],
        snap["swap"]["used_bytes"],
        total(snap["network"], "rx_bytes_per_s"),
        total(snap["network"], "tx_bytes_per_s"),
        total(snap["disk_io"], "read_bytes_per_s", _VIRTUAL_DISKS),
        total(snap["disk_io"], "write_bytes_per_s", _VIRTUAL_DISKS),
        json.dumps(gpus, separators=(",", ":")) if gpus else None,
    )


def _mean(values: Iterable[Any]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _average(rows: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """The mean of history rows (t_ms, span_s, columns..., gpus), ignoring n/a values."""
    columns = []
    for position in range(2, 2 + len(_HISTORY_COLUMNS)):
        value = _mean(r[position] for r in rows)
        integer = _HISTORY_COLUMNS[position - 2] in ("mem_used", "swap_used")
        columns.append(None if value is None else (round(value) if integer else round(value, 2)))
    per_gpu: dict[int, list[list[Any]]] = {}
    for row in rows:
        for gpu in json.loads(row[-1]) if row[-1] else []:
            per_gpu.setdefault(gpu[0], []).append(gpu[1:])
    gpus = []
    for index, readings in sorted(per_gpu.items()):
        means = [_mean(r[k] for r in readings) for k in range(len(_GPU_HISTORY_FIELDS))]
        rounded = [None if m is None else round(m, 1) for m in means]
        if rounded[2] is not None:
            rounded[2] = round(rounded[2])
        gpus.append([index, *rounded])
    return (*columns, json.dumps(gpus, separators=(",", ":")) if gpus else None)


def _row_to_dict(row: Sequence[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"time": row[0] / 1000.0, "span_s": row[1]}
    for name, value in zip(_HISTORY_COLUMNS, row[2:-1], strict=True):
        out[_HISTORY_NAMES.get(name, name)] = value
    out["gpus"] = [
        {"index": g[0], **dict(zip(_GPU_HISTORY_FIELDS, g[1:], strict=True))}
        for g in (json.loads(row[-1]) if row[-1] else [])
    ]
    return out


def history(
    store: Store, since: float, until: float | None = None, bucket_s: float | None = None
) -> list[dict[str, Any]]:
    """History rows between two unix times, oldest first. Each row: time, span_s (seconds it
    covers), cpu %, load1, memory_used, swap_used (bytes), net_rx, net_tx, disk_read,
    disk_write (bytes/s) and gpus [{index, util, memory_util, memory_used, power_w,
    temperature_c}]. `bucket_s` averages rows into buckets of that many seconds (for long
    ranges on a narrow chart)."""
    end = time.time() + 1 if until is None else until
    rows = store.telemetry.rows_between(int(since * 1000), int(end * 1000))
    if bucket_s:
        rows = _bucketed(rows, bucket_s)
    return [_row_to_dict(r) for r in rows]


def _bucketed(rows: Sequence[tuple[Any, ...]], bucket_s: float) -> list[tuple[Any, ...]]:
    width_ms = int(bucket_s * 1000)
    groups: dict[int, list[tuple[Any, ...]]] = {}
    for row in rows:
        groups.setdefault(row[0] // width_ms * width_ms, []).append(row)
    return [
        (start, max(bucket_s, max(r[1] for r in group)), *_average(group))
        for start, group in groups.items()
    ]


def latest(store: Store) -> dict[str, Any] | None:
    """The last full snapshot the daemon wrote (check its "time" for staleness), or None."""
    text = store.telemetry.latest()
    return None if text is None else dict(json.loads(text))


def thin(
    store: Store,
    now: float,
    keep_raw_s: float,
    keep_thinned_s: float = KEEP_THINNED_S,
    bucket_s: float = THIN_BUCKET_S,
) -> int:
    """Average rows older than `keep_raw_s` into `bucket_s` rows (whole buckets only) and drop
    anything older than `keep_thinned_s`. Returns how many rows were folded."""
    width_ms = int(bucket_s * 1000)
    cutoff_ms = int((now - keep_raw_s) * 1000) // width_ms * width_ms
    return store.telemetry.thin(
        cutoff_ms,
        bucket_s,
        lambda rows: _bucketed(rows, bucket_s),
        int((now - keep_thinned_s) * 1000),
    )
