"""Slurm accounting (sacct) as a job's usage: the parsing of sacct's cells as tables, and the
reader that asks for an ended job's usage later, batched, until its record is complete. The
same against the real test cluster is in tests/test_slurm.py."""

from __future__ import annotations

import json

import pytest

from tests.conftest import workbench
from workbench.daemon.executors import slurm_usage
from workbench.daemon.executors.slurm_usage import (
    SlurmUsage,
    Unanswered,
    UsageReader,
    parse_duration,
    parse_size,
    parse_usage,
    tres_gpus,
)
from workbench.db import executors as placement_db
from workbench.db.store import Event, JobRequest, Store
from workbench.paths import Home


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("00:00:05", 5.0),
        ("00:05.250", 5.25),  # TotalCPU: MM:SS.mmm
        ("12:34.5", 754.5),
        ("01:02:03", 3723.0),
        ("1-02:03:04", 93784.0),
        ("10-00:00:00", 864000.0),
        ("2-03:04.5", None),  # days need hours
        ("", None),
        ("INVALID", None),
        ("5", None),
        ("a:b", None),
    ],
)
def test_sacct_durations_are_parsed(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("1234", 1234),  # bare: bytes (as with --noconvert)
        ("1234K", 1234 * 1024),
        ("12.50M", round(12.5 * 1024**2)),
        ("2G", 2 * 1024**3),
        ("1.5T", round(1.5 * 1024**4)),
        ("", None),
        ("12X", None),
        ("-1K", None),
    ],
)
def test_sacct_sizes_are_parsed(text: str, size: int | None) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "gpus"),
    [
        ("billing=1,cpu=1,gres/gpu=1,mem=500M,node=1", 1),
        ("billing=2,cpu=2,gres/gpu:a100=2,gres/gpu=2,mem=1G,node=1", 2),
        ("cpu=2,gres/gpu:a100=1,gres/gpu:v100=1,node=1", 2),  # typed only
        ("billing=1,cpu=1,mem=500M,node=1", 0),
        ("cpu=1,gres/shard=1,node=1", 0),
        ("", None),
    ],
)
def test_sacct_gpus_come_from_alloc_tres(text: str, gpus: int | None) -> None:
    assert tres_gpus(text) == gpus


def test_sacct_usage_lines_are_combined_per_job() -> None:
    text = (
        "7|COMPLETED|0:0|00:00:04|00:03.500||billing=1,cpu=1,gres/gpu=1,mem=500M,node=1\n"
        "7.batch|COMPLETED|0:0|00:00:04|00:03.400|204800K|cpu=1,gres/gpu=1,mem=500M,node=1\n"
        "7.extern|COMPLETED|0:0|00:00:04|00:00.100|1024K|billing=1,cpu=1,node=1\n"
        "8|RUNNING|0:0|00:00:02|00:00:00||billing=1,cpu=1,mem=500M,node=1\n"
        "8.batch|RUNNING|0:0|00:00:02|00:00:00||cpu=1,mem=500M,node=1\n"
        "9_2|FAILED|3:0|1-00:00:01|01:00:00||billing=2,cpu=2,node=1\n"
        "10|COMPLETED|0:0|00:00:03|00:01.000||billing=1,cpu=1,node=1\n"  # batch step not in yet
        "11|CANCELLED by 0|0:0|00:00:00|00:00:00||\n"  # cancelled while pending: ran nothing
        "12|COMPLETED|0:0|00:00:02|||cpu=1,node=1\n"
        "12.batch|COMPLETED|0:0|00:00:02|00:01.500|1M|cpu=1,node=1\n"
        "12.0|COMPLETED|0:0|00:00:01|00:00.500|3M|cpu=1,node=1\n"
        "sacct: error: something\n"
    )
    usage = parse_usage(text)
    assert usage["7"] == SlurmUsage(4.0, 3.5, 204800 * 1024, 1, complete=True)
    assert usage["8"].complete is False  # still running
    assert usage["9_2"] == SlurmUsage(86401.0, 3600.0, None, 0, complete=False)
    assert usage["10"].complete is False and usage["10"].cpu_s == 1.0
    assert usage["11"] == SlurmUsage(0.0, 0.0, None, None, complete=True)
    assert usage["12"] == SlurmUsage(2.0, 2.0, 3 * 1024**2, 0, complete=True)  # steps summed
    assert set(usage) == {"7", "8", "9_2", "10", "11", "12"}
    columns = usage["7"].columns()
    assert columns["cpu_source"] == columns["peak_mem_source"] == "sacct"
    assert usage["9_2"].columns()["peak_mem_source"] is None


def _ended_slurm_job(store: Store, slurm_id: str) -> int:
    (job_id,) = store.submit_many(
        [JobRequest("j", "command", {"argv": ["true"]}, "/", {}, argv=["true"], executor="slurm")]
    )
    placement_db.set_slurm_id(store, [job_id], [slurm_id])
    store.transition(job_id, Event.START, "s")
    store.transition(job_id, Event.LAUNCHED, "r")
    store.transition(job_id, Event.EXIT_OK, "done", exit_code=0)
    return job_id


def test_usage_is_asked_again_until_accounting_has_it(home: Home) -> None:
    """Accounting lags the job's end: an incomplete record (no batch step yet) or an outage is
    asked again later at growing intervals, one sacct call for every job whose turn it is;
    a complete record is stored with source "sacct" and shown by `show --json` and `ls`."""
    store = Store.open(home.state_db)
    now = [1000.0]
    answers: list[dict[str, SlurmUsage] | Exception | None] = []
    asked: list[list[str]] = []

    def ask(ids: list[str]) -> dict[str, SlurmUsage] | None:
        asked.append(ids)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    reader = UsageReader(store, ask=ask, clock=lambda: now[0])
    first, second = _ended_slurm_job(store, "41"), _ended_slurm_job(store, "42")
    reader.expect(first)
    reader.expect(second)
    assert reader.tick() is True and asked == []  # not before FIRST_TRY_S
    lagging = SlurmUsage(3.0, 1.0, None, 0, complete=False)
    done = SlurmUsage(3.0, 2.5, 300 * 1024**2, 1, complete=True)
    answers += [{"41": lagging, "42": done}, Unanswered("slurmdbd down"), {"41": done}]
    now[0] += slurm_usage.FIRST_TRY_S
    assert reader.tick() is True and asked == [["41", "42"]]
    assert store.get(second).cpu_s == 2.5 and store.get(first).cpu_s is None
    now[0] += 1.0
    reader.tick()
    assert len(asked) == 1  # its next turn is 2 s later
    now[0] += 1.0
    assert reader.tick() is True and asked[-1] == ["41"]  # unanswered: asked again later
    now[0] += 3.0
    reader.tick()
    assert len(asked) == 2
    now[0] += 1.0
    assert reader.tick() is False and asked[-1] == ["41"]
    job = store.get(first)
    assert (job.cpu_s, job.peak_mem_bytes, job.elapsed_s, job.alloc_gpus) == (
        2.5, 300 * 1024**2, 3.0, 1,
    )  # fmt: skip
    assert job.cpu_source == job.peak_mem_source == "sacct"
    assert placement_db.usage_waiting(store) == []
    shown = json.loads(workbench("show", "--json", str(first)).stdout)
    assert shown["cpu_s"] == 2.5 and shown["peak_mem_bytes"] == 300 * 1024**2
    assert shown["cpu_source"] == "sacct" and shown["elapsed_s"] == 3.0
    assert shown["alloc_gpus"] == 1
    listed = {j["id"]: j for j in json.loads(workbench("ls", "--all", "--json").stdout)}
    assert listed[first]["peak_mem_source"] == "sacct" and listed[first]["alloc_gpus"] == 1
    text = " ".join(workbench("show", str(first)).stdout.split())  # wrapped to the terminal
    assert "CPU time" in text and "peak memory 300.0 MiB" in text and "1 GPU allocated" in text
    store.close()


def test_usage_stays_null_without_accounting_or_past_its_wait(home: Home) -> None:
    """No slurmdbd (sacct answers None): usage stays null and nothing waits. A record still
    incomplete after USAGE_WAIT_S is kept as it stands; no record at all leaves it null."""
    store = Store.open(home.state_db)
    now = [1000.0]
    answers: list[dict[str, SlurmUsage] | None] = [None]
    reader = UsageReader(store, ask=lambda ids: answers.pop(0), clock=lambda: now[0])
    job_id = _ended_slurm_job(store, "50")
    reader.expect(job_id)
    now[0] += slurm_usage.FIRST_TRY_S
    assert reader.tick() is False
    assert store.get(job_id).cpu_s is None and placement_db.usage_waiting(store) == []
    partial, missing = _ended_slurm_job(store, "51"), _ended_slurm_job(store, "52")
    reader.expect(partial)
    reader.expect(missing)
    now[0] += slurm_usage.USAGE_WAIT_S
    answers.append({"51": SlurmUsage(2.0, 1.0, None, 0, complete=False)})
    assert reader.tick() is False
    assert store.get(partial).cpu_s == 1.0 and store.get(partial).peak_mem_bytes is None
    assert store.get(partial).peak_mem_source is None
    assert store.get(missing).cpu_s is None
    store.close()


def test_a_retried_job_waits_no_more_for_its_old_attempt(home: Home) -> None:
    """A job handed to Slurm again (its retry) no longer waits for the old Slurm job's usage,
    and an old answer never lands on a job that is live again."""
    store = Store.open(home.state_db)
    job_id = _ended_slurm_job(store, "60")
    placement_db.set_usage_due(store, job_id, 2000.0)
    placement_db.set_slurm_id(store, [job_id], ["61"])
    assert placement_db.usage_waiting(store) == []
    (live,) = store.submit_many(
        [JobRequest("k", "command", {"argv": ["true"]}, "/", {}, argv=["true"], executor="slurm")]
    )
    placement_db.set_slurm_id(store, [live], ["62"])
    placement_db.set_usage_due(store, live, 2000.0)
    placement_db.set_usage(store, live, SlurmUsage(1.0, 1.0, 1, 0, True).columns())
    assert store.get(live).cpu_s is None and placement_db.usage_waiting(store) == []
    store.close()
