"""User settings from $WORKBENCH_HOME/config.toml, with defaults that suit one GPU box."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.queue.requests import check_group
from workbench.queue.scheduler import Share
from workbench.queue.spec import SpecError, from_table
from workbench.units import INT64_MAX, parse_duration, parse_size
from workbench.userfiles import UserFileError, read_toml

if TYPE_CHECKING:
    from workbench.db.store import Store

QUOTAS_SETTING = "group_quotas"  # the store setting `workbench group NAME --quota G` writes


@dataclass(frozen=True)
class DaemonTable:
    """`[daemon]` in config.toml, as written by the user."""

    log_cap: str | int = "16MiB"
    kill_grace: str | float = "10s"
    sample_interval: str | float = "1s"
    default_parallel: int = 0
    history: str | float = "24h"
    containment: str = "auto"


CONTAINMENT_MODES = ("auto", "cgroup", "subreaper")


@dataclass(frozen=True)
class SubmitTable:
    """`[submit]` in config.toml: `snapshot` makes `--snapshot` the default of every command job;
    `snapshot_cap` is the most a snapshot may copy (a larger one is refused at submit)."""

    snapshot: bool = False
    snapshot_cap: str | int = "100MiB"


EXECUTOR_KINDS = ("local", "slurm")


@dataclass(frozen=True)
class ExecutorConfig:
    """`[executor]` in config.toml: where jobs run unless a job says otherwise (`--executor`).

    For `kind = "slurm"`: `partition` and `account` become `--partition`/`--account`, `extra` is a
    list of sbatch options added to every submission (e.g. `["--qos=normal"]`), `nice_base` is
    the `--nice` of a priority-0 job (priority P gets `nice_base - P`; Slurm refuses negative
    nice values from ordinary users), and `shared_paths` lists mount points known to be shared
    by every node (beyond the network filesystems recognised by type). `command_timeout_s`,
    `poll_min_s` and `poll_max_s` (seconds) set how long a Slurm command may take before it
    counts as no answer, and the bounds of the adaptive squeue interval. `suspend = true` says
    this cluster user may suspend jobs (a Slurm operator or administrator): `pause` of a running
    job is then `scontrol suspend`, `resume` is `scontrol resume` (README, "Running on a Slurm
    cluster")."""

    kind: str = "local"
    partition: str | None = None
    account: str | None = None
    extra: list[str] = field(default_factory=list)
    nice_base: int = 0
    shared_paths: list[str] = field(default_factory=list)
    command_timeout_s: float = 10.0  # a Slurm command slower than this is "no answer"
    poll_min_s: float = 1.0  # the shortest interval between two polls of squeue
    poll_max_s: float = 30.0  # the longest, reached while followed jobs run unchanged
    suspend: bool = False  # `pause` of a running job is `scontrol suspend` (an operator's right)


@dataclass(frozen=True)
class RetentionTable:
    """`[retention]` in config.toml: how long ended jobs are kept (e.g. "30d"; none: forever)."""

    jobs: str | float | None = None


@dataclass(frozen=True)
class SecurityTable:
    """`[security]` in config.toml: more words that mark an environment variable as secret
    (besides TOKEN, KEY, SECRET, PASSWORD and CREDENTIAL)."""

    secret_names: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SchedulerTable:
    """`[scheduler]` in config.toml: GPU memory policy and backfill."""

    start_grace: str | float = "60s"  # how long a new job's memory may show up unattributed
    default_runtime: str | float = "1h"  # assumed run time, for backfill, without a time limit
    strict: bool = False  # stop a job that uses more GPU memory than it reserved
    backfill_depth: int = 32  # waiting jobs that keep GPUs for themselves, per pass


@dataclass(frozen=True)
class TeamTable:
    """`[team]` in config.toml of a system home (team mode): the Unix group whose members see
    and act on every user's jobs (`workbench.daemon.rights`); none: nobody but root."""

    admin_group: str | None = None


@dataclass(frozen=True)
class GroupTable:
    """`[groups.NAME]` in config.toml: a group's guaranteed GPUs and its cap on running jobs."""

    quota: float = 0.0
    parallel: int = 0
    preemptible: bool = True  # false: its jobs are never preempted to give GPUs back
    weight: float = 1.0  # its part of the surplus, with `[shares] by = "group"`
    limit: float | None = None  # the most GPUs it may hold, with `[shares] by = "group"`


@dataclass(frozen=True)
class SharesTable:
    """`[shares]` in config.toml: whose shares the scheduler divides GPUs by ("user", with
    `[users.NAME]` tables, or "group", with `[groups.NAME]` quota/weight/limit), the usage
    ledger's half-life, how strongly past usage lowers an over-quota weight (`usage_k`), the
    minimum run time before a job may be preempted, and idle-GPU detection."""

    by: str = ""  # "" : by user when [users.*] tables exist, else shares are off
    half_life: str | float = "7d"
    usage_k: float = 1.0
    min_runtime: str | float = 0.0  # seconds, or a duration like "10m"
    idle_after: str | float = "30m"  # a GPU job at ~0% utilisation this long is flagged idle
    idle_percent: float = 2.0  # "about 0%": at or below this utilisation
    reclaim_idle: bool = False  # preempt an idle job over its share while others wait


@dataclass(frozen=True)
class UserTable:
    """`[users.NAME]` (or `[users.default]`, for users not named): a user's deserved GPUs and
    GPU memory, over-quota weight, limit of GPUs, and cap on running jobs (0: none)."""

    deserved_gpus: float = 0.0
    deserved_gpu_mem: str | int | None = None
    weight: float = 1.0
    limit: float | None = None
    max_running: int = 0


@dataclass(frozen=True)
class ShareConfig:
    """Shares as parsed: `by` is "user", "group" or "" (off); `shares` by account name,
    `default` for accounts not named; durations in seconds."""

    by: str = ""
    shares: Mapping[str, Share] = field(default_factory=dict)
    default: Share | None = None
    half_life_s: float = 7 * 86400.0
    usage_k: float = 1.0
    min_runtime_s: float = 0.0
    idle_after_s: float = 1800.0
    idle_percent: float = 2.0
    reclaim_idle: bool = False
    # `[departments.NAME]`: each department's share, and each member account's department.
    departments: Mapping[str, Share] = field(default_factory=dict)
    department_of: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DepartmentTable:
    """`[departments.NAME]`: a department (KAI-Scheduler's parent queue) whose `members` (users
    with `[shares] by = "user"`, groups with "group") share its deserved GPUs, over-quota
    weight and limit at the top level before each gets its own part (scheduler.fair_shares)."""

    members: list[str] = field(default_factory=list)
    deserved_gpus: float = 0.0
    weight: float = 1.0
    limit: float | None = None


@dataclass(frozen=True)
class Config:
    """Parsed settings. Durations in seconds, sizes in bytes; `group_quotas` maps a group to
    its guaranteed GPUs, `group_parallel` to its cap on running jobs, `not_preemptible` names
    the groups whose jobs opted out of preemption (all from `[groups.*]`)."""

    log_cap_bytes: int = 16 * 1024**2
    kill_grace_s: float = 10.0
    sample_interval_s: float = 1.0
    default_parallel: int = 0
    history_s: float = 86400.0
    retention_jobs_s: float | None = None  # ended jobs older than this are pruned (hourly)
    secret_words: tuple[str, ...] = ()
    start_grace_s: float = 60.0
    default_runtime_s: float = 3600.0
    strict: bool = False
    backfill_depth: int = 32
    group_quotas: Mapping[str, float] = field(default_factory=dict)
    group_parallel: Mapping[str, int] = field(default_factory=dict)
    not_preemptible: frozenset[str] = frozenset()
    containment: str = "auto"  # a cgroup v2 per job where possible, else a subreaper wrapper
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    snapshot: bool = False  # [submit] snapshot: every command job runs a frozen copy
    snapshot_cap_bytes: int = 100 * 1024**2  # [submit] snapshot_cap
    shares: ShareConfig = field(default_factory=ShareConfig)  # [shares], [users.*]
    admin_group: str | None = None  # [team] admin_group (system mode)


def load_config(path: Path) -> Config:
    """Read config.toml; a missing file means defaults, a bad one is an error naming the key."""
    if not os.path.lexists(path):
        return Config()
    try:
        data: dict[str, Any] = read_toml(path, regular_only=True)  # a FIFO must not hang us
    except UserFileError as error:
        raise SpecError(str(error)) from None
    known = {
        "daemon", "retention", "security", "sql", "lake", "executor", "scheduler", "groups",
        "submit", "shares", "users", "team", "departments",
    }  # fmt: skip
    for key in data:
        if key not in known:
            raise SpecError(f"{path}: unknown table '{key}'")
    # Imported here: the lake module (with hashlib's OpenSSL and uuid) costs some 20 ms, and
    # only reading a config file needs it (a home without one starts every command faster).
    from workbench.catalog.lake import parse_settings

    try:
        parse_settings(data, str(path))  # [sql] and [lake] belong to the lake, checked here too
    except ValueError as error:
        raise SpecError(str(error)) from error
    table = from_table(DaemonTable, data.get("daemon", {}), f"{path} [daemon]")
    if table.containment not in CONTAINMENT_MODES:
        raise SpecError(
            f"{path} [daemon]: key 'containment': must be one of {', '.join(CONTAINMENT_MODES)}"
        )
    executor = from_table(ExecutorConfig, data.get("executor", {}), f"{path} [executor]")
    if executor.kind not in EXECUTOR_KINDS:
        raise SpecError(
            f"{path} [executor]: key 'kind': expected one of {', '.join(EXECUTOR_KINDS)},"
            f" got {executor.kind!r}"
        )
    retention = from_table(RetentionTable, data.get("retention", {}), f"{path} [retention]")
    security = from_table(SecurityTable, data.get("security", {}), f"{path} [security]")
    sched = from_table(SchedulerTable, data.get("scheduler", {}), f"{path} [scheduler]")
    quotas, parallel, keep = _groups(path, data.get("groups", {}))
    submit = from_table(SubmitTable, data.get("submit", {}), f"{path} [submit]")
    team = from_table(TeamTable, data.get("team", {}), f"{path} [team]")
    try:
        snapshot_cap = parse_size(submit.snapshot_cap)
    except ValueError as error:
        raise SpecError(f"{path} [submit]: key 'snapshot_cap': {error}") from error
    fields: dict[str, Any] = {}
    for key, convert, value in (
        ("log_cap", parse_size, table.log_cap),
        ("kill_grace", parse_duration, table.kill_grace),
        ("sample_interval", parse_duration, table.sample_interval),
        ("history", parse_duration, table.history),
    ):
        try:
            fields[key] = convert(value)
        except ValueError as error:
            raise SpecError(f"{path} [daemon]: key '{key}': {error}") from error
    if table.default_parallel < 0:
        raise SpecError(f"{path} [daemon]: key 'default_parallel': must not be negative")
    retention_s = None
    if retention.jobs is not None:
        try:
            retention_s = parse_duration(retention.jobs)
        except ValueError as error:
            raise SpecError(f"{path} [retention]: key 'jobs': {error}") from error
    try:
        start_grace_s = parse_duration(sched.start_grace)
        default_runtime_s = parse_duration(sched.default_runtime)
    except ValueError as error:
        raise SpecError(f"{path} [scheduler]: {error}") from error
    if sched.backfill_depth < 0:
        raise SpecError(f"{path} [scheduler]: key 'backfill_depth': must not be negative")
    return Config(
        log_cap_bytes=fields["log_cap"],
        kill_grace_s=fields["kill_grace"],
        sample_interval_s=fields["sample_interval"],
        default_parallel=table.default_parallel,
        history_s=fields["history"],
        retention_jobs_s=retention_s,
        secret_words=tuple(w for w in security.secret_names if w),
        start_grace_s=start_grace_s,
        default_runtime_s=default_runtime_s,
        strict=sched.strict,
        backfill_depth=sched.backfill_depth,
        group_quotas=quotas,
        group_parallel=parallel,
        not_preemptible=frozenset(keep),
        containment=table.containment,
        executor=executor,
        snapshot=submit.snapshot,
        snapshot_cap_bytes=snapshot_cap,
        shares=_shares(path, data),
        admin_group=team.admin_group,
    )


def _groups(path: Path, raw: Any) -> tuple[dict[str, float], dict[str, int], set[str]]:
    """`[groups.NAME]` tables -> ({group: quota}, {group: parallel}, {groups not preemptible});
    bad values name the file, group and key."""
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: 'groups' must be tables like [groups.vision]")
    quotas: dict[str, float] = {}
    parallel: dict[str, int] = {}
    keep: set[str] = set()
    for name, values in raw.items():
        where = f"{path} [groups.{name}]"
        check_group(name, f"{path} [groups]")
        if not isinstance(values, dict):
            raise SpecError(f"{where}: expected a table, got {values!r}")
        group = from_table(GroupTable, values, where)
        check_quota(group.quota, f"{where}: key 'quota'")
        if group.parallel < 0:
            raise SpecError(f"{where}: key 'parallel': must be 0 (no limit) or more")
        if "quota" in values:
            quotas[name] = group.quota
        if "parallel" in values:
            parallel[name] = group.parallel
        if not group.preemptible:
            keep.add(name)
    return quotas, parallel, keep


def _shares(path: Path, data: Mapping[str, Any]) -> ShareConfig:
    """`[shares]`, `[users.NAME]` and the groups' weights and limits -> ShareConfig; bad values
    name the file, table and key (SpecError)."""
    table = from_table(SharesTable, data.get("shares", {}), f"{path} [shares]")
    where = f"{path} [shares]"
    times: dict[str, float] = {}
    for key, value in (
        ("half_life", table.half_life),
        ("min_runtime", table.min_runtime),
        ("idle_after", table.idle_after),
    ):
        try:
            zero = isinstance(value, int | float) and value == 0 and key == "min_runtime"
            times[key] = 0.0 if zero else parse_duration(value)
        except ValueError as error:
            raise SpecError(f"{where}: key '{key}': {error}") from error
    if times["half_life"] <= 0:
        raise SpecError(f"{where}: key 'half_life': must be more than 0")
    if table.usage_k < 0 or not math.isfinite(table.usage_k):
        raise SpecError(f"{where}: key 'usage_k': must be 0 or more, got {table.usage_k!r}")
    raw_users = data.get("users", {})
    if not isinstance(raw_users, dict):
        raise SpecError(f"{path}: 'users' must be tables like [users.alice]")
    by = table.by or ("user" if raw_users else "")
    if by not in ("", "user", "group"):
        raise SpecError(f'{where}: key \'by\': must be "user" or "group", got {by!r}')
    shares: dict[str, Share] = {}
    default: Share | None = None
    if by == "user":
        for name, values in raw_users.items():
            share = _user_share(f"{path} [users.{name}]", values)
            if name == "default":
                default = share
            else:
                shares[name] = share
        default = default or Share()
    elif by == "group":
        raw_groups = data.get("groups", {})
        for name, values in raw_groups.items():
            group = from_table(GroupTable, values, f"{path} [groups.{name}]")
            _check_share(f"{path} [groups.{name}]", group.weight, group.limit)
            shares[name] = Share(group.quota, group.weight, group.limit)
        default = Share()
    if not 0 <= table.idle_percent <= 100:
        raise SpecError(f"{where}: key 'idle_percent': must be 0 to 100")
    departments, department_of = _departments(path, data, by, shares)
    return ShareConfig(
        departments=departments,
        department_of=department_of,
        by=by,
        shares=shares,
        default=default,
        half_life_s=times["half_life"],
        usage_k=table.usage_k,
        min_runtime_s=times["min_runtime"],
        idle_after_s=times["idle_after"],
        idle_percent=table.idle_percent,
        reclaim_idle=table.reclaim_idle,
    )


#: A department's name (shown in reasons and reports, a key beside account names).
DEPARTMENT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def _departments(
    path: Path, data: Mapping[str, Any], by: str, shares: Mapping[str, Share]
) -> tuple[dict[str, Share], dict[str, str]]:
    """`[departments.NAME]` tables -> (department -> Share, member -> department). A member
    in two departments, a department named like an account with its own share, or departments
    with shares off are refused (SpecError naming the file, table and key)."""
    raw = data.get("departments", {})
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: 'departments' must be tables like [departments.vision]")
    if raw and not by:
        raise SpecError(
            f"{path} [departments]: departments divide shares: set [shares] by, or add"
            " [users.NAME] tables"
        )
    departments: dict[str, Share] = {}
    department_of: dict[str, str] = {}
    for name, values in raw.items():
        where = f"{path} [departments.{name}]"
        if not DEPARTMENT_NAME.match(name):
            raise SpecError(
                f"{path} [departments]: department name {name!r}: letters, digits, '_', '.'"
                " and '-' only"
            )
        if not isinstance(values, dict):
            raise SpecError(f"{where}: expected a table, got {values!r}")
        table = from_table(DepartmentTable, values, where)
        check_quota(table.deserved_gpus, f"{where}: key 'deserved_gpus'")
        _check_share(where, table.weight, table.limit)
        if name in shares:
            raise SpecError(f"{where}: {name!r} is also an account with its own share")
        if not table.members or not all(isinstance(m, str) and m for m in table.members):
            raise SpecError(f"{where}: key 'members': a list of {by} names")
        for member in table.members:
            if member in raw:
                raise SpecError(f"{where}: key 'members': {member!r} names a department")
            if department_of.get(member) == name:
                raise SpecError(f"{where}: key 'members': {member!r} is listed twice")
            if member in department_of:
                raise SpecError(
                    f"{where}: key 'members': {member!r} is in [departments."
                    f"{department_of[member]}] already (one department each)"
                )
            department_of[member] = name
        departments[name] = Share(table.deserved_gpus, table.weight, table.limit)
    return departments, department_of


def _check_share(where: str, weight: float, limit: float | None) -> None:
    if weight < 0 or not math.isfinite(weight):
        raise SpecError(f"{where}: key 'weight': must be 0 or more, got {weight!r}")
    if limit is not None and (limit < 0 or not math.isfinite(limit)):
        raise SpecError(f"{where}: key 'limit': must be 0 or more GPUs, got {limit!r}")


def _user_share(where: str, values: Any) -> Share:
    """One `[users.NAME]` table as a Share (SpecError naming `where` and the key)."""
    if not isinstance(values, dict):
        raise SpecError(f"{where}: expected a table, got {values!r}")
    user = from_table(UserTable, values, where)
    check_quota(user.deserved_gpus, f"{where}: key 'deserved_gpus'")
    _check_share(where, user.weight, user.limit)
    if user.max_running < 0:
        raise SpecError(f"{where}: key 'max_running': must be 0 (no cap) or more")
    mem = None
    if user.deserved_gpu_mem is not None:
        try:
            mem = parse_size(user.deserved_gpu_mem)
        except ValueError as error:
            raise SpecError(f"{where}: key 'deserved_gpu_mem': {error}") from error
    return Share(user.deserved_gpus, user.weight, user.limit, user.max_running, mem)


def check_quota(quota: float, where: str) -> None:
    """A quota is a whole number of GPUs or a fraction of one, never negative, within 64 bits
    (as config.toml's numbers are). Raises SpecError naming `where`."""
    if quota < 0 or not math.isfinite(quota):
        raise SpecError(f"{where}: must be 0 or more GPUs, got {quota:g}")
    if quota > INT64_MAX:
        raise SpecError(f"{where}: must be at most {INT64_MAX} GPUs, got {quota:g}")
    if quota > 1 and quota != int(quota):
        raise SpecError(f"{where}: above 1 it must be a whole number of GPUs, got {quota:g}")


def group_quotas(config: Config, store: Store) -> dict[str, float]:
    """Each group's guaranteed GPUs: config.toml's `[groups.NAME] quota`, overridden by
    `workbench group NAME --quota G` (kept in the store)."""
    quotas = dict(config.group_quotas)
    quotas.update(stored_quotas(store))
    return quotas


def stored_quotas(store: Store) -> dict[str, float]:
    """The quotas set with `workbench group NAME --quota G`."""
    raw = store.get_setting(QUOTAS_SETTING)
    if not raw:
        return {}
    return {str(k): float(v) for k, v in json.loads(raw).items()}


def set_stored_quota(store: Store, group: str, quota: float) -> None:
    """Record a group's quota from the command line (0 removes the guarantee), in one
    transaction with the others' (set at the same time, none is lost)."""
    from workbench.db.scheduling import set_json_entry

    set_json_entry(store, QUOTAS_SETTING, group, quota)
