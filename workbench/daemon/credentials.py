"""Credentials held in the daemon's memory only, never in a stored copy.

A client that submits a job with credentials (`workbench.jobmodel.secrets.hold_credentials`:
S3 keys, PGPASSWORD, a password in a source URL) hands their values to the running daemon
first (`hand_over`: one datagram on the daemon's own socket, mode 0600, sender checked by
SO_PASSCRED), then commits the job, whose row keeps only their token and names. The daemon
(`CredentialVault`) puts them in the job's environment when it starts it (an environment is
readable only by the job's user and root, unlike argv). A daemon that restarts has lost them:
such a job is never started without them, it waits, saying which are missing and how to give
them again (`workbench credentials JOB` from a shell that has them)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable

from workbench.db import credentials as db
from workbench.db.store import Job, Store
from workbench.jobmodel.secrets import needed_label
from workbench.paths import Home

#: First byte of a datagram on the daemon's socket that carries credentials (a wake is `w`).
DATAGRAM_TAG = b"C"
#: The most bytes of one such datagram (the daemon reads up to this many).
MAX_DATAGRAM_BYTES = 64 * 1024
SEND_TIMEOUT_S = 5.0


def hand_over(home: Home, token: str, values: dict[str, str]) -> None:
    """Send credentials `values` (name -> value) for `token` to the daemon of `home`. Raises
    OSError when no daemon listens or the socket is not this user's own
    (`workbench.trust.check_socket`), ValueError when they exceed `MAX_DATAGRAM_BYTES`."""
    import socket

    from workbench.trust import UntrustedHome, check_socket

    data = DATAGRAM_TAG + json.dumps({"token": token, "values": values}).encode()
    if len(data) > MAX_DATAGRAM_BYTES:
        raise ValueError(f"the credentials take {len(data)} bytes, more than {MAX_DATAGRAM_BYTES}")
    try:
        check_socket(home.root, home.socket)
    except UntrustedHome as error:
        raise OSError(str(error)) from None
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(SEND_TIMEOUT_S)
        sock.sendto(data, str(home.socket))


def parse(data: bytes) -> tuple[str, dict[str, str]] | None:
    """(token, values) from a credentials datagram (with its tag), or None if malformed."""
    if not data.startswith(DATAGRAM_TAG):
        return None
    try:
        message = json.loads(data[len(DATAGRAM_TAG) :])
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    token, values = message.get("token"), message.get("values")
    if not isinstance(token, str) or not isinstance(values, dict):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
        return None
    return token, values


#: How the reason of a job waiting for its credentials begins.
WAITING_PREFIX = "waits for its credentials"


def waiting_reason(job_id: int, missing: Iterable[str], urls: dict[str, str]) -> str:
    """Why a job does not start: which credentials are missing and how to give them again."""
    labels = ", ".join(needed_label(name, urls) for name in missing)
    return (
        f"{WAITING_PREFIX} ({labels}): the daemon keeps them in memory only, and the"
        f" daemon they were handed to has stopped; from a shell that has them run"
        f" `workbench credentials {job_id}` (or `workbench cancel {job_id}`)"
    )


class CredentialVault:
    """The daemon's credentials, by token (name -> value), in memory only: never logged,
    written or shown. `log` receives one line per hand-over (the token's first digits and the
    names, never a value)."""

    def __init__(self, store: Store, log: Callable[[str], None]):
        self.store = store
        self.log = log
        self._held: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def take(self, data: bytes) -> bool:
        """Keep the credentials of one datagram (see `hand_over`); True when it held some, and
        then every job waiting for credentials is read again by the next pass."""
        parsed = parse(data)
        if parsed is None:
            self.log("ignored a malformed credentials datagram")
            return False
        self.put(*parsed)
        return True

    def put(self, token: str, values: dict[str, str]) -> None:
        """Hold `values` (name -> value) for `token`; every job waiting for credentials is read
        again by the next pass. Safe from the team socket's worker threads."""
        with self._lock:
            self._held.setdefault(token, {}).update(values)
        self.log(f"credentials {token[:8]}: holding {', '.join(sorted(values)) or 'none'}")
        db.clear_waiting(self.store)

    def lacking(self, job_ids: Iterable[int]) -> dict[int, str]:
        """The jobs among `job_ids` that need credentials this daemon does not hold: job id ->
        the reason it waits (naming what is missing)."""
        out: dict[int, str] = {}
        for job_id, record in db.held_records(self.store, job_ids).items():
            with self._lock:
                held = dict(self._held.get(record.token, {}))
            missing = [name for name in record.names if name not in held]
            if missing:
                out[job_id] = waiting_reason(job_id, missing, record.urls)
        return out

    def mark_lacking(self, job_ids: Iterable[int]) -> set[int]:
        """Mark the jobs among `job_ids` that lack credentials as waiting for them (with the
        reason); returns their ids (a scheduling pass leaves them out)."""
        lacking = self.lacking(job_ids)
        db.mark_waiting(self.store, lacking.items())
        return set(lacking)

    def hold_back(self, jobs: Iterable[Job]) -> set[int]:
        """`mark_lacking` for a caller that reads the jobs every round (the Slurm executor):
        returns the ids of `jobs` that lack credentials, and writes the waiting mark only for
        those whose reason does not already say so."""
        jobs = list(jobs)
        lacking = self.lacking(job.id for job in jobs)
        fresh = [
            (job.id, lacking[job.id])
            for job in jobs
            if job.id in lacking and not (job.reason or "").startswith(WAITING_PREFIX)
        ]
        db.mark_waiting(self.store, fresh)
        return set(lacking)

    def environments(self, job_ids: Iterable[int]) -> dict[int, dict[str, str]]:
        """The credentials to add to each job's environment at its start (job id -> name ->
        value), for the jobs that have any held."""
        out: dict[int, dict[str, str]] = {}
        for job_id, record in db.held_records(self.store, job_ids).items():
            with self._lock:
                held = self._held.get(record.token)
            if held:
                out[job_id] = dict(held)
        return out
