"""Datasets other users share with you (team mode), as the lake reads them: a shared version
is named `OWNER.DATASET` (`alice.crops`, `alice.crops@v2` for an older one), read from the
owner's share folder with your own rights (the group's), never copied. The records come from
the system daemon (`workbench.daemon.sharing`); this module only turns them into
`VersionInfo`s and finds one by name."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from workbench.catalog.lake import LakeError, VersionInfo

#: `OWNER.DATASET`: a Unix user name (POSIX portable characters), a dot, a dataset name.
SHARED_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]{0,31}?)\.([A-Za-z_][A-Za-z0-9_]*)$")


def split_shared(name: str) -> tuple[str, str] | None:
    """(owner, dataset) of a shared dataset's name `OWNER.DATASET`, or None for an own one."""
    match = SHARED_NAME.match(name)
    return (match.group(1), match.group(2)) if match else None


def version_of(share: dict[str, Any]) -> VersionInfo:
    """The VersionInfo of one share record (as the daemon's `shared` request lists it); its
    `dataset` is `OWNER.DATASET`, its path the share folder; the owner's lineage is kept and
    the share itself is added to it (`{"shared_by": owner, "group": ...}`)."""
    name = f"{share['owner']}.{share['dataset']}"
    sources = [
        *share.get("sources", []),
        {"shared_by": share["owner"], "group": share["group"], "dataset": share["dataset"],
         "version": share["version"], "shared_at": share["shared_at"]},
    ]  # fmt: skip
    return VersionInfo(
        name,
        int(share["version"]),
        Path(share["folder"]),
        int(share["rows"]),
        int(share["bytes"]),
        str(share["content_hash"]),
        [(str(c[0]), str(c[1])) for c in share["schema"]],
        sources,
        int(share.get("rejected_rows", 0)),
        None,
        float(share["created_at"]),
        None,
    )


def find(shares: Iterable[dict[str, Any]], name: str, version: int | None) -> VersionInfo:
    """The shared version `name` (`OWNER.DATASET`), the newest shared when `version` is None.
    Raises LakeError naming what is visible when it is not there."""
    split = split_shared(name)
    if split is None:
        raise LakeError(f"{name!r} is not a shared dataset's name (OWNER.DATASET)")
    owner, dataset = split
    mine = [s for s in shares if s["owner"] == owner and s["dataset"] == dataset]
    if version is not None:
        mine = [s for s in mine if s["version"] == version]
    if not mine:
        what = name if version is None else f"{name} v{version}"
        raise LakeError(
            f"no shared dataset {what} that you may read (workbench datasets --shared lists"
            " them; its owner shares it with `workbench share`)"
        )
    return version_of(max(mine, key=lambda s: int(s["version"])))


def versions(shares: Iterable[dict[str, Any]]) -> list[VersionInfo]:
    """Every shared version, oldest first within each dataset."""
    return [version_of(s) for s in sorted(shares, key=lambda s: (s["owner"], s["dataset"],
                                                                  s["version"]))]  # fmt: skip
