"""Retention: ended jobs older than an age leave the store, with their run folders; run folders
and lake staging folders that nothing owns any more are removed."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from workbench import safefs
from workbench.db.repro import snapshot_in_use, snapshots_of
from workbench.db.store import Store
from workbench.jobmodel.states import LIVE
from workbench.paths import Home

BATCH = 1000  # jobs per transaction, so a large prune never holds the write lock for long


def prune_ended(
    store: Store, home: Home, older_than_s: float, now: float | None = None
) -> list[int]:
    """Remove jobs that ended more than `older_than_s` seconds ago (succeeded, failed or
    cancelled; never active ones), their events, metrics and run folders `runs/<id>/`, and the
    snapshot folders (`--snapshot`) no remaining job runs from.

    Each removal is audited (action "prune") and its bytes purged from state.db and its
    backup. The run folders go first: on a full disk (often full of job logs) that frees the
    room the store's own writes need; no link in them is followed (`safefs.remove_tree`).
    Returns the removed ids, oldest first. Costs one indexed query per 1,000 jobs."""
    cutoff = (time.time() if now is None else now) - older_than_s
    removed_all: list[int] = []
    while True:
        ids = store.ended_before(cutoff, limit=BATCH)
        if not ids:
            break
        for job_id in ids:  # ended jobs never run again in these folders (a retry starts afresh)
            remove_run_dir(home, job_id)
        snapshots = snapshots_of(store, ids)
        removed = store.remove_ended(ids)
        removed_all += removed
        for path in snapshots:  # the frozen code they ran, once no job left runs from it
            inside = Path(path).parent == home.runs / "snapshots"  # never a path elsewhere
            if inside and not snapshot_in_use(store, path):
                with contextlib.suppress(OSError):
                    safefs.remove_tree(Path(path))
        if len(ids) < BATCH:
            break
    sweep_orphans(store, home)
    return removed_all


def sweep_orphans(store: Store, home: Home) -> tuple[int, int]:
    """Remove what no live writer owns any more: run folders of jobs the store lacks
    (`remove_orphan_run_dirs`) and lake staging folders of writers that died
    (`lake.clean_orphans`: a job that no longer runs, a process that is gone). Returns (run
    folders, staging folders) removed. Run at daemon start and by every prune."""
    from workbench.catalog.lake import clean_orphans

    def live(job_id: int) -> bool:
        return store.states_of([job_id]).get(job_id) in LIVE

    return len(remove_orphan_run_dirs(store, home)), clean_orphans(home, live)


def remove_run_dir(home: Home, job_id: int) -> bool:
    """Remove `runs/<job_id>` and what is in it (a link there is removed, not followed);
    returns False when it could not be removed (its error is left for the next sweep)."""
    try:
        safefs.remove_tree(home.run_dir(job_id))
    except OSError:
        return False
    return True


def remove_orphan_run_dirs(store: Store, home: Home) -> list[int]:
    """Remove the run folders of jobs the store no longer has (a `rm` or `prune` stopped
    between its commit and the folder's removal); returns their ids. One scan of `runs/` and
    one indexed lookup per 500 folders."""
    try:
        names = [n for n in os.listdir(home.runs) if n.isdigit() and n == str(int(n))]
    except OSError:
        return []
    ids = [int(n) for n in names]
    known = store.states_of(ids)
    orphans = [i for i in ids if i not in known]
    return [i for i in orphans if remove_run_dir(home, i)]
