"""The system daemon's gate (team mode): the listening socket every user's client talks to.

`gate/team.sock` in the system home, mode 0666 (anyone may connect: who they are comes from the
kernel, SO_PEERCRED, and `workbench.daemon.rights` decides what they may do). The daemon's
loop accepts; each connection (one request, a timeout on every read) is served by one of a
few worker threads, so a slow or hostile client never holds the scheduling loop. The requests themselves are `workbench.daemon.teamops`."""

from __future__ import annotations

import collections
import os
import queue
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from workbench import safefs
from workbench.config import Config
from workbench.daemon.identity import peer_of, peer_uid
from workbench.daemon.link import wake
from workbench.daemon.rights import NotPermitted, Rights
from workbench.daemon.runas import scrub_own_environment
from workbench.daemon.teamops import RequestError, TeamOps
from workbench.daemon.wire import (
    EXIT_NOT_PERMITTED,
    MAX_REQUEST_BYTES,
    WireError,
    read_frame,
    send_frame,
)
from workbench.db.store import Job, JobError, NoSuchJob, Store
from workbench.paths import Home
from workbench.queue.spec import SpecError
from workbench.system import gate_socket, is_system_home

WORKERS = 8  # requests served at once
PER_USER = 3  # connections of one user queued for or held by workers; the rest wait their turn
MAX_WAITING = 512  # accepted connections waiting for a worker; more are closed at once
READ_TIMEOUT_S = 5.0  # a client that sends nothing for this long is dropped


class Gate:
    """Binds `path`, accepts connections (`accept_all`, from the daemon's loop) and answers
    each request with `ops` on one of WORKERS threads (long-lived: each keeps one store
    connection). `log` takes one line for daemon.log."""

    def __init__(self, path: Path, ops: TeamOps, log: Callable[[str], None]):
        self.path = path
        self.ops = ops
        self.log = log
        self.sock: socket.socket | None = None
        self._waiting: queue.Queue[tuple[socket.socket, int] | None] = queue.Queue(MAX_WAITING)
        self._per_uid: dict[int, int] = {}  # connections waiting or served, per user
        self._deferred: dict[int, collections.deque[socket.socket]] = {}  # past PER_USER
        self._deferred_count = 0
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self.served = 0
        self.refused = 0

    def bind(self) -> socket.socket:
        """Create the listening socket (replacing a stale one), mode 0666, and start the
        workers. Raises OSError."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o666)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.sock = sock
        for number in range(WORKERS):
            worker = threading.Thread(target=self._work, name=f"gate-{number}", daemon=True)
            worker.start()
            self._workers.append(worker)
        return sock

    def close(self) -> None:
        """Stop listening, remove the socket, let the workers finish."""
        if self.sock is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        self.sock.close()
        self.sock = None
        for _ in self._workers:
            try:
                self._waiting.put_nowait(None)
            except queue.Full:
                break

    def accept_all(self) -> None:
        """Accept every waiting connection and queue it for a worker. A user's connections past
        PER_USER of theirs queued or served wait their turn behind that user's own (closed past
        MAX_WAITING of them): one user's flood of idle connections never holds every worker
        from the others."""
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self.log(f"team socket: accept failed ({error})")
                return
            try:
                uid = peer_uid(conn)
            except OSError:
                conn.close()
                continue
            with self._lock:
                held = self._per_uid.get(uid, 0)
                if held >= PER_USER:  # this user's next, once one of theirs is done
                    if self._deferred_count >= MAX_WAITING:
                        self.refused += 1
                        conn.close()
                    else:
                        self._deferred.setdefault(uid, collections.deque()).append(conn)
                        self._deferred_count += 1
                    continue
                self._per_uid[uid] = held + 1
            self._hand_over(conn, uid)

    def _hand_over(self, conn: socket.socket, uid: int) -> None:
        try:
            self._waiting.put_nowait((conn, uid))
        except queue.Full:
            self.refused += 1
            conn.close()
            self._release(uid)

    def _release(self, uid: int) -> None:
        """One of `uid`'s connections is done: their next deferred one goes to the workers."""
        with self._lock:
            deferred = self._deferred.get(uid)
            if deferred:
                following = deferred.popleft()
                self._deferred_count -= 1
                if not deferred:
                    del self._deferred[uid]
            else:
                following = None
                left = self._per_uid.get(uid, 1) - 1
                if left > 0:
                    self._per_uid[uid] = left
                else:
                    self._per_uid.pop(uid, None)
        if following is not None:
            self._hand_over(following, uid)

    def _work(self) -> None:
        while True:
            item = self._waiting.get()
            if item is None:
                return
            conn, uid = item
            try:
                self._serve(conn)
            except Exception as error:  # never lose a worker
                self.log(f"team socket: {type(error).__name__}: {error}")
            finally:
                self._release(uid)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(READ_TIMEOUT_S)
            try:
                peer = peer_of(conn)
                request = read_frame(conn, MAX_REQUEST_BYTES)
            except (WireError, OSError) as error:
                self.refused += 1
                if self.refused <= 10 or self.refused % 1000 == 0:
                    self.log(f"team socket: request refused ({error})")
                try:
                    send_frame(conn, _failure(f"malformed request ({error})", 2))
                except OSError:
                    pass
                return
            reply = self.answer(peer, request)
            try:
                send_frame(conn, reply)
            except OSError:
                pass  # the client left

    def answer(self, peer: object, request: dict[str, object]) -> dict[str, object]:
        """The reply to one request: `{"ok": True, ...}` or a failure with its exit code
        (2 usage or no such job, 1 a state that does not allow it, 4 not permitted). Never
        raises: an unexpected error is logged and answered with exit 1."""
        from workbench.daemon.identity import Peer

        assert isinstance(peer, Peer)
        self.served += 1
        try:
            return {"ok": True, **self.ops.handle(peer, dict(request))}
        except NotPermitted as error:
            self.log(f"team socket: refused {peer.label()}: {error}")
            return _failure(str(error), EXIT_NOT_PERMITTED)
        except (RequestError, SpecError, NoSuchJob) as error:
            return _failure(str(error), 2)
        except JobError as error:
            return _failure(str(error), 1)
        except Exception as error:  # a bug must not take the daemon down, nor hang a client
            self.log(f"team socket: {peer.label()}: {type(error).__name__}: {error}")
            return _failure(f"the daemon could not do it ({type(error).__name__})", 1)


def open_gate(
    home: Home,
    store: Store,
    config: Callable[[], Config],
    log: Callable[[str], None],
    hold: Callable[[str, dict[str, str]], None],
    removing: Callable[[Job], None] | None = None,
) -> Gate | None:
    """The gate of a system home's daemon (running as root), bound; None in a per-user home.
    It also removes the loader's and Python's variables from this process's environment
    (`runas.scrub_own_environment`): the launcher and the wrappers it forks run as root until
    each becomes its job's owner. `config()` gives the settings in force ([team] admin_group,
    [security] secret_names); `hold(token, values)` keeps a job's credentials in the daemon's
    memory (`CredentialVault.put`); `removing(job)` is told of each job removed, as it was
    (`TeamOps`)."""
    if os.geteuid() != 0 or not is_system_home(home.root):
        return None
    scrubbed = scrub_own_environment()
    if scrubbed:
        log(f"system mode: removed {scrubbed} LD_*/PYTHON* variable(s) from the environment")
    ops = TeamOps(
        home,
        store,
        lambda: Rights.from_group(config().admin_group),
        lambda: wake(home),
        lambda: config().secret_words,
        hold,
        removing,
    )
    gate = Gate(gate_socket(home.root), ops, log)
    safefs.make_dir(gate.path.parent, 0o755)
    os.chmod(gate.path.parent, 0o755)
    gate.bind()
    log(f"system mode: serving every user on {gate.path}")
    return gate


def _failure(message: str, code: int) -> dict[str, object]:
    return {"ok": False, "error": message, "exit": code}
