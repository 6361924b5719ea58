"""The local executor: each job runs under a forked wrapper that leads its own session, puts the
job in a cgroup (or reaps its orphans as a child subreaper), writes its output to a rotating log,
ends the job when its main process exits (stopping leftovers), and records how it ended."""

from __future__ import annotations

import os
import resource
import selectors
import signal
import time
from collections.abc import Callable
from pathlib import Path

from workbench.daemon import runner
from workbench.daemon.executors import Ended, Handle, Launch, LaunchError
from workbench.daemon.executors import containment as cg
from workbench.daemon.logs import RotatingLog

CANCEL_FILE = "cancel"  # the grace in seconds for a cancel the daemon asked for (SIGUSR1)
_CHUNK = 65536
_FULL_DISK_RETRY_S = 1.0


class LocalExecutor:
    """Runs jobs on this machine. `containment`: "auto" | "cgroup" | "subreaper" (see
    `containment.cgroup_base`). Must be used from a single-threaded process: `start` forks."""

    name = "local"

    def __init__(self, containment: str = "auto"):
        self.cgroup_root, self.containment = cg.cgroup_base(containment)

    def describe(self) -> str:
        return f"local executor, containment: {self.containment}"

    def _cgroup(self, token: str) -> Path | None:
        return None if self.cgroup_root is None else self.cgroup_root / token

    # ---- start and find ------------------------------------------------------------------

    def start(self, launch: Launch) -> Handle:
        """Fork the wrapper. The wrapper records itself (`wrapper.json`, with the token) before it
        lets go of anything it inherited from the daemon (the daemon's lock among them), so once a
        new daemon holds the lock, every wrapper of the old one has its record (see `find`)."""
        if not os.path.isdir(launch.cwd):
            raise LaunchError(f"working directory {launch.cwd} does not exist")
        run_dir = launch.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (runner.EXIT_FILE, runner.FAILURE_FILE, runner.WRAPPER_FILE, CANCEL_FILE):
            try:
                (run_dir / stale).unlink()
            except FileNotFoundError:
                pass
        cgroup_dir = self._cgroup(launch.token)
        if cgroup_dir is not None:
            try:
                cgroup_dir.mkdir()
            except OSError:
                cgroup_dir = None
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                start_time = runner.process_start_time(os.getpid())
                runner.write_wrapper(
                    run_dir, runner.WrapperRecord(launch.token, os.getpid(), start_time)
                )
                os.closerange(3, os.sysconf("SC_OPEN_MAX"))
                code = _wrapper_main(launch, cgroup_dir)
            except BaseException:
                import traceback

                traceback.print_exc()  # to the daemon's log: the wrapper itself failed
            finally:
                os._exit(code)
        return Handle(launch.token, run_dir, pid, runner.process_start_time(pid))

    def find(self, token: str, run_dir: Path) -> Handle | None:
        record = runner.read_wrapper(run_dir)
        if record is None or record.token != token:
            return None
        return Handle(token, run_dir, record.pid, record.start_time)

    def adopt(self, handle: Handle) -> bool:
        return handle.pid is not None and runner.same_process(handle.pid, handle.start_time)

    def watch_fd(self, handle: Handle) -> int | None:
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
            status = runner.read_exit(handle.run_dir)
            if status is not None:
                self._cleanup(handle)
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
        return cg.signal_each(self.job_pids(handle), sig)

    def cancel(self, handle: Handle, grace_s: float) -> None:
        """Ask the wrapper (SIGUSR1) to stop the job: it sends SIGTERM to every process, and
        SIGKILL after `grace_s`. Without a live wrapper, every process is killed at once."""
        if not self.adopt(handle):
            self.stop_all(handle)
            return
        assert handle.pid is not None
        try:
            (handle.run_dir / CANCEL_FILE).write_text(f"{grace_s}")
        except OSError:
            pass  # the wrapper then uses the grace it was started with
        try:
            os.kill(handle.pid, signal.SIGUSR1)
        except ProcessLookupError:
            self.stop_all(handle)

    def stop_all(self, handle: Handle) -> int:
        pids = self.job_pids(handle)
        cgroup_dir = self._cgroup(handle.token)
        if cgroup_dir is not None:
            cg.cgroup_kill(cgroup_dir)
        cg.signal_each(pids, signal.SIGKILL)
        if handle.pid is not None and self.adopt(handle):
            cg.signal_each([handle.pid], signal.SIGKILL)
        return len(pids)

    def log_path(self, handle: Handle) -> Path:
        return handle.run_dir / runner.LOG_FILE


# ---- the wrapper (runs in the forked child) ------------------------------------------------

_cancel_requested: list[bool] = [False]


def _on_cancel(signum: int, frame: object) -> None:
    _cancel_requested[0] = True


def _ignore(signum: int, frame: object) -> None:
    pass


def _exec_job(launch: Launch, cgroup_dir: Path | None, write_fd: int) -> None:
    """In the job's process: join the cgroup, wire the output, enter the working directory,
    exec. Never returns; a failure to start is written to the log and `failure` (exit 127)."""
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if cgroup_dir is not None:
            try:
                (cgroup_dir / "cgroup.procs").write_text(str(os.getpid()))
            except OSError:
                pass  # the wrapper also tracks its descendants
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        try:
            os.chdir(launch.cwd)
        except OSError as error:
            _start_failed(launch, f"working directory {launch.cwd}: {error.strerror}")
        env = {**launch.env, runner.TOKEN_ENV: launch.token}
        try:
            os.execvpe(launch.argv[0], launch.argv, env)
        except OSError as error:
            _start_failed(launch, f"cannot start {launch.argv[0]!r}: {error.strerror}")
    except BaseException as error:
        _start_failed(launch, f"cannot start {launch.argv[0]!r}: {error}")


def _start_failed(launch: Launch, message: str) -> None:
    try:
        os.write(2, f"[workbench] {message}\n".encode(errors="replace"))
        (launch.run_dir / runner.FAILURE_FILE).write_text(message)
    finally:
        os._exit(127)


def _reap(child: int) -> int | None:
    """Collect every finished child (orphans re-parented to us included); the main child's
    wait status if it was among them."""
    found = None
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return found
        if pid == 0:
            return found
        if pid == child:
            found = wait_status


def _read_cancel_grace(run_dir: Path, default: float) -> float:
    try:
        return max(0.0, float((run_dir / CANCEL_FILE).read_text().strip()))
    except (OSError, ValueError):
        return default


def _wrapper_main(launch: Launch, cgroup_dir: Path | None) -> int:
    """The wrapper: start the job, pump its output into the log, stop it on cancel (SIGUSR1),
    end it when its main process exits, stop what it left behind, record the end."""
    os.setsid()
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

    log = RotatingLog(launch.run_dir / runner.LOG_FILE, launch.log_cap_bytes)
    if launch.header:
        log.write(f"[workbench] {launch.header}\n".encode())
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_fd)
        _exec_job(launch, cgroup_dir, write_fd)
    os.close(write_fd)

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

    def pump(timeout: float | None) -> None:
        nonlocal pipe_open
        for key, _ in selector.select(timeout):
            if key.data == "output":
                data = os.read(read_fd, _CHUNK)
                if data:
                    log.write(data)
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
            kill_at = time.monotonic() + _read_cancel_grace(launch.run_dir, launch.kill_grace_s)
            cg.terminate(job_pids())
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
    cpu_s, peak = None, None
    if cgroup_dir is not None:
        cpu_s, peak = cg.cgroup_usage(cgroup_dir)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu_s is None:
        cpu_s = usage.ru_utime + usage.ru_stime
    if peak is None:
        peak = usage.ru_maxrss * 1024
    ended = runner.status_from_wait(main_status)
    status = runner.ExitStatus(
        ended.exit_code, ended.signal, ended.ended_at, cpu_s, peak, len(leftovers)
    )
    while True:  # a full disk must not lose the outcome: retry until it can be written
        try:
            runner.write_exit(launch.run_dir, status)
            break
        except OSError:
            time.sleep(_FULL_DISK_RETRY_S)
    if cgroup_dir is not None and not launch.keep_leftovers:
        cg.remove_cgroup(cgroup_dir)
    return 0


def _kill_all(cgroup_dir: Path | None, job_pids: Callable[[], list[int]]) -> None:
    """SIGKILL every process of the job, then collect them (bounded wait)."""
    if cgroup_dir is not None:
        cg.cgroup_kill(cgroup_dir)
    cg.signal_each(job_pids(), signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        _reap(-1)
        if not job_pids():
            return
        time.sleep(0.01)
