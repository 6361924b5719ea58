"""telemetry.db: the 1 Hz host and GPU history and the latest snapshot, apart from state.db.

A file of its own so that a sample never changes state.db's `data_version` (which would wake
every reader of jobs each second). History is disposable: a damaged file is set aside and a
new one started. The file uses incremental auto-vacuum, so thinning gives space back.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from workbench.db.connection import (
    StoreFull,
    ThreadConnections,
    connect,
    full_message,
    immediate,
    is_corrupt_error,
    is_full_error,
    quick_check,
)
from workbench.db.migrations import create_database, migrate

# One row per tick, keyed by time in ms; rows older than the history setting are thinned
# into 60 s averages. gpus: JSON [[index, util %, memory util %, memory used bytes, power W,
# temp C], ...].
HISTORY_COLUMNS = (
    "cpu",
    "load1",
    "mem_used",
    "swap_used",
    "net_rx",
    "net_tx",
    "disk_read",
    "disk_write",
)
TELEMETRY_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE telemetry (
        t_ms INTEGER PRIMARY KEY,
        span_s REAL NOT NULL,
        cpu REAL,
        load1 REAL,
        mem_used INTEGER,
        swap_used INTEGER,
        net_rx REAL,
        net_tx REAL,
        disk_read REAL,
        disk_write REAL,
        gpus TEXT
    );
    CREATE TABLE telemetry_latest (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        t REAL NOT NULL,
        snapshot TEXT NOT NULL
    );
    """,
}
# A row: (t_ms, span_s, *HISTORY_COLUMNS, gpus JSON).
_ALL = f"t_ms, span_s, {', '.join(HISTORY_COLUMNS)}, gpus"
_SELECT = f"SELECT {_ALL} FROM telemetry"
_INSERT = f"INSERT OR REPLACE INTO telemetry ({_ALL}) VALUES ({', '.join('?' * (len(HISTORY_COLUMNS) + 3))})"
VACUUM_PAGES = 256  # pages given back per thinning pass (1 MiB at 4 KiB pages)


def _open_connection(path: Path) -> sqlite3.Connection:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        create_database(path, TELEMETRY_MIGRATIONS, auto_vacuum=True)
    conn = connect(path)
    try:
        quick_check(conn)
        migrate(conn, path.name, TELEMETRY_MIGRATIONS)
    except BaseException:
        conn.close()
        raise
    return conn


class TelemetryStore:
    """telemetry.db for one process, one connection per thread."""

    def __init__(self, path: Path):
        self.path = path
        try:
            first = _open_connection(path)
        except sqlite3.DatabaseError as error:
            if is_full_error(error):
                raise StoreFull(full_message(path)) from error
            if not is_corrupt_error(error):
                raise
            # Damaged history: keep it for inspection, start a new file.
            path.replace(path.with_name(f"{path.name}.broken-{int(time.time())}"))
            for suffix in ("-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
            first = _open_connection(path)
        self._connections = ThreadConnections(path, first)

    @property
    def conn(self) -> sqlite3.Connection:
        return self._connections.get()

    def close(self) -> None:
        self._connections.close()

    def record(
        self, t_ms: int, span_s: float, values: Sequence[Any], snapshot: str, t: float
    ) -> None:
        """One tick: a history row (`values`: HISTORY_COLUMNS then gpus JSON) and the snapshot."""
        with immediate(self.conn) as conn:
            conn.execute(_INSERT, (t_ms, span_s, *values))
            conn.execute(
                "INSERT OR REPLACE INTO telemetry_latest (id, t, snapshot) VALUES (1, ?, ?)",
                (t, snapshot),
            )

    def rows_between(self, since_ms: int, until_ms: int) -> list[tuple[Any, ...]]:
        """History rows with since_ms <= t_ms <= until_ms, oldest first."""
        return self.conn.execute(
            f"{_SELECT} WHERE t_ms >= ? AND t_ms <= ? ORDER BY t_ms", (since_ms, until_ms)
        ).fetchall()

    def latest(self) -> str | None:
        """The last snapshot's JSON text, or None."""
        row = self.conn.execute("SELECT snapshot FROM telemetry_latest WHERE id = 1").fetchone()
        return None if row is None else str(row[0])

    def thin(
        self,
        cutoff_ms: int,
        bucket_s: float,
        fold: Callable[[Sequence[tuple[Any, ...]]], list[tuple[Any, ...]]],
        drop_before_ms: int,
    ) -> int:
        """Replace rows older than `cutoff_ms` and finer than `bucket_s` by `fold(rows)`, drop
        rows older than `drop_before_ms`, then give freed pages back to the file system.
        Returns how many rows were folded."""
        with immediate(self.conn) as conn:
            rows = conn.execute(
                f"{_SELECT} WHERE t_ms < ? AND span_s < ? ORDER BY t_ms", (cutoff_ms, bucket_s)
            ).fetchall()
            if rows:
                conn.execute(
                    "DELETE FROM telemetry WHERE t_ms < ? AND span_s < ?", (cutoff_ms, bucket_s)
                )
                conn.executemany(_INSERT, fold(rows))
            conn.execute("DELETE FROM telemetry WHERE t_ms < ?", (drop_before_ms,))
        # executescript steps the pragma to the end (execute frees one page per call).
        self.conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")
        return len(rows)

    def free_pages(self) -> int:
        """Pages on the file's free list (what incremental vacuum can still give back)."""
        return int(self.conn.execute("PRAGMA freelist_count").fetchone()[0])
