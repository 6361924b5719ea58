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
import os
import re
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jobs.context import Cancelled, JobContext, JobFailed
from workbench.catalog import lake
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
    bad rows fail the job."""

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
    """The format of the sources: `spec.format`, else told by the files' extensions (one only)."""
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
    fmt = source_format(spec, files, where)
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
    with rejects kept and `types` (every column)."""
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

    def integer_read_type(self, column: str) -> str:
        """What a text source's integer column is read as (see FAST and EXACT)."""
        return EXACT if column in self.exact else FAST

    def select(self) -> str:
        exprs = [
            column_expression(
                i,
                c,
                self.read_types[c],
                self.final_types[c],
                is_integer(self.final_types[c]) and not is_integer(self.read_types[c]),
            )
            for i, c in enumerate(self.columns)
        ]
        return ", ".join(exprs)


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
) -> tuple[str, ...]:
    """The `read_csv` options (delimiter, quote, escape, header) of one file, sniffed with
    `ignore_errors` so that a ragged row (too many or too few fields, anywhere in the file) is
    left out of the vote instead of making DuckDB's sniffer pick another dialect (a whole line
    as one column named like "a,b") or give up. The user's own `delimiter`/`header` win. A file
    the sniffer cannot read at all gets () (DuckDB's own sniffing, and its error, at the load).
    """
    options = ", ".join([*_csv_options(spec, fmt, spec.sample_size), "ignore_errors = true"])
    try:
        row = cursor.execute(
            f"SELECT Delimiter, Quote, Escape, HasHeader FROM sniff_csv({_literal(path)}, {options})"
        ).fetchone()
    except duckdb.Error:
        return ()
    if row is None:
        return ()
    delim, quote, escape, has_header = (str(row[0]), str(row[1]), str(row[2]), bool(row[3]))
    dialect: list[str] = []
    if spec.delimiter is None and fmt != "tsv" and delim != "(empty)":
        dialect.append(f"delim = {_literal(delim)}")
    # No quote seen: RFC 4180's double quote still applies (a later quoted field is read whole).
    dialect.append(f"quote = {_literal(quote if quote != '(empty)' else chr(34))}")
    if escape != "(empty)":
        dialect.append(f"escape = {_literal(escape)}")
    if spec.header is None:
        dialect.append(f"header = {str(has_header).lower()}")
    return tuple(dialect)


def plan_csv(cursor: duckdb.DuckDBPyConnection, spec: Spec, files: list[str], fmt: str) -> Plan:
    """Sniff each file's dialect and header (ragged rows left out, see `sniff_dialect`), guess
    its types (on the whole file unless `sample_size`; rows with the wrong number of fields are
    skipped here and become rejects at the load), group the files by header and dialect, and
    decide one type per column."""
    options = ", ".join([*_csv_options(spec, fmt, spec.sample_size), "ignore_errors = true"])
    by_header: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}
    guessed: dict[str, str] = {}
    order: list[str] = []
    for path in files:
        dialect = sniff_dialect(cursor, spec, path, fmt)
        source = f"read_csv({_literal(path)}, {', '.join([options, *dialect])})"
        described = _describe(cursor, source)
        if described == [("column0", "VARCHAR")]:
            row = cursor.execute(f"SELECT count(*) FROM {source}").fetchone()
            if not row or not row[0]:  # what DuckDB makes of a file with nothing in it
                raise JobFailed(f"{path} is empty: nothing to ingest (no version published)")
        header = tuple(name for name, _ in described)
        by_header.setdefault((header, dialect), []).append(path)
        for name, kind in described:
            if name not in guessed:
                order.append(name)
                guessed[name] = kind
            else:
                guessed[name] = _merge_type(guessed[name], kind)
    _check_overrides(spec, order)
    final = {c: spec.types.get(c, guessed[c]) for c in order}
    plan = Plan(order, {}, final, set(spec.types))
    plan.groups = [(group, list(header), dialect) for (header, dialect), group in by_header.items()]
    _set_read_types(plan)
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
    return plan


def plan_parquet(cursor: duckdb.DuckDBPyConnection, spec: Spec, files: list[str]) -> Plan:
    """Parquet files carry their schema; files that differ are unioned by column name."""
    described = _describe(cursor, parquet_sql(files))
    order = [n for n, _ in described]
    _check_overrides(spec, order)
    read = dict(described)
    final = {n: spec.types.get(n, t) for n, t in described}
    return Plan(order, read, final, set(spec.types))


def run(ctx: JobContext) -> None:
    import duckdb

    spec = ctx.spec(Spec)
    where = f"job {ctx.job.id}"
    try:
        files = expand_sources(spec.source, where)
        fmt = source_format(spec, files, where)
    except SpecError as error:
        raise JobFailed(str(error)) from None
    empty = [f for f in files if _is_empty(f)]
    if empty:
        raise JobFailed(
            f"{empty[0]} is empty: nothing to ingest (no version published"
            f"{'; the dataset keeps its rows' if spec.mode == 'replace' else ''})"
        )
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
    started = time.time()
    threads = max(1, int(ctx.cpus))

    def connect() -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(":memory:")
        con.execute(f"SET threads = {threads}")
        con.execute("SET enable_progress_bar = true")
        con.execute("SET enable_progress_bar_print = false")
        con.execute("SET progress_bar_time = 0")
        return con

    def load(con: duckdb.DuckDBPyConnection, plan: Plan, target: Path) -> None:
        if fmt in ("csv", "tsv"):
            source = csv_from(spec, plan, fmt)
        elif fmt == "parquet":
            source = parquet_sql(files)
        else:
            source = json_sql(files, fmt, plan.read_types)
        select = f"SELECT {plan.select()} FROM {source}"
        if previous is not None:
            select = (
                f"SELECT * FROM read_parquet({_literal(previous.glob)}) UNION ALL BY NAME {select}"
            )
        # The rejects tables are the connection's own: the COPY runs on it, not on a cursor.
        watcher = _Watcher(ctx, con, f"reading {len(files)} file(s)")
        watcher.start()
        try:
            con.execute(f"COPY ({select}) TO {_literal(str(target))} (FORMAT parquet)")
        except duckdb.InterruptException:
            raise Cancelled("cancelled while reading the sources") from None
        finally:
            watcher.done.set()
            watcher.join()

    def write(tmp: Path) -> int:
        con = connect()
        try:
            if fmt in ("csv", "tsv"):
                plan = plan_csv(con, spec, files, fmt)
            elif fmt == "parquet":
                plan = plan_parquet(con, spec, files)
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
                    load(con, plan, target)
                except duckdb.Error as error:
                    if ctx.cancel_requested:
                        raise Cancelled("cancelled while reading the sources") from None
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
                    count, first = _rejects(con)
                    if count > spec.max_rejects:
                        raise JobFailed(
                            f"{count} row(s) rejected, more than max_rejects ="
                            f" {spec.max_rejects}; the first: {first}"
                        )
                    if count:
                        _write_rejects(con, tmp / "rejects.parquet")
                        ctx.log(
                            f"{count} row(s) rejected (kept in {spec.dataset}_rejects);"
                            f" first: {first}"
                        )
            finally:
                con.close()
            break
        if fmt in ("json", "ndjson"):
            _check_has_rows(target, files)
        ctx.log(
            f"types decided in {planned - started:.2f}s, read and written in"
            f" {time.time() - planned:.2f}s ({widenings + 1} pass(es))"
        )
        ctx.progress(0.96, "publishing")
        return count

    info = publish(
        ctx.home,
        ctx.store,
        spec.dataset,
        write,
        sources=sources,
        job_id=ctx.job.id,
        started_at=started,
    )
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


def _check_has_rows(target: Path, files: list[str]) -> None:
    import duckdb

    con = duckdb.connect()
    try:
        row = con.execute(f"SELECT count(*) FROM read_parquet({_literal(str(target))})").fetchone()
    finally:
        con.close()
    if not row or not row[0]:
        raise JobFailed(
            f"no records in {', '.join(files)}: nothing to ingest (a JSON source needs at least"
            " one object)"
        )
