"""The system store's record of datasets shared read-only with a group (team mode): one row
per shared version (`shared_datasets`, migration 120), keyed by its owner's uid, the dataset
and the version. Written only by the system daemon (`workbench.daemon.sharing`), after it
checked the files; never a path a request named."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from workbench.db.store import Store

_COLUMNS = (
    "owner_uid, dataset, version, gid, folder, parts, rejects, rows, rejected_rows, bytes,"
    " content_hash,"
    " schema, sources, created_at, shared_at, owner_name"
)


@dataclass(frozen=True)
class Share:
    """One shared version. `folder`: where its files are (shared/UID/DATASET/vN of the system
    home); `parts`: the Parquet part files' names in it, sorted; `rejects`: the rejects file's
    name, or None; `schema`: (column, DuckDB type) pairs; `sources`: the owner's lineage of it
    (as `workbench datasets --json` gives it); `created_at`/`shared_at`: Unix seconds;
    `owner_name`: the login name of `owner_uid` when it was shared (None in records made
    before it was kept, migration 121)."""

    owner_uid: int
    dataset: str
    version: int
    gid: int
    folder: str
    parts: tuple[str, ...]
    rejects: str | None
    rows: int
    rejected_rows: int
    bytes: int
    content_hash: str
    schema: tuple[tuple[str, str], ...]
    sources: tuple[dict[str, Any], ...]
    created_at: float
    shared_at: float
    owner_name: str | None = None

    def row(self) -> tuple[Any, ...]:
        return (
            self.owner_uid, self.dataset, self.version, self.gid, self.folder,
            json.dumps(list(self.parts)), self.rejects, self.rows, self.rejected_rows, self.bytes,
            self.content_hash,
            json.dumps([list(c) for c in self.schema]), json.dumps(list(self.sources)),
            self.created_at, self.shared_at, self.owner_name,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "owner_uid": self.owner_uid,
            "dataset": self.dataset,
            "version": self.version,
            "gid": self.gid,
            "folder": self.folder,
            "parts": list(self.parts),
            "rejects": self.rejects,
            "rows": self.rows,
            "rejected_rows": self.rejected_rows,
            "bytes": self.bytes,
            "content_hash": self.content_hash,
            "schema": [list(c) for c in self.schema],
            "sources": list(self.sources),
            "created_at": self.created_at,
            "shared_at": self.shared_at,
            "owner_name": self.owner_name,
        }


def _share(row: tuple[Any, ...]) -> Share:
    return Share(
        int(row[0]), str(row[1]), int(row[2]), int(row[3]), str(row[4]),
        tuple(json.loads(row[5])), row[6], int(row[7]), int(row[8]), int(row[9]), str(row[10]),
        tuple((str(n), str(t)) for n, t in json.loads(row[11])),
        tuple(json.loads(row[12])), float(row[13]), float(row[14]), row[15],
    )  # fmt: skip


def put(store: Store, share: Share) -> None:
    """Record `share` (replacing the same owner's same version shared before)."""
    marks = ",".join("?" * 16)
    with store.transaction() as conn:
        conn.execute(f"INSERT OR REPLACE INTO shared_datasets ({_COLUMNS}) VALUES ({marks})",
                     share.row())  # fmt: skip


def remove(store: Store, owner_uid: int, dataset: str, version: int | None) -> list[Share]:
    """Forget the owner's shares of `dataset` (one version, or all when None); returns them."""
    gone = [
        s
        for s in shares(store, owners=[owner_uid])
        if s.dataset == dataset and (version is None or s.version == version)
    ]
    with store.transaction() as conn:
        conn.executemany(
            "DELETE FROM shared_datasets WHERE owner_uid=? AND dataset=? AND version=?",
            [(s.owner_uid, s.dataset, s.version) for s in gone],
        )
    return gone


def shares(store: Store, owners: Iterable[int] | None = None) -> list[Share]:
    """Every share (of `owners` only, when given), by owner, dataset and version."""
    sql = f"SELECT {_COLUMNS} FROM shared_datasets"
    params: list[int] = []
    if owners is not None:
        params = list(owners)
        sql += f" WHERE owner_uid IN ({','.join('?' * len(params))})"
    rows = store.conn.execute(sql + " ORDER BY owner_uid, dataset, version", params).fetchall()
    return [_share(r) for r in rows]
