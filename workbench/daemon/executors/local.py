"""The local executor: each job runs under a forked wrapper that leads its own session, puts the
job in a cgroup (or reaps its orphans as a child subreaper), writes its output to a rotating log,
ends the job when its main process exits (stopping leftovers), and records how it ended."""

from __future__ import annotations

import errno
import os
import resource
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from workbench import safefs
from workbench.daemon import runas, runner
from workbench.daemon.executors import Ended, Handle, Launch, LaunchError
from workbench.daemon.executors import containment as cg
from workbench.daemon.executors.launcher import read_frame, write_frame
from workbench.daemon.logs import RESERVE_SUFFIX, ROTATED_SUFFIX, RotatingLog
from workbench.daemon.stopping import CHECKPOINT_DIR, STOP_FILE
from workbench.paths import job_umask

CANCEL_FILE = "cancel"  # the grace in seconds for a cancel the daemon asked for (SIGUSR1)
_CHUNK = 65536
_FULL_DISK_RETRY_S = 1.0
_STOP_WAIT_S = 5.0  # how long stop_all waits for the killed processes to be gone
_END_RESERVE_BYTES = 256 * 1024  # held by the log from the start, for the drop marker and exit.json


class LocalExecutor:
    """Runs jobs on this machine. `containment`: "auto" | "cgroup" | "subreaper" (see
    `containment.cgroup_base`); `scope` names this home's folder of job cgroups. Must be used
    from a single-threaded process: `start` forks."""

    name = "local"

    def __init__(
        self, containment: str = "auto", scope: str = "default", hold_fds: tuple[int, ...] = ()
    ):
        """`hold_fds`: descriptors (the daemon's lock) the launcher and each wrapper keep open
        until the wrapper has recorded itself, so whoever next takes the lock finds it."""
        self.cgroup_root, self.containment = cg.cgroup_base(containment, scope)
        self.hold_fds = hold_fds
        self._launcher: subprocess.Popen[bytes] | None = None

    def describe(self) -> str:
        """One line: the executor and the containment in use (and why, for a fallback)."""
        return f"local executor, containment: {self.containment}"

    def _cgroup(self, token: str) -> Path | None:
        return None if self.cgroup_root is None else self.cgroup_root / token

    # ---- start and find ------------------------------------------------------------------

    def start(self, launch: Launch) -> Handle:
        """One attempt (see `start_many`)."""
        result = self.start_many([launch])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def start_many(self, launches: list[Launch]) -> list[Handle | Exception]:
        """Fork each attempt's wrapper from the launcher process (started on first use), all
        requests sent before the replies are read. Each wrapper records itself (`wrapper.json`,
        with the token) before it lets go of the descriptors in `hold_fds`, so once a new daemon
        holds the lock, every wrapper has its record (`find`). Per attempt: a Handle, or a
        LaunchError (missing working directory) or OSError (no process could be made)."""
        results: list[Handle | Exception | None] = [None] * len(launches)
        pending: list[int] = []
        for index, launch in enumerate(launches):
            if os.path.isdir(launch.cwd):
                pending.append(index)
            else:
                results[index] = LaunchError(f"working directory {launch.cwd} does not exist")
        launcher = self._launcher_process() if pending else None
        if launcher is None:
            for index in pending:
                launch = launches[index]
                try:
                    pid, start_time = fork_wrapper(launch, self._cgroup(launch.token))
                    results[index] = Handle(launch.token, launch.run_dir, pid, start_time)
                except OSError as error:
                    results[index] = error
        elif pending:
            self._ask_launcher(launcher, launches, pending, results)
        return [r if r is not None else OSError(errno.EAGAIN, "not started") for r in results]

    def _ask_launcher(
        self,
        launcher: subprocess.Popen[bytes],
        launches: list[Launch],
        pending: list[int],
        results: list[Handle | Exception | None],
    ) -> None:
        assert launcher.stdin is not None and launcher.stdout is not None
        answered = 0
        try:
            for index in pending:
                launch = launches[index]
                write_frame(launcher.stdin.fileno(), (launch, self._cgroup(launch.token)))
            for index in pending:
                launch = launches[index]
                reply = read_frame(launcher.stdout.fileno())
                if reply is None:
                    break
                answered += 1
                if reply[0] == "ok":
                    results[index] = Handle(launch.token, launch.run_dir, int(reply[1]), reply[2])
                else:
                    code = reply[2] if len(reply) > 2 and reply[2] else errno.EAGAIN
                    results[index] = OSError(code, str(reply[1]))
        except OSError:
            pass
        if answered == len(pending):
            return
        # The launcher died with requests in flight: a wrapper it forked records itself at
        # once, so after a moment an attempt without a record never began. The next launch
        # starts a new launcher (the jobs' cgroups, and their parent, stay).
        self._stop_launcher()
        time.sleep(1.0)
        for index in pending[answered:]:
            launch = launches[index]
            found = self.find(launch.token, launch.run_dir)
            results[index] = found or OSError(errno.EAGAIN, "the job launcher stopped")

    def _launcher_process(self) -> subprocess.Popen[bytes] | None:
        if self._launcher is not None and self._launcher.poll() is None:
            return self._launcher
        try:
            self._launcher = subprocess.Popen(
                [sys.executable, "-m", "workbench.daemon.executors.launcher"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                pass_fds=self.hold_fds,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            )
        except OSError:
            self._launcher = None
        return self._launcher

    def close(self) -> None:
        """Stop the launcher and remove this home's empty job cgroups (running jobs are not
        affected: their cgroups are not empty)."""
        if self.cgroup_root is not None:
            cg.remove_empty_cgroups(self.cgroup_root, keep=set())
            cg.remove_cgroup(self.cgroup_root)
        self._stop_launcher()

    def launcher_pid(self) -> int | None:
        """The launcher's pid while it runs (tests kill it), else None."""
        launcher = self._launcher
        return launcher.pid if launcher is not None and launcher.poll() is None else None

    def _stop_launcher(self) -> None:
        """Close the launcher's pipes and wait for it (it exits when its stdin closes)."""
        launcher, self._launcher = self._launcher, None
        if launcher is None:
            return
        for stream in (launcher.stdin, launcher.stdout):
            if stream is not None:
                stream.close()
        try:
            launcher.wait(5)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()

    def find(self, token: str, run_dir: Path) -> Handle | None:
        """The attempt whose `wrapper.json` carries `token` (see the protocol; certain because
        the wrapper records itself before it releases the daemon's lock)."""
        record = runner.read_wrapper(run_dir)
        if record is None or record.token != token:
            return None
        if not _runs_as_folder_owner(record.pid, run_dir):
            # System mode: the record is the job owner's file, and the job knows its token. A
            # pid of another user's (a forged record) is not adopted: the daemon would signal it.
            return None
        return Handle(token, run_dir, record.pid, record.start_time)

    def adopt(self, handle: Handle) -> bool:
        """True if the wrapper is alive and is the same process (pid and start time)."""
        return handle.pid is not None and runner.same_process(handle.pid, handle.start_time)

    def watch_fd(self, handle: Handle) -> int | None:
        """A pidfd of the wrapper (readable once it exits); None if it is already gone."""
        if handle.pid is None:
            return None
        try:
            return os.pidfd_open(handle.pid)
        except OSError:
            return None

    # ---- endings ---------------------------------------------------------------------------

    def _wrapper_over(self, handle: Handle) -> tuple[bool, int | None]:
        """(is the wrapper gone, its wait status if it was our child and we collected it)."""
        assert handle.pid is not None
        try:
            done, wait_status = os.waitpid(handle.pid, os.WNOHANG)
        except ChildProcessError:
            try:
                os.kill(handle.pid, 0)  # launcher-forked wrappers are reaped at once: gone is gone
            except ProcessLookupError:
                return True, None
            except PermissionError:
                pass
            return not runner.same_process(handle.pid, handle.start_time), None
        if done == 0:
            return False, None
        return True, wait_status

    def poll(self, handles: list[Handle]) -> list[Ended]:
        """Ended attempts among `handles`. The wrapper is collected here, so each end is reported
        once; the caller keeps it until it has recorded it."""
        ended: list[Ended] = []
        for handle in handles:
            if handle.pid is None:
                continue
            over, wait_status = self._wrapper_over(handle)
            if not over:
                continue
            status = runner.read_exit(handle.run_dir, handle.token)
            if status is not None:
                self._cleanup(handle)  # the wrapper left it by exiting (moving costs more)
                ended.append(Ended(handle, status))
                continue
            how = "ended"
            died = runner.ExitStatus(None, signal.SIGKILL, time.time())
            if wait_status is not None:
                died = runner.status_from_wait(wait_status)
                how = died.describe()
            stopped = self.stop_all(handle)
            self._cleanup(handle)
            lost = (
                f"lost: its wrapper (pid {handle.pid}) {how} without recording how the job ended;"
                f" {stopped} remaining process{'es' if stopped != 1 else ''} of the job stopped"
            )
            ended.append(Ended(handle, died, lost=lost, stopped=stopped))
        return ended

    def _cleanup(self, handle: Handle) -> None:
        try:  # a wrapper killed before closing its log leaves the log's reserve behind
            safefs.unlink(handle.run_dir / (runner.LOG_FILE + RESERVE_SUFFIX))
        except OSError:
            pass
        cgroup_dir = self._cgroup(handle.token)
        if cgroup_dir is not None:
            cg.remove_cgroup(cgroup_dir)

    # ---- signals ---------------------------------------------------------------------------

    def job_pids(self, handle: Handle) -> list[int]:
        """Every live process of the attempt except its wrapper: the cgroup's members, the
        wrapper's descendants while it lives, and any process carrying the launch token."""
        pids: set[int] = set()
        cgroup_dir = self._cgroup(handle.token)
        if cgroup_dir is not None:
            pids.update(cg.cgroup_pids(cgroup_dir))
        wrapper_alive = self.adopt(handle)
        if wrapper_alive and handle.pid is not None:
            pids.update(cg.descendants(handle.pid))
        if not wrapper_alive or cgroup_dir is None:
            pids.update(cg.pids_with_token(handle.token))
        pids.discard(handle.pid or -1)
        pids.discard(os.getpid())
        return sorted(pids)

    def signal(self, handle: Handle, sig: int) -> int:
        """`sig` to every process of the job (see `job_pids`); how many got it."""
        return cg.signal_each(self.job_pids(handle), sig)

    def cancel(self, handle: Handle, grace_s: float, why: str | None = None) -> None:
        """Ask the wrapper (SIGUSR1) to stop the job: it writes `why` into the job's log, sends
        the job's stop signal (SIGTERM unless its spec says otherwise) to every process, and
        SIGKILL after `grace_s`. Without a live wrapper, every process is killed at once."""
        if not self.adopt(handle):
            self.stop_all(handle)
            return
        assert handle.pid is not None
        reason = " ".join((why or "").split())  # one line
        try:
            # Renamed into place: whatever the job left at that name (a FIFO) is replaced.
            safefs.write_atomic(handle.run_dir / CANCEL_FILE, f"{grace_s}\n{reason}".encode())
        except OSError:
            pass  # the wrapper then uses the grace it was started with
        try:
            os.kill(handle.pid, signal.SIGUSR1)
        except ProcessLookupError:
            self.stop_all(handle)

    def stop_all(self, handle: Handle) -> int:
        """SIGKILL the whole job (cgroup.kill where there is one) and its wrapper; returns how
        many job processes were found."""
        pids = self.job_pids(handle)
        cgroup_dir = self._cgroup(handle.token)
        if cgroup_dir is not None:
            cg.cgroup_kill(cgroup_dir)
        cg.signal_each(pids, signal.SIGKILL)
        if handle.pid is not None and self.adopt(handle):
            cg.signal_each([handle.pid], signal.SIGKILL)
        # A killed process is listed until it has run its exit (on a busy machine, a while),
        # and one caught in fork leaves a child the first look missed: look again until none
        # is left, so that the job is settled only once its processes are gone.
        deadline = time.monotonic() + _STOP_WAIT_S
        while time.monotonic() < deadline:
            left = self.job_pids(handle)
            if not left:
                break
            cg.signal_each(left, signal.SIGKILL)
            time.sleep(0.01)
        return len(pids)

    def log_path(self, handle: Handle) -> Path:
        """`runs/<id>/log` (rotated to `log.1`)."""
        return handle.run_dir / runner.LOG_FILE


def _runs_as_folder_owner(pid: int, run_dir: Path) -> bool:
    """Whether process `pid` runs as the owner of `run_dir` (a wrapper runs as its job's
    owner once it switched; in a per-user home both are the daemon's user). A process that is
    gone passes: `adopt` then finds it over."""
    try:
        folder = os.stat(run_dir, follow_symlinks=False).st_uid
        process = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return True
    return folder == process


# ---- the wrapper (runs in the forked child) ------------------------------------------------


_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND


class WrapperNotStarted(OSError):
    """The wrapper could not prepare its run folder or record itself (a full disk, no inodes
    left): it exited before the job began, so the attempt never ran. `errno` as the OSError."""


def fork_wrapper(launch: Launch, cgroup_dir: Path | None) -> tuple[int, float | None]:
    """Fork the wrapper of one attempt and wait until it has recorded itself (`wrapper_ready`);
    returns its pid and start time. Raises WrapperNotStarted when it could not."""
    pid, ready_fd = fork_wrapper_async(launch, cgroup_dir)
    return pid, wrapper_ready(pid, ready_fd)


def fork_wrapper_async(launch: Launch, cgroup_dir: Path | None) -> tuple[int, int]:
    """Fork the wrapper of one attempt; returns its pid and a descriptor to pass to
    `wrapper_ready`. The caller must be single-threaded. The wrapper prepares its run folder
    and log, records itself, says so on that descriptor (or why it could not, and exits: the
    job never starts), closes every inherited descriptor but stderr (where its own errors go),
    then runs `_wrapper_main`. SIGUSR1 (cancel) stays blocked until the wrapper's handler is
    in place: an early cancel waits, it does not kill."""
    read_fd, write_fd = os.pipe()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid != 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(write_fd)
        return pid, read_fd
    code = 1
    try:
        os.close(read_fd)
        try:
            if launch.uid is not None and launch.uid != os.geteuid():
                cgroup_dir = _become_owner(launch, cgroup_dir)
            cgroup_dir = _prepare(launch, cgroup_dir)
            # The log's inode now: a home out of inodes fails here, before the job begins.
            os.close(os.open(launch.run_dir / runner.LOG_FILE, _LOG_FLAGS, 0o600))
            start_time = runner.process_start_time(os.getpid())
            record = runner.WrapperRecord(
                launch.token, os.getpid(), start_time, launch.env.get("CUDA_VISIBLE_DEVICES")
            )
            runner.write_wrapper(launch.run_dir, record)
        except OSError as error:  # reported to the daemon, which queues the job again
            said = error.strerror or str(error)
            said += f": {error.filename}" if error.filename else ""
            os.write(write_fd, f"{error.errno or 0} {said}".encode()[:4000])
            os._exit(1)
        try:
            os.write(write_fd, b"ok")
        except OSError:
            # The launcher died before it heard (kill -9): the daemon was never told this
            # attempt began and, finding no record, queues the job again. Take the record back
            # and never start the job, or it would be reported lost (or run twice).
            try:
                os.unlink(launch.run_dir / runner.WRAPPER_FILE)
            except OSError:
                pass
            os._exit(1)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        code = _wrapper_main(launch, cgroup_dir)
    except BaseException:
        import traceback

        traceback.print_exc()  # to the daemon's log: the wrapper itself failed
    finally:
        os._exit(code)


def wrapper_ready(pid: int, ready_fd: int) -> float | None:
    """Wait for a wrapper forked by `fork_wrapper_async` to record itself; returns its start
    time. Raises WrapperNotStarted (with its errno and message) when it could not, or ended
    without a word."""
    try:
        parts: list[bytes] = []
        while chunk := os.read(ready_fd, 4096):
            parts.append(chunk)
            if parts == [b"ok"]:
                break
    finally:
        os.close(ready_fd)
    said = b"".join(parts).decode(errors="replace")
    if said == "ok":
        return runner.process_start_time(pid)
    number, _, message = said.partition(" ")
    code = int(number) if number.isdigit() else errno.EIO
    raise WrapperNotStarted(code, message or "the job's wrapper ended before it recorded itself")


_given_as_root: list[bool] = [False]  # root made the run folder and gave it to the owner
_joined_as_root: list[bool] = [False]  # the wrapper joined its cgroup before it became the owner
_memory_set_as_root: list[bool] = [False]  # and its memory.max was set then


def _become_owner(launch: Launch, cgroup_dir: Path | None) -> Path | None:
    """In the wrapper, as root, in system mode: give the run folder to the job's owner (made
    here if missing; its parent is root's), join the job's cgroup and set its memory limit
    (which only root may), then become the owner for good (`runas.become`). Returns the
    cgroup folder joined, or None. Raises OSError (RunAsError) when the owner is unknown or
    the switch fails: the job does not start."""
    assert launch.uid is not None
    gid = runas.user_gid(launch.uid)
    runas.give_run_dir(launch.run_dir, launch.uid, gid)
    _given_as_root[0] = True
    if cgroup_dir is not None:
        try:
            try:
                cgroup_dir.mkdir()
            except FileExistsError:
                pass
            (cgroup_dir / "cgroup.procs").write_text(str(os.getpid()))
            _joined_as_root[0] = True
            if launch.mem_bytes:
                _memory_set_as_root[0] = cg.set_memory_max(cgroup_dir, launch.mem_bytes)
        except OSError:
            cgroup_dir = None  # its processes are still found (subreaper)
    runas.become(launch.uid)
    return cgroup_dir


def _prepare(launch: Launch, cgroup_dir: Path | None) -> Path | None:
    """In the wrapper, before it records itself: the run folder without an earlier attempt's
    records, and the job's cgroup (None if it cannot be made)."""
    if not _given_as_root[0]:  # else root made it (runs/ is root's, opened by root alone)
        safefs.make_dir(launch.run_dir)  # a link in its place is removed, never written through
    safefs.remove_links(launch.run_dir)  # and so are links planted inside it (`log` -> elsewhere)
    for stale in (runner.EXIT_FILE, runner.FAILURE_FILE, CANCEL_FILE, STOP_FILE):
        safefs.unlink(launch.run_dir / stale)
    safefs.make_dir(launch.run_dir / CHECKPOINT_DIR)  # kept across restarts (the stop protocol)
    if cgroup_dir is not None:
        try:
            cgroup_dir.mkdir()
        except FileExistsError:
            pass
        except OSError:
            return None
    return cgroup_dir


_cancel_requested: list[bool] = [False]


def _on_cancel(signum: int, frame: object) -> None:
    _cancel_requested[0] = True


def _ignore(signum: int, frame: object) -> None:
    pass


_DEFAULT_IN_JOB = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGUSR1,
    signal.SIGCHLD,
)


def _find_program(name: str, env: dict[str, str]) -> str | None:
    """`name` as exec would find it with the job's own PATH (not the wrapper's)."""
    if "/" in name:
        return name
    for folder in env.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(folder or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _spawn_job(launch: Launch, write_fd: int, log: RotatingLog) -> int | None:
    """Start the job's main process in its own session (posix_spawn: no copy of the wrapper's
    memory), in the working directory, with stdin from /dev/null and stdout and stderr into the
    log pipe, and default signal handling. Returns its pid, or None when it cannot start (the
    reason is written to the log and to `failure`)."""
    try:
        os.chdir(launch.cwd)  # the job inherits the wrapper's working directory
    except OSError as error:
        _start_failed(launch, log, f"working directory {launch.cwd}: {error.strerror}")
        return None
    env = {**launch.env, runner.TOKEN_ENV: launch.token}
    program = _find_program(launch.argv[0], env)
    if program is None:
        _start_failed(launch, log, f"cannot start {launch.argv[0]!r}: command not found")
        return None
    previous_umask = os.umask(job_umask(launch.env))  # the job's files: the user's umask
    try:
        return os.posix_spawn(
            program,
            launch.argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, write_fd, 1),
                (os.POSIX_SPAWN_DUP2, write_fd, 2),
            ],
            setsid=True,
            setsigmask=(),
            setsigdef=_DEFAULT_IN_JOB,
        )
    except OSError as error:
        _start_failed(launch, log, f"cannot start {launch.argv[0]!r}: {error.strerror}")
        return None
    finally:
        os.umask(previous_umask)


def _start_failed(launch: Launch, log: RotatingLog, message: str) -> None:
    log.write(f"[workbench] {message}\n".encode(errors="replace"))
    try:
        safefs.write_bytes(launch.run_dir / runner.FAILURE_FILE, message.encode(errors="replace"))
    except OSError:
        pass
    return None


_reaped: dict[int, int] = {}  # the main process's wait status, once collected
_main_child: list[int] = [-1]


def _reap(child: int) -> int | None:
    """Collect every finished child (orphans re-parented to us included); the main child's
    wait status once it has been collected (now or earlier)."""
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        if pid == _main_child[0]:
            _reaped[pid] = wait_status
    return _reaped.get(child)


def _read_cancel(run_dir: Path, default: float) -> tuple[float, str]:
    """(the kill grace, why the job is stopped: "" if not said) from the cancel file."""
    try:
        text = safefs.read_bytes(run_dir / CANCEL_FILE, 4096).decode(errors="replace")
    except OSError:
        return default, ""
    first, _, why = text.partition("\n")
    try:
        grace = max(0.0, float(first.strip()))
    except ValueError:
        grace = default
    return grace, why.strip()


def _wrapper_main(launch: Launch, cgroup_dir: Path | None) -> int:
    """The wrapper: start the job, pump its output into the log, stop it on cancel (SIGUSR1),
    end it when its main process exits, stop what it left behind, record the end. The job leads
    its own session; the wrapper reaps (and so can find) every orphan the job leaves."""
    cg.set_child_subreaper()
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the wrapper outlives the job to record its status
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file size limit fails the write instead
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGUSR1, _on_cancel)
    signal.signal(signal.SIGCHLD, _ignore)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})  # a cancel sent early lands now

    log = RotatingLog(
        launch.run_dir / runner.LOG_FILE, launch.log_cap_bytes, reserve_bytes=_END_RESERVE_BYTES
    )
    if launch.header:
        log.write(f"[workbench] {launch.header}\n".encode())
    if cgroup_dir is not None and not _joined_as_root[0]:
        try:  # the wrapper joins first, so the job and everything it starts are inside
            (cgroup_dir / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            cgroup_dir = None  # its descendants are still found (subreaper)
    enforced = _memory_set_as_root[0]
    if cgroup_dir is not None and launch.mem_bytes and not _joined_as_root[0]:
        enforced = cg.set_memory_max(cgroup_dir, launch.mem_bytes)
    read_fd, write_fd = os.pipe()
    child = _spawn_job(launch, write_fd, log)
    os.close(write_fd)
    if child is None:
        os.close(read_fd)
        log.close()
        _record_end(launch, runner.ExitStatus(127, None, time.time()))
        return 0
    _main_child[0] = child

    def job_pids() -> list[int]:
        pids = set(cg.descendants(os.getpid()))
        if cgroup_dir is not None:
            pids.update(cg.cgroup_pids(cgroup_dir))
        pids.discard(os.getpid())
        return sorted(pids)

    selector = selectors.DefaultSelector()
    selector.register(read_fd, selectors.EVENT_READ, "output")
    selector.register(wake_r, selectors.EVENT_READ, "signal")
    pipe_open = True
    line_done = True  # the job's output so far ends with a newline (or is empty)

    def pump(timeout: float | None) -> None:
        nonlocal pipe_open, line_done
        for key, _ in selector.select(timeout):
            if key.data == "output":
                data = os.read(read_fd, _CHUNK)
                if data:
                    log.write(data)
                    line_done = data.endswith(b"\n")
                else:
                    selector.unregister(read_fd)
                    pipe_open = False
            else:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass

    main_status: int | None = None
    kill_at: float | None = None
    killed = False

    def handle_cancel() -> None:
        nonlocal kill_at, killed
        if _cancel_requested[0] and kill_at is None:
            grace, why = _read_cancel(launch.run_dir, launch.kill_grace_s)
            kill_at = time.monotonic() + grace
            if why:
                start = "" if line_done else "\n"
                log.write(f"{start}[workbench] stopping: {why}\n".encode(errors="replace"))
            pids = job_pids()
            cg.signal_each(pids, launch.stop_signal)
            cg.signal_each(pids, signal.SIGCONT)  # a stopped process acts on it once continued
        if kill_at is not None and not killed and time.monotonic() >= kill_at:
            killed = True
            _kill_all(cgroup_dir, job_pids)

    while main_status is None:
        timeout = 1.0 if kill_at is None or killed else max(0.0, kill_at - time.monotonic())
        pump(timeout)
        handle_cancel()
        main_status = _reap(child)

    # The main process is gone: the job is over. Stop what it left behind.
    leftovers = job_pids()
    if leftovers and not launch.keep_leftovers:
        cg.terminate(leftovers)
        grace_end = time.monotonic() + launch.kill_grace_s
        while job_pids() and time.monotonic() < grace_end:
            pump(0.05)
            _reap(child)
        if job_pids():
            _kill_all(cgroup_dir, job_pids)
    # What is still in the pipe belongs to the log; stop waiting once its writers are gone.
    drain_end = time.monotonic() + (0.2 if launch.keep_leftovers else 5.0)
    while pipe_open and time.monotonic() < drain_end:
        pump(0.05)
        _reap(child)
    log.close()
    cpu_s, peak, oom = None, None, 0
    if cgroup_dir is not None:
        cpu_s, peak = cg.cgroup_usage(cgroup_dir)
        oom = cg.oom_kills(cgroup_dir) if enforced else 0
    cpu_source = peak_source = "cgroup"
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu_s is None:
        cpu_s, cpu_source = usage.ru_utime + usage.ru_stime, "rusage"
    if peak is None:
        peak, peak_source = usage.ru_maxrss * 1024, "rusage"
    ended = runner.status_from_wait(main_status)
    status = runner.ExitStatus(
        ended.exit_code, ended.signal, ended.ended_at, cpu_s, peak, len(leftovers),
        cpu_source, peak_source, oom, enforced,
    )  # fmt: skip
    _record_end(launch, status)
    return 0


_SPACE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _record_end(launch: Launch, status: runner.ExitStatus) -> None:
    """Write exit.json; a full disk must not lose the outcome. The log gave back its reserve
    when it closed; if something else took that room, the job's older log generation goes
    next, and then it retries while the disk is full (the daemon sees the wrapper alive
    meanwhile). Any other error (the run folder was removed by `rm` or `prune`, or the home
    deleted) cannot heal by waiting: the wrapper gives up, and the daemon, if one still tracks
    the job, settles it as ended without a record."""
    older = launch.run_dir / (runner.LOG_FILE + ROTATED_SUFFIX)
    while True:
        try:
            runner.write_exit(launch.run_dir, status, launch.token)
            return
        except OSError as error:
            if error.errno not in _SPACE_ERRORS:
                return
            try:
                safefs.unlink(older)
                continue
            except OSError:
                pass
            time.sleep(_FULL_DISK_RETRY_S)


def _kill_all(cgroup_dir: Path | None, job_pids: Callable[[], list[int]]) -> None:
    """SIGKILL every process of the job (not the wrapper, which shares its cgroup), then
    collect them (bounded wait)."""
    cg.signal_each(job_pids(), signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        _reap(_main_child[0])
        if not job_pids():
            return
        time.sleep(0.01)
