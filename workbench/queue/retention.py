"""Retention: ended jobs older than an age leave the store, with their run folders."""

from __future__ import annotations

import shutil
import time

from workbench.db.repro import snapshot_in_use, snapshots_of
from workbench.db.store import Store
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
    room the store's own writes need. Returns the removed ids, oldest first. Costs one
    indexed query per 1,000 jobs."""
    cutoff = (time.time() if now is None else now) - older_than_s
    removed_all: list[int] = []
    while True:
        ids = store.ended_before(cutoff, limit=BATCH)
        if not ids:
            break
        for job_id in ids:  # ended jobs never run again in these folders (a retry starts afresh)
            shutil.rmtree(home.run_dir(job_id), ignore_errors=True)
        snapshots = snapshots_of(store, ids)
        removed = store.remove_ended(ids)
        removed_all += removed
        for path in snapshots:  # the frozen code they ran, once no job left runs from it
            if not snapshot_in_use(store, path):
                shutil.rmtree(path, ignore_errors=True)
        if len(ids) < BATCH:
            break
    return removed_all
