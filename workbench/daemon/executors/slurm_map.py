"""Pure translation between our job specs and Slurm: a job -> sbatch options, `squeue --json` ->
Slurm's view of our jobs -> what that means in our states. No I/O here; see `slurm.py`."""

from __future__ import annotations

import json
import math
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from workbench.config import ExecutorConfig
from workbench.db.store import BLOCKED, CANCELLED, FAILED, PAUSED, QUEUED, RUNNING, SUCCEEDED
from workbench.queue.spec import SpecError


class Unmappable(SpecError):
    """A job asks for something sbatch cannot express; the message names the field (exit 2)."""


@dataclass(frozen=True)
class ClusterInfo:
    """What the cluster offers that changes the mapping: GRES shards per GPU (None: the
    cluster defines no shards, so fractional GPUs cannot be asked for), and the largest job
    array it takes (`MaxArraySize`, Slurm's default 1001)."""

    shards_per_gpu: int | None = None
    max_array_size: int = 1001  # MaxArraySize: array indices run 0 .. max_array_size - 1


@dataclass(frozen=True)
class Submission:
    """One sbatch call: a single job, or an array of `array_size` alike jobs (a capped group or
    a sweep), at most `array_cap` of them running at once.

    Units: `gpus` GPUs (a fraction below 1 means a share), `gpu_mem` and `mem` bytes, `cpus`
    cores (fractions round up), `time_limit` seconds. `deps` are (Slurm job id, condition) with
    condition `ok` | `any` | `fail`. `output` is the path Slurm writes the batch output to."""

    name: str
    output: str
    cwd: str
    gpus: float = 0.0
    gpu_mem: int | None = None
    cpus: float = 0.0
    mem: int | None = None
    time_limit: float | None = None
    priority: int = 0
    deps: tuple[tuple[str, str], ...] = ()
    array_size: int = 0
    array_cap: int | None = None
    comment: str = ""
    mig_profile: str | None = None  # one MIG instance of this profile (not mappable to sbatch)
    warn_before_s: float | None = None  # the batch shell is sent WARN_SIGNAL this long before
    requeue: bool = False  # checkpointable: Slurm may requeue it (preemption, node failure)
    job_args: tuple[str, ...] = ()  # the job's own sbatch options (`option_args`), last


# What Slurm sends the batch shell before the time limit (`--signal=B:...`); the batch script
# turns it into the job's own stop signal. SIGURG: no one else sends it, and its default is to
# be ignored, so it can never be mistaken for a stop nor kill anything.
WARN_SIGNAL = signal.SIGURG


DEPENDENCY_TYPES = {"ok": "afterok", "any": "afterany", "fail": "afternotok"}


def time_limit_minutes(seconds: float) -> int:
    """Slurm's `-t` has one-minute resolution: a limit rounds up to the next whole minute."""
    return max(1, math.ceil(seconds / 60 - 1e-9))


def mem_mebibytes(num_bytes: int) -> int:
    """`--mem` in MiB (Slurm's default unit), rounded up so the job never gets less."""
    return max(1, math.ceil(num_bytes / 1024**2))


def gpu_gres(gpus: float, cluster: ClusterInfo) -> str | None:
    """`--gres` for a GPU request: whole GPUs as `gpu:N`; a fraction f as `shard:ceil(f*S)`
    where the cluster splits each GPU into S shards (rounded up: a job never gets less)."""
    if gpus <= 0:
        return None
    if gpus >= 1:
        if gpus != int(gpus):
            raise Unmappable(f"key 'gpus': {gpus:g} is not a whole number of GPUs")
        return f"gpu:{int(gpus)}"
    if not cluster.shards_per_gpu:
        raise Unmappable(
            f"key 'gpus': a fraction of a GPU ({gpus:g}) needs GRES shards, and this Slurm"
            " cluster defines none; ask for a whole GPU (gpus = 1)"
        )
    return f"shard:{max(1, math.ceil(gpus * cluster.shards_per_gpu - 1e-9))}"


def sbatch_args(sub: Submission, settings: ExecutorConfig, cluster: ClusterInfo) -> list[str]:
    """The sbatch options (without the script) for a submission; raises Unmappable naming the
    field that Slurm cannot express. The environment travels with `--export=ALL`: sbatch runs
    with the job's captured environment, so values with commas survive (a `--export=K=V` list
    would split them)."""
    if sub.mig_profile is not None:
        raise Unmappable(
            f"key 'gpus': a MIG profile ({sub.mig_profile}) has no Slurm request here (a"
            " cluster names MIG devices as GRES types of its own); ask for whole GPUs or a"
            " fraction (gpus = 0.5, as shards) instead"
        )
    if sub.gpu_mem is not None:
        raise Unmappable(
            "key 'gpu_mem': Slurm has no request for GPU memory; ask for whole GPUs or a"
            " fraction (gpus = 0.5, as shards) instead"
        )
    nice = settings.nice_base - sub.priority
    if nice < 0:
        raise Unmappable(
            f"key 'priority': {sub.priority} would need --nice={nice}, and only Slurm"
            " administrators may set a negative nice; set [executor] nice_base in config.toml"
            f" to at least {sub.priority} or lower the priority"
        )
    args = ["--parsable", f"--job-name={sub.name}", f"--output={sub.output}", f"--chdir={sub.cwd}"]
    own = {a.split("=", 1)[0] for a in sub.job_args}
    if settings.partition and "--partition" not in own:
        args.append(f"--partition={settings.partition}")
    if settings.account and "--account" not in own:
        args.append(f"--account={settings.account}")
    gres = gpu_gres(sub.gpus, cluster)
    if gres:
        args.append(f"--gres={gres}")
    if sub.cpus > 0:
        args.append(f"--cpus-per-task={math.ceil(sub.cpus - 1e-9)}")
    if sub.mem is not None:
        args.append(f"--mem={mem_mebibytes(sub.mem)}M")
    if sub.time_limit is not None:
        args.append(f"--time={time_limit_minutes(sub.time_limit)}")
        if sub.warn_before_s:  # Slurm may send it up to 60 s early (its resolution)
            args.append(f"--signal=B:{int(WARN_SIGNAL)}@{math.ceil(sub.warn_before_s)}")
    if sub.requeue:
        args.append("--requeue")
    if nice:
        args.append(f"--nice={nice}")
    if sub.deps:
        for _, cond in sub.deps:
            if cond not in DEPENDENCY_TYPES:
                raise Unmappable(f"key 'after': unknown condition {cond!r}")
        grouped: dict[str, list[str]] = {}
        for slurm_id, cond in sub.deps:
            grouped.setdefault(DEPENDENCY_TYPES[cond], []).append(slurm_id)
        spec = ",".join(f"{kind}:{':'.join(ids)}" for kind, ids in grouped.items())
        args += [f"--dependency={spec}", "--kill-on-invalid-dep=yes"]
    if sub.array_size:
        array = f"--array=0-{sub.array_size - 1}"
        if sub.array_cap:
            array += f"%{sub.array_cap}"
        args.append(array)
    if sub.comment:
        args.append(f"--comment={sub.comment}")
    args.append("--export=ALL")
    args.extend(settings.extra)
    args.extend(sub.job_args)
    return args


_OPTION_FLAGS = (
    ("partition", "--partition"), ("qos", "--qos"), ("account", "--account"),
    ("constraint", "--constraint"), ("nodelist", "--nodelist"), ("exclude", "--exclude"),
)  # fmt: skip


def option_args(options: Mapping[str, Any] | None) -> list[str]:
    """A job's own sbatch options from its `[slurm]` table (workbench.queue.requests.
    SlurmOptions, already checked): names as `--partition=...`, `--exclusive`, `--nodes` and
    `--ntasks-per-node` when it runs more than one task, then its `extra` list as given."""
    if not options:
        return []
    args = [f"{flag}={options[key]}" for key, flag in _OPTION_FLAGS if options.get(key)]
    if options.get("exclusive"):
        args.append("--exclusive")
    nodes, tasks = tasks_of(options)
    if nodes > 1:
        args.append(f"--nodes={nodes}")
    if nodes > 1 or tasks > 1:
        args.append(f"--ntasks-per-node={tasks}")
    args.extend(str(option) for option in options.get("extra") or [])
    return args


def tasks_of(options: Mapping[str, Any] | None) -> tuple[int, int]:
    """(nodes, tasks per node) of a job's `[slurm]` table; (1, 1) when it says nothing."""
    if not options:
        return 1, 1
    return int(options.get("nodes") or 1), int(options.get("ntasks_per_node") or 1)


def ended_dependency(cond: str, state: str) -> str | None:
    """For a dependency that has already ended (Slurm cannot be asked about it any more): None
    if it is satisfied, else why the job can never run (it becomes `blocked`). Same rules as the
    local scheduler: `ok` needs success, `any` any end, `fail` a failure."""
    if cond == "ok" and state != SUCCEEDED:
        return f"{state}"
    if cond == "fail" and state != FAILED:
        return f"{state}; this job runs only after a failure"
    return None


def parse_parsable(stdout: str) -> str:
    """`sbatch --parsable` prints `ID` or `ID;CLUSTER`; returns ID."""
    first = stdout.strip().splitlines()[0] if stdout.strip() else ""
    job_id = first.split(";", 1)[0].strip()
    if not job_id.isdigit():
        raise ValueError(f"sbatch printed no job id: {stdout.strip()!r}")
    return job_id


def shards_per_gpu(gres_text: str) -> int | None:
    """From a node's `Gres=` (`gpu:fake:1,shard:2`, `gpu:a100:4(S:0-1),shard:a100:32`): shards
    per GPU, None when it has no shards or no GPUs."""
    gpus = shards = 0
    for item in gres_text.split(","):
        parts = re.sub(r"\(.*?\)", "", item.strip()).split(":")
        if not parts or not parts[-1].isdigit():
            continue
        if parts[0] == "gpu":
            gpus += int(parts[-1])
        elif parts[0] == "shard":
            shards += int(parts[-1])
    if not gpus or not shards:
        return None
    return max(1, shards // gpus)


# ---- squeue ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlurmJob:
    """One job (or array task) as squeue reports it. `slurm_id` is `123` or `120_3` for task 3
    of array 120; `exit_code`/`signal` come from the wait status Slurm keeps (exit << 8 | sig)."""

    slurm_id: str
    state: str
    reason: str
    exit_code: int | None = None
    signal: int | None = None
    node: str = ""
    comment: str = ""
    start_time: float | None = None
    end_time: float | None = None
    restarts: int = 0  # how often Slurm requeued it (node failure, preemption, scontrol requeue)


def _state_name(value: Any) -> str:
    """`job_state` is a string in Slurm 22.05 and a list of flags from 23.02 on."""
    if isinstance(value, list):
        return str(value[0]) if value else "UNKNOWN"
    return str(value or "UNKNOWN")


def _number(value: Any) -> int | None:
    """A squeue number: plain in 22.05, `{"set": b, "number": n}` from 23.02 on."""
    if isinstance(value, dict):
        return int(value["number"]) if value.get("set", True) and "number" in value else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def task_ids(array_task_string: str) -> set[int]:
    """Array indices still pending in one record: `1-3%2`, `0,4-5`, `2-10:2`."""
    text = array_task_string.split("%", 1)[0].strip()
    out: set[int] = set()
    for part in filter(None, text.split(",")):
        step = 1
        if ":" in part:
            part, step_text = part.split(":", 1)
            step = int(step_text)
        if "-" in part:
            low, high = part.split("-", 1)
            out.update(range(int(low), int(high) + 1, step))
        else:
            out.add(int(part))
    return out


def parse_squeue(text: str) -> dict[str, SlurmJob]:
    """`squeue --json` -> jobs by Slurm id; an array's pending tasks (one record in squeue, with
    `array_task_string`) are expanded so that `120_3` is found while it waits."""
    data = json.loads(text)
    out: dict[str, SlurmJob] = {}
    for record in data.get("jobs", []):
        job_id = _number(record.get("job_id"))
        if job_id is None:
            continue
        array_job = _number(record.get("array_job_id")) or 0
        array_task = _number(record.get("array_task_id"))
        status = _number(record.get("exit_code"))
        exit_code = signal = None
        if status is not None:
            exit_code, signal = (status >> 8) & 0xFF, status & 0x7F
        start = _number(record.get("start_time"))
        end = _number(record.get("end_time"))
        job = SlurmJob(
            slurm_id=str(job_id),
            state=_state_name(record.get("job_state")),
            reason=str(record.get("state_reason") or "None"),
            exit_code=exit_code,
            signal=signal or None,
            node=str(record.get("nodes") or ""),
            comment=str(record.get("comment") or ""),
            start_time=float(start) if start else None,
            end_time=float(end) if end else None,
        )
        out[job.slurm_id] = job
        if array_job:
            if array_task is not None:
                out[f"{array_job}_{array_task}"] = job
            if record.get("array_task_string"):
                for index in task_ids(str(record["array_task_string"])):
                    out.setdefault(f"{array_job}_{index}", job)
    return out


# `squeue -O` fields the daemon asks for about its own jobs (`--jobs=ID,...` or `--me`), instead
# of `--json`, which Slurm 22.05 answers with every job of the cluster whatever the filters.
# `exit_code` is the wait status (code << 8 | signal); times are local ISO 8601, `N/A`/`NONE`
# when unset. Comment comes last: it is the one field a user could put `|` into.
SQUEUE_FIELDS = (
    "JobArrayID", "State", "Reason", "exit_code", "NodeList", "StartTime", "EndTime",
    "RestartCnt", "Comment",
)  # fmt: skip
SQUEUE_FORMAT = ",".join(f"{name}:|" for name in SQUEUE_FIELDS)


def _clock(text: str) -> float | None:
    """A squeue time (`2026-12-07T03:45:01`, local time) as Unix seconds; None when unset."""
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None


def parse_squeue_lines(text: str) -> dict[str, SlurmJob]:
    """`squeue --noheader -O SQUEUE_FORMAT` -> jobs by Slurm id, as `parse_squeue` does for
    `--json`: an array's pending tasks (`120_[2-3%1]`) are expanded so `120_3` is found.
    Raises ValueError on a line that is not in that format (the answer is then not trusted)."""
    out: dict[str, SlurmJob] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = line.split("|", len(SQUEUE_FIELDS) - 1)
        if len(cells) != len(SQUEUE_FIELDS):
            raise ValueError(f"squeue printed a line in another format: {line[:200]!r}")
        array_id, state, reason, status, node, start, end, restarts, comment = (
            c.strip() for c in cells
        )
        comment = comment.removesuffix("|").strip()
        code = int(status) if status.isdigit() else None
        job = SlurmJob(
            slurm_id=array_id,
            state=state.split()[0] if state else "UNKNOWN",
            reason=reason or "None",
            exit_code=None if code is None else (code >> 8) & 0xFF,
            signal=None if code is None else (code & 0x7F) or None,
            node="" if node in ("", "(null)") else node,
            comment="" if comment == "(null)" else comment,
            start_time=_clock(start),
            end_time=_clock(end),
            restarts=int(restarts) if restarts.isdigit() else 0,
        )
        pending = re.fullmatch(r"(\d+)_\[(.*)\]", array_id)
        if pending:
            for index in task_ids(pending.group(2)):
                out.setdefault(f"{pending.group(1)}_{index}", job)
        elif re.fullmatch(r"\d+(_\d+)?", array_id):
            out[array_id] = job
        else:
            raise ValueError(f"squeue printed an odd job id: {array_id!r}")
    return out


def parse_sacct(text: str) -> dict[str, SlurmJob]:
    """`sacct -X -n -P -o JobID,State,ExitCode,NodeList,Start,End` -> ended or live jobs by
    Slurm id (`123`, `120_3`). ExitCode is `code:signal`; State may read `CANCELLED by 1000`."""
    out: dict[str, SlurmJob] = {}
    for line in text.splitlines():
        cells = line.split("|")
        if len(cells) < 6 or not re.fullmatch(r"\d+(_\d+)?", cells[0]):
            continue
        code_text, _, signal_text = cells[2].partition(":")
        out[cells[0]] = SlurmJob(
            slurm_id=cells[0],
            state=cells[1].split()[0] if cells[1] else "UNKNOWN",
            reason="None",
            exit_code=int(code_text) if code_text.isdigit() else None,
            signal=int(signal_text) or None if signal_text.isdigit() else None,
            node="" if cells[3] in ("", "None assigned") else cells[3],
            start_time=_clock(cells[4]),
            end_time=_clock(cells[5]),
        )
    return out


# What Slurm's commands say when they cannot reach the controller (or its database): the answer
# is then "unknown for now", never an outcome. From Slurm 22.05's slurm_errno.c messages.
_UNREACHABLE = (
    "unable to contact slurm controller",
    "socket timed out",
    "zero bytes were transmitted",
    "connection refused",
    "communication connection failure",
    "transport endpoint",
    "slurm_receive_msg",
    "unable to connect",
    "slurmdbd",
    "did not answer within",
    "connection reset",
    "network is unreachable",
    "no route to host",
    "temporarily unavailable",
    "slurm backup controller in standby mode",
    "unexpected message received",
)


def unreachable(message: str) -> bool:
    """True when a Slurm command's error means the cluster did not answer (not a refusal)."""
    lowered = message.lower()
    return any(words in lowered for words in _UNREACHABLE)


# ---- Slurm's view -> ours -------------------------------------------------------------------

_PENDING_WORDS = {
    "Resources": "waiting for resources on the cluster",
    "Priority": "waiting behind higher-priority jobs on the cluster",
    "Dependency": "waiting for its dependencies",
    "BeginTime": "waiting for its start time",
    "Licenses": "waiting for a license (its group is at its limit)",
    "JobArrayTaskLimit": "its array is at its limit of running tasks",
    "ReqNodeNotAvail": "the nodes it needs are not available",
    "PartitionDown": "the partition is down",
    "None": "submitted to Slurm",
}
HELD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin"})
# Slurm's own state names (upper case; two of them spell like ours, which they are not).
SLURM_CANCELLED, SLURM_FAILED = "CANCELLED", "FAILED"
_FAILURE_WORDS = {
    "TIMEOUT": "time limit exceeded (Slurm TIMEOUT)",
    "OUT_OF_MEMORY": "out of memory (Slurm OUT_OF_MEMORY)",
    "NODE_FAIL": "its node failed (Slurm NODE_FAIL)",
    "BOOT_FAIL": "its node failed to boot (Slurm BOOT_FAIL)",
    "DEADLINE": "its deadline passed (Slurm DEADLINE)",
    "PREEMPTED": "preempted by Slurm (Slurm PREEMPTED)",
    "SPECIAL_EXIT": "ended in Slurm's special exit state (Slurm SPECIAL_EXIT)",
}
ACTIVE_SLURM_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "RESIZING",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
    }
)


@dataclass(frozen=True)
class View:
    """What a Slurm job's status means for our job: a state, a reason in words, and for ended
    jobs the shell-style exit code (code, or 128 + signal)."""

    state: str
    reason: str
    exit_code: int | None = None
    node: str = ""
    ended: bool = False


def view(job: SlurmJob) -> View:
    """Slurm state + reason -> ours. A job cancelled because a dependency can never be
    satisfied (`--kill-on-invalid-dep=yes`) is our `blocked`."""
    state, reason = job.state, job.reason
    code = None
    if job.signal:
        code = 128 + job.signal
    elif job.exit_code is not None:
        code = job.exit_code
    if state == "PENDING":
        if reason in HELD_REASONS:
            return View(PAUSED, f"held in Slurm ({reason})")
        if reason == "DependencyNeverSatisfied":
            return View(BLOCKED, "a dependency can never be satisfied (Slurm)")
        words = _PENDING_WORDS.get(reason, f"pending in Slurm ({reason})")
        return View(QUEUED, words)
    if state in ("CONFIGURING", "RUNNING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT"):
        return View(RUNNING, f"running on {job.node}" if job.node else "running", node=job.node)
    if state == "SUSPENDED":
        return View(PAUSED, "suspended by Slurm", node=job.node)
    if state in ("REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD"):
        return View(QUEUED, "requeued by Slurm")
    if state == "COMPLETED":
        return View(SUCCEEDED, "exited with code 0", 0, job.node, ended=True)
    if state == SLURM_CANCELLED:
        if reason == "DependencyNeverSatisfied":
            return View(BLOCKED, "a dependency failed, so it can never run (Slurm)", ended=True)
        return View(CANCELLED, "cancelled (Slurm CANCELLED)", code, job.node, ended=True)
    if state == SLURM_FAILED:
        if job.signal:
            words = f"killed by signal {job.signal} (Slurm FAILED)"
        else:
            words = f"exited with code {job.exit_code} (Slurm FAILED)"
        return View(FAILED, words, code if code is not None else 1, job.node, ended=True)
    if state in _FAILURE_WORDS:
        return View(FAILED, _FAILURE_WORDS[state], code, job.node, ended=True)
    return View(FAILED, f"ended in Slurm state {state} ({reason})", code, job.node, ended=True)


# ---- the shared-filesystem rule -------------------------------------------------------------

NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "lustre", "gpfs", "beegfs", "cephfs", "ceph", "glusterfs",
        "fuse.glusterfs", "cifs", "smb3", "panfs", "wekafs", "fuse.sshfs", "fuse.cephfs",
        "fuse.juicefs", "orangefs", "9p", "virtiofs",
    }
)  # fmt: skip


def mount_of(path: str, mounts: list[tuple[str, str]]) -> tuple[str, str]:
    """The (mount point, filesystem type) holding `path`: the longest mount point above it.
    `mounts` are (mount point, type) pairs as in /proc/self/mounts."""
    best = ("/", "unknown")
    for point, fstype in mounts:
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fstype)
    return best


def shared_path_problems(
    paths: dict[str, str],
    mounts: list[tuple[str, str]],
    only_this_host: bool,
    declared_shared: list[str],
) -> list[str]:
    """Why Slurm jobs could not see `paths` ({what: path}) at the same path on every node: each
    must be on a network filesystem or under a mount listed in `[executor] shared_paths`,
    unless every node of the cluster is this machine. Empty when all is well."""
    if only_this_host:
        return []
    problems = []
    for what, path in paths.items():
        point, fstype = mount_of(path, mounts)
        declared = any(
            path == d or path.startswith(d.rstrip("/") + "/") for d in declared_shared if d
        )
        if fstype not in NETWORK_FILESYSTEMS and not declared:
            problems.append(f"{what} ({path}) is on {fstype} mounted at {point}")
    return problems
