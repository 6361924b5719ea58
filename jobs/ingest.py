"""The `ingest` kind: CSV/TSV, Parquet, JSON and NDJSON files (or globs, compressed too) into a
new dataset version in the lake, with bad rows kept in a rejects table instead of dropped.

The rule of this kind: no value is changed or dropped without a word. Column types are decided
from the whole input (DuckDB guesses them from a sample; a later value that does not fit widens the
column and the load runs again), columns that only some files or records have are kept (null
elsewhere), a number is never rounded into an integer column, and a type override applies to every
format. With `sample_size` the user opts into the sampled types instead: a CSV value that does not
fit them goes to the rejects table with its line, and a fractional number in an integer column
fails the job."""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jobs import ingest_sources as remote
from jobs import ingest_strict as strict
from jobs.context import Cancelled, JobContext, JobFailed
from workbench.catalog import encryption, lake
from workbench.catalog.lake import LakeError, check_dataset_name, publish, version_info
from workbench.queue.spec import SpecError

if TYPE_CHECKING:
    import duckdb

Format = Literal["auto", "csv", "tsv", "parquet", "json", "ndjson", "sqlite", "postgres"]
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
    ".db": "sqlite",
    ".sqlite": "sqlite",
    ".sqlite3": "sqlite",
}

# The strings R and pandas users expect to read as missing (the common part of pandas'
# `read_csv` defaults): null in CSV/TSV unless `default_nulls = false`. Each one costs the
# reader a comparison per value, so the list stays short; `null` adds others.
DEFAULT_NULLS = ("", "NA", "N/A", "NaN", "null", "NULL", "None")

INTEGER_TYPES = frozenset(
    {
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
        "UHUGEINT",
        "INT",
        "INT1",
        "INT2",
        "INT4",
        "INT8",
        "LONG",
        "SHORT",
    }
)
NUMERIC_TYPES = INTEGER_TYPES | {"DOUBLE", "FLOAT", "REAL"}
# DuckDB's cast from text or JSON to an integer rounds (2.75 becomes 3), so integer columns are
# read as DOUBLE and checked to be whole before the cast. DOUBLE holds every integer below 2**53
# exactly; a column with larger values is read again as an exact decimal (slower: 128-bit).
FAST = "DOUBLE"
EXACT = "DECIMAL(38,18)"
_EXACT_BELOW = 2**53
_NOT_WHOLE = "wb-not-whole"
_TOO_BIG = "wb-too-big"

# The kind's default reservation: DuckDB's readers scale with threads, and an ingest is short.
DEFAULTS = {"cpus": min(4, os.cpu_count() or 1)}


@dataclass(frozen=True)
class Spec:
    """`source`: paths or globs (relative to the spec or pipeline file); `types`: per-column type
    overrides (DuckDB types, e.g. {"age" = "INTEGER"}), for every format; `null`: strings read as
    null in CSV/TSV, added to DEFAULT_NULLS (`default_nulls = false`: only these);
    `sample_size`: guess CSV types from this many rows instead of the whole input;
    `mode = "append"` keeps the previous version's rows in the new one; more than `max_rejects`
    bad rows fail the job; `encoding`: the CSV files' encoding (else decided, see
    `ingest_strict.decode`); `date_format`: a strptime format for CSV dates that are not ISO
    (`%d/%m/%Y`; without it such dates stay text). A source may be an `http(s)://` URL or an
    `s3://bucket/key` object (fetched first), or a SQLite database or `postgresql://` URI with
    `table` or `query` (see `ingest_sources`). `encrypt`: write the version and its rejects
    with the lake's key (see `catalog.lake.encryption_key`)."""

    source: list[str]
    dataset: str
    format: Format = "auto"
    header: bool | None = None
    delimiter: str | None = None
    null: list[str] = field(default_factory=list)
    default_nulls: bool = True
    types: dict[str, str] = field(default_factory=dict)
    sample_size: int | None = None
    mode: Literal["replace", "append"] = "replace"
    max_rejects: int = 10
    encoding: str | None = None
    date_format: str | None = None
    table: str | None = None
    query: str | None = None
    encrypt: bool = False


def _format_of(path: str) -> str | None:
    name = (remote.url_name(path) if remote.is_url(path) else path).lower()
    for suffix in _COMPRESSED:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return _EXTENSIONS.get(os.path.splitext(name)[1])


def expand_sources(patterns: list[str], where: str) -> list[str]:
    """Every file the patterns name, in order, each once; a pattern matching nothing is an error."""
    files: list[str] = []
    for number, pattern in enumerate(patterns):
        if remote.is_url(pattern) or remote.is_postgres(pattern):
            files.append(pattern)  # fetched or queried when the job runs
            continue
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            what = "no file matches" if glob.has_magic(pattern) else "no such file"
            raise SpecError(f"{where}: key 'source'[{number}]: {what} {pattern!r}")
        files.extend(m for m in matches if m not in files)
    return files


def source_format(spec: Spec, files: list[str], where: str) -> str:
    """The format of the sources: `spec.format`, else told by the files' extensions (one only)."""
    if spec.format != "auto":
        return spec.format
    formats = {"postgres" if remote.is_postgres(f) else _format_of(f) for f in files}
    if None in formats:
        unknown = next(f for f in files if _format_of(f) is None and not remote.is_postgres(f))
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
    patterns = [
        p
        if remote.is_url(p) or remote.is_postgres(p)
        else str((base_dir / os.path.expanduser(p)).resolve())
        for p in spec.source
    ]
    files = expand_sources(patterns, where)
    fmt = source_format(spec, files, where)
    database = {"sqlite": "SQLite", "postgres": "PostgreSQL"}.get(fmt)
    if database and (spec.table is None) == (spec.query is None):
        raise SpecError(
            f"{where}: a {database} source needs key 'table' or key 'query' (one of them)"
        )
    if database is None and (spec.table is not None or spec.query is not None):
        raise SpecError(
            f"{where}: keys 'table' and 'query' apply to a SQLite or PostgreSQL source only"
        )
    if spec.max_rejects < 0:
        raise SpecError(f"{where}: key 'max_rejects': must not be negative")
    if spec.delimiter is not None and len(spec.delimiter) != 1:
        raise SpecError(f"{where}: key 'delimiter': must be one character, got {spec.delimiter!r}")
    if spec.sample_size is not None:
        if spec.sample_size < 1:
            raise SpecError(f"{where}: key 'sample_size': must be at least 1")
        if fmt not in ("csv", "tsv"):
            raise SpecError(
                f"{where}: key 'sample_size': only CSV/TSV types can be sampled; {fmt} is always"
                " read whole (a sample would drop keys and values it did not see)"
            )
    if spec.encoding is not None:
        why = strict.check_encoding_name(spec.encoding)
        if why is not None:
            raise SpecError(f"{where}: key 'encoding': {why}")
    if (spec.encoding is not None or spec.date_format is not None) and fmt not in ("csv", "tsv"):
        raise SpecError(
            f"{where}: keys 'encoding' and 'date_format' apply to CSV/TSV only ({fmt} is read"
            " as its format defines)"
        )
    if spec.date_format is not None and "%" not in spec.date_format:
        raise SpecError(
            f"{where}: key 'date_format': {spec.date_format!r} has no % field (e.g. %d/%m/%Y)"
        )
    for column, kind in spec.types.items():
        if not kind.strip():
            raise SpecError(f"{where}: key 'types': column {column!r} has an empty type")
        why = lake.check_type_name(kind)
        if why is not None:
            raise SpecError(
                f"{where}: key 'types': column {column!r}: {kind!r} is not a DuckDB type ({why})"
            )
    return replace(spec, source=patterns)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _list(values: list[str]) -> str:
    return "[" + ", ".join(_literal(v) for v in values) + "]"


def _struct(pairs: dict[str, str]) -> str:
    return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in pairs.items()) + "}"


def null_strings(spec: Spec) -> list[str]:
    """The strings read as null in CSV/TSV: DEFAULT_NULLS (unless turned off) and the spec's."""
    base = list(DEFAULT_NULLS) if spec.default_nulls else []
    return base + [n for n in spec.null if n not in base]


def _base_type(kind: str) -> str:
    return kind.strip().upper().split("(")[0].strip()


def is_integer(kind: str) -> bool:
    return _base_type(kind) in INTEGER_TYPES


def widen(kind: str, value: str | None = None) -> str:
    """The next type up for a column whose guessed type did not fit a value: integers and
    decimals become DOUBLE when the value is a number, everything else VARCHAR."""
    number = value is None or re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", value)
    if _base_type(kind) in INTEGER_TYPES | {"DECIMAL", "NUMERIC"} and number:
        return "DOUBLE"
    return "VARCHAR"


def _csv_options(spec: Spec, fmt: str, sample_size: int | None) -> list[str]:
    options = [f"nullstr = {_list(null_strings(spec))}"]
    if spec.header is not None:
        options.append(f"header = {str(spec.header).lower()}")
    delimiter = spec.delimiter or ("\t" if fmt == "tsv" else None)
    if delimiter is not None:
        options.append(f"delim = {_literal(delimiter)}")
    if sample_size is not None:
        options.append(f"sample_size = {sample_size}")
    return options


def csv_sql(
    spec: Spec,
    files: list[str],
    fmt: str,
    types: dict[str, str] | None = None,
    dialect: tuple[str, ...] = (),
) -> str:
    """`read_csv` of files that share one header and `dialect` (options from `sniff_dialect`),
    with rejects kept and `types` (every column; `ingest_strict` converts text itself, so the
    load reads every column as VARCHAR)."""
    options = ["store_rejects = true", *_csv_options(spec, fmt, spec.sample_size), *dialect]
    if types is not None:
        options.append(f"types = {_struct(types)}")
    return f"read_csv({_list(files)}, {', '.join(options)})"


def json_sql(files: list[str], fmt: str, columns: dict[str, str] | None) -> str:
    """`read_json` of the files: the whole input's schema when `columns` is None (to describe
    it), else exactly `columns`."""
    form = "newline_delimited" if fmt == "ndjson" else "auto"
    if columns is None:
        options = "union_by_name = true, sample_size = -1"
    else:
        options = f"columns = {_struct(columns)}"
    return f"read_json({_list(files)}, format = {_literal(form)}, {options})"


def parquet_sql(files: list[str]) -> str:
    return f"read_parquet({_list(files)}, union_by_name = true)"


def column_expression(
    index: int, name: str, read_type: str, final_type: str, check_whole: bool
) -> str:
    """How one column is selected: cast to its final type, and where the final type is an
    integer read from something else, checked to be whole first: a fraction stops the load with
    a marked error naming the column's index and value (never rounded); a whole number read as
    DOUBLE beyond 2**53 stops it with another mark, to be read again exactly."""
    column = _quote(name)
    if not check_whole:
        if read_type.upper() == final_type.upper():
            return column
        return f"CAST({column} AS {final_type}) AS {column}"
    base = _base_type(read_type)
    value = (
        column
        if base in ("DECIMAL", "NUMERIC", "DOUBLE", "FLOAT")
        else f"CAST({column} AS {EXACT})"
    )
    fraction = f"error('{_NOT_WHOLE} {index} ' || CAST({column} AS VARCHAR))"
    if base in ("DOUBLE", "FLOAT"):
        return (
            f"CASE WHEN {value} IS NULL THEN NULL WHEN {value} = trunc({value}) AND"
            f" abs({value}) < {_EXACT_BELOW} THEN CAST({value} AS {final_type})"
            f" WHEN {value} = trunc({value}) THEN error('{_TOO_BIG} {index}')"
            f" ELSE {fraction} END AS {column}"
        )
    return (
        f"CASE WHEN {value} IS NULL OR {value} = trunc({value}) THEN CAST({value} AS {final_type})"
        f" ELSE {fraction} END AS {column}"
    )


def too_big(error: str) -> int | None:
    """The column index of the mark `column_expression` raises for a whole number past 2**53."""
    match = re.search(rf"{_TOO_BIG} (\d+)", error)
    return int(match.group(1)) if match else None


def not_whole(error: str) -> tuple[int, str] | None:
    """(column index, value) of the marked error `column_expression` raises, if it is one."""
    match = re.search(rf"{_NOT_WHOLE} (\d+) (.*)", error)
    if match is None:
        return None
    value = match.group(2).strip()
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return int(match.group(1)), value


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


Reject = tuple[str, int, str | None, str, str, str, bytes | None]
"""(source file, line, column, error type, error, raw line as text, the line's original bytes)"""


def _rejects(cursor: duckdb.DuckDBPyConnection, plan: Plan) -> list[Reject]:
    """DuckDB's rejected rows (one per error), with the source's path and the line's original
    bytes (read back from the file: DuckDB's `csv_line` shows bytes that are not UTF-8 as ?)."""
    rows = cursor.execute(
        "SELECT s.file_path, e.line, e.column_name, e.error_type, e.error_message, e.csv_line,"
        " e.line_byte_position FROM reject_errors e JOIN reject_scans s USING (scan_id, file_id)"
        " ORDER BY s.file_path, e.line"
    ).fetchall()
    found: list[Reject] = []
    for path, line, column, kind, message, text, position in rows:
        decoded = plan.sources.get(str(path), strict.Decoded(str(path), str(path), "utf-8"))
        raw = strict.raw_bytes(decoded, position)
        shown = str(text or "")
        if raw is not None:
            try:
                raw.decode(decoded.encoding)
                raw = shown.encode(decoded.encoding, "replace")
            except UnicodeDecodeError:
                shown = raw.decode(decoded.encoding, "backslashreplace")
        found.append((decoded.source, int(line), column, str(kind), str(message), shown, raw))
    return found


def _reject_sentence(reject: Reject) -> str:
    path, line, column, _, message, _, _ = reject
    where = f"{path} line {line}" + (f", column {column!r}" if column else "")
    return f"{where}: {message.splitlines()[0]}"


def _dialect_value(dialect: tuple[str, ...], key: str) -> str | None:
    for option in dialect:
        name, _, value = option.partition(" = ")
        if name == key and value.startswith("'"):
            return value[1:-1].replace("''", "'")
    return None


def _reader_dialect(spec: Spec, fmt: str, dialect: tuple[str, ...]) -> tuple[str, str, bool]:
    """(delimiter, quote, header) of a CSV group, for Python's csv module."""
    delimiter = spec.delimiter or _dialect_value(dialect, "delim")
    delimiter = delimiter or ("\t" if fmt == "tsv" else ",")
    quote = _dialect_value(dialect, "quote") or '"'
    header = "header = true" in dialect or bool(spec.header)
    return delimiter, quote, header


def _find_line(spec: Spec, fmt: str, plan: Plan, column: str, value: str) -> str:
    """Where `value` sits in `column`: " on line N of FILE", or "" when it cannot be found."""
    for paths, header, dialect in plan.groups:
        if column not in header:
            continue
        delimiter, quote, has_header = _reader_dialect(spec, fmt, dialect)
        for path in paths:
            decoded = plan.sources.get(path, strict.Decoded(path, path, "utf-8"))
            (hit,) = strict.locate(
                decoded, delimiter, quote, has_header, [(header.index(column), value)]
            )
            if hit is not None:
                return f" on line {hit[0]} of {decoded.source}"
    return ""


def _rows_read(cursor: duckdb.DuckDBPyConnection, spec: Spec, plan: Plan, fmt: str) -> int:
    """The rows the load's WHERE clause saw (records with the right number of fields): when
    the load wrote as many, no value failed its check and the rejects need no search."""
    total = 0
    for paths, header, dialect in plan.groups:
        options = [*_csv_options(spec, fmt, spec.sample_size), *dialect, "ignore_errors = true"]
        options.append(f"types = {_struct(dict.fromkeys(header, 'VARCHAR'))}")
        row = cursor.execute(
            f"SELECT count(*) FROM read_csv({_list(paths)}, {', '.join(options)})"
        ).fetchone()
        total += int(row[0]) if row else 0
    return total


def _strict_rejects(
    cursor: duckdb.DuckDBPyConnection, spec: Spec, plan: Plan, fmt: str
) -> list[Reject]:
    """With `--sample-size`: the rows the load left out because a value did not convert to
    its sampled type exactly, each with its line and original bytes (at most max_rejects + 1
    are looked for: more fail the job anyway)."""
    if not plan.text:
        return []
    found: list[Reject] = []
    conditions = plan.strict_parts()[1]
    for paths, header, dialect in plan.groups:
        checks = [(column, condition) for column, condition in conditions if column in header]
        if not checks:
            continue
        # One entry per value that fails, as DuckDB's rejects list one per column.
        failing = ", ".join(
            f"CASE WHEN NOT {condition} THEN struct_pack(c := {_literal(column)},"
            f" v := {_quote(column)}) END"
            for column, condition in checks
        )
        delimiter, quote, has_header = _reader_dialect(spec, fmt, dialect)
        for path in paths:
            source = plan.text_from(
                csv_sql(spec, [path], fmt, {c: "VARCHAR" for c in header}, dialect), header
            )
            rows = cursor.execute(
                f"SELECT e.c, e.v FROM (SELECT unnest(list_filter([{failing}], lambda x: x IS NOT"
                f" NULL)) AS e FROM {source}) LIMIT {(spec.max_rejects + 1) * len(checks)}"
            ).fetchall()
            if not rows:
                continue
            decoded = plan.sources.get(path, strict.Decoded(path, path, "utf-8"))
            wanted = [(header.index(str(column)), str(text)) for column, text in rows]
            hits = strict.locate(decoded, delimiter, quote, has_header, wanted)
            for (column, text), hit in zip(rows, hits, strict=True):
                line, raw = hit if hit is not None else (0, None)
                kind = plan.final_types[str(column)]
                why = (
                    f"{text!r} is not a {kind} value (the type you gave)"
                    if column in plan.user_typed
                    else f"{text!r} does not convert to {kind} exactly (the type guessed from the"
                    f" first {spec.sample_size} rows); it is never changed"
                )
                found.append(
                    (
                        decoded.source,
                        line,
                        str(column),
                        "CAST",
                        why,
                        raw.decode(decoded.encoding, "backslashreplace") if raw else "",
                        raw,
                    )
                )
    return found


def _write_rejects(
    cursor: duckdb.DuckDBPyConnection, target: Path, found: list[Reject], encrypted: bool
) -> None:
    cursor.execute(
        "CREATE TEMP TABLE wb_rejects (file VARCHAR, line BIGINT, column_name VARCHAR,"
        " error_type VARCHAR, error VARCHAR, raw_line VARCHAR, raw_bytes BLOB)"
    )
    cursor.executemany("INSERT INTO wb_rejects VALUES (?, ?, ?, ?, ?, ?, ?)", found)
    cursor.execute(
        f"COPY (SELECT * FROM wb_rejects ORDER BY file, line, column_name) TO"
        f" {_literal(str(target))} (FORMAT parquet{_encrypted_option(encrypted)})"
    )


def _encrypted_option(encrypted: bool) -> str:
    """The COPY option that writes with the lake's key (registered on the connection)."""
    return f", {encryption.write_option()}" if encrypted else ""


def _is_empty(path: str) -> bool:
    """No bytes, or (gzip) nothing once decompressed, or only white space."""
    if os.path.getsize(path) == 0:
        return True
    opener: Any = gzip.open if path.lower().endswith((".gz", ".gzip")) else open
    try:
        with opener(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return not head.strip()


@dataclass
class Plan:
    """What the load reads and writes: the source's columns in order, the type each is read as,
    the type it is stored as, and which of them the user typed (never widened)."""

    columns: list[str]
    read_types: dict[str, str]
    final_types: dict[str, str]
    user_typed: set[str]
    # CSV: (files, columns, dialect options) per group of files read together
    groups: list[tuple[list[str], list[str], tuple[str, ...]]] = field(default_factory=list)
    exact: set[str] = field(default_factory=set)  # integer columns read as EXACT, not FAST
    # CSV: every column read as text and converted by ingest_strict; `sampled`: guessed
    # columns reject what does not convert (else it widens them); per-column date formats
    text: bool = False
    sampled: bool = False
    date_formats: dict[str, str] = field(default_factory=dict)
    sources: dict[str, strict.Decoded] = field(default_factory=dict)  # read path -> decoded
    # Parquet: the one source file is stored as it is (see `parquet_copyable`)
    copy: bool = False

    def integer_read_type(self, column: str) -> str:
        """What a text source's integer column is read as (see FAST and EXACT)."""
        return EXACT if column in self.exact else FAST

    def strict_parts(self) -> tuple[list[str], list[tuple[str, str]]]:
        """CSV: the select expressions and the (column, condition) pairs a kept row meets
        (sampled guesses, and declared types a value must parse as)."""
        exprs: list[str] = []
        conditions: list[tuple[str, str]] = []
        for i, c in enumerate(self.columns):
            fail = not self.sampled or c in self.user_typed
            expr, condition = strict.strict_column(
                i,
                c,
                self.final_types[c],
                self.date_formats.get(c),
                fail,
                c in self.user_typed,
                self.sampled,
            )
            exprs.append(expr)
            if condition is not None:
                conditions.append((c, condition))
        return exprs, conditions

    def select(self) -> str:
        if self.text:
            return ", ".join(self.strict_parts()[0])
        exprs = [
            column_expression(
                i,
                c,
                self.read_types[c],
                strict.stored_type(self.final_types[c]),
                is_integer(self.final_types[c]) and not is_integer(self.read_types[c]),
            )
            for i, c in enumerate(self.columns)
        ]
        return ", ".join(exprs)

    def text_from(self, source: str, columns: list[str] | None = None) -> str:
        """`source` with each text column's cast computed once beside it (see
        `ingest_strict.cast_sql`), for the checks and conversions to share."""
        casts = [
            cast
            for i, c in enumerate(self.columns)
            if (columns is None or c in columns)
            and (cast := strict.cast_sql(i, c, self.final_types[c], self.date_formats.get(c)))
        ]
        if not casts:
            return source
        return f"(SELECT *, {', '.join(casts)} FROM {source})"

    def where(self) -> str:
        """The WHERE clause keeping the rows every sampled guess converts exactly, or ''."""
        if not self.text:
            return ""
        conditions = [condition for _, condition in self.strict_parts()[1]]
        return f" WHERE {' AND '.join(conditions)}" if conditions else ""


def _describe(cursor: duckdb.DuckDBPyConnection, source: str) -> list[tuple[str, str]]:
    return [
        (str(r[0]), str(r[1]))
        for r in cursor.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
    ]


def _check_overrides(spec: Spec, columns: list[str]) -> None:
    """A type override for a column the sources do not have is an error naming it."""
    missing = [c for c in spec.types if c not in columns]
    if missing:
        raise JobFailed(
            f"key 'types': column {missing[0]!r} is not in the source (its columns:"
            f" {', '.join(columns)})"
        )


def _merge_type(a: str, b: str) -> str:
    """One type for a column two files guessed differently."""
    if a.upper() == b.upper():
        return a
    if _base_type(a) in NUMERIC_TYPES and _base_type(b) in NUMERIC_TYPES:
        return "DOUBLE"
    return "VARCHAR"


def sniff_dialect(
    cursor: duckdb.DuckDBPyConnection, spec: Spec, path: str, fmt: str
) -> tuple[tuple[str, ...], str | None]:
    """The `read_csv` options (delimiter, quote, escape, header) of one file, sniffed with
    `ignore_errors` so that a ragged row (too many or too few fields, anywhere in the file) is
    left out of the vote instead of making DuckDB's sniffer pick another dialect (a whole line
    as one column named like "a,b") or give up. The user's own `delimiter`/`header` win. A file
    the sniffer cannot read at all gets () (DuckDB's own sniffing, and its error, at the load).
    Second: the date or timestamp format the sniffer chose when it is not ISO (`%d/%m/%Y`),
    else None.
    """
    import duckdb

    options = ", ".join([*_csv_options(spec, fmt, spec.sample_size), "ignore_errors = true"])
    try:
        row = cursor.execute(
            "SELECT Delimiter, Quote, Escape, HasHeader, DateFormat, TimestampFormat"
            f" FROM sniff_csv({_literal(path)}, {options})"
        ).fetchone()
    except duckdb.Error:
        return (), None
    if row is None:
        return (), None
    delim, quote, escape, has_header = (str(row[0]), str(row[1]), str(row[2]), bool(row[3]))
    date_format = next((str(f) for f in row[4:6] if f and not str(f).startswith("%Y-%m-%d")), None)
    dialect: list[str] = []
    if spec.delimiter is None and fmt != "tsv" and delim != "(empty)":
        dialect.append(f"delim = {_literal(delim)}")
    # No quote seen: RFC 4180's double quote still applies (a later quoted field is read whole).
    dialect.append(f"quote = {_literal(quote if quote != '(empty)' else chr(34))}")
    if escape != "(empty)":
        dialect.append(f"escape = {_literal(escape)}")
    if spec.header is None:
        dialect.append(f"header = {str(has_header).lower()}")
    return tuple(dialect), date_format


def header_names(
    cursor: duckdb.DuckDBPyConnection, path: str, dialect: tuple[str, ...]
) -> list[str | None]:
    """The header row's fields as written (None for an empty one), read as a data row."""
    options = [o for o in dialect if not o.startswith("header")]
    options += [
        "header = false",
        "all_varchar = true",
        "nullstr = ['\\x00']",
        "ignore_errors = true",
    ]
    row = cursor.execute(
        f"SELECT * FROM read_csv({_literal(path)}, {', '.join(options)}) LIMIT 1"
    ).fetchone()
    return [None if v is None or v == "" else str(v) for v in (row or ())]


def plan_csv(
    cursor: duckdb.DuckDBPyConnection,
    spec: Spec,
    files: list[str],
    fmt: str,
    decoded: list[strict.Decoded] | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> Plan:
    """Sniff each file's dialect and header (ragged rows left out, see `sniff_dialect`), name
    its columns (`ingest_strict.unique_names`, logged), guess its types (DuckDB's sample; the
    strict load checks every value against them), group the files by header and dialect, and
    decide one type per column. `decoded`: the UTF-8 files DuckDB reads (see
    `ingest_strict.decode`), one per file. Guesses that would change values are not taken:
    BOOLEAN stays only for `true`/`false` (checked at the load), and dates in a format that is
    not ISO stay text unless `date_format` says how to read them (logged either way)."""
    decoded = decoded or [strict.Decoded(f, f, "utf-8") for f in files]
    options = [*_csv_options(spec, fmt, spec.sample_size), "ignore_errors = true"]
    if spec.date_format:
        options.append(f"dateformat = {_literal(spec.date_format)}")
    by_header: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}
    guessed: dict[str, str] = {}
    order: list[str] = []
    non_iso: dict[str, str] = {}
    for item in decoded:
        path = item.path
        dialect, date_format = sniff_dialect(cursor, spec, path, fmt)
        if "header = true" in dialect or (spec.header and dialect):
            raw = header_names(cursor, path, dialect)
            names, notes = strict.unique_names(raw)
            if notes:
                for note in notes:
                    log(f"{item.source}: {note}")
            if notes or any(n != r for n, r in zip(names, raw, strict=False)):
                dialect = (*dialect, f"names = {_list(names)}")
        source = f"read_csv({_literal(path)}, {', '.join([*options, *dialect])})"
        described = _describe(cursor, source)
        if described == [("column0", "VARCHAR")]:
            row = cursor.execute(f"SELECT count(*) FROM {source}").fetchone()
            if not row or not row[0]:  # what DuckDB makes of a file with nothing in it
                raise JobFailed(f"{item.source} is empty: nothing to ingest (no version published)")
        header = tuple(name for name, _ in described)
        by_header.setdefault((header, dialect), []).append(path)
        for name, kind in described:
            if date_format and strict.base_type(kind) in ("DATE", "TIMESTAMP", "TIMESTAMPTZ"):
                non_iso[name] = date_format
            if name not in guessed:
                order.append(name)
                guessed[name] = kind
            else:
                guessed[name] = _merge_type(guessed[name], kind)
    _check_overrides(spec, order)
    final = {c: spec.types.get(c, guessed[c]) for c in order}
    plan = Plan(order, {}, final, set(spec.types), text=True, sampled=spec.sample_size is not None)
    plan.sources = {d.path: d for d in decoded}
    for column, found in non_iso.items():
        if column in spec.types:
            continue
        if spec.date_format and strict.base_type(final[column]) == "DATE":
            plan.date_formats[column] = spec.date_format
            log(f"column {column!r}: dates read as {spec.date_format} (--date-format)")
            continue
        final[column] = "VARCHAR"
        log(
            f"column {column!r}: dates like {found} are not ISO and may be read either way"
            f" (day or month first): kept as text; give --date-format (e.g. {found}) to read"
            " them as dates"
        )
    for column, kind in spec.types.items():
        if spec.date_format and strict.base_type(kind) == "DATE":
            plan.date_formats[column] = spec.date_format
    plan.groups = [(group, list(header), dialect) for (header, dialect), group in by_header.items()]
    plan.read_types = dict.fromkeys(order, "VARCHAR")
    return plan


def _set_read_types(plan: Plan) -> None:
    plan.read_types = {
        c: (plan.integer_read_type(c) if is_integer(t) else t) for c, t in plan.final_types.items()
    }


def csv_from(spec: Spec, plan: Plan, fmt: str) -> str:
    """The FROM clause reading every CSV group with the plan's read types."""
    parts = [
        "SELECT * FROM "
        + csv_sql(spec, group, fmt, {c: plan.read_types[c] for c in header}, dialect)
        for group, header, dialect in plan.groups
    ]
    if len(parts) == 1:
        return f"({parts[0]})"
    return "(" + " UNION ALL BY NAME ".join(parts) + ")"


def plan_json(cursor: duckdb.DuckDBPyConnection, spec: Spec, files: list[str], fmt: str) -> Plan:
    """The whole input's schema (every record read: keys that appear late are kept, and a
    column whose values mix types becomes text), then the overrides."""
    try:
        described = _describe(cursor, json_sql(files, fmt, None))
    except Exception as error:
        raise JobFailed(f"cannot read the sources: {str(error).splitlines()[0]}") from None
    if [t for _, t in described] == ["JSON"] and described[0][0] == "json":
        raise JobFailed(
            f"no records in {', '.join(files)}: nothing to ingest (a JSON source needs at least"
            " one object)"
        )
    order = [n for n, _ in described]
    _check_overrides(spec, order)
    # A column of mixed scalars comes out as JSON (`7`, `"seven"`): store it as text without
    # JSON quoting; the reader gives `7` and `seven`.
    final = {n: spec.types.get(n, "VARCHAR" if t == "JSON" else t) for n, t in described}
    plan = Plan(order, {}, final, set(spec.types))
    plan.read_types = {
        c: (plan.integer_read_type(c) if c in spec.types and is_integer(t) else t)
        for c, t in final.items()
    }
    # DuckDB 1.4 reads offset timestamps in JSON as text (2.0 guessed TIMESTAMPTZ): a text
    # column of nothing but offset timestamps converts, the same instant in any zone.
    texts = [c for c, t in described if t == "VARCHAR" and c not in spec.types]
    if texts:
        sql = strict.offset_timestamps_sql(texts, json_sql(files, fmt, dict(described)))
        found = cursor.execute(sql).fetchone() or ()
        for column, offsets in zip(texts, found, strict=True):
            if offsets:
                plan.final_types[column] = "TIMESTAMPTZ"
    return plan


def plan_parquet(cursor: duckdb.DuckDBPyConnection, spec: Spec, files: list[str]) -> Plan:
    """Parquet files carry their schema; files that differ are unioned by column name."""
    described = _describe(cursor, parquet_sql(files))
    order = [n for n, _ in described]
    _check_overrides(spec, order)
    read = dict(described)
    final = {n: spec.types.get(n, t) for n, t in described}
    return Plan(order, read, final, set(spec.types))


# A Parquet file whose row groups are all this small or smaller is stored as it is: DuckDB
# scans a file in parallel by row group, so one huge group would make every later query of the
# version single-threaded (pyarrow's default groups are this size; DuckDB writes 122,880 rows).
COPY_ROW_GROUP_ROWS = 1 << 20


def _watched_count(ctx: JobContext, con: duckdb.DuckDBPyConnection, what: str, sql: str) -> int:
    """Run `sql` (a COPY, or a SELECT whose first column is a count) with its progress reported
    as `what` (`_Watcher`), and return the rows it counted. Raises Cancelled when the job is
    cancelled meanwhile."""
    import duckdb

    watcher = _Watcher(ctx, con, what)
    watcher.start()
    try:
        done = con.execute(sql).fetchone()
    except duckdb.InterruptException:
        raise Cancelled("cancelled while reading the sources") from None
    finally:
        watcher.done.set()
        watcher.join()
    return int(done[0]) if done else 0


def parquet_copyable(cursor: duckdb.DuckDBPyConnection, spec: Spec, plan: Plan, path: str) -> bool:
    """Whether a single Parquet source can be stored byte for byte instead of decoded and
    written again: no type override, every column stored as DuckDB reads it (`stored_type`),
    and no row group over COPY_ROW_GROUP_ROWS. The stored file then reads back exactly as the
    source reads (the same bytes); `load` still decodes every value of the copy once, so a file
    DuckDB cannot read whole (a corrupt page, text that is not UTF-8) fails the job as before.
    The caller rules out appending and encrypting (both need a rewrite)."""
    if spec.types or any(strict.stored_type(t) != t for t in plan.final_types.values()):
        return False
    row = cursor.execute(
        f"SELECT max(row_group_num_rows) FROM parquet_metadata({_literal(path)})"
    ).fetchone()
    return row is not None and int(row[0] or 0) <= COPY_ROW_GROUP_ROWS


def run(ctx: JobContext) -> None:

    spec = ctx.spec(Spec)
    where = f"job {ctx.job.id}"
    try:
        files = expand_sources(spec.source, where)
        fmt = source_format(spec, files, where)
    except SpecError as error:
        raise JobFailed(str(error)) from None
    (ctx.home.root / "tmp").mkdir(parents=True, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="ingest-", dir=ctx.home.root / "tmp")
    try:
        _run(ctx, spec, files, fmt, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _materialise(
    ctx: JobContext, spec: Spec, files: list[str], fmt: str, workdir: str
) -> tuple[list[str], str, list[dict[str, Any]]]:
    """Local files for every source: URLs fetched into `workdir`, a SQLite table or query
    written there as Parquet. Returns the files, their format, and each one's lineage (the
    source's own path or URL first)."""
    local: list[str] = []
    origins: list[dict[str, Any]] = []
    for source in files:
        origin: dict[str, Any] = {"path": source}
        path = source
        if remote.is_url(source):
            try:
                path, fetched = remote.fetch(source, workdir)
            except remote.SourceError as error:
                raise JobFailed(str(error)) from None
            origin = {"path": fetched["url"], **fetched}
            ctx.log(
                f"fetched {fetched['url']}: {fetched['bytes']} bytes, sha256 {fetched['sha256']}"
            )
        if fmt == "sqlite":
            try:
                path, read = remote.sqlite_to_parquet(path, spec.table, spec.query, workdir)
            except remote.SourceError as error:
                raise JobFailed(str(error)) from None
            origin = {**origin, **read}
            ctx.log(f"read {read['rows']} row(s) from SQLite {source}")
        elif fmt == "postgres":
            try:
                path, read = remote.postgres_to_parquet(source, spec.table, spec.query, workdir)
            except remote.SourceError as error:
                raise JobFailed(str(error)) from None
            origin = {**origin, "path": read["database"], **read}
            ctx.log(f"read {read['rows']} row(s) from PostgreSQL {read['database']}")
        local.append(path)
        origins.append(origin)
    empty = [(o["path"], f) for o, f in zip(origins, local, strict=True) if _is_empty(f)]
    if empty:
        raise JobFailed(
            f"{empty[0][0]} is empty: nothing to ingest (no version published"
            f"{'; the dataset keeps its rows' if spec.mode == 'replace' else ''})"
        )
    return local, ("parquet" if fmt in ("sqlite", "postgres") else fmt), origins


def _run(ctx: JobContext, spec: Spec, files: list[str], fmt: str, workdir: str) -> None:
    import duckdb

    named = fmt
    files, fmt, origins = _materialise(ctx, spec, files, fmt, workdir)

    decoded: list[strict.Decoded] = []
    if fmt in ("csv", "tsv"):
        checking = time.time()
        for path in files:
            try:
                item = strict.decode(path, spec.encoding, workdir)
            except strict.EncodingError as error:
                raise JobFailed(str(error)) from None
            if item.note:
                ctx.log(item.note)
            decoded.append(item)
        decoded = [replace(d, source=o["path"]) for d, o in zip(decoded, origins, strict=True)]
        ctx.log(f"checked the encoding of {len(files)} file(s) in {time.time() - checking:.2f}s")
    sources: list[dict[str, Any]] = []
    for number, path in enumerate(files):
        stat = os.stat(path)
        source = {"bytes": stat.st_size, "mtime": stat.st_mtime, **origins[number], "format": named}
        if decoded:
            source["encoding"] = decoded[number].encoding
        sources.append(source)
    total = sum(s["bytes"] for s in sources)
    ctx.log(f"ingest {len(files)} {fmt} file(s), {total} bytes, into dataset {spec.dataset!r}")
    previous = None
    if spec.mode == "append":
        try:
            previous = version_info(ctx.store, spec.dataset)
        except LakeError:
            ctx.log(f"dataset {spec.dataset!r} has no version yet: append starts it")
    try:
        key = lake.encryption_key(ctx.home, ctx.store, spec.dataset, spec.encrypt)
    except LakeError as error:
        raise JobFailed(str(error)) from None
    if key is not None:
        ctx.log(f"writing encrypted (AES-GCM) with the key in {key.path} (key {key.fingerprint})")
    started = time.time()
    threads = max(1, int(ctx.cpus))

    def connect() -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(":memory:")
        con.execute(f"SET threads = {threads}")
        con.execute("SET enable_progress_bar = true")
        con.execute("SET enable_progress_bar_print = false")
        con.execute("SET progress_bar_time = 0")
        con.execute(f"SET TimeZone = {_literal(strict.SESSION_TIME_ZONE)}")
        if key is not None:
            lake.register_key(con, key)
        return con

    def load(con: duckdb.DuckDBPyConnection, plan: Plan, target: Path) -> int:
        if plan.copy:
            return copy(con, target)
        if fmt in ("csv", "tsv"):
            source = csv_from(spec, plan, fmt)
        elif fmt == "parquet":
            source = parquet_sql(files)
        else:
            source = json_sql(files, fmt, plan.read_types)
        if plan.text:
            source = plan.text_from(source)
        select = f"SELECT {plan.select()} FROM {source}{plan.where()}"
        if previous is not None:
            before = lake.parquet_source(previous.parts, previous.encrypted)
            select = f"SELECT * FROM {before} UNION ALL BY NAME {select}"
        # The rejects tables are the connection's own: the COPY runs on it, not on a cursor.
        return _watched_count(
            ctx,
            con,
            f"reading {len(files)} file(s)",
            f"COPY ({select}) TO {_literal(str(target))}"
            f" (FORMAT parquet{_encrypted_option(key is not None)})",
        )

    def copy(con: duckdb.DuckDBPyConnection, target: Path) -> int:
        """The Parquet source copied as it is, then every value of the copy decoded once (hashed:
        the check a rewrite would make; the copy, not the source, so that what is checked is
        what is stored). Returns its rows."""
        shutil.copyfile(files[0], target)
        return _watched_count(
            ctx,
            con,
            "checking the copied file",
            f"SELECT count(*), bit_xor(hash(COLUMNS(*))) FROM {parquet_sql([str(target)])}",
        )

    def write(tmp: Path) -> int:
        con = connect()
        try:
            if fmt in ("csv", "tsv"):
                plan = plan_csv(con, spec, files, fmt, decoded, ctx.log)
            elif fmt == "parquet":
                plan = plan_parquet(con, spec, files)
                if len(files) == 1 and previous is None and key is None:
                    plan.copy = parquet_copyable(con, spec, plan, files[0])
            else:
                plan = plan_json(con, spec, files, fmt)
        except duckdb.Error as error:
            raise JobFailed(f"cannot read the sources: {str(error).splitlines()[0]}") from None
        finally:
            con.close()
        planned = time.time()
        target = tmp / "part-0.parquet"
        widenings = 0
        while True:
            con = connect()
            try:
                try:
                    total = load(con, plan, target)
                    written = total - (previous.rows if previous else 0)
                except duckdb.Error as error:
                    if ctx.cancel_requested:
                        raise Cancelled("cancelled while reading the sources") from None
                    if plan.text and _widen_strict(ctx, spec, fmt, plan, str(error)):
                        widenings += 1
                        continue
                    if fmt in ("json", "ndjson") and _widen_json_integers(ctx, plan, str(error)):
                        widenings += 1
                        continue
                    if not _widen_after_fraction(ctx, spec, plan, str(error)):
                        raise JobFailed(
                            f"cannot read the sources: {_first_line(str(error))}"
                        ) from None
                    widenings += 1
                    continue
                count = 0
                if fmt in ("csv", "tsv"):
                    if spec.sample_size is None and _widen_after_rejects(ctx, con, plan):
                        widenings += 1
                        continue
                    found = _rejects(con, plan)
                    if plan.where() and _rows_read(con, spec, plan, fmt) > written:
                        found += _strict_rejects(con, spec, plan, fmt)
                    found.sort(key=lambda r: (r[0], r[1]))
                    count = len({(r[0], r[1]) for r in found})
                    first = _reject_sentence(found[0]) if found else None
                    if count > spec.max_rejects:
                        raise JobFailed(
                            f"{count} row(s) rejected, more than max_rejects ="
                            f" {spec.max_rejects}; the first: {first}"
                        )
                    if count:
                        _write_rejects(con, tmp / "rejects.parquet", found, key is not None)
                        ctx.log(
                            f"{count} row(s) rejected (kept in {spec.dataset}_rejects);"
                            f" first: {first}"
                        )
            finally:
                con.close()
            break
        if fmt in ("json", "ndjson") and not total:
            raise JobFailed(
                f"no records in {', '.join(files)}: nothing to ingest (a JSON source needs at"
                " least one object)"
            )
        if fmt not in ("json", "ndjson") and count and spec.mode == "replace" and not total:
            raise JobFailed(
                f"no row of {', '.join(files)} could be read ({count} rejected; the first:"
                f" {first}): nothing published, the dataset keeps its rows"
            )
        how = "copied as it is and read" if plan.copy else "read and written"
        ctx.log(
            f"types decided in {planned - started:.2f}s, {how} in"
            f" {time.time() - planned:.2f}s ({widenings + 1} pass(es))"
        )
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
    except LakeError as error:  # e.g. a name that differs from another dataset's only in case
        raise JobFailed(str(error)) from None
    seconds = time.time() - started
    if info.job_id != ctx.job.id:
        ctx.log(f"identical to {info.dataset} v{info.version} (same content hash): no new version")
        ctx.progress(1.0, f"unchanged: v{info.version}")
        return
    ctx.metrics(0, {"rows": info.rows, "rejected_rows": info.rejected_rows, "bytes": info.bytes})
    ctx.log(
        f"published {info.dataset} v{info.version}: {info.rows} rows, {info.rejected_rows} rejected,"
        f" {info.bytes} bytes in {seconds:.2f}s (blake2b {info.content_hash[:12]})"
    )
    _apply_retention(ctx, spec.dataset)
    ctx.progress(1.0, f"v{info.version}: {info.rows} rows")


def _apply_retention(ctx: JobContext, dataset: str) -> None:
    """`[lake] keep_versions` / `keep_for` in config.toml prune the dataset's old versions after
    each publish."""
    try:
        rule = lake.settings(ctx.home)
    except ValueError as error:
        ctx.log(f"retention not applied: {error}")
        return
    if not rule.keep_versions and not rule.keep_for_s:
        return
    chosen = lake.prunable(ctx.store, dataset, rule.keep_versions, rule.keep_for_s)
    if chosen:
        lake.prune(ctx.home, ctx.store, chosen)
        ctx.log(
            f"retention ([lake] in config.toml): removed {dataset}"
            f" {', '.join(f'v{i.version}' for i in chosen)}"
        )


def _first_line(message: str) -> str:
    lines = [line for line in message.splitlines() if line.strip()]
    return lines[0] if lines else message


def _widen_strict(ctx: JobContext, spec: Spec, fmt: str, plan: Plan, error: str) -> bool:
    """After a CSV value did not convert to its column's type exactly: fail naming the column,
    value and line when the user typed it; else widen the guessed column and say so (True: load
    again). See `ingest_strict.widened`."""
    found = strict.strict_failure(error)
    if found is None:
        return False
    index, value = found
    column = plan.columns[index]
    kind = plan.final_types[column]
    where = _find_line(spec, fmt, plan, column, value)
    if column in plan.user_typed:
        if is_integer(kind) and strict.widened(kind, value) == "DOUBLE":
            raise JobFailed(
                f"column {column!r}: {value} is not a whole number{where}, so it does not fit"
                f" {kind} (the type you gave); it is never rounded"
            )
        raise JobFailed(
            f"column {column!r}: {value!r}{where} does not fit {kind} (the type you gave)"
            " without changing it; a value is never rounded, cut or reinterpreted"
        )
    if plan.sampled:
        raise JobFailed(
            f"column {column!r}: {value} is not a whole number{where}, so it does not fit {kind}"
            f" (guessed from the first {spec.sample_size} rows; it is never rounded): read the"
            f" whole input without --sample-size, or give --type {column}=DOUBLE"
        )
    after = strict.widened(kind, value)
    plan.final_types[column] = after
    plan.date_formats.pop(column, None)
    ctx.log(
        f"column {column!r}: {value!r}{where} does not fit {kind} exactly (guessed from a"
        f" sample): widened to {after}, loading again"
    )
    return True


_JSON_OVERFLOW = re.compile(
    r'in file "(?P<file>.*)", in line (?P<line>\d+): Failed to cast value to numerical'
)
_INT64 = (-(2**63), 2**63 - 1)


def _widen_json_integers(ctx: JobContext, plan: Plan, error: str) -> bool:
    """After a JSON whole number overflowed the integer type DuckDB guessed (its sample saw only
    smaller ones: DuckDB 1.4 guesses BIGINT for 9223372036854775808): the guessed integer columns
    of the record named are read as HUGEINT (stored as DECIMAL(38,0), every digit kept), or as
    text past 38 digits; every guessed integer column when the record cannot be read back. True:
    load again. A column the user typed is never widened: the job fails naming it."""
    match = _JSON_OVERFLOW.search(error)
    if match is None:
        return False
    record: dict[str, Any] | None = None
    try:
        with open(match.group("file"), "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if number == int(match.group("line")):
                    loaded = json.loads(line)
                    record = loaded if isinstance(loaded, dict) else None
                    break
    except (OSError, ValueError):
        record = None
    widened = False
    for column in plan.columns:
        kind = plan.read_types[column]
        if not is_integer(kind) or _base_type(kind) in ("HUGEINT", "UHUGEINT"):
            continue
        value = None if record is None else record.get(column)
        if record is not None and not (
            isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]
        ):
            continue
        if column in plan.user_typed:
            raise JobFailed(
                f"column {column!r}: {value if value is not None else 'a value'} does not fit"
                f" {plan.final_types[column]} (the type you gave){_line_of(match)}; it is never"
                " cut"
            )
        after = "HUGEINT" if value is None or abs(value) < 10**38 else "VARCHAR"
        plan.read_types[column] = after
        plan.final_types[column] = after
        ctx.log(
            f"column {column!r} holds {value if value is not None else 'a whole number'} past"
            f" {kind}{_line_of(match)}: read again as {strict.stored_type(after)}"
        )
        widened = True
    return widened


def _line_of(match: re.Match[str]) -> str:
    return f" (line {match.group('line')} of {match.group('file')})"


def _widen_after_fraction(ctx: JobContext, spec: Spec, plan: Plan, error: str) -> bool:
    """After a fraction met an integer column: widen a guessed column to DOUBLE and say so
    (True: load again), or fail naming the column and value when the user typed it or chose a
    sample."""
    big = too_big(error)
    if big is not None:
        column = plan.columns[big]
        plan.exact.add(column)
        plan.read_types[column] = EXACT
        ctx.log(f"column {column!r} holds whole numbers past 2**53: reading it again exactly")
        return True
    found = not_whole(error)
    if found is None:
        return False
    index, value = found
    column = plan.columns[index]
    kind = plan.final_types[column]
    if column in plan.user_typed:
        raise JobFailed(
            f"column {column!r}: {value} is not a whole number, so it does not fit {kind}"
            " (the type you gave); it is never rounded"
        )
    if spec.sample_size is not None:
        raise JobFailed(
            f"column {column!r}: {value} is not a whole number, so it does not fit {kind} (guessed"
            f" from the first {spec.sample_size} rows; it is never rounded): read the whole input"
            f" without --sample-size, or give --type {column}=DOUBLE"
        )
    plan.final_types[column] = "DOUBLE"
    plan.read_types[column] = "DOUBLE"
    ctx.log(f"column {column!r} holds {value}: {kind} widened to DOUBLE, loading again")
    return True


def _widen_after_rejects(ctx: JobContext, con: duckdb.DuckDBPyConnection, plan: Plan) -> bool:
    """Columns whose guessed type rejected a value are widened (True: load again). Values the
    user's own types reject stay rejects."""
    rows = con.execute(
        "SELECT column_name, any_value(error_message), count(*) FROM reject_errors"
        " WHERE error_type = 'CAST' GROUP BY column_name"
    ).fetchall()
    widened = False
    for column, message, count in rows:
        if column is None or column in plan.user_typed or column not in plan.final_types:
            continue
        match = re.search(r'string "(.*)" to', message or "")
        before = plan.final_types[column]
        after = widen(before, match.group(1) if match else None)
        if after == before:
            continue
        plan.final_types[column] = after
        plan.read_types[column] = after
        widened = True
        sample = f" such as {match.group(1)!r}" if match else ""
        ctx.log(
            f"column {column!r}: {count} value(s){sample} do not fit {before} (guessed from a"
            f" sample): widened to {after}, loading again"
        )
    return widened
