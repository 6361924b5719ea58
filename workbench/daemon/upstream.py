"""What a job on a cluster node knows of its dependencies without the daemon: their records files
and exit statuses on the shared filesystem, applied to the job's private copy of state.db."""

from __future__ import annotations

from pathlib import Path

from workbench.daemon.runner import read_exit
from workbench.db import executors as placement_db
from workbench.db.journal import RECORDS_FILE, RecordError, apply_all_records, private_copy
from workbench.db.store import PAUSED, QUEUED, RUNNING, SETTLED, STARTING, Event, Store


def ancestors(store: Store, job_id: int) -> list[int]:
    """The ids of the jobs `job_id` depends on, directly or through others, each once and every
    job after its own dependencies (depth-first post-order over `Job.deps`). A dependency that
    was removed is left out."""
    order: list[int] = []
    seen = {job_id}
    job = store.find(job_id)
    stack: list[tuple[int, list[int]]] = [(job_id, [d for d, _ in job.deps] if job else [])]
    while stack:
        current, pending = stack[-1]
        if not pending:
            stack.pop()
            if current != job_id:
                order.append(current)
            continue
        dep_id = pending.pop(0)
        if dep_id in seen:
            continue
        seen.add(dep_id)
        dep = store.find(dep_id)
        if dep is not None:
            stack.append((dep_id, [d for d, _ in dep.deps]))
    return order


def catch_up(store: Store, job_id: int, runs: Path) -> list[str]:
    """Bring `store`, the private in-memory copy of state.db a job on a cluster node reads
    (`RecordingStore.open_recording`, never state.db itself), up to what the Slurm jobs it
    depends on (`ancestors`) left under `runs/<id>/`: the lines of each one's records file past
    the offset the daemon had applied when the copy was taken (dataset versions, runs,
    evaluations, models, metrics), then its end from its `exit.json` (succeeded or failed,
    through the transition table). So a pipeline's stage finds its inputs whether or not the
    daemon is alive (a login node may have reaped it), and does not wait for it; the daemon
    applies the same lines to state.db, once each, when it next looks.

    A dependency the daemon has already settled is skipped (its records are all in the copy).
    Returns what could not be applied, in words (a dependency's bad line: the daemon reports
    it on that job too); raises nothing for a missing or unreadable file."""
    notes: list[str] = []
    ids = ancestors(store, job_id)
    places = placement_db.placements(store, ids)
    for dep_id in ids:
        dep = store.find(dep_id)
        place = places.get(dep_id)
        if dep is None or place is None or place.executor != "slurm" or dep.state in SETTLED:
            continue
        run_dir = runs / str(dep_id)
        try:
            apply_all_records(
                store,
                dep_id,
                run_dir / RECORDS_FILE,
                place.records_offset,
                notes,
                allow_writes=dep.kind != "command",  # as the daemon applies them
            )
        except RecordError as error:
            notes.append(str(error))
        status = read_exit(run_dir)
        if status is None:
            continue
        said = f"{status.describe()} (from {dep_id}/exit.json, read on the node)"
        store.transition(dep_id, Event.START, said, only_from=[QUEUED])
        store.transition(dep_id, Event.LAUNCHED, said, only_from=[STARTING])
        event = Event.EXIT_OK if status.ok else Event.EXIT_FAILED
        store.transition(
            dep_id, event, said, only_from=[RUNNING, PAUSED], exit_code=status.exit_code
        )
    return notes


def node_copy(state_db: Path, job_id: int, runs: Path) -> Store:
    """For a script on a cluster node (`workbench.track.dataset()` in a command job): a private
    in-memory copy of state.db caught up with what job `job_id`'s dependencies left under
    `runs` (`catch_up`), to read the catalog from without the daemon. The caller closes it.
    Raises StoreError if state.db cannot be read."""
    copy = private_copy(state_db)
    catch_up(copy, job_id, runs)
    return copy
