"""Pages of the job table: for a screen that shows a window of it (filter, count, page, position),
and for `ls --json` (jobs as JSON text, a page at a time, without building Job objects)."""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
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
    # Only this uid's jobs ("mine"); a job without a uid (a per-user home) is the home
    # owner's, who is the one looking. None: everyone's.
    owner: int | None = None

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
        if self.owner is not None:
            clauses.append("(uid IS NULL OR uid = ?)")
            params.append(self.owner)
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), params

    def matches(self, job: Job) -> bool:
        """The same test as `sql()`, in Python (for jobs already in memory)."""
        if self.state and job.state != self.state:
            return False
        if self.owner is not None and job.uid is not None and job.uid != self.owner:
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


def text_rows(store: Store, where: JobFilter) -> list[tuple[int, int | None, str, str, Any, str]]:
    """(id, uid, name, kind, argv (a list or None), reason) of every job matching `where`, by
    id: what a text filter reads of a job, for the system daemon to search others' jobs by
    their public text only (`workbench.daemon.teampages`), reading six narrow columns."""
    clause, params = where.sql()
    rows = store.conn.execute(
        f"SELECT id, uid, name, kind, argv, coalesce(reason, '') FROM jobs {clause} ORDER BY id",
        params,
    ).fetchall()
    return [
        (r[0], r[1], decode_text(r[2]), r[3], json.loads(r[4]) if r[4] else None, r[5])
        for r in rows
    ]


def jobs_by_id(store: Store, ids: Sequence[int]) -> list[Job]:
    """The jobs with these ids (those that exist), by id, without their spec and environment."""
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    rows = store.conn.execute(
        f"SELECT {_LIGHT_COLUMNS} FROM jobs WHERE id IN ({marks}) ORDER BY id", list(ids)
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

# `ls --json` writes each job as compact JSON (no spaces after `,` and `:`), ASCII only. SQLite
# writes a row's text itself (json_object: one function call, where building it in Python from
# 40 columns costs twice as much). Its order is `Job.to_json`'s; a test compares the two.
_REAL = "real"  # a REAL column, written with the digits that read back as the same float
_INT = "int"  # an INTEGER column (an integer or NULL: `_FAST_GUARD` checks)
_FIELDS: tuple[tuple[str, str], ...] = (
    ("id", _INT), ("name", "name"), ("kind", "kind"), ("state", "state"),
    ("reason", "reason"), ("spec", "json(spec)"), ("argv", "json(argv)"), ("cwd", "cwd"),
    ("priority", _INT), ("group", "grp"), ("resources", "resources"),
    ("granted_gpus", "json(granted_gpus)"), ("retries", _INT), ("attempt", _INT),
    ("time_limit", _REAL), ("after", "after"), ("pipeline_id", _INT), ("stage", "stage"),
    ("created_at", _REAL), ("started_at", _REAL), ("ended_at", _REAL), ("exit_code", _INT),
    ("pid", _INT), ("progress", _REAL), ("progress_msg", "progress_msg"),
    ("peak_gpu_mem", _INT), ("mean_gpu_util", _REAL), ("executor", "executor"),
    ("slurm_id", "slurm_id"), ("node", "node"),
    ("preemptible", "json(iif(preemptible, 'true', 'false'))"), ("cpu_s", _REAL),
    ("cpu_source", "cpu_source"), ("peak_mem_bytes", _INT),
    ("peak_mem_source", "peak_mem_source"), ("granted_devices", "json(granted_devices)"),
    ("uid", _INT), ("elapsed_s", _REAL), ("alloc_gpus", _INT),
)  # fmt: skip
_RESOURCES = (("gpus", _REAL), ("gpu_mem", _INT), ("cpus", _REAL), ("mem", _INT))


def _real(column: str) -> str:
    """SQL giving a REAL column as a JSON number that reads back as the same float: SQLite's
    own text (15 significant digits) where that reads back equal, else 17 digits (always
    enough for a double: IEEE 754-2008, 5.12.2); NULL (JSON null) for NULL and infinities
    (inf - inf is NaN, which SQLite makes NULL), as `workbench.jsonout.dumps` writes them."""
    text = f"CAST({column} AS TEXT)"
    exact = f"iif(CAST({text} AS REAL) = {column}, {text}, printf('%!.17g', {column}))"
    return f"iif({column} - {column} = 0, json({exact}), NULL)"


def _value(key: str, how: str) -> str:
    if how == _REAL:
        return _real(key)
    if how == _INT:
        return key
    if how == "resources":
        pairs = [f"'{k}', {_value(k, h)}" for k, h in _RESOURCES]
        return f"json_object({', '.join(pairs)}, 'mig_profile', mig_profile)"
    if how == "after":  # the primary key (job_id, dep_id) keeps each job's in dep_id order
        return (
            "(SELECT json_group_array(json_object('job', dep_id, 'cond', cond))"
            " FROM (SELECT dep_id, cond FROM job_deps WHERE job_id = jobs.id ORDER BY dep_id))"
        )
    return how


# Rows SQLite cannot write as `Job.to_json` reads: a spec whose environment needs masking
# (`mask_job_json`) or that holds a number that is not JSON (json.dumps writes NaN, Infinity);
# a name or cwd stored encoded (`encode_text`: bytes that are not UTF-8); an INTEGER column
# holding something else. `_json_page` writes those from the Job.
_INTS = [k for k, how in (*_FIELDS, *_RESOURCES) if how == _INT]
_FAST_GUARD = " AND ".join(
    [
        "instr(spec, '\"env\"') + instr(spec, 'NaN') + instr(spec, 'Infinity') = 0",
        "substr(name, 1, 1) <> '\"' AND substr(cwd, 1, 1) <> '\"'",
        "typeof(" + " + ".join(f"ifnull({k}, 0)" for k in _INTS) + ") = 'integer'",
    ]
)
_OBJECT = "json_object(" + ", ".join(f"'{k}', {_value(k, how)}" for k, how in _FIELDS) + ")"
_JSON_COLUMNS = f"id, iif({_FAST_GUARD}, {_OBJECT}, NULL)"
_COMPACT = (",", ":")


def _json_page(store: Store, rows: list[Any], words: tuple[str, ...]) -> list[str]:
    """Each `_JSON_COLUMNS` row (id, text or NULL) as the compact ASCII JSON of
    `job.to_json(secret_words=words)`: SQLite's text where it wrote one (text that is not
    ASCII escaped by json.dumps), else the job read again and written by `to_json`."""
    out: list[str] = []
    for job_id, text in rows:
        if text is None:
            for job in store._jobs_where("WHERE id=?", (job_id,), light="no-env"):  # unless gone
                out.append(dumps(job.to_json(secret_words=words), separators=_COMPACT))
        elif text.isascii():
            out.append(text)
        else:
            out.append(dumps(json.loads(text), separators=_COMPACT))
    return out


def job_json_pages(
    store: Store,
    states: Iterable[str] | None = None,
    secret_words: Iterable[str] = (),
    page: int = 1000,
    also: Sequence[int] = (),
) -> Iterator[list[str]]:
    """Every job (in `states`, if given) as compact ASCII JSON texts, oldest first, `page` jobs
    at a time: each text reads back (`json.loads`) as `job.to_json(secret_words=...)`, the
    environment left out (floats equal; text written by SQLite or by json.dumps).
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
