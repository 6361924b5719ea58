"""System mode (team mode): one daemon for the machine in a system home owned by root, installed
and removed by `workbench system install | uninstall | status`.

The system home is `/var/lib/workbench`, or `$WORKBENCH_SYSTEM_HOME` (tests use a folder in
/tmp). It holds a `system` marker (so the daemon knows to serve every user), `gate/team.sock` (mode
0666: the requests, `workbench.daemon.wire`), the store (0600, root's alone) and `runs/` (0711:
each run folder is its owner's, 0700). Users' clients find the socket there and use it unless
WORKBENCH_HOME is set; with no system daemon installed nothing changes. Standard library only
at import: the CLI's start looks for the socket."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path

DEFAULT_SYSTEM_HOME = "/var/lib/workbench"
SYSTEM_HOME_ENV = "WORKBENCH_SYSTEM_HOME"
MARKER = "system"  # a file in the system home: the daemon serves every user there
UNIT_NAME = "workbench.service"
UNIT_DIR_ENV = "WORKBENCH_SYSTEMD_DIR"  # where the unit is written (default /etc/systemd/system)
_STOP_WAIT_S = 30.0


class SystemError_(RuntimeError):
    """A system install or uninstall that cannot be done; the message says why."""


def system_home() -> Path:
    """$WORKBENCH_SYSTEM_HOME, else /var/lib/workbench (resolved)."""
    return Path(os.environ.get(SYSTEM_HOME_ENV) or DEFAULT_SYSTEM_HOME).resolve()


def is_system_home(root: Path) -> bool:
    """Whether the home at `root` is a system home: it holds the `system` marker, and it and
    the marker are root's and not writable by others."""
    try:
        home, marker = os.lstat(root), os.lstat(root / MARKER)
    except OSError:
        return False
    return (
        all(
            info.st_uid == 0 and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            for info in (home, marker)
        )
        and stat.S_ISDIR(home.st_mode)
        and stat.S_ISREG(marker.st_mode)
    )


def system_socket() -> str | None:
    """The socket of an installed system daemon this client should use, or None (use the
    per-user home): None when WORKBENCH_HOME is set, when no system home is installed, or when
    its socket is not root's. Costs two or three lstat calls."""
    if os.environ.get("WORKBENCH_HOME"):
        return None
    return installed_socket()


def installed_socket() -> str | None:
    """The socket of an installed system daemon whatever WORKBENCH_HOME says (a job of a
    per-user daemon reading a dataset another user shares), or None: no system home
    installed, or its socket not root's."""
    root = system_home()
    if not is_system_home(root):
        return None
    path = gate_socket(root)
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if info.st_uid != 0 or not stat.S_ISSOCK(info.st_mode):
        return None
    return str(path)


def gate_socket(root: Path) -> Path:
    """Where the system daemon listens: `gate/team.sock` (the folder root's, 0755; the socket
    0666, since who connects is the kernel's to say; a top-level entry of a home must be
    writable by its owner alone, `workbench.trust`)."""
    return root / "gate" / "team.sock"


def _systemd_runs() -> bool:
    """Whether systemd is PID 1 (sd_booted(3): /run/systemd/system exists)."""
    return os.path.isdir("/run/systemd/system")


def _unit_path() -> Path:
    return Path(os.environ.get(UNIT_DIR_ENV) or "/etc/systemd/system") / UNIT_NAME


def daemon_command() -> list[str]:
    """The command that runs the system daemon in the foreground."""
    return [sys.executable, "-m", "workbench", "daemon", "run"]


def daemon_environment(root: Path) -> dict[str, str]:
    """The system daemon's environment: a fixed PATH, its home, and nothing else of the
    installer's (no LD_*, PYTHON*: `workbench.daemon.runas`) but WORKBENCH_FAKE_NVML, the
    simulated driver's scenario, where the installer sets it."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "WORKBENCH_HOME": str(root),
        "LANG": "C.UTF-8",
    }
    fake = os.environ.get("WORKBENCH_FAKE_NVML")
    if fake:  # a simulated driver (workbench.telemetry.fakenvml), for tests and demos only
        env["WORKBENCH_FAKE_NVML"] = fake
    return env


def unit_text(root: Path) -> str:
    """The systemd unit that runs the system daemon (KillMode=process: jobs outlive a daemon
    restart and are adopted by the next, as in per-user mode)."""
    env = " ".join(f'"{k}={v}"' for k, v in daemon_environment(root).items())
    return (
        "[Unit]\nDescription=gpu-workbench system daemon (team mode)\nAfter=network.target\n\n"
        f"[Service]\nType=simple\nEnvironment={env}\nWorkingDirectory={root}\n"
        f"ExecStart={' '.join(daemon_command())}\nKillMode=process\nRestart=on-failure\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


class PythonNotShared(SystemError_):
    """The daemon's Python (interpreter, standard library, workbench or its dependencies) is
    where other users cannot read it: every user's job would fail at its start (exit 2)."""


def closed_to_others(paths: Iterable[Path], trees: Iterable[Path] = ()) -> Path | None:
    """The first path other users (neither owner nor group) cannot reach, or None when all
    can: for each of `paths` (resolved), every folder above it must be o+x, and it o+rx (a
    folder, or an executable file) or o+r (another file); each of `trees` must pass the same
    and so must everything under it (folders o+rx, files o+r; links are not followed into, a
    broken one is skipped, and so are `__pycache__` folders, which Python reads around). A path that does not exist is skipped. Costs one stat per
    component and per entry of the trees (about 100,000 in a site-packages with torch: a
    second or two)."""
    seen: set[Path] = set()

    def mode_of(path: Path) -> int | None:
        try:
            return os.stat(path).st_mode
        except OSError:
            return None

    def closed(path: Path) -> bool:
        mode = mode_of(path)
        if mode is None:
            return False
        wanted = stat.S_IROTH
        if stat.S_ISDIR(mode) or mode & stat.S_IXUSR:
            wanted |= stat.S_IXOTH
        return mode & wanted != wanted

    def chain(path: Path) -> Path | None:
        for folder in reversed(path.parents):
            if folder not in seen:
                mode = mode_of(folder)
                if mode is not None and not mode & stat.S_IXOTH:
                    return folder
                seen.add(folder)
        return path if closed(path) else None

    for path in paths:
        found = chain(Path(path).resolve())
        if found is not None:
            return found
    for tree in trees:
        top = Path(tree).resolve()
        found = chain(top)
        if found is not None:
            return found
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if d != "__pycache__"]  # Python reads around a closed one
            for name in sorted(dirs) + sorted(files):
                entry = Path(folder, name)
                if closed(entry):
                    return entry
            dirs.sort()
    return None


def python_paths() -> tuple[list[Path], list[Path]]:
    """What the daemon's Python needs other users to read, as (paths, trees) for
    `closed_to_others`: the interpreter (resolved), its prefixes; and the standard library,
    the folders of `sys.path` that hold packages (site-packages, lib-dynload) and the
    workbench package's own folder, each whole."""
    import sysconfig

    import workbench

    paths = [Path(sys.executable), Path(sys.prefix), Path(sys.base_prefix)]
    trees = [Path(sysconfig.get_paths()["stdlib"]), Path(workbench.__file__).parent]
    trees += [
        Path(entry)
        for entry in sys.path
        if entry.endswith(("site-packages", "dist-packages", "lib-dynload"))
    ]
    return paths, list(dict.fromkeys(trees))


def check_python_shared() -> None:
    """Raise PythonNotShared naming the first path of this Python (`python_paths`) other users
    cannot read, and the fix. The system daemon's jobs start as their owners from this
    Python's processes, which read it as them."""
    found = closed_to_others(*python_paths())
    if found is None:
        return
    raise PythonNotShared(
        f"{found} cannot be read by other users, and the system daemon would run every user's"
        f" jobs from this Python ({sys.executable}), so each would fail at its start: `chmod"
        f" o+rx {found}` (and o+r on the files under it), or install gpu-workbench into a"
        " Python every user can run (e.g. a venv under /opt made with /usr/bin/python3)"
    )


def _require_root() -> None:
    if os.geteuid() != 0:
        raise SystemError_("the system daemon is installed and removed by root (sudo)")


def _make_home(root: Path, admin_group: str | None) -> None:
    for parent in reversed(root.parents):
        if not parent.exists():
            parent.mkdir(mode=0o755)
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise SystemError_(f"{root} exists and is not a folder")
    root.mkdir(mode=0o711, exist_ok=True)
    info = root.lstat()
    if info.st_uid != 0:
        raise SystemError_(f"{root} is not root's (uid {info.st_uid}); choose another folder")
    os.chmod(root, 0o711)
    marker = root / MARKER
    if not marker.exists():
        marker.write_text("gpu-workbench system home: one daemon serves every user\n")
    os.chmod(marker, 0o644)
    gate = root / "gate"
    gate.mkdir(mode=0o755, exist_ok=True)
    os.chmod(gate, 0o755)
    runs = root / "runs"
    runs.mkdir(mode=0o711, exist_ok=True)
    os.chmod(runs, 0o711)
    config = root / "config.toml"
    if not config.exists():
        line = f'admin_group = "{admin_group}"' if admin_group else '# admin_group = "wheel"'
        config.write_text(
            "# gpu-workbench system home (README: Team mode)\n[team]\n"
            f"{line}   # members see and act on every user's jobs\n"
        )
        os.chmod(config, 0o644)


def install(admin_group: str | None = None, start: bool = True) -> list[str]:
    """Make the system home and start its daemon: a systemd unit where systemd is PID 1,
    else the daemon started detached (and the command to start it at boot printed). Returns
    lines to print. Raises SystemError_ (PythonNotShared, before anything is made, when this
    Python is not one every user can run: `check_python_shared`)."""
    import subprocess

    _require_root()
    check_python_shared()
    root = system_home()
    _make_home(root, admin_group)
    lines = [f"system home: {root}"]
    if _systemd_runs():
        unit = _unit_path()
        unit.write_text(unit_text(root))
        lines.append(f"systemd unit: {unit}")
        if start:
            for args in (["daemon-reload"], ["enable", "--now", UNIT_NAME]):
                subprocess.run(["systemctl", *args], check=True)
    else:
        command = " ".join(daemon_command())
        lines.append(
            "systemd is not running here: start the daemon at boot with"
            f" `env -i WORKBENCH_HOME={root} {command}`"
        )
        if start:
            lines.append(f"daemon started, pid {start_detached(root)}")
    return lines


def start_detached(root: Path, timeout_s: float = 60.0) -> int:
    """Start the system daemon in its own session, its output in daemon.log; returns its pid
    once it is ready. Raises SystemError_ when it does not become ready."""
    import subprocess
    import time

    from workbench.daemon.link import lock_holder
    from workbench.paths import Home

    home = Home(root)
    pid = lock_holder(home)
    if pid is not None and pid > 0:
        return pid
    log_fd = os.open(home.daemon_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    with open(log_fd, "ab") as log, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            daemon_command(),
            stdin=devnull,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=daemon_environment(root),
            cwd=str(root),
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = lock_holder(home)
        if pid is not None and pid > 0 and gate_socket(root).exists():
            return pid
        if proc.poll() is not None:
            raise SystemError_(f"the system daemon exited at once (see {home.daemon_log})")
        time.sleep(0.05)
    raise SystemError_(f"the system daemon did not become ready (see {home.daemon_log})")


def uninstall(purge: bool = False) -> list[str]:
    """Stop the system daemon and remove its unit; `purge` also removes the system home (its
    store, logs and run folders). Jobs still running keep running (as after any daemon stop)
    unless purged. Returns lines to print. Raises SystemError_."""
    import shutil
    import signal
    import subprocess
    import time

    _require_root()
    from workbench.daemon.link import lock_holder
    from workbench.paths import Home

    root = system_home()
    lines = []
    unit = _unit_path()
    if unit.exists():
        if _systemd_runs():
            subprocess.run(["systemctl", "disable", "--now", UNIT_NAME], check=False)
        unit.unlink()
        if _systemd_runs():
            subprocess.run(["systemctl", "daemon-reload"], check=False)
        lines.append(f"removed {unit}")
    if not is_system_home(root):
        lines.append(f"no system home at {root}")
        return lines
    pid = lock_holder(Home(root))
    if pid is not None and pid > 0:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_WAIT_S
        while lock_holder(Home(root)) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        lines.append(f"stopped the system daemon (pid {pid})")
    if purge:
        shutil.rmtree(root)
        lines.append(f"removed {root}")
    else:
        (root / MARKER).unlink()
        lines.append(f"kept {root} (its jobs and logs); `uninstall --purge` removes it")
    return lines


def status() -> dict[str, object]:
    """`{"home", "installed", "pid" (None when no daemon runs), "socket", "unit"}`."""
    from workbench.daemon.link import lock_holder
    from workbench.paths import Home

    root = system_home()
    installed = is_system_home(root)
    pid = None
    if installed:
        try:
            holder = lock_holder(Home(root))
            pid = holder if holder and holder > 0 else None
        except OSError:
            pid = None
    unit = _unit_path()
    return {
        "home": str(root),
        "installed": installed,
        "pid": pid,
        "socket": system_socket(),
        "unit": str(unit) if unit.exists() else None,
    }
