"""The attacker's pass on team mode (`python bench/attacks.py --team`): a second, unprivileged
user (mallory) against a real system daemon (installed in a folder under /tmp) while another
user (victim) has a job running with secrets in its environment, log and working directory.

Each row counts, over its attempts: privilege gained (anything of mallory's choosing done as
root, or as the victim: a file a root process wrote at her request, a signal to a root process
delivered, a root-run helper's memory opened, a job of hers not running as her), other users'
data read (a victim's secret in anything mallory's commands or jobs printed), whether the
daemon still answered afterwards (the same pid, within 5 s), and tracebacks in daemon.log.
Needs root (users are added with useradd and removed with userdel -r)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECRET_ENV = "VICTIM-ENV-SECRET-5e1f"
SECRET_LOG = "VICTIM-LOG-SECRET-77aa"
SECRET_FILE = "VICTIM-FILE-SECRET-91c3"
SECRETS = (SECRET_ENV, SECRET_LOG, SECRET_FILE, "root:$", "root:*:", "root:!")


class Team:
    """Two users, a system home and its daemon; `close` stops the daemon by pid and removes
    the users and folders."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.victim, self.mallory = f"wb{tag}v", f"wb{tag}m"
        self.folder = Path(tempfile.mkdtemp(prefix="wbteam-attack-", dir="/tmp"))
        os.chmod(self.folder, 0o755)
        self.root = self.folder / "home"
        self.users: list[str] = []
        self.outputs: list[str] = []  # everything mallory saw
        self.stalled = 0  # attempts during which the victim was not served in time
        self.pid = 0
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        for name in (self.victim, self.mallory):
            subprocess.run(["useradd", "-m", name], check=True, capture_output=True)
            self.users.append(name)
        self.wb_cmd, self.py_cmd = runners(self.victim)
        env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_HOME"}
        env["WORKBENCH_SYSTEM_HOME"] = str(self.root)
        subprocess.run(
            [daemon_python(self.folder), "-m", "workbench", "system", "install"],
            check=True,
            capture_output=True,
            env=env,
            timeout=120,
        )
        self.pid = int((self.root / "daemon.lock").read_text())
        victim_home = Path(os.path.expanduser(f"~{self.victim}"))
        secret = victim_home / "secret.txt"
        secret.write_text(SECRET_FILE + "\n")
        shutil.chown(secret, self.victim, self.victim)
        secret.chmod(0o600)
        self.victim_job = self.submit(
            self.victim,
            "sh",
            "-c",
            f"echo {SECRET_LOG}; cat secret.txt; sleep 600",
            env={"VICTIM_TOKEN": SECRET_ENV, "VICTIM_NOTE": SECRET_ENV},
        )
        self.wait_state(self.victim_job, "running")

    def env(self, user: str) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "WORKBENCH_SYSTEM_HOME": str(self.root),
            "HOME": os.path.expanduser(f"~{user}"),
            "LANG": "C.UTF-8",
        }

    def wb(
        self, user: str, *args: str, env: dict[str, str] | None = None, cwd: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        # Extra variables are set by `env` after the switch: runuser itself (root) never
        # runs with the attacker's LD_PRELOAD, which would be the harness's hole, not ours.
        extra = ["env", *(f"{k}={v}" for k, v in (env or {}).items())]
        done = subprocess.run(
            ["runuser", "-u", user, "--", *extra, *self.wb_cmd, *args],
            capture_output=True,
            text=True,
            env=self.env(user),
            cwd=cwd or os.path.expanduser(f"~{user}"),
            timeout=120,
        )
        if user == self.mallory:
            self.outputs += [done.stdout, done.stderr]
        return done

    def py(self, user: str, code: str) -> subprocess.CompletedProcess[str]:
        """Run Python `code` as `user` (this checkout importable)."""
        script = self.folder / f"script-{uuid.uuid4().hex[:8]}.py"
        script.write_text(textwrap.dedent(code))
        script.chmod(0o644)
        done = subprocess.run(
            ["runuser", "-u", user, "--", *self.py_cmd, str(script), str(self.socket)],
            capture_output=True,
            text=True,
            env=self.env(user),
            cwd="/tmp",
            timeout=120,
        )
        if user == self.mallory:
            self.outputs += [done.stdout, done.stderr]
        return done

    @property
    def socket(self) -> Path:
        return self.root / "gate" / "team.sock"

    def submit(self, user: str, *command: str, env: dict[str, str] | None = None) -> int:
        done = self.wb(user, "submit", "--", *command, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"submit as {user} failed: {done.stderr}")
        return int(done.stdout.split()[0])

    def job(self, job_id: int) -> dict[str, object]:
        done = subprocess.run(
            [sys.executable, "-m", "workbench", "show", str(job_id), "--json"],
            capture_output=True,
            text=True,
            env={**os.environ, "WORKBENCH_HOME": str(self.root)},
            timeout=60,
        )
        return dict(json.loads(done.stdout))

    def wait_state(self, job_id: int, *states: str, timeout: float = 60.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        wanted = states or ("succeeded", "failed", "cancelled")
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["state"] in wanted:
                return job
            time.sleep(0.2)
        raise RuntimeError(f"job {job_id} did not reach {wanted}")

    def serving(self) -> bool:
        """The same daemon answers the victim within 5 s."""
        started = time.monotonic()
        done = self.wb(self.victim, "ls")
        alive = _alive(self.pid)
        return done.returncode == 0 and alive and time.monotonic() - started < 5.0

    def data_read(self) -> int:
        """Outputs mallory saw holding a victim's secret (or a line of /etc/shadow)."""
        return sum(any(s in text for s in SECRETS) for text in self.outputs)

    def tracebacks(self) -> int:
        log = self.root / "daemon.log"
        return log.read_text(errors="replace").count("Traceback") if log.is_file() else 0

    def close(self) -> None:
        try:
            if self.pid <= 0:
                raise ProcessLookupError
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        except ProcessLookupError:
            pass
        for name in self.users:
            subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        time.sleep(0.2)
        for name in self.users:
            subprocess.run(["userdel", "-r", name], capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def runners(user: str) -> tuple[list[str], list[str]]:
    """The argv prefixes with which `user` runs the CLI and a Python script: this interpreter
    where they can, else (a Python under root's 0700 home) the system's python3 of the same
    version with this environment's site-packages. Used by tests/test_team_mode.py too.

    Raises RuntimeError when no such Python exists."""
    probe = subprocess.run(
        ["runuser", "-u", user, "--", sys.executable, "-c", "import workbench"],
        capture_output=True,
        cwd="/",
    )
    if probe.returncode == 0:
        return [sys.executable, "-m", "workbench"], [sys.executable]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system_python = shutil.which(version, path="/usr/bin:/usr/local/bin:/bin")
    if system_python is None:
        raise RuntimeError(f"no {version} the test users can run")
    site = next(p for p in sys.path if p.endswith("site-packages") and "venv" in p)
    start = f"import site, sys; site.addsitedir({site!r}); sys.path.insert(0, {str(REPO)!r});"
    wb = [system_python, "-c", start + "from workbench.cli.entry import main; sys.exit(main())"]
    run = "import runpy; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    return wb, [system_python, "-c", start + run]


def daemon_python(folder: Path) -> str:
    """A Python every test user can run, with this environment's packages, for the system
    daemon (`system install` refuses one they cannot read, `workbench.system.closed_to_others`):
    this interpreter where it is one, else a venv made in `folder` (once) from the system's
    python3.X of the same version, this environment's site-packages and this checkout added
    by a .pth file. Used by tests/test_team_mode.py too.

    Raises RuntimeError when no such Python exists."""
    from workbench.system import closed_to_others, python_paths

    if closed_to_others(*python_paths()) is None:
        return sys.executable
    venv = folder / "python"
    python = venv / "bin" / "python"
    if python.exists():
        return str(python)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system_python = shutil.which(version, path="/usr/bin:/usr/local/bin:/bin")
    if system_python is None:
        raise RuntimeError(f"no {version} that the test users can run, for the system daemon")
    subprocess.run([system_python, "-m", "venv", "--without-pip", str(venv)], check=True)
    lines = [f"import sys; sys.path.insert(0, {str(REPO)!r})"] + [
        f"import site; site.addsitedir({entry!r})"
        for entry in sys.path
        if entry.endswith("site-packages")
    ]
    (venv / "lib" / version / "site-packages" / "workbench-tests.pth").write_text(
        "\n".join(lines) + "\n"
    )
    return str(python)


# ---- the attacks: each returns privilege gained (a count) ---------------------------------

MALFORMED = """
import json, socket, struct, sys
path = sys.argv[1]
def raw(data, close_early=False):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(15); s.connect(path)
    s.sendall(data)
    if close_early:
        s.close(); return None
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except OSError:
        pass
    s.close()
    return out[4:].decode(errors="replace")
def frame(obj):
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body
tries = [
    b"\\x00garbage that is no frame",
    struct.pack(">I", 0xFFFFFFF0) + b"{}",
    struct.pack(">I", 100) + b"{\\"op\\"",
    frame(b"[1, 2, 3]"),
    frame(b"[" * 200000 + b"]" * 200000),
    frame(b"\\xff\\xfe not utf-8"),
    frame({"op": "chmod", "path": "/etc/shadow"}),
    frame({"op": "submit", "jobs": {"a": 1}}),
    frame({"op": "submit", "jobs": [{"argv": "id", "cwd": "/", "env": {}}]}),
    frame({"op": "submit", "jobs": [{"argv": ["id"], "cwd": "/", "env": {"A\\u0000": "x"}}]}),
    frame({"op": "submit", "jobs": [{"argv": ["id"], "cwd": "/", "env": {}, "kind": "train"}]}),
    frame({"op": "submit", "jobs": [{"argv": ["id"], "cwd": "/", "env": {}, "executor": "slurm"}]}),
    frame({"op": "log", "id": "1"}),
    frame({"op": "log", "id": 2 ** 70}),
    frame({"op": "log", "id": 1, "offset": -5}),
    frame({"op": "control", "id": 1, "action": "chown"}),
    frame({"op": "states", "ids": list(range(20000))}),
    frame({"op": "priority", "id": 1, "priority": 2 ** 80}),
]
oks = 0
for data in tries:
    reply = raw(data)
    if reply and '"ok":true' in reply:
        oks += 1
    print(reply)
raw(frame({"op": "ping"})[:6], close_early=True)
print("OKS", oks)
"""


def malformed_requests(t: Team) -> int:
    """Frames that are no frames, lengths past the limit, truncated, not an object, nesting
    200,000 deep, not UTF-8, unknown ops, fields of the wrong type or range: each refused."""
    done = t.py(t.mallory, MALFORMED)
    oks = [line for line in done.stdout.splitlines() if line.startswith("OKS ")]
    return 1 if not oks or oks[0] != "OKS 0" else 0


CLAIM = """
import json, sys
from workbench.daemon.wire import ask
job = {"name": "claim", "kind": "command", "spec": {}, "cwd": "/tmp",
       "env": {"PATH": "/usr/bin:/bin"}, "argv": ["id", "-u"], "uid": 0}
print(json.dumps(ask(sys.argv[1], {"op": "submit", "jobs": [job], "uid": 0, "user": "root"})))
print(json.dumps(ask(sys.argv[1], {"op": "control", "id": %d, "action": "cancel",
                                   "uid": %d, "user": "%s"})))
"""


def claimed_identity(t: Team) -> int:
    """A submit that says uid 0, a cancel of the victim's job that names the victim: the job
    is mallory's and runs as her; the cancel is refused."""
    victim_uid = int(subprocess.run(["id", "-u", t.victim], capture_output=True, text=True).stdout)
    done = t.py(t.mallory, CLAIM % (t.victim_job, victim_uid, t.victim))
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if len(lines) != 2:
        return 1
    submitted, cancel = lines
    gained = int(bool(cancel.get("ok")))
    job = t.wait_state(submitted["ids"][0])
    mallory_uid = int(
        subprocess.run(["id", "-u", t.mallory], capture_output=True, text=True).stdout
    )
    log = t.wb(t.mallory, "logs", str(submitted["ids"][0])).stdout.strip()
    gained += int(job["uid"] != mallory_uid or log != str(mallory_uid))
    return gained


LINKS_JOB = (
    'cd "$WORKBENCH_RUN_DIR"; rm -f log; ln -s /etc/shadow log; ln -s /etc/shadow records.jsonl;'
    " ln /etc/shadow hard 2>/dev/null && echo HARDLINKED;"
    " rm -f wrapper.json; ln -s {victim_log} wrapper.json; ln -s {victim_dir} checkpoints2;"
    " sleep 2"
)


def planted_links(t: Team) -> int:
    """Mallory's job replaces its own log, records and wrapper record with links to
    /etc/shadow and the victim's log (and tries a hard link to /etc/shadow); then asks the
    daemon for its log and details while it runs and after it ends."""
    victim_dir = t.root / "runs" / str(t.victim_job)
    job_id = t.submit(
        t.mallory,
        "sh",
        "-c",
        LINKS_JOB.format(victim_log=victim_dir / "log", victim_dir=victim_dir),
    )
    time.sleep(1.0)
    t.wb(t.mallory, "logs", str(job_id))
    t.wait_state(job_id)
    t.wb(t.mallory, "logs", str(job_id))
    t.wb(t.mallory, "show", str(job_id), "--json", "--env")
    try:  # protected_hardlinks (proc(5)) refuses a link to a file she cannot write
        hard = os.stat(t.root / "runs" / str(job_id) / "hard").st_ino
    except OSError:
        return 0
    return int(hard == os.stat("/etc/shadow").st_ino)


FIFO_JOB = (
    'cd "$WORKBENCH_RUN_DIR"; rm -f log; mkfifo log records.jsonl exit.json.tmp stop cancel;'
    " sleep 3"
)


def planted_fifos(t: Team) -> int:
    """Mallory's job turns its log, records file, stop and cancel files into FIFOs; the
    daemon, reading them as root, must neither block (it keeps serving) nor read through."""
    job_id = t.submit(t.mallory, "sh", "-c", FIFO_JOB)
    time.sleep(1.0)
    t.wb(t.mallory, "logs", str(job_id))
    t.wb(t.mallory, "cancel", str(job_id))
    t.wait_state(job_id)
    return 0


def cwd_attacks(t: Team) -> int:
    """A working directory mallory cannot read (the victim's home, /root), one that is a link
    to it, and a spec file that is a link to /etc/shadow: nothing runs there as anyone else,
    nothing of it is shown."""
    mallory_home = Path(os.path.expanduser(f"~{t.mallory}"))
    link = mallory_home / "into-victim"
    shadow = mallory_home / "spec.toml"
    for path, target in ((link, os.path.expanduser(f"~{t.victim}")), (shadow, "/etc/shadow")):
        if not path.is_symlink():
            path.symlink_to(target)
            os.lchown(path, *_ids(t.mallory))
    ids = []
    os.chmod(os.path.expanduser(f"~{t.victim}"), 0o700)  # useradd's mode may be 0755
    for cwd in (os.path.expanduser(f"~{t.victim}"), "/root", str(link)):
        done = t.wb(t.mallory, "submit", "--cwd", cwd, "--", "sh", "-c", "cat secret.txt; ls -a")
        if done.returncode == 0:
            ids.append(int(done.stdout.split()[0]))
    t.wb(t.mallory, "submit", "--spec", str(shadow))
    gained = 0
    for job_id in ids:
        job = t.wait_state(job_id)
        t.wb(t.mallory, "logs", str(job_id))
        gained += int(job["state"] == "succeeded")
    return gained


def _ids(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


EVIL_C = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void evil(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/preload.%d.%d", MARKS, (int)geteuid(), (int)getpid());
    FILE *f = fopen(path, "w");
    if (f) fclose(f);
}
"""


def environment_injection(t: Team) -> int:
    """LD_PRELOAD (a library whose constructor leaves a file named by its uid), LD_DEBUG with
    LD_DEBUG_OUTPUT, and PYTHONPATH with a sitecustomize.py doing the same, in the submitted
    environment; jobs that run a program and Python. Only mallory's own uid may appear: a
    mark of uid 0 is code of hers run as root."""
    marks = t.folder / f"marks-{uuid.uuid4().hex[:6]}"
    marks.mkdir(mode=0o777)
    marks.chmod(0o777)
    env = {
        "PYTHONPATH": str(marks),
        "LD_DEBUG": "files",
        "LD_DEBUG_OUTPUT": str(marks / "lddebug"),
    }
    (marks / "sitecustomize.py").write_text(
        f"import os\nopen(os.path.join({str(marks)!r}, f'python.{{os.geteuid()}}.{{os.getpid()}}'), 'w')\n"
    )
    if shutil.which("cc"):
        source = marks / "evil.c"
        source.write_text(EVIL_C)
        subprocess.run(
            [
                "cc",
                "-shared",
                "-fPIC",
                f'-DMARKS="{marks}"',
                "-o",
                str(marks / "evil.so"),
                str(source),
            ],
            check=True,
            capture_output=True,
        )
        env["LD_PRELOAD"] = str(marks / "evil.so")
    for path in marks.iterdir():
        path.chmod(0o755)
    job_id = int(
        t.wb(
            t.mallory, "submit", "--", "sh", "-c", "python3 -c pass; true", env=env
        ).stdout.split()[0]
    )
    t.wait_state(job_id)
    t.wb(t.mallory, "cancel", str(job_id), env=env)  # its client runs with them too
    root_marks = [
        p
        for p in marks.iterdir()
        if p.name.startswith(("preload.0.", "python.0."))
        or (p.name.startswith("lddebug") and p.lstat().st_uid == 0)
    ]
    own = [p for p in marks.iterdir() if p.name.startswith(("preload.", "python."))]
    if not own:  # the variables never reached even her own processes: the harness is broken
        raise RuntimeError("no mark of the injected environment at all")
    with open(f"/proc/{t.pid}/environ", "rb") as environ:
        daemon_env = environ.read().split(b"\0")
    unsafe = [v for v in daemon_env if v.startswith((b"LD_", b"PYTHON"))]
    return len(root_marks) + len(unsafe)


SIGNALS_JOB = """
import os, signal, subprocess
gained = 0
wrapper = os.getppid()
for pid in subprocess.run(["pgrep", "-f", "workbench"], capture_output=True, text=True).stdout.split():
    pid = int(pid)
    try:
        owner = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        continue
    if owner == os.geteuid():
        continue  # her own (this job's wrapper, a client of hers)
    for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
            gained += 1
            print("SIGNALLED", pid, owner)
        except (PermissionError, ProcessLookupError):
            pass
try:
    open(f"/proc/{wrapper}/mem", "rb").close()
    gained += 1
    print("WRAPPER MEMORY OPENED")
except OSError:
    pass
os.kill(wrapper, signal.SIGSTOP)
os.kill(wrapper, signal.SIGCONT)
print("GAINED", gained, flush=True)
import time
time.sleep(1.5)  # the wrapper pumps that line into the log before it is killed
os.kill(wrapper, signal.SIGKILL)
"""


def signals(t: Team) -> int:
    """Mallory's job signals every workbench process it can see (the daemon and launcher are
    root's: refused), opens its wrapper's memory (not dumpable once it switched: refused),
    stops, continues and kills its own wrapper (her job is lost; nobody else's)."""
    script = t.folder / f"signals-{uuid.uuid4().hex[:6]}.py"
    script.write_text(SIGNALS_JOB)
    script.chmod(0o644)
    job_id = t.submit(t.mallory, "python3", str(script))
    job = t.wait_state(job_id)
    log = t.wb(t.mallory, "logs", str(job_id)).stdout
    gained = log.count("SIGNALLED") + log.count("WRAPPER MEMORY OPENED")
    if "GAINED 0" not in log:
        gained += 1
    victim = t.job(t.victim_job)
    return gained + int(job["uid"] != _ids(t.mallory)[0]) + int(victim["state"] != "running")


def direct_reads(t: Team) -> int:
    """The victim's run folder, log, the store, the daemon's log, read directly; the victim's
    log, environment and audit details asked of the daemon."""
    victim_dir = t.root / "runs" / str(t.victim_job)
    for path in (victim_dir / "log", t.root / "state.db", t.root / "daemon.log"):
        done = subprocess.run(
            ["runuser", "-u", t.mallory, "--", "cat", str(path)], capture_output=True, text=True
        )
        t.outputs += [done.stdout]
    t.wb(t.mallory, "logs", str(t.victim_job))
    t.wb(t.mallory, "show", str(t.victim_job), "--json", "--env")
    t.wb(t.mallory, "show", str(t.victim_job))
    t.wb(t.mallory, "ls", "--all", "--json")
    t.wb(t.mallory, "audit", "--json")
    return 0


SHARE = """
import json, os, sys
from workbench.daemon.wire import ask
sock = sys.argv[1]
victim_job = int("VICTIM_JOB_ID")
victim_home = "VICTIM_HOME_PATH"
replies = []
# The victim's credentials: neither asked for nor replaced.
replies.append(ask(sock, {"op": "credentials", "id": victim_job}))
replies.append(ask(sock, {"op": "credentials", "id": victim_job, "values": {"X": "y"}}))
# Her share folder, then links, a FIFO and a world-writable folder offered as a version.
folder = ask(sock, {"op": "share-space"})["folder"]
fields = {"dataset": "loot", "version": 1, "group": "GROUP_NAME", "rows": 1,
          "rejected_rows": 0, "bytes": 1, "content_hash": "x", "schema": [["a", "TEXT"]],
          "sources": [], "created_at": 0}
version = os.path.join(folder, "loot", "v1")
os.makedirs(version, exist_ok=True)
part = os.path.join(version, "part-0.parquet")
for target in ("/etc/shadow", os.path.join(victim_home, "secret.txt")):
    if os.path.lexists(part):
        os.unlink(part)
    os.symlink(target, part)
    replies.append(ask(sock, {"op": "share", **fields}))
os.unlink(part)
os.mkfifo(part)
replies.append(ask(sock, {"op": "share", **fields}))
os.chmod(folder, 0o777)
replies.append(ask(sock, {"op": "share", **fields}))
os.chmod(folder, 0o711)
# A path of her choosing, a dataset name that climbs, another's share forgotten.
replies.append(ask(sock, {"op": "share", **fields, "dataset": "../../etc"}))
replies.append(ask(sock, {"op": "share", **fields, "folder": "/etc"}))
replies.append(ask(sock, {"op": "unshare", "dataset": "theirs"}))
print(json.dumps([bool(r.get("ok")) for r in replies]))
"""


def shares_and_credentials(t: Team) -> int:
    """Mallory asks for or replaces the victim's held credentials, offers links (to
    /etc/shadow, to the victim's file), a FIFO and a world-writable folder as a shared version,
    names a path or a climbing name, and forgets another's share. Each request granted counts
    as privilege gained."""
    import grp
    import pwd

    group = grp.getgrgid(pwd.getpwnam(t.mallory).pw_gid).gr_name
    code = (
        SHARE.replace("VICTIM_JOB_ID", str(t.victim_job))
        .replace("VICTIM_HOME_PATH", os.path.expanduser(f"~{t.victim}"))
        .replace("GROUP_NAME", group)
    )
    done = t.py(t.mallory, code)
    try:
        granted = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        t.outputs.append(done.stderr)
        return 1
    return sum(granted)


TEAM_RUN = """
import runpy
runpy.run_module("workbench.daemon.teamrun", run_name="__main__")
"""


def team_run_elsewhere(t: Team) -> int:
    """Mallory queues a command job that runs the built-in kinds' runner
    (`workbench.daemon.teamrun`) pointed at the victim's home and job: it runs as mallory, so
    it cannot open the victim's store; her log must hold none of the victim's secrets, and the
    victim's job must keep running."""
    victim_home = os.path.expanduser(f"~{t.victim}")
    script = t.folder / f"teamrun-{uuid.uuid4().hex[:6]}.py"
    script.write_text(TEAM_RUN)
    script.chmod(0o644)
    job_id = t.submit(
        t.mallory,
        *t.py_cmd,
        str(script),
        env={
            "WORKBENCH_TEAM_HOME": os.path.join(victim_home, ".local/share/workbench"),
            "WORKBENCH_TEAM_JOB": str(t.victim_job),
        },
    )
    t.wait_state(job_id)
    t.wb(t.mallory, "logs", str(job_id))
    return int(t.job(t.victim_job)["state"] != "running")


FLOOD = """
import socket, sys, time
held = []
for _ in range(200):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    held.append(s)
print("OPEN", flush=True)
time.sleep(8)  # then exits: its connections close, and her own later requests are served
"""


def idle_flood(t: Team) -> int:
    """Mallory holds 200 connections open and sends nothing; meanwhile the victim's `ls`
    must be answered within 5 s (her connections wait behind her own; the workers serve the
    others). A slow answer counts against "daemon serving after"."""
    script = t.folder / f"flood-{uuid.uuid4().hex[:6]}.py"
    script.write_text(FLOOD)
    script.chmod(0o644)
    flood = subprocess.Popen(
        ["runuser", "-u", t.mallory, "--", *t.py_cmd, str(script), str(t.socket)],
        stdout=subprocess.PIPE,
        text=True,
        env=t.env(t.mallory),
        cwd="/tmp",
    )
    try:
        assert flood.stdout is not None
        flood.stdout.readline()
        started = time.monotonic()
        done = t.wb(t.victim, "ls")
        if done.returncode != 0 or time.monotonic() - started > 5.0:
            t.stalled += 1
    finally:
        try:
            flood.wait(timeout=60)  # runuser does not pass a kill on: let it end by itself
        except subprocess.TimeoutExpired:
            flood.kill()
            flood.wait()
    return 0


ATTACKS: list[tuple[str, Callable[[Team], int]]] = [
    ("200 idle connections held open (others served meanwhile?)", idle_flood),
    ("malformed requests on the socket (18 kinds)", malformed_requests),
    ("another identity claimed in the request", claimed_identity),
    ("links planted in own run folder (shadow, victim's log)", planted_links),
    ("FIFOs planted in own run folder (log, records, stop, cancel)", planted_fifos),
    ("unreadable cwd, cwd link, spec link to /etc/shadow", cwd_attacks),
    ("LD_PRELOAD, LD_DEBUG_OUTPUT, PYTHONPATH in the job's env", environment_injection),
    ("signals to daemon, launcher, own wrapper; wrapper memory", signals),
    ("reading the victim's run folder, store, log, env, audit", direct_reads),
    ("victim's credentials; links, FIFO, open folder as a share", shares_and_credentials),
    ("the built-in kinds' runner pointed at the victim's home", team_run_elsewhere),
]


def run(repeat: int) -> tuple[list[list[str]], int]:
    """Every attack `repeat` times in one system home; (table rows, total of bad counts)."""
    if os.geteuid() != 0:
        return [[name, "skipped (needs root)", "-", "-", "-", "-"] for name, _ in ATTACKS], 0
    team = Team()
    rows, bad = [], 0
    try:
        for name, attack in ATTACKS:
            gained = read = down = 0
            before = team.tracebacks()
            for _ in range(repeat):
                seen = len(team.outputs)
                team.stalled = 0
                try:
                    gained += attack(team)
                except Exception as error:  # a broken harness counts against the attack's row
                    team.outputs.append(f"{type(error).__name__}: {error}")
                    gained += 1
                read += sum(any(s in text for s in SECRETS) for text in team.outputs[seen:])
                down += int(not team.serving() or team.stalled > 0)
            tracebacks = team.tracebacks() - before
            bad += gained + read + down + tracebacks
            rows.append(
                [name, str(repeat), str(gained), str(read), str(repeat - down), str(tracebacks)]
            )
    finally:
        team.close()
    return rows, bad


HEADERS = ["attack (as a second user)", "attempts", "privilege gained", "other users' data read"]
HEADERS += ["daemon serving after", "tracebacks"]
