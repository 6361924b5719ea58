"""Job logs: a capped writer that rotates `log` to `log.1` (and never fails the job when the disk
is full), a follower that streams across rotations without repeats or jumps, and bounded tails."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

ROTATED_SUFFIX = ".1"
_BLOCK = 65536
TAIL_SCAN_LIMIT_BYTES = 4 * 1024 * 1024  # `-n N` reads at most this much from the end


def rotated(path: Path) -> Path:
    """The previous generation of a log (`log.1`)."""
    return path.with_name(path.name + ROTATED_SUFFIX)


class RotatingLog:
    """Appends a job's output to `path`; once the file holds `cap_bytes // 2`, it is renamed to
    `log.1` (replacing the older one) and a new `log` begins, so the two hold at most about
    `cap_bytes`. Writes never raise: output that cannot be written (ENOSPC, EFBIG, EIO) is counted
    and dropped, and a marker line saying how much was lost is written once writing works again.
    The job keeps running either way: its pipe is always drained."""

    def __init__(self, path: Path, cap_bytes: int):
        self.path = path
        self.file_cap = max(cap_bytes // 2, 4096)
        self.fd = -1
        self.size = 0
        self.dropped_bytes = 0
        self.drop_error = ""
        self._open()

    def _open(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self.size = os.fstat(self.fd).st_size
        except OSError as error:
            self.fd = -1
            self.drop_error = error.strerror or str(error)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            self.size += written
            view = view[written:]

    def _rotate(self) -> None:
        os.replace(self.path, rotated(self.path))
        os.close(self.fd)
        self.fd = -1
        self._open()

    def write(self, data: bytes) -> None:
        """Append `data` (rotating first if the file is full); never raises."""
        try:
            if self.fd < 0:
                self._open()
                if self.fd < 0:
                    raise OSError(errno.EIO, self.drop_error)
            if self.size >= self.file_cap:
                self._rotate()
            if self.dropped_bytes:
                marker = (
                    f"\n[workbench] {self.dropped_bytes} bytes of output dropped: could not"
                    f" write the log ({self.drop_error})\n"
                ).encode()
                self._write_all(marker)
                self.dropped_bytes = 0
            self._write_all(data)
        except OSError as error:
            self.dropped_bytes += len(data)
            self.drop_error = error.strerror or str(error)

    def close(self) -> None:
        """Flush the drop marker if anything was lost, then close."""
        if self.dropped_bytes:
            self.write(b"")
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def tail_bytes(path: Path, count: int) -> bytes:
    """The last `count` bytes of a log, continuing into `log.1` when `log` is shorter; b"" if
    neither exists. Reads at most `count` bytes whatever the file size."""
    out = b""
    for candidate in (path, rotated(path)):
        need = count - len(out)
        if need <= 0:
            break
        try:
            with open(candidate, "rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(size - need, 0))
                out = log.read(need) + out
        except FileNotFoundError:
            continue
    return out


def split_display_lines(data: bytes) -> list[bytes]:
    """Lines as a terminal shows them: `\\n`, `\\r\\n` and a lone `\\r` (progress bars redrawing
    one line) all end a line. Returned without their endings."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")


def tail_lines(path: Path, count: int, limit_bytes: int = TAIL_SCAN_LIMIT_BYTES) -> bytes:
    """The last `count` display lines of a log (see `split_display_lines`), each ending in
    `\\n`. Reads backwards from the end and stops after `count` line ends or `limit_bytes`,
    so the cost is bounded whatever the file size or its line endings."""
    if count <= 0:
        return b""
    data = b""
    step = _BLOCK
    while True:
        data = tail_bytes(path, min(step, limit_bytes))
        breaks = data.count(b"\n") + data.count(b"\r")
        if breaks > count or len(data) < step or step >= limit_bytes:
            break
        step *= 4
    lines = split_display_lines(data)
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join(line + b"\n" for line in lines[-count:])


class LogFollower:
    """Streams a rotating log faithfully: it keeps the file it is reading open, so when `log` is
    renamed to `log.1` it reads the old file to its end before switching to the new `log` by
    inode. Every byte written is returned once, in order (unless a rotation happened twice
    between two reads, which a cap of megabytes makes a matter of a slow reader)."""

    def __init__(self, path: Path, start: int | None = None):
        """`start`: the offset in the current `log` to begin at (None: its end)."""
        self.path = path
        self._fd = -1
        self._inode = -1
        self._open_current(start)

    def _open_current(self, start: int | None) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        self._fd = fd
        self._inode = os.fstat(fd).st_ino
        os.lseek(fd, os.fstat(fd).st_size if start is None else start, os.SEEK_SET)

    def read(self) -> bytes:
        """Everything written since the last call (possibly b"")."""
        chunks: list[bytes] = []
        while True:
            if self._fd < 0:
                self._open_current(0)
                if self._fd < 0:
                    return b"".join(chunks)
            chunks.extend(self._read_to_end())
            try:
                now_inode = os.stat(self.path).st_ino
            except FileNotFoundError:
                return b"".join(chunks)
            if now_inode == self._inode:
                return b"".join(chunks)
            # Rotated: the open file (now log.1) was read to its end above; a write may have
            # landed after that read and before the rename, so read once more, then switch.
            chunks.extend(self._read_to_end())
            os.close(self._fd)
            self._fd = -1

    def _read_to_end(self) -> Iterator[bytes]:
        while True:
            data = os.read(self._fd, _BLOCK)
            if not data:
                return
            yield data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
