"""Run-as, the only privileged step of a job in system mode (team mode): the root launcher's
forked wrapper makes the job's run folder, hands it to the owner, then becomes the owner (primary
and supplementary groups, then uid) before it opens anything else. Everything after it (the log,
the wrapper record, the job, exit.json) is done by a process that already runs as the owner.

Also what the root daemon keeps out of its own environment (`clean_environment`): the loader's
and Python's variables, which would let whoever set them run code as root. A job gets its own
environment back (the one its owner submitted), as its owner.

Standard library only; `python -m workbench.daemon.runas UID -- ARGV...` does the switch and
execs ARGV, for a tool that starts a command as a job's owner outside the wrapper."""

from __future__ import annotations

import os
import pwd
import stat
import sys
from pathlib import Path

from workbench import safefs

#: Environment variable prefixes a root process never runs with: the dynamic loader's
#: (`LD_PRELOAD`, `LD_LIBRARY_PATH`, ld.so(8)) and Python's (`PYTHONPATH`, `PYTHONSTARTUP`,
#: `PYTHONINSPECT`..., python(1)), each of which runs code of the setter's choosing.
UNSAFE_PREFIXES = ("LD_", "PYTHON")


class RunAsError(OSError):
    """The owner of a job cannot be switched to (no such user, or the switch failed)."""


def clean_environment(env: dict[str, str]) -> dict[str, str]:
    """`env` without the variables named by `UNSAFE_PREFIXES` (a copy)."""
    return {k: v for k, v in env.items() if not k.startswith(UNSAFE_PREFIXES)}


def scrub_own_environment() -> int:
    """Remove `UNSAFE_PREFIXES` variables from this process's environment (the system daemon
    at its start: the launcher and wrappers it forks inherit it); returns how many."""
    unsafe = [k for k in os.environ if k.startswith(UNSAFE_PREFIXES)]
    for name in unsafe:
        del os.environ[name]
    return len(unsafe)


def give_run_dir(run_dir: Path, uid: int, gid: int) -> None:
    """As root: make `run_dir` a real folder (a link or file there is removed, never followed:
    `safefs.make_dir`) owned by `uid`:`gid`, mode 0700. Its parent must be root's own (the
    system home's `runs`, where no user can plant anything). Raises OSError."""
    safefs.make_dir(run_dir, 0o700)
    fd = safefs.open_dir(run_dir)
    try:
        info = os.fstat(fd)
        if not stat.S_ISDIR(info.st_mode):  # pragma: no cover - open_dir refuses it first
            raise RunAsError(f"{run_dir} is not a folder")
        os.fchown(fd, uid, gid)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def become(uid: int) -> None:
    """Switch this process to user `uid` for good: its supplementary groups (`initgroups`, from
    the user database), its primary group, then its uid (real, effective and saved), in that
    order (setuid last: after it no group can be set). Raises RunAsError when `uid` names no
    user or a step fails; also when the switch did not take (setuid(2) can fail silently
    only under odd capabilities, so the result is checked)."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise RunAsError(f"uid {uid} names no user on this machine") from None
    try:
        os.initgroups(entry.pw_name, entry.pw_gid)
        os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
        os.setresuid(uid, uid, uid)
    except OSError as error:
        raise RunAsError(f"cannot switch to {entry.pw_name} (uid {uid}): {error}") from None
    if os.getresuid() != (uid, uid, uid) or (uid != 0 and _can_regain_root()):
        raise RunAsError(f"switching to uid {uid} did not take")


def _can_regain_root() -> bool:
    try:
        os.setuid(0)
    except OSError:
        return False
    return True


def user_gid(uid: int) -> int:
    """The primary group of user `uid`. Raises RunAsError for an unknown uid."""
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        raise RunAsError(f"uid {uid} names no user on this machine") from None


def main(argv: list[str]) -> int:
    """`python -m workbench.daemon.runas UID -- ARGV...`: become UID, exec ARGV with the
    environment as given (the caller passes the user's own). Exit 2 on bad usage, 126 when the
    switch or the exec fails."""
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        print("usage: python -m workbench.daemon.runas UID -- COMMAND...", file=sys.stderr)
        return 2
    try:
        become(int(argv[0]))
        os.execvp(argv[2], argv[2:])
    except OSError as error:
        print(f"workbench runas: {error}", file=sys.stderr)
        return 126
    return 126  # pragma: no cover - exec does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
