"""Team mode (issue 20, items 1-3): one system daemon, three real Unix users.

Run as root (here and in CI): a fixture adds three users with `useradd` (unique names, removed
with `userdel -r` after) and an admin group; a system home is installed in a folder under /tmp
(`WORKBENCH_SYSTEM_HOME`) and its daemon stopped by pid at the end. Each user runs the CLI
through `runuser`, so the daemon knows them only by the socket's peer credentials. Not root and
not CI: skipped with the reason; under CI=1 a missing privilege fails instead."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from workbench.daemon.identity import peer_for
from workbench.daemon.rights import PUBLIC_FIELDS, NotPermitted, Rights
from workbench.daemon.teamops import RequestError, pipeline_from_wire, request_from_wire
from workbench.db.store import Job
from workbench.jobmodel.resources import Resources
from workbench.jobmodel.states import JobState
from workbench.queue.spec import SpecError
from workbench.system import closed_to_others

# One pytest-xdist worker runs these (`--dist loadgroup`): they add and remove Unix users.
pytestmark = pytest.mark.xdist_group("unix-users")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from _team_attacks import daemon_python, runners  # noqa: E402  (the bench's attackers run as the same users)

NOT_PERMITTED = 4


def _need_root() -> None:
    missing = None
    if os.geteuid() != 0:
        missing = "team mode's tests add Unix users and run a root daemon: run them as root"
    elif not (shutil.which("useradd") and shutil.which("runuser")):
        missing = "useradd and runuser are needed"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"team mode tests cannot run in CI: {missing}")
        pytest.skip(missing)


@dataclass(frozen=True)
class Users:
    """The users of one test session: alice and bob (plain users), carol (in the admin
    group), `extra` a supplementary group alice is in; `wb` and `py` run the CLI and Python as
    any of them (see bench/_team_attacks.runners)."""

    alice: str
    bob: str
    carol: str
    admin_group: str
    extra: str
    wb: list[str]
    py: list[str]
    folder: Path


def _run_root(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def users() -> Iterator[Users]:
    _need_root()
    tag = uuid.uuid4().hex[:6]
    names = [f"wb{tag}{who}" for who in ("a", "b", "c")]
    admin, extra = f"wb{tag}adm", f"wb{tag}x"
    folder = Path(tempfile.mkdtemp(prefix="wbteam", dir="/tmp"))
    os.chmod(folder, 0o755)
    made: list[str] = []
    groups: list[str] = []
    try:
        for group in (admin, extra):
            _run_root("groupadd", group)
            groups.append(group)
        for name, more in zip(names, ([extra], [], [admin]), strict=True):
            _run_root("useradd", "-m", *(("-G", ",".join(more)) if more else ()), name)
            made.append(name)
        wb, py = runners(names[0])
        yield Users(*names, admin, extra, wb, py, folder)
    finally:
        for name in made:
            subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
            subprocess.run(["userdel", "-r", name], capture_output=True)
        for group in groups:
            subprocess.run(["groupdel", group], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class System:
    """An installed system home and its daemon."""

    root: Path
    pid: int
    users: Users

    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "WORKBENCH_SYSTEM_HOME": str(self.root),
            "LANG": "C.UTF-8",
            "COLUMNS": "200",
        }

    def wb(
        self, user: str, *args: str, cwd: str | None = None, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`workbench ARGS` as `user` (through runuser: its uid, groups, its home as cwd)."""
        home = cwd or os.path.expanduser(f"~{user}")
        return subprocess.run(
            ["runuser", "-u", user, "--", *self.users.wb, *args],
            capture_output=True,
            text=True,
            env={**self.env(), "HOME": os.path.expanduser(f"~{user}"), **(extra_env or {})},
            cwd=home,
            timeout=120,
        )

    def submit(self, user: str, *command: str, wait: bool = False) -> int:
        done = self.wb(user, "submit", *(["--wait"] if wait else []), "--", *command)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split()[0])

    def wait_ended(self, job_id: int, timeout: float = 60.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = json.loads(self.wb(self.users.carol, "show", str(job_id), "--json").stdout)
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return dict(job)
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} did not end")


def install_system(root: Path, users: Users, gpus: int = 0) -> System:
    """Install a system home at `root` and start its daemon; with `gpus`, the daemon samples
    that many simulated GPUs (a scenario file in the users' folder, WORKBENCH_FAKE_NVML)."""
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_HOME"}
    env["WORKBENCH_SYSTEM_HOME"] = str(root)
    if gpus:
        from workbench.telemetry import fakenvml

        scenario = fakenvml.write_scenario(users.folder / f"gpus-{root.name}.json", [{}] * gpus)
        os.chmod(scenario, 0o644)
        env["WORKBENCH_FAKE_NVML"] = str(scenario)
    done = subprocess.run(
        [
            daemon_python(users.folder),
            "-m",
            "workbench",
            "system",
            "install",
            "--admin-group",
            users.admin_group,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    pid = int((root / "daemon.lock").read_text())
    return System(root, pid, users)


def stop_system(system: System) -> None:
    """Stop the daemon by its pid, then remove the system home."""
    try:
        os.kill(system.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(system.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(system.pid, signal.SIGKILL)
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_HOME"}
    env["WORKBENCH_SYSTEM_HOME"] = str(system.root)
    subprocess.run(
        [sys.executable, "-m", "workbench", "system", "uninstall", "--purge"],
        capture_output=True,
        env=env,
        timeout=60,
    )


@pytest.fixture(scope="module")
def system(users: Users) -> Iterator[System]:
    installed = install_system(users.folder / "home", users)
    try:
        yield installed
    finally:
        stop_system(installed)


# ---- with real users ---------------------------------------------------------------------


def test_jobs_run_as_their_owners(system: System) -> None:
    """`id -u` in each job is its submitter's; its groups are theirs (supplementary too), its
    cwd theirs; the run folder and log are theirs, 0700 and 0600."""
    users = system.users
    script = "id -u; id -G; pwd"
    ids = {
        who: system.submit(who, "sh", "-c", script, wait=True) for who in (users.alice, users.bob)
    }
    for who, job_id in ids.items():
        log = system.wb(who, "logs", str(job_id))
        assert log.returncode == 0, log.stderr
        uid, groups, cwd = log.stdout.splitlines()[:3]
        entry = subprocess.run(["id", "-u", who], capture_output=True, text=True).stdout.strip()
        assert uid == entry
        wanted = subprocess.run(["id", "-G", who], capture_output=True, text=True).stdout.split()
        assert sorted(groups.split()) == sorted(wanted)
        assert cwd == os.path.expanduser(f"~{who}")
        run_dir = system.root / "runs" / str(job_id)
        for path, mode in ((run_dir, 0o700), (run_dir / "log", 0o600)):
            info = os.lstat(path)
            assert info.st_uid == int(entry), path
            assert stat.S_IMODE(info.st_mode) == mode, path
    shown = json.loads(system.wb(users.alice, "show", str(ids[users.alice]), "--json").stdout)
    assert shown["owner"] == users.alice and shown["uid"] == int(
        subprocess.run(["id", "-u", users.alice], capture_output=True, text=True).stdout
    )
    assert (
        users.extra
        in subprocess.run(["id", "-Gn", users.alice], capture_output=True, text=True).stdout
    )  # the supplementary group the job's `id -G` showed


def test_others_cannot_read_or_act(system: System) -> None:
    """bob cannot read alice's log, environment or spec, nor cancel, pause, resume, retry,
    remove or re-prioritise her job (exit 4, a message naming both); he sees its id, owner,
    state and resources in `ls`. carol (admin group) reads and cancels it."""
    users = system.users
    job_id = system.submit(users.alice, "sh", "-c", "echo alice-secret; sleep 60")
    listed = system.wb(users.bob, "ls")
    assert listed.returncode == 0, listed.stderr
    line = next(row for row in listed.stdout.splitlines() if row.split()[:1] == [str(job_id)])
    assert users.alice in line and "OWNER" in listed.stdout
    # The name made from her command line is hers to read: others see the program's name.
    assert "alice-secret" not in listed.stdout and line.split()[2] == "sh"
    public = json.loads(system.wb(users.bob, "show", str(job_id), "--json").stdout)
    assert set(public) <= {*PUBLIC_FIELDS, "owner", "events"}
    assert "argv" not in public and "cwd" not in public and "env" not in public
    for args in (
        ("logs", str(job_id)),
        ("show", str(job_id), "--json", "--env"),
        ("cancel", str(job_id)),
        ("pause", str(job_id)),
        ("resume", str(job_id)),
        ("retry", str(job_id)),
        ("rm", str(job_id)),
        ("priority", str(job_id), "9"),
    ):
        done = system.wb(users.bob, *args)
        assert done.returncode == NOT_PERMITTED, (args, done.stdout, done.stderr)
        assert f"job {job_id} is {users.alice}'s" in done.stderr, done.stderr
        assert users.bob in done.stderr and "alice-secret" not in done.stdout
    # The admin reads its log and cancels it.
    deadline = time.monotonic() + 30
    while "alice-secret" not in system.wb(users.carol, "logs", str(job_id)).stdout:
        assert time.monotonic() < deadline, "the job's log never showed its output"
        time.sleep(0.2)
    assert system.wb(users.carol, "cancel", str(job_id)).returncode == 0
    assert system.wait_ended(job_id)["state"] == "cancelled"
    # The daemon's cancel file (written by root) was the owner's to read: the why is logged.
    assert "[workbench] stopping:" in system.wb(users.alice, "logs", str(job_id)).stdout
    audit = system.wb(users.bob, "audit", "--json")
    entries = [e for e in json.loads(audit.stdout) if e["job_id"] == job_id]
    assert [(e["user"], e["action"]) for e in entries] == [
        (users.alice, "submit"),
        (users.carol, "cancel"),
    ]


def test_job_gets_its_owners_umask(system: System) -> None:
    """A user whose umask is 027 gets a job running with 027 (not the daemon's 077)."""
    users = system.users
    done = subprocess.run(
        ["runuser", "-u", users.bob, "--", "sh", "-c", 'umask 027; exec "$@"', "sh",
         *users.wb, "submit", "--wait", "--", "sh", "-c", "umask"],
        capture_output=True,
        text=True,
        env={**system.env(), "HOME": os.path.expanduser(f"~{users.bob}")},
        cwd="/tmp",
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    log = system.wb(users.bob, "logs", done.stdout.split()[0])
    assert log.stdout.strip() == "0027"


def test_owner_acts_on_own_job(system: System) -> None:
    """alice pauses, resumes, re-prioritises and cancels her own job."""
    users = system.users
    job_id = system.submit(users.alice, "sleep", "60")
    for args in (("priority", str(job_id), "5"), ("cancel", str(job_id))):
        done = system.wb(users.alice, *args)
        assert done.returncode == 0, done.stderr
    assert system.wait_ended(job_id)["state"] == "cancelled"


def test_a_restarted_daemon_adopts_users_jobs(system: System) -> None:
    """alice's running job outlives a restart of the system daemon (stopped by pid, started
    again by `system install`), and she cancels it through the new one."""
    users = system.users
    job_id = system.submit(users.alice, "sleep", "60")
    deadline = time.monotonic() + 30
    while json.loads(system.wb(users.alice, "show", str(job_id), "--json").stdout)["state"] != (
        "running"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.kill(system.pid, signal.SIGTERM)
    while True:
        try:
            os.kill(system.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline + 30
        time.sleep(0.05)
    system.pid = install_system(system.root, users).pid
    assert system.wb(users.alice, "cancel", str(job_id)).returncode == 0
    assert system.wait_ended(job_id)["state"] == "cancelled"


def _pipeline_file(system: System, user: str, text: str) -> Path:
    """A pipeline file in a new folder of `user`'s home, theirs (the batch reads it as them)."""
    folder = Path(os.path.expanduser(f"~{user}")) / f"pipe-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    path = folder / "pipeline.toml"
    path.write_text(text)
    for made in (folder, path):
        shutil.chown(made, user, user)
    return path


def _uid(user: str) -> int:
    return int(subprocess.run(["id", "-u", user], capture_output=True, text=True).stdout)


TWO_STAGES = """
[pipeline]
name = "teampipe"

[[stage]]
name = "first"
kind = "command"
argv = ["sh", "-c", "id -u; sleep 1"]

[[stage]]
name = "second"
kind = "command"
after = ["first"]
argv = ["sh", "-c", "id -u"]
"""


def test_batch_runs_through_the_system_daemon(system: System) -> None:
    """alice's `--batch` of a two-stage command pipeline goes to the system daemon (it said
    "runs on your own per-user daemon" and used one): both jobs are hers (`id -u` inside is
    her uid), recorded as one pipeline with their stages, the second started after the first
    ended; the exit code, `--json` events and the summary are those of a per-user batch."""
    users = system.users
    path = _pipeline_file(system, users.alice, TWO_STAGES)
    done = system.wb(users.alice, "--batch", str(path), "--json", cwd=str(path.parent))
    assert done.returncode == 0, done.stderr
    assert "per-user daemon" not in done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    head, summary = events[0], events[-1]
    assert head["type"] == "pipeline" and head["pipeline"] == "teampipe"
    assert summary["type"] == "summary" and summary["ok"] is True
    assert [(s["stage"], s["state"]) for s in summary["stages"]] == [
        ("first", "succeeded"),
        ("second", "succeeded"),
    ]
    assert {"state"} <= {e["type"] for e in events[1:-1]}
    first, second = (
        json.loads(system.wb(users.alice, "show", str(i), "--json").stdout) for i in head["jobs"]
    )
    for job, stage in ((first, "first"), (second, "second")):
        assert job["uid"] == _uid(users.alice) and job["owner"] == users.alice
        assert job["stage"] == stage and job["pipeline_id"] == head["id"]
        log = system.wb(users.alice, "logs", str(job["id"]))
        assert log.stdout.split() == [str(_uid(users.alice))], log.stdout
    assert second["after"] == [{"job": first["id"], "cond": "ok"}]
    assert second["started_at"] >= first["ended_at"]
    # Nothing ran on a per-user daemon of hers.
    own = Path(os.path.expanduser(f"~{users.alice}")) / ".local/share/workbench/state.db"
    assert not own.exists()
    # The plain summary, as per user: the pipeline's name, each stage, job and state.
    again = system.wb(users.alice, "--batch", str(path), cwd=str(path.parent))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == "pipeline teampipe"
    rows = [line.split() for line in again.stdout.splitlines()[1:]]
    assert [(row[0], row[1], row[3]) for row in rows] == [
        ("first", "job", "succeeded"),
        ("second", "job", "succeeded"),
    ]
    assert int(rows[0][2]) < int(rows[1][2]) and int(rows[0][2]) > head["jobs"][1]


FAILING_FIRST = """
[[stage]]
name = "boom"
kind = "command"
argv = ["sh", "-c", "echo broken >&2; exit 4"]

[[stage]]
name = "after"
kind = "command"
after = ["boom"]
argv = ["true"]
"""


def test_batch_failing_stage_blocks_the_next(system: System) -> None:
    """A first stage that fails makes the second never run (`blocked`) and `--batch` exit 1,
    as per user."""
    users = system.users
    path = _pipeline_file(system, users.alice, FAILING_FIRST)
    done = system.wb(users.alice, "--batch", str(path), "--json")
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["ok"] is False
    boom, after = summary["stages"]
    assert boom["state"] == "failed" and boom["exit_code"] == 4
    assert after["state"] == "blocked" and after["duration_s"] is None


@pytest.mark.parametrize(
    ("stage", "said"),
    [
        ('kind = "command"\nargv = ["true"]\nslurm = { partition = "gpu" }', "key 'slurm'"),
    ],
)
def test_batch_refuses_what_team_mode_cannot_run(system: System, stage: str, said: str) -> None:
    """A pipeline with Slurm options is refused at submit, exit 2, naming the file and the
    stage: nothing is queued, and it is not run per user instead. (Built-in stages run through
    the team queue: tests/test_team_share.py.)"""
    users = system.users
    text = '[[stage]]\nname = "start"\nkind = "command"\nargv = ["true"]\n\n'
    text += f'[[stage]]\nname = "load"\nafter = ["start"]\n{stage}\n'
    path = _pipeline_file(system, users.alice, text)
    (path.parent / "data.csv").write_text("a,b\n1,2\n")
    before = system.wb(users.alice, "audit", "--json").stdout
    done = system.wb(users.alice, "--batch", str(path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{path}: stage 'load': {said}" in done.stderr, done.stderr
    assert "team mode runs command stages" in done.stderr and "Traceback" not in done.stderr
    assert system.wb(users.alice, "audit", "--json").stdout == before
    own = Path(os.path.expanduser(f"~{users.alice}")) / ".local/share/workbench/state.db"
    assert not own.exists()
    if "slurm" in said:  # nor the whole pipeline sent to Slurm
        plain = _pipeline_file(system, users.alice, TWO_STAGES)
        done = system.wb(users.alice, "--batch", str(plain), "--executor", "slurm")
        assert done.returncode == 2 and "--executor slurm: team mode" in done.stderr, done.stderr
        assert system.wb(users.alice, "audit", "--json").stdout == before


def _child_of(pid: int) -> int:
    """The one child process of `pid` (the CLI that runuser started)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError(f"process {pid} started no child")


def test_pipeline_jobs_are_their_owners_to_cancel(system: System) -> None:
    """bob cannot cancel alice's pipeline job (exit 4); SIGTERM to her `--batch` cancels it,
    as Ctrl-C does per user, and the batch exits 143."""
    users = system.users
    text = '[pipeline]\nname = "long"\n\n[[stage]]\nname = "nap"\nkind = "command"\n'
    path = _pipeline_file(system, users.alice, text + 'argv = ["sleep", "60"]\n')
    batch = subprocess.Popen(
        ["runuser", "-u", users.alice, "--", *users.wb, "--batch", str(path), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**system.env(), "HOME": os.path.expanduser(f"~{users.alice}")},
        cwd=str(path.parent),
    )
    try:
        assert batch.stdout is not None
        head = json.loads(batch.stdout.readline())
        job_id = head["jobs"][0]
        deadline = time.monotonic() + 30
        while json.loads(system.wb(users.alice, "show", str(job_id), "--json").stdout)["state"] != (
            "running"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        refused = system.wb(users.bob, "cancel", str(job_id))
        assert refused.returncode == NOT_PERMITTED, refused.stderr
        assert f"job {job_id} is {users.alice}'s" in refused.stderr
        os.kill(_child_of(batch.pid), signal.SIGTERM)
        stdout, stderr = batch.communicate(timeout=60)
    finally:
        if batch.poll() is None:
            batch.kill()
    assert batch.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted" in stderr
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["stages"][0]["state"] == "cancelled"
    assert system.wait_ended(job_id)["state"] == "cancelled"


SECRET = "team-SECRET-held-in-memory-3391"
# Prints the secret's length if it starts as it should: the command never holds the secret.
SHOW_SECRET = 'case "$WB_TEAM_SECRET" in team-SECRET-*) echo "got-${#WB_TEAM_SECRET}";; esac'


def _secret_nowhere(system: System, job_id: int) -> None:
    """The secret is in no file of the system home and in nothing `show --env` gives."""
    for path in system.root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert SECRET.encode() not in path.read_bytes(), path
    shown = system.wb(system.users.alice, "show", str(job_id), "--json", "--env")
    assert shown.returncode == 0 and SECRET not in shown.stdout, shown.stdout


def test_secret_env_is_held_in_the_system_daemons_memory_only(system: System) -> None:
    """`submit --secret-env` was refused in team mode: the wire carried no credentials. Now the
    value goes to the system daemon over its socket, is held in its memory only and reaches
    the job; a daemon killed before the start leaves the job waiting for it, and only its
    owner can give it again (`workbench credentials ID`)."""
    users = system.users
    given = {"WB_TEAM_SECRET": SECRET}
    done = system.wb(
        users.alice, "submit", "--secret-env", "WB_TEAM_SECRET", "--wait", "--",
        "sh", "-c", SHOW_SECRET, extra_env=given,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first = int(done.stdout.split()[0])
    assert f"got-{len(SECRET)}" in system.wb(users.alice, "logs", str(first)).stdout
    _secret_nowhere(system, first)
    queued = system.wb(
        users.alice, "submit", "--secret-env", "WB_TEAM_SECRET", "--paused", "--",
        "sh", "-c", SHOW_SECRET, extra_env=given,
    )  # fmt: skip
    assert queued.returncode == 0, queued.stderr
    job_id = int(queued.stdout.split()[0])
    os.kill(system.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        try:
            os.kill(system.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    system.pid = install_system(system.root, users).pid
    assert system.wb(users.alice, "resume", str(job_id)).returncode == 0

    def reason() -> str:
        shown = system.wb(users.alice, "show", str(job_id), "--json")
        return str(json.loads(shown.stdout)["reason"])

    while "waits for its credentials" not in reason():
        assert time.monotonic() < deadline + 30, reason()
        time.sleep(0.2)
    assert "WB_TEAM_SECRET" in reason() and f"workbench credentials {job_id}" in reason()
    refused = system.wb(users.bob, "credentials", str(job_id), extra_env=given)
    assert refused.returncode == NOT_PERMITTED and users.bob in refused.stderr, refused.stderr
    lacking = system.wb(users.alice, "credentials", str(job_id))
    assert lacking.returncode == 2 and "WB_TEAM_SECRET" in lacking.stderr, lacking.stderr
    handed = system.wb(users.alice, "credentials", str(job_id), extra_env=given)
    assert handed.returncode == 0, handed.stderr
    assert system.wait_ended(job_id)["state"] == "succeeded"
    assert f"got-{len(SECRET)}" in system.wb(users.alice, "logs", str(job_id)).stdout
    _secret_nowhere(system, job_id)


CLAIM = """
import json, sys
from workbench.daemon.wire import ask
job = {"name": "claim", "kind": "command", "spec": {}, "cwd": "/tmp", "env": {"PATH": "/usr/bin:/bin"},
       "argv": ["id", "-u"], "uid": 0, "user": "root"}
print(json.dumps(ask(sys.argv[1], {"op": "submit", "jobs": [job], "uid": 0, "user": "root"})))
"""


def test_a_claimed_identity_is_ignored(system: System) -> None:
    """A request that says uid 0 and user root, sent by bob, queues bob's job, which runs as
    bob."""
    users = system.users
    script = system.users.folder / "claim.py"
    script.write_text(CLAIM)
    script.chmod(0o644)
    done = subprocess.run(
        [
            "runuser",
            "-u",
            users.bob,
            "--",
            *users.py,
            str(script),
            str(system.root / "gate" / "team.sock"),
        ],
        capture_output=True,
        text=True,
        env=system.env(),
        cwd="/tmp",
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["ok"], reply
    job_id = reply["ids"][0]
    bob_uid = subprocess.run(["id", "-u", users.bob], capture_output=True, text=True).stdout.strip()
    job = system.wait_ended(job_id)
    assert job["uid"] == int(bob_uid) and job["owner"] == users.bob
    assert system.wb(users.bob, "logs", str(job_id)).stdout.strip() == bob_uid


def test_per_user_mode_when_workbench_home_is_set(system: System, tmp_path: Path) -> None:
    """With WORKBENCH_HOME set, a user's client keeps to that home (nothing changes for one
    user), though a system daemon is installed."""
    users = system.users
    home = Path(os.path.expanduser(f"~{users.alice}")) / "own-home"
    done = system.wb(users.alice, "ls", extra_env={"WORKBENCH_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert "OWNER" not in done.stdout
    assert home.is_dir() and home.stat().st_uid != 0


# ---- the policy and the wire, alone (no root needed) ---------------------------------------


def _job(uid: int | None) -> Job:
    return Job(
        id=7, name="train", kind="command", state=JobState.RUNNING, spec={"argv": ["x"]},
        argv=["python", "train.py"], cwd="/home/a", env={"TOKEN": "t"}, priority=0,
        group="default", resources=Resources(gpus=1.0), retries=0, attempt=1, time_limit=None,
        fail_unrunnable=False, pipeline_id=None, stage=None, created_at=0.0, started_at=1.0,
        ended_at=None, exit_code=None, reason=None, pid=10, pid_start=1.0, granted_gpus=[0],
        intent=None, progress=None, progress_msg=None, peak_gpu_mem=None, mean_gpu_util=None,
        uid=uid,
    )  # fmt: skip


def test_rights_policy() -> None:
    """Owner and admins see details and act; others see only the public fields and are
    refused with a message naming the job, its owner and the right."""
    rights = Rights(admin_gid=4242)
    owner = peer_for(1234, 1234)
    other = peer_for(1235, 1235)
    admin = type(other)(0, 1236, 1236, "admin", frozenset({1236, 4242}))
    job = _job(1234)
    full = job.to_json(with_env=True)
    assert rights.view(owner, job, full)["argv"] == ["python", "train.py"]
    shown = rights.view(other, job, full)
    assert set(shown) == {*PUBLIC_FIELDS, "owner"} & {*full, "owner"}
    assert "env" not in shown and "argv" not in shown and "spec" not in shown
    assert rights.may_act(admin, job) and rights.sees_details(admin, job)
    with pytest.raises(NotPermitted, match=r"job 7 is .*may not cancel it"):
        rights.check_act(other, job, "cancel")
    with pytest.raises(NotPermitted, match="may not read its log"):
        rights.check_details(other, job, "log")
    assert Rights.from_group("no-such-group-here").admin_gid is None


def test_request_uid_is_the_peers() -> None:
    """The uid a request names is ignored; malformed fields are refused, naming them."""
    wire = {"name": "x", "kind": "command", "spec": {}, "cwd": "/tmp", "env": {},
            "argv": ["true"], "uid": 0}  # fmt: skip
    assert request_from_wire(wire, 1500).uid == 1500
    for bad, field in (
        ({**wire, "cwd": "relative"}, "cwd"),
        ({**wire, "argv": "true"}, "argv"),
        ({**wire, "env": {"A": 1}}, "env"),
        ({**wire, "resources": {"gpus": -1}}, "gpus"),
        ({**wire, "kind": "train"}, "command jobs only"),
        ({**wire, "executor": "slurm"}, "local"),
        ({**wire, "priority": True}, "priority"),
        ({**wire, "secret_env": ["A"]}, "secret_env"),
        ({**wire, "secret_env": {"A": 1}}, "secret_env"),
        ({**wire, "secret_env": {"A": "x" * 70_000}}, "secret_env"),
    ):
        with pytest.raises(RequestError, match=field):
            request_from_wire(bad, 1500)
    for name in ("A=B", "", "A\0"):
        with pytest.raises(SpecError, match="secret_env"):
            request_from_wire({**wire, "secret_env": {name: "v"}}, 1500)
    # Held apart from the stored environment, under a token of the daemon's making.
    held = request_from_wire({**wire, "env": {"A": "old"}, "secret_env": {"A": "s"}}, 1500)
    assert held.env == {} and held.credentials is not None
    assert held.credentials.values == {"A": "s"} and held.credentials.needed == ("A",)


def test_pipeline_request_links_only_earlier_jobs() -> None:
    """A pipeline's `submit` names the jobs each waits for by their position in the request:
    only earlier ones, in range, with a condition; each job needs its stage; every job is the
    peer's whatever the request says."""
    job = {"name": "x", "kind": "command", "spec": {}, "cwd": "/tmp", "env": {},
           "argv": ["true"], "uid": 0, "stage": "a"}  # fmt: skip
    head = {"name": "p", "path": "/tmp/p.toml"}
    second = {**job, "stage": "b", "after_index": [[0, "ok"]]}
    name, path, built = pipeline_from_wire({"pipeline": head, "jobs": [job, second]}, 1500)
    assert (name, path) == ("p", "/tmp/p.toml")
    assert [(r.stage, r.uid, links) for r, links in built] == [
        ("a", 1500, []),
        ("b", 1500, [(0, "ok")]),
    ]
    for links in ([[1, "ok"]], [[2, "ok"]], [[-1, "ok"]], [[0, "maybe"]], [["0", "ok"]], [0]):
        with pytest.raises(RequestError, match="after_index"):
            pipeline_from_wire({"pipeline": head, "jobs": [job, {**job, "after_index": links}]}, 1)
    for bad, field in (
        ({"pipeline": head, "jobs": [{**job, "stage": ""}]}, "stage"),
        ({"pipeline": head, "jobs": [{k: v for k, v in job.items() if k != "stage"}]}, "stage"),
        ({"pipeline": {"name": "p"}, "jobs": [job]}, "pipeline"),
        ({"pipeline": head, "jobs": []}, "jobs"),
        ({"pipeline": head, "jobs": [{**job, "kind": "ingest"}]}, "command jobs only"),
    ):
        with pytest.raises(RequestError, match=field):
            pipeline_from_wire(bad, 1)


@pytest.fixture()
def open_folder() -> Iterator[Path]:
    """A folder every user can reach (pytest's tmp_path is under a 0700 folder)."""
    folder = Path(tempfile.mkdtemp(prefix="wbopen", dir="/tmp"))
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_closed_to_others_names_the_first_closed_path(open_folder: Path) -> None:
    """The check `system install` makes of its Python: every folder above each path o+x, the
    path o+rx (o+r for a plain file), and everything in a tree too; the interpreter is judged
    where its links lead."""
    root = open_folder
    python = root / "opt" / "bin" / "python3"
    module = root / "opt" / "lib" / "site-packages" / "pkg" / "mod.py"
    cached = module.parent / "__pycache__" / "mod.pyc"
    for path in (python, module, cached):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    python.chmod(0o755)
    cached.chmod(0o600)  # Python reads around a cache it cannot read
    tree = module.parents[1]
    assert closed_to_others([python, root / "opt"], [tree]) is None
    (root / "opt" / "lib").chmod(0o700)
    assert closed_to_others([python], [tree]) == root / "opt" / "lib"
    (root / "opt" / "lib").chmod(0o755)
    module.chmod(0o600)
    assert closed_to_others([python], [tree]) == module
    module.chmod(0o644)
    python.chmod(0o750)
    assert closed_to_others([python], [tree]) == python
    python.chmod(0o755)
    hidden = root / "hidden"
    hidden.mkdir(mode=0o700)
    (hidden / "python3").write_text("")
    link = root / "venv" / "bin" / "python"
    link.parent.mkdir(parents=True)
    link.symlink_to(hidden / "python3")
    assert closed_to_others([link], [tree]) == hidden
    assert closed_to_others([root / "missing"], []) is None


INSTALL_WITH = """
import sys
sys.executable = sys.argv[1]
from workbench.cli.main import main
sys.exit(main(["system", "install", "--no-start"]))
"""


def test_install_refuses_a_python_others_cannot_run(open_folder: Path) -> None:
    """`system install` from a Python under a folder other users cannot enter (a venv in root's
    0700 home) is refused before anything is installed: exit 2, naming the folder and the
    fix. Every user's job failed at its start under such a daemon."""
    _need_root()
    closed = open_folder / "private"
    closed.mkdir(mode=0o700)
    python = closed / "python3"
    python.write_text("")
    python.chmod(0o755)
    home = open_folder / "system-home"
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_HOME"}
    done = subprocess.run(
        [sys.executable, "-c", INSTALL_WITH, str(python)],
        capture_output=True,
        text=True,
        env={**env, "WORKBENCH_SYSTEM_HOME": str(home), "WORKBENCH_SYSTEMD_DIR": str(home)},
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{closed} cannot be read by other users" in done.stderr
    assert f"chmod o+rx {closed}" in done.stderr and "Traceback" not in done.stderr
    assert not home.exists()


def test_root_writes_refuse_a_planted_fifo(tmp_path: Path) -> None:
    """A FIFO a user planted where the root daemon writes (a job's `cancel` file in its own run
    folder) is refused at once; it held the daemon's loop forever (found by the attacker's
    pass). An alarm turns a hang into a failure."""
    from workbench import safefs

    fifo = tmp_path / "cancel"
    os.mkfifo(fifo)
    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError()))
    signal.alarm(5)
    try:
        with pytest.raises(OSError) as raised:
            safefs.write_bytes(fifo, b"10\ncancelled")
        assert not isinstance(raised.value, TimeoutError)
        safefs.write_atomic(fifo, b"10\ncancelled")  # the cancel file's way: replaced
        assert fifo.read_bytes() == b"10\ncancelled"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_system_status_and_install_rights(system: System) -> None:
    """`system status --json` names the home and the daemon's pid; a user who is not root is
    refused `system install` and `uninstall` (exit 4, saying root does it)."""
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_HOME"}
    env["WORKBENCH_SYSTEM_HOME"] = str(system.root)
    done = subprocess.run(
        [sys.executable, "-m", "workbench", "system", "status", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    state = json.loads(done.stdout)
    assert state["installed"] and state["pid"] == system.pid and state["home"] == str(system.root)
    for action in ("install", "uninstall"):
        refused = system.wb(system.users.bob, "system", action)
        assert refused.returncode == NOT_PERMITTED, refused.stderr
        assert "by root" in refused.stderr
    assert system.wb(system.users.bob, "ls").returncode == 0  # still installed and serving


def test_a_request_nested_too_deep_is_malformed() -> None:
    """JSON nested 200,000 deep raised RecursionError past the handler (its thread died
    without an answer); it is a malformed frame (WireError), as a non-JSON one is."""
    import socket
    import struct

    from workbench.daemon.wire import WireError, read_frame

    body = b"[" * 200_000 + b"]" * 200_000
    ours, theirs = socket.socketpair()
    with ours, theirs:
        sender = __import__("threading").Thread(
            target=theirs.sendall, args=(struct.pack(">I", len(body)) + body,)
        )
        sender.start()
        with pytest.raises(WireError, match="not JSON"):
            read_frame(ours, 1 << 20)
        sender.join()


def test_a_forged_wrapper_record_is_not_adopted(tmp_path: Path) -> None:
    """A job's owner writes its run folder, and the job knows its launch token: a wrapper
    record naming a process of someone else's (here root's: this test) is not taken as the
    attempt, which the daemon would then signal. Needs root (the folder is given to
    nobody)."""
    from workbench.daemon import runner
    from workbench.daemon.executors.local import LocalExecutor

    _need_root()
    run_dir = tmp_path / "7"
    run_dir.mkdir()
    record = runner.WrapperRecord("token-7", os.getpid(), runner.process_start_time(os.getpid()))
    runner.write_wrapper(run_dir, record)
    executor = LocalExecutor("subreaper")
    assert executor.find("token-7", run_dir) is not None  # its own folder: adopted
    os.chown(run_dir, 65534, 65534)
    assert executor.find("token-7", run_dir) is None


def test_runas_helper_switches_and_execs(users: Users) -> None:
    """`python -m workbench.daemon.runas UID -- CMD` runs CMD as UID with that user's groups
    (and cannot get root back); a UID that names no user is refused (126)."""
    uid = subprocess.run(["id", "-u", users.alice], capture_output=True, text=True).stdout.strip()
    done = subprocess.run(
        [sys.executable, "-m", "workbench.daemon.runas", uid, "--", "id", "-u"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    wanted = subprocess.run(["id", "-G", users.alice], capture_output=True, text=True).stdout
    assert done.stdout.split()[0] == uid
    done = subprocess.run(
        [sys.executable, "-m", "workbench.daemon.runas", uid, "--", "id", "-G"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert sorted(done.stdout.split()) == sorted(wanted.split())
    missing = subprocess.run(
        [sys.executable, "-m", "workbench.daemon.runas", "4000000000", "--", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 126 and "names no user" in missing.stderr
