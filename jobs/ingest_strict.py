"""The strict half of the `ingest` kind: what makes "no value changed without a word" hold by
construction for CSV/TSV.

DuckDB's CSV reader converts leniently (`007` to 7, `2.75` to 3 in an integer column, the
timestamp `2021-03-04 10:11:12` to the date 2021-03-04, `1.005` to 1.01 in DECIMAL(10,2), `yes`
to true, a naive timestamp into the session's time zone), so CSV columns are read as text and
converted here by SQL expressions that accept a value only when the stored value means exactly
what the text says (`check_sql`); a value that fails widens a guessed column, is rejected (with
`--sample-size`), or fails the job naming the column, value and line. This module also decides
each file's encoding (`decode`), names duplicate and empty headers (`unique_names`), and finds a
value's line and original bytes in a file (`locate`)."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import os
import re
from dataclasses import dataclass
from typing import IO, Any, cast

# The session time zone of every ingest: nothing a conversion does may depend on the zone of
# whoever submitted the job (a naive timestamp never becomes TIMESTAMPTZ; see check_sql).
SESSION_TIME_ZONE = "UTC"
# Parquet has no 128-bit integer (DuckDB writes HUGEINT as DOUBLE, rounding past 2**53): such
# columns are stored as this exact decimal; values past 38 digits stay text.
WIDE_INTEGER = "DECIMAL(38,0)"
_STRICT = "wb-strict"
BLOCK = 1 << 22  # bytes read at a time by the encoding check

_INTEGERS = {
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
    "UBIGINT", "UHUGEINT", "INT", "INT1", "INT2", "INT4", "INT8", "LONG", "SHORT",
}  # fmt: skip
_TIMESTAMP_RE = r"\s*\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?"
_OFFSET_RE = r"(Z|z|[+-]\d{2}(:?\d{2})?)\s*"
_INTEGER_TEXT = re.compile(r"-?(0|[1-9]\d*)")
_NUMBER_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def base_type(kind: str) -> str:
    """`DECIMAL(10,2)` -> `DECIMAL`; `TIMESTAMP WITH TIME ZONE` -> `TIMESTAMPTZ`."""
    base = kind.strip().upper().split("(")[0].strip()
    return "TIMESTAMPTZ" if base == "TIMESTAMP WITH TIME ZONE" else base


def stored_type(kind: str) -> str:
    """The type a column is written to Parquet as: HUGEINT and UHUGEINT as WIDE_INTEGER (Parquet
    has none, and DuckDB would write DOUBLE), everything else as it is."""
    return WIDE_INTEGER if base_type(kind) in ("HUGEINT", "UHUGEINT") else kind


_TRUE_WORDS = ("true", "t", "yes", "y", "1")
_BOOLEAN_WORDS = (*_TRUE_WORDS, "false", "f", "no", "n", "0")


def offset_timestamps_sql(columns: list[str], source: str) -> str:
    """One query over `source` giving, per text column, whether it holds at least one value
    and every value is an ISO timestamp with an offset (`2026-04-29T14:38:00+02:00`, `...Z`):
    such a column converts to TIMESTAMPTZ as the same instant in any session zone."""
    checks = []
    for name in columns:
        c = '"' + name.replace('"', '""') + '"'
        checks.append(
            f"count({c}) > 0 AND count({c}) = count(CASE WHEN regexp_full_match({c},"
            f" '{_TIMESTAMP_RE}{_OFFSET_RE}') AND TRY_CAST({c} AS TIMESTAMPTZ) IS NOT NULL"
            " THEN 1 END)"
        )
    return f"SELECT {', '.join(checks)} FROM {source}"


def _words(words: tuple[str, ...]) -> str:
    return "(" + ", ".join(_literal(w) for w in words) + ")"


def cast_column(index: int) -> str:
    """The name of the column holding column `index` cast once (see `cast_sql`)."""
    return f'"__wb_cast_{index}"'


def cast_sql(index: int, name: str, kind: str, date_format: str | None = None) -> str | None:
    """`TRY_CAST(name AS kind) AS cast_column(index)`: computed once per value, for the check
    and the conversion both; None where the conversion is not a plain cast."""
    base = base_type(kind)
    if base in ("VARCHAR", "TEXT", "STRING", "BOOLEAN") or (base == "DATE" and date_format):
        return None
    column = '"' + name.replace('"', '""') + '"'
    return f"TRY_CAST({column} AS {kind}) AS {cast_column(index)}"


def check_sql(
    column: str,
    kind: str,
    date_format: str | None = None,
    declared: bool = False,
    cast: str | None = None,
) -> str | None:
    """A SQL condition true when the text `column` (already quoted) converts to `kind` keeping
    its meaning, or None when every text does (VARCHAR). Integers must print back as written
    (no `007`, `+5`, `2.75`), DECIMAL(p,s) may not have non-zero digits past s, DOUBLE may not
    hold a whole number past 2**53 or a leading zero, DATE must print back as written (a
    timestamp is not a date), TIMESTAMP takes ISO values without an offset and TIMESTAMPTZ only
    values with one, BOOLEAN only `true`/`false` unless `declared` (then also yes/no, y/n,
    t/f, 1/0: the user said they are booleans)."""
    base = base_type(kind)
    c = column
    cast = cast or f"TRY_CAST({c} AS {kind})"
    if base in ("VARCHAR", "TEXT", "STRING"):
        return None
    if base in _INTEGERS:
        return f"CAST({cast} AS VARCHAR) = {c}"
    if base in ("DECIMAL", "NUMERIC"):
        match = re.search(r",\s*(\d+)\s*\)", kind)
        scale = int(match.group(1)) if match else (0 if "(" in kind else 3)
        return (
            rf"regexp_full_match({c}, '\s*[-+]?\d*(\.\d{{0,{scale}}}0*)?\s*')"
            f" AND {cast} IS NOT NULL"
        )
    if base in ("DOUBLE", "FLOAT", "REAL", "FLOAT4", "FLOAT8"):
        # Cheap tests first, so that (where SQL short-circuits: a CASE's WHEN) the regular
        # expressions only see the rare values that need them: a first character that could
        # start a leading zero (`ord`, a code point, not `c[1]`, a new string per value; a
        # value that casts is ASCII), and a magnitude of 2**53 or more.
        return (
            f"{cast} IS NOT NULL AND (ord({c}) NOT IN (48, 45, 43, 32) OR NOT"
            f" regexp_matches({c}, '^\\s*[-+]?0[0-9]')) AND (abs({cast}) < 9007199254740992 OR"
            f" NOT regexp_full_match({c}, '\\s*[-+]?\\d+\\s*'))"
        )
    if base == "DATE":
        if date_format:
            fmt = _literal(date_format)
            return f"strftime(try_strptime({c}, {fmt}), {fmt}) = {c}"
        return f"CAST({cast} AS VARCHAR) = {c}"
    if base == "TIMESTAMP":
        return f"regexp_full_match({c}, '{_TIMESTAMP_RE}\\s*') AND {cast} IS NOT NULL"
    if base == "TIMESTAMPTZ":
        return f"regexp_full_match({c}, '{_TIMESTAMP_RE}{_OFFSET_RE}') AND {cast} IS NOT NULL"
    if base == "TIME":
        return f"regexp_full_match({c}, '\\s*\\d{{2}}:\\d{{2}}(:\\d{{2}}(\\.\\d{{1,6}})?)?\\s*')"
    if base == "BOOLEAN":
        return f"lower(trim({c})) IN {_words(_BOOLEAN_WORDS if declared else ('true', 'false'))}"
    return f"{cast} IS NOT NULL"


def convert_sql(
    column: str, kind: str, date_format: str | None = None, cast: str | None = None
) -> str:
    """The text `column` converted to `kind` (stored as `stored_type(kind)`); only meaningful
    where `check_sql` holds."""
    base = base_type(kind)
    if base in ("VARCHAR", "TEXT", "STRING"):
        return column
    if base == "DATE" and date_format:
        return f"CAST(try_strptime({column}, {_literal(date_format)}) AS DATE)"
    if base == "BOOLEAN":
        return f"(lower(trim({column})) IN {_words(_TRUE_WORDS)})"
    value = cast or f"TRY_CAST({column} AS {kind})"
    stored = stored_type(kind)
    return value if stored == kind else f"CAST({value} AS {stored})"


def strict_column(
    index: int,
    name: str,
    kind: str,
    date_format: str | None,
    fail: bool,
    declared: bool = False,
    sampled: bool = False,
) -> tuple[str, str | None]:
    """(select expression, condition) for one text column: with `fail`, a value that does not
    convert exactly stops the load with a mark naming the column index and the value
    (`strict_failure` reads it); without, the condition goes in the WHERE clause and such rows
    are rejected. A `declared` type rejects values that are not of the type at all (`x` in an
    INTEGER column: the condition) and fails on those it would change (`2.75`); so does a
    `sampled` integer type (a number that is not a whole one fails, other text is rejected).
    A condition that SQL cannot decide (NULL) counts as false: a row is never dropped unsaid.
    In the CASE (`fail`), the usual value is tested first and the check is not wrapped in
    `coalesce`: a WHEN that is NULL falls through to the mark all the same, and a bare
    condition lets DuckDB skip the costly parts of it for the values a cheap part decides."""
    column = '"' + name.replace('"', '""') + '"'
    cast = cast_column(index) if cast_sql(index, name, kind, date_format) else None
    check = check_sql(column, kind, date_format, declared, cast)
    if sampled and base_type(kind) in _INTEGERS:
        fail = True
    converted = convert_sql(column, kind, date_format, cast)
    if check is None:
        return f"{converted} AS {column}", None
    # BOOLEAN: the words as DuckDB writes them, compared as they are (no lower/trim per value).
    usual = (
        "WHEN {c} = 'true' THEN true WHEN {c} = 'false' THEN false "
        if base_type(kind) == "BOOLEAN"
        else ""
    )
    usual = usual.format(c=column)
    if fail:
        mark = f"error('{_STRICT} {index} ' || {column})"
        expression = (
            f"CASE {usual}WHEN {check} THEN {converted} WHEN {column} IS NULL THEN NULL"
            f" ELSE {mark} END"
        )
        condition = None
        if sampled and not declared:
            condition = (
                f"({column} IS NULL OR coalesce(TRY_CAST({column} AS DOUBLE) IS NOT NULL AND NOT"
                f" regexp_matches({column}, '^\\s*[-+]?0[0-9]'), false))"
            )
        elif declared:
            parsed = f"{converted} IS NOT NULL"
            if base_type(kind) == "BOOLEAN":
                parsed = check
            condition = f"({column} IS NULL OR coalesce({parsed}, false))"
        return f"{expression} AS {column}", condition
    check = f"coalesce({check}, false)"
    if usual:
        check = f"{column} IN ('true', 'false') OR {check}"
        converted = f"CASE {usual}ELSE {converted} END"
    return f"{converted} AS {column}", f"({column} IS NULL OR ({check}))"


def strict_failure(error: str) -> tuple[int, str] | None:
    """(column index, value) from the mark `strict_column` raises, if the error is one."""
    match = re.search(rf"{_STRICT} (\d+) (.*)", error, re.S)
    if match is None:
        return None
    return int(match.group(1)), match.group(2)


def widened(kind: str, value: str) -> str:
    """The type a guessed column becomes when `value` did not convert to `kind` exactly: a
    wider exact integer for an integer that overflowed, DOUBLE for a fraction in an integer
    column, TIMESTAMP for a timestamp in a DATE column, else VARCHAR (leading zeros, mixed
    offsets, words: the text itself)."""
    base = base_type(kind)
    text = value.strip()
    leading_zero = re.match(r"[-+]?0\d", text) is not None
    if base in _INTEGERS:
        if _INTEGER_TEXT.fullmatch(value):
            return WIDE_INTEGER
        if _NUMBER_TEXT.fullmatch(text) and not leading_zero and not _INTEGER_TEXT.fullmatch(text):
            return "DOUBLE"
        return "VARCHAR"
    if base == "DATE" and re.fullmatch(_TIMESTAMP_RE + r"\s*", value):
        return "TIMESTAMP"
    return "VARCHAR"


# ---- encodings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Decoded:
    """One CSV source as DuckDB reads it: `path` is the source itself (UTF-8) or a UTF-8 copy
    of it; `encoding` is the source's (a Python codec name); `note` says what was decided."""

    source: str
    path: str
    encoding: str
    note: str | None = None


class EncodingError(ValueError):
    """A file that is not in the encoding the user declared, naming its line and byte."""


def _open(path: str) -> IO[bytes]:
    if path.lower().endswith((".gz", ".gzip")):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _first_bad(path: str) -> tuple[int, int, int] | None:
    """(line, byte offset, byte) of the first byte that is not UTF-8, or None for a UTF-8
    file; read in blocks, an ASCII block (the common case) checked without decoding it. The
    blocks are read into one reused buffer (a new 16 MiB bytes object per block made this pass
    take twice as long: fresh memory is page-faulted in)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    buffer = bytearray(BLOCK)
    with _open(path) as opened:
        handle = cast(io.BufferedIOBase, opened)  # a BufferedReader or a GzipFile
        while count := handle.readinto(buffer):
            block = buffer if count == len(buffer) else buffer[:count]
            if block.isascii() and not decoder.getstate()[0]:
                offset += count
                continue
            pending = len(decoder.getstate()[0])  # the start of a character cut by the block
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:
                position = offset - pending + error.start  # error.object: pending + block
                return _line_of(path, position), position, error.object[error.start]
            offset += count
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return _line_of(path, offset), offset, 0
    return None


def _line_of(path: str, position: int) -> int:
    """The 1-based line holding byte `position` (read again: only for an error message)."""
    line = 1
    done = 0
    with _open(path) as handle:
        while done < position and (block := handle.read(min(1 << 24, position - done))):
            line += block.count(b"\n")
            done += len(block)
    return line


def _utf8_name(encoding: str) -> bool:
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


def check_encoding_name(encoding: str) -> str | None:
    """Why `encoding` is not a codec Python knows, or None."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        return f"{encoding!r} is not an encoding Python knows (e.g. utf-8, latin-1, cp1252)"
    return None


def decode(path: str, declared: str | None, workdir: str) -> Decoded:
    """Decide `path`'s encoding and give DuckDB a UTF-8 file. Declared: the file must decode
    in it (EncodingError names the first bad line), and is copied as UTF-8 unless it is UTF-8.
    Not declared, the rule is: valid UTF-8 is UTF-8; a file with valid multi-byte UTF-8 and
    some bad bytes is UTF-8 with those lines rejected (their bytes kept); a file with no
    multi-byte UTF-8 at all is single-byte text, cp1252 where every byte is defined in it,
    else latin-1 (which defines all 256)."""
    if declared is not None and not _utf8_name(declared):
        return _transcode(path, declared, workdir, f"read as {declared} (declared)")
    bad = _first_bad(path)
    if bad is None:
        return Decoded(path, path, "utf-8")
    line, _, byte = bad
    if declared is not None:
        raise EncodingError(
            f"{path} line {line}: byte 0x{byte:02x} is not valid UTF-8 (the encoding declared);"
            " give the file's encoding with --encoding"
        )
    with _open(path) as handle:
        data = handle.read()
    text = data.decode("utf-8", "replace")
    if re.search("[^\x00-\x7f\ufffd]", text):
        return Decoded(
            path,
            path,
            "utf-8",
            f"{path} is UTF-8 with bytes that are not (first: 0x{byte:02x} on line {line}):"
            " those lines are rejected with their bytes kept; give --encoding to read it whole",
        )
    for candidate in ("cp1252", "latin-1"):
        try:
            data.decode(candidate)
        except UnicodeDecodeError:
            continue
        return _transcode(
            path,
            candidate,
            workdir,
            f"{path} is not UTF-8 (byte 0x{byte:02x} on line {line}) and has no multi-byte UTF-8:"
            f" read as {candidate}; give --encoding to choose another",
            data,
        )
    raise AssertionError("latin-1 decodes every byte")  # pragma: no cover


def _transcode(
    path: str, encoding: str, workdir: str, note: str, data: bytes | None = None
) -> Decoded:
    if data is None:
        with _open(path) as handle:
            data = handle.read()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise EncodingError(
            f"{path} line {line}: byte 0x{data[error.start]:02x} is not valid {encoding} (the"
            " encoding declared)"
        ) from None
    os.makedirs(workdir, exist_ok=True)
    name = os.path.basename(path)
    for suffix in (".gz", ".gzip"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    target = os.path.join(workdir, f"{len(os.listdir(workdir))}-{name}")
    with open(target, "wb") as handle:
        handle.write(text.encode("utf-8"))
    return Decoded(path, target, codecs.lookup(encoding).name, note)


def raw_bytes(decoded: Decoded, position: int | None) -> bytes | None:
    """The original bytes of the line DuckDB's reject names by `line_byte_position` (which
    counts from 1), without its line end, in the source's own encoding."""
    if position is None or position < 1:
        return None
    with _open(decoded.path) as handle:
        handle.seek(position - 1)
        line = handle.readline().rstrip(b"\r\n")
    if decoded.path == decoded.source:
        return line
    return line.decode("utf-8", "replace").encode(decoded.encoding, "replace")


# ---- names --------------------------------------------------------------------------------


def unique_names(raw: list[str | None]) -> tuple[list[str], list[str]]:
    """Header names made unique, deterministically, and what was renamed (sentences). An empty
    name becomes `column_<position>` (1-based); a repeated one `<name>_2`, `_3`... skipping
    any name the header already has, so a user's own `name_1` keeps its name and data."""
    taken = {r for r in raw if r}
    names: list[str] = []
    notes: list[str] = []
    seen: set[str] = set()
    for position, name in enumerate(raw, 1):
        if name and name not in seen:
            names.append(name)
            seen.add(name)
            continue
        stem = name or "column"
        number = position if not name else 2
        candidate = f"{stem}_{number}"
        while candidate in taken or candidate in seen:
            number += 1
            candidate = f"{stem}_{number}"
        names.append(candidate)
        seen.add(candidate)
        taken.add(candidate)
        what = f"repeats {name!r}" if name else "has no name"
        notes.append(f"column {position} {what}: named {candidate!r}")
    return names, notes


# ---- finding a value's line ---------------------------------------------------------------


def locate(
    decoded: Decoded,
    delimiter: str,
    quote: str,
    header: bool,
    wanted: list[tuple[int, str]],
) -> list[tuple[int, bytes] | None]:
    """For each (field index, value), the line where a record holds that value in that field
    (in file order; the same pair twice finds two records) and the record's original bytes;
    None where none does. Lines are numbered as DuckDB's rejects number them: by record, the
    first (the header, if any) being 1. Python's csv module reads the file with the sniffed
    dialect."""
    found: list[tuple[int, bytes] | None] = [None] * len(wanted)
    pending: dict[tuple[int, str], list[int]] = {}
    for number, pair in enumerate(wanted):
        pending.setdefault(pair, []).append(number)
    with _open(decoded.path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
        lines: list[str] = []

        def source_lines() -> Any:
            for line in text:
                lines.append(line)
                yield line

        reader = csv.reader(source_lines(), delimiter=delimiter, quotechar=quote or '"')
        for record_number, record in enumerate(reader):
            start = record_number + 1
            record_text = "".join(lines).rstrip("\r\n")
            lines.clear()
            if (header and record_number == 0) or not pending:
                continue
            for index, value in list(pending):
                if index < len(record) and record[index] == value:
                    slot = pending[(index, value)].pop(0)
                    if not pending[(index, value)]:
                        del pending[(index, value)]
                    data = record_text.encode("utf-8")
                    if decoded.path != decoded.source:
                        data = record_text.encode(decoded.encoding, "replace")
                    found[slot] = (start, data)
            if not pending:
                break
    return found
