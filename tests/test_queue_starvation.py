"""Scheduling that cannot starve: a job that can start now starts promptly, whatever waits
before it in the queue (held, waiting on a dependency, on GPUs, on its group's cap). A real
daemon and the real CLI."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import wait_for, wait_state, workbench

from workbench.daemon.client import Client
from workbench.paths import Home
from workbench.queue.requests import build_request


def _requests(tmp_path: Path, count: int, **extra):  # type: ignore[no-untyped-def]
    after = tuple((d, "ok") for d in extra.pop("after", ()))
    table = {"kind": "command", "argv": ["true"], **extra}
    return [build_request(table, tmp_path, "test", after=after) for _ in range(count)]


def _cli_submit(*args: str) -> int:
    result = workbench("submit", *args, "--", "true")
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip())


def _starts_promptly(client: Client, job_id: int, within_s: float = 15.0) -> None:
    wait_state(client, job_id, "succeeded", timeout=within_s)


def test_a_ready_job_behind_128_jobs_waiting_on_a_held_one_starts(
    client: Client, tmp_path: Path
) -> None:
    """The issue's input: `g=$(submit --paused -- true)`, 128 x `submit --after $g -- true`, then
    `submit -- true`. A pass read the queue's head page (the 128 waiting jobs), started nothing
    there and stopped: the last job stayed queued, "behind other waiting jobs", for ever."""
    held = _cli_submit("--paused")
    waiting = client.submit_many(_requests(tmp_path, 128, after=[held]))
    ready = _cli_submit()
    _starts_promptly(client, ready)
    assert client.store.get(waiting[-1]).reason == f"waiting for dependency {held}"
    assert client.store.get(waiting[0]).state == "queued"
    # The mark set on the waiting jobs is cleared by their dependency's change: they all run.
    assert workbench("resume", str(held)).returncode == 0
    wait_for(
        lambda: all(client.store.get(j).state == "succeeded" for j in (held, *waiting)),
        timeout=60,
        what="the dependent jobs to run once their dependency did",
    )


def test_a_ready_job_behind_jobs_blocked_by_a_failed_dependency_ends_and_runs(
    client: Client, tmp_path: Path
) -> None:
    """Jobs found waiting on a dependency are skipped by their mark; the dependency failing must
    still reach them (blocked), and a new job after them runs."""
    dep = _cli_submit("--paused")
    waiting = client.submit_many(_requests(tmp_path, 200, after=[dep]))
    first = _cli_submit()
    _starts_promptly(client, first)
    assert workbench("cancel", str(dep)).returncode == 0
    wait_for(
        lambda: all(client.store.get(j).state == "blocked" for j in waiting),
        timeout=30,
        what="the dependents to be blocked",
    )
    _starts_promptly(client, _cli_submit())


def test_a_ready_job_behind_a_group_at_its_cap_starts(
    client: Client, home: Home, tmp_path: Path
) -> None:
    """200 jobs of a group at its limit (one sleeper runs) fill every page; a job of another
    group behind them starts."""
    home.config.write_text("[groups.g]\nparallel = 1\n")
    sleeper = client.submit(
        build_request({"kind": "command", "argv": ["sleep", "600"], "group": "g"}, tmp_path, "test")
    )
    wait_state(client, sleeper, "running")
    capped = client.submit_many(_requests(tmp_path, 200, group="g"))
    ready = _cli_submit()
    _starts_promptly(client, ready)
    assert client.store.get(capped[-1]).reason == "group 'g' is at its limit of 1 running"
    client.control(sleeper, "cancel")
    wait_for(
        lambda: all(client.store.get(j).state == "succeeded" for j in capped),
        timeout=90,
        what="the capped group's jobs to run one by one once the sleeper ended",
    )


def test_a_ready_job_behind_jobs_waiting_for_more_cpus_starts(
    client: Client, tmp_path: Path
) -> None:
    """Jobs asking for more CPUs than are free (one job holds them all) wait on resources; a
    job asking for none starts behind them, and a later priority change still reaches them."""
    import os

    cpus = os.cpu_count() or 1
    hog = client.submit(
        build_request({"kind": "command", "argv": ["sleep", "600"], "cpus": cpus}, tmp_path, "t")
    )
    wait_state(client, hog, "running")
    waiting = client.submit_many(_requests(tmp_path, 300, cpus=1))
    ready = _cli_submit()
    _starts_promptly(client, ready)
    assert client.store.get(waiting[-1]).reason.startswith("waiting for 1 CPU")
    client.control(hog, "cancel")
    wait_for(
        lambda: all(client.store.get(j).state == "succeeded" for j in waiting),
        timeout=120,
        what="the CPU-waiting jobs to run once the CPUs were free",
    )


@pytest.mark.parametrize("count", [200])
def test_a_pass_reads_only_new_and_head_jobs(client: Client, tmp_path: Path, count: int) -> None:
    """The cost: once marked, jobs waiting on a dependency are not read again by a pass."""
    from workbench.db import scheduling as db

    held = _cli_submit("--paused")
    client.submit_many(_requests(tmp_path, count, after=[held]))
    _starts_promptly(client, _cli_submit())
    assert db.startable(client.store, time.time()) == []
    assert db.marked_count(client.store, db.DEPS) == count
