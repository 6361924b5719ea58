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
    """Appends a job's output to `path`; when a write would take the file past `cap_bytes // 2`,
    the file is first renamed to `log.1` (replacing the older one) and a new `log` begins, so the
    two hold at most `cap_bytes`. Writes never raise: output that cannot be written (ENOSPC, EFBIG, EIO) is counted
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
        """Append `data` (rotating first where it would pass the cap); never raises."""
        for start in range(0, max(len(data), 1), self.file_cap):
            self._write_piece(data[start : start + self.file_cap])

    def _write_piece(self, data: bytes) -> None:
        try:
            if self.fd < 0:
                self._open()
                if self.fd < 0:
                    raise OSError(errno.EIO, self.drop_error)
            if self.size and self.size + len(data) > self.file_cap:
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


def _tail_lines_fd(fd: int, end: int, count: int, limit_bytes: int) -> tuple[list[bytes], bool]:
    """The last `count` display lines of the bytes [0, end) of an open file, reading backwards
    at most `limit_bytes`; and whether the start of the file was reached."""
    step = _BLOCK
    while True:
        size = min(step, limit_bytes, end)
        data = os.pread(fd, size, end - size)
        breaks = data.count(b"\n") + data.count(b"\r")
        if breaks > count or size >= end or size >= limit_bytes:
            break
        step *= 4
    lines = split_display_lines(data)
    if lines and lines[-1] == b"":
        lines.pop()
    reached_start = size >= end
    if not reached_start and len(lines) > count:
        lines = lines[-count:]
    return lines[-count:] if count else [], reached_start


def tail_lines(path: Path, count: int, limit_bytes: int = TAIL_SCAN_LIMIT_BYTES) -> bytes:
    """The last `count` display lines of a log (see `split_display_lines`), each ending in
    `\\n`, continuing into `log.1` when `log` holds fewer. Reads backwards from the end and stops
    after `count` line ends or `limit_bytes`, so the cost is bounded whatever the file's size or
    line endings."""
    follower = LogFollower(path)
    try:
        return follower.snapshot(count, limit_bytes)
    finally:
        follower.close()


class LogFollower:
    """Streams a rotating log faithfully: it keeps the file it is reading open, so when `log` is
    renamed to `log.1` it reads the old file to its end before switching to the new `log` by
    inode. Every byte written is returned once, in order, as long as the reader calls `read` at
    least once per two generations (with the default cap: every 16 MiB of output)."""

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

    @property
    def position(self) -> int:
        """The offset in the current file the next `read` starts at."""
        return os.lseek(self._fd, 0, os.SEEK_CUR) if self._fd >= 0 else 0

    def snapshot(self, count: int | None, limit_bytes: int = TAIL_SCAN_LIMIT_BYTES) -> bytes:
        """The output before the follower's position: all of it (`log.1`, then `log`) when
        `count` is None, else its last `count` display lines. Together with later `read`s this
        gives every byte once: nothing is repeated, nothing skipped."""
        end = self.position
        older_path = rotated(self.path)
        older_fd = -1
        try:
            older_fd = os.open(older_path, os.O_RDONLY)
            if os.fstat(older_fd).st_ino == self._inode:  # rotated since we opened: no older
                os.close(older_fd)
                older_fd = -1
        except FileNotFoundError:
            pass
        try:
            if count is None:
                parts = []
                if older_fd >= 0:
                    parts.append(os.pread(older_fd, os.fstat(older_fd).st_size, 0))
                if self._fd >= 0:
                    parts.append(os.pread(self._fd, end, 0))
                return b"".join(parts)
            lines: list[bytes] = []
            reached_start = True
            if self._fd >= 0:
                lines, reached_start = _tail_lines_fd(self._fd, end, count, limit_bytes)
            if reached_start and len(lines) < count and older_fd >= 0:
                older_end = os.fstat(older_fd).st_size
                older, _ = _tail_lines_fd(older_fd, older_end, count - len(lines), limit_bytes)
                lines = older + lines
            return b"".join(line + b"\n" for line in lines[-count:]) if count > 0 else b""
        finally:
            if older_fd >= 0:
                os.close(older_fd)

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
            # Rotated: the open file (now log.1, or gone) was read to its end above; a write may
            # have landed after that read and before the rename, so read once more. If log.1 is
            # not our file, a whole generation went by between two reads: it comes next.
            chunks.extend(self._read_to_end())
            os.close(self._fd)
            self._fd = -1
            try:
                older = os.open(rotated(self.path), os.O_RDONLY)
            except FileNotFoundError:
                continue
            if os.fstat(older).st_ino in (self._inode, now_inode):
                os.close(older)
                continue
            self._fd = older
            self._inode = os.fstat(older).st_ino
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
        """Close the file being followed."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
