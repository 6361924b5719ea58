"""What a job's run folder records about its process: the wrapper's identity and launch token, the
exit status with its resource use, and a job's own failure message; plus process identity checks."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

EXIT_FILE = "exit.json"
WRAPPER_FILE = "wrapper.json"  # {"token", "pid", "start_time"}: written by the wrapper first
LOG_FILE = "log"
FAILURE_FILE = "failure"  # a job may write why it failed here; it becomes the job's reason
TOKEN_ENV = "WORKBENCH_LAUNCH_TOKEN"  # in every job process's environment


@dataclass(frozen=True)
class ExitStatus:
    """How a job's main process ended (a code, or the signal that killed it), and what the job
    used: `cpu_s` CPU seconds (user + system) of all its processes, `peak_mem_bytes` its peak
    memory (the cgroup's peak where there is one, else the largest process's peak RSS), and
    `leftovers` how many processes were still running when the main process exited."""

    exit_code: int | None
    signal: int | None
    ended_at: float
    cpu_s: float | None = None
    peak_mem_bytes: int | None = None
    leftovers: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def describe(self) -> str:
        """`exited with code N` or `killed by SIGNAME`."""
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = str(self.signal)
            return f"killed by {name}"
        return f"exited with code {self.exit_code}"

    @property
    def code(self) -> int:
        """A shell-style code: the exit code, or 128 + signal."""
        if self.signal is not None:
            return 128 + self.signal
        return self.exit_code if self.exit_code is not None else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "signal": self.signal,
            "ended_at": self.ended_at,
            "cpu_s": self.cpu_s,
            "peak_mem_bytes": self.peak_mem_bytes,
            "leftovers": self.leftovers,
        }


def status_from_wait(wait_status: int) -> ExitStatus:
    """An ExitStatus from a `waitpid` status word."""
    if os.WIFSIGNALED(wait_status):
        return ExitStatus(None, os.WTERMSIG(wait_status), time.time())
    return ExitStatus(os.waitstatus_to_exitcode(wait_status), None, time.time())


def write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    """Write `value` as JSON under a temporary name, then rename: readers never see half a file.
    Raises OSError (e.g. ENOSPC) and leaves no partial file behind."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as out:
            out.write(json.dumps(value))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_exit(run_dir: Path, status: ExitStatus) -> None:
    """Record how the job ended (atomically; raises OSError if it cannot be written)."""
    write_json_atomic(run_dir / EXIT_FILE, status.to_json())


def read_exit(run_dir: Path) -> ExitStatus | None:
    """The status the wrapper recorded, or None if it never did (it was killed or is running)."""
    try:
        data = json.loads((run_dir / EXIT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return ExitStatus(
        data.get("exit_code"),
        data.get("signal"),
        float(data.get("ended_at", 0)),
        data.get("cpu_s"),
        data.get("peak_mem_bytes"),
        int(data.get("leftovers") or 0),
    )


@dataclass(frozen=True)
class WrapperRecord:
    """Who runs a job: the wrapper's pid and start time, and the launch token it was given."""

    token: str
    pid: int
    start_time: float | None


def write_wrapper(run_dir: Path, record: WrapperRecord) -> None:
    write_json_atomic(
        run_dir / WRAPPER_FILE,
        {"token": record.token, "pid": record.pid, "start_time": record.start_time},
    )


def read_wrapper(run_dir: Path) -> WrapperRecord | None:
    """The wrapper record of a run folder, None if there is none (or it is unreadable)."""
    try:
        data = json.loads((run_dir / WRAPPER_FILE).read_text())
        return WrapperRecord(str(data["token"]), int(data["pid"]), data.get("start_time"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_failure(run_dir: Path) -> str | None:
    """The message a job left in its run folder about why it failed, if any."""
    try:
        text = (run_dir / FAILURE_FILE).read_text(errors="replace").strip()
    except OSError:
        return None
    return text[:500] or None


def process_start_time(pid: int) -> float | None:
    """Start time of a live process (seconds since the epoch), None if it is gone or a zombie."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(proc.create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def same_process(pid: int, start_time: float | None) -> bool:
    """True if `pid` is alive and is the process that started at `start_time` (not a reused pid)."""
    now_start = process_start_time(pid)
    return now_start is not None and start_time is not None and abs(now_start - start_time) < 0.05


# ---- the previous wrapper, used by the supervisor until it moves onto the executor seam ----

import errno  # noqa: E402

_CHUNK = 65536


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a whole process group; False if the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


class _CappedLog:
    """Appends to the log; past the cap, drops the oldest part and says so at the top."""

    def __init__(self, path: Path, cap_bytes: int):
        self.path = path
        self.cap = max(cap_bytes, 4096)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = os.fstat(self.fd).st_size
        self.dropped = 0

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)
        self.size += len(data)
        if self.size > self.cap:
            self._trim()

    def _trim(self) -> None:
        keep = self.cap // 2
        with open(self.path, "rb") as src:
            src.seek(max(self.size - keep, 0))
            tail = src.read()
        newline = tail.find(b"\n")
        if 0 <= newline < len(tail) - 1:
            tail = tail[newline + 1 :]
        self.dropped += self.size - len(tail)
        header = (
            f"[workbench] log capped at {self.cap} bytes: {self.dropped} bytes of older output"
            " dropped\n"
        ).encode()
        tmp = self.path.with_name(self.path.name + ".trim")
        with open(tmp, "wb") as dst:
            dst.write(header + tail)
        os.replace(tmp, self.path)
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.size = len(header) + len(tail)

    def close(self) -> None:
        os.close(self.fd)


def _wrapper_main(
    argv: list[str], env: dict[str, str], cwd: str, run_dir: Path, log_cap: int, header: str | None
) -> int:
    """Runs in the forked wrapper: start the job, pump its output into the log, record its end."""
    os.setsid()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the wrapper outlives the job to record its status
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    log = _CappedLog(run_dir / LOG_FILE, log_cap)
    if header:
        log.write(f"[workbench] {header}\n".encode())
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(write_fd, 1)
            os.dup2(write_fd, 2)
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        except BaseException as error:
            os.write(2, f"[workbench] cannot start {argv[0]!r}: {error}\n".encode())
            os._exit(127)
    os.close(write_fd)
    while True:
        try:
            data = os.read(read_fd, _CHUNK)
        except OSError as error:
            if error.errno == errno.EINTR:
                continue
            break
        if not data:
            break
        log.write(data)
    while True:
        try:
            _, wait_status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    status = status_from_wait(wait_status)
    log.close()
    write_exit(run_dir, status)
    return 0


def spawn(
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    run_dir: Path,
    log_cap: int,
    header: str | None = None,
) -> int:
    """Start a job under its wrapper; returns the wrapper's pid, which is also the job's pgid.
    `header` is written to the log first (e.g. which attempt this is).

    The wrapper is forked (no exec) for a fast start, so the caller must be single-threaded.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (EXIT_FILE, FAILURE_FILE):
        try:
            (run_dir / stale).unlink()
        except FileNotFoundError:
            pass
    pid = os.fork()
    if pid == 0:
        code = 1
        # Drop every descriptor inherited from the daemon (its lock, socket, database): the
        # wrapper must not keep the daemon's lock alive after the daemon dies.
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        try:
            code = _wrapper_main(argv, env, cwd, run_dir, log_cap, header)
        except BaseException:
            import traceback

            traceback.print_exc()  # to the daemon's log: the wrapper itself failed
        finally:
            os._exit(code)
    return pid


def reap(pid: int) -> ExitStatus | None:
    """Collect a finished child without blocking (None if it is not ours or still running)."""
    try:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if done == 0:
        return None
    return status_from_wait(wait_status)
