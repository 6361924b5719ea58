"""The usage ledger and `workbench usage`: a scripted day of jobs (set submit, start, pause,
preempt and end times) in a real store, read into the ledger as the daemon does, reported by
the real CLI, equals a hand computation."""

from __future__ import annotations

import json
import math
import os
import pwd
import time

import pytest
from conftest import workbench

from workbench.config import Config
from workbench.daemon.ledger import UsageLedger
from workbench.db.store import JobRequest, Store
from workbench.db.usage import Interval, intervals
from workbench.jobmodel.resources import Resources
from workbench.jobmodel.states import Event
from workbench.paths import Home
from workbench.queue.usage import decayed_gpu_seconds, decayed_hours, p95, report

GiB = 1024**3
ME = pwd.getpwuid(os.getuid()).pw_name
OTHER_UID = 65534 if os.getuid() != 65534 else 0
OTHER = pwd.getpwuid(OTHER_UID).pw_name


def _request(group: str, gpus: float, gpu_mem: int | None, uid: int | None) -> JobRequest:
    return JobRequest(
        name="j",
        kind="command",
        spec={},
        cwd="/",
        env={},
        argv=["true"],
        group=group,
        resources=Resources(gpus=gpus, gpu_mem=gpu_mem),
        uid=uid,
    )


def script_day(store: Store, t0: float) -> None:
    """Jobs A (mine, vision, 1 GPU of 10 GiB, 3 h after a 10 min wait), B (the other user's,
    nlp, 2 GPUs of 20 GiB: 2 h, preempted, 1 h more), C (mine, nlp, half a GPU of 8 GiB, 4 h
    with a pause inside that keeps its grant) and D (mine, CPU only: no GPU usage)."""
    clock = [t0]
    patch = pytest.MonkeyPatch()
    patch.setattr(time, "time", lambda: clock[0])

    def at(offset: float) -> None:
        clock[0] = t0 + offset

    def run(job: int, start: float) -> None:
        at(start)
        store.transition(job, Event.START, "starting")
        store.transition(job, Event.LAUNCHED, "started", pid=1)

    h = 3600.0
    at(0)
    a = store.submit(_request("vision", 1, 10 * GiB, None))
    d = store.submit(_request("vision", 0, None, None))
    run(a, 600)
    run(d, 600)
    at(1 * h)
    b = store.submit(_request("nlp", 2, 20 * GiB, OTHER_UID))
    run(b, 1.5 * h)
    at(2 * h)
    c = store.submit(_request("nlp", 0.5, 8 * GiB, None))
    run(c, 2 * h)
    at(600 + 3 * h)
    store.transition(a, Event.EXIT_OK, "done")
    store.transition(d, Event.EXIT_OK, "done")
    at(3 * h)
    store.transition(c, Event.PAUSE, "paused")
    at(3.5 * h)
    store.transition(b, Event.PREEMPT, "preempted for another")
    at(4 * h)
    store.transition(c, Event.RESUME, "resumed")
    run(b, 4.5 * h)
    at(5.5 * h)
    store.transition(b, Event.EXIT_OK, "done")
    at(6 * h)
    store.transition(c, Event.EXIT_FAILED, "failed", exit_code=1)
    patch.undo()


# By hand. GPU-hours: A 1 x 3 h = 3; B 2 x (2 h + 1 h) = 6; C 0.5 x 4 h = 2 (its pause keeps
# its grant). GiB-hours: A 10 x 3 = 30; B 40 x 3 = 120; C 8 x 4 = 32. Waits (submit to first
# start): A 600 s, B 1800 s, C 0 s; p95 by nearest rank.
EXPECTED = {
    ("user", ME): (5.0, 62.0, 2, 300.0, 600.0),
    ("user", OTHER): (6.0, 120.0, 1, 1800.0, 1800.0),
    ("group", "nlp"): (8.0, 152.0, 2, 900.0, 1800.0),
    ("group", "vision"): (3.0, 30.0, 1, 600.0, 600.0),
}


def test_usage_equals_a_hand_computation_on_a_scripted_day(home: Home) -> None:
    t0 = math.floor(time.time() / 86400) * 86400 - 86400  # yesterday's midnight (UTC)
    store = Store.open(home.state_db)
    script_day(store, t0)
    ledger = UsageLedger(store, Config, lambda: 80 * GiB)
    assert ledger.sync() > 0
    assert ledger.sync() == 0  # the cursor moved: nothing read twice
    store.close()
    out = workbench("usage", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["rows"]
    got = {
        (r["kind"], r["name"]): (
            r["gpu_hours"],
            r["gpu_mem_gib_hours"],
            r["jobs"],
            r["wait_mean_s"],
            r["wait_p95_s"],
        )
        for r in rows
    }
    assert got.keys() == EXPECTED.keys()
    for key, want in EXPECTED.items():
        assert got[key] == pytest.approx(want), key
    # One user only, and the table fits 80 columns.
    mine = json.loads(workbench("usage", "--json", "--user", OTHER).stdout)["rows"]
    assert {(r["kind"], r["name"]) for r in mine} == {("user", OTHER), ("group", "nlp")}
    table = workbench("usage")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["USER", "GPU-h"]
    assert all(len(line) <= 80 for line in lines)
    assert any(line.startswith(OTHER) and " 6.00 " in line for line in lines)


def test_since_clips_intervals_to_the_window() -> None:
    rows = [Interval(1, None, "g", 2.0, 4 * GiB, 0.0, 7200.0, 60.0)]
    (user, group) = report(rows, 3600.0, 10000.0)
    assert user.gpu_hours == pytest.approx(2.0) and group.gpu_mem_gib_hours == pytest.approx(4)
    assert user.wait_mean_s is None  # it first started before the window
    open_row = [Interval(2, None, "g", 1.0, 0, 0.0, None, 0.0)]
    assert report(open_row, None, 1800.0)[0].gpu_hours == pytest.approx(0.5)


def test_decayed_usage_halves_each_half_life() -> None:
    day = 86400.0
    # A GPU-hour that ended one half-life ago weighs (a little more than) half an hour now.
    recent = decayed_gpu_seconds(1.0, 0.0, 3600.0, 3600.0, day)
    old = decayed_gpu_seconds(1.0, 0.0, 3600.0, 3600.0 + day, day)
    assert old == pytest.approx(recent / 2)
    # The closed form equals the integral, summed in small steps.
    steps = sum(2 ** (-(5000.0 - (t + 0.5)) / 1000.0) for t in range(0, 3000))  # 1-second midpoints
    assert decayed_gpu_seconds(1.0, 0.0, 3000.0, 5000.0, 1000.0) == pytest.approx(steps, rel=1e-6)
    rows = [Interval(1, None, "a", 2.0, 0, 0.0, None, None)]
    got = decayed_hours(rows, 3600.0, 1e12, lambda r: r.group)
    assert got == {"a": pytest.approx(2.0)}  # no decay to speak of: 2 GPUs for an hour


def test_p95_is_the_nearest_rank() -> None:
    assert p95([]) is None
    assert p95([5.0]) == 5.0
    assert p95(list(map(float, range(1, 101)))) == 95.0
    assert p95([0.0, 600.0]) == 600.0


def test_the_ledger_survives_a_restart_mid_job(home: Home) -> None:
    """An interval opened by one ledger is closed by the next (the cursor is in the store)."""
    store = Store.open(home.state_db)
    job = store.submit(_request("g", 1, None, None))
    store.transition(job, Event.START, "starting")
    UsageLedger(store, Config, lambda: 80 * GiB).sync()
    (row,) = intervals(store)
    assert row.end is None and row.gpu_mem_bytes == 80 * GiB
    store.transition(job, Event.LAUNCHED, "started", pid=1)
    store.transition(job, Event.EXIT_OK, "done")
    UsageLedger(store, Config, lambda: 80 * GiB).sync()
    (row,) = intervals(store)
    assert row.end is not None and row.end >= row.start
    store.close()


def test_the_cli_says_when_nothing_was_used(home: Home) -> None:
    out = workbench("usage")
    assert out.returncode == 0 and out.stdout.strip() == "no GPU usage recorded"
    bad = workbench("usage", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "--since" in bad.stderr and "Traceback" not in bad.stderr
