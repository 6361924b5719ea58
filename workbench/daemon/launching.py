"""What the daemon hands an executor to start one job attempt, and what it records once the
attempt is started: pure functions of the job's row, its grant and the daemon's settings, kept
out of the daemon's loop (`supervisor.Daemon._launch_many` orders them)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

from workbench.daemon import stopping
from workbench.daemon.executors import Handle, Launch
from workbench.db import repro as repro_db
from workbench.db import scheduling as db
from workbench.db.store import Job, Store
from workbench.jobmodel.states import Event, JobState
from workbench.paths import Home
from workbench.queue import scheduler
from workbench.queue.accounts import account_of
from workbench.queue.kinds import job_argv
from workbench.queue.repro import start_environment
from workbench.telemetry.gpu import Gpus


def keeps_leftovers(job: Job) -> bool:
    """Whether the job's spec asks that processes it leaves behind outlive it."""
    return bool(job.spec.get("keep_leftovers", False))


def launch_spec(
    home: Home,
    job: Job,
    queued: db.QueuedJob,
    gpus: tuple[int, ...],
    token: str,
    now: float,
    *,
    preempted: int,
    start: scheduler.Start | None,
    kill_grace_s: float,
    log_cap_bytes: int,
    as_owner: bool,
    credentials: dict[str, str] | None = None,
) -> Launch:
    """What the executor needs to start `job` on the GPU indices `gpus` (or the MIG instances
    of `start`), with launch `token`, at `now` (Unix s).

    Its log gets a header line when this is not the job's first start (a later attempt, or the
    same attempt after `preempted` preemptions: its output so far is in the same log). The job
    becomes its owner (`Job.uid`) only when `as_owner`: where the daemon serves every user
    (system mode); in a per-user home every job is the home owner's, whatever its row says.
    `credentials` (name -> value, from the daemon's memory: workbench.daemon.credentials) are
    added to its environment, never to its row."""
    run_dir = home.run_dir(job.id)
    visible = ",".join(start.devices) if start and start.devices else None
    env = {**job.env, **(credentials or {})}
    env.update(
        {
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": visible or ",".join(str(i) for i in gpus),
            "PYTHONUNBUFFERED": "1",
            "WORKBENCH_HOME": str(home.root),
            "WORKBENCH_JOB_ID": str(job.id),
            "WORKBENCH_RUN_DIR": str(run_dir),
        }
    )
    env.pop("WORKBENCH_GPU_MEM_BYTES", None)
    if start is not None and start.gpu_mem_cap is not None:  # its share of a shared GPU
        env["WORKBENCH_GPU_MEM_BYTES"] = str(start.gpu_mem_cap)
    if queued.cpus > 0:
        threads = str(max(1, math.ceil(queued.cpus)))
        env.setdefault("OMP_NUM_THREADS", threads)
        env["WORKBENCH_CPUS"] = threads
    restarts = job.attempt - 1 + preempted  # earlier starts of this job
    stopping.clear_stop(run_dir)
    env.update(stopping.contract_env(run_dir, restarts))
    policy = stopping.policy_for(job, kill_grace_s)
    header = None
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    if job.attempt > 1:
        header = f"attempt {job.attempt} of {job.retries + 1} started {stamp}"
    if preempted:
        times = "once" if preempted == 1 else f"{preempted} times"
        again = f"started again {stamp} after it was preempted {times}"
        header = f"{header}; {again}" if header else again
    if restarts and policy.checkpointable and job.kind == "command":
        header = f"{header}\n[workbench] {stopping.restart_marker(restarts, run_dir)}"
    return Launch(
        job_id=job.id,
        token=token,
        argv=job_argv(job, sys.executable),
        env=env,
        cwd=job.cwd,
        run_dir=run_dir,
        log_cap_bytes=log_cap_bytes,
        kill_grace_s=policy.grace_s,
        header=header,
        keep_leftovers=keeps_leftovers(job),
        mem_bytes=queued.mem,
        stop_signal=policy.signal,
        uid=job.uid if as_owner else None,
    )


def starting_changes(
    starts: list[tuple[db.QueuedJob, tuple[int, ...]]],
    tokens: dict[int, str],
    now: float,
    devices: Callable[[int], list[str] | None],
) -> list[db.Change]:
    """The first of a launch's three steps (`Daemon._launch_many`), for every job of `starts`
    (queued job, GPU indices) at once: queued -> starting at `now` (Unix s), with its GPUs,
    its MIG instances (`devices(job_id)`, None without) and its fresh launch token (`tokens`),
    by which a later daemon finds the attempt or knows it never began."""
    return [
        db.Change(
            job.id,
            Event.START,
            "starting",
            (JobState.QUEUED,),
            {
                "started_at": now,
                "granted_gpus": list(gpus),
                "granted_devices": devices(job.id),
                "launch_token": tokens[job.id],
            },
        )
        for job, gpus in starts
    ]


def holding_at_start(
    queued: db.QueuedJob,
    job: Job,
    gpus: tuple[int, ...],
    now: float,
    start: scheduler.Start | None,
    shares_by: str,
) -> scheduler.Holding:
    """What the scheduler counts a job started at `now` (Unix s) as holding: its GPU indices,
    its MIG instances (from `start`, the scheduler's choice), its requests and limits, whether
    and why it may be preempted, and the account its usage is charged to (`shares_by`:
    `[shares] by`, workbench.queue.accounts)."""
    return scheduler.Holding(
        job.id,
        queued.group,
        gpus,
        queued.gpus,
        queued.gpu_mem,
        queued.cpus,
        queued.mem,
        started_at=now,
        mig_uuids=start.devices if start else (),
        mig_profile=queued.mig_profile,
        preemptible=queued.preemptible,
        time_limit=job.time_limit,
        kept_because=stopping.kept_because(job),
        account=account_of(shares_by, queued.group, queued.uid),
    )


def launched_change(job_id: int, handle: Handle) -> db.Change:
    """The store change that records a started attempt: starting -> running, with its pid."""
    return db.Change(
        job_id,
        Event.LAUNCHED,
        "started",
        (JobState.STARTING,),
        {"pid": handle.pid, "pid_start": handle.start_time},
    )


def record_starts(
    store: Store, gpus: Gpus | None, gpu_names: dict[int, str], started: dict[int, tuple[int, ...]]
) -> None:
    """Record what each job in `started` (job id -> its GPU indices) saw at its start, for
    reproducing it: host, driver, GPU models. Raises what the store's write raises."""
    driver = gpus.driver_version if gpus is not None else None
    cuda = gpus.cuda_version if gpus is not None else None
    records = {
        job_id: start_environment([gpu_names.get(i, f"GPU {i}") for i in indices], driver, cuda)
        for job_id, indices in started.items()
    }
    repro_db.record_starts(store, records)
