"""User settings from $WORKBENCH_HOME/config.toml, with defaults that suit one GPU box."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.catalog.lake import parse_settings
from workbench.queue.spec import SpecError, from_table
from workbench.units import parse_duration, parse_size


@dataclass(frozen=True)
class DaemonTable:
    """`[daemon]` in config.toml, as written by the user."""

    log_cap: str | int = "16MiB"
    kill_grace: str | float = "10s"
    sample_interval: str | float = "1s"
    default_parallel: int = 0
    history: str | float = "24h"


@dataclass(frozen=True)
class Config:
    """Parsed settings."""

    log_cap_bytes: int = 16 * 1024**2
    kill_grace_s: float = 10.0
    sample_interval_s: float = 1.0
    default_parallel: int = 0
    history_s: float = 86400.0


def load_config(path: Path) -> Config:
    """Read config.toml; a missing file means defaults, a bad one is an error naming the key."""
    if not path.exists():
        return Config()
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path}: {error}") from error
    known = {"daemon", "sql", "lake"}
    for key in data:
        if key not in known:
            raise SpecError(f"{path}: unknown table '{key}'")
    try:
        parse_settings(data, str(path))  # [sql] and [lake] belong to the lake, checked here too
    except ValueError as error:
        raise SpecError(str(error)) from error
    table = from_table(DaemonTable, data.get("daemon", {}), f"{path} [daemon]")
    try:
        return Config(
            log_cap_bytes=parse_size(table.log_cap),
            kill_grace_s=parse_duration(table.kill_grace),
            sample_interval_s=parse_duration(table.sample_interval),
            default_parallel=table.default_parallel,
            history_s=parse_duration(table.history),
        )
    except ValueError as error:
        raise SpecError(f"{path} [daemon]: {error}") from error
