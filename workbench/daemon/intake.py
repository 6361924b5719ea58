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
import stat
import struct
from collections.abc import Callable
from typing import Any

from workbench.config import load_config
from workbench.daemon.executors.slurm import bind_executor
from workbench.daemon.link import INTAKE_VERSION, MAX_SUBMISSION_BYTES
from workbench.db import repro as repro_db
from workbench.db.connection import translate
from workbench.db.store import JobError, NoSuchJob, Store, StoreError, Withdrawn
from workbench.jsonout import dumps
from workbench.paths import Home
from workbench.present import job_json
from workbench.queue import repro, submission
from workbench.queue.spec import SpecError
from workbench.safetext import display_text

CREDENTIALS = struct.Struct("iII")  # struct ucred: pid, uid, gid (SO_PASSCRED)
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STORE = 0, 1, 2, 3
_SEND_WAIT_S = 1.0
# argparse compares every option word with every other (quadratic): 30,000 flags in one
# request held the daemon's loop for 30 s. More than this many are parsed by the client.
MAX_FLAGS = 256
# A spec file larger than this is read by the client, not by the daemon's loop.
MAX_SPEC_BYTES = 1 << 20
# Paths that name the reader's own files (`/dev/stdin`, a shell's `<(...)`, `/proc/self`):
# read here they would be the daemon's, so the client reads them.
_CALLERS_OWN = ("/dev/", "/proc/")
_PARSERS_KEPT = 8  # parsers kept, one per terminal width seen
TAKEN_PER_CALL = 32  # submissions answered per wake-up of the loop (a few ms each)


def peer_credentials(
    ancillary: list[tuple[int, int, bytes]],
) -> tuple[int | None, int | None, int | None]:
    """(pid, uid, gid) of a datagram's sender from `recvmsg`'s ancillary data on a socket with
    SO_PASSCRED (Linux, unix(7)); Nones when the kernel attached none."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, uid, gid = CREDENTIALS.unpack(data[: CREDENTIALS.size])
            return pid, uid, gid
    return None, None, None


def said(error: BaseException) -> str:
    """An error as the full CLI prints it (`workbench: ...`, its text made printable by
    `display_text`), so a quick submit's refusal reads the same byte for byte."""
    return f"workbench: {display_text(str(error))}\n"


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
        self._to_capture: list[tuple[int, Any]] = []  # (job id, request) queued, not yet captured
        self._parsers: dict[int | None, submission.SubmitParser] = {}
        self._inode = _identity(home.state_db)[0]  # the file this daemon's store has open
        self._checked: tuple[int, int, int] | None = None  # state.db as last found sound

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

    def take_all(self, limit: int = TAKEN_PER_CALL) -> int:
        """Answer the pending submissions, `limit` at most (the rest wait for the next call: the
        socket stays readable), so that a flood of them, from many clients or one sending
        garbage, never keeps the loop from scheduling; returns how many jobs were queued."""
        queued = 0
        for _ in range(limit):
            if self.sock is None:
                break
            try:
                data, ancillary, flags, address = self.sock.recvmsg(
                    MAX_SUBMISSION_BYTES + 1, socket.CMSG_SPACE(CREDENTIALS.size)
                )
            except (BlockingIOError, InterruptedError):
                return queued
            except OSError:
                return queued
            pid, uid, gid = peer_credentials(ancillary)
            if uid != os.getuid():
                self.refused += 1
                if self.refused <= 10 or self.refused % 1000 == 0:
                    self.log(f"refused a submission from uid {uid}; {self.refused} refused so far")
                continue
            if not address:
                continue  # nowhere to answer: the client cannot be waiting for it
            peer = (pid or 0, gid if gid is not None else -1)
            reply = self._answer(data, bool(flags & socket.MSG_TRUNC), address, peer)
            if reply.get("job_id") is not None and not reply.get("lost_reply"):
                queued += 1
            self._send(_fitted(reply), address)
            self._capture()
        return queued

    def _capture(self) -> None:
        """Record what reproduces the jobs just queued (`workbench.queue.repro`: code state and
        environment), once their clients have their answer: the daemon does it before its next
        scheduling pass, so a job never starts without it. A failure loses only the record."""
        while self._to_capture:
            job_id, job = self._to_capture.pop()
            try:
                captured = repro.capture(job, self.home.runs)
                if captured.repro is not None:
                    repro_db.record_submitted(self.store, job_id, captured.repro)
            except Exception as error:
                self.log(f"job {job_id}: what it was submitted with is not recorded ({error})")

    def _send(self, data: bytes, address: Any) -> None:
        """Answer one client. Unread answers are charged to this socket's send buffer, so with
        many slow clients a send can find it full: wait for room (a second at most). An answer
        that cannot be sent is not lost: the client, with no answer in 5 s, finds its job by the
        token in the store."""
        assert self.sock is not None
        for _ in range(2):
            try:
                self.sock.sendto(data, address)
                return
            except BlockingIOError:
                select.select([], [self.sock], [], _SEND_WAIT_S)
            except OSError:
                return  # the client left

    def _answer(
        self, data: bytes, truncated: bool, address: Any, peer: tuple[int, int]
    ) -> dict[str, Any]:
        """The reply to one datagram. Never raises: whatever cannot be taken is handed back
        to the client (a fallback), which then reports it exactly as the full CLI does."""
        request = read_request(data)
        if request is None:
            return {"token": None, "fallback": "unreadable submission"}
        token = request["token"]
        if truncated:
            return {"token": token, "fallback": "submission too large"}
        if request["v"] != INTAKE_VERSION:
            return {"token": token, "fallback": f"daemon speaks version {INTAKE_VERSION}"}
        if request["daemon"] != os.getpid():
            # Sent to the daemon this one replaced: its client, seeing that one gone, looks for
            # the job in the store and submits by itself. Taking it too would queue it twice.
            return {"token": token, "fallback": "sent to another daemon"}
        problem = malformed(request)
        if problem is not None:
            return {"token": token, "fallback": f"malformed submission ({problem})"}
        if not same_view(*peer):
            return {"token": token, "fallback": "the client sees other files (groups, mounts)"}
        try:
            os.chdir(request["cwd"])  # relative paths (--spec, --cwd) are the client's
        except (OSError, ValueError):
            return {"token": token, "fallback": "working directory unavailable"}
        try:
            return {"token": token, **self._submit(request, token, address)}
        except (Exception, SystemExit) as error:  # a bug here must not stop the daemon
            self.log(f"submission not taken ({type(error).__name__}: {error})")
            return {"token": token, "fallback": f"{type(error).__name__}"}
        finally:
            try:
                os.chdir(self.home.root)
            except OSError:
                os.chdir("/")

    def _parser(self, columns: int | None) -> submission.SubmitParser:
        """The submit parser for a client whose terminal is `columns` wide (usage lines wrap as
        the full CLI's would there)."""
        parser = self._parsers.get(columns)
        if parser is None:
            if len(self._parsers) >= _PARSERS_KEPT:
                self._parsers.clear()
            width = None if columns is None else max(columns - 2, 1)  # as argparse's default
            parser = self._parsers[columns] = submission.parser(width)
        return parser

    def _refusal(self) -> dict[str, Any] | None:
        """What a client would be told on opening state.db now, as a reply, or None. A client
        checks the file (quick_check) before it writes, so a damaged one is refused with exit 3;
        this daemon's own connection, opened earlier, would write into it. The check is made as
        a client makes it, on a fresh connection, whenever the file changed since it last
        passed (a checkpoint, or a write from outside), so it costs a `stat` otherwise. A file
        that is gone or was replaced (another inode) is left to the client, which writes where
        the full CLI would."""
        identity = _identity(self.home.state_db)
        if identity[0] != self._inode or identity[0] == 0:
            return {"fallback": "state.db replaced"}
        if identity == self._checked:
            return None
        try:
            Store.open(self.home.state_db).close()
        except StoreError as error:
            return {"exit": EXIT_STORE, "stderr": said(error)}
        self._checked = identity
        return None

    def _client_there(self, address: Any) -> bool:
        """Whether the client at `address` still waits for its answer: an empty datagram (which
        it ignores) is refused once it closed its socket (Ctrl-C) or died."""
        assert self.sock is not None
        try:
            self.sock.sendto(b"", address)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return True  # its queue is full, say: it is there
        return True

    def _submit(self, request: dict[str, Any], token: str, address: Any) -> dict[str, Any]:
        """What `cmd_submit` would do and print, as a reply. A client that left before the job
        was committed (Ctrl-C while the store was busy) leaves no job, as in the full CLI."""
        argv: list[str] = request["argv"]
        env: dict[str, str] = request["env"]
        head = argv[: argv.index("--")] if "--" in argv else argv
        if sum(word.startswith("-") for word in head) > MAX_FLAGS:
            return {"fallback": f"more than {MAX_FLAGS} flags"}
        try:
            args = submission.parse_args(self._parser(request.get("columns")), argv)
        except submission.SubmitUsage as error:
            return {"exit": EXIT_USAGE, "stderr": error.text}
        except submission.SubmitNotHere as error:
            return {"fallback": str(error)}
        try:
            submission.check_words(args)
        except SpecError as error:
            return {"exit": EXIT_USAGE, "stderr": said(error)}
        if args.bulk:  # its lines may be the client's stdin
            return {"fallback": "a bulk submit is read by the client"}
        if args.spec:
            why = _client_reads(args.spec)
            if why is not None:
                return {"fallback": why}
        try:
            if (args.executor or load_config(self.home.config).executor.kind) != "local":
                # Checking a Slurm job runs Slurm's commands, which must not hold up this loop.
                return {"fallback": "a Slurm submission is checked by the client"}
            job, where = submission.request_from_args(args, env, capture=False, streams=False)
            config = load_config(self.home.config)
            if repro.wants_snapshot(job, config.snapshot):
                # Copying the files may take a while: not in this loop.
                return {"fallback": "a snapshot is taken by the client"}
            (job,) = bind_executor([job], args.executor, self.home, [where])
            if job.credentials is not None:
                # Handed to the daemon before the job is committed, by the client.
                return {"fallback": "a job with credentials hands them over itself"}
        except SpecError as error:
            return {"exit": EXIT_USAGE, "stderr": said(error)}
        except JobError as error:
            code = EXIT_USAGE if isinstance(error, NoSuchJob) else EXIT_FAILED
            return {"exit": code, "stderr": said(error)}
        except Exception as error:
            self.log(f"submission not taken ({type(error).__name__}: {error})")
            return {"fallback": f"{type(error).__name__}"}
        reply = self._queue(job, args, token, address)
        if "fallback" not in reply:
            # The full CLI opens its home here (warning on stderr if others can read it).
            reply["ensure_home"] = True
        return reply

    def _queue(self, job: Any, args: Any, token: str, address: Any) -> dict[str, Any]:
        """Queue the checked `job` as the full CLI's client would, as a reply."""
        try:
            refused = self._refusal()
            if refused is not None:
                return refused
            job_id = self.store.submit(
                job, request_token=token, still_wanted=lambda: self._client_there(address)
            )
        except Withdrawn:
            return {"fallback": "withdrawn: the client left"}
        except JobError as error:
            code = EXIT_USAGE if isinstance(error, NoSuchJob) else EXIT_FAILED
            return {"exit": code, "stderr": said(error)}
        except Exception as error:
            fault = translate(error, self.home.state_db)
            if fault is None:  # unexpected: the client does it itself and reports it
                self.log(f"submission not taken ({type(error).__name__}: {error})")
                return {"fallback": f"{type(error).__name__}"}
            return {"exit": EXIT_STORE, "stderr": said(fault)}
        self.taken += 1
        self._to_capture.append((job_id, job))  # after the answer: it costs a git call or two
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


def same_view(pid: int, gid: int) -> bool:
    """Whether the process `pid`, of primary group `gid`, sees files as this one does: the same
    groups (primary and supplementary, read in /proc/PID/status), mount namespace and root. A
    user added to a group since the daemon started, or in a `newgrp`/`sg` shell, can read a
    spec file or enter a folder the daemon cannot; in a container or chroot sharing the home,
    a path names other files. Such a client submits by itself."""
    if gid != os.getgid():
        return False
    try:
        for view in ("ns/mnt", "root"):
            theirs, ours = os.stat(f"/proc/{pid}/{view}"), os.stat(f"/proc/self/{view}")
            if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
                return False
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Groups:"):
                    return {int(g) for g in line.split()[1:]} == set(os.getgroups())
    except (OSError, ValueError):
        pass
    return False


def _identity(path: Any) -> tuple[int, int, int]:
    """(inode, size, mtime in ns) of a file; zeros if it cannot be read."""
    try:
        info = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _fitted(reply: dict[str, Any]) -> bytes:
    """`reply` marshalled, within the datagram limit: an answer too long to send (a message
    that quotes a long argument, --json of a long command) becomes, for a queued job, its id
    alone (the client prints what the CLI prints for it) and otherwise a fallback (the client
    reports the error itself). Without this the client never heard back."""
    data = marshal.dumps(reply)
    if len(data) <= MAX_SUBMISSION_BYTES:
        return data
    token = reply.get("token")
    if reply.get("job_id") is not None:
        return marshal.dumps(
            {
                "token": token,
                "exit": EXIT_OK,
                "job_id": reply["job_id"],
                "lost_reply": True,
                "ensure_home": True,
            }
        )
    return marshal.dumps({"token": token, "fallback": "answer too large"})


def _client_reads(spec: str) -> str | None:
    """Why the spec file `spec` (relative to the current directory) is left to the client, or
    None if the daemon may read it: a stream named by the reader's own files (`/dev/stdin`,
    `<(...)`), anything but a regular file (a FIFO would block the daemon's loop until written)
    or a large file."""
    path = os.path.abspath(spec)
    real = os.path.realpath(path)
    if any((p + "/").startswith(_CALLERS_OWN) for p in (path, real)):
        return "the spec file is a stream of the client's"
    try:
        info = os.stat(real)
    except OSError:
        return None  # missing or unreadable: the message the CLI gives
    if not stat.S_ISREG(info.st_mode):
        return "the spec file is not a regular file"
    if info.st_size > MAX_SPEC_BYTES:
        return "a large spec file"
    return None


_FLAG_REF = 0x80  # marshal's "remember this object" bit on a type code
_NO_DATA = frozenset(b"NTF")  # None, True, False
_SHORT_TEXT = frozenset(b"zZ")  # 1-byte length, then the bytes
_TEXT = frozenset(b"uatAs")  # 4-byte length, then the bytes
_COUNTED = frozenset(b"([<>")  # 4-byte count, then the items
_MAX_DEPTH = 8  # a request nests two levels (dict of list/dict)


def well_formed(data: bytes) -> bool:
    """Whether `data` is a marshalled value built only of what a request holds (dicts, lists,
    tuples, sets, strings, ints, None/True/False and back-references), nesting at most
    `_MAX_DEPTH` deep, with no length or count larger than the bytes left.

    `marshal.loads` trusts a count and allocates for it before it reads the items: a 5-byte
    tuple header asks for up to 16 GiB (2**31 pointers), which random bytes sent to the socket
    can hit. This walk costs one step per object, a few ms for the largest request."""
    end = len(data)

    def size(pos: int) -> int:
        if pos + 4 > end:
            raise ValueError("short")
        return int.from_bytes(data[pos : pos + 4], "little", signed=True)

    def skip(pos: int, depth: int) -> int:
        if pos >= end or depth > _MAX_DEPTH:
            raise ValueError("short or deep")
        code = data[pos] & ~_FLAG_REF
        pos += 1
        if code in _NO_DATA:
            return pos
        if code in (ord("i"), ord("r")):
            pos += 4
        elif code in _SHORT_TEXT:
            pos += 1 + (data[pos] if pos < end else 0)
        elif code in _TEXT:
            length = size(pos)
            pos += 4 + length if length >= 0 else end + 1
        elif code == ord("l"):  # a big int: a signed count of 15-bit digits, 2 bytes each
            pos += 4 + 2 * abs(size(pos))
        elif code == ord(")"):  # a small tuple: 1-byte count
            count = data[pos] if pos < end else 0
            pos += 1
            for _ in range(count):
                pos = skip(pos, depth + 1)
        elif code in _COUNTED:
            count = size(pos)
            pos += 4
            if not 0 <= count <= end - pos:
                raise ValueError("count")
            for _ in range(count):
                pos = skip(pos, depth + 1)
        elif code == ord("{"):
            while pos < end and data[pos] != ord("0"):
                pos = skip(skip(pos, depth + 1), depth + 1)
            pos += 1
        else:
            raise ValueError(f"type {code!r}")
        if pos > end:
            raise ValueError("short")
        return pos

    try:
        skip(0, 0)
    except (ValueError, RecursionError):
        return False
    return True


def read_request(data: bytes) -> dict[str, Any] | None:
    """The request in one datagram, or None if it is not a marshalled dict with a string
    "token" (nothing can be answered to it). Other fields are checked by `malformed`."""
    if not well_formed(data):
        return None
    try:
        request = marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        return None
    if not isinstance(request, dict) or not isinstance(request.get("token"), str):
        return None
    request.setdefault("v", None)
    request.setdefault("daemon", None)
    return request


def malformed(request: dict[str, Any]) -> str | None:
    """What is wrong with a request's fields, or None: "argv" a list of strings, "env" a dict
    of strings, "cwd" an absolute path without a NUL, "columns" a positive int or absent. What
    argv words and the environment hold is checked as for any submit, by the same code
    (`workbench.queue.spec.check_exec_strings` and `check_environment`: exit 2 naming them)."""
    argv, env, cwd = request.get("argv"), request.get("env"), request.get("cwd")
    columns = request.get("columns")
    if not isinstance(argv, list) or not all(isinstance(word, str) for word in argv):
        return "argv"
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        return "env"
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        return "cwd"
    if columns is not None and (type(columns) is not int or not 0 < columns < 100_000):
        return "columns"
    if "\0" in cwd:
        return "a NUL character in cwd"
    return None
