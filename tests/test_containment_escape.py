"""Containment in cgroup mode: a root job that moves a child out of its cgroup (to the root
cgroup) and then kills its own wrapper must not leave that child running: the job's processes
are tracked by launch token as well as by cgroup, and what carries the token is stopped."""

from __future__ import annotations

import os
import time

import psutil
import pytest
from conftest import wait_state

from workbench.daemon.client import Client
from workbench.daemon.executors.containment import cgroup2_mount, pids_with_token
from workbench.paths import Home
from workbench.queue.requests import build_request

ESCAPE = "{spawn} & child=$!; echo $child > {root}/cgroup.procs; sleep 0.3; kill -9 $PPID; sleep 1"


@pytest.mark.skipif(os.geteuid() != 0, reason="a job must be root to leave its cgroup")
@pytest.mark.parametrize("spawn", ["sleep 4321", "setsid sleep 4322"])
def test_a_child_moved_to_the_root_cgroup_is_stopped_when_its_job_ends(
    client: Client,
    home: Home,
    tmp_path,
    spawn: str,  # type: ignore[no-untyped-def]
) -> None:
    mount = cgroup2_mount()
    if mount is None:
        if os.environ.get("CI"):  # CI runs as root where cgroup v2 is mounted: a skip would hide
            pytest.fail("no cgroup v2 hierarchy, which CI's machine has")
        pytest.skip("no cgroup v2 hierarchy")
    script = ESCAPE.format(spawn=spawn, root=mount)
    job_id = client.submit(
        build_request({"kind": "command", "argv": ["sh", "-c", script]}, tmp_path, "test")
    )
    job = wait_state(client, job_id, {"failed", "succeeded"}, timeout=60)
    assert "lost" in (job.reason or ""), job.reason  # its wrapper was killed: no record
    token = client.store.get(job_id).launch_token or job.launch_token
    time.sleep(0.5)
    marker = spawn.split()[-1]
    left = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if marker in " ".join(p.info["cmdline"] or [])
    ]
    assert left == [], f"processes left running: {left}"
    if token:
        assert pids_with_token(token) == []
