"""The daemon's follower of local jobs' record files: what the tracking API (workbench.track) and
captured files append to `records.jsonl` in a job's run folder is applied to state.db every
FOLLOW_INTERVAL_S while the job runs, and once more when it ends, before its end is recorded (so
a later pipeline stage sees everything it reported). Slurm jobs' records are applied by the Slurm
executor through the same function (workbench/db/journal.py: apply_records)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

from workbench.db import executors as placement_db
from workbench.db.journal import RECORDS_FILE, RecordError, apply_all_records, apply_records
from workbench.db.scheduling import RETRYABLE_ERRORS
from workbench.db.store import Store
from workbench.db.track_records import mark_finished
from workbench.paths import Home

FOLLOW_INTERVAL_S = 0.5


class RecordFollower:
    """Applies new records of the given jobs; `log` gets what could not be applied. A job whose
    file has not grown since the last look costs one `stat`."""

    def __init__(self, home: Home, store: Store, log: Callable[[str], None]):
        self.home = home
        self.store = store
        self.log = log
        self._sizes: dict[int, int] = {}
        self._next = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self._next

    def timeout(self) -> float:
        """Seconds until the next look is due (for the daemon's sleep)."""
        return max(0.0, self._next - time.monotonic())

    def follow(self, job_ids: Iterable[int], force: bool = False) -> None:
        """Apply the new records of `job_ids` (the running local jobs); `force` looks now, else
        at most once per FOLLOW_INTERVAL_S."""
        if not force and not self.due():
            return
        if not force:
            self._next = time.monotonic() + FOLLOW_INTERVAL_S
        grown: dict[int, int] = {}
        for job_id in job_ids:
            try:
                size = os.stat(self.home.run_dir(job_id) / RECORDS_FILE).st_size
            except OSError:
                continue
            if size != self._sizes.get(job_id):
                grown[job_id] = size
        if not grown:
            return
        offsets = placement_db.placements(self.store, grown)
        for job_id, size in grown.items():
            place = offsets.get(job_id)
            if place is None:
                continue
            notes: list[str] = []
            path = self.home.run_dir(job_id) / RECORDS_FILE
            apply = apply_all_records if force else apply_records
            start = offset = place.records_offset
            try:
                offset = apply(self.store, job_id, path, offset, notes, allow_writes=False)
            except RecordError as error:  # the offset moved past what it could not apply
                notes.append(str(error))
                offset = placement_db.placements(self.store, [job_id])[job_id].records_offset
            except RETRYABLE_ERRORS as error:  # looked at again next time, not taken as read
                if force:
                    raise
                self.log(f"job {job_id}: records not applied yet ({error}); retrying")
                continue
            if start < offset < size:  # more whole lines may wait (a chunk per look): the
                self._next = 0.0  # next look is due at once, after the daemon's other work
            else:  # only once applied: a failed write is read again
                self._sizes[job_id] = size
            if notes:
                self.log(f"job {job_id}: records skipped: {'; '.join(notes[:3])}")

    def ended(self, job_ids: list[int]) -> None:
        """The jobs' attempts are over: apply what is left of their records, then give their
        script runs an end time. Write errors propagate (the caller retries the ending)."""
        self.follow(job_ids, force=True)
        mark_finished(self.store, job_ids)

    def forget(self, job_ids: Iterable[int]) -> None:
        for job_id in job_ids:
            self._sizes.pop(job_id, None)
