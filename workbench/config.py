"""User settings from $WORKBENCH_HOME/config.toml, with defaults that suit one GPU box."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.catalog.lake import parse_settings
from workbench.queue.spec import SpecError, from_table
from workbench.units import parse_duration, parse_size
from workbench.userfiles import UserFileError, read_toml


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


EXECUTOR_KINDS = ("local", "slurm")


@dataclass(frozen=True)
class ExecutorConfig:
    """`[executor]` in config.toml: where jobs run unless a job says otherwise (`--executor`).

    For `kind = "slurm"`: `partition` and `account` become `--partition`/`--account`, `extra` is a
    list of sbatch options added to every submission (e.g. `["--qos=normal"]`), `nice_base` is
    the `--nice` of a priority-0 job (priority P gets `nice_base - P`; Slurm refuses negative
    nice values from ordinary users), and `shared_paths` lists mount points known to be shared
    by every node (beyond the network filesystems recognised by type)."""

    kind: str = "local"
    partition: str | None = None
    account: str | None = None
    extra: list[str] = field(default_factory=list)
    nice_base: int = 0
    shared_paths: list[str] = field(default_factory=list)


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
class Config:
    """Parsed settings."""

    log_cap_bytes: int = 16 * 1024**2
    kill_grace_s: float = 10.0
    sample_interval_s: float = 1.0
    default_parallel: int = 0
    history_s: float = 86400.0
    retention_jobs_s: float | None = None  # ended jobs older than this are pruned (hourly)
    secret_words: tuple[str, ...] = ()
    containment: str = "auto"  # a cgroup v2 per job where possible, else a subreaper wrapper
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)


def load_config(path: Path) -> Config:
    """Read config.toml; a missing file means defaults, a bad one is an error naming the key."""
    if not path.exists():
        return Config()
    try:
        data: dict[str, Any] = read_toml(path)
    except UserFileError as error:
        raise SpecError(str(error)) from None
    known = {"daemon", "retention", "security", "sql", "lake", "executor"}
    for key in data:
        if key not in known:
            raise SpecError(f"{path}: unknown table '{key}'")
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
    return Config(
        log_cap_bytes=fields["log_cap"],
        kill_grace_s=fields["kill_grace"],
        sample_interval_s=fields["sample_interval"],
        default_parallel=table.default_parallel,
        history_s=fields["history"],
        retention_jobs_s=retention_s,
        secret_words=tuple(w for w in security.secret_names if w),
        containment=table.containment,
        executor=executor,
    )
