"""When and whether Slurm has answered about our jobs: the Slurm executor's poll, kept out of
the executor so it does one job. It asks only about our own jobs, at an adaptive interval (the
floor right after a submit or a change, growing while nothing changes), backs off while Slurm
does not answer, and tells an answer from "unknown for now": an error, a timeout or a malformed
answer never becomes an outcome (issue 21: a controller outage made every job "lost")."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from workbench.daemon.executors.slurm_map import SlurmJob

FAST_WINDOW_S = 30.0  # after a submit (or a change), poll at the floor this long
GROWTH = 1.5  # the interval grows by this factor per poll that saw no change
OUTAGE_MAX_S = 60.0  # the back-off while Slurm does not answer stops growing here
LOST_AFTER_S = 30.0  # a job Slurm says it does not know, with no exit status, is lost after this


@dataclass
class Poll:
    """The poll's schedule and Slurm's reachability.

    `floor_s` is the shortest interval between two polls (`[executor] poll_min`), `ceiling_s`
    the longest while jobs run unchanged (`poll_max`). While Slurm does not answer, the next
    try waits floor * 2**failures, at most OUTAGE_MAX_S; `since` (Unix s) is when the outage
    began and `error` its last message. Times are from `clock` (monotonic) and `wall`."""

    floor_s: float = 1.0
    ceiling_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    interval_s: float = 1.0
    next_at: float = 0.0
    since: float | None = None
    error: str | None = None
    failures: int = 0
    fast_until: float = 0.0
    _last: dict[str, tuple[str, str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.floor_s = max(0.1, self.floor_s)
        self.ceiling_s = max(self.floor_s, self.ceiling_s)
        self.interval_s = self.floor_s

    def due(self) -> bool:
        """True when the next question to Slurm may be asked now."""
        return self.clock() >= self.next_at

    def hurry(self) -> None:
        """Something was just handed to Slurm (or a job's exit status appeared on disk): poll
        at the floor for the next FAST_WINDOW_S, starting at the floor from now."""
        now = self.clock()
        self.fast_until = now + FAST_WINDOW_S
        self.interval_s = self.floor_s
        if self.since is None:
            self.next_at = min(self.next_at, now + self.floor_s)

    def now_due(self) -> None:
        """Ask at the next tick (an exit status is on disk: Slurm will say how it ended)."""
        if self.since is None:
            self.next_at = min(self.next_at, self.clock())

    def answered(self, seen: dict[str, SlurmJob]) -> None:
        """Slurm answered: the outage (if any) is over; the interval drops to the floor when
        a job changed (state, reason, restarts) and grows by GROWTH otherwise."""
        now = self.clock()
        snapshot = {sid: (j.state, j.reason, j.restarts) for sid, j in seen.items()}
        changed = snapshot != self._last
        self._last = snapshot
        self.since, self.error, self.failures = None, None, 0
        if changed or now < self.fast_until:
            self.interval_s = self.floor_s
        else:
            self.interval_s = min(self.ceiling_s, self.interval_s * GROWTH)
        self.next_at = now + self.interval_s

    def failed(self, error: str) -> None:
        """Slurm did not answer (any command): back off; the outage starts now if not yet."""
        if self.since is None:
            self.since = self.wall()
        self.error = error
        self.failures += 1
        wait = min(OUTAGE_MAX_S, self.floor_s * 2**self.failures)
        self.next_at = self.clock() + wait

    def reachable(self) -> bool:
        """False while an outage lasts (the last question went unanswered)."""
        return self.since is None

    def reason(self) -> str:
        """The reason a job shows while Slurm does not answer."""
        since = time.strftime("%H:%M:%S", time.localtime(self.since or self.wall()))
        return (
            f"Slurm unreachable since {since} ({self.error}); keeping its last known state,"
            " asking again with back-off"
        )


def is_unreachable_reason(reason: str | None) -> bool:
    """True for a reason `Poll.reason` wrote (it is replaced once Slurm answers again)."""
    return bool(reason) and str(reason).startswith("Slurm unreachable since")


@dataclass
class Forgetting:
    """Jobs missing from Slurm's answers with no exit status yet: when each was first missed.
    A job is lost only when Slurm says it does not know it (`scontrol show job`: "Invalid job
    id") and it has been missing for LOST_AFTER_S with neither accounting nor `exit.json`
    knowing how it ended; until then it keeps its last known state."""

    clock: Callable[[], float] = time.monotonic
    first_missed: dict[str, float] = field(default_factory=dict)

    def missed(self, slurm_id: str) -> float:
        """Seconds since `slurm_id` was first missing from an answer (0 the first time)."""
        now = self.clock()
        return now - self.first_missed.setdefault(slurm_id, now)

    def seen(self, slurm_id: str) -> None:
        """Slurm listed it (again), or it was settled."""
        self.first_missed.pop(slurm_id, None)


def follows_from_comment(comment: str, tag: str) -> list[tuple[int, int]]:
    """(job id, attempt) pairs a Slurm job's comment names when it is ours (`workbench job
    5#1,6#1 home 1a2b3c4d`, see `submission_comment`); [] for another home's or a user's job."""
    words = comment.split()
    if len(words) != 5 or words[:2] != ["workbench", "job"] or words[3:] != ["home", tag]:
        return []
    out = []
    for item in words[2].split(","):
        job, _, attempt = item.partition("#")
        if not (job.isdigit() and attempt.isdigit()):
            return []
        out.append((int(job), int(attempt)))
    return out


def submission_comment(jobs: Sequence[tuple[int, int]], tag: str) -> str:
    """`--comment` of a submission: the workbench jobs (id#attempt) it runs, in array order,
    and the home's tag, so a submission whose sbatch timed out, or that a restarted daemon had
    not recorded, is found again in squeue instead of running untracked."""
    return f"workbench job {','.join(f'{j}#{a}' for j, a in jobs)} home {tag}"
