"""Sources of the `ingest` kind that are not files in a folder: an `http(s)://` URL, fetched
into the job's own folder first, and a SQLite database (a table or a query), read with Python's
sqlite3 into a Parquet file whose column types come from every value. The local copy is then
ingested like any file (encodings, strict types, rejects, dedup by content); the lineage names
the source: the URL (and where it redirected, its ETag, Last-Modified and SHA-256), or the
database file, the table or query, and the time it ran."""

from __future__ import annotations

import hashlib
import os
import time
import urllib.parse
from pathlib import Path
from typing import Any

URL_SCHEMES = ("https://", "http://")
SQLITE_EXTENSIONS = (".db", ".sqlite", ".sqlite3")
SQLITE_MAGIC = b"SQLite format 3\x00"
FETCH_TIMEOUT_S = 60


class SourceError(ValueError):
    """A source that cannot be read: a URL that does not answer 200, a database without the
    table, a query that fails. The message names the source."""


def is_url(source: str) -> bool:
    return source.lower().startswith(URL_SCHEMES)


def is_sqlite(path: str) -> bool:
    """A SQLite database: by its extension, or by the header every SQLite file starts with."""
    if path.lower().endswith(SQLITE_EXTENSIONS):
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def url_name(url: str) -> str:
    """The file name a URL's path ends in (its extension tells the format), or `download`."""
    name = os.path.basename(urllib.parse.urlparse(url).path)
    return name or "download"


def fetch(url: str, workdir: str) -> tuple[str, dict[str, Any]]:
    """Download `url` into `workdir` (streamed, hashed as it comes) and return the local path
    and its lineage: url, final_url (after redirects), status, etag, last_modified, bytes,
    sha256, fetched_at. Raises SourceError naming the URL for any status but 200 or a network
    error. Credentials in the URL (`user:pass@`) are never recorded."""
    import urllib.error
    import urllib.request

    parsed = urllib.parse.urlparse(url)
    shown = parsed._replace(netloc=parsed.hostname or "").geturl() if parsed.password else url
    os.makedirs(workdir, exist_ok=True)
    target = Path(workdir) / f"{len(os.listdir(workdir))}-{url_name(url)}"
    digest = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
            if response.status != 200:
                raise SourceError(f"{shown}: HTTP {response.status} {response.reason}")
            with open(target, "wb") as out:
                while block := response.read(1 << 20):
                    digest.update(block)
                    out.write(block)
                    size += len(block)
            headers = response.headers
            final = response.geturl()
    except SourceError:
        raise
    except urllib.error.HTTPError as error:
        raise SourceError(f"{shown}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise SourceError(f"{shown}: cannot fetch it ({reason})") from None
    lineage = {
        "url": shown,
        "final_url": final,
        "status": 200,
        "etag": headers.get("ETag"),
        "last_modified": headers.get("Last-Modified"),
        "bytes": size,
        "sha256": digest.hexdigest(),
        "fetched_at": time.time(),
    }
    return str(target), lineage


def _arrow_column(values: list[Any]) -> Any:
    """One column of SQLite values (dynamically typed: each value has its own type) as an Arrow
    array that keeps every value: integers (SQLite's are 64-bit) as int64, integers and reals
    as float64 only when every integer is exact in a double, blobs as binary, anything mixed
    with text (or blobs with other types) as text; all null: text."""
    import pyarrow as pa

    kinds = {type(v) for v in values if v is not None}
    if not kinds or kinds == {str}:
        return pa.array(values, pa.string())
    if kinds == {int}:
        return pa.array(values, pa.int64())
    if kinds <= {int, float} and all(abs(v) < 2**53 for v in values if isinstance(v, int)):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if kinds == {float}:
        return pa.array(values, pa.float64())
    if kinds == {bytes}:
        return pa.array(values, pa.binary())
    return pa.array([None if v is None else _text(v) for v in values], pa.string())


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def sqlite_to_parquet(
    path: str, table: str | None, query: str | None, workdir: str
) -> tuple[str, dict[str, Any]]:
    """Read a SQLite table (or the result of a read-only query) into a Parquet file in
    `workdir`; returns its path and the lineage: database, table or query, ran_at, rows. The
    database is opened read-only (`mode=ro`); a query that would write fails there."""
    import sqlite3

    import pyarrow as pa
    import pyarrow.parquet as pq

    if (table is None) == (query is None):
        raise SourceError(f"{path}: a SQLite source needs key 'table' or key 'query' (one of them)")
    sql = query if query is not None else f'SELECT * FROM "{table.replace(chr(34), chr(34) * 2)}"'  # type: ignore[union-attr]
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
    ran_at = time.time()
    try:
        con = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as error:
        raise SourceError(f"{path}: cannot open it as SQLite ({error})") from None
    try:
        if table is not None:
            found = con.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?",
                (table,),
            ).fetchone()
            if found is None:
                names = [
                    r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                ]
                raise SourceError(
                    f"{path}: no table {table!r} (its tables: {', '.join(names) or 'none'})"
                )
        try:
            cursor = con.execute(sql)
            columns = [d[0] for d in cursor.description or []]
            rows = cursor.fetchall()
        except sqlite3.Error as error:
            raise SourceError(f"{path}: the query failed: {error}") from None
    finally:
        con.close()
    if not columns:
        raise SourceError(f"{path}: the query returns no columns")
    arrays = [_arrow_column([r[i] for r in rows]) for i in range(len(columns))]
    names, _ = _unique(columns)
    os.makedirs(workdir, exist_ok=True)
    target = os.path.join(workdir, f"{len(os.listdir(workdir))}-sqlite.parquet")
    pq.write_table(pa.table(arrays, names=names), target)
    lineage: dict[str, Any] = {
        "database": os.path.abspath(path),
        "ran_at": ran_at,
        "rows": len(rows),
    }
    lineage["table" if table is not None else "query"] = table if table is not None else query
    return target, lineage


def _unique(names: list[str]) -> tuple[list[str], list[str]]:
    from jobs.ingest_strict import unique_names

    return unique_names([n or None for n in names])
