"""The queue end to end: a real daemon in a temporary home, real subprocesses."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import stop_daemon, wait_for, wait_state, workbench

from workbench.daemon.client import Client, ensure_daemon
from workbench.daemon.link import lock_holder
from workbench.db.store import JobRequest, Resources, Store, StoreError
from workbench.paths import Home
from workbench.queue.requests import build_request


def command(client: Client, argv: list[str], **extra) -> int:  # type: ignore[no-untyped-def]
    table = {"kind": "command", "argv": argv}
    after = extra.pop("after", ())
    table.update(extra)
    request = build_request(table, Path.cwd(), "test", after=tuple(after))
    return client.submit(request)


def fast_config(home: Home, **values: str) -> None:
    lines = ["[daemon]", 'kill_grace = "1s"'] + [f'{k} = "{v}"' for k, v in values.items()]
    home.config.write_text("\n".join(lines) + "\n")


def test_lifecycle_success_and_failure_with_history(client: Client) -> None:
    ok = command(client, ["sh", "-c", "echo out; echo err >&2"])
    bad = command(client, ["sh", "-c", "exit 3"])
    assert wait_state(client, ok, "succeeded").exit_code == 0
    failed = wait_state(client, bad, "failed")
    assert failed.exit_code == 3
    assert failed.reason == "exited with code 3"
    assert [e.state for e in client.store.events(ok)] == [
        "queued",
        "starting",
        "running",
        "succeeded",
    ]
    log = (client.home.run_dir(ok) / "log").read_text()
    assert "out" in log and "err" in log


def test_environment_cwd_and_devices_captured_at_submit(client: Client, tmp_path: Path) -> None:
    script = "import os, sys; print(os.getcwd()); print(os.environ['MY_VAR']); print(repr(os.environ['CUDA_VISIBLE_DEVICES'])); print(os.environ['CUDA_DEVICE_ORDER']); print(sys.stdin.read() == '')"
    request = build_request(
        {"kind": "command", "argv": [sys.executable, "-c", script]},
        tmp_path,
        "test",
        env={**os.environ, "MY_VAR": "captured"},
    )
    job_id = client.submit(request)
    wait_state(client, job_id, "succeeded")
    lines = (client.home.run_dir(job_id) / "log").read_text().splitlines()
    assert lines == [str(tmp_path), "captured", "''", "PCI_BUS_ID", "True"]


def test_cancel_kills_grandchildren(client: Client, home: Home) -> None:
    fast_config(home)
    job_id = command(client, ["sh", "-c", "sleep 300 & sleep 300 & wait"])
    job = wait_state(client, job_id, "running")
    wait_for(
        lambda: len(psutil.Process(job.pid).children(recursive=True)) >= 3, what="grandchildren"
    )
    family = [p.pid for p in psutil.Process(job.pid).children(recursive=True)]
    assert client.control(job_id, "cancel") == "cancelling"
    ended = wait_state(client, job_id, "cancelled")
    assert "cancelled" in (ended.reason or "")
    wait_for(
        lambda: (
            not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in family)
        ),
        what="every process of the job to be gone",
    )


def test_cancel_escalates_to_sigkill_after_the_grace(client: Client, home: Home) -> None:
    fast_config(home)
    job_id = command(
        client, ["sh", "-c", "trap '' TERM; echo ready; while true; do sleep 0.1; done"]
    )
    wait_for(
        lambda: (
            (client.home.run_dir(job_id) / "log").exists()
            and "ready" in (client.home.run_dir(job_id) / "log").read_text()
        ),
        what="job ready",
    )
    started = time.monotonic()
    client.control(job_id, "cancel")
    ended = wait_state(client, job_id, "cancelled", timeout=15)
    assert time.monotonic() - started >= 0.9
    assert "SIGKILL" in (ended.reason or "")


def test_pause_really_stops_the_process_and_resume_continues(client: Client) -> None:
    job_id = command(client, ["sh", "-c", "sleep 30"])
    job = wait_state(client, job_id, "running")
    # The wrapper forks the command a moment after the job turns running; a pause in that
    # window stops the wrapper first, and the command only starts once resumed.
    child = wait_for(lambda: psutil.Process(job.pid).children(), what="the job under its wrapper")[
        0
    ]
    client.control(job_id, "pause")
    wait_state(client, job_id, "paused")
    wait_for(lambda: child.status() == psutil.STATUS_STOPPED, what="the process to be stopped")
    client.control(job_id, "resume")
    wait_state(client, job_id, "running")
    wait_for(lambda: child.status() != psutil.STATUS_STOPPED, what="the process to continue")
    client.control(job_id, "cancel")
    wait_state(client, job_id, "cancelled")


def test_paused_queued_job_is_held_until_resumed(client: Client) -> None:
    request = build_request({"kind": "command", "argv": ["true"]}, Path.cwd(), "test", paused=True)
    job_id = client.submit(request)
    time.sleep(0.3)
    assert client.store.get(job_id).state == "paused"
    client.control(job_id, "resume")
    wait_state(client, job_id, "succeeded")


def test_dependencies_of_every_kind(client: Client) -> None:
    first = command(client, ["sh", "-c", "sleep 0.3; exit 1"])
    on_ok = command(client, ["true"], after=[(first, "ok")])
    on_any = command(client, ["true"], after=[(first, "any")])
    on_fail = command(client, ["true"], after=[(first, "fail")])
    chained = command(client, ["true"], after=[(on_ok, "ok")])
    assert client.store.get(on_ok).state == "queued"
    wait_state(client, first, "failed")
    assert wait_state(client, on_ok, "blocked").reason == f"dependency {first} failed"
    wait_state(client, on_any, "succeeded")
    wait_state(client, on_fail, "succeeded")
    assert wait_state(client, chained, "blocked").reason == f"dependency {on_ok} blocked"
    # Retrying the blocked job's cause puts the chain back in the queue.
    client.control(first, "retry")
    assert client.store.get(on_ok).state == "queued"
    assert client.store.get(chained).state == "queued"


def test_automatic_retries_then_success(client: Client, tmp_path: Path) -> None:
    marker = tmp_path / "count"
    script = (
        f"n=$(cat {marker} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {marker}; [ $n -ge 3 ]"
    )
    job_id = command(client, ["sh", "-c", script], retries=3)
    # What `workbench wait` and `--batch` do: stop at the first settled state. A failed attempt
    # with retries left is queued again in the same transaction, so it is never seen settled.
    [job] = client.wait([job_id], timeout_s=60)
    assert job.state == "succeeded" and job.attempt == 3
    events = client.store.events(job_id)
    assert [e.state for e in events].count("failed") == 2  # each failed attempt is on record
    reasons = [e.reason for e in events]
    # Each retry backs off (1 s, then 2 s) and says so.
    assert (
        "retrying in 1s (attempt 2 of 4); automatic retry 1/3 after it exited with code 1"
        in reasons
    )
    assert (
        "retrying in 2s (attempt 3 of 4); automatic retry 2/3 after it exited with code 1"
        in reasons
    )
    log = (client.home.run_dir(job_id) / "log").read_text()
    assert "[workbench] attempt 2 of 4 started" in log and "[workbench] attempt 3 of 4" in log


def test_retries_run_out(client: Client) -> None:
    job_id = command(client, ["false"], retries=1)
    [job] = client.wait([job_id], timeout_s=60)
    assert job.state == "failed" and job.attempt == 2


def test_time_limit_fails_the_job(client: Client, home: Home) -> None:
    fast_config(home)
    job_id = command(client, ["sleep", "30"], time_limit="1s")
    job = wait_state(client, job_id, "failed", timeout=15)
    assert job.reason == "time limit of 1.0s exceeded"
    log = (home.run_dir(job_id) / "log").read_text()
    assert log == "[workbench] stopping: time limit of 1.0s exceeded\n"


def test_log_is_capped_by_rotation_and_keeps_the_latest_output_whole(
    client: Client, home: Home
) -> None:
    fast_config(home, log_cap="64KiB")
    script = "for i in range(20000): print(f'line {i:06d} ' + 'x' * 40)"
    job_id = command(client, [sys.executable, "-c", script])
    wait_state(client, job_id, "succeeded")
    run_dir = client.home.run_dir(job_id)
    kept = (run_dir / "log.1").read_bytes() + (run_dir / "log").read_bytes()
    assert len(kept) <= 64 * 1024
    lines = kept.decode().splitlines()[1:]  # the oldest kept line may start mid-line
    numbers = [int(line.split()[1]) for line in lines]
    assert numbers == list(range(numbers[0], 20000))  # no gap, no repeat, ends at the end
    assert numbers[0] > 0  # the oldest output was dropped


def test_group_parallel_limit(client: Client) -> None:
    client.store.set_group("one", 1)
    ids = [command(client, ["sleep", "0.4"], group="one") for _ in range(3)]
    jobs = client.wait(ids, timeout_s=20)
    assert all(j.state == "succeeded" for j in jobs)
    spans = sorted((j.started_at, j.ended_at) for j in jobs)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 0.05  # never two at once


def test_drain_mode_starts_nothing_new(client: Client) -> None:
    client.store.set_draining(True)
    job_id = command(client, ["true"])
    wait_for(
        lambda: client.store.get(job_id).reason == "drain mode: nothing new starts",
        what="drain reason",
    )
    client.store.set_draining(False)
    client.nudge()
    wait_state(client, job_id, "succeeded")


def test_priority_orders_the_queue(client: Client) -> None:
    client.store.set_group("serial", 1)
    blocker = command(client, ["sleep", "0.5"], group="serial")
    wait_state(client, blocker, "running")
    low = command(client, ["true"], group="serial")
    high = command(client, ["true"], group="serial", priority=10)
    jobs = client.wait([low, high], timeout_s=20)
    assert jobs[1].started_at < jobs[0].started_at


def test_gpu_job_without_gpu_waits_with_reason(client: Client) -> None:
    job_id = command(client, ["true"], gpus=1)
    wait_for(
        lambda: client.store.get(job_id).reason == "no GPU on this machine", what="no GPU reason"
    )
    assert client.store.get(job_id).state == "queued"
    listing = workbench("ls", "--json")
    assert json.loads(listing.stdout)[0]["reason"] == "no GPU on this machine"


def test_rm_and_retry_rules(client: Client) -> None:
    job_id = command(client, ["sleep", "30"])
    wait_state(client, job_id, "running")
    with pytest.raises(ValueError, match="cancel it before removing it"):
        client.control(job_id, "rm")
    with pytest.raises(ValueError, match="only failed, cancelled or blocked"):
        client.control(job_id, "retry")
    client.control(job_id, "cancel")
    wait_state(client, job_id, "cancelled")
    assert client.control(job_id, "rm") == "removed"
    assert client.store.find(job_id) is None


def _submit_many(home: str, count: int, tag: str) -> subprocess.Popen[str]:
    code = (
        "import sys; from pathlib import Path\n"
        "from workbench.daemon.client import Client\n"
        "from workbench.queue.requests import build_request\n"
        "c = Client(start_daemon=False)\n"
        f"for i in range({count}):\n"
        f"    c.store.submit(build_request({{'kind': 'command', 'argv': ['true'], 'name': '{tag}-%d' % i}}, Path('.'), 'x', env={{}}, paused=True))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], env={**os.environ, "WORKBENCH_HOME": home}, text=True
    )


def test_two_clients_submitting_500_each_lose_nothing(home: Home) -> None:
    Store.open(home.state_db).close()
    procs = [_submit_many(str(home.root), 500, tag) for tag in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    store = Store.open(home.state_db)
    names = {j.name for j in store.list_jobs()}
    assert len(names) == 1000
    assert {f"a-{i}" for i in range(500)} | {f"b-{i}" for i in range(500)} == names


def test_daemon_kill9_then_restart_readopts_and_loses_nothing(
    client: Client, home: Home, tmp_path: Path
) -> None:
    gate = tmp_path / "go"
    running = command(
        client, ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done; echo finished; exit 7"]
    )
    job = wait_state(client, running, "running")
    client.store.set_draining(True)
    queued = command(client, ["true"])
    daemon_pid = lock_holder(home)
    assert daemon_pid
    os.kill(daemon_pid, signal.SIGKILL)
    wait_for(lambda: not lock_holder(home), what="the daemon to die")
    assert psutil.pid_exists(job.pid)  # the job outlives its daemon
    gate.touch()
    wait_for(
        lambda: (home.run_dir(running) / "exit.json").exists(), what="the job to finish unwatched"
    )
    client.store.set_draining(False)
    ensure_daemon(home)
    ended = wait_state(client, running, "failed")
    assert ended.exit_code == 7 and ended.reason == "exited with code 7"
    assert "finished" in (home.run_dir(running) / "log").read_text()
    wait_state(client, queued, "succeeded")


def test_restarted_daemon_follows_a_still_running_job_to_its_end(
    client: Client, home: Home, tmp_path: Path
) -> None:
    gate = tmp_path / "go"
    job_id = command(client, ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done; exit 0"])
    wait_state(client, job_id, "running")
    os.kill(lock_holder(home) or 0, signal.SIGKILL)
    wait_for(lambda: not lock_holder(home), what="the daemon to die")
    ensure_daemon(home)
    time.sleep(0.3)
    assert client.store.get(job_id).state == "running"  # re-adopted, not failed
    gate.touch()
    wait_state(client, job_id, "succeeded")


def test_job_whose_process_vanished_is_failed_with_a_reason(client: Client, home: Home) -> None:
    job_id = command(client, ["sleep", "30"])
    job = wait_state(client, job_id, "running")
    os.kill(lock_holder(home) or 0, signal.SIGKILL)
    wait_for(lambda: not lock_holder(home), what="the daemon to die")
    os.kill(job.pid, signal.SIGKILL)  # the wrapper dies: no exit status recorded
    wait_for(
        lambda: not psutil.pid_exists(job.pid) or psutil.Process(job.pid).status() == "zombie",
        what="gone",
    )
    ensure_daemon(home)
    failed = wait_state(client, job_id, "failed")
    assert failed.reason is not None and failed.reason.startswith("lost:")
    assert "1 remaining process of the job stopped" in failed.reason  # the orphaned sleep


def test_truncated_state_file_is_refused_not_reset(client: Client, home: Home) -> None:
    for _ in range(30):
        command(client, ["true"], name="x" * 200)
    stop_daemon(home)
    client.close()
    size = home.state_db.stat().st_size
    with open(home.state_db, "r+b") as db:
        db.truncate(size // 2)
    before = home.state_db.read_bytes()
    result = workbench("daemon", "start")
    assert result.returncode == 3
    assert "cannot be read" in result.stderr and "state.db.bak" in result.stderr
    assert home.state_db.read_bytes() == before  # untouched, not replaced
    assert (home.root / "state.db.bak").exists()
    with pytest.raises(StoreError):
        Store.open(home.state_db, check=True)


def test_submit_refuses_bad_input_with_exit_2(home: Home) -> None:
    result = workbench("submit", "--gpus", "1.5", "--", "true")
    assert result.returncode == 2 and "gpus" in result.stderr
    result = workbench("submit", "--time-limit", "soon", "--", "true")
    assert result.returncode == 2 and "not a duration" in result.stderr
    result = workbench("submit", "--after", "999", "--", "true")
    assert result.returncode == 2 and "no such job" in result.stderr
    assert not home.state_db.exists() or Store.open(home.state_db).list_jobs() == []


def test_request_records_resources(client: Client) -> None:
    request = JobRequest(
        "x",
        "command",
        {"argv": ["true"]},
        "/",
        {},
        argv=["true"],
        resources=Resources(cpus=1, mem=1024),
    )
    job_id = client.submit(request)
    job = wait_state(client, job_id, "succeeded")
    assert job.cpus == 1 and job.mem == 1024 and job.granted_gpus == []
