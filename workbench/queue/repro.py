"""What a queued job needs to be reproduced, captured at submit (README, "Stopping, resuming and
reproducing a job"): the code state of its working directory (git commit, dirty or not, the diff
of tracked files, capped), the environment it runs with (Python and its distributions, torch and
its CUDA build, host), and optionally a snapshot: the files of the working directory frozen into
a folder the job then runs in, so an edit after submit changes nothing.

Nothing here imports torch: versions come from `importlib.metadata` (the installed
distributions' records). The driver and GPU model are recorded when the job starts, by the daemon
through its NVML adapter (`start_environment`)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.queue.spec import SpecError
from workbench.units import format_size

if TYPE_CHECKING:
    from workbench.db.store import JobRequest

DIFF_CAP_BYTES = 256 * 1024  # the diff kept of uncommitted changes; a longer one is cut, saying so
_GIT_TIMEOUT_S = 10.0
SNAPSHOTS = "snapshots"  # in runs/ (shared with Slurm nodes): a folder per snapshot, by time
# Never frozen, in or out of git: version control, caches, virtual environments.
_SKIPPED_DIRS = frozenset({".git", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})


def _git(cwd: str, *args: str) -> subprocess.CompletedProcess[bytes] | None:
    """`git -C cwd ARGS` (bytes out), or None when git is missing or does not answer in time."""
    try:
        return subprocess.run(
            ["git", "-C", cwd, *args],
            capture_output=True,
            timeout=_GIT_TIMEOUT_S,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def code_state(cwd: str, diff_cap: int = DIFF_CAP_BYTES) -> dict[str, Any]:
    """The code state of `cwd`: {"path", "git": False} outside a git work tree; else also
    "root" (the work tree's top), "commit" (HEAD's hash, None before the first commit),
    "branch", "dirty" (tracked files changed, or untracked files not ignored), "diff" (`git diff
    HEAD`: staged and unstaged changes of tracked files, at most `diff_cap` bytes), "diff_bytes"
    (its full size), "diff_note" (set when it was cut) and "untracked" (untracked files not
    ignored, at most 100 names)."""
    state: dict[str, Any] = {"path": cwd, "git": False}
    top = _git(cwd, "rev-parse", "--show-toplevel")
    if top is None or top.returncode != 0:
        return state
    state["git"] = True
    state["root"] = top.stdout.decode(errors="replace").strip()
    # One status for the commit, the branch, changes to tracked files and untracked ones.
    status = _git(cwd, "status", "--porcelain=v2", "--branch", "-z")
    entries = status.stdout.split(b"\0") if status is not None and status.returncode == 0 else []
    commit = branch = None
    changed = False
    untracked: list[str] = []
    for entry in entries:
        text = entry.decode(errors="surrogateescape")
        if text.startswith("# branch.oid "):
            commit = text.split(" ", 2)[2]
        elif text.startswith("# branch.head "):
            branch = text.split(" ", 2)[2]
        elif text[:2] in ("1 ", "2 ", "u "):
            changed = True
        elif text.startswith("? "):
            untracked.append(text[2:])
    state["commit"] = commit if commit and commit != "(initial)" else None
    state["branch"] = branch if branch and branch != "(detached)" else None
    diff = _git(cwd, "diff", "HEAD", "--no-color", "--no-ext-diff") if changed else None
    raw = diff.stdout if diff is not None and diff.returncode == 0 else b""
    state["dirty"] = changed or bool(untracked)
    state["diff_bytes"] = len(raw)
    state["diff"] = raw[:diff_cap].decode(errors="replace")
    state["diff_note"] = (
        f"cut at {format_size(diff_cap)} of {format_size(len(raw))}"
        if len(raw) > diff_cap
        else None
    )
    state["untracked"] = untracked[:100]
    return state


def _lines(done: subprocess.CompletedProcess[bytes] | None) -> list[str]:
    if done is None or done.returncode != 0:
        return []
    return [p.decode(errors="surrogateescape") for p in done.stdout.split(b"\0") if p]


def _interpreter(argv: list[str] | None, env: dict[str, str]) -> str:
    """The Python a command job runs (its argv[0] when that is a `python*` found on the job's
    PATH), else the one the workbench runs its own kinds with."""
    if argv:
        name = os.path.basename(argv[0])
        if name.startswith("python"):
            found = shutil.which(argv[0], path=env.get("PATH", os.defpath))
            if found:
                return found
    return sys.executable


def _site_packages(python: str) -> list[str] | None:
    """The folders holding the distributions of the environment `python` belongs to, found
    from its path without running it (a virtual environment's `pyvenv.cfg` beside `bin/`);
    None for this interpreter or one whose environment cannot be told (then: sys.path)."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        return None
    prefix = Path(python).absolute().parent.parent
    if not (prefix / "pyvenv.cfg").exists():
        return None
    return [str(p) for p in sorted(prefix.glob("lib/python*/site-packages"))] or None


def environment(argv: list[str] | None, env: dict[str, str]) -> dict[str, Any]:
    """The environment a job runs with, as seen at submit: "host", "platform", "python" (the
    interpreter and, where it is this one, its version), "distributions" ({name: version}),
    "torch" and "cuda" (torch's version and the CUDA it was built for, from its version's
    `+cu121` suffix or the `nvidia-cuda-runtime-cu*` distribution; None without them).
    Reading the distributions costs some 50 ms: the answer is kept per interpreter until a
    folder holding them changes (an install or removal changes its modification time)."""
    python = _interpreter(argv, env)
    folders = _site_packages(python)
    stamp = (python, _mtimes(folders or [p for p in sys.path if p.endswith("-packages")]))
    cached = _ENVIRONMENTS.get(python)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    found = _read_environment(python, folders)
    _ENVIRONMENTS[python] = (stamp, found)
    return found


_ENVIRONMENTS: dict[str, tuple[Any, dict[str, Any]]] = {}


def _mtimes(folders: list[str]) -> tuple[float, ...]:
    out = []
    for folder in folders:
        try:
            out.append(os.stat(folder).st_mtime)
        except OSError:
            out.append(-1.0)
    return tuple(out)


def _read_environment(python: str, folders: list[str] | None) -> dict[str, Any]:
    """`environment`'s answer, read now."""
    dists = (
        importlib.metadata.distributions(path=folders)
        if folders
        else importlib.metadata.distributions()
    )
    versions: dict[str, str] = {}
    for dist in dists:
        name = dist.metadata["Name"]
        if name and name not in versions:
            versions[str(name)] = str(dist.version)
    torch = versions.get("torch")
    cuda = None
    if torch and "+cu" in torch:
        digits = torch.split("+cu", 1)[1]
        cuda = f"{digits[:-1]}.{digits[-1]}" if digits.isdigit() and len(digits) >= 2 else None
    if cuda is None:
        runtime = [v for k, v in versions.items() if k.startswith("nvidia-cuda-runtime")]
        cuda = runtime[0] if runtime else None
    same = folders is None
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": {
            "executable": python,
            "version": platform.python_version() if same else _version_of(python),
        },
        "distributions": dict(sorted(versions.items(), key=lambda kv: kv[0].lower())),
        "torch": torch,
        "cuda": cuda,
    }


def _version_of(python: str) -> str | None:
    """A virtual environment's Python version, from its `pyvenv.cfg` (no process started)."""
    cfg = Path(python).absolute().parent.parent / "pyvenv.cfg"
    try:
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() in ("version", "version_info"):
                return value.strip()
    except OSError:
        pass
    return None


def start_environment(gpu_names: list[str], driver: str | None, cuda: str | None) -> dict[str, Any]:
    """What the daemon records when a job starts (local executor): the host, the driver and the
    CUDA version it supports (NVML), and the model of each GPU granted, in grant order."""
    return {
        "host": socket.gethostname(),
        "started_at": time.time(),
        "driver": driver,
        "driver_cuda": cuda,
        "gpus": gpu_names,
    }


# ---- snapshots -----------------------------------------------------------------------------


def snapshot_files(cwd: str) -> tuple[list[str], str]:
    """The files `--snapshot` freezes, relative to `cwd`, and the rule that chose them: in a git
    work tree, the tracked files (as they are on disk now, modified or not) and the untracked
    files git does not ignore, under `cwd`; elsewhere every file under `cwd`, except the
    folders of version control, caches and virtual environments (a folder with `pyvenv.cfg`).
    Symbolic links are kept as links."""
    tracked = _git(cwd, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    if tracked is not None and tracked.returncode == 0:
        names = [n for n in _lines(tracked) if os.path.lexists(os.path.join(cwd, n))]
        names = [n for n in names if not (set(Path(n).parts) & _SKIPPED_DIRS)]
        return sorted(set(names)), "git: tracked files and untracked files not ignored"
    found: list[str] = []
    for folder, dirs, files in os.walk(cwd):
        dirs[:] = [
            d
            for d in dirs
            if d not in _SKIPPED_DIRS and not os.path.exists(os.path.join(folder, d, "pyvenv.cfg"))
        ]
        for name in files:
            found.append(os.path.relpath(os.path.join(folder, name), cwd))
    return sorted(found), "not a git work tree: every file under the folder"


def take_snapshot(cwd: str, runs_dir: Path, cap_bytes: int) -> dict[str, Any]:
    """Copy the files `snapshot_files` chooses into a new folder `runs/snapshots/<stamp>` of the home
    and return {"path", "source", "files", "bytes", "rule"}. Raises SpecError (exit 2) naming the
    size and the cap when they come to more than `cap_bytes`, before anything is copied."""
    names, rule = snapshot_files(cwd)
    total = 0
    for name in names:
        try:
            total += os.lstat(os.path.join(cwd, name)).st_size
        except OSError:
            pass
    if total > cap_bytes:
        raise SpecError(
            f"--snapshot: the files to freeze in {cwd} come to {format_size(total)}"
            f" ({len(names)} files; {rule}), over the cap of {format_size(cap_bytes)};"
            " raise [submit] snapshot_cap in config.toml, ignore large files in .gitignore,"
            " or submit without --snapshot"
        )
    base = runs_dir / SNAPSHOTS
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = Path(_unique(base, stamp))
    try:
        for name in names:
            source = os.path.join(cwd, name)
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if os.path.islink(source):
                os.symlink(os.readlink(source), target)
            else:
                shutil.copy2(source, target)
    except OSError as error:
        shutil.rmtree(dest, ignore_errors=True)
        raise SpecError(f"--snapshot: cannot copy {cwd} into {dest}: {error}") from error
    return {"path": str(dest), "source": cwd, "files": len(names), "bytes": total, "rule": rule}


def _unique(base: Path, stamp: str) -> str:
    """A new folder under `base` named after `stamp` (created here, so two submits at once get
    two folders)."""
    for n in range(1000):
        path = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir()
            return str(path)
        except FileExistsError:
            continue
    raise SpecError(f"--snapshot: cannot make a new folder under {base}")


# ---- at submit ---------------------------------------------------------------------------


def wants_snapshot(request: JobRequest, default: bool) -> bool:
    """Whether a request runs from a snapshot: a command job's `snapshot` key (`--snapshot`),
    else `default` (`[submit] snapshot` in config.toml). Other kinds read their inputs from
    the lake and their code from the workbench: they are never snapshotted."""
    if request.kind != "command":
        return False
    asked = request.spec.get("snapshot")
    return default if asked is None else bool(asked)


def capture(
    request: JobRequest,
    runs_dir: Path,
    snapshot_default: bool = False,
    cap_bytes: int = 100 * 1024**2,
    cache: dict[Any, Any] | None = None,
) -> JobRequest:
    """`request` with its reproducibility record (`JobRequest.repro`): the code state of its
    working directory and its environment, and, when it runs from a snapshot (`wants_snapshot`),
    the snapshot, which becomes its working directory (argv words naming files under the
    original directory by absolute path are pointed into the snapshot too). `cache` (one dict
    per submission of many jobs) keeps each directory's and interpreter's answer once. Raises
    SpecError (exit 2) for a snapshot over `cap_bytes`."""
    cache = {} if cache is None else cache
    cwd = request.cwd
    code = cache.get(("code", cwd))
    if code is None:
        code = cache[("code", cwd)] = code_state(cwd)
    python = _interpreter(request.argv, request.env)
    env = cache.get(("env", python))
    if env is None:
        env = cache[("env", python)] = environment(request.argv, request.env)
    snap = None
    if wants_snapshot(request, snapshot_default):
        snap = cache.get(("snapshot", cwd))  # a sweep's points share one
        if snap is None:
            snap = cache[("snapshot", cwd)] = take_snapshot(cwd, runs_dir, cap_bytes)
        frozen = snap["path"]
        prefix = cwd.rstrip(os.sep) + os.sep
        argv = [
            frozen + os.sep + a[len(prefix) :] if a.startswith(prefix) else a
            for a in (request.argv or [])
        ]
        spec = {**request.spec, "cwd": frozen, "argv": argv, "snapshot": True}
        if isinstance(spec.get("capture"), list):  # the files it writes are in the copy too
            spec["capture"] = [
                frozen + os.sep + p[len(prefix) :]
                if isinstance(p, str) and p.startswith(prefix)
                else p
                for p in spec["capture"]
            ]
        request = dataclasses.replace(request, cwd=frozen, argv=argv, spec=spec)
    record = {"code": code, "environment": env, "snapshot": snap}
    return dataclasses.replace(request, repro=record)
