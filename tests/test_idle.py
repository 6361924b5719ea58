"""Idle GPUs: a job holding a GPU at about 0% utilisation (the fake NVML at 0%) for
`[shares] idle_after` is flagged in `ls`, `show` and its log; with `reclaim_idle` it is
preempted when another user's job waits and it is over its share. GPU memory held outside the
queue is attributed to its process's Unix user."""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import subprocess
from pathlib import Path

import pytest
from conftest import wait_for, wait_state, workbench
from test_scheduler import GiB, fake_machine, submit_command

from workbench.daemon.client import Client
from workbench.paths import Home
from workbench.queue.requests import build_request
from workbench.queue.scheduler import (
    GpuSlot,
    Holding,
    OtherProcess,
    Preempt,
    Resources,
    Settings,
    Share,
    Wait,
    Want,
    plan,
)

ME = pwd.getpwuid(os.getuid()).pw_name
OTHER_UID = 65534 if os.getuid() != 65534 else 0


def _config(home: Home, reclaim: bool) -> None:
    home.config.write_text(
        '[daemon]\nsample_interval = "0.2s"\nkill_grace = "1s"\n\n'
        f'[shares]\nidle_after = "1s"\nreclaim_idle = {"true" if reclaim else "false"}\n\n'
        "[users.default]\ndeserved_gpus = 0\n"
    )


def _theirs(client: Client, tmp_path: Path) -> int:
    table = {"kind": "command", "argv": ["true"], "gpus": 1}
    return client.submit(dataclasses.replace(build_request(table, tmp_path, "test"), uid=OTHER_UID))


def test_an_idle_job_is_flagged_in_ls_show_and_its_log(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_machine(tmp_path, monkeypatch, [{"utilization_gpu": 0}])
    _config(home, reclaim=False)
    job = submit_command(client, tmp_path, ["sleep", "600"], gpus=1)
    wait_state(client, job, "running")
    wait_for(lambda: "idle GPU: ~0% for" in workbench("ls").stdout, timeout=30, what="ls flag")
    shown = workbench("show", str(job))
    assert "GPU 0: idle GPU: ~0% for" in shown.stdout
    assert json.loads(workbench("show", str(job), "--json").stdout)["idle_since"] is not None
    log = (home.run_dir(job) / "log").read_text()
    assert "[workbench]" in log and "GPU 0 at about 0% utilisation for" in log
    theirs = _theirs(client, tmp_path)  # waits: reclaiming idle GPUs is off by default
    wait_for(lambda: client.store.get(theirs).reason is not None, what="a wait reason")
    assert client.store.get(job).state == "running"
    client.control(theirs, "cancel")
    client.control(job, "cancel")
    wait_state(client, job, "cancelled", timeout=30)


def test_a_busy_job_is_not_flagged(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_machine(tmp_path, monkeypatch, [{"utilization_gpu": 90}])
    _config(home, reclaim=True)
    job = submit_command(client, tmp_path, ["sh", "-c", "sleep 3"], gpus=1)
    assert wait_state(client, job, "succeeded", timeout=30).state == "succeeded"
    assert "idle" not in (home.run_dir(job) / "log").read_text()


def test_an_idle_job_over_its_share_is_reclaimed_for_another_user(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_machine(tmp_path, monkeypatch, [{"utilization_gpu": 0}])
    _config(home, reclaim=True)
    job = submit_command(client, tmp_path, ["sleep", "600"], gpus=1)
    wait_state(client, job, "running")
    theirs = _theirs(client, tmp_path)
    assert wait_state(client, theirs, "succeeded", timeout=60).state == "succeeded"
    events = json.loads(workbench("show", str(job), "--json").stdout)["events"]
    reasons = " ".join(str(e["reason"]) for e in events)
    assert f"preempted for job {theirs}: its GPUs sat at about 0% utilisation" in reasons
    assert f"{ME} is above their share: 1 of 0 GPUs" in reasons
    client.control(job, "cancel")


def test_reclaiming_idle_jobs_is_a_rule_of_the_pure_function() -> None:
    res = Resources(gpus=(GpuSlot(0, 80 * GiB),), cpus=8)
    held = [Holding(1, gpu_indices=(0,), gpus=1, account="alice", idle=True)]
    settings = Settings(default_share=Share(0), accounts="user", reclaim_idle=True)
    out = {d.job_id: d for d in plan([Want(2, gpus=1, account="bob")], held, {}, res, settings)}
    assert isinstance(out[1], Preempt) and out[1].for_job == 2
    off = dataclasses.replace(settings, reclaim_idle=False)
    out = {d.job_id: d for d in plan([Want(2, gpus=1, account="bob")], held, {}, res, off)}
    assert 1 not in out and isinstance(out[2], Wait)
    # Its own jobs waiting do not reclaim it; nor does a job within its share.
    own = {d.job_id for d in plan([Want(2, gpus=1, account="alice")], held, {}, res, settings)}
    assert 1 not in own
    within = dataclasses.replace(settings, shares={"alice": Share(1)})
    kept = {d.job_id for d in plan([Want(2, gpus=1, account="bob")], held, {}, res, within)}
    assert 1 not in kept


def test_memory_outside_the_queue_names_its_owner() -> None:
    slot = GpuSlot(2, 80 * GiB, 30 * GiB, others=(OtherProcess(812, 30 * GiB, user="alice"),))
    res = Resources(gpus=(slot,), cpus=8)
    (wait,) = plan([Want(1, gpus=0.5, gpu_mem=60 * GiB)], [], {}, res, Settings())
    assert "(GPU 2: 30.0 GiB held by alice's pid 812, not a queue job)" in wait.reason  # type: ignore[union-attr]


def test_the_daemon_names_the_owner_of_a_real_process_holding_gpu_memory(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = tmp_path / "outside.pid"
        pid_file.write_text(str(sleeper.pid))
        fake_machine(
            tmp_path,
            monkeypatch,
            [
                {
                    "memory_total": 48 * GiB,
                    "memory_used": 30 * GiB,
                    "processes": [{"pid_file": str(pid_file), "used_memory": 30 * GiB}],
                }
            ],
        )
        home.config.write_text('[daemon]\nsample_interval = "0.2s"\n')
        job = submit_command(client, tmp_path, ["true"], gpus=0.5, gpu_mem="40GiB")
        client.nudge()
        want = f"held by {ME}'s pid {sleeper.pid}, not a queue job"
        wait_for(lambda: want in (client.store.get(job).reason or ""), what="the owner named")
        client.control(job, "cancel")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_idle_note_is_never_written_through_a_planted_log(home: Home, tmp_path: Path) -> None:
    """A symbolic link, a hard link or a FIFO put in place of a job's log is not written to."""
    from workbench.config import ShareConfig
    from workbench.daemon.idle import IdleWatch
    from workbench.db.store import Store

    store = Store.open(home.state_db)
    said: list[str] = []
    watch = IdleWatch(store, home, said.append)
    shares = ShareConfig(idle_after_s=0.0)
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    for job_id, plant in enumerate(("symlink", "hardlink", "fifo"), start=1):
        run = home.run_dir(job_id)
        run.mkdir(parents=True, exist_ok=True)
        log = run / "log"
        if plant == "symlink":
            log.symlink_to(victim)
        elif plant == "hardlink":
            os.link(victim, log)
        else:
            os.mkfifo(log)
        watch.observe(shares, 100.0, {0: 0}, {job_id: (0,)})
    store.close()
    assert victim.read_text() == "untouched\n"
    assert len(said) == 3 and all("idle note not written" in s for s in said)
