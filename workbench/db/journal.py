"""Records instead of writes, for jobs on other nodes: SQLite over NFS is unsafe, so a job that
runs on a cluster node reads a private in-memory copy of state.db and appends each of its write
transactions (progress, metrics, runs, evaluations, models, dataset versions) as one JSON line to
`records.jsonl` in its run folder; the daemon applies those lines to state.db, once each."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast

from workbench import safefs
from workbench.db.connection import ThreadConnections, immediate
from workbench.db.store import Store, StoreError

RECORDS_FILE = "records.jsonl"
CHUNK_BYTES = 2 << 20  # whole lines applied per call (some 35,000 metric points, ~0.3 s)
MAX_LINE_BYTES = 64 << 20  # a longer line is skipped unread

# What a job may write through its records: its own progress, and the catalog tables.
_WRITE = re.compile(
    r"\s*(?:INSERT(?:\s+OR\s+\w+)?\s+INTO|REPLACE\s+INTO|UPDATE|DELETE\s+FROM)\s+(\w+)", re.I
)
_CATALOG_TABLES = frozenset(
    {"metrics", "runs", "evaluations", "models", "datasets", "dataset_versions"}
)
_PROGRESS = re.compile(
    r"\s*UPDATE\s+jobs\s+SET\s+progress=\?,\s*progress_msg=\?\s+WHERE\s+id=\?\s*"
)


class RecordError(RuntimeError):
    """A job's records cannot be applied (a statement it may not run, or a constraint failed)."""


class _Recorder:
    """Stands in for the connection inside a transaction: runs each statement on the in-memory
    copy (so the job reads its own writes) and remembers the writes for the record file."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn
        self.writes: list[tuple[str, list[Any]]] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        cursor = self._conn.execute(sql, params)
        if _WRITE.match(sql):
            self.writes.append((sql, list(params)))
        return cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> sqlite3.Cursor:
        listed = [list(r) for r in rows]
        cursor = self._conn.executemany(sql, listed)
        if _WRITE.match(sql):
            self.writes.extend((sql, r) for r in listed)
        return cursor


class _OneConnection(ThreadConnections):
    """The in-memory copy has one connection, shared by the job's threads (under a lock)."""

    def get(self) -> sqlite3.Connection:
        conn = self._all[0] if self._all else None
        if conn is None:
            raise StoreError(f"{self.path} (in-memory copy) is closed")
        return conn


def private_copy(state_db: Path) -> Store:
    """A store over a private in-memory copy of state.db (SQLite's online backup, with state.db
    opened read-only): what a job on a cluster node reads, where writing state.db is unsafe.
    Writes to it change the copy only. Raises StoreError if state.db cannot be read."""
    try:
        source = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=30.0)
        try:
            memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            source.backup(memory)
        finally:
            source.close()
    except sqlite3.Error as error:
        raise StoreError(f"cannot read {state_db}: {error}") from error
    return Store(_OneConnection(state_db, memory), state_db)


class RecordingStore(Store):
    """The store a job on another node uses: reads from a copy of state.db taken when the job
    started (plus its own writes), writes appended to `records` (one line per transaction,
    written with one `write` on an O_APPEND descriptor, so a reader never sees half a line)."""

    records: Path
    _lock: threading.RLock

    @classmethod
    def open_recording(
        cls,
        state_db: Path,
        records: Path,
        job_id: int,
        catch_up: Callable[[Store], None] | None = None,
    ) -> RecordingStore:
        """Copy state.db (read-only, SQLite's online backup) into memory; records go to `records`.

        Slurm starts a job as soon as its dependencies end, which can be before the daemon has
        applied their records (a dataset version, a run), or with no daemon at all (a login
        node reaped it): `catch_up(copy)` brings the copy up to date from what the shared
        filesystem holds (workbench.daemon.upstream.catch_up) before the job reads it; what it
        writes to the copy is not recorded (the daemon applies those files itself). Nothing
        waits for the daemon. Raises StoreError if state.db cannot be read."""
        copy = private_copy(state_db)
        if catch_up is not None:
            catch_up(copy)
        connections = copy._connections
        store = cls(connections, state_db)
        store.records = records
        store._lock = threading.RLock()
        return store

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        recorder = _Recorder(self.conn)
        with self._lock, immediate(self.conn):
            yield cast(sqlite3.Connection, recorder)
        if recorder.writes:
            line = json.dumps({"writes": recorder.writes}, default=str) + "\n"
            fd = os.open(
                self.records, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600
            )
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    def backup_to(self, target: Path) -> None:
        raise StoreError("a job on another node cannot back up state.db")


# What one line of a records file can raise while it is read or applied (TypedRecordError and
# UnicodeDecodeError are ValueErrors): the line's own fault, never its file's.
_LINE_ERRORS = (ValueError, TypeError, KeyError, OverflowError, RecursionError, RecordError)


def _check(sql: str, params: list[Any], job_id: int) -> None:
    match = _WRITE.match(sql)
    table = match.group(1).lower() if match else ""
    if table in _CATALOG_TABLES:
        return
    if table == "jobs" and _PROGRESS.fullmatch(sql) and params and params[-1] == job_id:
        return
    raise RecordError(f"job {job_id} may not run {sql.split('(')[0].strip()[:60]!r}")


def _open_records(path: Path) -> BinaryIO:
    """Open a job's records file for reading, as written by the job: a regular file, not a
    link, nor in a linked folder (the job owns its run folder; a FIFO there blocked the daemon's open for good, a link
    read another file as the job's records). Raises FileNotFoundError, or RecordError."""
    try:
        fd = safefs.open_file(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as error:  # ELOOP: a link
        raise RecordError(f"{path.name} is not a regular file ({error.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RecordError(f"{path.name} is not a regular file; its records are not read")
    return os.fdopen(fd, "rb")


def _skip_long_line(
    store: Store, job_id: int, handle: Any, offset: int, notes: list[str] | None
) -> int:
    """Move the job's offset past the line that starts at `offset` (over MAX_LINE_BYTES; the
    handle is positioned inside it), reading it in blocks; returns the new offset, or `offset`
    while the line has no end yet."""
    skipped = handle.tell()
    while True:
        block = handle.read(1 << 20)
        if not block:
            return offset
        cut = block.find(b"\n")
        if cut >= 0:
            new_offset = int(skipped + cut + 1)
            break
        skipped += len(block)
    with store.transaction() as conn:
        conn.execute("UPDATE jobs SET records_offset=? WHERE id=?", (new_offset, job_id))
    if notes is not None:
        notes.append(f"a line of {new_offset - offset} bytes skipped (over {MAX_LINE_BYTES})")
    return new_offset


def apply_records(
    store: Store,
    job_id: int,
    path: Path,
    offset: int,
    notes: list[str] | None = None,
    allow_writes: bool = True,
    max_bytes: int = CHUNK_BYTES,
) -> int:
    """Apply the complete lines of a job's record file from byte `offset` to state.db in one
    transaction that also moves the job's `records_offset`, so each line is applied exactly once
    even across daemon restarts. Returns the new offset.

    A line is either a recorded write transaction (`{"writes": [...]}`, a built-in kind on another
    node) or a typed record (`{"kind": ...}`, see workbench/db/track_records.py: the tracking
    API and captured files, on any executor). A write line that cannot be applied raises
    RecordError (with the offset moved past it, so it is reported once); a typed record that
    cannot be applied is skipped and described in `notes` (a script's bad record never fails
    its job). Whatever a line holds (an integer SQLite cannot store, JSON nested past Python's
    recursion limit, bytes that are no UTF-8) is that line's problem: it never stops the lines
    after it nor leaves the offset behind it (which would re-read it at every look, forever, and
    keep its job from ending). `allow_writes=False` (a job on this machine, which writes state.db
    itself) refuses write lines: only typed records, which touch the job's own rows, apply.

    At most `max_bytes` of whole lines are applied per call (so one transaction, which holds
    state.db's write lock and the daemon's loop, stays short whatever a job wrote): the caller
    calls again while the returned offset is short of the file's size. A line longer than
    MAX_LINE_BYTES is skipped (read in blocks, never whole) and described in `notes`."""
    from workbench.db.track_records import RecordApplier, TypedRecordError

    try:
        handle = _open_records(path)
    except FileNotFoundError:
        return offset
    with handle:
        try:
            handle.seek(offset)
            data = handle.read(max_bytes)
            end = data.rfind(b"\n") + 1
            if end == 0 and len(data) == max_bytes:  # one line longer than a chunk
                data += handle.read(max(0, MAX_LINE_BYTES - len(data)))
                end = data.rfind(b"\n") + 1
                if end == 0 and len(data) >= MAX_LINE_BYTES:
                    return _skip_long_line(store, job_id, handle, offset, notes)
        except OSError as error:
            raise RecordError(f"cannot read {path.name} of job {job_id} ({error})") from None
    if end == 0:
        return offset
    new_offset = offset + end
    problem = None
    with store.transaction() as conn:
        typed = RecordApplier(conn, job_id, path.parent)
        for raw in data[:end].splitlines():
            if not raw.strip():
                continue
            if raw.startswith(b'{"kind"') and not raw.rstrip().endswith(b"}"):
                if notes is not None:  # cut short by a kill of the script that wrote it
                    notes.append(f"an incomplete record skipped ({len(raw)} bytes)")
                continue
            try:
                line = json.loads(raw)
                if isinstance(line, dict) and "kind" in line:
                    writes = None
                else:
                    if not allow_writes:
                        raise RecordError(
                            f"job {job_id} may not record SQL writes (only a job on a cluster"
                            " node does)"
                        )
                    writes = [(str(sql), list(params)) for sql, params in line["writes"]]
                    for sql, params in writes:
                        _check(sql, params, job_id)
            except _LINE_ERRORS as error:  # the line's own fault: reported, never retried
                problem = problem or f"{type(error).__name__}: {str(error)[:200]}"
                continue
            conn.execute("SAVEPOINT record")
            try:
                if writes is None:
                    typed.apply(line)
                else:
                    for sql, params in writes:
                        conn.execute(sql, params)
            except (*_LINE_ERRORS, sqlite3.Error) as error:
                conn.execute("ROLLBACK TO record")
                said = f"{type(error).__name__}: {str(error)[:200]}"
                if writes is not None:
                    problem = problem or said
                elif notes is not None and len(notes) < 100:
                    notes.append(said if not isinstance(error, TypedRecordError) else str(error))
            conn.execute("RELEASE record")
        typed.finish()
        conn.execute("UPDATE jobs SET records_offset=? WHERE id=?", (new_offset, job_id))
    if problem:
        raise RecordError(f"some records of job {job_id} could not be applied ({problem})")
    return new_offset


def apply_all_records(
    store: Store,
    job_id: int,
    path: Path,
    offset: int,
    notes: list[str] | None = None,
    allow_writes: bool = True,
) -> int:
    """`apply_records` until the offset stops moving (every whole line applied, a chunk per
    transaction): for a job's end, when what it reported must all be in. Returns the offset;
    raises the first RecordError once the rest is applied."""
    problem: RecordError | None = None
    while True:
        try:
            new_offset = apply_records(store, job_id, path, offset, notes, allow_writes)
        except RecordError as error:
            problem = problem or error
            (new_offset,) = store.conn.execute(
                "SELECT records_offset FROM jobs WHERE id=?", (job_id,)
            ).fetchone()
        if new_offset == offset:
            break
        offset = new_offset
    if problem is not None:
        raise problem
    return offset
