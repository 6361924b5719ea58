"""Sharing datasets read-only with a group (team mode): `workbench share DATASET --group G`,
`workbench unshare DATASET`, `workbench datasets --shared`.

Your lake stays private (your own home, 0700). `share` copies one published version (the
latest, or `--version N`) into your share folder of the system home, as you: folders 0550
and files 0440 of the group, so its members read it and nobody else does, nobody writes it;
then the system daemon checks the files and records the share (`workbench.daemon.sharing`).
Members of the group query it as `OWNER.DATASET` (`workbench sql "SELECT * FROM
alice.crops"`) and train or test on it (`--dataset alice.crops`): their runs' lineage names
the owner's dataset, version and content hash."""

from __future__ import annotations

import argparse
import grp
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from workbench.paths import Home
from workbench.queue import argtypes as checked


def register(sub: Any) -> None:
    p = sub.add_parser(
        "share",
        help="team mode: share a dataset's version read-only with a Unix group (as OWNER.DATASET)",
    )
    p.add_argument("dataset", help="one of your datasets")
    p.add_argument("--group", required=True, help="the Unix group whose members may read it")
    p.add_argument("--version", type=checked.version, help="which version (default: the latest)")
    p.set_defaults(handler=cmd_share)
    p = sub.add_parser("unshare", help="team mode: stop sharing a dataset (one version, or all)")
    p.add_argument("dataset")
    p.add_argument("--version", type=checked.version, help="only this version")
    p.set_defaults(handler=cmd_unshare)


def _ask(op: str, **fields: Any) -> dict[str, Any]:
    """The system daemon's reply to a sharing request. Raises SpecError (exit 2) when there
    is no system daemon or it refuses as malformed, NotPermittedError for exit 4."""
    from workbench.daemon.wire import ask
    from workbench.queue.spec import SpecError
    from workbench.system import installed_socket

    path = installed_socket()
    if path is None:
        raise SpecError(
            "sharing needs team mode: no system daemon is installed (workbench system install)"
        )
    try:
        reply = ask(path, {"op": op, **fields})
    except OSError as error:
        raise SpecError(f"the system daemon ({path}) did not answer: {error}") from None
    if not reply.get("ok"):
        code = reply.get("exit")
        if code == 4:
            raise NotPermittedError(str(reply.get("error")))
        raise SpecError(str(reply.get("error")))
    return reply


class NotPermittedError(PermissionError):
    """The system daemon refused: not the caller's to do (exit 4)."""


def _writable(path: Path) -> None:
    """Give the owner write permission back on a share folder and its files, to remove them."""
    for folder, _, files in os.walk(path):
        os.chmod(folder, 0o700)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o600)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        _writable(path)
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _copy_version(info: Any, target: Path, gid: int) -> None:
    """Copy a version's parts and rejects into `target` (made here, 0700 while written), then
    give them to group `gid`: files 0440, the folder 0550."""
    target.mkdir(mode=0o700)
    files = [Path(p) for p in info.parts]
    if info.rejects_path.exists():
        files.append(info.rejects_path)
    for source in files:
        copied = target / source.name
        shutil.copyfile(source, copied, follow_symlinks=False)
        os.chown(copied, -1, gid)
        os.chmod(copied, 0o440)
    os.chown(target, -1, gid)
    os.chmod(target, 0o550)


def cmd_share(args: argparse.Namespace) -> int:
    """Exit 0 when shared; 2 for a dataset, version or group that cannot be shared (named);
    4 when the daemon refuses (not a member of the group)."""
    from workbench.catalog import lake
    from workbench.cli.data import _open
    from workbench.queue.spec import SpecError

    try:
        gid = grp.getgrnam(args.group).gr_gid
    except KeyError:
        raise SpecError(f"share: --group: no group named {args.group!r}") from None
    if gid not in os.getgroups() and gid != os.getgid():
        raise SpecError(f"share: --group: you are not in group {args.group!r}")
    home = Home.current()
    store = _open(home)
    try:
        info = lake.version_info(store, args.dataset, args.version)
    except lake.LakeError as error:
        raise SpecError(f"share: {error}") from None
    finally:
        store.close()
    if info.encrypted:
        raise SpecError(
            f"share: {info.dataset} v{info.version} is encrypted and its key is yours alone;"
            " share a plain version (ingest it again without --encrypt)"
        )
    try:
        folder = Path(_ask("share-space")["folder"])
        dataset_dir = folder / info.dataset
        if dataset_dir.is_dir() and not dataset_dir.is_symlink():
            held = dataset_dir.stat().st_gid
            if held != gid:
                raise SpecError(
                    f"share: {info.dataset} is shared with group {_group_name(held)};"
                    f" `workbench unshare {info.dataset}` first to share it with {args.group}"
                )
        else:
            _remove(dataset_dir)
            dataset_dir.mkdir(mode=0o700)
            os.chown(dataset_dir, -1, gid)
        os.chmod(dataset_dir, 0o750)
        target = dataset_dir / f"v{info.version}"
        _remove(target)
        _copy_version(info, target, gid)
        reply = _ask(
            "share",
            dataset=info.dataset,
            version=info.version,
            group=args.group,
            rows=info.rows,
            rejected_rows=info.rejected_rows,
            bytes=info.bytes,
            content_hash=info.content_hash,
            schema=[list(c) for c in info.schema],
            sources=info.sources,
            created_at=info.created_at,
        )
    except NotPermittedError as error:
        print(f"share: {error}", file=sys.stderr)
        return 4
    except OSError as error:
        raise SpecError(f"share: {error}") from None
    share = reply["share"]
    print(
        f"shared {info.dataset} v{info.version} ({info.rows} rows) read-only with group"
        f" {args.group}: its members read it as {share['owner']}.{info.dataset}"
    )
    return 0


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def cmd_unshare(args: argparse.Namespace) -> int:
    """Exit 0 when the share is gone (record and files); 2 when there was none."""
    from workbench.queue.spec import SpecError

    try:
        reply = _ask("unshare", dataset=args.dataset, version=args.version)
    except NotPermittedError as error:
        print(f"unshare: {error}", file=sys.stderr)
        return 4
    for share in reply["removed"]:
        folder = Path(share["folder"])
        try:
            _remove(folder)
            if folder.parent.is_dir() and not any(folder.parent.iterdir()):
                folder.parent.rmdir()
        except OSError as error:
            raise SpecError(f"unshare: {folder}: {error}") from None
        print(f"no longer shared: {share['dataset']} v{share['version']}")
    return 0


def print_shared(as_json: bool) -> int:
    """`workbench datasets --shared`: the shared versions you may read (yours too)."""
    from workbench.jsonout import dumps
    from workbench.safetext import display_text
    from workbench.units import format_duration, format_size

    shares = _ask("shared")["shares"]
    if as_json:
        print(dumps(shares))
        return 0
    if not shares:
        print("no dataset is shared with you (workbench share DATASET --group G shares yours)")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("dataset", "version", "group", "rows", "size", "columns", "shared"):
        table.add_column(column)
    now = time.time()
    for share in shares:
        table.add_row(
            display_text(f"{share['owner']}.{share['dataset']}"),
            f"v{share['version']}",
            display_text(str(share["group"])),
            str(share["rows"]),
            format_size(int(share["bytes"])),
            str(len(share["schema"])),
            format_duration(now - float(share["shared_at"])),
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return 0
