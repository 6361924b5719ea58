"""A read-only look at the lake's catalog from a job's process, for workbench.track's
`dataset()`: standard library only, and sqlite3 imported only when it is called."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def dataset_version(
    state_db: Path, name: str, version: int | None
) -> tuple[tuple[Any, ...] | None, list[int], list[str]]:
    """(the row (version, content_hash, rows, path) of `name`'s version `version`, the latest
    when None, or None when missing; every version of `name`; every dataset name), read from
    `state_db` opened read-only. Raises OSError when the file cannot be read."""
    import sqlite3

    try:
        return _read(
            sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=30.0), name, version
        )
    except sqlite3.Error as error:
        raise OSError(str(error)) from None


def read_catalog(
    conn: Any, name: str, version: int | None
) -> tuple[tuple[Any, ...] | None, list[int], list[str]]:
    """What `dataset_version` returns, read from the open SQLite connection `conn`, which is
    left open (its owner closes it: an in-memory copy of state.db on a cluster node)."""
    return _read(conn, name, version, close=False)


def _read(
    conn: Any, name: str, version: int | None, close: bool = True
) -> tuple[tuple[Any, ...] | None, list[int], list[str]]:
    try:
        query = "SELECT version, content_hash, rows, path FROM dataset_versions WHERE dataset=?"
        if version is None:
            row = conn.execute(query + " ORDER BY version DESC LIMIT 1", (name,)).fetchone()
        else:
            row = conn.execute(query + " AND version=?", (name, int(version))).fetchone()
        versions = [
            int(r[0])
            for r in conn.execute(
                "SELECT version FROM dataset_versions WHERE dataset=? ORDER BY version", (name,)
            )
        ]
        names = [str(r[0]) for r in conn.execute("SELECT name FROM datasets ORDER BY name")]
    finally:
        if close:
            conn.close()
    return row, versions, names
