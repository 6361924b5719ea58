"""Finding every process of a job: a cgroup v2 per job where one can be created, else the job's
wrapper as a child subreaper (its descendants), and, for a job whose wrapper is gone, the launch
token every job process carries in its environment."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable, Iterable
from pathlib import Path

from workbench.daemon.runner import TOKEN_ENV

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def _find_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


# Looked up once, at import: the launcher imports this module, so every wrapper it forks has it.
_prctl = _find_prctl()


def set_child_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (they re-parent to it instead of
    to init), so it can find and stop them. False if the kernel refused."""
    return _prctl is not None and int(_prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def cgroup2_mount() -> Path | None:
    """Where the unified (v2) cgroup hierarchy is mounted, from /proc/self/mountinfo."""
    try:
        with open("/proc/self/mountinfo") as info:
            for line in info:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return Path(left.split()[4])
    except OSError:
        return None
    return None


def own_cgroup() -> str | None:
    """This process's path in the v2 hierarchy (`0::/path` in /proc/self/cgroup)."""
    try:
        with open("/proc/self/cgroup") as groups:
            for line in groups:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        return None
    return None


def home_scope(root: Path) -> str:
    """The name of a workbench home's folder of job cgroups: 16 hex digits of the SHA-1 of the
    home's path (one folder per home, so daemons of two homes never touch each other's jobs)."""
    import hashlib  # here: wrappers import this module and never need it

    return hashlib.sha1(str(root).encode()).hexdigest()[:16]


def _jobs_parent() -> Path | None:
    """`workbench.jobs` beside this process's own cgroup (not created here), or None without a
    cgroup v2 hierarchy: the folder every home's scope of job cgroups is in."""
    mount, own = cgroup2_mount(), own_cgroup()
    if mount is None or own is None:
        return None
    return mount / own.lstrip("/") / "workbench.jobs"


def remove_scope(scope: str) -> None:
    """Remove a home's folder of job cgroups and the empty job cgroups in it (what its daemon
    does when it exits; one killed with SIGKILL leaves them, and its next daemon in the same
    home removes them). Cgroups still holding processes stay; nothing is created."""
    parent = _jobs_parent()
    if parent is None:
        return
    base = parent / scope
    if base.is_dir():
        remove_empty_cgroups(base, keep=set())
        remove_cgroup(base)


def _probe(base: Path) -> str | None:
    """None if a job cgroup can be created under `base` and a process moved into it, else why."""
    probe = base / f"probe-{os.getpid()}"
    try:
        base.mkdir(exist_ok=True)
        probe.mkdir(exist_ok=True)
    except OSError as error:
        return f"cannot create {probe}: {error.strerror}"
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                (probe / "cgroup.procs").write_text(str(os.getpid()))
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            return f"cannot move a process into {probe}"
        return None
    finally:
        try:
            probe.rmdir()
        except OSError:
            pass


def cgroup_base(mode: str, scope: str = "default") -> tuple[Path | None, str]:
    """The folder job cgroups are created in (`workbench.jobs/<scope>` beside this process's own
    cgroup; one scope per workbench home), or None, with a line saying which containment is in
    use. `mode`: "auto" or "cgroup" (a cgroup when possible; the line says why not when it falls
    back), "subreaper" (never a cgroup)."""
    if mode == "subreaper":
        return None, "subreaper (cgroups turned off in config)"
    parent = _jobs_parent()
    if parent is None:
        return None, "subreaper (no cgroup v2 hierarchy)"
    try:
        parent.mkdir(exist_ok=True)
    except OSError as error:
        return None, f"subreaper (cannot create {parent}: {error.strerror})"
    base = parent / scope
    why_not = _probe(base)
    if why_not is not None:
        return None, f"subreaper ({why_not})"
    enable_memory(base)
    memory = "memory.max" if _has_memory(base) else "no memory controller: --mem is reported"
    return base, f"cgroup v2 ({base}; {memory})"


def _has_memory(base: Path) -> bool:
    try:
        return "memory" in (base / "cgroup.subtree_control").read_text().split()
    except OSError:
        return False


def enable_memory(base: Path) -> None:
    """Best effort: turn the memory controller on for the job cgroups under `base` (its parent's
    and its own `cgroup.subtree_control`), where the hierarchy offers it."""
    for folder in (base.parent, base):
        try:
            if "memory" in (folder / "cgroup.controllers").read_text().split():
                (folder / "cgroup.subtree_control").write_text("+memory")
        except OSError:
            pass


def set_memory_max(cgroup_dir: Path, limit_bytes: int) -> bool:
    """Cap a job cgroup's memory at `limit_bytes` (memory.max; swap too, where memory.swap.max
    exists, so the cap is not a slow swap). True if the cap is in force; False without the
    cgroup v2 memory controller for this cgroup (the overuse is then only reported)."""
    try:
        if "memory" not in (cgroup_dir / "cgroup.controllers").read_text().split():
            return False
        (cgroup_dir / "memory.max").write_text(str(limit_bytes))
    except OSError:
        return False
    try:
        (cgroup_dir / "memory.swap.max").write_text("0")
    except OSError:
        pass
    return True


def oom_kills(cgroup_dir: Path) -> int:
    """Processes the OOM killer killed in this cgroup (`oom_kill` of memory.events; 0 without
    the memory controller)."""
    try:
        for line in (cgroup_dir / "memory.events").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_pids(cgroup_dir: Path) -> list[int]:
    """Processes in one job cgroup (empty if the cgroup is gone)."""
    try:
        return [int(x) for x in (cgroup_dir / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def cgroup_kill(cgroup_dir: Path) -> bool:
    """SIGKILL every process in the cgroup at once (`cgroup.kill`, Linux 5.14+)."""
    try:
        (cgroup_dir / "cgroup.kill").write_text("1")
        return True
    except OSError:
        return False


def cgroup_usage(cgroup_dir: Path) -> tuple[float | None, int | None]:
    """(CPU seconds, peak memory bytes) of a cgroup; None where the kernel does not say
    (`memory.peak` needs the memory controller enabled for the cgroup)."""
    cpu_s: float | None = None
    peak: int | None = None
    try:
        for line in (cgroup_dir / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                cpu_s = int(value) / 1e6
    except (OSError, ValueError):
        pass
    try:
        peak = int((cgroup_dir / "memory.peak").read_text().strip())
    except (OSError, ValueError):
        pass
    return cpu_s, peak


def remove_cgroup(cgroup_dir: Path) -> None:
    """Remove a job's cgroup if it is empty (the kernel refuses otherwise)."""
    try:
        cgroup_dir.rmdir()
    except OSError:
        pass


def remove_empty_cgroups(base: Path, keep: set[str]) -> None:
    """Remove the empty job cgroups under `base` whose names are not in `keep` (left by jobs
    whose wrapper was killed before it could clean up)."""
    try:
        names = [p.name for p in base.iterdir() if p.is_dir()]
    except OSError:
        return
    for name in names:
        if name not in keep:
            remove_cgroup(base / name)


def descendants(pid: int) -> list[int]:
    """Live descendants of `pid` (children, their children...), zombies left out, via the
    kernel's per-task `children` lists (falling back to a /proc scan)."""
    found: list[int] = []
    todo = [pid]
    try:
        while todo:
            parent = todo.pop()
            for task in os.listdir(f"/proc/{parent}/task"):
                with open(f"/proc/{parent}/task/{task}/children") as children:
                    kids = [int(x) for x in children.read().split()]
                found.extend(kids)
                todo.extend(kids)
    except FileNotFoundError:
        pass
    except OSError:
        return _descendants_by_scan(pid)
    return [p for p in found if not _is_zombie(p)]


def _descendants_by_scan(pid: int) -> list[int]:
    import psutil

    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    return [k.pid for k in kids if not _is_zombie(k.pid)]


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def pids_with_token(token: str) -> list[int]:
    """Processes whose environment carries this launch token: every process a job started,
    wherever it was re-parented, unless it replaced its environment when it exec'd."""
    needle = f"{TOKEN_ENV}={token}".encode()
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if needle in environ.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return [p for p in found if not _is_zombie(p)]


def signal_each(pids: Iterable[int], sig: int) -> int:
    """Send `sig` to each pid; returns how many were still there."""
    sent = 0
    for pid in pids:
        try:
            os.kill(pid, sig)
            sent += 1
        except (ProcessLookupError, PermissionError):
            pass
    return sent


def terminate(pids: Iterable[int]) -> int:
    """SIGTERM, then SIGCONT (a stopped process only acts on SIGTERM once continued)."""
    pids = list(pids)
    sent = signal_each(pids, signal.SIGTERM)
    signal_each(pids, signal.SIGCONT)
    return sent
