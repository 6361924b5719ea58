"""Pages of the job table: for a screen that shows a window of it (filter, count, page, position),
and for `ls --json` (jobs as JSON text, a page at a time, without building Job objects)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

# The store's light columns leave out the spec and the captured environment (they can be large
# and a listing never shows them), so a page costs the same at 200 jobs or 20,000.
from workbench.db.store import (
    _LIGHT_COLUMNS,
    Job,
    Store,
    _job_from_row,
    decode_text,
)
from workbench.jsonout import dumps


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


# ---- jobs as JSON text, a page at a time ------------------------------------------------------

_JSON_TEMPLATE = (
    '{"id": %s, "name": %s, "kind": %s, "state": %s, "reason": %s, "spec": %s, "argv": %s,'
    ' "cwd": %s, "priority": %s, "group": %s, "resources": {"gpus": %s, "gpu_mem": %s,'
    ' "cpus": %s, "mem": %s, "mig_profile": %s}, "granted_gpus": %s, "retries": %s,'
    ' "attempt": %s, "time_limit": %s, "after": %s, "pipeline_id": %s, "stage": %s,'
    ' "created_at": %s, "started_at": %s, "ended_at": %s, "exit_code": %s, "pid": %s,'
    ' "progress": %s, "progress_msg": %s, "peak_gpu_mem": %s, "mean_gpu_util": %s,'
    ' "executor": %s, "slurm_id": %s, "node": %s, "preemptible": %s, "cpu_s": %s,'
    ' "cpu_source": %s, "peak_mem_bytes": %s, "peak_mem_source": %s, "granted_devices": %s}'
)


def _number(column: str) -> str:
    """SQL giving a numeric column as `dumps` writes it: the number, or 'null' for NULL and for
    infinities (inf - inf is NaN, which SQLite makes NULL); Python's `%s` of the int or float
    SQLite returns is then the same text `json.dumps` writes (`float.__repr__`)."""
    return f"iif({column} - {column} = 0, {column}, 'null')"


# The columns of `_JSON_TEMPLATE` in its order; numbers rendered by SQL (`_number`), `after`
# filled in from job_deps, strings quoted in Python (SQLite's json_quote keeps non-ASCII text,
# json.dumps escapes it).
_JSON_COLUMNS = ", ".join(
    [
        "id, name, kind, state, reason, spec, ifnull(argv, 'null'), cwd, priority, grp",
        *(_number(c) for c in ("gpus", "gpu_mem", "cpus", "mem")),
        "mig_profile, ifnull(granted_gpus, 'null'), retries, attempt",
        _number("time_limit"),
        "NULL",  # after
        _number("pipeline_id"),
        "stage",
        *(_number(c) for c in ("created_at", "started_at", "ended_at", "exit_code", "pid")),
        _number("progress"),
        "progress_msg",
        *(_number(c) for c in ("peak_gpu_mem", "mean_gpu_util")),
        "executor, slurm_id, node, iif(preemptible, 'true', 'false')",
        _number("cpu_s"),
        "cpu_source",
        _number("peak_mem_bytes"),
        "peak_mem_source",
        "ifnull(granted_devices, 'null')",
    ]
)


def _text(stored: str) -> str:
    """A stored name or cwd (`encode_text`) as a JSON string."""
    return _quote(decode_text(stored) if stored.startswith('"') else stored)


def _string(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def _after(deps: tuple[tuple[int, str], ...]) -> str:
    return "[" + ", ".join(f'{{"job": {d}, "cond": {_quote(c)}}}' for d, c in deps) + "]"


def _raw_json_ok(stored: str) -> bool:
    """Whether a stored JSON column (written by `json.dumps`) can be copied into the output as
    it is: not when it holds a non-finite number (`dumps` writes null there) or an `env` table
    (a spec's environment: its secret-looking values are masked, which needs the parsed value)."""
    return not ('"env"' in stored or "NaN" in stored or "Infinity" in stored)


def _json_page(store: Store, rows: list[Any], words: tuple[str, ...]) -> list[str]:
    """Each `_JSON_COLUMNS` row as the text `dumps(job.to_json(secret_words=words))` gives,
    without parsing its spec or argv (copied as stored) or building a Job. A row whose stored
    JSON cannot be copied (`_raw_json_ok`) is read again as a Job and written by `to_json`."""
    deps = store._deps_for(r[0] for r in rows)
    s, q = _string, _quote
    out = []
    for r in rows:
        if not (_raw_json_ok(r[5]) and _raw_json_ok(r[6]) and _raw_json_ok(r[15])):
            for job in store._jobs_where("WHERE id=?", (r[0],), light="no-env"):  # unless gone
                out.append(dumps(job.to_json(secret_words=words)))
            continue
        text = _JSON_TEMPLATE % (
            r[0], _text(r[1]), q(r[2]), q(r[3]), s(r[4]), r[5], r[6], _text(r[7]), r[8], q(r[9]),
            r[10], r[11], r[12], r[13], s(r[14]), r[15], r[16], r[17], r[18], _after(deps[r[0]]),
            r[20], s(r[21]), r[22], r[23], r[24], r[25], r[26], r[27], s(r[28]), r[29], r[30],
            q(r[31]), s(r[32]), s(r[33]), r[34], r[35], s(r[36]), r[37], s(r[38]), r[39],
        )  # fmt: skip
        out.append(text)
    return out


def job_json_pages(
    store: Store,
    states: Iterable[str] | None = None,
    secret_words: Iterable[str] = (),
    page: int = 1000,
    also: Sequence[int] = (),
) -> Iterator[list[str]]:
    """Every job (in `states`, if given) as JSON texts, oldest first, `page` jobs at a time:
    each text is what `dumps(job.to_json(secret_words=...))` gives, the environment left out.
    `also`: ids of other jobs to list with them, merged by id (`ls --json`: the latest ended
    jobs beside every active one). Pages are indexed range reads (`Store.row_pages`: keyset on
    id, per state), so the cost is linear in the jobs printed and memory stays flat whatever the
    queue's length."""
    words = tuple(secret_words)
    pages = store.row_pages(_JSON_COLUMNS, states, page)
    if also:
        marks = ",".join("?" * len(also))
        extra = store.conn.execute(
            f"SELECT {_JSON_COLUMNS} FROM jobs WHERE id IN ({marks}) ORDER BY id", list(also)
        ).fetchall()
        rows_in_order = heapq.merge((r for p in pages for r in p), extra, key=lambda r: r[0])
        pages = (list(itertools.islice(rows_in_order, page)) for _ in itertools.count())
        pages = itertools.takewhile(bool, pages)
    for rows in pages:
        yield _json_page(store, rows, words)
