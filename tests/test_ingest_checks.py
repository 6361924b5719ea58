"""The strict CSV checks (jobs/ingest_strict.py) were reformulated for speed: every value must
meet exactly the fate it met under the previous formulation (kept and converted to the same
value, rejected, or failing the load). Each column expression is evaluated on awkward texts
(signs, spaces, leading zeros, exponents, `-0`, `1.0`, wide integers, dates that are not ISO,
boolean words, other scripts' digits) and compared with the previous SQL, kept here as the
reference."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import duckdb
import pytest

from jobs import ingest_strict as strict

TEXTS: list[str | None] = [
    None, "", " ", "x", "0", "-0", "+0", "00", "007", "7", "-7", "+5", " 5", "5 ", "\t5", "5\t",
    "1.0", "1.5", "2.75", "-2.5", "1e3", "1E3", "-1e-3", "1e400", ".5", "5.", "0.5", "00.5",
    "-0.5", "-00.5", " 0.5", " 05", "+0.5", "+05", "-05", "0e0", "0x10", "0b1", "1_000",
    "9007199254740992", "9007199254740993", "-9007199254740993", "9007199254740993.0",
    "1e16", "10000000000000000", "inf", "-inf", "Infinity", "nan", "NaN", "-nan",
    "127", "128", "255", "256", "-129", "2147483648", "9223372036854775807",
    "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
    "18446744073709551615", "18446744073709551616", "1" * 38, "1" * 39,
    "\u0661\u0662", "\uff10", "\u00a05", "5\u00a0", "\u00e95", "0\u0301",
    "true", "false", "TRUE", "False", " true", "true ", " True ", "t", "T", "f", "yes", "no",
    "y", "n", "Y", "1", "nope", "ture", "\ttrue",
    "2021-03-04", "2021-3-4", "2021/03/04", "2021-03-04 10:11:12", "2021-03-04T10:11:12",
    " 2021-03-04", "2021-03-04 ", "20210304", "0001-01-01", "9999-12-31", "2021-02-30",
    "2021-02-29", "2020-02-29", "10000-01-01", "-2021-03-04", "2021-03-04 BC", "04/03/2021",
    "2021-03-04 10:11:12+02:00", "2021-03-04 10:11:12.1234567", "10:11", "10:11:12",
    "1.005", "19.999", "19.99", "19.990", "-0.00", "1234567890.12", "12345678901.5",
]  # fmt: skip

KINDS = [
    "TINYINT", "INTEGER", "BIGINT", "UBIGINT", "HUGEINT", "DOUBLE", "FLOAT", "DECIMAL(10,2)",
    "DATE", "TIMESTAMP", "TIMESTAMPTZ", "TIME", "BOOLEAN", "VARCHAR",
]  # fmt: skip

_OLD_DOUBLE = (
    "{cast} IS NOT NULL AND ({c}[1] NOT IN ('0', '-', '+', ' ') OR NOT"
    " regexp_matches({c}, '^\\s*[-+]?0[0-9]')) AND NOT"
    " (abs({cast}) >= 9007199254740992 AND regexp_full_match({c}, '\\s*[-+]?\\d+\\s*'))"
)


def previous_check(column: str, kind: str, declared: bool, cast: str | None) -> str | None:
    """check_sql as it was before the reformulation (only DOUBLE's text changed)."""
    if strict.base_type(kind) in ("DOUBLE", "FLOAT", "REAL", "FLOAT4", "FLOAT8"):
        return _OLD_DOUBLE.format(c=column, cast=cast or f"TRY_CAST({column} AS {kind})")
    return strict.check_sql(column, kind, None, declared, cast)


def previous_column(
    index: int, name: str, kind: str, fail: bool, declared: bool, sampled: bool
) -> tuple[str, str | None]:
    """strict_column as it was before the reformulation (the reference)."""
    column = '"' + name + '"'
    cast = strict.cast_column(index) if strict.cast_sql(index, name, kind) else None
    check = previous_check(column, kind, declared, cast)
    if check is not None:
        check = f"coalesce({check}, false)"
    if sampled and strict.base_type(kind) in strict._INTEGERS:
        fail = True
    converted = strict.convert_sql(column, kind, None, cast)
    if check is None:
        return f"{converted} AS {column}", None
    if fail:
        mark = f"error('wb-strict {index} ' || {column})"
        expression = (
            f"CASE WHEN {column} IS NULL THEN NULL WHEN {check} THEN {converted} ELSE {mark} END"
        )
        condition = None
        if sampled and not declared:
            condition = (
                f"({column} IS NULL OR coalesce(TRY_CAST({column} AS DOUBLE) IS NOT NULL AND NOT"
                f" regexp_matches({column}, '^\\s*[-+]?0[0-9]'), false))"
            )
        elif declared:
            parsed = f"{converted} IS NOT NULL"
            if strict.base_type(kind) == "BOOLEAN":
                parsed = check
            condition = f"({column} IS NULL OR coalesce({parsed}, false))"
        return f"{expression} AS {column}", condition
    return f"{converted} AS {column}", f"({column} IS NULL OR ({check}))"


def fate(
    con: duckdb.DuckDBPyConnection, kind: str, parts: tuple[str, str | None], text: str | None
) -> tuple[str, Any]:
    """('rejected', None), ('failed', the marked value), ('error', DuckDB's message) or
    ('kept', the stored value, as text so that NaN compares equal to NaN) of one text under one
    column expression and condition."""
    expression, condition = parts
    cast = strict.cast_sql(0, "v", kind)
    source = f"(SELECT *{', ' + cast if cast else ''} FROM (SELECT CAST(? AS VARCHAR) AS v))"
    where = f" WHERE {condition}" if condition else ""
    try:
        rows = con.execute(
            f"SELECT CAST({expression.rsplit(' AS ', 1)[0]} AS VARCHAR) FROM {source}{where}",
            [text],
        ).fetchall()
    except duckdb.Error as error:
        found = strict.strict_failure(str(error))
        return ("failed", found) if found else ("error", str(error).splitlines()[0])
    return ("kept", rows[0][0]) if rows else ("rejected", None)


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    connection.execute(f"SET TimeZone = '{strict.SESSION_TIME_ZONE}'")
    return connection


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "fail, declared, sampled",
    [(True, False, False), (True, True, False), (False, False, True), (True, True, True)],
    ids=["whole-input", "declared", "sampled", "declared-sampled"],
)
def test_every_text_meets_the_fate_it_met_before(
    con: duckdb.DuckDBPyConnection, kind: str, fail: bool, declared: bool, sampled: bool
) -> None:
    new = strict.strict_column(0, "v", kind, None, fail, declared, sampled)
    old = previous_column(0, "v", kind, fail, declared, sampled)
    differ = [
        (text, before, after)
        for text in TEXTS
        if (before := fate(con, kind, old, text)) != (after := fate(con, kind, new, text))
    ]
    assert not differ, differ


def test_the_double_check_runs_no_regular_expression_on_a_plain_number() -> None:
    """What made it fast: the leading-zero and 2**53 tests come after cheap ones, and the CASE
    holds the bare check (no coalesce, which would evaluate every part for every value)."""
    expression, _ = strict.strict_column(1, "x", "DOUBLE", None, True)
    when = expression.split(" THEN ")[0]
    assert "coalesce" not in when and "[1]" not in when
    assert re.search(r"ord\(\"x\"\) NOT IN \(48, 45, 43, 32\) OR NOT\s+regexp_matches", when)
    assert re.search(r"abs\(.*\) < 9007199254740992 OR\s+NOT regexp_full_match", when)
    boolean, _ = strict.strict_column(2, "b", "BOOLEAN", None, True)
    assert boolean.startswith("CASE WHEN \"b\" = 'true' THEN true WHEN \"b\" = 'false' THEN false")


def test_the_encoding_check_names_the_bad_byte_after_a_character_cut_by_a_block(
    tmp_path: Path,
) -> None:
    """The check reads BLOCK bytes at a time; a character cut by a block's end is decoded with
    the next block, and the first bad byte after it is named at its own offset (it was named
    one byte late, showing the byte after it)."""
    path = tmp_path / "cut.csv"
    head = b"a" * (strict.BLOCK - 1)  # `é` then takes the block's last byte and the next's first
    path.write_bytes(head + "é".encode() + b"\nx\xff\n")
    assert strict._first_bad(str(path)) == (2, len(head) + 4, 0xFF)
    path.write_bytes(b"a\n" * 10 + b"caf\xe9\n")
    assert strict._first_bad(str(path)) == (11, 23, 0xE9)
