"""Datasets other users share with you (team mode), as the lake reads them: a shared version
is named `OWNER.DATASET` (`alice.crops`, `alice.crops@v2` for an older one), read from the
owner's share folder with your own rights (the group's), never copied. The records come from
the system daemon (`workbench.daemon.sharing`); this module only turns them into
`VersionInfo`s and finds one by name."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.catalog.lake import REJECTS_FILE, LakeError, VersionInfo

#: `OWNER.DATASET`: a Unix user name (POSIX portable characters), a dot, a dataset name.
SHARED_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]{0,31}?)\.([A-Za-z_][A-Za-z0-9_]*)$")


def split_shared(name: str) -> tuple[str, str] | None:
    """(owner, dataset) of a shared dataset's name `OWNER.DATASET`, or None for an own one."""
    match = SHARED_NAME.match(name)
    return (match.group(1), match.group(2)) if match else None


#: Folders of a share folder's path the owner controls: `UID/DATASET/vN` under `shared/`.
_OWNED_LEVELS = 3


@dataclass(frozen=True)
class SharedVersion(VersionInfo):
    """A version another user shares: its files are those the system daemon checked and
    recorded (`recorded`, names in `path`), never what the owner's folder holds at read time.
    The owner owns the folder, so after the record they could plant a file in it or swap a
    folder for a link to files only the reader may read; `parts` refuses both (LakeError)."""

    owner_uid: int = -1
    recorded: tuple[str, ...] = ()
    recorded_rejects: str | None = None

    @property
    def parts(self) -> list[str]:
        """The recorded part files, after checking without following a link that every folder
        from `shared/UID` down and every part is the owner's and not a link; [] when the share
        folder is gone (unshared). Raises LakeError naming the dataset when anything changed."""
        if not os.path.lexists(self.path):
            return []
        self._check_folders()
        return [self._checked_file(name) for name in self.recorded]

    @property
    def rejects_path(self) -> Path:
        if self.recorded_rejects != REJECTS_FILE:
            return self.path / "no-rejects-recorded"  # never exists: no rejects view
        self._check_folders()
        return Path(self._checked_file(REJECTS_FILE))

    def _changed(self, what: str) -> LakeError:
        return LakeError(
            f"shared dataset {self.dataset} v{self.version}: {what} since it was shared;"
            " ask its owner to share it again"
        )

    def _check_folders(self) -> None:
        folder = self.path
        for _ in range(_OWNED_LEVELS):
            try:
                info = os.lstat(folder)
            except OSError as error:
                raise self._changed(f"{folder}: {error.strerror}") from None
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != self.owner_uid:
                raise self._changed(f"{folder} is no longer the owner's folder")
            folder = folder.parent

    def _checked_file(self, name: str) -> str:
        path = self.path / name
        try:
            info = os.lstat(path)
        except OSError as error:
            raise self._changed(f"{name}: {error.strerror}") from None
        if not stat.S_ISREG(info.st_mode) or info.st_uid != self.owner_uid:
            raise self._changed(f"{name} is no longer the owner's file")
        return str(path)


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
    recorded = [str(p) for p in share.get("parts", [])]
    if any(os.sep in p or not p.startswith("part-") for p in recorded):
        raise LakeError(f"shared dataset {name}: the system daemon listed a bad part {recorded}")
    return SharedVersion(
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
        owner_uid=int(share["owner_uid"]),
        recorded=tuple(recorded),
        recorded_rejects=share.get("rejects"),
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
