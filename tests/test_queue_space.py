"""A launch that fails for want of space or inodes leaves the job queued, saying so, and it runs
once space returns; it was "lost" with a made-up exit code 137 and "started" in its history."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import stop_daemon, wait_for

from workbench.daemon.client import Client
from workbench.paths import Home
from workbench.queue.requests import build_request

NO_SPACE = "no space left on the device holding WORKBENCH_HOME"


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_a_home_out_of_inodes_leaves_jobs_queued_and_they_run_once_inodes_return(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = Path(f"/tmp/wb-inodes-{os.getpid()}")
    root.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,nr_inodes=60,mode=700", "tmpfs", str(root)],
        capture_output=True,
    )
    assert mounted.returncode == 0, mounted.stderr
    monkeypatch.setenv("WORKBENCH_HOME", str(root))
    home = Home(root).ensure()
    client = Client(home)
    try:
        table = {"kind": "command", "argv": ["true"]}
        ids = client.submit_many([build_request(table, tmp_path, "test") for _ in range(60)])
        wait_for(
            lambda: any(NO_SPACE in (client.store.get(j).reason or "") for j in ids),
            timeout=30,
            what="a job queued for want of inodes",
        )
        jobs = [client.store.get(j) for j in ids]
        assert not [j.id for j in jobs if j.state == "failed"], [j.reason for j in jobs]
        for job in jobs:
            assert job.attempt == 1
            if job.state == "queued":
                assert NO_SPACE in (job.reason or ""), job.reason
                assert "running" not in [e.state for e in client.store.events(job.id)]
        subprocess.run(["mount", "-o", "remount,nr_inodes=100000", str(root)], check=True)
        wait_for(
            lambda: all(client.store.get(j).state == "succeeded" for j in ids),
            timeout=90,
            what="every job to run once inodes were back",
        )
        assert "Traceback" not in (root / "daemon.log").read_text()
    finally:
        client.close()
        stop_daemon(home)
        subprocess.run(["umount", "-l", str(root)], check=False)
        subprocess.run(["rm", "-rf", str(root)], check=False)
