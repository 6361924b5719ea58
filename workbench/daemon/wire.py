"""The system daemon's request protocol (team mode), shared by the client and the daemon.

One request per connection on the system home's `team.sock` (a Unix stream socket): a 4-byte
big-endian length, then a JSON object `{"op": ..., ...}`; the reply is framed the same way:
`{"ok": true, ...}` or `{"ok": false, "error": message, "exit": code}`. JSON, never pickle: the
daemon runs as root and a request is untrusted input. Who asks is the socket's peer (SO_PEERCRED),
never a field of the request. Standard library only (the CLI imports it at start)."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

_LENGTH = struct.Struct(">I")
MAX_REQUEST_BYTES = 8 << 20  # a submit of many jobs with their environments fits
MAX_REPLY_BYTES = 64 << 20
SOCKET_NAME = "team.sock"
#: Exit code of a request the rights refuse (README: exit codes; INTERFACE has 0-3).
EXIT_NOT_PERMITTED = 4


class WireError(OSError):
    """A frame that is missing, too large or not a JSON object."""


def send_frame(sock: socket.socket, value: dict[str, Any]) -> None:
    """Send `value` as one frame. Raises OSError."""
    body = json.dumps(value, separators=(",", ":")).encode("utf-8", "surrogatepass")
    sock.sendall(_LENGTH.pack(len(body)) + body)


def read_frame(sock: socket.socket, limit: int) -> dict[str, Any]:
    """One frame's JSON object from `sock`. Raises WireError when the peer closed early, the
    length passes `limit`, or the body is not a JSON object; OSError (a timeout) as recv."""
    header = _read_exactly(sock, _LENGTH.size)
    (size,) = _LENGTH.unpack(header)
    if size > limit:
        raise WireError(f"a frame of {size} bytes (at most {limit})")
    body = _read_exactly(sock, size)
    try:
        value = json.loads(body.decode("utf-8", "surrogatepass"))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:  # nesting too deep
        raise WireError(f"not JSON ({type(error).__name__})") from None
    if not isinstance(value, dict):
        raise WireError("not a JSON object")
    return value


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    parts: list[bytes] = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise WireError("the connection closed mid-frame")
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def ask(path: str, request: dict[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
    """Send one request to the daemon at socket `path` and return its reply. Raises OSError
    when it cannot be reached, WireError for a broken reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(path)
        send_frame(sock, request)
        return read_frame(sock, MAX_REPLY_BYTES)
