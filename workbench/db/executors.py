"""Where jobs run: the executor of each job, its Slurm job id and node, and how much of its record
file the daemon has ingested (the jobs table's columns of migration 60)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from workbench.db.store import PAUSED, QUEUED, RUNNING, Store


@dataclass(frozen=True)
class Placement:
    """Where a job runs: `executor` is 'local' or 'slurm'; `slurm_id` is the Slurm job id
    (`123`, or `120_3` for task 3 of array 120) once submitted; `node` the host it runs on."""

    job_id: int
    executor: str
    slurm_id: str | None
    node: str | None
    records_offset: int = 0
    restarts: int = 0  # how often Slurm requeued its current Slurm job (RestartCnt)


def placements(store: Store, ids: Iterable[int]) -> dict[int, Placement]:
    """Placement per job id (for `show`, `ls` and the Queue screen's executor/node column)."""
    ids = list(set(ids))
    out: dict[int, Placement] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for row in store.conn.execute(
            "SELECT id, executor, slurm_id, node, records_offset, slurm_restarts FROM jobs"
            f" WHERE id IN ({marks})",
            chunk,
        ):
            out[row[0]] = Placement(*row)
    return out


def slurm_placements(store: Store) -> list[Placement]:
    """Jobs the Slurm executor must look after: every active Slurm job, and ended ones that Slurm
    may still hold (submitted, not yet seen ended by squeue: e.g. cancelled while pending).
    Both halves read partial indexes, so the cost is the number of Slurm jobs, not of jobs."""
    rows = store.conn.execute(
        "SELECT id, executor, slurm_id, node, records_offset, slurm_restarts FROM jobs"
        " WHERE executor='slurm' AND state IN (?, ?, ?)"
        " UNION SELECT id, executor, slurm_id, node, records_offset, slurm_restarts FROM jobs"
        " WHERE slurm_open=1"
        " ORDER BY id",
        (str(QUEUED), str(RUNNING), str(PAUSED)),
    ).fetchall()
    return [Placement(*r) for r in rows]


def set_slurm_id(store: Store, job_ids: list[int], slurm_ids: list[str]) -> None:
    """Record the Slurm ids of freshly submitted jobs (one transaction)."""
    with store.transaction() as conn:
        conn.executemany(
            "UPDATE jobs SET slurm_id=?, slurm_open=1, node=NULL, records_offset=0,"
            " slurm_restarts=0, usage_due=NULL WHERE id=?",
            list(zip(slurm_ids, job_ids, strict=True)),
        )


def set_node(store: Store, job_id: int, node: str) -> None:
    """The node a Slurm job runs on (as squeue names it)."""
    with store.transaction() as conn:
        conn.execute("UPDATE jobs SET node=? WHERE id=? AND node IS NOT ?", (node, job_id, node))


def slurm_options(store: Store, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Per-job sbatch options ({job id: SlurmOptions as a table}) of the jobs that have some."""
    ids = list(set(ids))
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for job_id, text in store.conn.execute(
            f"SELECT id, slurm_options FROM jobs WHERE id IN ({marks})"
            " AND slurm_options IS NOT NULL",
            chunk,
        ):
            value = json.loads(text)
            if isinstance(value, dict):
                out[int(job_id)] = value
    return out


def needs_action(store: Store, ids: Iterable[int]) -> bool:
    """True when one of the jobs has a cancel, pause or resume to carry out, or has ended here
    while Slurm may still hold it (cancelled while pending): the Slurm executor acts at once
    rather than at its next poll."""
    ids = list(ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        row = store.conn.execute(
            f"SELECT 1 FROM jobs WHERE id IN ({marks}) AND (intent IS NOT NULL"
            " OR state NOT IN (?, ?, ?)) LIMIT 1",
            (*chunk, str(QUEUED), str(RUNNING), str(PAUSED)),
        ).fetchone()
        if row is not None:
            return True
    return False


def set_restarts(store: Store, job_id: int, restarts: int) -> None:
    """How often Slurm has requeued the job's current Slurm job (squeue's RestartCnt)."""
    with store.transaction() as conn:
        conn.execute("UPDATE jobs SET slurm_restarts=? WHERE id=?", (restarts, job_id))


def forget_submission(store: Store, job_id: int) -> None:
    """Slurm lost the job before it started: it is handed over again as a new Slurm job."""
    with store.transaction() as conn:
        conn.execute(
            "UPDATE jobs SET slurm_id=NULL, slurm_open=0, node=NULL, records_offset=0,"
            " slurm_restarts=0 WHERE id=?",
            (job_id,),
        )


def close_slurm(store: Store, job_id: int) -> None:
    """Slurm is done with this job (squeue saw it end, or has forgotten it)."""
    with store.transaction() as conn:
        conn.execute("UPDATE jobs SET slurm_open=0 WHERE id=?", (job_id,))


def slurm_ids_of(store: Store, ids: Iterable[int]) -> dict[int, str]:
    """Slurm ids of the given jobs that have one (dependencies of a job being submitted)."""
    return {
        job_id: place.slurm_id
        for job_id, place in placements(store, ids).items()
        if place.slurm_id is not None and place.executor == "slurm"
    }


def set_usage_due(store: Store, job_id: int, until: float) -> None:
    """The settled Slurm job's usage is to be read from sacct until `until` (Unix s)."""
    with store.transaction() as conn:
        conn.execute("UPDATE jobs SET usage_due=? WHERE id=?", (until, job_id))


def usage_waiting(store: Store) -> list[tuple[int, str, float]]:
    """(job id, Slurm id, until when) of the ended jobs whose usage sacct has not given yet
    (a partial index: the cost is the number waiting). A job handed to Slurm again (a retry)
    waits no more: its next attempt's usage is read when that one ends."""
    rows = store.conn.execute(
        "SELECT id, slurm_id, usage_due FROM jobs WHERE usage_due IS NOT NULL ORDER BY id"
    ).fetchall()
    return [(int(r[0]), str(r[1]), float(r[2])) for r in rows if r[1]]


def set_usage(store: Store, job_id: int, columns: dict[str, object] | None) -> None:
    """Store what sacct says the job used (`SlurmUsage.columns`), or nothing where it has no
    record (None); either way the job waits no more. Only an ended job's usage is written."""
    with store.transaction() as conn:
        if columns:
            sets = ", ".join(f"{key}=?" for key in columns)
            conn.execute(
                f"UPDATE jobs SET {sets}, usage_due=NULL WHERE id=? AND state NOT IN (?, ?, ?)",
                (*columns.values(), job_id, str(QUEUED), str(RUNNING), str(PAUSED)),
            )
        conn.execute("UPDATE jobs SET usage_due=NULL WHERE id=?", (job_id,))
