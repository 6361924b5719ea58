"""The `ingest` kind: CSV/TSV, Parquet, JSON and NDJSON files (or globs, compressed too) into a
new dataset version in the lake, with bad rows kept in a rejects table instead of dropped."""

from __future__ import annotations

import glob
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jobs.context import Cancelled, JobContext, JobFailed
from workbench.catalog.lake import LakeError, check_dataset_name, publish, version_info
from workbench.queue.spec import SpecError

if TYPE_CHECKING:
    import duckdb

Format = Literal["auto", "csv", "tsv", "parquet", "json", "ndjson"]
_COMPRESSED = (".gz", ".zst", ".gzip")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".txt": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".json": "json",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
}

DEFAULTS = {"cpus": 1}


@dataclass(frozen=True)
class Spec:
    """`source`: paths or globs (relative to the spec or pipeline file); `types`: per-column type
    overrides (DuckDB types, e.g. {"age" = "INTEGER"}); `mode = "append"` keeps the previous
    version's rows in the new one; more than `max_rejects` bad rows fail the job."""

    source: list[str]
    dataset: str
    format: Format = "auto"
    header: bool | None = None
    delimiter: str | None = None
    null: list[str] = field(default_factory=list)
    types: dict[str, str] = field(default_factory=dict)
    mode: Literal["replace", "append"] = "replace"
    max_rejects: int = 10


def _format_of(path: str) -> str | None:
    name = path.lower()
    for suffix in _COMPRESSED:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return _EXTENSIONS.get(os.path.splitext(name)[1])


def expand_sources(patterns: list[str], where: str) -> list[str]:
    """Every file the patterns name, in order, each once; a pattern matching nothing is an error."""
    files: list[str] = []
    for number, pattern in enumerate(patterns):
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            what = "no file matches" if glob.has_magic(pattern) else "no such file"
            raise SpecError(f"{where}: key 'source'[{number}]: {what} {pattern!r}")
        files.extend(m for m in matches if m not in files)
    return files


def source_format(spec: Spec, files: list[str], where: str) -> str:
    if spec.format != "auto":
        return spec.format
    formats = {_format_of(f) for f in files}
    if None in formats:
        unknown = next(f for f in files if _format_of(f) is None)
        raise SpecError(
            f"{where}: key 'source': cannot tell the format of {unknown!r}; set key 'format'"
        )
    if len(formats) > 1:
        raise SpecError(
            f"{where}: key 'source': the files mix formats ({', '.join(sorted(map(str, formats)))});"
            " ingest each format separately"
        )
    return str(formats.pop())


def prepare(spec: Spec, base_dir: Path, where: str) -> Spec:
    """Resolve sources against the spec's folder and check they exist now (they are expanded
    again when the job runs)."""
    try:
        check_dataset_name(spec.dataset, f"{where}: key 'dataset'")
    except LakeError as error:
        raise SpecError(str(error)) from None
    if not spec.source:
        raise SpecError(f"{where}: key 'source': give at least one file or glob")
    patterns = [str((base_dir / os.path.expanduser(p)).resolve()) for p in spec.source]
    files = expand_sources(patterns, where)
    source_format(spec, files, where)
    if spec.max_rejects < 0:
        raise SpecError(f"{where}: key 'max_rejects': must not be negative")
    if spec.delimiter is not None and len(spec.delimiter) != 1:
        raise SpecError(f"{where}: key 'delimiter': must be one character, got {spec.delimiter!r}")
    return replace(spec, source=patterns)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _list(values: list[str]) -> str:
    return "[" + ", ".join(_literal(v) for v in values) + "]"


def source_sql(spec: Spec, files: list[str], fmt: str) -> str:
    """The DuckDB table function that reads the sources."""
    if fmt in ("csv", "tsv"):
        options = ["store_rejects = true"]
        if spec.header is not None:
            options.append(f"header = {str(spec.header).lower()}")
        delimiter = spec.delimiter or ("\t" if fmt == "tsv" else None)
        if delimiter is not None:
            options.append(f"delim = {_literal(delimiter)}")
        if spec.null:
            options.append(f"nullstr = {_list(spec.null)}")
        if spec.types:
            pairs = ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in spec.types.items())
            options.append(f"types = {{{pairs}}}")
        return f"read_csv({_list(files)}, {', '.join(options)})"
    if fmt == "parquet":
        return f"read_parquet({_list(files)}, union_by_name = true)"
    form = "newline_delimited" if fmt == "ndjson" else "auto"
    return f"read_json({_list(files)}, format = {_literal(form)}, union_by_name = true)"


class _Watcher(threading.Thread):
    """Reports DuckDB's query progress and interrupts the query when the job is cancelled."""

    def __init__(self, ctx: JobContext, cursor: duckdb.DuckDBPyConnection, message: str):
        super().__init__(daemon=True)
        self.ctx = ctx
        self.cursor = cursor
        self.message = message
        self.done = threading.Event()
        self.interrupted = False

    def run(self) -> None:
        # Cancellation is checked every 0.1 s; progress goes to the store at most every 0.5 s,
        # since each write is a transaction the daemon and waiting clients wake for, and on a
        # small machine that time comes out of DuckDB's threads.
        reported = 0.0
        while not self.done.wait(0.1):
            if self.ctx.cancel_requested and not self.interrupted:
                self.interrupted = True
                self.cursor.interrupt()
            now = time.monotonic()
            if now - reported < 0.5:
                continue
            try:
                percent = self.cursor.query_progress()
            except Exception:
                continue
            if percent >= 0:
                reported = now
                self.ctx.progress(min(percent, 99.0) / 100 * 0.95, self.message)


def _overrides_known(
    cursor: duckdb.DuckDBPyConnection, spec: Spec, files: list[str], fmt: str
) -> None:
    """A type override for a column the sources do not have is an error naming it."""
    if not spec.types:
        return
    without = replace(spec, types={})
    columns = [
        r[0]
        for r in cursor.execute(
            f"DESCRIBE SELECT * FROM {source_sql(without, files, fmt)}"
        ).fetchall()
    ]
    missing = [c for c in spec.types if c not in columns]
    if missing:
        raise JobFailed(
            f"key 'types': column {missing[0]!r} is not in the source (its columns: {', '.join(columns)})"
        )


def _rejects(cursor: duckdb.DuckDBPyConnection) -> tuple[int, str | None]:
    """How many rows were rejected, and a sentence about the first one."""
    row = cursor.execute(
        "SELECT count(DISTINCT (scan_id, file_id, line)) FROM reject_errors"
    ).fetchone()
    count = int(row[0]) if row else 0
    if not count:
        return 0, None
    first = cursor.execute(
        "SELECT s.file_path, e.line, e.column_name, e.error_message FROM reject_errors e"
        " JOIN reject_scans s USING (scan_id, file_id) ORDER BY s.file_path, e.line LIMIT 1"
    ).fetchone()
    assert first is not None
    path, line, column, message = first
    where = f"{path} line {line}" + (f", column {column!r}" if column else "")
    return count, f"{where}: {message.splitlines()[0]}"


def _write_rejects(cursor: duckdb.DuckDBPyConnection, target: Path) -> None:
    cursor.execute(
        "COPY (SELECT s.file_path AS file, e.line, e.column_name, e.error_type,"
        " e.error_message AS error, e.csv_line AS raw_line FROM reject_errors e"
        " JOIN reject_scans s USING (scan_id, file_id) ORDER BY file, line)"
        f" TO {_literal(str(target))} (FORMAT parquet)"
    )


def run(ctx: JobContext) -> None:
    import duckdb

    spec = ctx.spec(Spec)
    where = f"job {ctx.job.id}"
    try:
        files = expand_sources(spec.source, where)
        fmt = source_format(spec, files, where)
    except SpecError as error:
        raise JobFailed(str(error)) from None
    sources: list[dict[str, Any]] = []
    for path in files:
        stat = os.stat(path)
        sources.append({"path": path, "bytes": stat.st_size, "mtime": stat.st_mtime, "format": fmt})
    total = sum(s["bytes"] for s in sources)
    ctx.log(f"ingest {len(files)} {fmt} file(s), {total} bytes, into dataset {spec.dataset!r}")
    previous = None
    if spec.mode == "append":
        try:
            previous = version_info(ctx.store, spec.dataset)
        except LakeError:
            ctx.log(f"dataset {spec.dataset!r} has no version yet: append starts it")
    con = duckdb.connect(":memory:")
    cursor = con.cursor()
    cursor.execute(f"SET threads = {max(1, ctx.cpus)}")
    cursor.execute("SET enable_progress_bar = true")
    cursor.execute("SET enable_progress_bar_print = false")
    cursor.execute("SET progress_bar_time = 0")
    started = time.time()

    def write(tmp: Path) -> int:
        if fmt in ("csv", "tsv"):
            _overrides_known(cursor, spec, files, fmt)
        select = f"SELECT * FROM {source_sql(spec, files, fmt)}"
        if previous is not None:
            select = (
                f"SELECT * FROM read_parquet({_literal(previous.glob)}) UNION ALL BY NAME {select}"
            )
        watcher = _Watcher(ctx, cursor, f"reading {len(files)} file(s)")
        watcher.start()
        try:
            cursor.execute(
                f"COPY ({select}) TO {_literal(str(tmp / 'part-0.parquet'))} (FORMAT parquet)"
            )
        except duckdb.InterruptException:
            raise Cancelled("cancelled while reading the sources") from None
        except duckdb.Error as error:
            if ctx.cancel_requested:
                raise Cancelled("cancelled while reading the sources") from None
            raise JobFailed(f"cannot read the sources: {str(error).splitlines()[0]}") from None
        finally:
            watcher.done.set()
            watcher.join()
        count = 0
        if fmt in ("csv", "tsv"):
            count, first = _rejects(cursor)
            if count > spec.max_rejects:
                raise JobFailed(
                    f"{count} row(s) rejected, more than max_rejects = {spec.max_rejects};"
                    f" the first: {first}"
                )
            if count:
                _write_rejects(cursor, tmp / "rejects.parquet")
                ctx.log(f"{count} row(s) rejected (kept in {spec.dataset}_rejects); first: {first}")
        ctx.progress(0.96, "publishing")
        return count

    try:
        info = publish(
            ctx.home,
            ctx.store,
            spec.dataset,
            write,
            sources=sources,
            job_id=ctx.job.id,
            started_at=started,
        )
    finally:
        cursor.close()
        con.close()
    ctx.metrics(0, {"rows": info.rows, "rejected_rows": info.rejected_rows, "bytes": info.bytes})
    seconds = time.time() - started
    ctx.log(
        f"published {info.dataset} v{info.version}: {info.rows} rows, {info.rejected_rows} rejected,"
        f" {info.bytes} bytes in {seconds:.2f}s (sha256 {info.content_hash[:12]})"
    )
    ctx.progress(1.0, f"v{info.version}: {info.rows} rows")
