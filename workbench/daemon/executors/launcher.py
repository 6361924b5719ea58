"""The launcher: a small process the local executor starts once and forks every job's wrapper
from. Forking it costs about a millisecond where forking the daemon (its telemetry and database
modules loaded) costs several, and the fork happens outside the daemon's thread.

Protocol on stdin/stdout: frames of a 4-byte big-endian length and a pickled value. Request:
`(Launch, cgroup_dir: Path | None)`. Reply: `("ok", pid, start_time)` or `("error", message)`.
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


def main() -> int:
    """Serve launch requests until stdin closes."""
    from workbench.daemon.executors.local import fork_wrapper

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # wrappers are watched by pidfd, not waited
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    while True:
        request = read_frame(0)
        if request is None:
            return 0
        launch, cgroup_dir = request
        try:
            pid, start_time = fork_wrapper(launch, cgroup_dir)
        except Exception as error:
            write_frame(1, ("error", f"{type(error).__name__}: {error}"))
            continue
        write_frame(1, ("ok", pid, start_time))


if __name__ == "__main__":
    sys.exit(main())
