"""The local executor on its own: containment (cgroup v2 and the subreaper fallback), jobs that end
with their main process, a lost wrapper, a missing working directory, a full disk under the log."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import remove_tree, wait_for

from workbench.daemon import runner
from workbench.daemon.executors import Ended, Handle, Launch, LaunchError
from workbench.daemon.executors import containment as cg
from workbench.daemon.executors.local import LocalExecutor

# One pytest-xdist worker runs these (`--dist loadgroup`): they share the default cgroup scope,
# which an executor's close() removes.
pytestmark = pytest.mark.xdist_group("cgroup-default-scope")

MODES = ["subreaper"] + (["cgroup"] if cg.cgroup_base("cgroup")[0] is not None else [])

# A process that leaves the job's session, one that leaves its process group, and a classic
# double-forked daemon (fork, setsid, fork, the middle one exits): all must belong to the job.
ESCAPES = (
    "import os, subprocess, sys, time\n"
    "subprocess.Popen(['bash', '-c', 'setsid sleep 1000 & sleep 1000'])\n"
    "subprocess.Popen(['sleep', '1000'], process_group=0)\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        time.sleep(1000)\n"
    "    os._exit(0)\n"
    "print('started', flush=True)\n"
    "time.sleep(1000)\n"
)


@pytest.fixture(params=MODES)
def executor(request: pytest.FixtureRequest) -> Iterator[LocalExecutor]:
    made = LocalExecutor(request.param)
    assert (made.cgroup_root is not None) == (request.param == "cgroup"), made.describe()
    yield made
    made.close()


def launch(run_dir: Path, argv: list[str], **extra: object) -> Launch:
    values: dict[str, object] = {
        "job_id": 1,
        "token": uuid.uuid4().hex,
        "argv": argv,
        "env": dict(os.environ),
        "cwd": str(run_dir.parent),
        "run_dir": run_dir,
        "log_cap_bytes": 1024 * 1024,
        "kill_grace_s": 1.0,
    }
    values.update(extra)
    return Launch(**values)  # type: ignore[arg-type]


def wait_end(executor: LocalExecutor, handle: Handle, timeout: float = 15.0) -> Ended:
    found: list[Ended] = []

    def over() -> bool:
        found.extend(executor.poll([handle]))
        return bool(found)

    wait_for(over, timeout, what="the job to end")
    return found[0]


def log_text(run_dir: Path) -> str:
    try:
        return (run_dir / "log").read_text()
    except FileNotFoundError:
        return ""


def live_token_pids(token: str) -> list[int]:
    return cg.pids_with_token(token)


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "run"
    yield folder
    record = runner.read_wrapper(folder)
    if record is not None:
        cg.signal_each(cg.pids_with_token(record.token), signal.SIGKILL)


def test_job_ends_when_its_main_process_exits_and_leftovers_are_stopped(
    executor: LocalExecutor, run_dir: Path
) -> None:
    job = launch(run_dir, ["sh", "-c", "sleep 25 & echo done"])
    handle = executor.start(job)
    ended = wait_end(executor, handle, timeout=10)  # the leftover sleep would hold it 25 s
    assert ended.status.ok and ended.lost is None
    assert ended.status.leftovers == 1
    assert (run_dir / "log").read_text() == "done\n"
    assert live_token_pids(job.token) == []
    assert ended.status.cpu_s is not None and ended.status.peak_mem_bytes
    sources = (ended.status.cpu_source, ended.status.peak_mem_source)
    assert set(sources) <= {"cgroup", "rusage"} and None not in sources


@pytest.mark.parametrize(
    ("record", "usage"),
    [
        ('{"exit_code": 0, "cpu_s": 1.5, "cpu_source": "cgroup"}', (1.5, "cgroup", None, None)),
        (
            '{"exit_code": 0, "peak_mem_bytes": 2097152, "peak_mem_source": "rusage"}',
            (None, None, 2 << 20, "rusage"),
        ),
        ('{"cpu_s": NaN, "peak_mem_bytes": -1, "cpu_source": "x"}', (None, None, None, None)),
        ('{"cpu_s": "1", "peak_mem_bytes": 1e999, "peak_mem_source": 3}', (None, None, None, None)),
        ('{"exit_code": 0}', (None, None, None, None)),
    ],
)
def test_exit_record_usage_reaches_the_store_only_when_sound(
    tmp_path: Path, record: str, usage: tuple[object, ...]
) -> None:
    """The settle copies an exit record's usage into the store's columns: a value that is not a
    finite number >= 0, or a source that is neither cgroup nor rusage, is recorded as none."""
    (tmp_path / runner.EXIT_FILE).write_text(record)
    status = runner.read_exit(tmp_path)
    assert status is not None
    columns = status.usage_columns()
    assert (
        tuple(columns[k] for k in ("cpu_s", "cpu_source", "peak_mem_bytes", "peak_mem_source"))
        == usage
    )
    assert runner.read_exit(tmp_path / "missing") is None


def test_keep_leftovers_lets_them_outlive_the_job(executor: LocalExecutor, run_dir: Path) -> None:
    job = launch(run_dir, ["sh", "-c", "sleep 30 & echo done"], keep_leftovers=True)
    handle = executor.start(job)
    ended = wait_end(executor, handle, timeout=10)
    assert ended.status.ok and ended.status.leftovers == 1
    survivors = live_token_pids(job.token)
    assert len(survivors) == 1
    os.kill(survivors[0], signal.SIGKILL)


def test_cancel_stops_processes_that_left_the_group_or_session(
    executor: LocalExecutor, run_dir: Path
) -> None:
    job = launch(run_dir, [sys.executable, "-c", ESCAPES])
    handle = executor.start(job)
    wait_for(lambda: "started" in log_text(run_dir), what="the job to start")
    # python, bash, setsid sleep, sleep (own group), the daemon, the bash's sleep
    wait_for(lambda: len(live_token_pids(job.token)) >= 6, what="every process to be up")

    def sessions() -> set[int]:
        found = set()
        for pid in live_token_pids(job.token):
            try:
                found.add(os.getsid(pid))
            except ProcessLookupError:
                pass
        return found

    wait_for(lambda: len(sessions()) >= 3, what="processes in three sessions")  # they escaped
    executor.cancel(handle, 1.0)
    ended = wait_end(executor, handle)
    assert ended.status.signal == signal.SIGTERM
    wait_for(lambda: live_token_pids(job.token) == [], 5, what="no process of the job left")


def test_a_killed_wrapper_has_its_job_processes_stopped(
    executor: LocalExecutor, run_dir: Path
) -> None:
    job = launch(run_dir, [sys.executable, "-c", ESCAPES])
    handle = executor.start(job)
    wait_for(lambda: len(live_token_pids(job.token)) >= 6, what="every process to be up")
    assert handle.pid is not None
    os.kill(handle.pid, signal.SIGKILL)
    ended = wait_end(executor, handle)
    assert ended.lost is not None and "without recording how the job ended" in ended.lost
    assert ended.stopped >= 6
    wait_for(lambda: live_token_pids(job.token) == [], 5, what="no process of the job left")


def test_find_recognises_an_attempt_by_its_token(executor: LocalExecutor, run_dir: Path) -> None:
    job = launch(run_dir, ["sleep", "30"])
    handle = executor.start(job)
    found = wait_for(lambda: executor.find(job.token, run_dir), what="the wrapper record")
    assert (found.pid, found.token) == (handle.pid, job.token)
    assert executor.adopt(found)
    assert executor.find(uuid.uuid4().hex, run_dir) is None  # another attempt's token
    assert executor.find(job.token, run_dir.parent / "elsewhere") is None
    executor.cancel(handle, 1.0)
    wait_end(executor, handle)


def test_missing_working_directory_is_refused_naming_it(tmp_path: Path) -> None:
    executor = LocalExecutor("subreaper")
    job = launch(tmp_path / "run", ["true"], cwd=str(tmp_path / "gone"))
    with pytest.raises(LaunchError, match=str(tmp_path / "gone")):
        executor.start(job)
    executor.close()


def test_argv_that_is_not_utf8_runs_byte_exact(tmp_path: Path) -> None:
    executor = LocalExecutor("subreaper")
    arg = b"caf\xe9".decode(errors="surrogateescape")
    job = launch(tmp_path / "run", ["printf", "%s", arg])
    ended = wait_end(executor, executor.start(job))
    executor.close()
    assert ended.status.ok
    assert (tmp_path / "run" / "log").read_bytes() == b"caf\xe9"


def _small_filesystem(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
    )
    return done.returncode == 0


def fill(path: Path) -> None:
    """Write zeros to `path` until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_full_disk_drops_output_with_a_marker_and_keeps_the_job_alive(tmp_path: Path) -> None:
    """The log's disk fills while the job prints: the job is not killed (no SIGPIPE, no error),
    output is dropped with a marker once writing works again, and the outcome is recorded once
    there is space for it. With a small tmpfs where one can be mounted, else RLIMIT_FSIZE."""
    executor = LocalExecutor("subreaper")
    disk = tmp_path / "disk"
    run_dir = disk / "run"
    full, gate, phase = tmp_path / "full", tmp_path / "go", tmp_path / "phase"
    script = (
        "import pathlib, time\n"
        f"full, gate = pathlib.Path({str(full)!r}), pathlib.Path({str(gate)!r})\n"
        "while not full.exists():\n"
        "    time.sleep(0.02)\n"
        "for i in range(400):\n"
        "    print('x' * 1000, flush=True)\n"
        f"pathlib.Path({str(phase)!r}).write_text('1')\n"
        "while not gate.exists():\n"
        "    time.sleep(0.02)\n"
        "print('after the disk was freed', flush=True)\n"
    )
    mounted = _small_filesystem(disk, "256k")
    filler = disk / "filler"
    try:
        run_dir.mkdir()
        job = launch(run_dir, [sys.executable, "-c", script], cwd=str(tmp_path))
        handle = executor.start(job)
        assert handle.pid is not None
        wait_for(lambda: runner.read_wrapper(run_dir), what="the wrapper to start")
        if mounted:
            fill(filler)
        else:
            soft, hard = resource.prlimit(handle.pid, resource.RLIMIT_FSIZE)
            resource.prlimit(handle.pid, resource.RLIMIT_FSIZE, (4096, hard))
        full.write_text("1")
        wait_for(phase.exists, what="the job to print into a full disk")
        assert executor.poll([handle]) == []  # still running: not killed by its output
        if mounted:
            filler.unlink()
        else:
            resource.prlimit(handle.pid, resource.RLIMIT_FSIZE, (soft, hard))
        gate.write_text("go")
        ended = wait_end(executor, handle)
        assert ended.status.ok, ended
        log = (run_dir / "log").read_text()
        assert "bytes of output dropped" in log
        assert log.rstrip().endswith("after the disk was freed")
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def test_wrapper_gives_up_recording_when_its_run_folder_is_gone(
    executor: LocalExecutor, run_dir: Path
) -> None:
    """A wrapper retried exit.json forever on any error: with its run folder removed (`rm`,
    `prune`, a deleted home) it lingered as an orphan. Only a full disk is worth waiting out."""
    job = launch(run_dir, [sys.executable, "-c", "import time; time.sleep(2)"])
    handle = executor.start(job)
    wait_for(lambda: runner.read_wrapper(run_dir) is not None, what="the wrapper's record")
    remove_tree(run_dir)  # the wrapper may still write in it, as under `rm -rf`
    wait_for(
        lambda: not Path(f"/proc/{handle.pid}").exists(),
        timeout=15,
        what="the wrapper to exit",
    )
