"""Dataset catalog queries the lake needs beyond its version rows: content hashes for
deduplication, versions still used by runs, and removal of pruned versions."""

from __future__ import annotations

import sqlite3


def latest_hash(conn: sqlite3.Connection, dataset: str) -> tuple[int, str, int] | None:
    """(version, content hash, rejected rows) of a dataset's latest version, or None."""
    row = conn.execute(
        "SELECT version, content_hash, rejected_rows FROM dataset_versions WHERE dataset=?"
        " ORDER BY version DESC LIMIT 1",
        (dataset,),
    ).fetchone()
    return (int(row[0]), str(row[1]), int(row[2])) if row else None


def versions_in_use(conn: sqlite3.Connection) -> set[tuple[str, int]]:
    """(dataset, version) pairs a training run or an evaluation records having used."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    used: set[tuple[str, int]] = set()
    for table in ("runs", "evaluations"):
        if table in tables:
            used.update(
                (str(d), int(v))
                for d, v in conn.execute(f"SELECT dataset, dataset_version FROM {table}")
            )
    return used


def delete_version(conn: sqlite3.Connection, dataset: str, version: int) -> None:
    """Remove one version's catalog row (its files are the caller's to remove)."""
    conn.execute("DELETE FROM dataset_versions WHERE dataset=? AND version=?", (dataset, version))


def version_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """How many versions each dataset has."""
    return {
        str(d): int(n)
        for d, n in conn.execute(
            "SELECT dataset, count(*) FROM dataset_versions GROUP BY dataset"
        ).fetchall()
    }
