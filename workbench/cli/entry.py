"""The `workbench` entry point. `submit` is first offered to a running daemon (it parses and
queues with the CLI's own code and answers with what to print, see `workbench.daemon.intake`),
so a submit imports no store, job model or argparse; everything else, and a submit no daemon
takes, runs the full CLI (`workbench.cli.main`)."""

from __future__ import annotations

import _socket  # socket.socket without the socket module's imports (selectors, enum classes)
import marshal  # loaded with the interpreter, where json costs a tenth of its start-up
import os
import select
import sys

from workbench.daemon.link import INTAKE_VERSION, MAX_SUBMISSION_BYTES, lock_holder
from workbench.paths import USER_UMASK_ENV, Home
from workbench.trust import UntrustedHome, check_daemon_process, check_home, check_socket

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

_LIVENESS_S = 0.25  # how often a waiting client checks that the daemon still runs
_GIVE_UP_S = 5.0
EXIT_UNTRUSTED = 3  # as the full CLI's exit for a home it cannot use  # an answer that has not come by then (lost, or a stalled daemon) is not awaited


def main(argv: Sequence[str] | None = None) -> int:
    """Run `workbench ARGS` (default: `sys.argv[1:]`); returns the exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    standard_streams()
    if not words and sys.stdin.isatty() and sys.stdout.isatty():
        return open_tui_fast()
    if words[:1] == ["submit"] and not _system_mode():
        try:
            code = quick_submit(words[1:])
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:  # the reader left (`workbench submit ... | head`)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        if code is not None:
            return code
    from workbench.cli.main import main as full_main

    return full_main(words)


def _system_mode() -> bool:
    """Whether a system daemon takes this user's submissions (team mode: the full CLI sends
    them to it, `workbench.cli.team`), so the per-user quick path is not taken."""
    from workbench.system import system_socket

    return system_socket() is not None


def standard_streams() -> None:
    """Give a standard stream the caller closed (`workbench ... <&-`, `>&-`) /dev/null instead:
    Python leaves it None (every `sys.stdin.read()` or `sys.stdout.write` then raised), and the
    file this process opens next would take its descriptor, so a job, or the daemon, started from
    here would write its output into a socket or a database file."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is not None:
            continue
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
        setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))  # noqa: SIM115


STARTING = b"\x1b[?1049h\x1b[2J\x1b[H gpu-workbench  starting the TUI...\r\n"
LEAVE_ALT_SCREEN = b"\x1b[?1049l"


def open_tui_fast() -> int:
    """`workbench` at a terminal: a line on the (alternate) screen at once, before Textual and
    the screens are imported (about half a second under load), then the TUI, which draws over
    it; the CLI's parser and store modules are never imported on the way. The daemon is started
    by the app after its first frame (`screens.app.run_app`)."""
    import importlib

    from workbench.paths import make_files_private
    from workbench.safetext import warn_if_not_utf8

    make_files_private()
    warn_if_not_utf8()
    fd = sys.stdout.fileno()
    os.write(fd, STARTING)
    try:
        code: int = importlib.import_module(
            "screens.app"
        ).run_app()  # the core never imports screens
        return code
    except BaseException:
        os.write(fd, LEAVE_ALT_SCREEN)  # a failure before Textual took the screen: show it
        raise


def _handed_over(words: list[str]) -> bool:
    """Whether the daemon may take this submit: not for help (printed here, at the terminal's
    width), which argparse shows for -h, --help or an abbreviation of it (--h, --he, --hel)
    anywhere among submit's own flags. (The daemon hands back any other help it finds.)"""
    for word in words:
        if word == "--":
            return True
        if word == "-h" or (len(word) >= 3 and "--help".startswith(word)):
            return False
    return True


def _columns() -> int:
    """The terminal width argparse wraps usage text to here, as `shutil.get_terminal_size`
    finds it ($COLUMNS, else the terminal on stdout, else 80), without importing shutil."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    stdout = sys.__stdout__
    try:
        return (os.get_terminal_size(stdout.fileno()).columns if stdout else 0) or 80
    except (AttributeError, ValueError, OSError):
        return 80


def quick_submit(words: list[str]) -> int | None:
    """Hand `submit WORDS` to this home's running daemon and print its answer; the exit code, or
    None when no daemon takes it (none runs, an older one, the request is too large, or the
    daemon could not read it): the caller then submits by itself, which starts a daemon."""
    if os.environ.get("WORKBENCH_NO_INTAKE") or not _handed_over(words):
        return None
    try:
        cwd = os.getcwd()
        home = Home.current()
    except (OSError, RuntimeError):
        return None  # the full path says what is wrong
    try:  # before anything is read or sent: the home, its lock and socket are ours alone
        check_home(home.root)
    except UntrustedHome as error:
        _write(sys.stderr, f"workbench: {error}\n")
        return EXIT_UNTRUSTED
    except OSError:
        return None
    daemon = lock_holder_or_none(home)
    if daemon is None or not home.intake_socket.exists():
        return None
    env = dict(os.environ)
    if USER_UMASK_ENV not in env:  # as `make_files_private` records it for the full path
        mask = os.umask(0o077)
        os.umask(mask)
        env[USER_UMASK_ENV] = f"{mask:03o}"
    token = os.urandom(16).hex()
    request = {
        "v": INTAKE_VERSION,
        "token": token,
        "daemon": daemon,
        "argv": words,
        "cwd": cwd,
        "env": env,
        "columns": _columns(),
    }
    data = marshal.dumps(request)
    if len(data) > MAX_SUBMISSION_BYTES:
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    try:
        try:
            # An abstract address the daemon answers to, named by the token: no later client
            # can have it, so the daemon's "still there?" check (below) is about us alone.
            sock.bind(f"\0workbench-submit-{token}")
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)  # who answers
            # Right before sending: the socket's file is made by whoever bound it, so one
            # owned by us was bound by us (a datagram socket has no SO_PEERCRED to ask).
            check_socket(home.root, home.intake_socket)
            check_daemon_process(home.root, daemon)
            sock.sendto(data, str(home.intake_socket))
        except UntrustedHome as error:
            _write(sys.stderr, f"workbench: {error}\n")
            return EXIT_UNTRUSTED
        except OSError:
            return None  # nothing listens (a daemon that just stopped): nothing was sent
        reply = _await_reply(sock, token, home, daemon)
    finally:
        sock.close()
    if reply is None or "fallback" in reply:
        # No answer (the daemon stopped, or has not answered for _GIVE_UP_S), or handed back.
        # The socket is closed now, and the daemon commits a job only after it checked that
        # its client still waits there: report the job if one was queued, else submit ourselves.
        return _after_daemon_stopped(home, token, words)
    return _print_reply(reply, words, home)


_CREDENTIALS_BYTES = 12  # struct ucred: pid, uid, gid (unix(7))


def _sender_uid(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The uid the kernel attached to a datagram (SCM_CREDENTIALS), None if none."""
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_CREDENTIALS and len(payload) >= 8:
            return int.from_bytes(payload[4:8], sys.byteorder)
    return None


def lock_holder_or_none(home: Home) -> int | None:
    """The running daemon's pid, or None (none runs, or the lock cannot be read)."""
    try:
        pid = lock_holder(home)
    except OSError:
        return None
    return pid if pid is not None and pid > 0 else None


def _await_reply(
    sock: _socket.socket, token: str, home: Home, daemon: int
) -> dict[str, Any] | None:
    """The daemon's answer to `token`; None if the daemon stopped, or gave no answer within
    `_GIVE_UP_S` (lost, or a daemon stalled: stopped with SIGSTOP, or waiting for the store's
    lock, which the full path then waits for itself)."""
    waited = 0.0
    while waited < _GIVE_UP_S:
        ready, _, _ = select.select([sock], [], [], _LIVENESS_S)
        if ready:
            try:
                data, ancillary, _, _ = sock.recvmsg(
                    MAX_SUBMISSION_BYTES, _socket.CMSG_SPACE(_CREDENTIALS_BYTES)
                )
                if _sender_uid(ancillary) != os.geteuid():
                    continue  # only our own daemon's answers count (a forged one is dropped)
                reply = marshal.loads(data)
            except (OSError, ValueError, EOFError, TypeError):
                continue  # an empty datagram: the daemon asks whether we still wait
            if isinstance(reply, dict) and (
                reply.get("token") == token or (reply.get("token") is None and "fallback" in reply)
            ):
                return reply  # only the daemon answers to this socket: an unread request is ours
            continue
        if lock_holder_or_none(home) != daemon:
            return None
        waited += _LIVENESS_S
    return None


def _queued_by_request(home: Home, token: str) -> int | None:
    """The job the daemon queued for this submission's token (its audit entry), or None. Read
    under the store's write lock, so a transaction the daemon had begun for it has ended."""
    from workbench.daemon.client import Client

    try:
        client = Client(home, start_daemon=False)
        try:
            with client.store.transaction():
                return client.store.submitted_by_request(token)
        finally:
            client.close()
    except Exception:
        return None  # the full path reports what is wrong with the store


def _after_daemon_stopped(home: Home, token: str, words: list[str]) -> int | None:
    """The daemon stopped, did not answer, or handed the submission back: if it queued the job
    (its audit entry carries the token), report that job; otherwise submit by ourselves."""
    job_id = _queued_by_request(home, token)
    if job_id is None:
        return None
    return _print_reply({"exit": 0, "job_id": job_id, "lost_reply": True}, words, home)


def _submit_flags(words: list[str]) -> dict[str, bool]:
    """--wait and --json among submit's own flags (before the command)."""
    from workbench.queue import submission

    args = submission.parse_args(submission.parser(), words)
    return {"wait": bool(args.wait), "json": bool(args.json)}


def _print_reply(reply: dict[str, Any], words: list[str], home: Home) -> int:
    """Print what the daemon said the CLI prints (or, when its answer was lost, what the CLI
    prints for the job it queued); wait for the job with --wait."""
    job_id = reply.get("job_id")
    if reply.get("ensure_home") or job_id is not None:
        try:  # where the full CLI opens its home: the warning if others can read it
            home.ensure()
        except (OSError, UntrustedHome):
            pass  # checked before sending; a change since is the next command's to report
    if reply.get("lost_reply") and job_id is not None:
        reply = {**reply, **_submit_flags(words), "stdout": f"{job_id}\n"}
        if reply["json"]:
            from workbench.cli.main import print_job_json

            print_job_json(int(job_id))
            reply["stdout"] = ""
    _write(sys.stdout, str(reply.get("stdout", "")))
    _write(sys.stderr, str(reply.get("stderr", "")))
    code = int(reply.get("exit", 1))
    if code == 0 and reply.get("wait") and job_id is not None:
        from workbench.cli.main import wait_submitted

        return wait_submitted(int(job_id), quiet=bool(reply.get("json")))
    return code


def _write(stream: Any, text: str) -> None:
    """Print `text` as the full CLI's `print(text, end="", file=stream)` would: through the
    stream's own encoding and error handler (stderr writes an undecodable byte of an argument
    as `\\udcXX`); a closed stream (None: started with `>&-`) falls back to stdout, as
    print's `file=None` does, and nothing is written if that is closed too."""
    target = stream if stream is not None else sys.stdout
    if text and target is not None:
        target.write(text)
        target.flush()
