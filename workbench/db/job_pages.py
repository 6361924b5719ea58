"""Pages of the job table for a screen that shows a window of it: filter, count, page, position."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The store's light columns leave out the spec and the captured environment (they can be large
# and a listing never shows them), so a page costs the same at 200 jobs or 20,000.
from workbench.db.store import _LIGHT_COLUMNS, Job, Store, _job_from_row


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a listing shows: one state (or any), and a case-insensitive text that must
    occur in "id name kind reason". Order is always by id, so clearing a filter puts every row
    back where it was."""

    state: str | None = None
    text: str = ""

    def sql(self) -> tuple[str, list[Any]]:
        """(`WHERE ...` or "", its parameters)."""
        clauses: list[str] = []
        params: list[Any] = []
        if self.state:
            clauses.append("state = ?")
            params.append(self.state)
        if self.text:
            clauses.append(
                "instr(lower(id || ' ' || name || ' ' || kind || ' ' || coalesce(reason, '')), ?) > 0"
            )
            params.append(self.text.lower())
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), params

    def matches(self, job: Job) -> bool:
        """The same test as `sql()`, in Python (for jobs already in memory)."""
        if self.state and job.state != self.state:
            return False
        haystack = f"{job.id} {job.name} {job.kind} {job.reason or ''}".lower()
        return not self.text or self.text.lower() in haystack


def count_jobs(store: Store, where: JobFilter) -> int:
    """How many jobs match `where`."""
    clause, params = where.sql()
    return int(store.conn.execute(f"SELECT count(*) FROM jobs {clause}", params).fetchone()[0])


def page_of_jobs(store: Store, where: JobFilter, offset: int, limit: int) -> list[Job]:
    """Jobs `offset` .. `offset + limit - 1` (0-based) of those matching `where`, by id; without
    their spec and environment (empty dicts)."""
    clause, params = where.sql()
    rows = store.conn.execute(
        f"SELECT {_LIGHT_COLUMNS} FROM jobs {clause} ORDER BY id LIMIT ? OFFSET ?",
        [*params, max(0, limit), max(0, offset)],
    ).fetchall()
    deps = store._deps_for(r[0] for r in rows)
    return [_job_from_row(r, deps[r[0]]) for r in rows]


def position_of_job(store: Store, where: JobFilter, job_id: int) -> int:
    """The 0-based index `job_id` has (or would have) among the jobs matching `where`."""
    clause, params = where.sql()
    clause = f"{clause} AND id < ?" if clause else "WHERE id < ?"
    return int(
        store.conn.execute(f"SELECT count(*) FROM jobs {clause}", [*params, job_id]).fetchone()[0]
    )
