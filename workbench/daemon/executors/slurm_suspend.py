"""Pause and resume of a running Slurm job as `scontrol suspend` / `scontrol resume`, where the
home's `[executor] suspend = true` says its user may (a Slurm operator or administrator). Run
by the client that asks, so that Slurm's refusal reaches it (exit 2) with nothing changed."""

from __future__ import annotations

from workbench.config import load_config
from workbench.daemon.executors.slurm import SlurmClient, SlurmError, SlurmUnreachable
from workbench.db import executors as placement_db
from workbench.db.store import PAUSED, RUNNING, Event, JobError, NotWhereItRuns, Store
from workbench.paths import Home


def suspend_or_resume(
    home: Home, store: Store, job_id: int, action: str, client: SlurmClient | None = None
) -> str | None:
    """Carry out `pause` of a running Slurm job (`scontrol suspend`, only with `[executor]
    suspend = true`) or `resume` of one it suspended (`scontrol resume`, whatever the setting:
    a job suspended before the setting was turned off can still go on), then record it (the
    job is `paused` or `running` at once). Returns the new state, or None where this does not
    apply (a local job, a queued one, which Slurm holds, or no setting): `Store.request` then
    answers. Raises NotWhereItRuns (exit 2) with Slurm's answer when scontrol refused (an
    ordinary user: "Access/permission denied"), JobError when Slurm did not answer; the job
    is left as it was."""
    if action not in ("pause", "resume"):
        return None
    job = store.find(job_id)
    place = placement_db.placements(store, [job_id]).get(job_id)
    if job is None or place is None or place.executor != "slurm" or not place.slurm_id:
        return None
    settings = load_config(home.config).executor
    if action == "pause":
        if job.state != RUNNING or not settings.suspend:
            return None
        verb, done = "suspend", "suspended"
    else:
        events = store.events(job_id)
        if job.state != PAUSED or not events or events[-1].event != Event.PAUSE:
            return None  # held while queued: released by the store's request
        verb, done = "resume", "resumed"
    client = client or SlurmClient(timeout_s=settings.command_timeout_s)
    try:
        (client.suspend if verb == "suspend" else client.resume)(place.slurm_id)
    except SlurmUnreachable as error:
        raise JobError(
            f"job {job_id}: Slurm did not answer `scontrol {verb} {place.slurm_id}` ({error});"
            " the daemon shows the job as Slurm reports it once it answers"
        ) from error
    except SlurmError as error:
        raise NotWhereItRuns(
            f"job {job_id}: Slurm refused `scontrol {verb} {place.slurm_id}` ({error}); nothing"
            " changed. Suspending needs an operator or administrator of the cluster: unless you"
            " are one, set [executor] suspend = false in config.toml, and cancel the job instead"
        ) from error
    return store.request(
        job_id, action, done_in_slurm=f"{done} in Slurm (scontrol {verb} {place.slurm_id})"
    )
