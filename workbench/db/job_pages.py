"""Pages of the job table: for a screen that shows a window of it (filter, count, page, position),
and for `ls --json` (jobs as JSON text, a page at a time, without building Job objects)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

# The store's light columns leave out the spec and the captured environment (they can be large
# and a listing never shows them), so a page costs the same at 200 jobs or 20,000.
from workbench.db.store import (
    _LIGHT_COLUMNS,
    _NO_ENV_COLUMNS,
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
    ' "cpu_source": %s, "peak_mem_bytes": %s, "peak_mem_source": %s}'
)


def _value(value: Any) -> str:
    """One JSON scalar as `workbench.jsonout.dumps` writes it (non-finite floats as null)."""
    if value is None:
        return "null"
    kind = value.__class__
    if kind is str:
        return _quote(value)
    if kind is float:
        return repr(value) if value - value == 0 else "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    return _quote(str(value))


def _text(stored: str) -> str:
    """A stored name or cwd (`encode_text`) as a JSON string."""
    return _quote(decode_text(stored) if stored.startswith('"') else stored)


def _after(deps: tuple[tuple[int, str], ...]) -> str:
    return "[" + ", ".join(f'{{"job": {d}, "cond": {_quote(c)}}}' for d, c in deps) + "]"


def _raw_json_ok(stored: str | None) -> bool:
    """Whether a stored JSON column (written by `json.dumps`) can be copied into the output as
    it is: not when it holds a non-finite number (`dumps` writes null there) or an `env` table
    (a spec's environment: its secret-looking values are masked, which needs the parsed value)."""
    return stored is None or not ('"env"' in stored or "NaN" in stored or "Infinity" in stored)


def _job_json_text(
    row: tuple[Any, ...], deps: tuple[tuple[int, str], ...], words: tuple[str, ...]
) -> str:
    """One job as `dumps(job.to_json(secret_words=words))` writes it, from a `_NO_ENV_COLUMNS`
    row, without parsing its spec or argv (copied as stored) or building a Job. Rows whose stored
    JSON cannot be copied (see `_raw_json_ok`) go through `Job.to_json`: same text, slower."""
    spec, argv, granted = row[4], row[5], row[27]
    if not (_raw_json_ok(spec) and _raw_json_ok(argv) and _raw_json_ok(granted)):
        return dumps(_job_from_row(row, deps).to_json(secret_words=words))
    v = _value
    return _JSON_TEMPLATE % (
        v(row[0]), _text(row[1]), v(row[2]), v(row[3]), v(row[24]), spec, argv or "null",
        _text(row[6]), v(row[8]), v(row[9]), v(row[10]), v(row[11]), v(row[12]), v(row[13]),
        v(row[37]), granted or "null", v(row[14]), v(row[15]), v(row[16]), _after(deps),
        v(row[18]), v(row[19]), v(row[20]), v(row[21]), v(row[22]), v(row[23]), v(row[25]),
        v(row[29]), v(row[30]), v(row[31]), v(row[32]), v(row[34]), v(row[35]), v(row[36]),
        "true" if row[38] else "false", v(row[39]), v(row[40]), v(row[41]), v(row[42]),
    )  # fmt: skip


def _json_page(store: Store, rows: list[Any], words: tuple[str, ...]) -> list[str]:
    deps = store._deps_for(r[0] for r in rows)
    return [_job_json_text(r, deps[r[0]], words) for r in rows]


def job_json_pages(
    store: Store,
    states: Iterable[str] | None = None,
    secret_words: Iterable[str] = (),
    page: int = 1000,
) -> Iterator[list[str]]:
    """Every job (in `states`, if given) as JSON texts, oldest first, `page` jobs at a time:
    each text is what `dumps(job.to_json(secret_words=...))` gives, the environment left out.
    Each page is one indexed range read (keyset on id), so the cost is linear in the jobs
    printed and memory stays flat whatever the queue's length."""
    words = tuple(secret_words)
    where, params = "", []
    if states is not None:
        params = [str(s) for s in states]
        where = f" AND state IN ({','.join('?' * len(params))})"
    after = 0
    while True:
        rows = store.conn.execute(
            f"SELECT {_NO_ENV_COLUMNS} FROM jobs WHERE id>?{where} ORDER BY id LIMIT ?",
            (after, *params, page),
        ).fetchall()
        if not rows:
            return
        yield _json_page(store, rows, words)
        after = rows[-1][0]


def job_json_by_ids(
    store: Store, ids: Sequence[int], secret_words: Iterable[str] = (), page: int = 500
) -> Iterator[list[str]]:
    """The jobs with these ids as JSON texts (as `job_json_pages`), by id, `page` at a time;
    ids that name no job are left out."""
    words = tuple(secret_words)
    ordered = sorted(set(ids))
    for start in range(0, len(ordered), page):
        chunk = ordered[start : start + page]
        marks = ",".join("?" * len(chunk))
        rows = store.conn.execute(
            f"SELECT {_NO_ENV_COLUMNS} FROM jobs WHERE id IN ({marks}) ORDER BY id", chunk
        ).fetchall()
        if rows:
            yield _json_page(store, rows, words)
