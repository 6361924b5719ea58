"""The Slurm executor: hands jobs to a Slurm cluster with what an ordinary cluster user has
(`sbatch --parsable`, one `squeue --json` per tick, `scancel`, `scontrol hold/release`), and
brings their state, exit codes, Slurm's reasons and the jobs' records back into the store."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.config import EXECUTOR_KINDS, Config, ExecutorConfig, load_config
from workbench.daemon import runner, stopping
from workbench.daemon.credentials import CredentialVault
from workbench.daemon.executors import Ended, Executor, Handle, Launch, LaunchError, slurm_map
from workbench.daemon.executors.slurm_map import (
    ACTIVE_SLURM_STATES,
    HELD_REASONS,
    ClusterInfo,
    SlurmJob,
    Submission,
    Unmappable,
)
from workbench.daemon.executors.slurm_reconcile import (
    LOST_AFTER_S,
    Forgetting,
    Poll,
    follows_from_comment,
    is_unreachable_reason,
    submission_comment,
)
from workbench.daemon.executors.slurm_usage import (
    SACCT_USAGE_FIELDS,
    SlurmUsage,
    Unanswered,
    UsageReader,
    parse_usage,
)
from workbench.db import executors as placement_db
from workbench.db.journal import RECORDS_FILE, RecordError, apply_all_records
from workbench.db.store import (
    BLOCKED,
    CANCELLED,
    ENDED,
    PAUSED,
    QUEUED,
    RUNNING,
    STARTING,
    SUCCEEDED,
    Event,
    Job,
    JobRequest,
    Store,
)
from workbench.db.track_records import mark_finished
from workbench.paths import Home
from workbench.queue.kinds import job_argv
from workbench.queue.requests import SlurmOptions
from workbench.queue.spec import SpecError
from workbench.units import format_duration

COMMAND_TIMEOUT_S = 10.0  # default: a Slurm command that takes longer is "no answer"
CHECK_TTL_S = 86400.0  # a resource shape the cluster took at `--test-only` is not asked again
STARTED_FILE = "slurm-started"  # the batch script writes it as it starts (the Slurm job id)
SQUEUE_IDS_MAX = 200  # more followed jobs than this: one `squeue --me` instead of `--jobs=...`
MAX_SUBMIT_ROUNDS = 8  # dependency levels handed to Slurm in one call


class SlurmError(RuntimeError):
    """A Slurm command failed or is missing; the message has its stderr."""


class SlurmUnreachable(SlurmError):
    """A Slurm command got no answer from the cluster (a timeout, the controller down): the
    outcome is unknown for now, never a refusal. For sbatch, the job may have been created."""


class SlurmClient:
    """The Slurm commands of an ordinary cluster user. `env` overrides the environment of every
    command (e.g. `SLURM_CONF`); by default they inherit this process's. A command that takes
    longer than `timeout_s` raises SlurmUnreachable. `calls` holds the monotonic time of each
    command run (for the calls-per-minute figure)."""

    def __init__(self, env: Mapping[str, str] | None = None, timeout_s: float = COMMAND_TIMEOUT_S):
        self.env = dict(env) if env is not None else None
        self.timeout_s = timeout_s
        self.calls: list[float] = []
        self._info: ClusterInfo | None = None
        self._accounting: bool | None = None

    def calls_per_minute(self) -> int:
        """Slurm commands run in the last 60 s."""
        cutoff = time.monotonic() - 60.0
        self.calls = [t for t in self.calls if t >= cutoff]
        return len(self.calls)

    def _run(
        self,
        argv: list[str],
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> str:
        program = shutil.which(argv[0], path=(env or self.env or os.environ).get("PATH"))
        if program is None:
            raise SlurmError(f"{argv[0]} not found: is Slurm installed and on PATH?")
        full_env = dict(env if env is not None else (self.env or os.environ))
        self.calls.append(time.monotonic())
        if len(self.calls) > 10_000:
            self.calls_per_minute()
        try:
            done = subprocess.run(
                [program, *argv[1:]],
                input=stdin,
                capture_output=True,
                text=True,
                env=full_env,
                timeout=self.timeout_s,
            )
        except subprocess.TimeoutExpired as error:
            raise SlurmUnreachable(
                f"{argv[0]} did not answer within {self.timeout_s:g}s"
            ) from error
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip().splitlines()
            text = f"{argv[0]}: {message[-1] if message else f'exit {done.returncode}'}"
            if slurm_map.unreachable(text) or (done.returncode < 0):
                raise SlurmUnreachable(text)
            raise SlurmError(text)
        return done.stdout

    def cluster_info(self) -> ClusterInfo:
        """Shards per GPU (from the nodes' GRES) and MaxArraySize, asked once per client."""
        if self._info is None:
            shards = None
            for line in self._run(["sinfo", "-h", "-o", "%G"]).splitlines():
                found = slurm_map.shards_per_gpu(line.strip())
                if found:
                    shards = found if shards is None else min(shards, found)
            max_array = 1001
            for line in self._run(["scontrol", "show", "config"]).splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "MaxArraySize" and value.strip().isdigit():
                    max_array = max(1, int(value.strip()))
            self._info = ClusterInfo(shards_per_gpu=shards, max_array_size=max_array)
        return self._info

    def nodes_are_this_host(self) -> bool:
        """True when every node of the cluster is this machine (a one-node cluster on it)."""
        names = {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()}
        for line in self._run(["sinfo", "-h", "-N", "-o", "%N %o"]).splitlines():
            for word in line.split():
                if word not in names and not word.startswith("127."):
                    return False
        return True

    def submit(self, args: list[str], script: str, env: Mapping[str, str]) -> str:
        """sbatch with the script on stdin; returns the Slurm job id. Raises SlurmUnreachable
        when the cluster did not answer (the job may exist: look for its comment), SlurmError
        when Slurm refused it."""
        out = self._run(["sbatch", *args], env=env, stdin=script)
        try:
            return slurm_map.parse_parsable(out)
        except ValueError as error:
            raise SlurmUnreachable(str(error)) from error

    def test_only(self, args: list[str]) -> None:
        """`sbatch --test-only`: would the cluster ever run this request? Raises SlurmError with
        Slurm's answer (e.g. "Requested node configuration is not available") if not."""
        options = [a for a in args if a != "--parsable"]
        self._run(["sbatch", "--test-only", *options], stdin="#!/bin/bash\ntrue\n")

    def squeue(self) -> dict[str, SlurmJob]:
        """This user's jobs in every state, recently ended ones included (`squeue --me` with a
        format string: Slurm 22.05 ignores `--me` with `--json` and lists the whole cluster).
        Raises SlurmError, SlurmUnreachable for no answer or a malformed one."""
        return self._squeue(["--me"])

    def squeue_jobs(self, slurm_ids: Sequence[str]) -> dict[str, SlurmJob]:
        """The given jobs (`123`, `120_3`) in every state, in one call: `--jobs=...` for up to
        SQUEUE_IDS_MAX of them, else `--me`. A job Slurm no longer knows is absent (Slurm
        answers "Invalid job id" when it knows none of one id)."""
        if not slurm_ids:
            return {}
        if len(slurm_ids) > SQUEUE_IDS_MAX:
            return self.squeue()
        try:
            return self._squeue([f"--jobs={','.join(slurm_ids)}"])
        except SlurmUnreachable:
            raise
        except SlurmError as error:
            if "invalid job id" in str(error).lower():
                return {}
            raise

    def _squeue(self, which: list[str]) -> dict[str, SlurmJob]:
        out = self._run(
            ["squeue", *which, "--states=all", "--noheader", "-O", slurm_map.SQUEUE_FORMAT]
        )
        try:
            return slurm_map.parse_squeue_lines(out)
        except ValueError as error:
            raise SlurmUnreachable(f"squeue: {error}") from error

    def knows(self, slurm_id: str) -> bool:
        """False only when Slurm answers that it does not know the job (`scontrol show job`:
        "Invalid job id specified"); True when it lists it. Raises SlurmUnreachable."""
        try:
            self._run(["scontrol", "show", "job", "-o", slurm_id])
        except SlurmUnreachable:
            raise
        except SlurmError as error:
            if "invalid job id" in str(error).lower():
                return False
            raise SlurmUnreachable(str(error)) from error
        return True

    def sacct(self, slurm_ids: Sequence[str]) -> dict[str, SlurmJob] | None:
        """How Slurm's accounting saw the jobs end (`sacct -X`), or None when the cluster keeps
        no accounting (no slurmdbd: "accounting storage is disabled"; asked once). Raises
        SlurmUnreachable when slurmdbd does not answer."""
        out = self._accounting_answer(
            slurm_ids, ["-X", "-o", "JobID,State,ExitCode,NodeList,Start,End"]
        )
        return None if out is None else slurm_map.parse_sacct(out)

    def sacct_usage(self, slurm_ids: Sequence[str]) -> dict[str, SlurmUsage] | None:
        """What the jobs used, as Slurm's accounting has it (`sacct` with their steps: MaxRSS
        is the batch step's), by Slurm id (`slurm_usage.parse_usage`); None when the cluster
        keeps no accounting (asked once). Raises SlurmUnreachable when sacct does not answer."""
        out = self._accounting_answer(slurm_ids, ["-o", SACCT_USAGE_FIELDS])
        return None if out is None else parse_usage(out)

    def _accounting_answer(self, slurm_ids: Sequence[str], options: list[str]) -> str | None:
        """`sacct -n -P -j IDS OPTIONS`'s output, or None when there is nothing to ask or the
        cluster keeps no accounting (no slurmdbd: "accounting storage is disabled", or sacct
        refuses; remembered, so it is asked once). Raises SlurmUnreachable when slurmdbd does
        not answer (unknown for now, asked again later)."""
        if self._accounting is False or not slurm_ids:
            return None
        try:
            out = self._run(["sacct", "-n", "-P", "-j", ",".join(slurm_ids), *options])
        except SlurmUnreachable:
            raise
        except SlurmError:
            self._accounting = False
            return None
        if "accounting storage is disabled" in out.lower():
            self._accounting = False
            return None
        self._accounting = True
        return out

    def cancel(self, slurm_ids: Sequence[str]) -> None:
        """scancel: SIGTERM to the jobs' processes, SIGKILL after the cluster's KillWait."""
        if slurm_ids:
            self._run(["scancel", *slurm_ids])

    def signal(self, slurm_id: str, sig: int) -> None:
        """Send `sig` to every process of the job, its batch script included."""
        self._run(["scancel", "--full", f"--signal={sig}", slurm_id])

    def hold(self, slurm_ids: Sequence[str]) -> None:
        """Keep pending jobs from starting (`scontrol hold`)."""
        if slurm_ids:
            self._run(["scontrol", "hold", ",".join(slurm_ids)])

    def release(self, slurm_ids: Sequence[str]) -> None:
        """Let held jobs start again (`scontrol release`)."""
        if slurm_ids:
            self._run(["scontrol", "release", ",".join(slurm_ids)])

    def suspend(self, slurm_id: str) -> None:
        """Stop a running job's processes where they are (`scontrol suspend`: a Slurm operator's
        or administrator's command; an ordinary user gets "Access/permission denied")."""
        self._run(["scontrol", "suspend", slurm_id])

    def resume(self, slurm_id: str) -> None:
        """Let a suspended job run on (`scontrol resume`, the same rights as suspend)."""
        self._run(["scontrol", "resume", slurm_id])


def read_mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of this machine's mounts."""
    out = []
    try:
        with open("/proc/self/mounts") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 3:
                    out.append((fields[1].replace("\\040", " "), fields[2]))
    except OSError:
        pass
    return out


def check_shared_filesystem(
    home: Home, python: str, settings: ExecutorConfig, client: SlurmClient
) -> None:
    """Refuse (SpecError, exit 2) when runs/, lake/ or the Python environment is on a filesystem
    other nodes may not see at the same path."""
    paths = {
        "runs/": str(home.runs.resolve()),
        "lake/": str(home.lake.resolve()),
        "the Python environment": str(Path(sys.prefix).resolve()),
    }
    if Path(python).resolve().parent.parent != Path(sys.prefix).resolve():
        paths["the Python interpreter"] = str(Path(python).resolve())
    try:
        local = client.nodes_are_this_host()
    except SlurmError as error:
        raise SpecError(f"executor 'slurm': cannot reach Slurm ({error})") from error
    problems = slurm_map.shared_path_problems(
        paths, read_mounts(), local, list(settings.shared_paths)
    )
    if problems:
        raise SpecError(
            "executor 'slurm': jobs on other nodes need runs/, lake/ and the Python environment"
            " on a filesystem every node sees at the same path (NFS, Lustre, ...), but "
            + "; ".join(problems)
            + ". Put WORKBENCH_HOME and the environment on a shared filesystem, or list the"
            " mount in [executor] shared_paths in config.toml if it is shared."
        )


class CheckedShapes:
    """Resource shapes (sbatch options but name and directory) that `sbatch --test-only` said
    the cluster can run, kept in `slurm-checked.json` in the home for CHECK_TTL_S per cluster
    (`SLURM_CONF`): each `--test-only` spends a Slurm job id, so a shape is asked about once a
    day, not at every submit. A refusal is never kept (the next submit asks again)."""

    def __init__(self, home: Home):
        self.path = home.root / "slurm-checked.json"
        self.cluster = os.environ.get("SLURM_CONF", "")
        try:
            data = json.loads(self.path.read_text())
            self.seen: dict[str, float] = {
                str(k): float(v) for k, v in data.items() if isinstance(v, (int, float))
            }
        except (OSError, ValueError, AttributeError):
            self.seen = {}

    def _key(self, shape: tuple[str, ...]) -> str:
        return "\0".join((self.cluster, *shape))

    def fresh(self, shape: tuple[str, ...]) -> bool:
        """True when the cluster took this shape less than CHECK_TTL_S ago."""
        return time.time() - self.seen.get(self._key(shape), 0.0) < CHECK_TTL_S

    def add(self, shape: tuple[str, ...]) -> None:
        """Remember that the cluster took `shape` now (best effort: a write that fails only
        means asking again)."""
        now = time.time()
        self.seen = {k: t for k, t in self.seen.items() if now - t < CHECK_TTL_S}
        self.seen[self._key(shape)] = now
        try:
            temporary = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(self.seen))
            os.replace(temporary, self.path)
        except OSError:
            pass


def submission_for(
    job: Job | JobRequest,
    name: str,
    output: str,
    cwd: str,
    options: Mapping[str, object] | None = None,
) -> Submission:
    """The resource, limit and priority fields of a job (or a request at submit) for sbatch,
    with its stop protocol: the warning before the time limit, and `--requeue` when it is
    checkpointable; and its own sbatch options (`options`, its `[slurm]` table: a request's
    own by default, a stored job's from `placement_db.slurm_options`)."""
    if options is None and isinstance(job, JobRequest):
        options = job.slurm
    res = job.resources
    policy = stopping.policy_for(job, 0.0)
    return Submission(
        name=name,
        output=output,
        cwd=cwd,
        gpus=res.gpus,
        gpu_mem=res.gpu_mem,
        cpus=res.cpus,
        mem=res.mem,
        time_limit=job.time_limit,
        priority=job.priority,
        mig_profile=res.mig_profile,
        warn_before_s=policy.warn_before_s,
        requeue=policy.checkpointable and job.kind == "command",
        job_args=tuple(slurm_map.option_args(options)),
    )


def check_requests(
    requests: Sequence[JobRequest],
    home: Home,
    config: Config,
    client: SlurmClient | None = None,
    where: Sequence[str] | None = None,
    group_caps: Mapping[str, int] | None = None,
) -> None:
    """Submit-time checks for jobs bound to Slurm: every field maps to sbatch, the cluster could
    ever run the request (`sbatch --test-only`, once per distinct request, with the array it
    will go in as the daemon hands it over: `array_shapes`), and the shared filesystem rule
    holds. `group_caps` ({group: cap}) adds to the store's group limits (a pipeline's sweeps,
    not stored yet). Raises SpecError naming the job (or stage) and the field."""
    slurm = [(i, r) for i, r in enumerate(requests) if r.executor == "slurm"]
    if not slurm:
        return
    client = client or SlurmClient()
    try:
        info = client.cluster_info()
    except SlurmError as error:
        raise SpecError(f"executor 'slurm': cannot reach Slurm ({error})") from error
    subs: list[tuple[int, Submission]] = []
    for index, request in slurm:
        label = where[index] if where else f"job {request.name!r}"
        sub = submission_for(request, "", "/dev/null", "")
        try:
            slurm_map.sbatch_args(sub, config.executor, info)
        except Unmappable as error:
            raise SpecError(f"{label}: cannot run on Slurm: {error}") from error
        subs.append((index, sub))
    shapes = array_shapes(
        [(requests[i].group, sub) for i, sub in subs],
        _group_caps(home, config, {requests[i].group for i, _ in subs}, group_caps),
        info.max_array_size,
    )
    asked: set[tuple[str, ...]] = set()
    checked = CheckedShapes(home)
    for (index, sub), (size, cap) in zip(subs, shapes, strict=True):
        label = where[index] if where else f"job {requests[index].name!r}"
        sub = dataclasses.replace(sub, array_size=size, array_cap=cap if size else None)
        args = slurm_map.sbatch_args(sub, config.executor, info)
        resources = tuple(a for a in args if not a.startswith(("--job-name=", "--chdir=")))
        if resources in asked or checked.fresh(resources):
            continue  # a sweep's points ask the cluster once; a shape it took, once a day
        asked.add(resources)
        try:
            client.test_only(list(resources))
            checked.add(resources)
        except SlurmUnreachable:
            continue  # no answer is no refusal: sbatch will say, and the daemon retries it
        except SlurmError as error:
            shown = " ".join(
                a
                for a in resources
                if a not in ("--parsable", "--export=ALL", "--output=/dev/null")
            )
            within = f" as one array of {size} jobs" if size else ""
            raise SpecError(
                f"{label}: the Slurm cluster cannot run it{within} ({error};"
                f" asked {shown or 'defaults'})"
            ) from error
    check_shared_filesystem(home, sys.executable, config.executor, client)


def array_shapes(
    jobs: Sequence[tuple[str, Submission]], caps: Mapping[str, int], max_array_size: int
) -> list[tuple[int, int]]:
    """For each (group, submission) submitted together: (array size, `%` cap) of the array it
    will be handed over in, (0, 0) for a job of its own. As `SlurmExecutor._batches` does it:
    alike jobs (the same sbatch options) of a capped group go as one array with `%cap`, split
    to the cluster's MaxArraySize (the largest part is the one to check)."""
    alike: dict[tuple[str, Submission], int] = {}
    for key in jobs:
        alike[key] = alike.get(key, 0) + 1
    shapes = []
    for group, sub in jobs:
        cap, count = caps.get(group, 0), alike[(group, sub)]
        shapes.append((min(count, max_array_size), cap) if cap and count > 1 else (0, 0))
    return shapes


def _group_caps(
    home: Home, config: Config, groups: set[str], extra: Mapping[str, int] | None
) -> dict[str, int]:
    """{group: cap on its running jobs} as the daemon will read it: `extra` (a pipeline's
    sweeps), else the store's group limits (`workbench group`), else config.toml's
    `[groups.NAME] parallel`, else `[daemon] default_parallel`."""
    caps = {**config.group_parallel, **(extra or {})}
    if groups - set(extra or {}) and home.state_db.exists():
        store = Store.open(home.state_db)
        try:
            caps = {**config.group_parallel, **store.group_limits(), **(extra or {})}
        finally:
            store.close()
    return {g: caps.get(g, config.default_parallel) for g in groups}


def home_tag(home: Home) -> str:
    """8 hex digits naming this WORKBENCH_HOME in Slurm comments, so two homes of one user on
    one cluster never take each other's jobs for their own."""
    return hashlib.sha256(str(home.root.resolve()).encode()).hexdigest()[:8]


# ---- the batch script ----------------------------------------------------------------------


@dataclass(frozen=True)
class ScriptJob:
    """One job of a batch script: its id, argv and working directory, its stop signal's name
    (`TERM`...), how many starts it had before this submission (`restarts`: Slurm's own
    requeues add SLURM_RESTART_COUNT) and whether a restart is marked in its log
    (`checkpointable`)."""

    job_id: int
    argv: list[str]
    cwd: str
    stop_signal: str = "TERM"
    restarts: int = 0
    checkpointable: bool = False
    srun: bool = False  # more than one task (`[slurm]` nodes, ntasks_per_node): launched by srun


def batch_script(home: Home, jobs: Sequence[ScriptJob]) -> str:
    """A bash script that runs job i of `jobs` as Slurm array task i (or the only one). Output
    goes to the job's `runs/<id>/log`; its end is written to `exit.json` there too, for when
    Slurm has forgotten the job before the daemon asked.

    Stopping (README, "Stopping, resuming and reproducing a job"): the job runs as a child the
    shell waits for, so the shell outlives it to record its end; the shell catches the stop
    signals (a shell that died on SIGTERM let Slurm kill the job mid-handler), and turns
    WARN_SIGNAL (the time limit warning, `--signal=B:...`, sent to the shell alone) into the job's
    stop signal, after writing the stop file."""
    runs = shlex.quote(str(home.runs))
    cases = []
    for index, job in enumerate(jobs):
        words = " ".join(shlex.quote(a) for a in job.argv)
        cases.append(
            f"  {index}) id={job.job_id}; cwd={shlex.quote(job.cwd)}; argv=({words});"
            f" stop_sig={job.stop_signal}; restarts={job.restarts};"
            f" marked={int(job.checkpointable)}; use_srun={int(job.srun)} ;;"
        )
    warn = int(slurm_map.WARN_SIGNAL)
    lines = [
        "#!/bin/bash",
        f"# workbench: jobs {' '.join(str(j.job_id) for j in jobs)} (array task i runs the i-th)",
        'case "${SLURM_ARRAY_TASK_ID:-0}" in',
        *cases,
        '  *) echo "workbench: no job for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;',
        "esac",
        f'run_dir={runs}/"$id"',
        'mkdir -p "$run_dir/checkpoints"',
        'rm -f "$run_dir/exit.json" "$run_dir/failure" "$run_dir/stop"',
        f'echo "${{SLURM_JOB_ID:-}}" >"$run_dir/{STARTED_FILE}"',
        'exec >>"$run_dir/log" 2>&1',
        "restarts=$((restarts + ${SLURM_RESTART_COUNT:-0}))",
        'export WORKBENCH_JOB_ID="$id" WORKBENCH_RUN_DIR="$run_dir"'
        ' WORKBENCH_RECORDS="$run_dir/records.jsonl"'
        ' WORKBENCH_CHECKPOINT_DIR="$run_dir/checkpoints" WORKBENCH_RESTARTS="$restarts"'
        ' WORKBENCH_STOP_FILE="$run_dir/stop"',
        'if [ "$restarts" -gt 0 ] && [ "$marked" = 1 ]; then',
        '  echo "[workbench] restart $restarts: the same run, resuming from its checkpoint'
        ' folder $WORKBENCH_CHECKPOINT_DIR"',
        "fi",
        "child=",
        "warned() {",
        '  [ -e "$run_dir/stop" ] || echo "time limit reached soon (Slurm\'s warning);'
        ' save and exit" >"$run_dir/stop"',
        '  [ -n "$child" ] && kill -s "$stop_sig" "$child" 2>/dev/null',
        "}",
        "trap : TERM HUP USR1 USR2",
        f"trap warned {warn}",
        'if ! cd -- "$cwd"; then',
        '  echo "[workbench] the working directory $cwd does not exist on $(hostname)"',
        '  echo "the working directory $cwd does not exist on $(hostname)" >"$run_dir/failure"',
        "  code=127",
        "else",
        '  if [ "$use_srun" = 1 ]; then srun --kill-on-bad-exit=1 "${argv[@]}" &',
        '  else "${argv[@]}" & fi',
        "  child=$!",
        '  while :; do wait "$child"; code=$?; kill -0 "$child" 2>/dev/null || break; done',
        "fi",
        'printf \'{"exit_code": %d, "signal": null, "ended_at": %s}\\n\' "$code" "$(date +%s)"'
        ' >"$run_dir/exit.json.tmp" && mv "$run_dir/exit.json.tmp" "$run_dir/exit.json"',
        'exit "$code"',
    ]
    return "\n".join(lines) + "\n"


def script_job(
    job: Job, argv: list[str], cwd: str, restarts: int, options: Mapping[str, object] | None = None
) -> ScriptJob:
    """A job as the batch script runs it, with its stop protocol; with `srun` when its `[slurm]`
    options ask for more than one task."""
    policy = stopping.policy_for(job, 0.0)
    marked = policy.checkpointable and job.kind == "command"
    srun = slurm_map.tasks_of(options) != (1, 1)
    return ScriptJob(job.id, argv, cwd, policy.signal_name, restarts, marked, srun)


def slurm_limit(seconds: float) -> str:
    """A time limit as Slurm enforces it (whole minutes, rounded up), in words."""
    return format_duration(slurm_map.time_limit_minutes(seconds) * 60.0)


def _limit_note(job: Job) -> str:
    """For a submit reason: the time limit Slurm enforces where it is not the one asked for."""
    if not job.time_limit:
        return ""
    enforced = slurm_map.time_limit_minutes(job.time_limit) * 60.0
    if abs(enforced - job.time_limit) < 1e-6:
        return ""
    asked = format_duration(job.time_limit)
    return f"; its time limit of {asked} is {slurm_limit(job.time_limit)} on Slurm (whole minutes)"


# ---- the daemon side -----------------------------------------------------------------------


@dataclass
class _Pending:
    """A queued Slurm job that is ready to hand over, with its dependencies as Slurm ids."""

    job: Job
    deps: tuple[tuple[str, str], ...]


def due_for_slurm(queued: Sequence[Job], now: float) -> list[Job]:
    """The queued jobs that may be handed to Slurm at `now` (Unix s): all but those whose
    automatic retry still backs off. A failed attempt with retries left is requeued with
    `not_before` (the store sets it from `workbench.jobmodel.retry`: 1 s doubling to 60 s, the
    same delays as local retries), so a job that fails at once on the cluster does not flood
    sbatch. A job held back keeps its reason ("retrying in 4s (attempt 3 of 5); ...") and goes
    in the first submit round after its time (the daemon runs one when a back-off ends)."""
    return [job for job in queued if job.not_before is None or job.not_before <= now]


class SlurmExecutor:
    """The daemon's half of the Slurm executor.

    Slurm does the scheduling, so Slurm jobs skip the local scheduler's admission: the daemon
    calls `submit_ready()` on every wake-up and `tick()` once a second. `tick` hands ready queued
    jobs to Slurm (a capped group's ready jobs as one array with `%N`; dependencies as
    `--dependency`), asks squeue once about all our jobs, applies their records, carries out
    cancel/pause/resume, and settles the ended ones. It holds no state a restarted daemon would
    need: everything is in the store (Slurm id, node, records offset), so a new daemon re-adopts
    the jobs by simply ticking.

    It also implements the `Executor` protocol for one admitted attempt at a time (`start`,
    `find`, `adopt`, `poll`, `signal`, `cancel`, `stop_all`, `log_path`, `describe`), with the
    same mapping, script and squeue parsing."""

    name = "slurm"

    def __init__(
        self,
        home: Home,
        store: Store,
        config: Config,
        python: str = sys.executable,
        client: SlurmClient | None = None,
        credentials: CredentialVault | None = None,
    ):
        self.home = home
        # The credentials the daemon holds in memory for jobs (workbench.daemon.credentials):
        # added to sbatch's environment only, never to the stored one; a job whose credentials
        # the daemon lacks (it restarted) is not handed to Slurm until they are given again.
        self.credentials = credentials
        self.store = store
        self.config = config
        self.python = python
        settings = config.executor
        self.client = client or SlurmClient(timeout_s=settings.command_timeout_s)
        self.squeue_calls = 0
        self.pacer = Poll(floor_s=settings.poll_min_s, ceiling_s=settings.poll_max_s)
        self.forgetting = Forgetting()
        self.tag = home_tag(home)
        self._cancel_sent: set[str] = set()
        self._stop_sent: dict[str, float] = {}  # Slurm id -> when its stop signal was sent
        self._error: str | None = None
        # Jobs whose sbatch may have created a Slurm job we did not record (it timed out, or
        # a previous daemon stopped between sbatch and the store): looked for by comment
        # before they are handed over again. None: every unsubmitted job (a fresh daemon).
        self._unsure: set[int] | None = None
        # Slurm jobs settled from their exit.json while Slurm did not answer: Slurm is told to
        # let go of them once it answers (it may have requeued one meanwhile).
        self._let_go: set[str] = set()
        # The usage (CPU, MaxRSS, elapsed, GPUs) of settled jobs, read from sacct once
        # accounting has it, without holding up the poll.
        self.usage = UsageReader(store, ask=self._ask_usage)

    def _ask_usage(self, slurm_ids: list[str]) -> dict[str, SlurmUsage] | None:
        try:
            return self.client.sacct_usage(slurm_ids)
        except SlurmError as error:
            raise Unanswered(str(error)) from error

    # ---- the Executor protocol -----------------------------------------------------------

    def start(self, launch: Launch) -> Handle:
        """sbatch one attempt (resources, limits and priority from the job's row; the token in
        `--comment` so `find` can recognise it). Raises LaunchError with Slurm's message."""
        job = self.store.get(launch.job_id)
        options = placement_db.slurm_options(self.store, [job.id]).get(job.id)
        output = str(launch.run_dir / "slurm-%j.out")
        sub = dataclasses.replace(
            submission_for(job, job.name, output, launch.cwd, options),
            comment=f"workbench {launch.token}",
        )
        launch.run_dir.mkdir(parents=True, exist_ok=True)
        restarts = int(launch.env.get("WORKBENCH_RESTARTS") or 0)
        argv = list(launch.argv)
        script = batch_script(self.home, [script_job(job, argv, launch.cwd, restarts, options)])
        env = dict(launch.env)
        if "SLURM_CONF" in os.environ:
            env["SLURM_CONF"] = os.environ["SLURM_CONF"]
        try:
            args = slurm_map.sbatch_args(sub, self.config.executor, self.client.cluster_info())
            slurm_id = self.client.submit(args, script, env)
        except (SlurmError, SpecError) as error:
            raise LaunchError(f"Slurm refused it: {error}") from error
        return Handle(launch.token, launch.run_dir, external_id=slurm_id)

    def start_many(self, launches: list[Launch]) -> list[Handle | Exception]:
        """`start` for each attempt (one sbatch each): its Handle, or the LaunchError."""
        out: list[Handle | Exception] = []
        for launch in launches:
            try:
                out.append(self.start(launch))
            except LaunchError as error:
                out.append(error)
        return out

    def close(self) -> None:
        """Nothing to release: Slurm jobs live on without the daemon."""

    def find(self, token: str, run_dir: Path) -> Handle | None:
        """The attempt Slurm holds with this token in its comment, if any."""
        for sid, seen in self.client.squeue().items():
            if seen.comment == f"workbench {token}" and "_" not in sid:
                return Handle(token, run_dir, external_id=sid)
        return None

    def adopt(self, handle: Handle) -> bool:
        """True while Slurm still holds the job (pending, running, completing)."""
        seen = self.client.squeue().get(handle.external_id or "")
        return seen is not None and seen.state in ACTIVE_SLURM_STATES

    def watch_fd(self, handle: Handle) -> int | None:
        return None  # Slurm jobs can only be polled

    def poll(self, handles: list[Handle]) -> list[Ended]:
        """One squeue for all `handles`; ended ones with Slurm's exit status and reason. A job
        Slurm has forgotten is settled from the `exit.json` its script left, else lost."""
        seen = self.client.squeue()
        self.squeue_calls += 1
        out = []
        for handle in handles:
            job = seen.get(handle.external_id or "")
            if job is None:
                status = runner.read_exit(handle.run_dir)
                if status is None:
                    lost = f"Slurm no longer knows job {handle.external_id}"
                    out.append(Ended(handle, runner.ExitStatus(None, None, time.time()), lost))
                else:
                    out.append(Ended(handle, status))
                continue
            if job.state in ACTIVE_SLURM_STATES:
                continue
            view = slurm_map.view(job)
            status = runner.ExitStatus(
                None if job.signal else job.exit_code, job.signal, job.end_time or time.time()
            )
            out.append(Ended(handle, status, notes=(view.reason,)))
        return out

    def signal(self, handle: Handle, sig: int) -> int:
        """`scancel --signal` to every process of the job (batch script included)."""
        try:
            self.client.signal(handle.external_id or "", sig)
        except SlurmError:
            return 0
        return 1

    def cancel(self, handle: Handle, grace_s: float, why: str | None = None) -> None:
        """scancel: Slurm sends SIGTERM, then SIGKILL after the cluster's KillWait (its grace,
        which the cluster sets: `grace_s` cannot change it; the log is the cluster's to write,
        so `why` is not written into it)."""
        self._scancel(handle.external_id or "")

    def stop_all(self, handle: Handle) -> int:
        """SIGKILL every process of the job; 1 if Slurm took the request, else 0."""
        return self.signal(handle, 9)

    def log_path(self, handle: Handle) -> Path:
        """The job's log in its run folder (the batch script appends its output there)."""
        return handle.run_dir / runner.LOG_FILE

    def describe(self) -> str:
        """One line for `daemon status`."""
        return "slurm: sbatch/squeue/scancel as an ordinary cluster user; Slurm contains the jobs"

    # ---- submit ------------------------------------------------------------------------

    def _ready(self, queued: list[Job]) -> list[_Pending]:
        """Decide for each queued job without a Slurm id: hand over now (its dependencies as
        Slurm ids), wait (a dependency is not on Slurm yet), or block (one can never be met)."""
        dep_ids = {d for j in queued for d, _ in j.deps}
        states = self.store.states_of(dep_ids) if dep_ids else {}
        places = placement_db.placements(self.store, dep_ids) if dep_ids else {}
        ready = []
        for job in queued:
            slurm_deps: list[tuple[str, str]] = []
            waiting: list[int] = []
            blocked = None
            for dep_id, cond in job.deps:
                state = states.get(dep_id)
                place = places.get(dep_id)
                if state is None:
                    blocked = f"dependency {dep_id} was removed"
                elif state in ENDED or state == BLOCKED:
                    problem = slurm_map.ended_dependency(cond, state)
                    if problem:
                        blocked = f"dependency {dep_id} {problem}"
                elif place is not None and place.slurm_id and place.executor == "slurm":
                    slurm_deps.append((place.slurm_id, cond))
                else:
                    waiting.append(dep_id)
                if blocked:
                    break
            if blocked:
                self.store.transition(job.id, Event.BLOCK, blocked, only_from=[QUEUED])
            elif waiting:
                listed = ", ".join(str(d) for d in waiting)
                self.store.set_reason(job.id, f"waiting for {listed} before handing it to Slurm")
            else:
                ready.append(_Pending(job, tuple(slurm_deps)))
        return ready

    def _batches(self, ready: list[_Pending]) -> list[tuple[list[_Pending], int | None]]:
        """Single jobs, and one array per capped group whose ready jobs are alike (same
        resources, limits, priority, dependencies, environment). The cap holds across
        submissions: a capped group's jobs that Slurm holds (running or pending there) count
        against it, so with `--parallel 2` and one job on Slurm, the next one to arrive is
        handed over at once, and the third waits (in our queue, with the reason) until one of
        the two is done. A group with nothing on Slurm goes as one array with `%cap`."""
        limits = {**self.config.group_parallel, **self.store.group_limits()}
        on_slurm = self._groups_on_slurm()
        options = placement_db.slurm_options(self.store, [item.job.id for item in ready])
        secrets = self._held([item.job.id for item in ready])
        batches: list[tuple[list[_Pending], int | None]] = []
        arrays: dict[tuple[object, ...], list[_Pending]] = {}
        array_of: dict[str, tuple[object, ...]] = {}
        for item in ready:
            job = item.job
            cap = limits.get(job.group, self.config.default_parallel) or None
            if cap is None:
                batches.append(([item], None))
                continue
            key = (
                job.group, job.gpus, job.gpu_mem, job.cpus, job.mem, job.time_limit,
                job.priority, item.deps, json.dumps(job.env, sort_keys=True),
                json.dumps(secrets.get(job.id, {}), sort_keys=True),
                submission_for(job, "", "", "", options.get(job.id)),
            )  # fmt: skip
            held = on_slurm.get(job.group, 0)
            if held == 0 and array_of.setdefault(job.group, key) == key:
                arrays.setdefault(key, []).append(item)
            elif 0 < held < cap:
                batches.append(([item], cap))
                on_slurm[job.group] = held + 1
            else:
                self.store.set_reason(
                    job.id,
                    f"group {job.group!r} is at its limit of {cap}: it has {max(held, 1)} job(s)"
                    " on Slurm (running or waiting there); waits for one to finish",
                )
        try:
            largest = self.client.cluster_info().max_array_size if arrays else 1001
        except SlurmError:
            largest = 1001  # asked again at sbatch, which then says what is wrong
        for items in arrays.values():
            group = items[0].job.group
            # An array past MaxArraySize is refused whole: hand over its first part now, the
            # rest once that part is done (the group is then busy), so the cap still holds.
            for item in items[largest:]:
                self.store.set_reason(
                    item.job.id,
                    f"group {group!r}: its array is split to the cluster's MaxArraySize"
                    f" ({largest}); waits for the part before it to finish",
                )
            batches.append((items[:largest], limits.get(group, self.config.default_parallel)))
        return batches

    def _groups_on_slurm(self) -> dict[str, int]:
        """{group: how many of its jobs Slurm holds for us (submitted, not ended)}."""
        active = self.store.active_jobs(light=True)
        places = placement_db.placements(self.store, [j.id for j in active])
        counts: dict[str, int] = {}
        for j in active:
            if j.state != BLOCKED and places[j.id].executor == "slurm" and places[j.id].slurm_id:
                counts[j.group] = counts.get(j.group, 0) + 1
        return counts

    def _submit(self, items: list[_Pending], cap: int | None) -> None:
        jobs = [self.store.get(item.job.id) for item in items]
        first = jobs[0]
        for job in jobs:
            self.home.run_dir(job.id).mkdir(parents=True, exist_ok=True)
            for stale in (RECORDS_FILE, runner.EXIT_FILE, runner.FAILURE_FILE, STARTED_FILE):
                try:
                    (self.home.run_dir(job.id) / stale).unlink()
                except FileNotFoundError:
                    pass
        output = str(self.home.run_dir(first.id) / "slurm-%j.out")
        array = len(jobs) if cap is not None and len(jobs) > 1 else 0
        name = first.name if not array else f"{first.group} ({len(jobs)} jobs)"
        options = placement_db.slurm_options(self.store, [first.id]).get(first.id)
        sub = dataclasses.replace(
            submission_for(first, name, output, first.cwd, options),
            deps=items[0].deps,
            array_size=array,
            array_cap=cap if array else None,
            comment=submission_comment([(j.id, j.attempt) for j in jobs], self.tag),
        )
        script = batch_script(
            self.home,
            [
                script_job(
                    j,
                    job_argv(j, self.python),
                    j.cwd or str(self.home.root),
                    j.attempt - 1,
                    options,
                )
                for j in jobs
            ],
        )
        try:
            args = slurm_map.sbatch_args(sub, self.config.executor, self.client.cluster_info())
            slurm_id = self.client.submit(args, script, self._environment(first))
        except SlurmUnreachable as error:
            # No answer is no refusal: the job stays queued and sbatch is tried again after
            # the back-off, once a look in squeue for its comment has not found it there.
            self.pacer.failed(str(error))
            if self._unsure is not None:
                self._unsure.update(j.id for j in jobs)
            for job in jobs:
                self.store.set_reason(job.id, f"{self.pacer.reason()}; sbatch will be tried again")
            return
        except (SlurmError, SpecError) as error:
            for job in jobs:
                self.store.transition(
                    job.id, Event.REFUSE, f"Slurm refused it: {error}", only_from=[QUEUED]
                )
            return
        self.pacer.hurry()
        self._record_submission(jobs, slurm_id, array > 0)

    def _record_submission(self, jobs: list[Job], slurm_id: str, array: bool) -> None:
        """Store the Slurm ids of a submission (task i of an array runs jobs[i])."""
        ids = [f"{slurm_id}_{i}" for i in range(len(jobs))] if array else [slurm_id]
        placement_db.set_slurm_id(self.store, [j.id for j in jobs], ids)
        for job, sid in zip(jobs, ids, strict=True):
            self.store.set_reason(job.id, f"submitted to Slurm as job {sid}{_limit_note(job)}")

    def _held(self, job_ids: list[int]) -> dict[int, dict[str, str]]:
        """The credentials the daemon holds for each of `job_ids` (job id -> name -> value)."""
        return self.credentials.environments(job_ids) if self.credentials is not None else {}

    def _environment(self, job: Job) -> dict[str, str]:
        """sbatch's environment, which `--export=ALL` hands to the job: the environment
        captured at submit, plus its credentials from the daemon's memory (Slurm keeps the
        environment of a job in its own state, readable by root and SlurmUser only), plus what
        every job gets, plus the daemon's Slurm settings."""
        env = {**job.env, **self._held([job.id]).get(job.id, {})}
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "WORKBENCH_HOME": str(self.home.root),
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            }
        )
        if job.cpus > 0:
            threads = str(max(1, math.ceil(job.cpus)))
            env.setdefault("OMP_NUM_THREADS", threads)
            env["WORKBENCH_CPUS"] = threads
        if "SLURM_CONF" in os.environ:  # the cluster the daemon talks to
            env["SLURM_CONF"] = os.environ["SLURM_CONF"]
        env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
        return env

    # ---- follow ------------------------------------------------------------------------

    def submit_ready(self) -> None:
        """Hand queued Slurm jobs whose dependencies allow it to Slurm (no squeue: cheap, so
        the daemon calls it on every wake-up, and a submitted job reaches Slurm at once)."""
        # A job whose dependency is handed over in this round can go in the next one (a
        # pipeline reaches Slurm whole, in dependency order, in one call).
        for _ in range(MAX_SUBMIT_ROUNDS):
            if not self.pacer.reachable() and not self.pacer.due():
                return  # Slurm did not answer: sbatch waits for the back-off too
            fresh = [p.job_id for p in placement_db.slurm_placements(self.store) if not p.slurm_id]
            jobs = [self.store.find(job_id) for job_id in fresh]
            queued = [j for j in jobs if j is not None and j.state == QUEUED and j.intent is None]
            queued = due_for_slurm(queued, time.time())
            adopted = self._find_unrecorded(queued) if queued else set()
            if adopted is None:
                return
            queued = [j for j in queued if j.id not in adopted]
            if self.credentials is not None and queued:
                waiting = self.credentials.hold_back(queued)
                queued = [j for j in queued if j.id not in waiting]
            batches = self._batches(self._ready(queued)) if queued else []
            for items, cap in batches:
                self._submit(items, cap)
            if not batches:
                return

    def _find_unrecorded(self, queued: list[Job]) -> set[int] | None:
        """Before handing over jobs whose earlier sbatch may have created a Slurm job we did not
        record (it did not answer in time; or a previous daemon stopped before recording it),
        look for them by their comment in one `squeue --me`, and adopt what is found. Returns
        the ids adopted; None when Slurm did not answer (nothing may be submitted now)."""
        unsure = {j.id for j in queued} if self._unsure is None else self._unsure
        wanted = {j.id: j.attempt for j in queued if j.id in unsure}
        if not wanted:
            self._unsure = self._unsure if self._unsure is not None else set()
            return set()
        try:
            mine = self.client.squeue()
        except SlurmError as error:
            self.pacer.failed(str(error))
            return None
        found: dict[str, list[tuple[int, int]]] = {}
        for sid, seen in mine.items():
            named = follows_from_comment(seen.comment, self.tag)
            if named:
                found.setdefault(sid.split("_")[0], named)
        adopted: set[int] = set()
        for slurm_id, named in found.items():
            if not all(wanted.get(job_id) == attempt for job_id, attempt in named):
                continue
            jobs = [self.store.get(job_id) for job_id, _ in named]
            self._record_submission(jobs, slurm_id, len(named) > 1)
            adopted.update(job_id for job_id, _ in named)
            for job in jobs:
                self.store.set_reason(
                    job.id,
                    f"found on Slurm as job {slurm_id} by its comment (its sbatch did not answer"
                    " in time, or the daemon stopped before recording it)",
                )
                print(
                    f"workbench daemon: job {job.id} found on Slurm as {slurm_id} by its comment",
                    file=sys.stderr,
                    flush=True,
                )
        self._unsure = set() if self._unsure is None else self._unsure - set(wanted)
        return adopted

    def tick(self) -> bool:
        """One round: submit what is ready, then, when the poll is due (an adaptive interval,
        `slurm_reconcile.Poll`) or a job's exit status has appeared on disk, one squeue about
        our own jobs. While Slurm does not answer, every job keeps its last known state, with
        the outage as its reason, and only an `exit.json` settles one. Returns True if there is
        anything on Slurm to follow (the daemon then ticks again)."""
        self.submit_ready()
        usage_waits = self.usage.tick()
        followed = [p for p in placement_db.slurm_placements(self.store) if p.slurm_id]
        if not followed:
            return usage_waits
        if any((self.home.run_dir(p.job_id) / runner.EXIT_FILE).exists() for p in followed):
            self.pacer.now_due()  # Slurm will say how it ended: ask now, not in 30 s
        if placement_db.needs_action(self.store, [p.job_id for p in followed]):
            self.pacer.now_due()  # a cancel, pause or resume to carry out: not in 30 s
        if not self.pacer.due():
            return True
        try:
            seen = self.client.squeue_jobs([p.slurm_id for p in followed if p.slurm_id])
            self.squeue_calls += 1
            self.pacer.answered(seen)
            self._error = None
            for sid in sorted(self._let_go):
                try:  # most have ended: scancel then says so, and that is fine
                    self.client.cancel([sid])
                except SlurmError:
                    pass
            self._let_go.clear()
        except SlurmError as error:
            if self._error != str(error):
                print(f"workbench daemon: squeue failed: {error}", file=sys.stderr, flush=True)
            self._error = str(error)
            self.pacer.failed(str(error))
            self._unanswered(followed)
            return True
        holds, releases = [], []
        for place in followed:
            assert place.slurm_id is not None
            job = self.store.find(place.job_id)
            if job is None:
                continue
            action = self._follow(job, place, self._ours(job, seen.get(place.slurm_id)))
            if action == "hold":
                holds.append(place.slurm_id)
            elif action == "release":
                releases.append(place.slurm_id)
        for what, ids in (("hold", holds), ("release", releases)):
            try:
                (self.client.hold if what == "hold" else self.client.release)(ids)
            except SlurmError as error:
                print(f"workbench daemon: scontrol {what}: {error}", file=sys.stderr, flush=True)
        return True

    def _ours(self, job: Job, seen: SlurmJob | None) -> SlurmJob | None:
        """`seen`, unless its comment says it is another job (a controller that lost its state
        hands job ids out again): then, for this job, Slurm has forgotten its own."""
        if (
            seen is None
            or not seen.comment.startswith("workbench job ")
            or " home " not in seen.comment
        ):
            return seen  # no comment of ours to check (an older daemon's submission)
        if (job.id, job.attempt) in follows_from_comment(seen.comment, self.tag):
            return seen
        return None

    def _unanswered(self, followed: list[placement_db.Placement]) -> None:
        """Slurm did not answer: each live job keeps its state with the outage as its reason;
        one whose batch script left its exit status is settled from it (authoritative), so a
        retry is queued (and handed over once Slurm answers again)."""
        reason = self.pacer.reason()
        for place in followed:
            job = self.store.find(place.job_id)
            if job is None or job.state in ENDED or job.state == BLOCKED:
                continue
            if (self.home.run_dir(job.id) / runner.EXIT_FILE).exists():
                self._settle_forgotten(job, place, from_exit_file=True)
                if self.store.get(job.id).slurm_id != place.slurm_id:
                    self._let_go.add(place.slurm_id or "")
            elif job.reason != reason:
                self.store.set_reason(job.id, reason)

    def _stop(self, job: Job, slurm_id: str, seen: SlurmJob | None, why: str) -> None:
        """Stop a job as its stop protocol says: a running one gets its stop file, then its stop
        signal (`scancel --full --signal`: every process, the batch shell catches it), and
        `scancel` (SIGTERM, then SIGKILL after the cluster's KillWait) once its kill grace is
        over; one that has not started is cancelled at once."""
        if slurm_id in self._cancel_sent:
            return
        if seen is None or slurm_map.view(seen).state != RUNNING:
            self._scancel(slurm_id)
            return
        policy = stopping.policy_for(job, self.config.kill_grace_s)
        sent = self._stop_sent.get(slurm_id)
        if sent is None:
            stopping.write_stop(self.home.run_dir(job.id), why)
            try:
                self.client.signal(slurm_id, policy.signal)
            except SlurmError as error:
                print(f"workbench daemon: scancel {slurm_id}: {error}", file=sys.stderr, flush=True)
            self._stop_sent[slurm_id] = time.time()
        elif time.time() >= sent + policy.grace_s:
            self._scancel(slurm_id)

    def _scancel(self, slurm_id: str) -> None:
        if slurm_id in self._cancel_sent:
            return
        try:
            self.client.cancel([slurm_id])
            self._cancel_sent.add(slurm_id)
        except SlurmError as error:
            print(f"workbench daemon: scancel {slurm_id}: {error}", file=sys.stderr, flush=True)

    def _records(self, job: Job, offset: int) -> str | None:
        """Apply the job's new records; a problem is returned in words (it fails the job). A
        command job's SQL write lines are refused (a script could write any job's rows)."""
        try:
            path = self.home.run_dir(job.id) / RECORDS_FILE
            # SQL write lines come from the built-in kinds' recording store; a command job
            # reports through typed records only, which touch nothing but its own rows.
            writes = job.kind != "command"
            apply_all_records(self.store, job.id, path, offset, allow_writes=writes)
        except RecordError as error:
            return str(error)
        return None

    def _follow(self, job: Job, place: placement_db.Placement, seen: SlurmJob | None) -> str:
        """Bring one job in line with what Slurm says; returns 'hold'/'release' when Slurm
        should be told (batched by the caller), else ''."""
        assert place.slurm_id is not None
        if job.state in ENDED or job.state == BLOCKED:
            # Ended here first (cancelled while pending): make Slurm let go of it too.
            if seen is not None and seen.state in ACTIVE_SLURM_STATES:
                self._stop(job, place.slurm_id, seen, job.reason or "cancelled")
            else:
                self._records(job, place.records_offset)
                placement_db.close_slurm(self.store, job.id)
            return ""
        if job.intent == "cancel":
            self._stop(job, place.slurm_id, seen, "cancelled")
        if seen is None:
            self._settle_forgotten(job, place)
            return ""
        self.forgetting.seen(place.slurm_id)
        view = slurm_map.view(seen)
        if seen.restarts > place.restarts:
            self._requeued(job, place, seen, view)
            job = self.store.get(job.id)
        if view.ended:
            self._settle(job, place, seen, view)
            return ""
        if is_unreachable_reason(job.reason) and job.state in (RUNNING, PAUSED):
            self.store.set_reason(job.id, f"{view.reason} (Slurm job {place.slurm_id})")
        if seen.state == "SUSPENDED":  # `pause` with [executor] suspend, or the cluster's admin
            if job.state == RUNNING:
                words = f"suspended in Slurm (Slurm job {place.slurm_id})"
                self.store.transition(job.id, Event.PAUSE, words, only_from=[RUNNING])
            return ""
        if view.state == RUNNING and job.state == PAUSED:  # resumed, or started before its hold
            words = f"running in Slurm (Slurm job {place.slurm_id})"
            began = {} if job.started_at else {"started_at": seen.start_time or time.time()}
            self.store.transition(job.id, Event.RESUME, words, only_from=[PAUSED], **began)
            job = self.store.get(job.id)
        if view.state == RUNNING:
            self._mark_running(job, place, seen)
            if seen.node and place.node != seen.node:
                placement_db.set_node(self.store, job.id, seen.node)
            problem = self._records(job, place.records_offset)
            if problem:
                print(f"workbench daemon: {problem}", file=sys.stderr, flush=True)
            if job.intent in ("pause", "resume"):
                self.store.update(job.id, intent=None)
                self.store.set_reason(
                    job.id,
                    "a running Slurm job cannot be paused by a cluster user (only an"
                    " administrator can suspend it); cancel it instead",
                )
            return ""
        held = seen.state == "PENDING" and seen.reason in HELD_REASONS
        if job.state == PAUSED and not held:
            return "hold"
        if job.state == QUEUED and held:
            return "release"
        if job.state == QUEUED and seen.restarts:
            self.store.set_reason(
                job.id,
                f"requeued by Slurm (restart {seen.restarts} of Slurm job {place.slurm_id});"
                f" {view.reason}",
            )
        elif job.state == QUEUED:
            self.store.set_reason(
                job.id, f"{view.reason} (Slurm job {place.slurm_id}){_limit_note(job)}"
            )
        return ""

    def _requeued(
        self, job: Job, place: placement_db.Placement, seen: SlurmJob, view: slurm_map.View
    ) -> None:
        """Slurm requeued the job (its node failed or was set down, preemption, `scontrol
        requeue`): count it, mark it in the job's log, and show it queued again with Slurm's
        reason until Slurm starts it anew (the same Slurm job; no attempt of ours is spent)."""
        assert place.slurm_id is not None
        placement_db.set_restarts(self.store, job.id, seen.restarts)
        when = time.strftime("%H:%M:%S")
        words = f"requeued by Slurm (restart {seen.restarts} of Slurm job {place.slurm_id})"
        try:
            with open(self.home.run_dir(job.id) / runner.LOG_FILE, "a") as log:
                log.write(f"[workbench] {when} {words}: {view.reason}\n")
        except OSError:
            pass
        print(f"workbench daemon: job {job.id} {words}", file=sys.stderr, flush=True)
        if job.state == RUNNING and not view.ended and view.state != RUNNING:
            self.store.transition(
                job.id, Event.REQUEUE, f"{words}; {view.reason}", only_from=[RUNNING],
                slurm_id=place.slurm_id, node=place.node, records_offset=place.records_offset,
            )  # fmt: skip
        elif job.state in (QUEUED, RUNNING):
            self.store.set_reason(job.id, f"{words}; {view.reason}")

    def _settle(
        self, job: Job, place: placement_db.Placement, seen: SlurmJob, view: slurm_map.View
    ) -> None:
        """Record how Slurm ended a job: records first (metrics, catalog), then the state, and
        a retry when the job has retries left."""
        problem = self._records(job, place.records_offset)
        mark_finished(self.store, [job.id])  # a script's run (workbench.track) ends with it
        live = [QUEUED, RUNNING, PAUSED]
        if view.state not in (BLOCKED, CANCELLED):
            self._mark_running(job, place, seen)
        if seen.node:
            placement_db.set_node(self.store, job.id, seen.node)
        fields: dict[str, object] = {"ended_at": seen.end_time or time.time()}
        if view.exit_code is not None:
            fields["exit_code"] = view.exit_code
        failure = runner.read_failure(self.home.run_dir(job.id))
        if view.state == BLOCKED:
            if job.state == PAUSED:  # held here, and Slurm has given up on it meanwhile
                self.store.transition(job.id, Event.RELEASE, None, only_from=[PAUSED])
            self.store.transition(job.id, Event.BLOCK, view.reason, only_from=[QUEUED])
        elif view.state == CANCELLED or job.intent == "cancel":
            reason = "cancelled" if job.intent == "cancel" else view.reason
            self.store.transition(job.id, Event.CANCEL, reason, only_from=live, **fields)
        elif view.state == SUCCEEDED and not problem:
            self.store.transition(job.id, Event.EXIT_OK, view.reason, only_from=live, **fields)
        else:
            reason = view.reason
            if seen.state == "TIMEOUT" and job.time_limit:
                reason = f"time limit of {slurm_limit(job.time_limit)} exceeded (Slurm TIMEOUT)"
            if failure:
                reason = f"{reason}: {failure}"
            if problem:
                reason = f"{reason}; {problem}"
            self._fail(job, reason, fields)
        placement_db.close_slurm(self.store, job.id)
        self._expect_usage(job.id)

    def _expect_usage(self, job_id: int) -> None:
        """The job has ended on Slurm: its usage comes from sacct (where there is slurmdbd)."""
        if self.store.get(job_id).state in ENDED:
            self.usage.expect(job_id)

    def _mark_running(self, job: Job, place: placement_db.Placement, seen: SlurmJob) -> None:
        """Slurm started it: queued -> starting -> running (the launch is Slurm's)."""
        if job.state != QUEUED:
            return
        words = f"started on {seen.node or 'a node'} (Slurm job {place.slurm_id}){_limit_note(job)}"
        if self.store.transition(job.id, Event.START, "Slurm is starting it", only_from=[QUEUED]):
            self.store.transition(
                job.id, Event.LAUNCHED, words, only_from=[STARTING],
                started_at=seen.start_time or time.time(),
            )  # fmt: skip

    def _fail(self, job: Job, reason: str, fields: dict[str, object], lost: bool = False) -> None:
        live = [RUNNING, PAUSED]
        if job.attempt <= job.retries:
            retry = f"automatic retry {job.attempt}/{job.retries} after it failed on Slurm"
            self.store.fail_and_requeue(job.id, reason, retry, only_from=live, **fields)
        else:
            event = Event.LOST if lost else Event.EXIT_FAILED
            self.store.transition(job.id, event, reason, only_from=live, **fields)

    def _settle_forgotten(
        self, job: Job, place: placement_db.Placement, from_exit_file: bool = False
    ) -> None:
        """Slurm's answer does not list the job (it ended longer ago than the cluster's
        MinJobAge, or the cluster lost it). Settled only from an authoritative source: the
        exit status the batch script left (`exit.json`), else Slurm's accounting (`sacct`,
        when the cluster has slurmdbd); lost only when Slurm says it does not know the job
        (`scontrol show job`) and neither knows how it ended for LOST_AFTER_S. Until then it
        keeps its state. `from_exit_file`: settle from `exit.json` or not at all (an outage)."""
        assert place.slurm_id is not None
        run_dir = self.home.run_dir(job.id)
        status = runner.read_exit(run_dir)
        live = [QUEUED, RUNNING, PAUSED]
        if job.intent == "cancel" and status is None:
            self.store.transition(job.id, Event.CANCEL, "cancelled", only_from=live)
            placement_db.close_slurm(self.store, job.id)
            return
        if status is None and not from_exit_file:
            try:
                accounted = (self.client.sacct([place.slurm_id]) or {}).get(place.slurm_id)
                if accounted is not None and slurm_map.view(accounted).ended:
                    self.forgetting.seen(place.slurm_id)
                    self._settle(job, place, accounted, slurm_map.view(accounted))
                    return
                missing_s = self.forgetting.missed(place.slurm_id)
                if missing_s < LOST_AFTER_S or self.client.knows(place.slurm_id):
                    return  # not yet: Slurm may still answer, or its script write exit.json
            except SlurmError as error:
                self.pacer.failed(str(error))
                return
        if status is None and from_exit_file:
            return
        self.forgetting.seen(place.slurm_id)
        problem = self._records(job, place.records_offset)
        if status is not None or (run_dir / STARTED_FILE).exists():
            self._mark_running(job, place, SlurmJob(place.slurm_id, "", ""))
        job = self.store.get(job.id)
        if status is not None and status.ok and not problem:
            self.store.transition(
                job.id, Event.EXIT_OK, status.describe(), only_from=live,
                exit_code=0, ended_at=status.ended_at or time.time(),
            )  # fmt: skip
        elif status is not None:
            failure = runner.read_failure(run_dir)
            reason = status.describe() + (f": {failure}" if failure else "")
            self._fail(
                job, reason + (f"; {problem}" if problem else ""), {"exit_code": status.code}
            )
        elif job.state == QUEUED and not (run_dir / STARTED_FILE).exists():
            # Never started (its batch script leaves STARTED_FILE first): Slurm lost a pending
            # job (a controller that died before saving its state): hand it over again.
            placement_db.forget_submission(self.store, job.id)
            self.store.set_reason(
                job.id,
                f"Slurm lost its pending job {place.slurm_id} before it started (a controller"
                " restart loses jobs it had not saved); handing it over again",
            )
            return
        else:
            self._fail(
                job,
                f"lost: Slurm no longer knows job {place.slurm_id}, and neither its accounting"
                f" nor an exit status in {run_dir.name}/ says how it ended",
                {},
                lost=True,
            )
        placement_db.close_slurm(self.store, job.id)
        self._expect_usage(job.id)


if TYPE_CHECKING:

    def _conforms(executor: SlurmExecutor) -> Executor:
        """Where mypy checks that SlurmExecutor satisfies the Executor protocol."""
        return executor


def bind_executor(
    requests: Sequence[JobRequest],
    kind: str | None,
    home: Home,
    labels: Sequence[str] | None = None,
    group_caps: Mapping[str, int] | None = None,
) -> list[JobRequest]:
    """Requests bound to executor `kind` (None: `[executor] kind` of config.toml, else local),
    checked at submit when that is Slurm (`group_caps`: caps of groups the submission sets
    itself, a pipeline's sweeps). Raises SpecError naming the job or stage and field."""
    config = load_config(home.config)
    given = kind is not None
    kind = kind or config.executor.kind
    if kind not in EXECUTOR_KINDS:
        raise SpecError(f"--executor: expected one of {', '.join(EXECUTOR_KINDS)}, got {kind!r}")
    bound = [dataclasses.replace(r, executor=kind) for r in requests]
    chosen_by = (
        f"--executor {kind}"
        if given
        else f"this home's executor is {kind}: [executor] kind in config.toml"
    )
    refuse_slurm_options(bound, chosen_by, labels)
    check_requests(bound, home, config, where=labels, group_caps=group_caps)
    return bound


def refuse_slurm_options(
    requests: Sequence[JobRequest], chosen_by: str, labels: Sequence[str] | None = None
) -> None:
    """Refuse per-job Slurm options (`[slurm]` of a spec, `[stage.slurm]`, `--slurm KEY=VALUE`)
    on a job bound to another executor than Slurm: they would be dropped without a word.
    `chosen_by` says where the executor came from. Raises SpecError naming the job or stage,
    the keys and the executor."""
    unset = dataclasses.asdict(SlurmOptions())
    for index, request in enumerate(requests):
        keys = sorted(k for k, v in (request.slurm or {}).items() if unset.get(k, v) != v)
        if request.executor == "slurm" or not keys:
            continue  # an empty [slurm] table asks for nothing
        label = labels[index] if labels else f"job {request.name!r}"
        field = "--slurm" if label == "submit" else "key 'slurm'"
        raise SpecError(
            f"{label}: {field} ({', '.join(keys)}): per-job Slurm options, but the job runs on the"
            f" {request.executor} executor ({chosen_by}), where they would be ignored; run it on"
            " Slurm (--executor slurm) or leave them out"
        )
