"""Files inside WORKBENCH_HOME, opened without following symbolic links.

Every open here goes through a descriptor of the file's folder, itself opened with
O_DIRECTORY|O_NOFOLLOW, and names the file relative to it with O_NOFOLLOW (openat(2)): a link
planted at the file (`runs/2/log` -> a file elsewhere) or at its folder (`runs/3` -> a folder
elsewhere) fails with ELOOP or ENOTDIR instead of being written through. The home and its
top-level entries are checked once per process by `workbench.trust`; what lies below them is
opened here. Standard library only: the quick submit path imports it."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir(path: Path) -> int:
    """A descriptor of the folder `path` (the caller closes it). Raises OSError: ELOOP or
    ENOTDIR when `path` is a symbolic link or not a folder, ENOENT when missing."""
    return os.open(path, _DIR_FLAGS)


def open_file(path: Path, flags: int, mode: int = 0o600) -> int:
    """`os.open(path, flags, mode)` without following a link at `path` or at its folder.
    Raises OSError (ELOOP for a link at `path`, ELOOP/ENOTDIR for one at its folder)."""
    dir_fd = open_dir(path.parent)
    try:
        return os.open(path.name, flags | _NOFOLLOW, mode, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The bytes of the regular file `path` (the first `limit` of them when given). Raises
    OSError: ELOOP for a link, EINVAL for anything but a regular file (a FIFO is never waited
    on: it is opened non-blocking and refused)."""
    fd = open_file(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        chunks: list[bytes] = []
        left = limit
        while left is None or left > 0:
            chunk = os.read(fd, 1 << 16 if left is None else min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            if left is not None:
                left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: Path, errors: str = "strict") -> str:
    """`read_bytes(path)` decoded as UTF-8 (raises OSError as it does, ValueError on bad text
    unless `errors` says otherwise)."""
    return read_bytes(path).decode("utf-8", errors)


def write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create or truncate `path` and write `data` (a link there is refused, not followed).
    Anything but a regular file there (a FIFO another user planted in a folder of theirs) is
    refused with EINVAL, never waited on: it is opened non-blocking (ENXIO for a FIFO without
    a reader) and checked before anything is written or truncated."""
    fd = open_file(path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        _give_to_folder_owner(fd, path)
        _write_all(fd, data)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` under a fresh temporary name in `path`'s folder, then rename it over `path`
    (a rename replaces a link there, never follows it): readers see the old file or the whole
    new one. Raises OSError (ENOSPC...) and leaves no temporary file behind."""
    dir_fd = open_dir(path.parent)
    try:
        tmp = f"{path.name}.{os.getpid()}.tmp"
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, mode, dir_fd=dir_fd)
        try:
            try:
                _give_to_folder_owner(fd, path, dir_fd)
                _write_all(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            raise
    finally:
        os.close(dir_fd)


def unlink(path: Path) -> None:
    """Remove the file (or link) `path` itself; nothing if it is missing. Raises OSError."""
    dir_fd = open_dir(path.parent)
    try:
        os.unlink(path.name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    finally:
        os.close(dir_fd)


def make_dir(path: Path, mode: int = 0o700) -> None:
    """Make `path` a real folder: kept if it already is one, created if missing; a link (or any
    other file) found there is removed first, never followed. Raises OSError."""
    dir_fd = open_dir(path.parent)
    try:
        try:
            info = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            info = None
        if info is not None and not stat.S_ISDIR(info.st_mode):
            os.unlink(path.name, dir_fd=dir_fd)
            info = None
        if info is None:
            try:
                os.mkdir(path.name, mode, dir_fd=dir_fd)
            except FileExistsError:  # made meanwhile: a real folder is fine, a link is not
                if not stat.S_ISDIR(
                    os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False).st_mode
                ):
                    raise
    finally:
        os.close(dir_fd)


def remove_links(folder: Path) -> int:
    """Remove every symbolic link directly inside `folder` (what they point to stays); returns
    how many. Raises OSError when `folder` cannot be opened (or is itself a link)."""
    dir_fd = open_dir(folder)
    removed = 0
    try:
        with os.scandir(dir_fd) as entries:
            links = [entry.name for entry in entries if entry.is_symlink()]
        for name in links:
            try:
                os.unlink(name, dir_fd=dir_fd)
                removed += 1
            except FileNotFoundError:
                pass
    finally:
        os.close(dir_fd)
    return removed


def remove_tree(path: Path) -> None:
    """Remove `path` and, when it is a real folder, everything below it, following no link: a
    link is removed itself (what it points to stays), and below a folder `shutil.rmtree`'s
    descriptor-based walk (`rmtree.avoids_symlink_attacks`, true on Linux) unlinks links
    without entering them. Nothing if `path` is missing; raises OSError otherwise."""
    import shutil  # here: the quick submit path imports this module

    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        unlink(path)
        return
    if not shutil.rmtree.avoids_symlink_attacks:  # pragma: no cover - not on Linux
        raise OSError(errno.ENOTSUP, "cannot remove a folder safely here", str(path))
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass


def _give_to_folder_owner(fd: int, path: Path, dir_fd: int | None = None) -> None:
    """As root, a file just created in a folder of another user's (a job's run folder in
    system mode: its cancel and stop files) becomes that user's, so the job's wrapper, which
    runs as them, can read it. Nothing for any other process."""
    if os.geteuid() != 0:
        return
    folder = os.fstat(dir_fd) if dir_fd is not None else os.stat(path.parent, follow_symlinks=False)
    if folder.st_uid != 0:
        os.fchown(fd, folder.st_uid, folder.st_gid)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
