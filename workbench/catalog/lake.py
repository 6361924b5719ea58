"""The versioned Parquet lake and its catalog: publishing dataset versions atomically, reading
them as Arrow, and sandboxed read-only DuckDB connections with a view per dataset.

Layout: `lake/<dataset>/v<N>/part-*.parquet` (and `rejects.parquet` where an ingest kept bad
rows). A version is written under `lake/<dataset>/.tmp-*` and published by one atomic rename
while the catalog's write lock is held, so readers never see a half-written version and two
writers never get the same number."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.db import catalog as db_catalog
from workbench.db.store import Store
from workbench.paths import Home

if TYPE_CHECKING:
    import duckdb
    import pyarrow


DATASET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
REJECTS_FILE = "rejects.parquet"


class LakeError(ValueError):
    """A dataset or version that does not exist, or a name that cannot be used."""


@dataclass(frozen=True)
class VersionInfo:
    """One published version of a dataset, as the catalog records it."""

    dataset: str
    version: int
    path: Path
    rows: int
    bytes: int
    content_hash: str
    schema: list[tuple[str, str]]
    sources: list[dict[str, Any]]
    rejected_rows: int
    duration_s: float | None
    created_at: float
    job_id: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "version": self.version,
            "path": str(self.path),
            "rows": self.rows,
            "bytes": self.bytes,
            "content_hash": self.content_hash,
            "schema": [{"name": n, "type": t} for n, t in self.schema],
            "sources": self.sources,
            "rejected_rows": self.rejected_rows,
            "duration_s": self.duration_s,
            "created_at": self.created_at,
            "job_id": self.job_id,
        }

    @property
    def glob(self) -> str:
        return str(self.path / "part-*.parquet")

    @property
    def rejects_path(self) -> Path:
        return self.path / REJECTS_FILE


def check_dataset_name(name: str, where: str = "dataset") -> str:
    if not DATASET_NAME.match(name):
        raise LakeError(
            f"{where}: {name!r} is not a usable dataset name (letters, digits and _; not"
            " starting with a digit)"
        )
    return name


def _version_from_row(row: tuple[Any, ...]) -> VersionInfo:
    (
        dataset,
        version,
        path,
        sources,
        schema,
        rows,
        size,
        digest,
        rejected,
        duration,
        created,
        job,
    ) = row
    return VersionInfo(
        dataset,
        version,
        Path(path),
        rows,
        size,
        digest,
        [(c["name"], c["type"]) for c in json.loads(schema)],
        json.loads(sources),
        rejected,
        duration,
        created,
        job,
    )


def versions(store: Store, dataset: str | None = None) -> list[VersionInfo]:
    """Every version (of one dataset, or of all), oldest first."""
    rows = db_catalog.version_rows(store, dataset)
    return [_version_from_row(r) for r in rows]


def version_info(store: Store, dataset: str, version: int | None = None) -> VersionInfo:
    """A version (the latest when `version` is None); LakeError names what is missing."""
    row = db_catalog.version_row(store, dataset, version)
    if row is None:
        known = db_catalog.dataset_names(store)
        if dataset not in known:
            hint = f" (known: {', '.join(known)})" if known else " (the lake is empty)"
            raise LakeError(f"no dataset named {dataset!r}{hint}")
        raise LakeError(f"dataset {dataset!r} has no version {version}")
    return _version_from_row(row)


def latest_versions(store: Store) -> list[VersionInfo]:
    rows = db_catalog.latest_version_rows(store)
    return [_version_from_row(r) for r in rows]


def _content_hash(files: Iterable[Path]) -> str:
    """BLAKE2b-256 over the parts' names and bytes: as strong as SHA-256 for telling versions
    apart, and about twice as fast, which matters on every ingest of a large file."""
    digest = hashlib.blake2b(digest_size=32)
    for path in sorted(files):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _describe_parts(tmp: Path) -> tuple[int, list[tuple[str, str]]]:
    import duckdb

    con = duckdb.connect()
    try:
        pattern = str(tmp / "part-*.parquet")
        rows = con.execute(f"SELECT count(*) FROM read_parquet('{pattern}')").fetchone()
        schema = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{pattern}')").fetchall()
    finally:
        con.close()
    return int(rows[0] if rows else 0), [(str(r[0]), str(r[1])) for r in schema]


def publish(
    home: Home,
    store: Store,
    dataset: str,
    write: Callable[[Path], int | None],
    sources: list[dict[str, Any]] | None = None,
    job_id: int | None = None,
    started_at: float | None = None,
) -> VersionInfo:
    """Publish a new version: `write(tmp_dir)` writes `part-*.parquet` files (and optionally
    `rejects.parquet`) into a private folder and returns how many rows it rejected; the folder
    becomes `v<N>` by one atomic rename.

    On any error the private folder is removed: a failed write leaves nothing behind."""
    check_dataset_name(dataset)
    started = started_at if started_at is not None else time.time()
    base = home.lake / dataset
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        rejected_rows = write(tmp) or 0
        parts = sorted(tmp.glob("part-*.parquet"))
        if not parts:
            raise LakeError(f"dataset {dataset!r}: nothing was written")
        rows, schema = _describe_parts(tmp)
        digest = _content_hash(parts)
        size = sum(p.stat().st_size for p in parts)

        def place(version: int) -> str:
            final = base / f"v{version}"
            if final.exists():  # left by a crash between rename and commit: not in the catalog
                shutil.rmtree(final)
            tmp.rename(final)
            return str(final)

        version = db_catalog.add_version(
            store, dataset, place, sources or [], schema, rows, size, digest, rejected_rows,
            started, job_id,
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            base.rmdir()  # only when this was the dataset's first, failed, version
        except OSError:
            pass
        raise
    return version_info(store, dataset, version)


def publish_arrow(
    home: Home,
    store: Store,
    dataset: str,
    table: pyarrow.Table,
    sources: list[dict[str, Any]] | None = None,
    job_id: int | None = None,
) -> VersionInfo:
    """Publish an Arrow table as a new version (e.g. a test job's per-row predictions)."""
    import pyarrow.parquet as pq

    def write(tmp: Path) -> None:
        pq.write_table(table, tmp / "part-0.parquet")
        return None

    return publish(home, store, dataset, write, sources, job_id)


def read_arrow(
    home: Home, dataset: str, version: int | None = None, store: Store | None = None
) -> tuple[pyarrow.Table, VersionInfo]:
    """A dataset version as one Arrow table (DuckDB reads the Parquet parts)."""
    import duckdb

    own = store is None
    store = store or Store.open(home.state_db)
    try:
        info = version_info(store, dataset, version)
    finally:
        if own:
            store.close()
    con = duckdb.connect()
    try:
        table = con.sql(f"SELECT * FROM read_parquet('{info.glob}')").to_arrow_table()
    finally:
        con.close()
    return table, info


def clean_orphans(home: Home) -> int:
    """Remove `.tmp-*` folders left by writers that died; returns how many were removed."""
    removed = 0
    for tmp in home.lake.glob("*/.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
        removed += 1
    return removed


# ---- queries ------------------------------------------------------------------------------

READ_STATEMENTS = frozenset({"SELECT", "EXPLAIN"})


class QueryRefused(ValueError):
    """A statement the SQL surface does not run (anything that is not a read)."""


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


STORE_TABLES = ("jobs", "job_events", "metrics", "runs", "evaluations", "models")


def _store_tables(store: Store, only: Iterable[str] = STORE_TABLES) -> dict[str, pyarrow.Table]:
    """The store's jobs, runs and metrics (those named in `only`) as Arrow tables, queryable
    next to the lake."""
    import pyarrow as pa

    wanted = set(only)
    if not wanted:
        return {}

    tables: dict[str, pyarrow.Table] = {}
    for name in STORE_TABLES:
        if name not in wanted:
            continue
        exposed = db_catalog.exposed_table(store, name)
        if exposed is None:
            continue
        columns, rows = exposed
        tables[name] = pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)})
    return tables


def mentioned_store_tables(sql: str) -> list[str]:
    """The store tables a query may use: those whose name appears in it as a word. Loading them
    costs a read of the store and pyarrow's pandas import (~0.2 s), so a query that names none
    of them skips both; a false match only loads a table that is not used."""
    return [t for t in STORE_TABLES if re.search(rf"\b{t}\b", sql, re.IGNORECASE)]


def connect(
    home: Home, store: Store, with_store_tables: bool = True, for_sql: str | None = None
) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection over the lake: a view per dataset (latest version) and per
    version (`"name@v2"`), the store's tables (all, or with `for_sql` only those that query
    names), file access limited to the lake, locked."""
    import duckdb

    con = duckdb.connect(":memory:")
    # One catalog read: a version published between two reads would leave a view pointing at
    # a version this connection never defined.
    every = versions(store)
    latest: dict[str, VersionInfo] = {}
    for info in every:
        latest[info.dataset] = info  # oldest first, so the last one wins
    for info in every:
        con.execute(
            f"CREATE VIEW {_quote(f'{info.dataset}@v{info.version}')} AS"
            f" SELECT * FROM read_parquet('{info.glob}')"
        )
        if info.rejected_rows and info.rejects_path.exists():
            con.execute(
                f"CREATE VIEW {_quote(f'{info.dataset}@v{info.version}_rejects')} AS"
                f" SELECT * FROM read_parquet('{info.rejects_path}')"
            )
    for info in latest.values():
        con.execute(
            f"CREATE VIEW {_quote(info.dataset)} AS SELECT * FROM"
            f" {_quote(f'{info.dataset}@v{info.version}')}"
        )
        if info.rejected_rows and info.rejects_path.exists():
            con.execute(
                f"CREATE VIEW {_quote(info.dataset + '_rejects')} AS SELECT * FROM"
                f" {_quote(f'{info.dataset}@v{info.version}_rejects')}"
            )
    if with_store_tables:
        only = STORE_TABLES if for_sql is None else mentioned_store_tables(for_sql)
        for name, table in _store_tables(store, only).items():
            con.register(name, table)
    lake = str(home.lake).replace("'", "''")
    con.execute(f"SET allowed_directories=['{lake}']")
    con.execute("SET enable_external_access=false")
    con.execute("SET enable_progress_bar=true")
    con.execute("SET enable_progress_bar_print=false")
    con.execute("SET lock_configuration=true")
    return con


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but reads (SELECT, EXPLAIN), naming the statement that is refused."""
    import duckdb

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as error:
        raise QueryRefused(str(error)) from None
    if not statements:
        raise QueryRefused("no statement to run")
    for number, statement in enumerate(statements, 1):
        kind = statement.type.name
        if kind not in READ_STATEMENTS:
            raise QueryRefused(
                f"statement {number} is {kind}: only SELECT and EXPLAIN run here (the lake is"
                " read-only; write data with an ingest job)"
            )


def record_query(
    store: Store, sql: str, duration_s: float | None, rows: int | None, error: str | None
) -> None:
    db_catalog.record_query(store, sql, duration_s, rows, error)


def query_history(store: Store, limit: int = 100) -> list[dict[str, Any]]:
    return db_catalog.query_history(store, limit)
