"""Submissions a running daemon takes for `workbench submit` (see `workbench.daemon.link` for the
protocol): the client sends its raw arguments, working directory and environment; the daemon
parses and checks them with the CLI's own code (`workbench.queue.submission`), queues the job
and answers with what the CLI would have printed and its exit code. The client then needs
neither the store nor the job model, so a submit costs little more than starting Python."""

from __future__ import annotations

import marshal
import os
import select
import socket
import struct
from collections.abc import Callable
from typing import Any

from workbench.config import load_config
from workbench.daemon.executors.slurm import bind_executor
from workbench.daemon.link import INTAKE_VERSION, MAX_SUBMISSION_BYTES
from workbench.db.connection import translate
from workbench.db.store import JobError, NoSuchJob, Store
from workbench.jsonout import dumps
from workbench.paths import Home
from workbench.present import job_json
from workbench.queue import submission
from workbench.queue.spec import SpecError

_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STORE = 0, 1, 2, 3
_SEND_WAIT_S = 1.0


class Intake:
    """The daemon's end of the intake socket. `bind` makes it (mode 0600, credentials passed);
    `take_all` answers every pending submission. Only this uid's submissions are taken (the
    peer's credentials, SO_PASSCRED); others are refused and counted."""

    def __init__(self, home: Home, store: Store, log: Callable[[str], None]):
        self.home = home
        self.store = store
        self.log = log
        self.sock: socket.socket | None = None
        self.refused = 0
        self.taken = 0
        self._parser = submission.parser()

    def bind(self) -> socket.socket | None:
        """Create the socket (replacing a stale one); None, with a log line, if it cannot be
        made (clients then submit by themselves)."""
        path = self.home.intake_socket
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(path))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            os.chmod(path, 0o600)
        except OSError as error:
            self.log(f"cannot bind {path} ({error}); clients will submit by themselves")
            sock.close()
            return None
        sock.setblocking(False)
        self.sock = sock
        return sock

    def close(self) -> None:
        """Remove the socket so that clients stop handing submissions to this daemon."""
        if self.sock is None:
            return
        try:
            self.home.intake_socket.unlink()
        except OSError:
            pass
        self.sock.close()
        self.sock = None

    def take_all(self) -> int:
        """Answer every pending submission; returns how many jobs were queued."""
        queued = 0
        while self.sock is not None:
            try:
                data, ancillary, flags, address = self.sock.recvmsg(
                    MAX_SUBMISSION_BYTES + 1, socket.CMSG_SPACE(_CREDENTIALS.size)
                )
            except (BlockingIOError, InterruptedError):
                return queued
            except OSError:
                return queued
            uid = None
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    _, uid, _ = _CREDENTIALS.unpack(payload[: _CREDENTIALS.size])
            if uid != os.getuid():
                self.refused += 1
                if self.refused <= 10 or self.refused % 1000 == 0:
                    self.log(f"refused a submission from uid {uid}; {self.refused} refused so far")
                continue
            if not address:
                continue  # nowhere to answer: the client cannot be waiting for it
            reply = self._answer(data, bool(flags & socket.MSG_TRUNC))
            if reply.get("job_id") is not None:
                queued += 1
            self._send(marshal.dumps(reply), address)
        return queued

    def _send(self, data: bytes, address: Any) -> None:
        """Answer one client. Unread answers are charged to this socket's send buffer, so with
        many slow clients a send can find it full: wait for room (a second at most). An answer
        that cannot be sent is not lost: the client finds its job by the token in the store."""
        assert self.sock is not None
        for _ in range(2):
            try:
                self.sock.sendto(data, address)
                return
            except BlockingIOError:
                select.select([], [self.sock], [], _SEND_WAIT_S)
            except OSError:
                return  # the client left

    def _answer(self, data: bytes, truncated: bool) -> dict[str, Any]:
        try:
            request = marshal.loads(data)  # only this uid's datagrams get here (credentials)
            token = str(request["token"])
        except (ValueError, KeyError, TypeError, EOFError):
            return {"token": None, "fallback": "unreadable submission"}
        if truncated:
            return {"token": token, "fallback": "submission too large"}
        if request.get("v") != INTAKE_VERSION:
            return {"token": token, "fallback": f"daemon speaks version {INTAKE_VERSION}"}
        try:
            argv = [str(word) for word in request["argv"]]
            env = {str(k): str(v) for k, v in dict(request["env"]).items()}
            cwd = str(request["cwd"])
        except (KeyError, TypeError, ValueError):
            return {"token": token, "fallback": "malformed submission"}
        try:
            os.chdir(cwd)  # relative paths (--spec, --cwd) are the client's
        except OSError:
            return {"token": token, "fallback": "working directory unavailable"}
        try:
            return {"token": token, **self._submit(argv, env, token)}
        finally:
            try:
                os.chdir(self.home.root)
            except OSError:
                os.chdir("/")

    def _submit(self, argv: list[str], env: dict[str, str], token: str) -> dict[str, Any]:
        """What `cmd_submit` would do and print, as a reply."""
        try:
            args = submission.parse_args(self._parser, argv)
        except submission.SubmitUsage as error:
            return {"exit": EXIT_USAGE, "stderr": error.text}
        try:
            if (args.executor or load_config(self.home.config).executor.kind) != "local":
                # Checking a Slurm job runs Slurm's commands, which must not hold up this loop.
                return {"fallback": "a Slurm submission is checked by the client"}
            request, where = submission.request_from_args(args, env)
            (request,) = bind_executor([request], args.executor, self.home, [where])
            job_id = self.store.submit(request, request_token=token)
        except SpecError as error:
            return {"exit": EXIT_USAGE, "stderr": f"workbench: {error}\n"}
        except JobError as error:
            code = EXIT_USAGE if isinstance(error, NoSuchJob) else EXIT_FAILED
            return {"exit": code, "stderr": f"workbench: {error}\n"}
        except Exception as error:
            fault = translate(error, self.home.state_db)
            if fault is None:  # unexpected: the client does it itself and reports it
                self.log(f"submission not taken ({type(error).__name__}: {error})")
                return {"fallback": f"{type(error).__name__}"}
            return {"exit": EXIT_STORE, "stderr": f"workbench: {fault}\n"}
        self.taken += 1
        reply: dict[str, Any] = {
            "exit": EXIT_OK,
            "job_id": job_id,
            "wait": bool(args.wait),
            "json": bool(args.json),
            "stdout": f"{job_id}\n",
        }
        if args.json:
            try:
                reply["stdout"] = dumps(job_json(self.store.get(job_id))) + "\n"
            except Exception as error:  # queued all the same: print its id, as without --json
                self.log(f"job {job_id}: queued, but cannot be shown as JSON ({error})")
        return reply
