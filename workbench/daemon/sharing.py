"""Datasets shared read-only with a group (team mode): the system daemon's side.

A user's lake is private (their own home, 0700). To share a version, the owner's client asks
for their share folder (`space`: `shared/UID` of the system home, made by root and given to
them, 0711), copies the version's files into `shared/UID/DATASET/vN` as themselves (folders
0550, files 0440, both of the chosen group), and asks the daemon to record it (`share`). The
daemon takes the owner from the kernel (SO_PEERCRED), derives the folder from the uid, the
dataset and the version (never from a path in the request), and before recording checks,
without following a link or opening a file, that every folder on the way and every file is the
owner's, of the group, writable by nobody else, and that the files are only Parquet parts and
the rejects file. Readers in the group then read the files themselves, as their own users;
root never reads them. `unshare` forgets the record (the owner removes the files); `list`
gives what the peer may read: their own shares, their groups' and, for admins, all.

A record keeps the login name that shared it. When its uid names another account now (the
sharer was removed with `userdel` and the uid given to a new user), the record is forgotten at
the next `list` or `share`, so the new user neither inherits nor exposes the old one's shares.

Handlers raise RequestError (malformed: exit 2) or NotPermitted (exit 4), like
`workbench.daemon.teamops`."""

from __future__ import annotations

import grp
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.catalog.lake import REJECTS_FILE, LakeError, check_dataset_name
from workbench.daemon.identity import Peer, user_name
from workbench.daemon.rights import NotPermitted, Rights
from workbench.db import shares as db
from workbench.db.store import Store
from workbench.paths import Home

SHARED_DIR = "shared"
MAX_METADATA_BYTES = 1 << 20  # schema and lineage of one shared version, as JSON
MAX_PARTS = 100_000


class RequestError(ValueError):
    """A malformed sharing request (exit 2)."""


def share_root(root: Path) -> Path:
    """The folder of every user's share folder in the system home `root`."""
    return root / SHARED_DIR


def _dataset(request: dict[str, Any]) -> str:
    name = request.get("dataset")
    if not isinstance(name, str):
        raise RequestError("field 'dataset': expected a dataset name")
    try:
        return check_dataset_name(name, "field 'dataset'")
    except LakeError as error:
        raise RequestError(str(error)) from None


def _version(request: dict[str, Any], required: bool) -> int | None:
    value = request.get("version")
    if value is None and not required:
        return None
    if type(value) is not int or not 0 < value < 2**31:
        raise RequestError("field 'version': expected a version number")
    return value


def _number(request: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = request.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise RequestError(f"field {key!r}: expected a number >= 0")
    if not isinstance(value, (int, float)) or not 0 <= value < 2**63:
        raise RequestError(f"field {key!r}: expected a number >= 0")
    return value


def _checked_dir(fd: int, name: str, uid: int, gid: int | None, what: str) -> int:
    """Open folder `name` under the folder `fd` without following a link, and check it is
    `uid`'s (and of group `gid`, when given) and writable by no one else; its descriptor."""
    try:
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
    except OSError as error:
        raise RequestError(f"{what}: {error.strerror}") from None
    info = os.fstat(child)
    problem = None
    if info.st_uid != uid:
        problem = f"is {user_name(info.st_uid)}'s, not the sharer's"
    elif gid is not None and info.st_gid != gid:
        problem = f"is not of the group (gid {info.st_gid}, wanted {gid})"
    elif info.st_mode & 0o022:
        problem = "is writable by others than its owner"
    if problem:
        os.close(child)
        raise RequestError(f"{what} {problem}")
    return child


class Sharing:
    """The sharing requests of the system daemon of `home`, recorded in `store`."""

    def __init__(self, home: Home, store: Store, rights: Callable[[], Rights]):
        self.home = home
        self.store = store
        self.rights = rights

    def handle(self, op: str, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """The reply to sharing request `op` ("share-space", "share", "unshare",
        "shared") from `peer`. Raises RequestError or NotPermitted."""
        handler = {
            "share-space": self.space,
            "share": self.share,
            "unshare": self.unshare,
            "shared": self.list,
        }[op]
        return handler(peer, request)

    def space(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """Make the peer's share folder if need be (`shared/UID`, theirs, 0711: others may
        pass through it to a folder of their group, not list it); `{"folder": path}`."""
        if peer.uid == 0:
            raise RequestError("root shares nothing: share as the dataset's owner")
        base = share_root(self.home.root)
        if not base.exists():
            base.mkdir(mode=0o755)
            os.chmod(base, 0o755)
        folder = base / str(peer.uid)
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass
        else:
            os.lchown(folder, peer.uid, peer.gid)
            os.chmod(folder, 0o711)
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != peer.uid:
            raise RequestError(f"{folder} is not {peer.name}'s folder; ask an admin to remove it")
        return {"folder": str(folder)}

    def share(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """Record a version the peer copied into `shared/UID/DATASET/vN` as shared with a
        group they belong to, after checking the files (module docstring)."""
        self.current()  # a uid reused since: the old account's records go first
        dataset = _dataset(request)
        version = _version(request, required=True)
        assert version is not None
        group = request.get("group")
        if not isinstance(group, str):
            raise RequestError("field 'group': expected a group name")
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise RequestError(f"field 'group': no group named {group!r}") from None
        if gid not in peer.groups:
            raise NotPermitted(f"{peer.name} is not in group {group!r}: they cannot share with it")
        metadata = {k: request.get(k) for k in ("schema", "sources")}
        if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
            raise RequestError(f"fields 'schema' and 'sources': over {MAX_METADATA_BYTES} bytes")
        schema = request.get("schema")
        if not isinstance(schema, list) or not all(
            isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c)
            for c in schema
        ):
            raise RequestError("field 'schema': expected [column, type] pairs")
        sources = request.get("sources")
        if not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
            raise RequestError("field 'sources': expected a list of objects")
        content_hash = request.get("content_hash")
        if not isinstance(content_hash, str) or not 0 < len(content_hash) <= 200:
            raise RequestError("field 'content_hash': expected the version's hash")
        parts, rejects = self._checked_files(peer, dataset, version, gid)
        folder = share_root(self.home.root) / str(peer.uid) / dataset / f"v{version}"
        share = db.Share(
            peer.uid, dataset, version, gid, str(folder), tuple(parts), rejects,
            _number(request, "rows", int), _number(request, "rejected_rows", int),
            _number(request, "bytes", int), content_hash,
            tuple((c[0], c[1]) for c in schema), tuple(sources),
            float(_number(request, "created_at", (int, float))), time.time(), peer.name,
        )  # fmt: skip
        db.put(self.store, share)
        return {"share": self._json(share)}

    def _checked_files(
        self, peer: Peer, dataset: str, version: int, gid: int
    ) -> tuple[list[str], str | None]:
        """The part files and rejects file of `shared/UID/DATASET/vN`, after the checks."""
        base = share_root(self.home.root)
        fds: list[int] = []
        try:
            fds.append(os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW))
            steps = ((str(peer.uid), None), (dataset, gid), (f"v{version}", gid))
            for name, group in steps:
                what = f"{base}/{peer.uid}" if group is None else f"the share folder {name}"
                fds.append(_checked_dir(fds[-1], name, peer.uid, group, what))
            parts: list[str] = []
            rejects = None
            names: list[str] = []
            with os.scandir(fds[-1]) as entries:  # stops at the cap: the folder is the user's
                for entry in entries:
                    names.append(entry.name)
                    if len(names) > MAX_PARTS:
                        raise RequestError(f"v{version} holds over {MAX_PARTS} files")
            for name in sorted(names):
                info = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
                problem = None
                if not stat.S_ISREG(info.st_mode):
                    problem = "is not a regular file"
                elif info.st_uid != peer.uid or info.st_gid != gid:
                    problem = "is not the sharer's, of the group"
                elif info.st_mode & 0o022 or not info.st_mode & 0o040:
                    problem = "must be readable by the group and writable by no one else"
                elif name != REJECTS_FILE and not (
                    name.startswith("part-") and name.endswith(".parquet")
                ):
                    problem = "is not a part of the version (part-*.parquet, rejects.parquet)"
                if problem:
                    raise RequestError(f"{dataset} v{version}: {name} {problem}")
                if name == REJECTS_FILE:
                    rejects = name
                else:
                    parts.append(name)
            if not parts:
                raise RequestError(f"{dataset} v{version}: no part-*.parquet in its share folder")
            return parts, rejects
        finally:
            for fd in fds:
                os.close(fd)

    def unshare(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """Forget the peer's shares of a dataset (one version, or all); `{"removed": [...]}`
        (the owner then removes the files)."""
        dataset = _dataset(request)
        version = _version(request, required=False)
        gone = db.remove(self.store, peer.uid, dataset, version)
        if not gone:
            what = dataset if version is None else f"{dataset} v{version}"
            raise RequestError(f"{peer.name} shares no {what}")
        return {"removed": [self._json(s) for s in gone]}

    def list(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """The shares the peer may read: theirs, their groups', every one for admins."""
        admin = self.rights().is_admin(peer)
        visible = [
            s for s in self.current() if admin or s.owner_uid == peer.uid or s.gid in peer.groups
        ]
        return {"shares": [self._json(s) for s in visible]}

    def current(self) -> tuple[db.Share, ...]:
        """Every share whose uid still names the account that shared it; the others (module
        docstring) are forgotten here. Their files stay, the uid's, for its new owner."""
        every = db.shares(self.store)
        names: dict[int, str] = {}
        kept = []
        for share in every:
            if share.owner_uid not in names:
                names[share.owner_uid] = user_name(share.owner_uid)
            name = names[share.owner_uid]
            if share.owner_name is None or share.owner_name == name:
                kept.append(share)
            else:
                db.remove(self.store, share.owner_uid, share.dataset, share.version)
        return tuple(kept)

    @staticmethod
    def _json(share: db.Share) -> dict[str, Any]:
        out = share.to_json()
        out["owner"] = user_name(share.owner_uid)
        try:
            out["group"] = grp.getgrgid(share.gid).gr_name
        except KeyError:
            out["group"] = str(share.gid)
        return out


# ---- the client's side ---------------------------------------------------------------------


def visible_shares() -> list[dict[str, Any]]:
    """The shares the calling user may read, from the installed system daemon; [] when none
    is installed. Raises OSError when it is installed but does not answer, RequestError when
    it refuses."""
    from workbench.daemon.wire import ask
    from workbench.system import installed_socket

    path = installed_socket()
    if path is None:
        return []
    reply = ask(path, {"op": "shared"})
    if not reply.get("ok"):
        raise RequestError(str(reply.get("error")))
    shares: list[dict[str, Any]] = reply["shares"]
    return shares
