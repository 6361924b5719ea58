"""Job logs: a capped writer that rotates `log` to `log.1` (and never fails the job when the disk
is full), a follower that streams across rotations without repeats or jumps, and bounded tails."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

from workbench import safefs

ROTATED_SUFFIX = ".1"
RESERVE_SUFFIX = ".reserve"  # space the writer holds so a job's end can be recorded on a full disk
OFFSETS_SUFFIX = ".offsets"  # {"<inode>": start offset in the whole output} of log and log.1
_BLOCK = 65536
TAIL_SCAN_LIMIT_BYTES = 4 * 1024 * 1024  # `-n N` reads at most this much from the end


def rotated(path: Path) -> Path:
    """The previous generation of a log (`log.1`)."""
    return path.with_name(path.name + ROTATED_SUFFIX)


def offsets_file(path: Path) -> Path:
    """Where the writer records at which offset of the job's whole output each of the two
    generations begins (keyed by inode), so a follower can tell exactly what it skipped."""
    return path.with_name(path.name + OFFSETS_SUFFIX)


def read_offsets(path: Path) -> dict[int, int]:
    """{inode: start offset in bytes of the job's whole output} for `log` and `log.1`, from the
    writer's record; {} when there is none or it cannot be read."""
    try:
        data = json.loads(safefs.read_bytes(offsets_file(path), 1 << 20))
        return {int(inode): int(start) for inode, start in data.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


class RotatingLog:
    """Appends a job's output to `path`; when a write would take the file past `cap_bytes // 2`,
    the file is first renamed to `log.1` (replacing the older one) and a new `log` begins, so the
    two hold at most `cap_bytes`. Writes never raise: output that cannot be written (ENOSPC,
    EFBIG, EIO) is counted and dropped, and a marker line saying how much was lost is written
    once writing works again, or at `close`. The job keeps running either way: its pipe is
    always drained.

    With `reserve_bytes`, a file `log.reserve` of that size is allocated at once and given back
    at `close`: when the job's own output filled the disk, that room takes the drop marker and
    the job's exit record, so a job that ends is always settled."""

    def __init__(self, path: Path, cap_bytes: int, reserve_bytes: int = 0):
        self.path = path
        self.reserve = path.with_name(path.name + RESERVE_SUFFIX)
        if reserve_bytes > 0:
            _allocate(self.reserve, reserve_bytes)
        self.file_cap = max(cap_bytes // 2, 4096)
        self.fd = -1
        self.size = 0
        self.dropped_bytes = 0
        self.drop_error = ""
        self.drop_errno = 0
        self.inode = -1
        self.base = 0  # where the current file begins in the job's whole output
        self._open()
        known = read_offsets(path)
        if self.inode in known:
            self.base = known[self.inode]
        else:
            try:
                self.base = os.stat(rotated(path)).st_size
            except OSError:
                self.base = 0

    def _open(self) -> None:
        try:
            self.fd = safefs.open_file(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            info = os.fstat(self.fd)
            self.size = info.st_size
            self.inode = info.st_ino
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
        old_inode, old_base = self.inode, self.base
        os.replace(self.path, rotated(self.path))
        os.close(self.fd)
        self.fd = -1
        self.base = old_base + self.size
        self._open()
        if self.fd >= 0:
            self._record_offsets({old_inode: old_base, self.inode: self.base})

    def _record_offsets(self, starts: dict[int, int]) -> None:
        """Best effort (a full disk only makes followers less precise about what they skip)."""
        target = offsets_file(self.path)
        try:
            safefs.write_atomic(
                target, json.dumps({str(inode): start for inode, start in starts.items()}).encode()
            )
        except OSError:
            pass

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
                why = "could not write the log"
                if self.drop_errno in (errno.ENOSPC, errno.EDQUOT):
                    why = "the disk holding the log was full"
                marker = (
                    f"\n[workbench] {self.dropped_bytes} bytes of output dropped: {why}"
                    f" ({self.drop_error})\n"
                ).encode()
                self._write_all(marker)
                self.dropped_bytes = 0
            self._write_all(data)
        except OSError as error:
            self.dropped_bytes += len(data)
            self.drop_error = error.strerror or str(error)
            self.drop_errno = error.errno or 0

    def close(self) -> None:
        """Write the drop marker if anything was lost, making room for it where the disk is
        full (the reserve first, then the older generation `log.1`, then this generation's
        bytes), give the reserve back, and close. Never raises."""
        if self.dropped_bytes:
            for make_room in (self._release_reserve, self._drop_older, self._drop_current):
                self.write(b"")
                if not self.dropped_bytes:
                    break
                make_room()
            else:
                self.write(b"")
        self._release_reserve()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _release_reserve(self) -> None:
        try:
            os.unlink(self.reserve)
        except OSError:
            pass

    def _drop_older(self) -> None:
        try:
            self.dropped_bytes += os.stat(rotated(self.path)).st_size
            os.unlink(rotated(self.path))
        except OSError:
            pass

    def _drop_current(self) -> None:
        if self.fd >= 0:
            try:
                os.ftruncate(self.fd, 0)
                self.dropped_bytes += self.size
                self.size = 0
            except OSError:
                pass


def _allocate(path: Path, size: int) -> None:
    """Create `path` holding `size` bytes of disk (best effort: nothing is left on failure)."""
    try:
        fd = safefs.open_file(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    except OSError:
        return
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.write(fd, b"\0" * size)  # a file system without fallocate
    except OSError:
        os.close(fd)
        fd = -1
        try:
            os.unlink(path)
        except OSError:
            pass
    finally:
        if fd >= 0:
            os.close(fd)


def tail_bytes(path: Path, count: int) -> bytes:
    """The last `count` bytes of a log, continuing into `log.1` when `log` is shorter; b"" if
    neither exists. Reads at most `count` bytes whatever the file size."""
    out = b""
    for candidate in (path, rotated(path)):
        need = count - len(out)
        if need <= 0:
            break
        try:
            with open(safefs.open_file(candidate, os.O_RDONLY), "rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(size - need, 0))
                out = log.read(need) + out
        except OSError:  # missing, or a link (never followed)
            continue
    return out


def split_display_lines(data: bytes) -> list[bytes]:
    """Lines as a terminal shows them: `\\n`, `\\r\\n` and a lone `\\r` (progress bars redrawing
    one line) all end a line. Returned without their endings."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")


def overwrite_redraws(line: str) -> str:
    """One line as a terminal leaves it after its `\\r` redraws: each part after a `\\r`
    overwrites the line from its first column, so a progress bar's 900 redraws leave only the
    last (with any longer earlier text showing past its end, as on a terminal)."""
    shown = ""
    for part in line.split("\r"):
        shown = part + shown[len(part) :]
    return shown


def terminal_lines(text: str) -> tuple[list[str], str]:
    """`text` (a chunk of a log, after any unfinished line of the previous chunk) as a terminal
    shows it: the finished lines (ended by `\\n` or `\\r\\n`) with their redraws applied
    (`overwrite_redraws`), and the unfinished last line, raw, to put before the next chunk.
    `split_display_lines` counts the same redraws as lines, for `logs --lines`."""
    lines = text.replace("\r\n", "\n").split("\n")
    rest = lines.pop()
    return [overwrite_redraws(line) for line in lines], rest


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


SKIP_MARKER = "[workbench] {count} skipped: the log rotated faster than it was followed\n"
_LONGEST_HELD_LINE = 1024 * 1024  # a line longer than this is passed on unfinished


def _first_break(data: bytes) -> int:
    """Index of the first line end (`\\n` or `\\r`) in `data`, -1 if none."""
    ends = [i for i in (data.find(b"\n"), data.find(b"\r")) if i >= 0]
    return min(ends) if ends else -1


class LogFollower:
    """Streams a rotating log faithfully: it keeps the file it is reading open, so when `log` is
    renamed to `log.1` it reads the old file to its end before switching to the next generation
    by inode. Every byte written is returned once, in order, as long as the reader calls `read`
    at least once per two generations (with the default cap: every 16 MiB of output).

    A reader that falls further behind loses what rotated away unread; the stream stays
    faithful even then: `read` returns whole lines only (ended by `\\n` or `\\r`; the
    unfinished last line is held back until it ends, or until `flush`), the line torn by the
    skip is dropped on both sides, and one marker line (`SKIP_MARKER`, with the byte count from
    the writer's offsets record where it has one) stands where bytes were skipped."""

    def __init__(self, path: Path, start: int | None = None):
        """`start`: the offset in the current `log` to begin at (None: its end)."""
        self.path = path
        self._fd = -1
        self._inode = -1
        self._base: int | None = None  # where the open file begins in the whole output
        self._held = b""  # the unfinished last line, not yet returned
        self._resync = False  # after a skip: drop bytes up to the next line end
        self._after: tuple[int, int | None] | None = None  # (inode, end) of a finished file
        self._open_current(start)

    def _open_current(self, start: int | None) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return
        self._fd = fd
        self._inode = os.fstat(fd).st_ino
        os.lseek(fd, os.fstat(fd).st_size if start is None else start, os.SEEK_SET)
        known = read_offsets(self.path)
        if self._inode in known:
            self._base = known[self._inode]
        elif not rotated(self.path).exists():
            self._base = 0

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
            older_fd = os.open(older_path, os.O_RDONLY | os.O_NOFOLLOW)
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
        """The whole lines written since the last call (possibly b""), with a marker line
        where bytes rotated away unread."""
        out: list[bytes] = []
        while True:
            if self._fd < 0 and not self._open_next(out):
                break
            self._take(b"".join(self._read_to_end()), out)
            try:
                now_inode = os.stat(self.path).st_ino
            except FileNotFoundError:
                break
            if now_inode == self._inode:
                break
            # Rotated: the open file (now log.1, or gone) is final once renamed; a write may
            # have landed after the read above and before the rename, so read once more.
            self._take(b"".join(self._read_to_end()), out)
            end = None if self._base is None else self._base + self.position
            self._after = (self._inode, end)
            os.close(self._fd)
            self._fd = -1
        return b"".join(out)

    def flush(self) -> bytes:
        """The unfinished last line held back by `read` (call when the writer has ended)."""
        held, self._held = self._held, b""
        return b"" if self._resync else held

    def _open_next(self, out: list[bytes]) -> bool:
        """Open the generation after the finished one (`log.1` when a whole generation went
        by unread, else `log`), noting any skip in `out`; False if there is none yet."""
        if self._after is None:  # the log did not exist when we began
            self._open_current(0)
            return self._fd >= 0
        done_inode, done_end = self._after
        try:
            current = os.stat(self.path).st_ino
        except FileNotFoundError:
            return False
        fd = -1
        try:
            fd = os.open(rotated(self.path), os.O_RDONLY | os.O_NOFOLLOW)
            if os.fstat(fd).st_ino in (done_inode, current):
                os.close(fd)
                fd = -1
        except FileNotFoundError:
            pass
        if fd < 0:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                return False
        inode = os.fstat(fd).st_ino
        known = read_offsets(self.path)
        start = known.get(inode)
        skipped: int | None
        if start is not None and done_end is not None:
            skipped = max(start - done_end, 0)
        else:
            try:  # `log.1` still the finished file after opening `log`: nothing went by
                contiguous = os.stat(rotated(self.path)).st_ino == done_inode
            except FileNotFoundError:
                contiguous = False
            skipped = 0 if contiguous and inode != done_inode else None
        self._fd, self._inode, self._base, self._after = fd, inode, start, None
        if skipped != 0:
            count = "an unknown number of bytes" if skipped is None else f"{skipped} bytes"
            self._held = b""  # its end rotated away unread
            out.append(SKIP_MARKER.format(count=count).encode())
            self._resync = True
        return True

    def _take(self, data: bytes, out: list[bytes]) -> None:
        """Pass on the whole lines of held + `data`; hold the unfinished rest."""
        if not data:
            return
        if self._resync:
            cut = _first_break(data)
            if cut < 0:
                return
            data = data[cut + 1 :]
            self._resync = False
        data = self._held + data
        cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
        if cut < 0 and len(data) > _LONGEST_HELD_LINE:
            cut = len(data) - 1
        out.append(data[: cut + 1])
        self._held = data[cut + 1 :]

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
