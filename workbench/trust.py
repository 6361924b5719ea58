"""Whether a WORKBENCH_HOME is this user's own: the daemon and every client refuse one that
another user owns or can change, before they read, write or send anything there.

The rule (as ssh's StrictModes for ~/.ssh): the home folder, and every entry at its top level
(`state.db`, `daemon.lock`, `daemon.sock`, `intake.sock`, `runs/`, `lake/`, `config.toml`...),
is owned by this user, is not a symbolic link, and is writable by no one else (the user's
private group aside: see `_private_group_write`); every folder above the home is owned by this
user or root and, where others can write it, has the sticky bit (as /tmp: nobody else may
rename or replace what is ours inside it). Below the top level
nothing else can be planted then (the folders are ours and closed to others); what is opened
there goes through `workbench.safefs`, which follows no links. Standard library only: the
quick submit path runs this before it sends a byte."""

from __future__ import annotations

import os
import stat
from pathlib import Path

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


class UntrustedHome(RuntimeError):
    """The home (or a file in it) is not this user's alone; the message names the path and
    what to do (exit code 3)."""


def _owner(uid: int) -> str:
    try:
        import pwd  # a C module: cheap, and only on this error path

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _refuse(root: Path, path: Path, problem: str, fix: str) -> UntrustedHome:
    where = f"WORKBENCH_HOME {root}" if path == root else f"WORKBENCH_HOME {root}: {path.name}"
    return UntrustedHome(
        f"{where} {problem}, so another user could plant a daemon, socket or state file there"
        f" that a submit would send its environment to, or queue jobs that run as you; {fix}"
    )


_private_groups: dict[int, bool] = {}


def _private_group_write(info: os.stat_result, uid: int) -> bool:
    """Whether `info`'s only write bit for anyone else is its group's, and that group is this
    user's private group (named as the user, no other member: the default with a umask of 002
    on Debian and Ubuntu, where a file the user writes is group-writable). As Debian's ssh
    accepts for ~/.ssh."""
    if info.st_mode & stat.S_IWOTH or info.st_gid != os.getegid():
        return False
    if info.st_gid not in _private_groups:
        try:
            import grp  # C modules: only on this path
            import pwd

            user = pwd.getpwuid(uid).pw_name
            group = grp.getgrgid(info.st_gid)
            _private_groups[info.st_gid] = group.gr_name == user and all(
                member == user for member in group.gr_mem
            )
        except (ImportError, KeyError):
            _private_groups[info.st_gid] = False
    return _private_groups[info.st_gid]


def check_entry(root: Path, path: Path, info: os.stat_result, uid: int) -> None:
    """Raise UntrustedHome unless `path` (`info`: its lstat) is ours, no link, and writable by
    no one else."""
    if stat.S_ISLNK(info.st_mode):
        raise _refuse(
            root,
            path,
            "is a symbolic link (the workbench follows none inside its home)",
            f"remove it (rm {path})",
        )
    if info.st_uid != uid:
        raise _refuse(
            root,
            path,
            f"is owned by {_owner(info.st_uid)}, not by you (uid {uid})",
            "remove it, or set WORKBENCH_HOME to a folder of your own (mode 0700)"
            if path != root
            else "set WORKBENCH_HOME to a folder of your own (mkdir -m 700 FOLDER)",
        )
    if info.st_mode & _OTHERS_WRITE and not _private_group_write(info, uid):
        mode = f"{stat.S_IMODE(info.st_mode):o}"
        raise _refuse(
            root,
            path,
            f"can be written by other users (mode {mode})",
            f"chmod go-w {path}"
            if path != root
            else (
                f"use a folder of your own inside it (mkdir -m 700 {root}/NAME and set"
                f" WORKBENCH_HOME to that), or chmod go-w {root}"
            ),
        )


def check_home(root: Path) -> None:
    """Raise UntrustedHome unless the home at `root` (an absolute, resolved path) and what it
    holds at its top level are this user's alone (see the module's rule). A home not yet made
    passes when the folders above it do (it will be made with mode 0700). Costs one lstat per
    folder above and per top-level entry."""
    uid = os.geteuid()
    for folder in reversed(root.parents):
        try:
            info = os.lstat(folder)
        except FileNotFoundError:
            break  # made later, by us, with our umask
        if info.st_uid not in (uid, 0):
            raise UntrustedHome(
                f"WORKBENCH_HOME {root}: the folder {folder} above it is owned by"
                f" {_owner(info.st_uid)}, who could replace the home; set WORKBENCH_HOME to a"
                " folder inside one only you (or root) own"
            )
        if (
            info.st_mode & _OTHERS_WRITE
            and not info.st_mode & stat.S_ISVTX
            and not (info.st_uid == uid and _private_group_write(info, uid))
        ):
            raise UntrustedHome(
                f"WORKBENCH_HOME {root}: the folder {folder} above it can be written by other"
                f" users (mode {stat.S_IMODE(info.st_mode):o}) and is not sticky, so the home"
                " could be replaced; set WORKBENCH_HOME to a folder inside one only you can"
                f" change (or chmod +t {folder})"
            )
    try:
        info = os.lstat(root)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode) and not stat.S_ISLNK(info.st_mode):
        return  # not a folder: `Home.ensure` names that
    check_entry(root, root, info, uid)
    try:
        entries = os.scandir(root)
    except OSError:
        return  # unreadable: the caller's first open says why
    with entries:
        for entry in entries:
            try:
                found = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            check_entry(root, Path(entry.path), found, uid)


def check_socket(root: Path, path: Path) -> None:
    """Raise UntrustedHome unless `path` is a socket owned by this user (the socket's file is
    made by whoever bound it, so another user's server cannot own one of ours), writable by no
    one else: checked right before a client sends anything to it. FileNotFoundError if none."""
    info = os.lstat(path)
    check_entry(root, path, info, os.geteuid())
    if not stat.S_ISSOCK(info.st_mode):
        raise _refuse(root, path, "is not a socket", f"remove it (rm {path})")


def check_daemon_process(root: Path, pid: int) -> None:
    """Raise UntrustedHome unless process `pid` (the daemon that `daemon.lock` names) runs as
    this user: `/proc/PID` belongs to the process's effective uid. With `check_socket`, what a
    client checks before it sends: the socket's file and the process holding the lock are ours.
    A pid that is gone passes (the send finds nobody, and the client submits by itself)."""
    try:
        owner = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return
    if owner != os.geteuid():
        raise UntrustedHome(
            f"WORKBENCH_HOME {root}: the daemon its daemon.lock names (pid {pid}) runs as"
            f" {_owner(owner)}, not as you (uid {os.geteuid()}); nothing was sent to it."
            " Set WORKBENCH_HOME to a folder of your own (mkdir -m 700 FOLDER)"
        )
