"""Where state lives: WORKBENCH_HOME and the files and folders inside it."""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def home_dir() -> Path:
    """$WORKBENCH_HOME, else $XDG_DATA_HOME/workbench, else ~/.local/share/workbench."""
    explicit = os.environ.get("WORKBENCH_HOME")
    if explicit:
        return Path(explicit).expanduser().resolve()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return (base / "workbench").resolve()


EXAMPLE_CONFIG = """\
# gpu-workbench settings. Every line is commented out: the defaults apply. Uncomment and change
# what you need; the daemon reads this file again when it changes (README: config.toml).
#
# [daemon]
# log_cap = "16MiB"        # per job log
# kill_grace = "10s"       # SIGTERM -> SIGKILL
# sample_interval = "1s"   # telemetry sampling
# history = "24h"          # telemetry kept at full resolution
# default_parallel = 0     # jobs per group at once when the group has no limit (0: resources only)
# containment = "auto"     # "cgroup" (a cgroup v2 per job where possible), "subreaper", or auto

# [scheduler]
# start_grace = "60s"      # a new job's memory may show up unattributed this long
# default_runtime = "1h"   # run time assumed for backfill when a job has no time limit
# strict = false           # stop a job that uses more GPU memory than it reserved
# backfill_depth = 32      # waiting jobs per pass that keep GPUs for themselves

# [groups.vision]          # one table per group
# quota = 2                # GPUs guaranteed (workbench group NAME --quota G overrides it)
# parallel = 0             # jobs running at once (0: no limit)
# preemptible = true       # false: never preempted to give GPUs back

# [retention]
# jobs = "30d"             # ended jobs older than this are pruned hourly (default: kept)

# [security]
# secret_names = ["DSN"]   # more words that mark an environment variable as secret

# [sql]                    # workbench sql and the Data screen
# timeout = "5m"           # statement time limit
# memory_limit = "8GiB"    # default: a quarter of the machine's memory, at least 1 GiB
# spill_limit = "10GiB"    # spill files, in $WORKBENCH_HOME/tmp/duckdb
# threads = 0              # 0: every core

# [lake]
# keep_versions = 0        # newest versions kept per dataset after each ingest (0: all)
# keep_for = "30d"         # older versions are removed (leave out: never)
"""


class Home:
    """The layout of one workbench home folder (an immutable value: equal homes have equal
    roots). A plain class, not a dataclass: `workbench submit`'s quick path imports this module,
    and the dataclasses module alone costs a third of a bare interpreter's start-up."""

    __slots__ = ("root",)
    root: Path

    def __init__(self, root: Path):
        object.__setattr__(self, "root", root)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Home is immutable (cannot set {name})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Home) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def __repr__(self) -> str:
        return f"Home(root={self.root!r})"

    def __reduce__(self) -> tuple[type[Home], tuple[Path]]:
        return (Home, (self.root,))

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
    def intake_socket(self) -> Path:
        """Where a running daemon takes submissions (`workbench.daemon.link`)."""
        return self.root / "intake.sock"

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
        """Create the home (mode 0700) and its folders if missing; a new home gets an example
        `config.toml`, every line commented out (`EXAMPLE_CONFIG`).

        A home that is not this user's alone is refused first (`workbench.trust.check_home`:
        raises UntrustedHome, exit 3). An existing home keeps its mode; if group or others can
        read it, a warning goes to stderr once per process."""
        from workbench.trust import check_home

        check_home(self.root)
        try:
            self.root.mkdir(parents=True, mode=0o700)
            try:
                with open(self.config, "x", encoding="utf-8") as handle:
                    handle.write(EXAMPLE_CONFIG)
            except OSError:
                pass  # an example only: a home without it works the same
        except FileExistsError:
            if not self.root.is_dir():
                raise NotADirectoryError(
                    errno.ENOTDIR, "WORKBENCH_HOME is not a directory", str(self.root)
                ) from None
            _warn_if_readable(self.root)
        from workbench.safefs import make_dir

        make_dir(self.lake)
        make_dir(self.runs)
        return self

    def owns(self, path: str | os.PathLike[str] | None) -> bool:
        """True if `path` is this home, inside it, or a folder on the way to it (an error about
        such a path is about WORKBENCH_HOME, not about the user's own files)."""
        if path is None:
            return False
        try:
            target = Path(os.fsdecode(path)).absolute()
        except (TypeError, ValueError):
            return False
        return target == self.root or self.root in target.parents or target in self.root.parents


# The umask the user had before the workbench made its own files private (octal text). Clients
# set it once; the daemon inherits it; a job gets it back (Slurm passes SLURM_UMASK alike).
USER_UMASK_ENV = "WORKBENCH_UMASK"


def make_files_private() -> None:
    """Set the process umask to 0o077, so every file and folder the workbench creates under
    WORKBENCH_HOME (state backups, logs, run folders, the lake) is readable by its owner only,
    even in a shared 1777 home. The previous umask is kept in $WORKBENCH_UMASK (set once: the
    user's own, not a workbench process's) for `job_umask`."""
    previous = os.umask(0o077)
    os.environ.setdefault(USER_UMASK_ENV, f"{previous:03o}")


def job_umask(env: dict[str, str]) -> int:
    """The umask a job runs with: the submitter's (from `env[WORKBENCH_UMASK]`), else 0o022;
    a job's own output files keep the modes the user expects."""
    try:
        value = int(env.get(USER_UMASK_ENV, "022"), 8)
    except ValueError:
        return 0o022
    return value if 0 <= value <= 0o777 else 0o022


_warned: set[Path] = set()


def _warn_if_readable(root: Path) -> None:
    mode = root.stat().st_mode
    if os.path.lexists(root / "system"):
        return  # a system home (team mode) is traversable on purpose; its files are private
    if mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH) and root not in _warned:
        _warned.add(root)
        print(
            f"workbench: warning: WORKBENCH_HOME {root} is readable by other users"
            f" (mode {stat.S_IMODE(mode):o}); job environments and logs inside may hold secrets"
            f" (chmod 700 {root} to keep them private)",
            file=sys.stderr,
        )


@contextmanager
def users_umask() -> Iterator[None]:
    """Within the block, files are created with the user's own umask (for what a command writes
    for the user outside WORKBENCH_HOME, such as `sql --out FILE`), not the workbench's 0o077."""
    previous = os.umask(job_umask(dict(os.environ)))
    try:
        yield
    finally:
        os.umask(previous)
