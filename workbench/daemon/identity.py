"""Who is on the other end of the system daemon's socket, as the kernel says (team mode).

The only source of a request's identity is the connected socket's peer credentials
(SO_PEERCRED, unix(7): the uid and gid of the process that connected, recorded by the kernel
at connect time), never a field of the request. Groups come from the user database for that
uid (`getgrouplist`), as `id USER` shows them."""

from __future__ import annotations

import os
import pwd
import socket
import struct
from dataclasses import dataclass

_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Peer:
    """A connected client: its pid, uid and primary gid (from the kernel), its user name and
    every group it belongs to (primary and supplementary, from the user database)."""

    pid: int
    uid: int
    gid: int
    name: str
    groups: frozenset[int]

    def label(self) -> str:
        """`name (uid N)`, as refusals and the audit name a user."""
        return f"{self.name} (uid {self.uid})"


def user_name(uid: int) -> str:
    """The login name of `uid`, or the number as text when it names no user."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def peer_of(conn: socket.socket) -> Peer:
    """The identity of the process connected on the Unix stream socket `conn`. Raises OSError
    when the kernel gives none (not a Unix socket)."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return peer_for(uid, gid, pid)


def peer_uid(conn: socket.socket) -> int:
    """Only the uid of the process connected on `conn` (no user database lookup: the daemon's
    loop calls it for every connection). Raises OSError."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return int(_UCRED.unpack(raw)[1])


def peer_for(uid: int, gid: int, pid: int = 0) -> Peer:
    """A Peer for the kernel-given `uid` and `gid`, its groups looked up by name."""
    groups = {gid}
    try:
        entry = pwd.getpwuid(uid)
        groups.update(os.getgrouplist(entry.pw_name, entry.pw_gid))
        name = entry.pw_name
    except KeyError:
        name = str(uid)
    return Peer(pid, uid, gid, name, frozenset(groups))
