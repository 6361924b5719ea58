"""The system daemon's read of team jobs that ended before they started (team mode): followed
by a cursor over `job_events` (its primary key), so each look reads only the events written
since the last one and a short stretch before it (`workbench.daemon.teamsettle`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from workbench.db.store import Store
from workbench.jobmodel.states import JobState

# A job that can end without starting: cancelled or removed while queued, blocked by a failed
# dependency, failed as unrunnable (refused).
_ENDINGS = (JobState.CANCELLED, JobState.BLOCKED, JobState.FAILED)
_LOOK_BACK_EVENTS = 100_000  # the most events read once at a daemon's start
REREAD_EVENTS = 1000  # events before the cursor read again (`ended_unstarted_after`)


@dataclass(frozen=True)
class EndedUnstarted:
    """A command job that ended (`state`) with no `started_at` and runs a built-in kind's
    job of its owner's own home: `team_of` is its spec's (`{"kind", "home", "job"}`, as
    `workbench.cli.team.queue_built_in` wrote it), `uid` its owner."""

    job_id: int
    uid: int
    state: str
    team_of: dict[str, Any]


def cursor_since(store: Store, since: float) -> int:
    """The cursor (an event id) before the first event at or after `since` (Unix s), looking
    back over at most the last `_LOOK_BACK_EVENTS` events; the last event's id when none is
    that recent (0 in an empty store)."""
    conn = store.conn
    last = conn.execute("SELECT coalesce(max(id), 0) FROM job_events").fetchone()[0]
    row = conn.execute(
        "SELECT min(id) FROM job_events WHERE id > ? AND t >= ?",
        (last - _LOOK_BACK_EVENTS, since),
    ).fetchone()
    return int(row[0]) - 1 if row and row[0] is not None else int(last)


def ended_unstarted_after(store: Store, cursor: int) -> tuple[list[EndedUnstarted], int]:
    """The team jobs whose events after `cursor` ended them without a start, still in that
    state, and the new cursor (the last event id read). The last `REREAD_EVENTS` before the
    cursor are read again: event ids are not AUTOINCREMENT, so an `rm` of the newest jobs
    frees theirs for the next events, which would otherwise be passed over. A job may so come
    back in a later call: callers keep those they handled (`TeamSettler`). Cost: that many
    events, by the primary key, and one row per candidate job."""
    conn = store.conn
    last = int(conn.execute("SELECT coalesce(max(id), 0) FROM job_events").fetchone()[0])
    marks = ",".join("?" * len(_ENDINGS))
    rows = conn.execute(
        "SELECT DISTINCT j.id, j.uid, j.state, j.spec FROM job_events e JOIN jobs j"
        f" ON j.id = e.job_id WHERE e.id > ? AND e.id <= ? AND e.state IN ({marks})"
        f" AND j.state IN ({marks}) AND j.started_at IS NULL AND j.kind = 'command'"
        " AND j.uid IS NOT NULL",
        (min(cursor, last) - REREAD_EVENTS, last, *map(str, _ENDINGS), *map(str, _ENDINGS)),
    ).fetchall()
    found = []
    for job_id, uid, state, spec_text in rows:
        team_of = team_of_spec(spec_text)
        if team_of is not None:
            found.append(EndedUnstarted(int(job_id), int(uid), str(state), team_of))
    return found, last


def team_of_spec(spec: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """A job spec's `team_of` (the spec as stored, JSON text, or as read), when it is well
    formed (a home path and a job id); else None."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError:
            return None
    team_of = spec.get("team_of") if isinstance(spec, dict) else None
    if not isinstance(team_of, dict):
        return None
    home, job = team_of.get("home"), team_of.get("job")
    if not isinstance(home, str) or not home or type(job) is not int:
        return None
    return team_of
