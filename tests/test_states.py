"""The job state machine: the transition table, and the store applying every change through it."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from workbench.db.store import JobError, JobRequest, Store
from workbench.jobmodel.states import (
    ENDED,
    TRANSITIONS,
    Event,
    IllegalTransition,
    JobState,
    next_state,
)

S, E = JobState, Event

# (state, event, expected state or None for "illegal"), a row per rule the product relies on.
CASES = [
    (None, E.SUBMIT, S.QUEUED),
    (None, E.HOLD_SUBMIT, S.PAUSED),
    (None, E.START, None),
    (S.QUEUED, E.START, S.STARTING),
    (S.QUEUED, E.LAUNCHED, None),
    (S.QUEUED, E.EXIT_OK, None),
    (S.QUEUED, E.CANCEL, S.CANCELLED),
    (S.QUEUED, E.HOLD, S.PAUSED),
    (S.QUEUED, E.BLOCK, S.BLOCKED),
    (S.QUEUED, E.REFUSE, S.FAILED),
    (S.QUEUED, E.RETRY, None),
    (S.STARTING, E.LAUNCHED, S.RUNNING),
    (S.STARTING, E.ADOPT, S.RUNNING),
    (S.STARTING, E.REQUEUE, S.QUEUED),
    (S.STARTING, E.LOST, S.FAILED),
    (S.STARTING, E.START, None),
    (S.RUNNING, E.EXIT_OK, S.SUCCEEDED),
    (S.RUNNING, E.EXIT_FAILED, S.FAILED),
    (S.RUNNING, E.CANCEL, S.CANCELLED),
    (S.RUNNING, E.PAUSE, S.PAUSED),
    (S.RUNNING, E.PREEMPT, S.QUEUED),
    (S.RUNNING, E.ADOPT, S.RUNNING),
    (S.RUNNING, E.LOST, S.FAILED),
    (S.RUNNING, E.START, None),
    (S.RUNNING, E.RETRY, None),
    (S.PAUSED, E.RESUME, S.RUNNING),
    (S.PAUSED, E.RELEASE, S.QUEUED),
    (S.PAUSED, E.CANCEL, S.CANCELLED),
    (S.PAUSED, E.PAUSE, None),
    (S.BLOCKED, E.UNBLOCK, S.QUEUED),
    (S.BLOCKED, E.RETRY, S.QUEUED),
    (S.BLOCKED, E.START, None),
    (S.FAILED, E.RETRY, S.QUEUED),
    (S.FAILED, E.REQUEUE, S.QUEUED),
    (S.CANCELLED, E.RETRY, S.QUEUED),
    (S.CANCELLED, E.CANCEL, None),
    (S.SUCCEEDED, E.RETRY, None),
    (S.SUCCEEDED, E.EXIT_FAILED, None),
    (S.SUCCEEDED, E.CANCEL, None),
]


@pytest.mark.parametrize(("state", "event", "expected"), CASES)
def test_transition_table(state: JobState | None, event: Event, expected: JobState | None) -> None:
    if expected is None:
        with pytest.raises(IllegalTransition, match=f"'{event}' is not allowed"):
            next_state(state, event)
    else:
        assert next_state(state, event) == expected


def test_ended_states_only_leave_by_retry_or_requeue() -> None:
    """Nothing moves a finished job except a retry (and the daemon's automatic requeue)."""
    for (state, event), _ in TRANSITIONS.items():
        if state in ENDED:
            assert event in (E.RETRY, E.REQUEUE), (state, event)


def test_state_values_are_the_interface_words() -> None:
    assert [s.value for s in JobState] == [
        "queued",
        "starting",
        "running",
        "paused",
        "blocked",
        "succeeded",
        "failed",
        "cancelled",
    ]
    assert f"{JobState.RUNNING}" == "running" and JobState("running") is JobState.RUNNING


_WORDS = "|".join(s.value for s in JobState)
_LITERAL = rf"[\"'](?:{_WORDS})[\"']"
STATE_COMPARISON = re.compile(
    rf"(==|!=)\s*{_LITERAL}|{_LITERAL}\s*(==|!=)|\bin\s*[(\[{{]\s*{_LITERAL}"
    rf"|state\s*=\s*{_LITERAL}|\bIN\s*\(\s*{_LITERAL}",
    re.IGNORECASE,
)


def test_state_words_appear_once_in_the_core() -> None:
    """No module outside the state machine compares a state with a bare string literal, in
    Python (`== "running"`, `in ("failed", ...)`) or in SQL (`state='queued'`, `IN ('running'`)."""
    root = Path(__file__).resolve().parent.parent / "workbench"
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "states.py" or "migrations" in path.name:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if STATE_COMPARISON.search(line):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []


def test_the_state_literal_check_is_not_vacuous() -> None:
    """The pattern above flags the forms it is meant to."""
    for line in (
        'if job.state == "running":',
        'if state in ("failed", "cancelled"):',
        "SELECT id FROM jobs WHERE state='queued'",
        "WHERE state IN ('running', 'paused')",
    ):
        assert STATE_COMPARISON.search(line), line
    assert not STATE_COMPARISON.search('store.transition(j, Event.PAUSE, "paused")')


def request(name: str = "j") -> JobRequest:
    return JobRequest(name, "command", {"argv": ["true"]}, "/", {}, argv=["true"])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "state.db")


def test_store_applies_events_and_records_them(store: Store) -> None:
    job_id = store.submit(request())
    assert store.transition(job_id, E.START, "starting", launch_token="t1") == S.STARTING
    assert store.transition(job_id, E.LAUNCHED, "started", pid=123) == S.RUNNING
    assert store.transition(job_id, E.EXIT_OK, "exited with code 0", exit_code=0) == S.SUCCEEDED
    job = store.get(job_id)
    assert job.state == S.SUCCEEDED and job.ended_at is not None and job.launch_token == "t1"
    history = [(e.state, e.event) for e in store.events(job_id)]
    assert history == [
        ("queued", "submit"),
        ("starting", "start"),
        ("running", "launched"),
        ("succeeded", "exit-ok"),
    ]


def test_store_refuses_an_illegal_event_and_writes_nothing(store: Store) -> None:
    job_id = store.submit(request())
    with pytest.raises(IllegalTransition, match=f"job {job_id} is queued"):
        store.transition(job_id, E.EXIT_OK, "exited")
    assert store.get(job_id).state == S.QUEUED
    assert len(store.events(job_id)) == 1


def test_only_from_reports_a_lost_race_without_writing(store: Store) -> None:
    job_id = store.submit(request())
    store.request(job_id, "cancel")
    assert store.transition(job_id, E.START, "starting", only_from=[S.QUEUED]) is None
    assert store.get(job_id).state == S.CANCELLED
    assert store.transition(10_000, E.START, "starting") is None


def test_requeue_starts_a_fresh_attempt_and_unblocks_dependents(store: Store) -> None:
    first = store.submit(request("first"))
    second = store.submit(
        JobRequest(
            "second", "command", {"argv": ["true"]}, "/", {}, argv=["true"], after=((first, "ok"),)
        )
    )
    store.transition(first, E.START, "starting")
    store.transition(first, E.LAUNCHED, "started", pid=5)
    assert store.fail_and_requeue(first, "exited with code 1", "automatic retry", exit_code=1)
    job = store.get(first)
    assert job.state == S.QUEUED and job.attempt == 2 and job.pid is None and job.exit_code is None
    store.transition(first, E.REFUSE, "can never run")
    store.transition(second, E.BLOCK, "job 1 failed")
    assert store.request(first, "retry") == "queued"
    assert store.get(second).state == S.QUEUED


def test_requests_go_through_the_table(store: Store) -> None:
    job_id = store.submit(request())
    assert store.request(job_id, "pause") == "paused"
    assert store.request(job_id, "resume") == "queued"
    with pytest.raises(JobError, match="only failed, cancelled or blocked"):
        store.request(job_id, "retry")
    store.transition(job_id, E.START, "starting")
    assert store.request(job_id, "cancel") == "cancelling"  # a live job: the daemon does it
    with pytest.raises(JobError, match="cancel it before removing it"):
        store.request(job_id, "rm")
    assert store.get(job_id).intent == "cancel"


def test_two_threads_share_a_store_without_transaction_collisions(store: Store) -> None:
    """Two TUI workers pressing `+` at once: each thread gets its own connection."""
    job_id = store.submit(request())
    errors: list[BaseException] = []

    def bump(offset: int) -> None:
        try:
            for i in range(1000):
                store.set_priority(job_id, offset + i)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=bump, args=(n * 10_000,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.get(job_id).priority in (999, 10_999)


def test_data_version_is_comparable_across_threads_and_sees_own_commits(store: Store) -> None:
    """The TUI polls from worker threads: a reading taken on one thread must change after a
    commit made on another thread of the same process."""
    seen: list[int] = []
    reader = threading.Thread(target=lambda: seen.append(store.data_version()))
    reader.start()
    reader.join()
    store.submit(request())  # this thread's own connection commits
    after: list[int] = []
    reader = threading.Thread(target=lambda: after.append(store.data_version()))
    reader.start()
    reader.join()
    assert seen != after
    assert store.data_version() == after[0]  # same reading on any thread while nothing commits
