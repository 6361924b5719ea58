"""Metric series with their times, and a cheap mark that moves whenever any metric is written."""

from __future__ import annotations

from collections.abc import Iterable

from workbench.db.store import Store


def metric_series(
    store: Store, job_id: int, names: Iterable[str], max_points: int | None = None
) -> dict[str, list[tuple[int, float, float | None]]]:
    """Per metric name: [(step, unix time written, value), ...] in step order. With
    `max_points`, a series with more points keeps every k-th step (k chosen from its step range
    so about `max_points` remain) and its last step, thinned in SQLite (a chart of a
    50,000-point run reads ~2,000 rows, not all)."""
    wanted = list(names)
    marks = ",".join("?" * len(wanted))
    out: dict[str, list[tuple[int, float, float | None]]] = {}
    strides: dict[str, tuple[int, int, int]] = {}
    if max_points is not None:
        for name, count, first, last in store.conn.execute(
            f"SELECT name, count(*), min(step), max(step) FROM metrics WHERE job_id=?"
            f" AND name IN ({marks}) GROUP BY name",
            [job_id, *wanted],
        ):
            if count > max_points:
                strides[name] = (-(-(last - first + 1) // max_points), first, last)
    for name in wanted if strides else ():
        if name not in strides:
            continue
        stride, first, last = strides[name]
        out[name] = [
            (step, t, value)
            for step, t, value in store.conn.execute(
                "SELECT step, t, value FROM metrics WHERE job_id=? AND name=?"
                " AND ((step - ?) % ? = 0 OR step = ?) ORDER BY step, rowid",
                (job_id, name, first, stride, last),
            )
        ]
    rest = [n for n in wanted if n not in strides]
    if not rest:
        return out
    marks = ",".join("?" * len(rest))
    for name, step, t, value in store.conn.execute(
        f"SELECT name, step, t, value FROM metrics WHERE job_id=? AND name IN ({marks})"
        " ORDER BY name, step, rowid",
        [job_id, *rest],
    ):
        out.setdefault(name, []).append((step, t, value))
    return out


def metrics_mark(store: Store) -> int:
    """The newest metric row's id (0 when none): unchanged means no metric was written."""
    row = store.conn.execute("SELECT max(rowid) FROM metrics").fetchone()
    return int(row[0] or 0)
