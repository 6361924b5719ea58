"""Job states, the events that move them, and the one transition table every change goes through.

The store (`workbench.db`) applies every state change through `next_state`, so an illegal move
raises instead of silently writing a state; nothing else names a state as a bare string.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a job is. The values are the words scripts see (INTERFACE.md), so keep them.

    `starting`: the daemon has written a launch token and is about to fork the job's wrapper;
    a restarted daemon finds that wrapper by its token or knows it never ran.
    `paused` covers both a stopped running job and a queued one held before it started.
    `blocked`: a dependency ended in a way that means this job can never run.
    """

    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    BLOCKED = "blocked"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Event(StrEnum):
    """What happened to a job. Each is recorded in its event history with the resulting state."""

    SUBMIT = "submit"  # queued by a client
    HOLD_SUBMIT = "hold-submit"  # queued already held (paused), e.g. `submit --paused`
    START = "start"  # the scheduler picked it; launch token written before the fork
    LAUNCHED = "launched"  # its wrapper is forked and its pid recorded
    EXIT_OK = "exit-ok"  # its main process exited with success
    EXIT_FAILED = "exit-failed"  # ... with failure (code, signal, time limit)
    CANCEL = "cancel"
    HOLD = "hold"  # a queued job is held before it starts
    PAUSE = "pause"  # a running job is stopped (SIGSTOP)
    RESUME = "resume"  # a stopped job continues (SIGCONT)
    RELEASE = "release"  # a held job goes back to the queue
    RETRY = "retry"  # a user asks an ended or blocked job to run again
    REQUEUE = "requeue"  # the daemon queues it again (automatic retry, launch never happened)
    PREEMPT = "preempt"  # stopped to give its GPUs back; it will resume from a checkpoint
    ADOPT = "adopt"  # a restarted daemon found it alive and watches it again
    LOST = "lost"  # its processes vanished without an exit status
    BLOCK = "block"  # a dependency ended so that it can never run
    UNBLOCK = "unblock"  # that dependency was retried
    REFUSE = "refuse"  # the scheduler can never satisfy its request (fail_unrunnable)


S, E = JobState, Event

# (state before, event) -> state after. `None` is "not yet in the store".
TRANSITIONS: dict[tuple[JobState | None, Event], JobState] = {
    (None, E.SUBMIT): S.QUEUED,
    (None, E.HOLD_SUBMIT): S.PAUSED,
    (S.QUEUED, E.START): S.STARTING,
    (S.QUEUED, E.CANCEL): S.CANCELLED,
    (S.QUEUED, E.HOLD): S.PAUSED,
    (S.QUEUED, E.BLOCK): S.BLOCKED,
    (S.QUEUED, E.REFUSE): S.FAILED,
    (S.STARTING, E.LAUNCHED): S.RUNNING,
    (S.STARTING, E.ADOPT): S.RUNNING,
    (S.STARTING, E.REQUEUE): S.QUEUED,
    (S.STARTING, E.EXIT_OK): S.SUCCEEDED,
    (S.STARTING, E.EXIT_FAILED): S.FAILED,
    (S.STARTING, E.CANCEL): S.CANCELLED,
    (S.STARTING, E.LOST): S.FAILED,
    (S.RUNNING, E.EXIT_OK): S.SUCCEEDED,
    (S.RUNNING, E.EXIT_FAILED): S.FAILED,
    (S.RUNNING, E.CANCEL): S.CANCELLED,
    (S.RUNNING, E.PAUSE): S.PAUSED,
    (S.RUNNING, E.PREEMPT): S.QUEUED,
    (S.RUNNING, E.REQUEUE): S.QUEUED,
    (S.RUNNING, E.ADOPT): S.RUNNING,
    (S.RUNNING, E.LOST): S.FAILED,
    (S.PAUSED, E.RESUME): S.RUNNING,
    (S.PAUSED, E.RELEASE): S.QUEUED,
    (S.PAUSED, E.CANCEL): S.CANCELLED,
    (S.PAUSED, E.EXIT_OK): S.SUCCEEDED,
    (S.PAUSED, E.EXIT_FAILED): S.FAILED,
    (S.PAUSED, E.PREEMPT): S.QUEUED,
    (S.PAUSED, E.ADOPT): S.PAUSED,
    (S.PAUSED, E.LOST): S.FAILED,
    (S.BLOCKED, E.UNBLOCK): S.QUEUED,
    (S.BLOCKED, E.RETRY): S.QUEUED,
    (S.BLOCKED, E.CANCEL): S.CANCELLED,
    (S.FAILED, E.RETRY): S.QUEUED,
    (S.FAILED, E.REQUEUE): S.QUEUED,
    (S.CANCELLED, E.RETRY): S.QUEUED,
}

ENDED = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED})
ACTIVE = frozenset(set(S) - ENDED)
SETTLED = ENDED | {S.BLOCKED}  # nothing more happens to these unless someone retries them
LIVE = frozenset({S.STARTING, S.RUNNING, S.PAUSED})  # states that may own processes


class IllegalTransition(ValueError):
    """An event that the transition table does not allow from the job's current state."""

    def __init__(self, job_id: int | None, state: JobState | None, event: Event):
        self.job_id, self.state, self.event = job_id, state, event
        who = f"job {job_id}" if job_id is not None else "a job"
        allowed = sorted(e.value for (s, e) in TRANSITIONS if s == state)
        super().__init__(
            f"{who} is {state or 'new'}: '{event}' is not allowed"
            f" (allowed: {', '.join(allowed) or 'none'})"
        )


def next_state(state: JobState | None, event: Event, job_id: int | None = None) -> JobState:
    """The state after `event` from `state`; raises IllegalTransition if the table forbids it."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(job_id, state, event) from None


def allowed(state: JobState | None, event: Event) -> bool:
    """Whether the table lets `event` happen in `state`."""
    return (state, event) in TRANSITIONS
