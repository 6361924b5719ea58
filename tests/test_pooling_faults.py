"""GPU pooling under faults, end to end through the daemon against the fake NVML: the GPUs
changing under a waiting job, a daemon killed while it preempts, and the wait reasons shown."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
from conftest import wait_for, wait_state, workbench
from test_scheduler import GiB, fake_machine, gpu_held_by, submit_command

from workbench.daemon.client import Client, ensure_daemon
from workbench.daemon.link import lock_holder
from workbench.paths import Home
from workbench.queue.requests import build_request


def test_a_job_waiting_for_memory_held_outside_the_queue_starts_once_it_is_freed(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon re-planned only when a job changed state or a client woke it: memory that a
    process outside the queue freed left the job waiting (saying the memory was still held)
    until something unrelated happened."""
    home.config.write_text('[daemon]\nsample_interval = "0.2s"\n')
    held = [30 * GiB] * 10 + [0] * 100_000  # one element per sample: freed after 2 s
    fake_machine(
        tmp_path,
        monkeypatch,
        [
            {
                "memory_total": 48 * GiB,
                "memory_used": held,
                "processes": [{"pid": 812, "used_memory": held}],
            }
        ],
    )
    job_id = submit_command(client, tmp_path, ["true"], gpus=0.5, gpu_mem="40GiB")
    client.nudge()
    wait_for(
        # (a real process with that pid would be named with its owner: "held by root's pid 812")
        lambda: re.search(r"held by (\S+'s )?pid 812", client.store.get(job_id).reason or ""),
        what="the reason naming the process outside the queue",
    )
    assert wait_state(client, job_id, "succeeded", timeout=30).state == "succeeded"


def test_a_lost_gpu_makes_a_waiting_job_say_so_without_failing_it(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU that reports an error may come back (NVML errors can be passing): a job that needs
    it waits, saying which GPU is in error, instead of being told the machine has fewer GPUs
    (and, in `--batch`, failed as if it could never run)."""
    home.config.write_text('[daemon]\nsample_interval = "0.2s"\n')
    fake_machine(tmp_path, monkeypatch, [{}, {"lost_after": 5}])
    first = submit_command(client, tmp_path, ["sleep", "600"], gpus=1)
    wait_state(client, first, "running")
    table = {"kind": "command", "argv": ["true"], "gpus": 2}
    pair = client.submit(build_request(table, tmp_path, "test", fail_unrunnable=True))
    expected = "waiting for 2 GPUs (0 of 1 free; GPU 1 reports an error)"
    wait_for(lambda: client.store.get(pair).reason == expected, what="the lost GPU's reason")
    assert client.store.get(pair).state == "queued"
    client.control(pair, "cancel")
    client.control(first, "cancel")
    wait_state(client, first, "cancelled", timeout=30)


def test_a_preemption_survives_the_daemon_being_killed_while_the_job_stops(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why a job was sent SIGTERM lived only in the daemon's memory: a daemon killed during the
    kill grace left a job that its wrapper then killed, and the next daemon (with nothing left
    to reclaim for: the waiting job was cancelled meanwhile) recorded it as failed, spending
    its attempt. The preemption is written down before the signal is sent."""
    fake_machine(tmp_path, monkeypatch, [{}])
    home.config.write_text(
        '[daemon]\nkill_grace = "1s"\n\n[groups.vision]\nquota = 1\n\n[groups.sweep]\nquota = 0\n'
    )
    log = home.run_dir(1) / "log"
    stubborn = submit_command(
        client,
        tmp_path,
        ["sh", "-c", 'trap "echo got TERM" TERM; echo up; while true; do sleep 0.1; done'],
        gpus=1,
        group="sweep",
    )
    assert stubborn == 1
    wait_state(client, stubborn, "running")
    wait_for(lambda: log.exists() and "up" in log.read_text(), what="the job to trap SIGTERM")
    vision = submit_command(client, tmp_path, ["true"], gpus=1, group="vision")
    wait_for(lambda: "got TERM" in log.read_text(), what="the preemption's SIGTERM")
    os.kill(lock_holder(home) or 0, signal.SIGKILL)
    wait_for(lambda: not lock_holder(home), what="the daemon to die")
    client.control(vision, "cancel")  # nothing waits for the GPU any more
    token = client.store.get(stubborn).launch_token
    from workbench.daemon.executors import containment as cg

    assert token
    wait_for(lambda: not cg.pids_with_token(token), timeout=20, what="the wrapper's SIGKILL")
    ensure_daemon(home)
    client.nudge()
    wait_for(
        lambda: [e.event for e in client.store.events(stubborn)].count("preempt") == 1,
        what="the preempt event",
    )
    events = client.store.events(stubborn)
    assert "failed" not in [e.state for e in events]
    assert client.store.get(stubborn).attempt == 1
    client.control(stubborn, "cancel")
    wait_state(client, stubborn, {"cancelled"}, timeout=30)


def test_a_strict_stop_keeps_its_reason_across_a_daemon_killed_while_the_job_stops(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a job stopped for using more GPU memory than it reserved (`strict`): the
    next daemon said only that it was killed by a signal."""
    pid_file = tmp_path / "job.pid"
    fake_machine(tmp_path, monkeypatch, [gpu_held_by(pid_file)])
    home.config.write_text('[daemon]\nkill_grace = "1s"\n\n[scheduler]\nstrict = true\n')
    script = f'trap "echo got TERM" TERM; echo $$ > {pid_file}; while true; do sleep 0.1; done'
    job_id = submit_command(client, tmp_path, ["sh", "-c", script], gpus=0.25, gpu_mem="8GiB")
    log = home.run_dir(job_id) / "log"
    wait_for(lambda: log.exists() and "got TERM" in log.read_text(), what="the strict SIGTERM")
    os.kill(lock_holder(home) or 0, signal.SIGKILL)
    wait_for(lambda: not lock_holder(home), what="the daemon to die")
    from workbench.daemon.executors import containment as cg

    token = client.store.get(job_id).launch_token
    assert token
    wait_for(lambda: not cg.pids_with_token(token), timeout=20, what="the wrapper's SIGKILL")
    pid_file.unlink()
    ensure_daemon(home)
    ended = wait_state(client, job_id, {"failed", "succeeded", "cancelled"}, timeout=30)
    assert ended.state == "failed"
    assert ended.reason == (
        "uses 30.0 GiB of GPU memory, over its reservation of 8.0 GiB; stopped (strict)"
    )


def test_batch_says_why_a_stage_waits(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--batch` printed a stage as `queued` once, with the reason it had then, and never again
    while it waited: a stage whose dependency ended and which then waited for a GPU said only
    "waiting for dependency", in the progress lines and in `--json`."""
    fake_machine(tmp_path, monkeypatch, [{}])
    pipeline = tmp_path / "pipe.toml"
    pipeline.write_text(
        '[pipeline]\nname = "p"\n\n[[stage]]\nname = "first"\nkind = "command"\n'
        'argv = ["sleep", "1"]\n\n[[stage]]\nname = "gpu"\nkind = "command"\n'
        'argv = ["true"]\ngpus = 1\nafter = ["first"]\n'
    )
    expected = "waiting for 1 GPU (0 of 1 free)"
    for mode in ("plain", "json"):
        holder = submit_command(client, tmp_path, ["sleep", "4"], gpus=1)
        wait_state(client, holder, "running")
        result = workbench("--batch", str(pipeline), *(["--json"] if mode == "json" else []))
        assert result.returncode == 0, result.stderr
        if mode == "plain":
            assert f"[gpu] job {holder + 2} waits: {expected}" in result.stderr
        else:
            events = [json.loads(line) for line in result.stdout.splitlines()]
            waits = [e["reason"] for e in events if e["type"] == "wait" and e["stage"] == "gpu"]
            assert expected in waits


def test_every_queued_job_has_a_reason_that_holds_however_deep_in_the_queue(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs past a page where nothing started had no reason at all, then a blanket "behind other
    waiting jobs" though they waited for the same GPU as the head. Every queued job is read
    once and gets its own reason; a priority change has the job read again."""
    fake_machine(tmp_path, monkeypatch, [{}])
    home.config.write_text("[groups.g]\nparallel = 1\n")
    holder = submit_command(client, tmp_path, ["sleep", "600"], gpus=1, group="g")
    wait_state(client, holder, "running")
    table = {"kind": "command", "argv": ["true"], "gpus": 1}
    backlog = client.submit_many([build_request(table, tmp_path, "test") for _ in range(200)])
    moved = submit_command(client, tmp_path, ["true"], gpus=1, group="g", priority=10)
    limit = "group 'g' is at its limit of 1 running"
    gpu = "waiting for 1 GPU (0 of 1 free)"
    client.nudge()
    wait_for(lambda: client.store.get(moved).reason == limit, what="the head job's reason")
    assert client.store.get(backlog[0]).reason == gpu
    wait_for(lambda: client.store.get(backlog[-1]).reason == gpu, what="the deep job's reason")
    assert f"reason:    {gpu}" in workbench("show", str(backlog[-1])).stdout
    client.store.set_reason(moved, "stale")
    client.set_priority(moved, -1)
    wait_for(lambda: client.store.get(moved).reason == limit, what="the moved job read again")
    client.control(holder, "cancel")
    wait_state(client, holder, "cancelled", timeout=30)


def test_a_preempted_jobs_log_says_where_it_started_again(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A preempted job starts again with the same attempt and writes on in the same log: only
    a later attempt had a header line, so the two runs' output ran together unmarked."""
    fake_machine(tmp_path, monkeypatch, [{}])
    home.config.write_text(
        '[daemon]\nkill_grace = "1s"\n\n[groups.vision]\nquota = 1\n\n[groups.sweep]\nquota = 0\n'
    )
    borrower = submit_command(
        client, tmp_path, ["sh", "-c", "echo run; exec sleep 600"], gpus=1, group="sweep"
    )
    log = home.run_dir(borrower) / "log"
    wait_for(lambda: log.exists() and "run" in log.read_text(), what="the first run")
    vision = submit_command(client, tmp_path, ["true"], gpus=1, group="vision")
    assert wait_state(client, vision, "succeeded", timeout=30).state == "succeeded"
    wait_for(lambda: log.read_text().count("run\n") == 2, what="the second run")
    lines = log.read_text().splitlines()
    assert lines[0] == "run" and lines[-1] == "run"
    assert lines[1].startswith(f"[workbench] stopping: preempted for job {vision}: group sweep")
    assert lines[-2].startswith("[workbench] started again ")
    assert lines[-2].endswith(" after it was preempted once")
    client.control(borrower, "cancel")
    wait_state(client, borrower, "cancelled", timeout=30)


def test_a_restarted_daemon_knows_which_mig_instance_each_adopted_job_holds(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store keeps a MIG job's GPU, not its instance: a restarted daemon gave each adopted
    job the first free instance of its profile, so once the job that had been given the other
    one's instance ended, a new job was started on an instance still in use."""
    first, second = (
        "MIG-aaaaaaaa-0000-4000-8000-000000000001",
        "MIG-bbbbbbbb-0000-4000-8000-000000000002",
    )
    fake_machine(
        tmp_path,
        monkeypatch,
        [
            {
                "mig": True,
                "mig_instances": [
                    {"profile": "1g.10gb", "memory_total": 10 * GiB, "uuid": first},
                    {"profile": "1g.10gb", "memory_total": 10 * GiB, "uuid": second},
                ],
            }
        ],
    )
    show = ["sh", "-c", 'echo "visible=$CUDA_VISIBLE_DEVICES"; exec sleep 600']
    a = submit_command(client, tmp_path, show, gpus="1g.10gb")
    wait_state(client, a, "running")
    b = submit_command(client, tmp_path, show, gpus="1g.10gb")
    wait_state(client, b, "running")
    client.control(a, "cancel")
    wait_state(client, a, "cancelled", timeout=30)
    c = submit_command(client, tmp_path, show, gpus="1g.10gb")  # gets `first` again
    wait_state(client, c, "running")
    log_c = home.run_dir(c) / "log"
    wait_for(lambda: log_c.exists() and "visible=" in log_c.read_text(), what="job c's devices")
    assert log_c.read_text().strip() == f"visible={first}"
    os.kill(lock_holder(home) or 0, signal.SIGKILL)
    wait_for(lambda: not lock_holder(home), what="the daemon to die")
    ensure_daemon(home)
    client.control(b, "cancel")  # frees `second`
    wait_state(client, b, "cancelled", timeout=30)
    d = submit_command(
        client, tmp_path, ["sh", "-c", 'echo "visible=$CUDA_VISIBLE_DEVICES"'], gpus="1g.10gb"
    )
    assert wait_state(client, d, "succeeded", timeout=30).state == "succeeded"
    assert (home.run_dir(d) / "log").read_text().strip() == f"visible={second}"
    client.control(c, "cancel")
    wait_state(client, c, "cancelled", timeout=30)


def test_a_job_paused_by_its_user_stays_held_after_it_is_preempted(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paused job went back to the queue when preempted and started again by itself as soon
    as a GPU was idle: its user's pause was lost. It is held until `resume`."""
    fake_machine(tmp_path, monkeypatch, [{}])
    home.config.write_text(
        '[daemon]\nkill_grace = "1s"\n\n[groups.vision]\nquota = 1\n\n[groups.sweep]\nquota = 0\n'
    )
    paused = submit_command(client, tmp_path, ["sleep", "600"], gpus=1, group="sweep")
    wait_state(client, paused, "running")
    client.control(paused, "pause")
    wait_state(client, paused, "paused")
    vision = submit_command(client, tmp_path, ["sleep", "0.5"], gpus=1, group="vision")
    assert wait_state(client, vision, "succeeded", timeout=30).state == "succeeded"
    job = wait_for(
        lambda: (j := client.store.get(paused)).pid is None and j.state == "paused" and j,
        what="the preempted job held",
    )
    assert "it was paused, so it is held until resumed" in (job.reason or "")
    events = [e.event for e in client.store.events(paused)]
    assert (
        events[-2:] == ["preempt", "hold"] and "launched" not in events[events.index("preempt") :]
    )
    client.control(paused, "resume")
    wait_state(client, paused, "running", timeout=30)
    client.control(paused, "cancel")
    wait_state(client, paused, "cancelled", timeout=30)


def test_ls_says_a_job_is_stopping_because_it_is_preempted(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During the kill grace a job being preempted was listed as plainly running, its reason
    hidden (a running job's reason is shown only for a problem it has)."""
    fake_machine(tmp_path, monkeypatch, [{}])
    home.config.write_text(
        '[daemon]\nkill_grace = "3s"\n\n[groups.vision]\nquota = 1\n\n[groups.sweep]\nquota = 0\n'
    )
    script = 'trap "echo got TERM" TERM; echo up; while true; do sleep 0.1; done'
    borrower = submit_command(client, tmp_path, ["sh", "-c", script], gpus=1, group="sweep")
    log = home.run_dir(borrower) / "log"
    wait_for(lambda: log.exists() and "up" in log.read_text(), what="the job to trap SIGTERM")
    vision = submit_command(client, tmp_path, ["true"], gpus=1, group="vision")
    wait_for(lambda: "got TERM" in log.read_text(), what="the preemption's SIGTERM")
    row = next(line for line in workbench("ls").stdout.splitlines() if line.startswith("1 "))
    assert "running" in row and f"stopping: preempted for job {vision}" in row
    shown = workbench("show", str(borrower)).stdout
    assert f"reason:    stopping: preempted for job {vision}" in shown
    assert wait_state(client, vision, "succeeded", timeout=30).state == "succeeded"


def test_memory_a_job_holds_on_a_gpu_it_was_not_granted_is_counted_there(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that sets CUDA_VISIBLE_DEVICES itself (scripts that hard-code GPU 0 are common)
    allocates on a GPU it was not granted. Its memory there was taken as "ours" and so left out
    of that GPU's inventory, though no reservation there holds it: the GPU looked free and was
    handed out again."""
    pid_file = tmp_path / "stray.pid"
    fake_machine(tmp_path, monkeypatch, [{"memory_total": 80 * GiB}, gpu_held_by(pid_file)])
    stray = submit_command(
        client, tmp_path, ["sh", "-c", f"echo $$ > {pid_file}; exec sleep 600"], gpus=1
    )
    wait_state(client, stray, "running")
    wait_for(pid_file.exists, what="the stray job's pid")
    pid = int(pid_file.read_text())
    big = submit_command(client, tmp_path, ["true"], gpus=0.5, gpu_mem="60GiB")
    client.nudge()
    expected = (
        f"needs 60.0 GiB on one GPU; the largest free is 50.0 GiB on GPU 1 (GPU 1: 30.0 GiB"
        f" held by pid {pid} of job {stray}, not granted it)"
    )
    wait_for(lambda: client.store.get(big).reason == expected, what="the stray memory's reason")
    assert client.store.get(big).state == "queued"
    client.control(big, "cancel")
    client.control(stray, "cancel")
    wait_state(client, stray, "cancelled", timeout=30)


def test_a_quota_changed_in_config_toml_applies_while_the_daemon_runs(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon read config.toml once, at its start: `workbench group` showed a quota edited
    in `[groups.NAME]` at once, while the daemon kept scheduling by the old one."""
    fake_machine(tmp_path, monkeypatch, [{}])
    home.config.write_text(
        '[daemon]\nkill_grace = "1s"\n\n[groups.vision]\nquota = 0\n\n[groups.sweep]\nquota = 1\n'
    )
    held = submit_command(client, tmp_path, ["sleep", "600"], gpus=1, group="sweep")
    wait_state(client, held, "running")
    vision = submit_command(client, tmp_path, ["true"], gpus=1, group="vision")
    client.nudge()
    wait_for(
        lambda: (
            client.store.get(vision).reason
            == "group vision is at its quota of 0 and nothing is idle to borrow"
        ),
        what="the quota reason",
    )
    home.config.write_text(
        '[daemon]\nkill_grace = "1s"\n\n[groups.vision]\nquota = 1\n\n[groups.sweep]\nquota = 0\n'
    )
    assert "vision: unlimited in parallel, 1 GPU guaranteed" in workbench("group").stdout
    assert wait_state(client, vision, "succeeded", timeout=30).state == "succeeded"
    assert "preempt" in [e.event for e in client.store.events(held)]
    client.control(held, "cancel")


def test_ls_says_when_no_daemon_is_there_to_start_queued_jobs(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ls` reads the store without starting a daemon: with none running, queued jobs showed
    the reasons last written, as if something were still deciding for them."""
    fake_machine(tmp_path, monkeypatch, [{}])
    waiting = submit_command(client, tmp_path, ["true"], gpus=2)
    client.nudge()
    wait_for(lambda: client.store.get(waiting).reason, what="a reason")
    note = "no daemon is running: queued jobs wait until one starts (workbench daemon start)"
    assert note not in workbench("ls").stderr
    from conftest import stop_daemon

    stop_daemon(home)
    listed = workbench("ls")
    assert note in listed.stderr and note not in listed.stdout


def test_a_group_opted_out_of_preemption_in_config_toml_keeps_its_running_jobs(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group's `preemptible = false` was fixed into each job when it started: set while the
    daemon ran, it did not cover the group's running jobs."""
    fake_machine(tmp_path, monkeypatch, [{}])
    home.config.write_text(
        '[daemon]\nkill_grace = "1s"\n\n[groups.vision]\nquota = 0\n\n[groups.sweep]\nquota = 0\n'
    )
    held = submit_command(client, tmp_path, ["sleep", "600"], gpus=1, group="sweep")
    wait_state(client, held, "running")
    home.config.write_text(
        '[daemon]\nkill_grace = "1s"\n\n[groups.vision]\nquota = 1\n\n'
        "[groups.sweep]\nquota = 0\npreemptible = false\n"
    )
    vision = submit_command(client, tmp_path, ["true"], gpus=1, group="vision")
    client.nudge()
    expected = (
        "waiting for 1 GPU (0 of 1 free); within its group's quota of 1, but nothing can be"
        f" reclaimed: job {held} (group sweep) borrows beyond its group's quota and opted out"
        " of preemption"
    )
    wait_for(lambda: client.store.get(vision).reason == expected, what="the opt-out reason")
    assert client.store.get(held).state == "running"
    assert "preempt" not in [e.event for e in client.store.events(held)]
    client.control(vision, "cancel")
    client.control(held, "cancel")
    wait_state(client, held, "cancelled", timeout=30)


def test_a_cancelled_jobs_log_says_it_was_cancelled(client: Client, home: Home) -> None:
    """Every stop the daemon makes (cancel, time limit, preemption, a strict GPU memory stop)
    left a log that simply ended: why was only in `show`."""
    job_id = submit_command(client, Path.cwd(), ["sh", "-c", "printf partial; exec sleep 600"])
    log = home.run_dir(job_id) / "log"
    wait_for(lambda: log.exists() and log.read_text() == "partial", what="the output")
    client.control(job_id, "cancel")
    wait_state(client, job_id, "cancelled", timeout=30)
    assert log.read_text() == "partial\n[workbench] stopping: cancelled\n"
