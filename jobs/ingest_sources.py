"""Sources of the `ingest` kind that are not files in a folder: an `http(s)://` URL or an
`s3://bucket/key` object (S3 or an S3-compatible server), fetched into the job's own folder
first, and a SQLite database (a table or a query), read with Python's
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

from workbench.jobmodel.secrets import (
    CREDENTIAL_NAMES,
    with_url_password,
    without_url_password,
)

URL_SCHEMES = ("https://", "http://", "s3://")
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SQLITE_EXTENSIONS = (".db", ".sqlite", ".sqlite3")
SQLITE_MAGIC = b"SQLite format 3\x00"
FETCH_TIMEOUT_S = 60


class SourceError(ValueError):
    """A source that cannot be read: a URL that does not answer 200, a database without the
    table, a query that fails. The message names the source."""


def is_url(source: str) -> bool:
    return source.lower().startswith(URL_SCHEMES)


def is_postgres(source: str) -> bool:
    """A PostgreSQL connection URI (`postgresql://user@host:port/db`; the password, if any,
    from PGPASSWORD or ~/.pgpass as libpq reads them)."""
    return source.lower().startswith(POSTGRES_SCHEMES)


def shown_uri(uri: str) -> str:
    """A URI without the password it may carry (`user:pass@`): what lineage and messages say."""
    return without_url_password(uri)[0]


def _pg_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _pg_name(name: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def postgres_to_parquet(
    uri: str, table: str | None, query: str | None, workdir: str
) -> tuple[str, dict[str, Any]]:
    """Read a PostgreSQL table (`schema.table` or `table`) or the result of a query into a
    Parquet file in `workdir` through DuckDB's postgres extension, attached READ_ONLY (its
    transactions are read-only: a query that writes fails). Column types are PostgreSQL's,
    except that a NUMERIC without a precision (which DuckDB would read as DOUBLE, rounding) is
    read as its exact text. Returns the path and the lineage: database (no password), table or
    query, ran_at (when the query started), rows. Raises SourceError naming the database."""
    import duckdb

    from workbench.catalog import extensions

    shown = shown_uri(uri)
    full = with_url_password(shown, os.environ)  # a password handed by the daemon, if any
    if (table is None) == (query is None):
        raise SourceError(f"{shown}: a PostgreSQL source needs key 'table' or key 'query'")
    if query is not None:
        sql = query.strip().rstrip(";")
    else:
        sql = f"SELECT * FROM {_pg_name(str(table))}"
    os.makedirs(workdir, exist_ok=True)
    target = os.path.join(workdir, f"{len(os.listdir(workdir))}-postgres.parquet")
    con = duckdb.connect()
    ran_at = time.time()
    try:
        extensions.load(con, "postgres")
        con.execute(f"ATTACH {_pg_literal(full)} AS wb_pg (TYPE postgres, READ_ONLY)")
        source = f"postgres_query('wb_pg', {_pg_literal(sql)})"
        described = con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
        doubles = [str(r[0]) for r in described if str(r[1]) == "DOUBLE"]
        if doubles:
            kinds = ", ".join(f"pg_typeof(q.{_pg_name(c)})::text" for c in doubles)
            found = con.execute(
                "SELECT * FROM postgres_query('wb_pg',"
                f" {_pg_literal(f'SELECT {kinds} FROM ({sql}) AS q LIMIT 1')})"
            ).fetchone()
            numeric = {c for c, k in zip(doubles, found or (), strict=False) if k == "numeric"}
            if numeric:
                columns = ", ".join(
                    f"q.{_pg_name(str(r[0]))}::text AS {_pg_name(str(r[0]))}"
                    if r[0] in numeric
                    else f"q.{_pg_name(str(r[0]))}"
                    for r in described
                )
                sql = f"SELECT {columns} FROM ({sql}) AS q"
                source = f"postgres_query('wb_pg', {_pg_literal(sql)})"
        ran_at = time.time()
        written = con.execute(
            f"COPY (SELECT * FROM {source}) TO {_pg_literal(target)} (FORMAT parquet)"
        ).fetchone()
    except extensions.ExtensionMissing as error:
        raise SourceError(f"{shown}: {error}") from None
    except duckdb.Error as error:
        text = _scrubbed(str(error).replace(full, shown).replace(uri, shown), full)
        raise SourceError(f"{shown}: {text.splitlines()[0] if text else error}") from None
    finally:
        con.close()
    lineage: dict[str, Any] = {
        "database": shown,
        "ran_at": ran_at,
        "rows": int(written[0]) if written else 0,
    }
    lineage["table" if table is not None else "query"] = table if table is not None else query
    return target, lineage


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

    if url.lower().startswith("s3://"):
        return fetch_s3(url, workdir)
    shown = shown_uri(url)
    request = _request(shown, with_url_password(shown, os.environ))
    os.makedirs(workdir, exist_ok=True)
    target = Path(workdir) / f"{len(os.listdir(workdir))}-{url_name(url)}"
    digest = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:
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
        "final_url": shown_uri(final),
        "status": 200,
        "etag": headers.get("ETag"),
        "last_modified": headers.get("Last-Modified"),
        "bytes": size,
        "sha256": digest.hexdigest(),
        "fetched_at": time.time(),
    }
    return str(target), lineage


def _request(shown: str, full: str) -> Any:
    """A urllib request for `full` (a URL that may carry `user:pass@`, which urllib would take
    for a host name): the URL without its user, and HTTP Basic authentication (RFC 7617) when
    it names one."""
    import base64
    import urllib.request

    parsed = urllib.parse.urlsplit(full)
    if parsed.username is None:
        return urllib.request.Request(full)
    hostport = parsed.netloc.rpartition("@")[2]
    request = urllib.request.Request(parsed._replace(netloc=hostport).geturl())
    user = urllib.parse.unquote(parsed.username)
    password = urllib.parse.unquote(parsed.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    request.add_unredirected_header("Authorization", f"Basic {token}")
    return request


def _scrubbed(text: str, full: str = "") -> str:
    """`text` (an error to report) with every credential masked wherever it appears: the
    password of the URL `full` (if any) and the values of this job's credential variables
    (`CREDENTIAL_NAMES`: a server's error may quote an access key)."""
    values = [os.environ[name] for name in CREDENTIAL_NAMES if os.environ.get(name)]
    try:
        password = urllib.parse.urlsplit(full).password if full else None
    except ValueError:
        password = None
    if password:
        values += [password, urllib.parse.unquote(password)]
    for value in sorted(set(values), key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def s3_secret_sql(environ: dict[str, str] | None = None) -> str:
    """`CREATE SECRET` for DuckDB's S3 reader, naming no credential: the aws extension's
    credential chain reads them from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN) or from the profile in ~/.aws (AWS_PROFILE), and DuckDB never shows them
    (duckdb_secrets() prints `redacted`). An S3-compatible server is named by AWS_ENDPOINT_URL_S3
    or AWS_ENDPOINT_URL (`http://127.0.0.1:9000`: path-style URLs, TLS as its scheme says);
    the region by AWS_REGION or AWS_DEFAULT_REGION."""
    env = os.environ if environ is None else environ
    options = ["TYPE s3", "PROVIDER credential_chain", "CHAIN 'env;config'"]
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urllib.parse.urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        host = (parsed.netloc or parsed.path).replace("'", "")
        options += [
            f"ENDPOINT '{host}'",
            "URL_STYLE 'path'",
            f"USE_SSL {'false' if parsed.scheme == 'http' else 'true'}",
        ]
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        options.append(f"REGION '{region.replace(chr(39), '')}'")
    return f"CREATE SECRET workbench_s3 ({', '.join(options)})"


def fetch_s3(url: str, workdir: str) -> tuple[str, dict[str, Any]]:
    """Download the object `s3://bucket/key` into `workdir` through DuckDB's httpfs (the object
    is held in memory once), with credentials as `s3_secret_sql` finds them; returns the local
    path and the lineage: url, endpoint, last_modified, bytes, sha256, fetched_at (never a
    credential). Raises SourceError naming the URL."""
    import duckdb

    from workbench.catalog import extensions

    con = duckdb.connect()
    try:
        extensions.load(con, "httpfs", "aws")
        con.execute(s3_secret_sql())
        row = con.execute(
            "SELECT content, CAST(last_modified AS VARCHAR) FROM read_blob(?)", [url]
        ).fetchone()
    except extensions.ExtensionMissing as error:
        raise SourceError(f"{url}: {error}") from None
    except duckdb.Error as error:
        said = _scrubbed(str(error)).splitlines()
        raise SourceError(f"{url}: cannot fetch it ({said[0] if said else 'no reason'})") from None
    finally:
        con.close()
    if row is None:
        raise SourceError(f"{url}: no such object")
    content = bytes(row[0])
    os.makedirs(workdir, exist_ok=True)
    target = Path(workdir) / f"{len(os.listdir(workdir))}-{url_name(url)}"
    target.write_bytes(content)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    lineage = {
        "url": url,
        "endpoint": endpoint or "AWS",
        "last_modified": row[1],
        "bytes": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
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
