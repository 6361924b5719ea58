"""Metric series with their times, and a cheap mark that moves whenever any metric is written."""

from __future__ import annotations

from collections.abc import Iterable

from workbench.db.store import Store


def metric_series(
    store: Store, job_id: int, names: Iterable[str]
) -> dict[str, list[tuple[int, float, float | None]]]:
    """Per metric name: [(step, unix time written, value), ...] in step order."""
    wanted = list(names)
    marks = ",".join("?" * len(wanted))
    out: dict[str, list[tuple[int, float, float | None]]] = {}
    for name, step, t, value in store.conn.execute(
        f"SELECT name, step, t, value FROM metrics WHERE job_id=? AND name IN ({marks})"
        " ORDER BY name, step, rowid",
        [job_id, *wanted],
    ):
        out.setdefault(name, []).append((step, t, value))
    return out


def metrics_mark(store: Store) -> int:
    """The newest metric row's id (0 when none): unchanged means no metric was written."""
    row = store.conn.execute("SELECT max(rowid) FROM metrics").fetchone()
    return int(row[0] or 0)
