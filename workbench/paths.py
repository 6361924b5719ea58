"""Where state lives: WORKBENCH_HOME and the files and folders inside it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def home_dir() -> Path:
    """$WORKBENCH_HOME, else $XDG_DATA_HOME/workbench, else ~/.local/share/workbench."""
    explicit = os.environ.get("WORKBENCH_HOME")
    if explicit:
        return Path(explicit).expanduser().resolve()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return (base / "workbench").resolve()


@dataclass(frozen=True)
class Home:
    """The layout of one workbench home folder."""

    root: Path

    @classmethod
    def current(cls) -> Home:
        return cls(home_dir())

    @property
    def state_db(self) -> Path:
        return self.root / "state.db"

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def socket(self) -> Path:
        return self.root / "daemon.sock"

    @property
    def lock(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def daemon_log(self) -> Path:
        return self.root / "daemon.log"

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    def run_dir(self, job_id: int) -> Path:
        return self.runs / str(job_id)

    def ensure(self) -> Home:
        """Create the home (mode 0700) and its folders if missing."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        self.lake.mkdir(exist_ok=True)
        self.runs.mkdir(exist_ok=True)
        return self
