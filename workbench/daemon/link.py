"""How clients find and wake the daemon, without importing it (and its GPU and psutil modules)."""

from __future__ import annotations

import fcntl
import os

from workbench.paths import Home


def lock_holder(home: Home) -> int | None:
    """The pid of the running daemon of this home, None if none holds the lock, -1 if it is
    held but does not hold a pid (being written, or damaged). Raises OSError."""
    try:
        fd = os.open(home.lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).strip()  # held: the pid as ASCII digits, else -1
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def wake(home: Home) -> None:
    """Nudge the daemon (a datagram on its socket); harmless if none is listening. Nothing is
    sent to a socket that is not this user's own (`workbench.trust.check_socket`)."""
    import socket  # here: `workbench submit`'s quick path imports this module, not the socket one

    from workbench.trust import UntrustedHome, check_socket

    try:
        check_socket(home.root, home.socket)
    except (OSError, UntrustedHome):
        return
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(b"w", str(home.socket))
    except OSError:
        pass


# Submissions handed to the daemon (`workbench.cli.entry` sends, `workbench.daemon.intake`
# takes): one `marshal`led dict per datagram each way, on `Home.intake_socket`. Request: {"v",
# "token", "daemon" (the pid the client found holding the lock: another daemon does not take
# it), "argv" (the words after `submit`), "cwd", "env", "columns" (the client's terminal width,
# for usage text)}. Reply: {"token", "exit", "stdout", "stderr", "job_id", "wait", "json",
# "ensure_home"}, {"token", "exit", "job_id", "lost_reply"} when the client must print the job
# itself, or {"token", "fallback": why} when the client must do it all itself. Before it
# commits a job the daemon sends an empty datagram to the client: refused (the client left or
# gave up waiting), the job is rolled back.
INTAKE_VERSION = 2
MAX_SUBMISSION_BYTES = 192 * 1024  # below Linux's default datagram limit (net.core.wmem_default)
