"""How the daemon follows and settles one job attempt: `Tracked` (what it watches of an attempt
it started or adopted) and `settle` (the state changes that record the attempt's end). Moved out
of the Daemon class (workbench.daemon.supervisor), which keeps the loop that calls them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from workbench.daemon import launching, runner, stopping
from workbench.daemon.executors import Ended, Handle
from workbench.db import scheduling as db
from workbench.db.store import Job
from workbench.jobmodel.states import LIVE, Event, JobState
from workbench.queue import scheduler
from workbench.units import format_duration


@dataclass
class Tracked:
    """A job attempt this daemon watches (started by it, or adopted from an earlier daemon)."""

    job_id: int
    handle: Handle
    holding: scheduler.Holding
    watch_fd: int = -1
    deadline: float | None = None  # the time limit, seconds since the epoch
    cancel_sent_at: float | None = None
    forced: bool = False
    timed_out: bool = False
    launch_committed: bool = True
    ended: Ended | None = None  # over, but not yet recorded (the write failed: retried)
    preempted: str | None = None  # why it was sent SIGTERM to give its GPUs back
    opted_out: bool = False  # the job itself said preemptible = false (its group may, too)
    over_reservation: str | None = None  # why it was stopped (strict GPU memory reservations)
    policy: stopping.StopPolicy = field(default_factory=stopping.StopPolicy)  # signal, grace
    warned: bool = False  # the warning before its time limit was sent


def settle(tracked: Tracked, job: Job) -> list[db.Change]:
    """How to record an attempt's end: the state changes, including the next attempt's
    queueing when it has retries left."""
    ended = tracked.ended
    assert ended is not None
    status = ended.status
    fields = {"exit_code": status.code, "ended_at": status.ended_at or time.time()}
    fields.update(status.usage_columns())  # kept in the store: outlives the run folder
    live = tuple(LIVE)

    def change(event: Event, reason: str) -> db.Change:
        return db.Change(job.id, event, reason, live, fields)

    if ended.lost is not None:
        return [change(Event.LOST, ended.lost)]
    failure = runner.read_failure(tracked.handle.run_dir)
    leftovers = ""
    if status.leftovers:
        verb = "left running" if launching.keeps_leftovers(job) else "stopped"
        plural = "es" if status.leftovers != 1 else ""
        leftovers = f"; {status.leftovers} leftover process{plural} {verb}"
    leftovers += runner.memory_note(job.mem, status)  # OOM-killed, or over an unenforced --mem
    resumable = (
        job.kind == "command"
        and tracked.policy.checkpointable
        and tracked.cancel_sent_at is not None
    )
    if tracked.preempted is not None and job.intent != "cancel" and (not status.ok or resumable):
        # GPU pooling: back to the queue with a `preempt` event and the same attempt; a
        # train job resumes from the checkpoint it saved on SIGTERM, and so does a
        # checkpointable command job (which may exit 0 once it has saved).
        back = (JobState.RUNNING, JobState.PAUSED)
        preempt = db.Change(job.id, Event.PREEMPT, tracked.preempted, back)
        if job.state != JobState.PAUSED:
            return [preempt]
        # Paused by its user: it stays held (not started again) until `resume`.
        held = f"{tracked.preempted}; it was paused, so it is held until resumed"
        return [preempt, db.Change(job.id, Event.HOLD, held, (JobState.QUEUED,))]
    if tracked.over_reservation is not None and job.intent != "cancel":
        return [change(Event.EXIT_FAILED, tracked.over_reservation)]
    if job.intent == "cancel" and not tracked.timed_out:
        reason = f"cancelled ({status.describe()})" + (f": {failure}" if failure else "")
        return [change(Event.CANCEL, reason)]
    if tracked.timed_out:
        return [
            change(Event.EXIT_FAILED, f"time limit of {format_duration(job.time_limit)} exceeded")
        ]
    if status.ok:
        return [change(Event.EXIT_OK, status.describe() + leftovers)]
    reason = (f"{status.describe()}: {failure}" if failure else status.describe()) + leftovers
    if job.attempt <= job.retries:
        retry = f"automatic retry {job.attempt}/{job.retries} after it {status.describe()}"
        requeue = db.Change(job.id, Event.REQUEUE, retry, (JobState.FAILED,))
        return [change(Event.EXIT_FAILED, reason), requeue]
    return [change(Event.EXIT_FAILED, reason)]
