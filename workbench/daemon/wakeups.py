"""When the daemon must look at the queue again although nothing was written: every waiting
state whose end is a time (a launch back-off after the launcher stopped or no process could
be made, a failed job's retry back-off, `not_before`) has one, so the loop's sleep ends then
and a scheduling pass follows. Kill deadlines and time limits are the supervisor's own."""

from __future__ import annotations

import math
import time


class Wakeups:
    """Named times (`time.monotonic()` seconds) at which a pass is due; one per name, the
    earliest kept."""

    def __init__(self) -> None:
        self._due: dict[str, float] = {}

    def at(self, name: str, when: float) -> None:
        """A pass is due at `when` (monotonic seconds) for `name`."""
        self._due[name] = min(when, self._due.get(name, math.inf))

    def next(self) -> float:
        """The earliest due time (monotonic seconds), math.inf for none."""
        return min(self._due.values(), default=math.inf)

    def take_due(self, now: float) -> list[str]:
        """The names due by `now` (monotonic seconds), forgotten once returned."""
        due = [name for name, when in self._due.items() if when <= now]
        for name in due:
            del self._due[name]
        return due


def monotonic_at(epoch_s: float) -> float:
    """The monotonic time matching an epoch time (seconds)."""
    return time.monotonic() + (epoch_s - time.time())
