"""The launcher: a small process the local executor starts once and forks every job's wrapper
from. Forking it costs about a millisecond where forking the daemon (its telemetry and database
modules loaded) costs several, and the fork happens outside the daemon's thread.

Protocol on stdin/stdout: frames of a 4-byte big-endian length and a pickled value. Request:
`(Launch, cgroup_dir: Path | None)`. Reply: `("ok", pid, start_time)` or
`("error", message, errno)`, in the order of the requests.
The launcher exits when its stdin closes (the daemon went away); it holds the descriptors the
daemon passed it (the daemon's lock) until then, and every wrapper holds them until it has
recorded itself, so a new daemon that gets the lock finds every wrapper's record."""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
from typing import Any

_LENGTH = struct.Struct(">I")


def read_frame(fd: int) -> Any | None:
    """One pickled value from `fd`, or None at end of file."""
    header = _read_exactly(fd, _LENGTH.size)
    if header is None:
        return None
    body = _read_exactly(fd, _LENGTH.unpack(header)[0])
    return None if body is None else pickle.loads(body)


def write_frame(fd: int, value: Any) -> None:
    """Send one value (blocking until written)."""
    body = pickle.dumps(value)
    data = memoryview(_LENGTH.pack(len(body)) + body)
    while data:
        data = data[os.write(fd, data) :]


def _read_exactly(fd: int, size: int) -> bytes | None:
    parts: list[bytes] = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            return None
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def _more_waiting(fd: int) -> bool:
    """Whether another request is already waiting on `fd` (the daemon sends a batch at once)."""
    import select

    return bool(select.select([fd], [], [], 0)[0])


def main() -> int:
    """Serve launch requests until stdin closes. The requests waiting at once are forked
    together, then each wrapper's word that it recorded itself is awaited in turn (so a wrapper
    that could not, for want of space or inodes, is reported as not started)."""
    from workbench.daemon.executors.local import fork_wrapper_async, wrapper_ready

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # wrappers are watched by pidfd, not waited
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    while True:
        request = read_frame(0)
        if request is None:
            return 0
        batch = [request]
        ended = False
        while _more_waiting(0):
            request = read_frame(0)
            if request is None:
                ended = True
                break
            batch.append(request)
        forked: list[tuple[int, int] | OSError] = []
        for launch, cgroup_dir in batch:
            try:
                forked.append(fork_wrapper_async(launch, cgroup_dir))
            except OSError as error:
                forked.append(error)
        for item in forked:
            try:
                if isinstance(item, OSError):
                    raise item
                pid, ready_fd = item
                start_time = wrapper_ready(pid, ready_fd)
            except OSError as error:
                said = error.strerror or f"{type(error).__name__}: {error}"
                write_frame(1, ("error", said, error.errno))
                continue
            write_frame(1, ("ok", pid, start_time))
        if ended:
            return 0


if __name__ == "__main__":
    sys.exit(main())
