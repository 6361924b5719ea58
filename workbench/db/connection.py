"""Opening state.db: WAL pragmas, one connection per thread, errors that say how to recover."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_S = 30.0


# What a store call may raise besides StoreError (a busy or locked file, an I/O error), for
# callers outside this package that retry: they need not import sqlite3.
DatabaseError = sqlite3.Error


class StoreError(RuntimeError):
    """The state file cannot be used; the message says why and how to recover (exit code 3)."""


class StoreCorrupt(StoreError):
    """SQLite reports the file damaged; nothing is written into it."""


class StoreFull(StoreError):
    """The device holding the state file (or the file's size limit) is full."""


def recovery_advice(path: Path) -> str:
    """What to tell a user whose state file cannot be read (several lines, no trailing newline)."""
    backup = path.with_name(path.name + ".bak")
    lines = [
        f"{path} cannot be read; it was left untouched.",
        "To recover:",
        f"  - try SQLite's recovery: sqlite3 {path} .recover | sqlite3 {path}.recovered"
        f" and move {path.name}.recovered to {path.name}",
    ]
    if backup.exists():
        lines.append(
            f"  - or restore the backup taken at the last good daemon start: cp {backup} {path}"
        )
    lines.append(f"  - or start afresh (losing the queue and history): mv {path} {path}.broken")
    return "\n".join(lines)


def full_message(path: Path) -> str:
    """The one wording for a full disk, naming the folder whose device is full."""
    return (
        f"no space left on the device holding WORKBENCH_HOME ({path.parent});"
        " free some space (`workbench prune --older-than 1d` deletes the logs and records of"
        " jobs that ended over a day ago, even on a full disk) and try again"
    )


_SQLITE_IOERR_WRITE = getattr(sqlite3, "SQLITE_IOERR_WRITE", 778)
_SQLITE_IOERR_SHMSIZE = getattr(sqlite3, "SQLITE_IOERR_SHMSIZE", 4874)
_SQLITE_IOERR_TRUNCATE = getattr(sqlite3, "SQLITE_IOERR_TRUNCATE", 1546)
_SQLITE_IOERR_FSYNC = getattr(sqlite3, "SQLITE_IOERR_FSYNC", 1034)


def _space_is_short(path: Path | None) -> bool:
    """Whether a write error can be blamed on space: the device is (nearly) full, or this
    process runs under a file size limit (RLIMIT_FSIZE), which fails writes the same way."""
    import resource

    if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
        return True
    if path is None:
        return False
    try:
        stat = os.statvfs(path.parent)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < 4 * 1024 * 1024


def is_full_error(error: BaseException, path: Path | None = None) -> bool:
    """Whether an exception means "the disk (or the file size limit) is full".

    SQLite reports ENOSPC as SQLITE_FULL, but a write that fails outright (EFBIG, or a
    shared-memory file that cannot grow) as an I/O error: those count when space is short."""
    if isinstance(error, StoreFull):
        return True
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL or "database or disk is full" in str(error).lower():
            return True
        if code is not None and code & 0xFF == sqlite3.SQLITE_IOERR:
            return _space_is_short(path)
    return False


def is_corrupt_error(error: BaseException) -> bool:
    """Whether SQLite says the file is damaged (SQLITE_CORRUPT / SQLITE_NOTADB)."""
    if not isinstance(error, sqlite3.DatabaseError):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return True
    text = str(error).lower()
    return "malformed" in text or "not a database" in text or "file is empty" in text


def translate(error: BaseException, path: Path) -> StoreError | None:
    """A StoreError for the faults a user must act on (full disk, damage), else None.

    Takes sqlite3 and OS errors alike, so a client can map whatever escaped to one message."""
    if isinstance(error, StoreError):
        return error
    if is_full_error(error, path):
        return StoreFull(full_message(path))
    if is_corrupt_error(error):
        return StoreCorrupt(f"state file damaged ({error}).\n{recovery_advice(path)}")
    return None


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the pragmas every user of the store needs (WAL, busy timeout).

    Raises sqlite3.DatabaseError when the file is not a usable WAL database."""
    if path.stat().st_size == 0:
        raise sqlite3.DatabaseError("file is empty")
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        conn.close()
        raise sqlite3.DatabaseError(f"cannot switch to WAL mode (got {mode})")
    conn.execute("PRAGMA synchronous=NORMAL")
    # Deleted rows (captured environments may hold secrets) are overwritten, not just unlinked.
    conn.execute("PRAGMA secure_delete=ON")
    return conn


def quick_check(conn: sqlite3.Connection, tables: tuple[str, ...] = ()) -> None:
    """SQLite's quick_check (b-tree structure, free list, record format): of the whole file, or
    of only `tables` and their indexes (cheaper where other tables, such as per-step metrics,
    are large). Raises sqlite3.DatabaseError naming the damage."""
    if tables:
        existing = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        result: list[tuple[str]] = []
        for table in tables:
            if table in existing:
                rows = conn.execute(f"PRAGMA quick_check('{table}')").fetchall()
                result += [r for r in rows if r != ("ok",)]
        result = result or [("ok",)]
    else:
        result = conn.execute("PRAGMA quick_check(3)").fetchall()
    if result != [("ok",)]:
        raise sqlite3.DatabaseError(
            "database disk image is malformed: " + "; ".join(str(r[0]) for r in result[:3])
        )


class ThreadConnections:
    """One SQLite connection per thread for one file (a connection must never run two
    transactions at once, which a shared one does as soon as two threads write)."""

    def __init__(self, path: Path, first: sqlite3.Connection):
        self.path = path
        self._local = threading.local()
        self._local.conn = first
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = [first]
        self._closed = False

    def get(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StoreError(f"{self.path} is closed")
            conn = connect(self.path)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            self._closed = True
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front so reads inside are current."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def remove_files(*paths: str | os.PathLike[str]) -> None:
    """Unlink files, ignoring those already gone."""
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
