"""The daemon's wake-up socket (`daemon.sock`): a Unix datagram socket, mode 0600, on which a
client of the same user says "look at the store now" and, before a submit whose job needs
them, hands over its credentials (workbench.daemon.credentials). The kernel attaches the
sender's uid to each datagram (SO_PASSCRED); datagrams from another uid are refused and
counted, never read."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

from workbench.daemon.credentials import DATAGRAM_TAG, MAX_DATAGRAM_BYTES
from workbench.daemon.intake import CREDENTIALS, peer_credentials


class WakeSocket:
    """The bound socket at `path`, or nothing where it cannot be bound (the daemon then polls).

    `log` takes one line for the daemon's log; `on_credentials` takes each credentials datagram
    (bytes starting with DATAGRAM_TAG, at most MAX_DATAGRAM_BYTES) from this user."""

    def __init__(
        self, path: Path, log: Callable[[str], None], on_credentials: Callable[[bytes], object]
    ):
        self.path = path
        self.log = log
        self.on_credentials = on_credentials
        self.refused = 0  # datagrams from other users, ignored
        self.sock: socket.socket | None = None

    def bind(self) -> socket.socket | None:
        """Bind the socket afresh (a stale file is removed first), non-blocking, 0600; the
        socket, or None after logging why it could not be bound."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(self.path))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        except OSError as error:
            self.log(f"cannot bind {self.path} ({error}); polling instead")
            sock.close()
            return None
        os.chmod(self.path, 0o600)
        sock.setblocking(False)
        self.sock = sock
        return sock

    def drain(self) -> bool:
        """Read every pending datagram; True if one came from this user (a wake-up). A
        credentials datagram goes to `on_credentials`. Those of other users are refused and
        counted, logged for the first 10 and then every 1,000th."""
        if self.sock is None:
            return False
        woke = False
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(
                    MAX_DATAGRAM_BYTES, socket.CMSG_SPACE(CREDENTIALS.size)
                )
            except OSError:  # BlockingIOError: nothing left
                return woke
            _, uid, _ = peer_credentials(ancillary)
            if uid == os.getuid():
                woke = True
                if data.startswith(DATAGRAM_TAG):
                    self.on_credentials(data)
            else:
                self.refused += 1
                if self.refused <= 10 or self.refused % 1000 == 0:
                    self.log(
                        f"refused a wake-up from uid {uid} (only uid {os.getuid()} may use this"
                        f" daemon); {self.refused} refused so far"
                    )

    def close(self) -> None:
        """Close the socket and remove its file (no-op when it was never bound)."""
        if self.sock is None:
            return
        self.sock.close()
        self.sock = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
