"""`workbench --batch PIPELINE.toml` through the system daemon (team mode).

The pipeline's stages go to the daemon in one `submit` request (a built-in kind's stage as the
command job that runs it in the caller's own home: `workbench.daemon.teamrun`), all or none, each job naming the earlier jobs it waits for by
their position in the request (`after_index`; the daemon checks them and records the pipeline
and each job's stage, `workbench.daemon.teamops.pipeline_from_wire`). `run_pipeline` then
follows them over the wire, with the progress, summary, `--json` events, exit codes and
Ctrl-C/SIGTERM cancelling of a per-user `--batch`. The jobs are the caller's: the daemon takes
who asks from the kernel."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from workbench.cli.team import (
    Refused,
    TeamClient,
    queue_built_in,
    request_to_wire,
    settle_ended,
    tell_built_in,
    withdraw,
)
from workbench.cli.team import run as run_in_team
from workbench.db.store import Job
from workbench.jobmodel.resources import Resources
from workbench.jobmodel.states import JobState
from workbench.queue.pipeline import Pipeline, load_pipeline, run_pipeline
from workbench.queue.spec import SpecError

POLL_S = 0.2  # between two looks at the pipeline's jobs: one request on the system socket
_PER_USER_HINT = "set WORKBENCH_HOME to run it on your own per-user daemon"


def check_team_stage(table: dict[str, Any], where: str) -> None:
    """Refuse a `[[stage]]` table the system daemon cannot run: per-job Slurm options (it runs
    jobs on this machine only). `where` names the file and stage. Raises SpecError (exit 2).
    A built-in kind's stage runs in the caller's own home (`workbench.cli.team`'s
    `queue_built_in`)."""
    if table.get("slurm"):
        raise SpecError(
            f"{where}: key 'slurm': team mode runs command stages on this machine only (no"
            f" Slurm); {_PER_USER_HINT}"
        )


def wire_jobs(pipeline: Pipeline) -> list[dict[str, Any]]:
    """The pipeline's jobs as one `submit` request carries them, in stage order: each job as
    `request_to_wire` writes it, with its `stage` and `after_index` ([position, cond] of every
    job of each stage it waits for; a stage's dependencies come before it in `stages`)."""
    positions: dict[str, list[int]] = {}
    jobs: list[dict[str, Any]] = []
    for stage in pipeline.stages:
        links = [[i, cond] for dep, cond in stage.after for i in positions[dep]]
        for request in stage.requests:
            positions.setdefault(stage.name, []).append(len(jobs))
            jobs.append({**request_to_wire(request), "stage": stage.name, "after_index": links})
    return jobs


def job_from_view(view: dict[str, Any]) -> Job:
    """A Job from the daemon's view of it (`Job.to_json`'s keys, as the rights show them):
    what `run_pipeline` reads of a job (state, reason, times, progress, stage, dependencies);
    fields the view leaves out are empty."""
    given = {f.name for f in dataclasses.fields(Job)}
    values = {key: value for key, value in view.items() if key in given}
    values["state"] = JobState(view["state"])
    values["resources"] = Resources(**(view.get("resources") or {}))
    values["deps"] = tuple((d["job"], d["cond"]) for d in view.get("after") or ())
    for key in ("spec", "env"):
        values[key] = view.get(key) or {}
    values.setdefault("cwd", "")
    values.setdefault("retries", 0)
    values.setdefault("attempt", 0)
    values.setdefault("fail_unrunnable", False)
    values.setdefault("created_at", 0.0)
    missing = dict.fromkeys(f.name for f in dataclasses.fields(Job) if f.name not in values)
    return Job(**{**missing, **values})


def submit_pipeline(client: TeamClient, pipe: Pipeline) -> tuple[int, list[int]]:
    """Queue a loaded pipeline's jobs through the system daemon in one request (all or none;
    built-in stages run in the caller's own home, `queue_built_in`): its id and its job ids in
    stage order. Raises as `TeamClient.ask`."""
    head = {"name": pipe.name, "path": str(pipe.path)}
    requests = [r for stage in pipe.stages for r in stage.requests]
    own = queue_built_in(requests)  # built-in stages: run in the caller's own home
    sent = iter(own.get(i, (r, 0))[0] for i, r in enumerate(requests))
    stages = [
        dataclasses.replace(st, requests=tuple(next(sent) for _ in st.requests))
        for st in pipe.stages
    ]
    try:
        wired = wire_jobs(dataclasses.replace(pipe, stages=tuple(stages)))
        reply = client.ask("submit", pipeline=head, jobs=wired)
    except BaseException:
        withdraw(own, "the system daemon did not take the pipeline")
        raise
    ids = [int(i) for i in reply["ids"]]
    tell_built_in(own, ids)
    return int(reply["pipeline_id"]), ids


def run(path: str, json_mode: bool, executor: str | None, socket_path: str) -> int | None:
    """Run the pipeline at `path` through the system daemon at `socket_path`; its exit code
    (as `run_pipeline`'s, or the daemon's refusal's), or None when the daemon does not answer
    (the caller then runs it per user, as other commands do). Raises SpecError (exit 2) for a
    file team mode cannot run, before anything is queued."""
    if executor == "slurm":
        raise SpecError(
            f"--executor slurm: team mode runs jobs on this machine only; {_PER_USER_HINT}"
        )
    pipeline = load_pipeline(Path(path), check_stage=check_team_stage, capture=False)

    def follow(client: TeamClient, _args: argparse.Namespace) -> int:
        def submit(pipe: Pipeline) -> tuple[int, list[int]]:
            return submit_pipeline(client, pipe)

        def poll(ids: list[int]) -> list[Job]:
            return [job_from_view(view) for view in client.ask("jobs", ids=ids)["jobs"]]

        def cancel(job_id: int) -> None:
            try:
                client.ask("control", id=job_id, action="cancel")
            except Refused:  # it ended meanwhile
                pass

        ids: list[int] = []

        def submit_and_note(pipe: Pipeline) -> tuple[int, list[int]]:
            pipeline_id, job_ids = submit(pipe)
            ids.extend(job_ids)
            return pipeline_id, job_ids

        try:
            return run_pipeline(
                pipeline, submit_and_note, poll, cancel, json_mode=json_mode, interval_s=POLL_S
            )
        finally:  # stages blocked by a failed one, or cancelled: their own-home jobs too
            if ids:
                try:
                    settle_ended(client.ask("jobs", ids=ids)["jobs"])
                except (Refused, OSError):
                    pass  # the daemon is gone: `workbench ls` settles them later

    return run_in_team(argparse.Namespace(), socket_path, follow)
