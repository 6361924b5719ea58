"""`--mem` is enforced by the cgroup v2 memory controller where the job's cgroup has it (the
OOM kill is reported as such); where it has not, a job that goes over it is reported in `show`,
`ls` and the Queue screen (its reason). It succeeded unflagged with a peak of 510 MiB."""

from __future__ import annotations

import json
import sys

from conftest import wait_state, workbench

from workbench.daemon.client import Client
from workbench.paths import Home

ALLOCATE = "import time; block = b'x' * (500 << 20); time.sleep(0.5)"


def test_a_job_over_its_mem_is_stopped_or_flagged(client: Client, home: Home) -> None:
    submitted = workbench("submit", "--mem", "1MiB", "--", sys.executable, "-c", ALLOCATE)
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout)
    job = wait_state(client, job_id, {"succeeded", "failed"}, timeout=60)
    enforced = "memory.max" in (home.daemon_log.read_text())
    if enforced:
        assert job.state == "failed"
        assert "out of memory: the OOM killer stopped" in (job.reason or ""), job.reason
        assert "--mem limit of 1.0 MiB" in (job.reason or "")
    else:
        assert "over its --mem: peak" in (job.reason or ""), job.reason
        assert "not enforced" in (job.reason or "")
    shown = workbench("show", str(job_id))
    assert "--mem" in shown.stdout, shown.stdout
    listed = json.loads(workbench("ls", "--json", "--all").stdout)
    assert any(j["id"] == job_id and "--mem" in (j["reason"] or "") for j in listed)
    assert "--mem" in workbench("ls", "--all").stdout
    from workbench.present import shown_reason  # what the Queue screen's reason column shows

    assert "--mem" in shown_reason(client.store.get(job_id))


def test_a_job_within_its_mem_has_no_note(client: Client) -> None:
    submitted = workbench("submit", "--mem", "2GiB", "--", sys.executable, "-c", "pass")
    job = wait_state(client, int(submitted.stdout), "succeeded", timeout=60)
    assert job.reason == "exited with code 0"
