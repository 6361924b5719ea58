"""A shared version is read from what the system daemon checked and recorded, never from what
its owner's share folder holds at read time: the owner owns `shared/UID`, so after recording
they could plant a part file in it, or swap a folder or a part for a link to files only the
reader may read (another group's data, the reader's own private lake). Reads through `sql`'s
connection and through `read_arrow` (train, test, export, bundle) both refuse a change."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from workbench.catalog import lake, shared
from workbench.db.store import Store
from workbench.paths import Home


def _parquet(path: Path, values: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ", ".join(f"({v})" for v in values)
    duckdb.sql(f"COPY (SELECT * FROM (VALUES {rows}) t(x)) TO '{path}' (FORMAT parquet)")


def _record(root: Path) -> dict[str, Any]:
    """alice's share of `crops` v1 (as the daemon's `shared` request lists it), files made."""
    folder = root / "shared" / str(os.getuid()) / "crops" / "v1"
    _parquet(folder / "part-0.parquet", [1, 2, 3])
    now = time.time()
    return {
        "owner_uid": os.getuid(), "owner": "alice", "dataset": "crops", "version": 1,
        "gid": os.getgid(), "group": "lab", "folder": str(folder), "parts": ["part-0.parquet"],
        "rejects": None, "rows": 3, "rejected_rows": 0, "bytes": 1, "content_hash": "h",
        "schema": [["x", "INTEGER"]], "sources": [], "created_at": now, "shared_at": now,
    }  # fmt: skip


def _count(home: Home, record: dict[str, Any]) -> int:
    store = Store.open(home.state_db)
    try:
        query = "SELECT sum(x) FROM alice.crops"
        con = lake.connect(home, store, for_sql=query, shared=[shared.version_of(record)])
        try:
            row = con.sql(query).fetchone()
            assert row is not None
            return int(row[0])
        finally:
            con.close()
    finally:
        store.close()


def _read(home: Home, record: dict[str, Any]) -> int:
    table, _ = lake.read_arrow(
        home, "alice.crops", None, shared=lambda name, v: shared.find([record], name, v)
    )
    return int(sum(table.column("x").to_pylist()))


@pytest.mark.parametrize("read", [_count, _read], ids=["sql", "read_arrow"])
def test_a_part_planted_after_the_share_is_not_read(home: Home, tmp_path: Path, read: Any) -> None:
    record = _record(tmp_path / "system")
    assert read(home, record) == 6
    _parquet(Path(record["folder"]) / "part-1.parquet", [1000])
    assert read(home, record) == 6


@pytest.mark.parametrize("read", [_count, _read], ids=["sql", "read_arrow"])
@pytest.mark.parametrize("swap", ["version folder", "dataset folder", "part file"])
def test_a_share_folder_swapped_for_a_link_is_refused(
    home: Home, tmp_path: Path, read: Any, swap: str
) -> None:
    record = _record(tmp_path / "system")
    private = tmp_path / "bob-private" / "secret" / "v1"  # what only the reader may read
    _parquet(private / "part-0.parquet", [99])
    folder = Path(record["folder"])
    target, link = {
        "version folder": (private, folder),
        "dataset folder": (private.parent, folder.parent),
        "part file": (private / "part-0.parquet", folder / "part-0.parquet"),
    }[swap]
    if link.is_dir():
        for path in sorted(link.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() else path.rmdir()
        link.rmdir()
    else:
        link.unlink()
    link.symlink_to(target)
    with pytest.raises(lake.LakeError, match=r"alice\.crops v1: .*since it was shared"):
        read(home, record)


def test_a_part_removed_after_the_share_is_named(home: Home, tmp_path: Path) -> None:
    record = _record(tmp_path / "system")
    (Path(record["folder"]) / "part-0.parquet").unlink()
    with pytest.raises(lake.LakeError, match=r"part-0\.parquet: No such file"):
        _count(home, record)


@pytest.mark.parametrize(
    ("mine", "owner", "dataset"),
    [("fields", "Alice", "crops"), ("crops", "alice", "Crops")],
    ids=["owner", "dataset"],
)
def test_shared_names_that_differ_only_in_case_are_refused_not_mixed_up(
    home: Home, tmp_path: Path, mine: str, owner: str, dataset: str
) -> None:
    """SQL names ignore case. A user `Alice` (Unix names are case-sensitive) sharing `crops`
    while alice shares `fields` made bob's `SELECT ... FROM alice.crops` read Alice's data as
    alice's; two of alice's shares named `crops` and `Crops` failed on DuckDB's catalog error.
    Now a query naming such a name is refused, naming the other; a connection over everything
    leaves them out."""
    real = _record(tmp_path / "system")
    real["dataset"] = mine
    other = _record(tmp_path / "other")
    other.update(owner=owner, dataset=dataset)
    _parquet(Path(other["folder"]) / "part-0.parquet", [1000])
    versions = [shared.version_of(real), shared.version_of(other)]
    store = Store.open(home.state_db)
    try:
        with pytest.raises(lake.LakeError, match="differs only in case from that of") as error:
            lake.connect(home, store, for_sql="SELECT * FROM alice.crops", shared=versions)
        assert f"alice.{mine}" in str(error.value) and f"{owner}.{dataset}" in str(error.value)
        con = lake.connect(home, store, shared=versions)
        names = {r[0] for r in con.sql("SELECT schema_name FROM duckdb_views()").fetchall()}
        con.close()
        assert not names & {"alice", "Alice"}
    finally:
        store.close()


@pytest.mark.xdist_group("unix-users")  # useradd, one worker at a time with the team tests
def test_a_share_whose_owner_has_an_account_twin_in_case_is_not_read_by_name(
    home: Home, tmp_path: Path
) -> None:
    """`Alice` shares `crops`; `alice` is an account too, sharing nothing. SQL names ignore
    case, so bob's `alice.crops`, meant for alice's, read Alice's data. The clash was caught only
    when both shared; an account that shares nothing counts now. Needs root: the twin is a real
    account (`useradd`); the sharer, in capitals, is only the share record's owner."""
    import shutil
    import subprocess
    import uuid

    if os.geteuid() != 0 or not shutil.which("useradd"):
        if os.environ.get("CI"):
            pytest.fail("this test adds a Unix account: run it as root with useradd")
        pytest.skip("this test adds a Unix account: run it as root with useradd")
    account = f"wb{uuid.uuid4().hex[:6]}t"
    record = _record(tmp_path / "system")
    record["owner"] = account.upper()  # the sharer: WB...T; the twin account: wb...t
    versions = [shared.version_of(record)]
    query = f"SELECT sum(x) FROM {account}.crops"
    store = Store.open(home.state_db)
    try:
        con = lake.connect(home, store, for_sql=query, shared=versions)  # no twin yet: read
        con.close()
        subprocess.run(["useradd", "-M", account], check=True, capture_output=True)
        try:
            with pytest.raises(lake.LakeError, match=f"the account {account}"):
                lake.connect(home, store, for_sql=query, shared=versions)
        finally:
            subprocess.run(["userdel", account], capture_output=True)
    finally:
        store.close()
