"""Pipeline files: parse and validate the whole TOML first, then run the stages as queue jobs
(`workbench --batch`), reporting progress on stderr and results on stdout."""

from __future__ import annotations

import dataclasses
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from workbench.config import load_config
from workbench.db.store import (
    ENDED,
    QUEUED,
    RUNNING,
    SETTLED,
    SUCCEEDED,
    Job,
    JobRequest,
    Store,
)
from workbench.jsonout import dumps
from workbench.paths import Home
from workbench.queue import repro
from workbench.queue.kinds import load_kind
from workbench.queue.requests import build_request
from workbench.queue.spec import SpecError, check_keys, coerce
from workbench.safetext import display_text
from workbench.units import format_duration
from workbench.userfiles import UserFileError, read_toml

AFTER_KEYS = {"after": "ok", "after_any": "any", "after_fail": "fail"}


@dataclass(frozen=True)
class Stage:
    """One validated `[[stage]]`: its job request(s) and the stages it waits for."""

    name: str
    requests: tuple[JobRequest, ...]
    after: tuple[tuple[str, str], ...]
    group_limit: tuple[str, int] | None = None  # a sweep's points share a capped group


@dataclass(frozen=True)
class Pipeline:
    name: str
    path: Path
    stages: tuple[Stage, ...] = field(default=())


def _read_toml(path: Path, regular_only: bool = False) -> dict[str, Any]:
    try:
        return read_toml(path, regular_only)
    except UserFileError as error:
        raise SpecError(str(error)) from None


def _stage_order(stages: dict[str, tuple[tuple[str, str], ...]], path: Path) -> list[str]:
    """Stages ordered so each comes after its dependencies (otherwise in file order); refuses
    a cycle, naming it. A depth-first search with its own stack, not Python's: a chain of any
    length (thousands of stages listed last first) is ordered without a recursion limit. Costs
    O(stages + dependencies)."""
    order: list[str] = []
    state: dict[str, str] = {}
    for root in stages:
        if state.get(root) == "done":
            continue
        state[root] = "visiting"
        trail = [root]  # the stages being visited, each waiting on the next
        pending = [iter(stages[root])]
        while pending:
            step = next(pending[-1], None)
            if step is None:
                done = trail.pop()
                pending.pop()
                state[done] = "done"
                order.append(done)
                continue
            dep = step[0]
            if state.get(dep) == "done":
                continue
            if state.get(dep) == "visiting":
                cycle = [*trail[trail.index(dep) :], dep]
                raise SpecError(f"{path}: stage '{dep}': key 'after': cycle {_cycle_text(cycle)}")
            state[dep] = "visiting"
            trail.append(dep)
            pending.append(iter(stages[dep]))
    return order


_CYCLE_SHOWN = 10  # stages named at each end of a longer cycle


def _cycle_text(cycle: list[str]) -> str:
    """`a -> b -> a` (each stage waits on the next); a long cycle is shown by its ends."""
    if len(cycle) <= 2 * _CYCLE_SHOWN + 1:
        return " -> ".join(cycle)
    head, tail = cycle[:_CYCLE_SHOWN], cycle[-_CYCLE_SHOWN:]
    return f"{' -> '.join(head)} -> ... -> {' -> '.join(tail)} ({len(cycle) - 1} stages)"


def load_pipeline(
    path: Path,
    env: dict[str, str] | None = None,
    check_stage: Callable[[dict[str, Any], str], None] | None = None,
    capture: bool = True,
) -> Pipeline:
    """Read and validate a whole pipeline file; any problem raises SpecError naming stage and key.

    `check_stage(table, where)` is called with each `[[stage]]` table before it is built (team
    mode refuses what its daemon cannot run there, before the checks that would ask the user's
    own lake); `capture`: record each job's code and environment (`repro.capture`)."""
    path = Path(path).resolve()
    data = _read_toml(path)
    check_keys(data, ["pipeline", "stage"], str(path))
    head = coerce(data.get("pipeline", {}), dict[str, Any], f"{path}: [pipeline]")
    check_keys(head, ["name", "description"], f"{path}: [pipeline]")
    name = coerce(head.get("name", path.stem), str, f"{path}: [pipeline]: key 'name'")
    tables = data.get("stage")
    if not isinstance(tables, list) or not tables:
        raise SpecError(f"{path}: no [[stage]] tables")
    base_dir = path.parent
    built: dict[str, Stage] = {}
    home = Home.current()
    config = load_config(home.config)
    cache: dict[Any, Any] = {}  # code state and environment, once per folder and interpreter
    for number, table in enumerate(tables, 1):
        if not isinstance(table, dict):
            raise SpecError(f"{path}: stage #{number}: expected a table")
        stage_name = table.get("name")
        if not isinstance(stage_name, str) or not stage_name:
            raise SpecError(f"{path}: stage #{number}: missing key 'name'")
        where = f"{path}: stage '{stage_name}'"
        if stage_name in built:
            raise SpecError(f"{where}: key 'name': another stage has this name")
        if check_stage is not None:
            check_stage(table, where)
        after: list[tuple[str, str]] = []
        for key, cond in AFTER_KEYS.items():
            for dep in coerce(table.get(key, []), list[str], f"{where}: key '{key}'"):
                after.append((dep, cond))
        request_table = {k: v for k, v in table.items() if k not in AFTER_KEYS}
        request_table.setdefault("name", stage_name)
        points, group_limit = _expand(request_table, stage_name, name, where)
        requests = tuple(
            build_request(point, base_dir, where, env, stage=stage_name, fail_unrunnable=True)
            for point in points
        )
        if capture:
            requests = tuple(
                repro.capture(r, home.runs, config.snapshot, config.snapshot_cap_bytes, cache)
                for r in requests
            )
        built[stage_name] = Stage(stage_name, requests, tuple(after), group_limit)
    for stage in built.values():
        for dep, _ in stage.after:
            if dep not in built:
                raise SpecError(
                    f"{path}: stage '{stage.name}': key 'after': no stage named '{dep}'"
                )
    for stage_name, stage in built.items():
        built[stage_name] = _after_model_stage(stage, built)
    _check_catalog(built, path)
    for stage_name, stage in built.items():
        built[stage_name] = _after_best_point(stage, built)
        _check_against_upstream(stage, built, f"{path}: stage '{stage_name}'")
    order = _stage_order({s.name: s.after for s in built.values()}, path)
    return Pipeline(name, path, tuple(built[n] for n in order))


def _expand(
    table: dict[str, Any], stage: str, pipeline: str, where: str
) -> tuple[list[dict[str, Any]], tuple[str, int] | None]:
    """A stage whose kind can expand it (a train stage with `[stage.sweep]`) becomes one table
    per point, named `stage[point]`, in a group capped at the sweep's parallelism."""
    kind = table.get("kind")
    if not isinstance(kind, str) or "sweep" not in table:
        return [table], None
    expand = getattr(load_kind(kind, where), "expand", None)
    if expand is None:
        raise SpecError(f"{where}: key 'sweep': kind {kind!r} does not sweep")
    points, sweep = expand(table, where)
    group = table.get("group") or f"sweep-{pipeline}-{stage}"
    tables = [{**point, "name": f"{stage}[{label}]", "group": group} for label, point in points]
    return tables, (str(group), int(sweep.parallel))


def _check_against_upstream(stage: Stage, built: dict[str, Stage], where: str) -> None:
    """Checks a stage's kind makes against the stage its `model` names (a test stage's gates
    against the task a train stage sets, through an export stage too)."""
    for request in stage.requests:
        check = getattr(load_kind(request.kind, where), "check_upstream", None)
        upstream = built.get(str(request.spec.get("model", "")))
        seen: set[str] = set()
        while upstream is not None and upstream.requests[0].kind == "export":
            if upstream.name in seen:
                break
            seen.add(upstream.name)
            upstream = built.get(str(upstream.requests[0].spec.get("model", "")))
        if check is not None and upstream is not None:
            check(request.spec, upstream.requests[0].kind, upstream.requests[0].spec, where)


MODEL_TAKING_KINDS = ("test", "export", "serve")
"""Kinds whose `model` may name another stage: that stage is then an implicit dependency."""


def _after_model_stage(stage: Stage, built: dict[str, Stage]) -> Stage:
    """A test, export or serve stage whose `model` names another stage of the pipeline runs
    after it (as if `after` named it; DVC infers a dependency from an output the same way)."""
    named = {str(r.spec.get("model", "")) for r in stage.requests if r.kind in MODEL_TAKING_KINDS}
    extra = tuple(
        (dep, "ok")
        for dep in sorted(named)
        if dep in built and dep != stage.name and all(d != dep for d, _ in stage.after)
    )
    if not extra:
        return stage
    return Stage(stage.name, stage.requests, stage.after + extra, stage.group_limit)


def _check_catalog(built: dict[str, Stage], path: Path) -> None:
    """Each stage's datasets and columns against the lake's catalog (`catalogcheck`), knowing
    the datasets the pipeline's ingest stages write."""
    from workbench.paths import Home
    from workbench.queue.catalogcheck import check_refs, refs_of

    produced = frozenset(
        str(r.spec.get("dataset")) for s in built.values() for r in s.requests if r.kind == "ingest"
    )
    home = Home.current()
    for stage in built.values():
        refs = [ref for r in stage.requests for ref in refs_of(r.kind, r.spec)]
        check_refs(home, list(dict.fromkeys(refs)), f"{path}: stage '{stage.name}'", produced)


def _after_best_point(stage: Stage, built: dict[str, Stage]) -> Stage:
    """A stage that takes its model from a swept stage (`model = "<sweep stage>"`) needs the
    sweep's best point, not every point: it waits for all points to end (`any`) instead of
    for all to succeed, so one failed point does not block it; with no point succeeded it fails
    saying so (jobs.bundle.resolve_model)."""
    models = {str(r.spec.get("model", "")) for r in stage.requests}
    after = tuple(
        (dep, "any")
        if cond == "ok" and built[dep].group_limit is not None and models == {dep}
        else (dep, cond)
        for dep, cond in stage.after
        if dep in built
    )
    if after == stage.after:
        return stage
    return Stage(stage.name, stage.requests, after, stage.group_limit)


# ---- running --------------------------------------------------------------------------------


def _job_line(job: Job) -> dict[str, Any]:
    duration = None
    if job.started_at:
        duration = (job.ended_at or time.time()) - job.started_at
    return {
        "stage": job.stage,
        "job": job.id,
        "state": job.state,
        "reason": job.reason,
        "exit_code": job.exit_code,
        "duration_s": round(duration, 3) if duration is not None else None,
        "progress": job.progress,
        "message": job.progress_msg,
    }


class _Reporter:
    """Progress to stderr (rich bars on a terminal, plain lines otherwise) or JSON lines to stdout."""

    def __init__(self, json_mode: bool, out: IO[str], err: IO[str]):
        self.json_mode = json_mode
        self.out = out
        self.err = err
        # Per job: (state, progress, progress message, wait reason while queued).
        self.last: dict[int, tuple[str, float | None, str | None, str | None]] = {}
        self.said: dict[int, str] = {}  # the wait reason last printed, its numbers masked
        self.progress: Any = None
        self.tasks: dict[int, Any] = {}
        if not json_mode and err.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
            from rich.table import Column

            console = Console(file=err)
            # Stage, state and time keep their width; at 80 columns the bar shrinks and the
            # message is cut at its end (it was the stage and state that were cut).
            self.progress = Progress(
                TextColumn("{task.fields[stage]}", table_column=Column(no_wrap=True, min_width=12)),
                BarColumn(bar_width=40 if console.width >= 120 else 12),
                TextColumn("{task.percentage:>3.0f}%", table_column=Column(no_wrap=True)),
                TextColumn("{task.fields[state]}", table_column=Column(no_wrap=True, min_width=9)),
                TimeElapsedColumn(table_column=Column(no_wrap=True)),
                TextColumn(
                    "{task.fields[message]}",
                    table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis"),
                ),
                console=console,
            )

    def __enter__(self) -> _Reporter:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def emit(self, event: dict[str, Any]) -> None:
        if self.json_mode:
            print(dumps(event), file=self.out, flush=True)

    def update(self, jobs: list[Job]) -> None:
        unfinished = {j.id for j in jobs if j.state != SUCCEEDED}
        for job in jobs:
            waits = job.reason if job.state == QUEUED else None
            if waits is not None and waits.startswith("behind other waiting jobs"):
                # The daemon says this of a job it has not planned yet; a stage whose
                # dependency has not finished waits for that first (said as the scheduler does).
                pending = [str(dep) for dep, _ in job.deps if dep in unfinished]
                if pending:
                    kind = "dependency" if len(pending) == 1 else "dependencies"
                    waits = f"waiting for {kind} {', '.join(pending)}"
                    job = dataclasses.replace(job, reason=waits)
            key = (job.state, job.progress, job.progress_msg, waits)
            if self.last.get(job.id) == key:
                continue
            previous = self.last.get(job.id)
            self.last[job.id] = key
            line = _job_line(job)
            if previous is None or previous[0] != job.state:
                self.emit({"type": "state", **line})
                if self.progress is None and not self.json_mode:
                    quiet = job.state in (RUNNING, SUCCEEDED)
                    said = display_text((job.reason or "").strip())
                    # A reason that only repeats the state ("starting (starting)") says nothing.
                    repeats = said.lower().rstrip(".") == str(job.state).lower()
                    reason = f" ({said})" if said and not quiet and not repeats else ""
                    self.said[job.id] = _masked(said)
                    print(
                        f"[{job.stage}] job {job.id} {job.state}{reason}", file=self.err, flush=True
                    )
            elif previous[3] != waits:
                # Why a queued job waits is written by the daemon after it is queued, and
                # changes as the queue moves: a `wait` event, and a line when the words change
                # (not for every memory figure that moves).
                self.emit({"type": "wait", **line})
                said = display_text((waits or "").strip())
                plain = self.progress is None and not self.json_mode
                if said and plain and self.said.get(job.id) != _masked(said):
                    self.said[job.id] = _masked(said)
                    print(f"[{job.stage}] job {job.id} waits: {said}", file=self.err, flush=True)
            elif self.json_mode:
                self.emit({"type": "progress", **line})
            if self.progress is not None:
                if job.id not in self.tasks:
                    self.tasks[job.id] = self.progress.add_task(
                        "", total=1.0, stage=job.stage, state=job.state, message=""
                    )
                task = self.tasks[job.id]
                done = 1.0 if job.state == SUCCEEDED else (job.progress or 0.0)
                quiet = job.state in (RUNNING, SUCCEEDED)
                message = display_text(job.progress_msg or ("" if quiet else job.reason) or "")
                self.progress.update(task, completed=done, state=job.state, message=message[:60])
                if job.state in SETTLED:
                    self.progress.stop_task(task)  # its clock stops with it


def _masked(reason: str) -> str:
    """A wait reason with its figures masked, to tell a new reason from moving numbers."""
    return re.sub(r"[0-9]+(?:\.[0-9]+)?", "#", reason)


def summary_table(pipeline_name: str, jobs: list[Job], notes: list[str]) -> str:
    """The results, as plain text for stdout."""
    lines = [f"pipeline {pipeline_name}"]
    width = max((len(j.name if j.name != j.stage else j.stage or "") for j in jobs), default=5)
    for job in jobs:
        line = _job_line(job)
        reason = f"  {display_text(job.reason)}" if job.reason and job.state != SUCCEEDED else ""
        label = display_text(job.name if job.name != job.stage else job.stage or "")
        lines.append(
            f"  {label:<{width}}  job {job.id:<5} {job.state:<10}"
            f" {format_duration(line['duration_s']):>8}{reason}"
        )
    lines.extend(f"  {note}" for note in notes)
    return "\n".join(lines)


def sweep_results(
    pipeline: Pipeline, pipeline_id: int, store: Store, jobs: list[Job] | None = None
) -> list[dict[str, Any]]:
    """For each swept stage, the best point by the sweep's metric (NaN and failed points never
    win; ties go to the lower val_loss, then the older job) and each failed point's reason."""
    from workbench.catalog import tracking

    results = []
    for stage in pipeline.stages:
        if stage.group_limit is None:
            continue
        metric = str((stage.requests[0].spec.get("sweep") or {}).get("metric") or "")
        candidates = tracking.stage_runs(store, pipeline_id, stage.name)
        metric = metric or (
            "val_accuracy" if candidates and candidates[0].task == "classification" else "-val_loss"
        )
        best = tracking.best_run(candidates, metric)
        name, _ = tracking.metric_order(metric)
        points = [j for j in (jobs or []) if j.stage == stage.name]
        results.append(
            {
                "stage": stage.name,
                "metric": metric,
                "points": len(stage.requests),
                "best_job": best.job_id if best else None,
                "best_name": best.name if best else None,
                "best_value": best.metrics.get(name) if best else None,
                "tie_rule": "lower val_loss, then the older job",
                "failed": [
                    {"job": j.id, "name": j.name, "state": j.state, "reason": j.reason}
                    for j in points
                    if j.state in SETTLED and j.state != SUCCEEDED
                ],
            }
        )
    return results


class Terminated(KeyboardInterrupt):
    """SIGTERM (from `timeout`, a CI runner, `kill`) while a batch runs: handled as Ctrl-C is
    (the batch cancels its stages), but the exit code is 143 (128 + SIGTERM), not 130."""

    exit_code = 128 + signal.SIGTERM


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def _excused(jobs: list[Job], sweeps: list[dict[str, Any]]) -> set[int]:
    """Failed sweep points of a sweep that still has a best point: recorded, not fatal."""
    return {point["job"] for s in sweeps if s["best_job"] is not None for point in s["failed"]}


def _submit_holding_ctrl_c(
    submit: Callable[[Pipeline], tuple[int, list[int]]], pipeline: Pipeline
) -> tuple[int, list[int], type[KeyboardInterrupt] | None]:
    """Submit with Ctrl-C and SIGTERM held back, and say which came meanwhile (the exception
    to raise once the jobs are known), if any.

    The daemon may start a stage before the submit call returns; a Ctrl-C in that window
    must still cancel what was queued rather than leave it running with no one watching.
    A handler (not a blocked mask) holds it, so the daemon this may spawn starts clean.
    """
    if threading.current_thread() is not threading.main_thread():
        pipeline_id, ids = submit(pipeline)
        return pipeline_id, ids, None
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    previous_term = signal.signal(signal.SIGTERM, lambda signum, _frame: caught.append(signum))
    try:
        pipeline_id, ids = submit(pipeline)
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
    if signal.SIGTERM in caught:
        raise_after: type[KeyboardInterrupt] | None = Terminated
    else:
        raise_after = KeyboardInterrupt if caught else None
    return pipeline_id, ids, raise_after


def run_pipeline(
    pipeline: Pipeline,
    submit: Callable[[Pipeline], tuple[int, list[int]]],
    poll: Callable[[list[int]], list[Job]],
    cancel: Callable[[int], None],
    json_mode: bool = False,
    out: IO[str] = sys.stdout,
    err: IO[str] = sys.stderr,
    interval_s: float = 0.1,
    store: Store | None = None,
) -> int:
    """Submit the stages, follow them to the end, print the summary; 0 iff all succeeded.

    Ctrl-C or SIGTERM cancels the jobs this run started and waits for them to stop; the result
    is then 130 (Ctrl-C) or 143 (SIGTERM), as a shell reports a command those signals ended.
    """
    on_main = threading.current_thread() is threading.main_thread()
    previous_term = signal.signal(signal.SIGTERM, _raise_terminated) if on_main else None
    try:
        return _run_pipeline(pipeline, submit, poll, cancel, json_mode, out, err, interval_s, store)
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


def _run_pipeline(
    pipeline: Pipeline,
    submit: Callable[[Pipeline], tuple[int, list[int]]],
    poll: Callable[[list[int]], list[Job]],
    cancel: Callable[[int], None],
    json_mode: bool,
    out: IO[str],
    err: IO[str],
    interval_s: float,
    store: Store | None,
) -> int:
    pipeline_id, ids, held = _submit_holding_ctrl_c(submit, pipeline)
    interrupted: KeyboardInterrupt | None = None
    with _Reporter(json_mode, out, err) as reporter:

        def follow() -> None:
            while True:
                jobs = poll(ids)
                reporter.update(jobs)
                if all(j.state in SETTLED for j in jobs):
                    return
                time.sleep(interval_s)

        try:
            reporter.emit(
                {"type": "pipeline", "pipeline": pipeline.name, "id": pipeline_id, "jobs": ids}
            )
            if held is not None:
                raise held
            follow()
        except KeyboardInterrupt as signalled:
            interrupted = signalled
            print("interrupted: cancelling this pipeline's jobs", file=err, flush=True)
            for job in poll(ids):
                if job.state not in ENDED:
                    try:
                        cancel(job.id)
                    except ValueError:
                        pass
            follow()  # a second Ctrl-C leaves at once
    jobs = poll(ids)
    sweeps = sweep_results(pipeline, pipeline_id, store, jobs) if store is not None else []
    excused = _excused(jobs, sweeps)
    ok = all(j.state == SUCCEEDED or j.id in excused for j in jobs) and interrupted is None
    if json_mode:
        summary = {
            "type": "summary",
            "pipeline": pipeline.name,
            "id": pipeline_id,
            "ok": ok,
            "stages": [_job_line(j) for j in jobs],
            "sweeps": sweeps,
        }
        print(dumps(summary), file=out, flush=True)
    else:
        notes = [
            f"best of {s['stage']} ({s['points']} points) by {s['metric']}: job {s['best_job']}"
            f" {s['best_name']} = {s['best_value']:.4g}"
            if s["best_job"] is not None
            else f"sweep {s['stage']}: no point finished"
            for s in sweeps
        ] + [
            f"sweep point {p['name']} (job {p['job']}) {p['state']}: {display_text(p['reason'] or '')}"
            for s in sweeps
            for p in s["failed"]
        ]
        print(summary_table(pipeline.name, jobs, notes), file=out, flush=True)
    if interrupted is not None:
        return int(getattr(interrupted, "exit_code", 130))
    return 0 if ok else 1
