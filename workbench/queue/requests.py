"""Turning a spec table (a pipeline stage, a spec file, CLI flags) into a validated JobRequest."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from workbench.db.store import JobRequest
from workbench.jobmodel.resources import Resources, parse_gpus
from workbench.jobmodel.retry import MAX_RETRIES
from workbench.jobmodel.secrets import hold_credentials, hold_named
from workbench.queue.kinds import kind_defaults, load_kind, validate_spec
from workbench.queue.spec import (
    SpecError,
    check_env_name,
    check_environment,
    check_exec_strings,
    check_keys,
    from_table,
    to_table,
)
from workbench.units import parse_duration, parse_size

# sbatch options the executor sets itself, so a job's `slurm.extra` may not.
RESERVED_SBATCH = (
    "--output", "--error", "--chdir", "--job-name", "--export", "--parsable", "--comment",
    "--array", "--dependency", "--wrap", "--test-only", "--wait", "-o", "-e", "-D", "-J", "-a",
    "-d",
)  # fmt: skip
SLURM_WORD = re.compile(r"[A-Za-z0-9_.,:\[\]@%+=/-]+")


@dataclass(frozen=True)
class SlurmOptions:
    """`[slurm]` of a job or stage (`--slurm KEY=VALUE` on the command line): per-job sbatch
    options for the Slurm executor, over `[executor]`'s. `nodes` and `ntasks_per_node` above 1
    launch the job with `srun` (one task per node and slot); `exclusive` asks for whole nodes;
    `extra` is a list of further sbatch options (`--mail-type=END`)."""

    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    constraint: str | None = None
    nodelist: str | None = None
    exclude: str | None = None
    exclusive: bool = False
    nodes: int = 1
    ntasks_per_node: int = 1
    extra: list[str] = field(default_factory=list)

    def check(self, where: str) -> None:
        """Raise SpecError naming `where` and the key for a value sbatch would refuse or
        misread (a word with spaces, a count below 1, an extra option we set ourselves)."""
        for key in ("partition", "qos", "account", "constraint", "nodelist", "exclude"):
            value = getattr(self, key)
            if value is not None and not SLURM_WORD.fullmatch(value):
                raise SpecError(
                    f"{where}: key 'slurm.{key}': {value!r} is not a Slurm name or list"
                    " (letters, digits and _.,:[]@%+=/- only)"
                )
        for key in ("nodes", "ntasks_per_node"):
            if not 1 <= getattr(self, key) <= 100_000:
                raise SpecError(f"{where}: key 'slurm.{key}': must be between 1 and 100000")
        for index, option in enumerate(self.extra):
            name = option.split("=", 1)[0]
            if not option.startswith("-") or any(c.isspace() for c in name):
                raise SpecError(
                    f"{where}: key 'slurm.extra'[{index}]: expected an sbatch option such as"
                    f" --mail-type=END, got {option!r}"
                )
            if name in RESERVED_SBATCH:
                raise SpecError(
                    f"{where}: key 'slurm.extra'[{index}]: {name} is set by the workbench itself"
                )


@dataclass(frozen=True)
class Options:
    """Keys every job takes, whatever its kind (resources, queue placement, retries)."""

    kind: str
    name: str | None = None
    gpus: float | str = 0.0  # a count, a fraction below 1, or a MIG profile ("1g.10gb")
    gpu_mem: str | int | None = None
    cpus: float | None = None
    mem: str | int | None = None
    priority: int = 0
    group: str = "default"
    retries: int = 0
    time_limit: str | float | None = None
    preemptible: bool | None = None  # None: the kind's default; a command job if checkpointable
    slurm: SlurmOptions | None = None  # per-job sbatch options (the Slurm executor only)
    # Variables of the submitter's environment held out of the store (`--secret-env NAME`):
    # handed to the job through the daemon's memory (workbench.daemon.credentials).
    secret_env: list[str] = field(default_factory=list)


T = TypeVar("T")

OPTION_KEYS = frozenset(f.name for f in fields(Options))


def _check_number(value: float, key: str, where: str, allow_fraction: bool = True) -> None:
    if value < 0:
        raise SpecError(f"{where}: key '{key}': must not be negative")
    if key == "gpus" and value > 1 and value != int(value):
        raise SpecError(f"{where}: key 'gpus': above 1 it must be a whole number, got {value:g}")


MIN_GPU_MEM_BYTES = 1024**2  # below this a GPU memory reservation is a unit left out


MAX_GROUP_NAME = 128


def check_group(name: str, where: str) -> str:
    """A group name as given (`--group`, `group = ...`, `workbench group NAME`, `[groups.NAME]`):
    1 to 128 printable characters, not starting or ending with a space (it is shown in listings
    and wait reasons, and " vision" would be another group than "vision"). Raises SpecError
    naming `where`."""
    if not name or not name.strip():
        raise SpecError(f"{where}: a group needs a name, got {name!r}")
    if len(name) > MAX_GROUP_NAME:
        raise SpecError(f"{where}: a group name has at most {MAX_GROUP_NAME} characters")
    if not name.isprintable() or name != name.strip():
        raise SpecError(
            f"{where}: a group name must be printable, without spaces around it, got {name!r}"
        )
    return name


def _parsed(parse: Callable[[Any], T], value: Any, key: str, where: str) -> T | None:
    """`parse(value)` (None stays None); a bad value is a SpecError naming the key."""
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as error:
        raise SpecError(f"{where}: key '{key}': {error}") from None


def build_request(
    table: dict[str, Any],
    base_dir: Path,
    where: str,
    env: dict[str, str] | None = None,
    ignore: tuple[str, ...] = (),
    **extra: Any,
) -> JobRequest:
    """Validate one job's table (common keys + its kind's keys) into a request to submit.

    `ignore` names keys the caller handles itself (a pipeline's `after`).
    """
    if "kind" not in table:
        raise SpecError(f"{where}: missing key 'kind'")
    check_exec_strings(table, where)  # before any of them reaches a path or exec
    if env is not None:
        check_environment(env, f"{where}: the environment")
    module = load_kind(table["kind"], where) if isinstance(table["kind"], str) else None
    if module is not None:
        spec_keys = [f.name for f in fields(module.Spec)]
        check_keys(table, [*OPTION_KEYS, *spec_keys, *ignore], where)
    common = {k: v for k, v in table.items() if k in OPTION_KEYS}
    rest = {k: v for k, v in table.items() if k not in OPTION_KEYS and k not in ignore}
    options = from_table(Options, common, where)
    # Before anything reads the spec (its errors would show a password in a source URL).
    captured_env = dict(os.environ if env is None else env)
    rest, captured_env, credentials = hold_credentials(options.kind, rest, captured_env)
    check_group(options.group, f"{where}: key 'group'")
    if options.slurm is not None:
        options.slurm.check(where)
        extra = {**extra, "slurm": to_table(options.slurm)}
    spec = validate_spec(options.kind, rest, base_dir, where)
    if "stage" not in extra:  # a pipeline checks its stages together (datasets stages write)
        from workbench.paths import Home
        from workbench.queue.catalogcheck import check_refs, refs_of

        check_refs(Home.current(), refs_of(options.kind, spec), where)
    defaults = kind_defaults(options.kind)
    gpus, mig_profile = _parsed(parse_gpus, options.gpus, "gpus", where) or (0.0, None)
    gpu_mem = _parsed(parse_size, options.gpu_mem, "gpu_mem", where)
    if gpu_mem and gpu_mem < MIN_GPU_MEM_BYTES:
        # A number without a unit is bytes: `--gpu-mem 8` would cap the job at 8 bytes (a train
        # job's memory fraction, a command job's WORKBENCH_GPU_MEM_BYTES).
        raise SpecError(
            f"{where}: key 'gpu_mem': {gpu_mem} bytes is less than 1 MiB, too little for a GPU"
            " job; give a unit, e.g. 8GiB"
        )
    if gpu_mem and not gpus and mig_profile is None:
        # A reservation of GPU memory for a job that asks for no GPU would be dropped: it runs
        # on the CPU, and nothing says the GPU memory asked for was never reserved.
        raise SpecError(
            f"{where}: key 'gpu_mem': GPU memory for a job that asks for no GPU; add gpus"
            " (a count, a share such as 0.5, or a MIG profile)"
        )
    mem = _parsed(parse_size, options.mem, "mem", where)
    time_limit = _parsed(parse_duration, options.time_limit, "time_limit", where)
    warn = spec.get("signal_before")
    if isinstance(warn, int | float) and (time_limit is None or warn >= time_limit):
        # A warning before a limit there is not, or that would come before the job starts.
        raise SpecError(
            f"{where}: key 'signal_before': a warning {warn:g} s before the time limit needs a"
            " longer time limit (time_limit, --time-limit)"
        )
    cpus = options.cpus if options.cpus is not None else float(defaults.get("cpus", 0))
    _check_number(cpus, "cpus", where)
    if options.retries < 0:
        raise SpecError(f"{where}: key 'retries': must not be negative")
    if options.retries > MAX_RETRIES:
        raise SpecError(
            f"{where}: key 'retries': at most {MAX_RETRIES} automatic retries"
            f" (got {options.retries})"
        )
    cwd = str(base_dir)
    argv = None
    if options.kind == "command":
        argv = list(spec["argv"])
        cwd = spec.get("cwd") or cwd
        if not os.path.isdir(cwd):
            problem = "is not a directory" if os.path.exists(cwd) else "no such directory"
            raise SpecError(f"{where}: key 'cwd': {cwd}: {problem}")
        captured_env.update(spec.get("env") or {})
    if options.secret_env:
        for name in options.secret_env:
            check_env_name(name, f"{where}: key 'secret_env'")
        captured_env, credentials, missing = hold_named(
            captured_env, options.secret_env, credentials
        )
        if missing:
            raise SpecError(
                f"{where}: key 'secret_env' (--secret-env): {', '.join(missing)} not in the"
                " environment; export it, or give it with --env"
            )
    name = options.name or extra.get("stage") or _default_name(options.kind, spec)
    return JobRequest(
        name=name,
        kind=options.kind,
        spec=spec,
        cwd=cwd,
        env=captured_env,
        argv=argv,
        priority=options.priority,
        group=options.group,
        resources=Resources(
            gpus=gpus, gpu_mem=gpu_mem, cpus=cpus, mem=mem, mig_profile=mig_profile
        ),
        retries=options.retries,
        time_limit=time_limit,
        preemptible=_preemptible(options, spec, defaults),
        credentials=credentials,
        **extra,
    )


def _preemptible(options: Options, spec: dict[str, Any], defaults: dict[str, Any]) -> bool:
    """Whether GPU pooling may preempt the job: as `preemptible` says; unsaid, as its kind's
    `DEFAULTS` say (a `serve` job is not), every other job of a built-in kind (train checkpoints
    and resumes), and a command job only when it says it is `checkpointable` (else a
    preemption would lose its work)."""
    if options.preemptible is not None:
        return options.preemptible
    if "preemptible" in defaults:
        return bool(defaults["preemptible"])
    return bool(spec.get("checkpointable")) if options.kind == "command" else True


def _default_name(kind: str, spec: dict[str, Any]) -> str:
    if kind == "command":
        return " ".join(str(a) for a in spec["argv"])[:60]
    for key in ("dataset", "model"):
        if isinstance(spec.get(key), str):
            return f"{kind} {spec[key]}"
    return kind
