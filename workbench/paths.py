"""Where state lives: WORKBENCH_HOME and the files and folders inside it."""

from __future__ import annotations

import os
import stat
import sys
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
        """Create the home (mode 0700) and its folders if missing.

        An existing home keeps its mode (a shared folder must not lose its permissions); if
        group or others can read it, a warning goes to stderr once per process."""
        try:
            self.root.mkdir(parents=True, mode=0o700)
        except FileExistsError:
            if not self.root.is_dir():
                raise NotADirectoryError(f"WORKBENCH_HOME {self.root} is not a directory") from None
            _warn_if_readable(self.root)
        self.lake.mkdir(exist_ok=True)
        self.runs.mkdir(exist_ok=True)
        return self


_warned: set[Path] = set()


def _warn_if_readable(root: Path) -> None:
    mode = root.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH) and root not in _warned:
        _warned.add(root)
        print(
            f"workbench: warning: WORKBENCH_HOME {root} is readable by other users"
            f" (mode {stat.S_IMODE(mode):o}); job environments and logs inside may hold secrets"
            f" (chmod 700 {root} to keep them private)",
            file=sys.stderr,
        )
