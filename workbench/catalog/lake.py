"""The versioned Parquet lake and its catalog: publishing dataset versions atomically, reading
them as Arrow, and sandboxed read-only DuckDB connections with a view per dataset a query names.

Layout: `lake/<dataset>/v<N>/part-*.parquet` (and `rejects.parquet` where an ingest kept bad
rows). A version is written under `lake/<dataset>/.tmp-*` and published by one atomic rename
while the catalog's write lock is held, so readers never see a half-written version and two
writers never get the same number."""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench import safefs
from workbench.catalog import encryption, extensions
from workbench.db import catalog as db_catalog
from workbench.db.store import Store
from workbench.paths import Home
from workbench.units import format_duration, format_size, parse_duration, parse_size

if TYPE_CHECKING:
    import duckdb
    import pyarrow


DATASET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
REJECTS_FILE = "rejects.parquet"
DATASET_NAME_MAX = 64
# Views the SQL layer makes beside each dataset: NAME_rejects; and test jobs' predictions.
RESERVED_SUFFIXES = ("_rejects", "_predictions")


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
    nulls: dict[str, int | None] = field(default_factory=dict)  # column -> null values

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "version": self.version,
            "path": str(self.path),
            "rows": self.rows,
            "bytes": self.bytes,
            "content_hash": self.content_hash,
            "schema": [{"name": n, "type": t, "nulls": self.nulls.get(n)} for n, t in self.schema],
            "sources": self.sources,
            "rejected_rows": self.rejected_rows,
            "duration_s": self.duration_s,
            "created_at": self.created_at,
            "job_id": self.job_id,
            "encrypted": self.encrypted,
        }

    @property
    def glob(self) -> str:
        return str(self.path / "part-*.parquet")

    @property
    def parts(self) -> list[str]:
        return sorted(str(p) for p in self.path.glob("part-*.parquet"))

    @property
    def encrypted(self) -> bool:
        """Whether the version's files are encrypted (read from the files: the catalog holds
        no key and no flag that could disagree with them)."""
        return any(encryption.is_encrypted(p) for p in self.parts)

    @property
    def rejects_path(self) -> Path:
        return self.path / REJECTS_FILE


def reserved_name(name: str) -> str | None:
    """Why `name` cannot be a user's dataset, or None: the SQL layer's own views are the store
    tables (`STORE_TABLES`), each dataset's `NAME_rejects` and the test jobs'
    `runN_predictions`/`testN_predictions` datasets; DuckDB names are case-insensitive, so a
    dataset with one of these names (or suffixes) would shadow one of them."""
    lowered = name.lower()
    if lowered in STORE_TABLES:
        return f"{name!r} is the name of the store's {lowered!r} view"
    for suffix in RESERVED_SUFFIXES:
        if lowered.endswith(suffix):
            return f"names ending in {suffix!r} are reserved"
    return None


def check_dataset_name(name: str, where: str = "dataset", internal: bool = False) -> str:
    """`name` if it is a usable dataset name: ASCII letters, digits and _, not starting with a
    digit, at most `DATASET_NAME_MAX` characters (it names a folder); unless `internal` (a
    job's own output such as predictions), not a reserved name (see `reserved_name`).
    Raises LakeError naming `where`."""
    if not DATASET_NAME.match(name):
        raise LakeError(
            f"{where}: {name[:80]!r} is not a usable dataset name (ASCII letters, digits and _;"
            " not starting with a digit)"
        )
    if len(name) > DATASET_NAME_MAX:
        raise LakeError(
            f"{where}: a dataset name has at most {DATASET_NAME_MAX} characters, got"
            f" {len(name)} ({name[:20]!r}...)"
        )
    if not internal:
        why = reserved_name(name)
        if why is not None:
            raise LakeError(
                f"{where}: {why}; reserved: {', '.join(STORE_TABLES)} and names ending in"
                f" {' or '.join(RESERVED_SUFFIXES)}"
            )
    return name


def check_type_name(kind: str) -> str | None:
    """Why `kind` is not a DuckDB type (DuckDB's own type parser: DECIMAL(p,s), VARCHAR(n),
    lists and structs included), or None when it is."""
    import duckdb

    try:
        duckdb.sqltype(kind)
    except (duckdb.Error, ValueError, TypeError) as error:
        return str(error).splitlines()[0]
    return None


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
    columns = json.loads(schema)
    return VersionInfo(
        dataset,
        version,
        Path(path),
        rows,
        size,
        digest,
        [(c["name"], c["type"]) for c in columns],
        json.loads(sources),
        rejected,
        duration,
        created,
        job,
        {c["name"]: c.get("nulls") for c in columns},
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
    import hashlib

    digest = hashlib.blake2b(digest_size=32)
    for path in sorted(files):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _describe_parts(
    home: Home, tmp: Path
) -> tuple[int, list[tuple[str, str]], dict[str, int | None], str]:
    """Rows, schema, each top-level column's null count and the content hash. Plain parts: from
    the Parquet footers (the writer's statistics: no scan of the data), hashed as files.
    Encrypted parts (whose bytes differ on every write: AES-GCM takes a fresh nonce) are
    scanned once with the key, and the hash is of their rows in order."""
    import hashlib

    import duckdb

    parts = sorted(tmp.glob("part-*.parquet"))
    con = duckdb.connect()
    try:
        encrypted = unlock(con, home, [str(p) for p in parts], f"dataset {tmp.parent.name!r}")
        source = parquet_source([str(p) for p in parts], encrypted)
        schema = con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
        columns = [(str(r[0]), str(r[1])) for r in schema]
        if not encrypted:
            pattern = _sql_literal(str(tmp / "part-*.parquet"))
            rows = con.execute(f"SELECT count(*) FROM {source}").fetchone()
            stats = con.execute(
                "SELECT path_in_schema, sum(stats_null_count), count(*) - count(stats_null_count)"
                f" FROM parquet_metadata({pattern}) GROUP BY path_in_schema"
            ).fetchall()
            known = {str(p): (None if missing else int(n or 0)) for p, n, missing in stats}
            nulls = {n: known.get(n) for n, _ in columns}
            return int(rows[0] if rows else 0), columns, nulls, _content_hash(parts)
        counts = con.execute(
            "SELECT count(*)"
            + "".join(f", count(*) - count({_quote(n)})" for n, _ in columns)
            + f" FROM {source}"
        ).fetchone() or (0,)
        digest = hashlib.blake2b(digest_size=32, person=b"wb-decrypted")
        digest.update(json.dumps(columns).encode())
        every = ", ".join(_quote(n) for n, _ in columns)
        reader = con.execute(f"SELECT hash({every}) FROM {source}").fetch_record_batch(1 << 20)
        for batch in reader:
            digest.update(batch.column(0).to_numpy(zero_copy_only=False).tobytes())
    except duckdb.Error as error:
        key = None if not encrypted else _configured_key(home)
        explained = encryption.explain(error, f"dataset {tmp.parent.name}", key)
        raise LakeError(str(explained or error).splitlines()[0]) from None
    finally:
        con.close()
    nulls = {n: int(counts[i + 1]) for i, (n, _) in enumerate(columns)}
    return int(counts[0]), columns, nulls, "enc-" + digest.hexdigest()


def parquet_source(files: list[str], encrypted: bool) -> str:
    """`read_parquet` of `files`, with the lake key's option when they are encrypted (the key
    registered on the connection by `unlock`)."""
    listed = "[" + ", ".join(_sql_literal(f) for f in files) + "]"
    option = f", {encryption.read_option()}" if encrypted else ""
    return f"read_parquet({listed}{option})"


def _configured_key(home: Home) -> encryption.LakeKey | None:
    try:
        path = settings(home).key_file
        return None if path is None else encryption.read_key(path)
    except ValueError:
        return None


def lake_key(home: Home, what: str) -> encryption.LakeKey:
    """The lake's key (config.toml `[lake] key_file`), needed for `what` (named in the error).
    Raises LakeError when no key file is named or it cannot be used."""
    path = settings(home).key_file
    if path is None:
        raise LakeError(
            f"{what} needs the lake's key: name its key file in {home.config} ([lake] key_file"
            ' = "PATH", a file of mode 0600)'
        )
    try:
        return encryption.read_key(path)
    except encryption.EncryptionError as error:
        raise LakeError(f"{what}: {error}") from None


def unlock(con: duckdb.DuckDBPyConnection, home: Home, files: list[str], what: str) -> bool:
    """Register the lake's key on `con` when any of `files` is encrypted (True), else nothing
    (False). Raises LakeError when the key is needed and not usable."""
    if not any(encryption.is_encrypted(f) for f in files):
        return False
    register_key(con, lake_key(home, what))
    return True


def register_key(con: duckdb.DuckDBPyConnection, key: encryption.LakeKey) -> None:
    """`encryption.register`, its missing extension as a LakeError."""
    try:
        encryption.register(con, key)
    except extensions.ExtensionMissing as error:
        raise LakeError(str(error)) from None


def encryption_key(
    home: Home, store: Store, dataset: str, asked: bool = False
) -> encryption.LakeKey | None:
    """The key a new version of `dataset` is written with, or None for plain Parquet: encrypted
    when asked (`ingest --encrypt`), when config.toml's `[lake] encrypt = true`, or when the
    dataset's latest version is encrypted (a dataset never falls back to plain text). Raises
    LakeError when it must be encrypted and no usable key is configured."""
    must = asked or settings(home).encrypt
    if not must:
        try:
            must = version_info(store, dataset).encrypted
        except LakeError:
            must = False
    return lake_key(home, f"dataset {dataset!r} (encrypted)") if must else None


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_READ = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
_READ_DIR = _READ | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


def _read_only(folder: Path) -> None:
    """Published files and their folder lose their write bits: a writer that gets past the SQL
    sandbox (or a user's `--out`) cannot replace, add or remove a version's files. Prune and
    the cleanups give the folder its write bit back first (`remove_tree`)."""
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(_READ)
    folder.chmod(_READ_DIR)


def remove_tree(folder: Path) -> None:
    """Remove a (possibly read-only, see `_read_only`) version or staging folder and what it
    holds, following no link: write bits are given back only to real folders (a link is never
    chmod-ed through), then `safefs.remove_tree` removes it. Errors are left for the next
    sweep."""
    if not folder.is_dir() or folder.is_symlink():
        with contextlib.suppress(OSError):
            safefs.remove_tree(folder)
        return
    for top, dirs, _files in os.walk(folder, followlinks=False):
        for path in [top, *(os.path.join(top, d) for d in dirs)]:
            if os.path.islink(path):
                continue
            with contextlib.suppress(OSError):
                os.chmod(path, os.lstat(path).st_mode | stat.S_IWUSR | stat.S_IXUSR)
    with contextlib.suppress(OSError):
        safefs.remove_tree(folder)


def in_lake(home: Home, path: Path) -> bool:
    """Whether `path` (resolved, links followed, for a file that may not exist yet) lies in the
    lake, where published versions must never change."""
    lake_root = home.lake.resolve()
    target = path.expanduser().resolve()
    return target == lake_root or lake_root in target.parents


def same_name_ignoring_case(store: Store, dataset: str) -> str | None:
    """The existing dataset whose name differs from `dataset` only in case (SQL names are
    case-insensitive, so both could never be queried), or None."""
    for name in db_catalog.dataset_names(store):
        if name != dataset and name.lower() == dataset.lower():
            return name
    return None


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

    Content identical to the latest version (same BLAKE2b hash of the parts, same rejected rows)
    publishes nothing: the latest version is returned as it is (its `job_id` is not the caller's).
    On any error the private folder is removed: a failed write leaves nothing behind."""
    check_dataset_name(dataset, internal=True)
    other = same_name_ignoring_case(store, dataset)
    if other is not None:
        raise LakeError(
            f"dataset {dataset!r}: the lake has {other!r}, the same name but for case; SQL names"
            f" ignore case, so choose another name (or ingest into {other!r})"
        )
    started = started_at if started_at is not None else time.time()
    base = home.lake / dataset
    base.mkdir(parents=True, exist_ok=True)
    import uuid

    tmp = base / f"{staging_name(job_id)}{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        rejected_rows = write(tmp) or 0
        parts = sorted(tmp.glob("part-*.parquet"))
        if not parts:
            raise LakeError(f"dataset {dataset!r}: nothing was written")
        rows, schema, nulls, digest = _describe_parts(home, tmp)
        size = sum(p.stat().st_size for p in parts)
        _read_only(tmp)

        def place(version: int) -> str:
            final = base / f"v{version}"
            if final.exists():  # left by a crash between rename and commit: not in the catalog
                remove_tree(final)
            tmp.rename(final)
            return str(final)

        version = db_catalog.add_version(
            store, dataset, place, sources or [], schema, rows, size, digest, rejected_rows,
            started, job_id, nulls=nulls, dedup=True,
        )  # fmt: skip
        if tmp.exists():  # the latest version has this content: nothing was placed
            remove_tree(tmp)
    except BaseException:
        remove_tree(tmp)
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
    encrypt: bool = False,
) -> VersionInfo:
    """Publish an Arrow table as a new version (e.g. a test job's per-row predictions);
    `encrypt`: with the lake's key (see `encryption_key`; LakeError without a usable one)."""
    import duckdb
    import pyarrow.parquet as pq

    key = encryption_key(home, store, dataset, encrypt)

    def write(tmp: Path) -> None:
        target = tmp / "part-0.parquet"
        if key is None:
            pq.write_table(table, target)
            return None
        con = duckdb.connect()
        try:
            register_key(con, key)
            con.register("wb_table", table)
            con.execute(
                f"COPY wb_table TO {_sql_literal(str(target))}"
                f" (FORMAT parquet, {encryption.write_option()})"
            )
        finally:
            con.close()
        return None

    return publish(home, store, dataset, write, sources, job_id)


def read_arrow(
    home: Home,
    dataset: str,
    version: int | None = None,
    store: Store | None = None,
    shared: Callable[[str, int | None], VersionInfo] | None = None,
) -> tuple[pyarrow.Table, VersionInfo]:
    """A dataset version as one Arrow table (DuckDB reads the Parquet parts). A name with a
    dot (`alice.crops`) is a dataset another user shares (team mode): `shared(name, version)`
    finds it (`workbench.catalog.shared.find`); without `shared`, LakeError."""
    import duckdb

    if "." in dataset:
        if shared is None:
            raise LakeError(f"{dataset!r}: a shared dataset (OWNER.DATASET) needs team mode")
        info = shared(dataset, version)
    else:
        own = store is None
        store = store or Store.open(home.state_db)
        try:
            info = version_info(store, dataset, version)
        finally:
            if own:
                store.close()
    con = duckdb.connect()
    what = f"dataset {info.dataset!r} v{info.version} (encrypted)"
    try:
        encrypted = unlock(con, home, info.parts, what)
        table = con.sql(f"SELECT * FROM {parquet_source(info.parts, encrypted)}").to_arrow_table()
    except duckdb.Error as error:
        explained = encryption.explain(error, what, _configured_key(home))
        raise LakeError(str(explained or error).splitlines()[0]) from None
    finally:
        con.close()
    return table, info


STAGING_PREFIX = ".tmp-"
# A staging folder nobody names (written before owners were recorded) is an orphan this long
# after it was last changed: no version takes hours between its writes.
UNNAMED_ORPHAN_AGE_S = 24 * 3600.0


def staging_name(job_id: int | None) -> str:
    """The start of a staging folder's name, saying who writes it: `.tmp-j<job id>-` for a job
    (orphaned once the job no longer runs), else `.tmp-p<pid>.<start ticks>-` for the writing
    process (orphaned once that process is gone; the start time tells a reused pid apart)."""
    if job_id is not None:
        return f"{STAGING_PREFIX}j{job_id}-"
    pid = os.getpid()
    return f"{STAGING_PREFIX}p{pid}.{_start_ticks(pid)}-"


def _start_ticks(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (field 22 of /proc/PID/stat), as text;
    None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            fields = stat_file.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in (b"Z", b"X") else fields[19].decode()


def staging_orphaned(name: str, live_jobs: Callable[[int], bool], age_s: float) -> bool:
    """Whether the staging folder `name` (last changed `age_s` seconds ago) has no live writer:
    its job does not run (`live_jobs(id)` False), its process is gone, or, for a folder that
    names no writer, it is older than UNNAMED_ORPHAN_AGE_S."""
    owner = name[len(STAGING_PREFIX) :].split("-", 1)[0]
    if owner[:1] == "j" and owner[1:].isdigit():
        return not live_jobs(int(owner[1:]))
    if owner[:1] == "p" and "." in owner:
        pid, _, ticks = owner[1:].partition(".")
        return not pid.isdigit() or _start_ticks(int(pid)) != ticks
    return age_s > UNNAMED_ORPHAN_AGE_S


def clean_orphans(home: Home, live_jobs: Callable[[int], bool]) -> int:
    """Remove the `lake/<dataset>/.tmp-*` staging folders whose writer died (`kill -9` of an
    ingest job: see `staging_orphaned`; `live_jobs(id)` says whether a job may still be
    writing); returns how many were removed. No link is followed. Run at daemon start and by
    `prune`."""

    removed = 0
    now = time.time()
    try:
        datasets = list(os.scandir(home.lake))
    except OSError:
        return 0
    for dataset in datasets:
        if not dataset.is_dir(follow_symlinks=False):
            continue
        try:
            entries = list(os.scandir(dataset.path))
        except OSError:
            continue
        for entry in entries:
            if not entry.name.startswith(STAGING_PREFIX):
                continue
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if staging_orphaned(entry.name, live_jobs, age):
                remove_tree(Path(entry.path))
                removed += 1
    return removed


def prunable(
    store: Store,
    dataset: str | None = None,
    keep_versions: int = 0,
    keep_for_s: float = 0.0,
    now: float | None = None,
) -> list[VersionInfo]:
    """The versions a retention rule removes: past the newest `keep_versions` of their dataset,
    or older than `keep_for_s` seconds (0 turns a rule off). Never a dataset's latest version,
    and never one a training run or evaluation used (its lineage must stay readable)."""
    now = time.time() if now is None else now
    in_use = db_catalog.versions_in_use(store)
    by_dataset: dict[str, list[VersionInfo]] = {}
    for info in versions(store, dataset):
        by_dataset.setdefault(info.dataset, []).append(info)
    chosen: list[VersionInfo] = []
    for infos in by_dataset.values():
        newest_first = sorted(infos, key=lambda i: i.version, reverse=True)
        for rank, info in enumerate(newest_first):
            if rank == 0 or (info.dataset, info.version) in in_use:
                continue
            too_many = keep_versions > 0 and rank >= keep_versions
            too_old = keep_for_s > 0 and now - info.created_at > keep_for_s
            if too_many or too_old:
                chosen.append(info)
    return sorted(chosen, key=lambda i: (i.dataset, i.version))


def prune(home: Home, store: Store, chosen: list[VersionInfo]) -> int:
    """Remove versions (from `prunable`): the catalog row first, then the folder, so a reader
    never finds a catalogued version without files. Returns the bytes freed."""
    freed = 0
    for info in chosen:
        db_catalog.delete_version(store, info.dataset, info.version)
        if info.path.is_dir() and info.path.parent.parent == home.lake:
            freed += sum(p.stat().st_size for p in info.path.iterdir() if p.is_file())
            remove_tree(info.path)
    return freed


# ---- queries ------------------------------------------------------------------------------

READ_STATEMENTS = frozenset({"SELECT", "EXPLAIN"})
# The columns of a rejects table (jobs/ingest.py writes them), for a dataset without rejects.
EMPTY_REJECTS = (
    "SELECT NULL::VARCHAR AS file, NULL::BIGINT AS line, NULL::VARCHAR AS column_name,"
    " NULL::VARCHAR AS error_type, NULL::VARCHAR AS error, NULL::VARCHAR AS raw_line,"
    " NULL::BLOB AS raw_bytes"
)


class QueryRefused(ValueError):
    """A statement the SQL surface does not run (anything that is not a read)."""


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


STORE_TABLES = ("jobs", "job_events", "metrics", "runs", "evaluations", "models")


def _store_tables(store: Store, only: Iterable[str] = STORE_TABLES) -> dict[str, pyarrow.Table]:
    """The store's jobs, runs and metrics (those named in `only`) as Arrow tables, queryable
    next to the lake. A query that names none of them never imports pyarrow (~0.1 s)."""
    wanted = set(only)
    if not wanted:
        return {}
    import pyarrow as pa

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


@dataclass(frozen=True)
class LakeSettings:
    """`[sql]` and `[lake]` in config.toml: the limits of a user's query and the retention of
    old versions. Defaults suit a shared box: a query may use a quarter of the memory (at least
    1 GiB), spill up to 10 GiB inside WORKBENCH_HOME, and run 5 minutes; versions are kept."""

    sql_timeout_s: float = 300.0
    sql_memory_limit_bytes: int = 0  # 0: a quarter of the machine's memory, at least 1 GiB
    sql_spill_limit_bytes: int = 10 * 1024**3
    sql_threads: int = 0  # 0: DuckDB's default (every core)
    keep_versions: int = 0  # newest versions kept per dataset (0: every version)
    keep_for_s: float = 0.0  # older versions are pruned after this long (0: never)
    key_file: Path | None = None  # the lake's encryption key (see catalog.encryption.read_key)
    encrypt: bool = False  # every new version encrypted, not only those asked for

    @property
    def memory_limit_bytes(self) -> int:
        if self.sql_memory_limit_bytes:
            return self.sql_memory_limit_bytes
        try:
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            total = 4 * 1024**3
        return max(1024**3, total // 4)


SQL_KEYS = {
    "timeout": "sql_timeout_s",
    "memory_limit": "sql_memory_limit_bytes",
    "spill_limit": "sql_spill_limit_bytes",
    "threads": "sql_threads",
}
LAKE_KEYS = {
    "keep_versions": "keep_versions",
    "keep_for": "keep_for_s",
    "key_file": "key_file",
    "encrypt": "encrypt",
}


def parse_settings(data: dict[str, Any], where: str) -> LakeSettings:
    """LakeSettings from config.toml's parsed `[sql]` and `[lake]` tables; ValueError names the
    table and key that is wrong."""
    values: dict[str, Any] = {}
    for table, keys in (("sql", SQL_KEYS), ("lake", LAKE_KEYS)):
        given = data.get(table, {})
        if not isinstance(given, dict):
            raise ValueError(f"{where}: [{table}] must be a table")
        for key, value in given.items():
            if key not in keys:
                raise ValueError(
                    f"{where} [{table}]: unknown key {key!r} (known: {', '.join(keys)})"
                )
            name = keys[key]
            try:
                if name == "key_file":
                    if not isinstance(value, str) or not value.strip():
                        raise ValueError(f"expected a path, got {value!r}")
                    values[name] = Path(value).expanduser()
                elif name == "encrypt":
                    if not isinstance(value, bool):
                        raise ValueError(f"expected true or false, got {value!r}")
                    values[name] = value
                elif name.endswith("_s"):
                    values[name] = parse_duration(value)
                elif name.endswith("_bytes"):
                    values[name] = parse_size(value)
                elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    values[name] = value
                else:
                    raise ValueError(f"expected a whole number >= 0, got {value!r}")
            except ValueError as error:
                raise ValueError(f"{where} [{table}]: key {key!r}: {error}") from None
    return LakeSettings(**values)


def settings(home: Home) -> LakeSettings:
    """The home's LakeSettings (defaults when config.toml is missing)."""
    if not os.path.lexists(home.config):
        return LakeSettings()
    from workbench.userfiles import read_toml

    data = read_toml(home.config, regular_only=True)  # UserFileError (a ValueError) names it
    found = parse_settings(data, str(home.config))
    if found.key_file is not None and not found.key_file.is_absolute():
        found = replace(found, key_file=home.config.parent / found.key_file)
    return found


def mentioned_versions(store_versions: list[VersionInfo], sql: str) -> list[VersionInfo]:
    """The versions a query may read: a dataset's latest when its name appears as a word (or
    as `name_rejects`), an older one when `name@vN` appears. A false match only costs a view."""
    latest: dict[str, VersionInfo] = {}
    for info in store_versions:
        latest[info.dataset] = info  # oldest first, so the last one wins
    words = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*(?:@v\d+(?:_rejects)?)?", sql)}
    wanted: list[VersionInfo] = []
    for info in store_versions:
        name = info.dataset.lower()
        named = {f"{name}@v{info.version}", f"{name}@v{info.version}_rejects"}
        if latest[info.dataset] is info:
            named |= {name, f"{name}_rejects"}
        if named & words:
            wanted.append(info)
    return wanted


def connect(
    home: Home,
    store: Store,
    with_store_tables: bool = True,
    for_sql: str | None = None,
    limits: LakeSettings | None = None,
    shared: Sequence[VersionInfo] = (),
) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection over the lake: a view per dataset (latest version) and per
    version (`"name@v2"`) and their rejects, the store's tables; with `for_sql`, only those the
    query names (each view opens Parquet footers, so a catalog of many versions would otherwise
    cost every query).

    The sandbox: DuckDB may open only the exact Parquet files of those views (`allowed_paths`;
    no folder, so nothing can be created in the lake, and a COPY onto a part file fails on its
    temporary file), external access is off, memory and threads are capped, spill files go to
    `WORKBENCH_HOME/tmp/duckdb` (capped too), and the configuration is locked.

    An encrypted version is read with the lake's key (`lake_key`); without a usable key,
    LakeError names the dataset when `for_sql` names it, else the version is left out.

    `shared`: versions other users share with this one (team mode, `workbench.catalog.shared`,
    named `OWNER.DATASET`): each becomes a view in a schema named after its owner
    (`alice.crops`, and `alice."crops@v2"`), read from the owner's share folder."""
    import duckdb

    limits = limits or settings(home)
    con = duckdb.connect(":memory:")
    # One catalog read: a version published between two reads would leave a view pointing at
    # a version this connection never defined.
    every = versions(store)
    latest: dict[str, VersionInfo] = {}
    for info in every:
        latest[info.dataset] = info
    chosen = every if for_sql is None else mentioned_versions(every, for_sql)
    allowed: list[str] = []
    # SQL names ignore case: of datasets whose names differ only in case (made before names
    # were checked for it), the first keeps its views; the others are not reachable by name.
    owner: dict[str, str] = {}
    for info in every:
        owner.setdefault(info.dataset.lower(), info.dataset)

    key: list[encryption.LakeKey] = []  # registered once, when a view first needs it

    def view(name: str, files: list[str]) -> None:
        allowed.extend(files)
        encrypted = any(encryption.is_encrypted(f) for f in files)
        if encrypted and not key:
            key.append(lake_key(home, f"dataset {name.split('@')[0]!r} (encrypted)"))
            register_key(con, key[0])
        try:
            con.execute(
                f"CREATE VIEW {_quote(name)} AS SELECT * FROM {parquet_source(files, encrypted)}"
            )
        except duckdb.Error as error:
            explained = encryption.explain(error, f"dataset {name}", key[0] if key else None)
            if explained is None:
                raise
            raise LakeError(str(explained)) from None

    def rejects_view(name: str, info: VersionInfo) -> None:
        if info.rejected_rows and info.rejects_path.exists():
            view(name, [str(info.rejects_path)])
        else:  # no rejects: an empty table, so a query or a join over it still runs
            con.execute(
                f"CREATE VIEW {_quote(name)} AS SELECT * FROM ({EMPTY_REJECTS}) WHERE false"
            )

    for info in chosen:
        if owner[info.dataset.lower()] != info.dataset:
            continue
        parts = sorted(str(p) for p in info.path.glob("part-*.parquet"))
        if not parts:
            continue
        try:
            view(f"{info.dataset}@v{info.version}", parts)
            rejects_view(f"{info.dataset}@v{info.version}_rejects", info)
        except LakeError:
            if for_sql is not None:
                raise  # the query names it: say why it cannot be read
            continue  # encrypted, no usable key: left out of a connection over everything
        if latest[info.dataset] is info:
            con.execute(
                f"CREATE VIEW {_quote(info.dataset)} AS SELECT * FROM"
                f" {_quote(f'{info.dataset}@v{info.version}')}"
            )
            con.execute(
                f"CREATE VIEW {_quote(info.dataset + '_rejects')} AS SELECT * FROM"
                f" {_quote(f'{info.dataset}@v{info.version}_rejects')}"
            )
    _shared_views(con, shared, for_sql, allowed)
    if with_store_tables:
        only = STORE_TABLES if for_sql is None else mentioned_store_tables(for_sql)
        for name, table in _store_tables(store, only).items():
            con.register(name, table)
    spill = home.root / "tmp" / "duckdb"
    spill.mkdir(parents=True, exist_ok=True)
    con.execute(f"SET temp_directory = {_sql_literal(str(spill))}")
    con.execute(f"SET max_temp_directory_size = '{limits.sql_spill_limit_bytes}B'")
    con.execute(f"SET memory_limit = '{limits.memory_limit_bytes}B'")
    if limits.sql_threads:
        con.execute(f"SET threads = {limits.sql_threads}")
    con.execute("SET allowed_paths = [" + ", ".join(_sql_literal(p) for p in allowed) + "]")
    con.execute("SET enable_external_access = false")
    con.execute("SET enable_progress_bar = true")
    con.execute("SET enable_progress_bar_print = false")
    con.execute("SET lock_configuration = true")
    return con


#: DuckDB's own schemas: an owner with one of these names gets no views (theirs would clash).
_BUILTIN_SCHEMAS = frozenset({"main", "temp", "system", "pg_catalog", "information_schema"})


def accounts_by_lower() -> dict[str, set[str]]:
    """The password database's login names (`pwd.getpwall`) by their lower-case form; read
    afresh at each call (an account made while the TUI runs counts)."""
    import pwd

    by_lower: dict[str, set[str]] = {}
    for entry in pwd.getpwall():
        by_lower.setdefault(entry.pw_name.lower(), set()).add(entry.pw_name)
    return by_lower


def _shared_views(
    con: duckdb.DuckDBPyConnection,
    shared: Sequence[VersionInfo],
    for_sql: str | None,
    allowed: list[str],
) -> None:
    """A schema per owner and a view per shared version (see `connect`); with `for_sql`, only
    those whose `OWNER.DATASET` the query names. Their files join `allowed`."""
    words = None if for_sql is None else for_sql.lower()
    latest: dict[str, VersionInfo] = {}
    # SQL names ignore case: two owners (`alice`, `Alice`) or two of one owner's datasets
    # whose names differ only in case would share a schema or a view, and a query naming one
    # would read the other's. Such names get no views; a query that names one is refused.
    by_owner: dict[str, set[str]] = {}  # owner's name in lower case -> `OWNER.DATASET`s
    accounts = accounts_by_lower() if shared else {}
    for info in shared:
        if info.version >= latest.get(info.dataset, info).version:
            latest[info.dataset] = info
        by_owner.setdefault(info.dataset.rsplit(".", 1)[0].lower(), set()).add(info.dataset)
    for info in shared:
        owner, name = info.dataset.rsplit(".", 1)
        if owner.lower() in _BUILTIN_SCHEMAS or (
            words is not None and info.dataset.lower() not in words
        ):
            continue
        others = [
            d
            for d in sorted(by_owner[owner.lower()])
            if d.rsplit(".", 1)[0] != owner
            or (d != info.dataset and d.lower() == info.dataset.lower())
        ]
        # An account that shares nothing counts too: `alice.crops`, meant for alice's, would
        # read Alice's `crops`.
        twins = sorted(accounts.get(owner.lower(), set()) - {owner})
        others += [f"the account {a}" for a in twins]
        if others:
            if words is None:
                continue
            raise LakeError(
                f"shared dataset {info.dataset}: its name or its owner's differs only in case"
                f" from that of {', '.join(others)}, and SQL names ignore case, so none of"
                " them is queried by name (a train or test spec's dataset names it exactly)"
            )
        try:
            parts = info.parts  # the recorded, checked files (`workbench.catalog.shared`)
        except LakeError:
            if words is not None:
                raise  # the query names it: say why it cannot be read
            continue
        if not parts:
            continue  # unshared, or no longer readable: not a view
        allowed.extend(parts)
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(owner)}")
        source = parquet_source(parts, False)
        versioned = f"{_quote(owner)}.{_quote(f'{name}@v{info.version}')}"
        con.execute(f"CREATE VIEW {versioned} AS SELECT * FROM {source}")
        if latest[info.dataset] is info:
            con.execute(f"CREATE VIEW {_quote(owner)}.{_quote(name)} AS SELECT * FROM {versioned}")


def _explained(text: str) -> tuple[bool, str]:
    """Whether an EXPLAIN statement analyzes (runs) what it explains, and the explained
    statement's text. Comments are skipped: `EXPLAIN /* x */ ANALYZE` analyzes."""
    import duckdb

    tokens = [(p, k.name) for p, k in duckdb.tokenize(text) if k.name != "comment"]
    words = [(p, text[p:].split(None, 1)[0].rstrip("(),;").upper(), k) for p, k in tokens]
    index = 1  # past EXPLAIN
    analyze = False
    if index < len(words) and words[index][1] in ("ANALYZE", "ANALYSE"):
        analyze = True
        index += 1
    elif index < len(words) and text[words[index][0]] == "(":
        depth = 0
        while index < len(words):
            position, word, _ = words[index]
            if word in ("ANALYZE", "ANALYSE"):
                analyze = True
            char = text[position]
            depth += char == "("
            depth -= char == ")"
            index += 1
            if depth == 0:
                break
    inner = text[words[index][0] :] if index < len(words) else ""
    return analyze, inner


def _check_statement(con: duckdb.DuckDBPyConnection, text: str, number: int) -> None:
    import duckdb

    statements = con.extract_statements(text)
    for statement in statements:
        kind = statement.type.name
        if kind == "SELECT":
            continue
        if kind == "EXPLAIN":
            analyze, inner = _explained(statement.query)
            if not inner.strip():
                raise QueryRefused(f"statement {number}: EXPLAIN of nothing")
            try:
                inner_kinds = [
                    _written_kind(s.query, s.type.name) for s in con.extract_statements(inner)
                ]
            except duckdb.Error as error:
                raise QueryRefused(str(error)) from None
            if analyze and inner_kinds != ["SELECT"]:
                raise QueryRefused(
                    f"statement {number} is EXPLAIN ANALYZE of {', '.join(inner_kinds)}: ANALYZE"
                    " runs the statement, so only a SELECT may be analyzed here (the lake is"
                    " read-only)"
                )
            if inner_kinds == ["EXPLAIN"]:
                _check_statement(con, inner, number)
            continue
        raise QueryRefused(
            f"statement {number} is {_written_kind(statement.query, kind)}: only SELECT and"
            " EXPLAIN run here (the lake is read-only; write data with an ingest job)"
        )


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but reads, from the parsed statements (not the first keyword): SELECT
    (with SUMMARIZE, DESCRIBE, SHOW, VALUES, FROM-first), EXPLAIN, and EXPLAIN ANALYZE of a
    SELECT only. QueryRefused names the statement that is refused."""
    import duckdb

    check_sql_text(sql)
    try:
        statements = con.extract_statements(sql)
    except (duckdb.Error, ValueError, TypeError) as error:
        raise QueryRefused(str(error).splitlines()[0]) from None
    if not statements:
        raise QueryRefused("no statement to run")
    for number, statement in enumerate(statements, 1):
        try:
            kind = statement.type.name
        except ValueError as error:
            raise QueryRefused(f"statement {number}: {error}") from None
        if kind == "SELECT":
            continue
        if kind != "EXPLAIN":
            raise QueryRefused(
                f"statement {number} is {_written_kind(statement.query, kind)}: only SELECT and"
                " EXPLAIN run here (the lake is"
                " read-only; write data with an ingest job)"
            )
        _check_statement(con, statement.query, number)


def check_sql_text(sql: str) -> None:
    """Refuse SQL that is not valid UTF-8 text (bytes the shell passed through as surrogate
    escapes), naming the first bad byte and its character offset: DuckDB's parser takes only
    UTF-8. Raises QueryRefused."""
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = sql[error.start]
        byte = f"0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else repr(bad)
        raise QueryRefused(
            f"the SQL is not valid UTF-8 (byte {byte} at character {error.start + 1}); write it"
            " in UTF-8"
        ) from None


# Statement kinds DuckDB files several commands under: name the command as it was written.
_GROUPED_KINDS = {"LOAD", "SET", "VARIABLE_SET", "PRAGMA", "TRANSACTION", "COPY_DATABASE"}


def _written_kind(text: str, kind: str) -> str:
    """The statement's kind as the user wrote it: DuckDB's type for INSTALL is LOAD and for
    RESET is SET, so for those kinds the leading keyword(s) (`FORCE INSTALL`, `RESET`) name
    it; other kinds keep DuckDB's name (a `WITH ... INSERT` is an INSERT)."""
    if kind not in _GROUPED_KINDS:
        return kind
    words: list[str] = re.findall(
        r"[A-Za-z_]+", re.sub(r"--[^\n]*|/\*.*?\*/", " ", text, flags=re.S)
    )
    if not words:
        return kind
    first = str(words[0]).upper()
    if first == "FORCE" and len(words) > 1:
        return f"FORCE {words[1].upper()}"
    return first


def last_statement(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[str, str]:
    """(kind, text) of the query's last statement, without the semicolons that end it; a
    trailing comment stays (wrap it on its own line)."""
    import duckdb

    statements = con.extract_statements(sql)
    if not statements:
        raise QueryRefused("no statement to run")
    statement = statements[-1]
    text = statement.query
    cut = len(text)
    for position, kind in reversed(duckdb.tokenize(text)):
        if kind.name == "comment":
            continue
        if kind.name == "operator" and text[position] == ";":
            cut = position
            continue
        break
    return statement.type.name, text[:cut]


def wrap_sql(body: str) -> str:
    """`body` (one SELECT, no trailing semicolon) as a subquery `q`, on lines of its own so a
    trailing `-- comment` cannot swallow the closing parenthesis."""
    return f"SELECT * FROM (\n{body}\n) AS q"


def wrap_user_sql(sql: str) -> str:
    """The user's SQL (its last statement) as the subquery `q`, for paging and export: what the
    CLI's `--limit` and the Data screen's export both run, so comments, semicolons and white
    space at the end survive in both."""
    import duckdb

    con = duckdb.connect()
    try:
        body = last_statement(con, sql)[1]
    except (duckdb.Error, QueryRefused):
        body = sql  # the query itself will report the error, with its position
    finally:
        con.close()
    return wrap_sql(body)


def limited_sql(con: duckdb.DuckDBPyConnection, sql: str, limit: int | None) -> str:
    """What to run for the user's SQL: its last statement, with LIMIT pushed around it when the
    statement is a SELECT (EXPLAIN output is small and cannot be a subquery)."""
    kind, body = last_statement(con, sql)
    if limit is None or kind != "SELECT":
        return body
    return f"{wrap_sql(body)} LIMIT {int(limit)}"


# Column types whose Python values misprint: DATE/TIMESTAMP infinities come back as 9999-12-31
# (or year 1), BLOBs as b'..' reprs, INTERVALs as "3 days, 0:00:00" timedeltas.
_AS_TEXT = re.compile(r"\b(DATE|TIMESTAMP|TIMESTAMP_S|TIMESTAMP_MS|TIMESTAMP_NS|INTERVAL|BLOB)\b")


def text_sql(con: duckdb.DuckDBPyConnection, sql: str, limit: int | None) -> str:
    """`limited_sql`, with every column whose type is or holds a DATE, TIMESTAMP, INTERVAL or
    BLOB cast to VARCHAR, so it prints in DuckDB's own text form (`infinity`, `-infinity`,
    `3 days`, `\\xFF\\x00`) in the CLI's table, CSV and JSON. Other columns keep their
    types; statements that are not a SELECT are returned as `limited_sql` gives them. The
    columns are bound (not run) to learn their types."""
    kind, _ = last_statement(con, sql)
    query = limited_sql(con, sql, limit)
    if kind != "SELECT":
        return query
    relation = con.sql(query)
    columns = relation.columns
    types = [str(t) for t in relation.types]
    if not any(_AS_TEXT.search(t) for t in types):
        return query
    exprs = [
        (f"CAST(#{i} AS VARCHAR)" if _AS_TEXT.search(t) else f"#{i}") + f" AS {_quote(c)}"
        for i, (c, t) in enumerate(zip(columns, types, strict=True), 1)
    ]
    return f"SELECT {', '.join(exprs)} FROM (\n{query}\n) AS q"


class QueryStopped(RuntimeError):
    """A query stopped by the statement time limit, the memory limit, or the user: a message in
    words, no traceback."""


class Deadline:
    """Interrupts a connection's running statement after `seconds` (a timer thread calls
    `interrupt()`), so a cross join cannot run until someone notices. Use as a context manager;
    `explain(error)` turns DuckDB's interrupt and out-of-memory errors into QueryStopped."""

    def __init__(self, con: duckdb.DuckDBPyConnection, limits: LakeSettings):
        self.con = con
        self.limits = limits
        self.fired = threading.Event()
        self._timer: threading.Timer | None = None

    def _fire(self) -> None:
        self.fired.set()
        self.con.interrupt()

    def __enter__(self) -> Deadline:
        if self.limits.sql_timeout_s > 0:
            self._timer = threading.Timer(self.limits.sql_timeout_s, self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def explain(self, error: BaseException) -> QueryStopped | None:
        """The QueryStopped for an interrupt or a limit, or None for other errors."""
        import duckdb

        if isinstance(error, duckdb.InterruptException | KeyboardInterrupt):
            if self.fired.is_set():
                return QueryStopped(
                    f"stopped after {format_duration(self.limits.sql_timeout_s)}, the statement"
                    " time limit ([sql] timeout in config.toml)"
                )
            return QueryStopped("interrupted")
        if isinstance(error, duckdb.OutOfMemoryException):
            return QueryStopped(
                f"stopped: the query needs more than the memory limit"
                f" ({format_size(self.limits.memory_limit_bytes)}, [sql] memory_limit) and the"
                f" spill limit ({format_size(self.limits.sql_spill_limit_bytes)}, [sql]"
                " spill_limit in config.toml)"
            )
        return None


def record_query(
    store: Store, sql: str, duration_s: float | None, rows: int | None, error: str | None
) -> None:
    db_catalog.record_query(store, sql, duration_s, rows, error)


def query_history(store: Store, limit: int = 100) -> list[dict[str, Any]]:
    return db_catalog.query_history(store, limit)
