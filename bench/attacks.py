"""Attacks on a home and bad inputs at submit, each tried `--repeat` times against the real CLI
and daemon in a fresh WORKBENCH_HOME: another user's planted daemon (lock and socket) or state
files, links planted in run folders, strings exec cannot carry, `wait` on a removed job,
pipelines past the recursion limit, a FIFO as config.toml, what a killed ingest or `rm` left.

Each row counts the attempts, those whose outcome was wrong (the attack worked), jobs lost or
run twice, processes left behind, and Python tracebacks (in any output and daemon.log). Every
count but the attempts must be 0. Another user is staged as uid 65534 (needs root; rows that
need it are skipped otherwise).
Usage: python bench/attacks.py [--tiny] [--repeat N]"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.append(str(HERE))
from _results import table, write_section  # noqa: E402

NOBODY = 65534
SECRET = "AKIA-BENCH-SECRET-0123456789"
# With --before DIR: PYTHONPATH for every process started, so that they run another checkout's
# `workbench` (the code before this round); they run from a folder outside the checkout.
EXTRA_ENV: dict[str, str] = {}
CWD = "/tmp"


def _env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **EXTRA_ENV, "WORKBENCH_HOME": str(root), **(extra or {})}


class Trial:
    """One attempt's home, the outputs it saw, and its verdict."""

    def __init__(self) -> None:
        self.shared = Path(tempfile.mkdtemp(prefix="wb-attack-", dir="/tmp"))
        os.chmod(self.shared, 0o1777)
        self.root = self.shared / "home"
        self.outputs: list[str] = []
        self.lost = 0
        self.twice = 0

    def wb(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "workbench", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_env(self.root, env),
            cwd=CWD,
        )
        self.outputs += [done.stdout, done.stderr]
        return done

    def tracebacks(self) -> int:
        log = self.root / "daemon.log"
        texts = [*self.outputs, log.read_text(errors="replace") if log.is_file() else ""]
        return sum(text.count("Traceback") for text in texts)

    def count_jobs(self) -> None:
        """Jobs of this home settled as lost (`lost: ...` reasons) or started more than once."""
        from workbench.db.store import Store, StoreError

        db = self.root / "state.db"
        if not db.is_file() or db.stat().st_uid != os.geteuid():
            return
        try:
            store = Store.open(db, check=False)
        except StoreError:
            return
        try:
            jobs = store.list_jobs()
        finally:
            store.close()
        self.lost += sum(1 for job in jobs if (job.reason or "").startswith("lost"))
        self.twice += sum(1 for job in jobs if job.attempt > 1)

    def close(self) -> int:
        """Stop the home's daemon and jobs; returns how many processes were left to kill."""
        from workbench.daemon.link import lock_holder
        from workbench.paths import Home

        try:
            pid = lock_holder(Home(self.root))
        except OSError:
            pid = None
        if pid and pid > 0:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
        left = _processes_of(self.root)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.shared, ignore_errors=True)
        return len(left)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _processes_of(root: Path) -> list[int]:
    """Processes (not this one) whose environment names `root` as WORKBENCH_HOME."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if (
                proc.pid != os.getpid()
                and proc.environ().get("WORKBENCH_HOME") == str(root)
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


def _fake_daemon(home: Path) -> tuple[int, int, int]:
    """A process of uid 65534 that made `home` and holds its lock and sockets; returns (pid,
    the pipe to stop it, the pipe it reports the datagrams it got on)."""
    ready_r, ready_w = os.pipe()
    count_r, count_w = os.pipe()
    stop_r, stop_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            home.mkdir(mode=0o777)
            os.chmod(home, 0o777)
            lock = os.open(home / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(lock, fcntl.LOCK_EX)
            os.write(lock, str(os.getpid()).encode())
            socks = []
            for name in ("intake.sock", "daemon.sock"):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.bind(str(home / name))
                os.chmod(home / name, 0o777)
                socks.append(sock)
            os.write(ready_w, b"r")
            got = 0
            while True:
                ready, _, _ = select.select([*socks, stop_r], [], [], 60)
                if not ready or stop_r in ready:
                    break
                for sock in ready:
                    sock.recv(1 << 20)
                    got += 1
            os.write(count_w, str(got).encode())
            code = 0
        finally:
            os._exit(code)
    os.read(ready_r, 1)
    return pid, stop_w, count_r


# ---- the attacks: each returns True when the attack failed (the outcome was right) ---------


def planted_daemon(t: Trial) -> bool:
    pid, stop_w, count_r = _fake_daemon(t.root)
    done = t.wb("submit", "--", "echo", "hi", env={"AWS_SECRET_ACCESS_KEY": SECRET})
    os.write(stop_w, b"s")
    os.waitpid(pid, 0)
    received = int(os.read(count_r, 64) or b"-1")
    return done.returncode == 3 and received == 0 and "owned by uid" in done.stderr


def planted_state(t: Trial) -> bool:
    t.root.mkdir(mode=0o700)
    ok = True
    for name, how in (("state.db", "chmod"), ("runs", "chown"), ("lake", "chmod")):
        path = t.root / name
        if name == "state.db":
            path.write_text("")
        else:
            path.mkdir(exist_ok=True)
        if how == "chmod":
            os.chmod(path, 0o777)
        else:
            os.chown(path, NOBODY, NOBODY)
        done = t.wb("submit", "--", "true")
        ok = ok and done.returncode == 3 and f"{name} " in done.stderr
        if name == "state.db":
            path.unlink()
        else:
            path.rmdir()
    return ok


def linked_log(t: Trial) -> bool:
    victim = t.shared / "victim"
    victim.write_text("precious\n")
    held = t.wb("submit", "--paused", "--", "echo", "out").stdout.strip()
    run = t.root / "runs" / held
    run.mkdir()
    (run / "log").symlink_to(victim)
    t.wb("resume", held)
    waited = t.wb("wait", held)
    return waited.returncode == 0 and victim.read_text() == "precious\n"


def linked_run_folder(t: Trial) -> bool:
    outside = t.shared / "outside"
    outside.mkdir()
    t.wb("ls")
    (t.root / "runs" / "1").symlink_to(outside, target_is_directory=True)
    t.wb("submit", "--wait", "--", "echo", "out")
    untouched = list(outside.iterdir()) == []
    t.wb("rm", "1")
    return untouched and not os.path.lexists(t.root / "runs" / "1") and outside.is_dir()


BAD_SPECS = [
    'argv = ["echo", "a\\u0000b"]',
    'argv = ["true"]\nenv = { K = "a\\u0000b" }',
    'argv = ["true"]\nenv = { "K\\u0000" = "v" }',
    'argv = ["true"]\ncwd = "/tmp\\u0000x"',
    'argv = ["true"]\nenv = { "" = "v" }',
    'argv = ["true"]\nenv = { "A=B" = "v" }',
]


def bad_strings(t: Trial) -> bool:
    t.root.mkdir(mode=0o700)
    ok = True
    for keys in BAD_SPECS:
        spec = t.shared / "job.toml"
        spec.write_text(f'kind = "command"\n{keys}\n')
        pipeline = t.shared / "p.toml"
        pipeline.write_text(
            f'[pipeline]\nname = "p"\n[[stage]]\nname = "s"\nkind = "command"\n{keys}\n'
        )
        for words in (["submit", "--spec", str(spec)], ["--batch", str(pipeline)]):
            for env in (None, {"WORKBENCH_NO_INTAKE": "1"}):
                done = t.wb(*words, env=env)
                ok = ok and done.returncode == 2 and str(t.shared) in done.stderr
    listed = t.wb("ls", "--json")
    return ok and listed.stdout.strip() in ("[]", "")


def wait_removed(t: Trial) -> bool:
    held = t.wb("submit", "--paused", "--", "true").stdout.strip()
    waiter = subprocess.Popen(
        [sys.executable, "-m", "workbench", "wait", held],
        env=_env(t.root),
        cwd=CWD,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    t.wb("rm", held)
    out, err = waiter.communicate(timeout=30)
    t.outputs += [out, err]
    return waiter.returncode != 0 and "removed before it ended" in err


def long_pipelines(t: Trial) -> bool:
    t.root.mkdir(mode=0o700)
    ok = True
    for stages, cycle in ((1200, False), (2000, True)):
        lines = ['[pipeline]\nname = "long"\n']
        for i in reversed(range(stages)):
            after = f"s{i - 1}" if i else (f"s{stages - 1}" if cycle else "")
            lines.append(f'[[stage]]\nname = "s{i}"\nkind = "command"\nargv = ["true"]')
            lines.append(f'after = ["{after}"]\n' if after else "")
        path = t.shared / "long.toml"
        path.write_text("\n".join(lines))
        probe = (
            "import sys\nfrom pathlib import Path\nfrom workbench.queue.pipeline import load_pipeline\n"
            "from workbench.queue.spec import SpecError\n"
            f"try:\n    p = load_pipeline(Path({str(path)!r}))\n"
            "    print([s.name for s in p.stages] == [f's{i}' for i in range(len(p.stages))])\n"
            "except SpecError as e:\n    print('refused', 'cycle' in str(e))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            timeout=120,
            env=_env(t.root),
            cwd=CWD,
        )
        t.outputs += [done.stdout, done.stderr]
        ok = ok and done.stdout.strip() == ("refused True" if cycle else "True")
    return ok


def fifo_config(t: Trial) -> bool:
    t.root.mkdir(mode=0o700)
    os.mkfifo(t.root / "config.toml", 0o600)
    started = time.monotonic()
    try:
        first = t.wb("submit", "--", "true", timeout=20)
        daemon = t.wb("daemon", "start", timeout=20)
    except subprocess.TimeoutExpired:
        return False
    (t.root / "config.toml").unlink()
    after = t.wb("submit", "--wait", "--", "true", timeout=30)
    return (
        first.returncode == 2
        and daemon.returncode == 3
        and after.returncode == 0
        and time.monotonic() - started < 30
    )


def orphans(t: Trial) -> bool:
    t.wb("submit", "--wait", "--", "true")
    t.wb("daemon", "stop")
    staging = t.root / "lake" / "d" / ".tmp-j77-0123abcd"  # job 77: not in the store
    staging.mkdir(parents=True)
    (staging / "part-0.parquet").write_bytes(b"x" * 100_000)
    run = t.root / "runs" / "77"
    run.mkdir()
    t.wb("daemon", "start")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (staging.exists() or run.exists()):
        time.sleep(0.05)
    return not staging.exists() and not run.exists()


def killed_rm(t: Trial) -> bool:
    t.wb("submit", "--wait", "--env", f"API_TOKEN={SECRET}", "--", "true")
    t.wb("daemon", "stop")
    t.wb("daemon", "start")
    t.wb("daemon", "stop")
    backup = t.root / "state.db.bak"
    had = SECRET.encode() in backup.read_bytes()
    script = (
        "import os\nfrom pathlib import Path\nfrom workbench.db.store import Store\n"
        "Store.purge_removed = lambda self, ids, **kw: os._exit(9)\n"
        f"Store.open(Path({str(t.root / 'state.db')!r})).request(1, 'rm')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=_env(t.root), cwd=CWD
    )
    t.outputs.append(done.stderr)
    return had and (not backup.exists() or SECRET.encode() not in backup.read_bytes())


ATTACKS: list[tuple[str, Callable[[Trial], bool], bool]] = [
    (
        "another user's daemon.lock + intake.sock planted (submit sends its env?)",
        planted_daemon,
        True,
    ),
    ("state.db / runs / lake world-writable or another user's", planted_state, True),
    ("runs/N/log a link to a file outside, before the job starts", linked_log, False),
    ("runs/N a link to a folder outside; then rm N", linked_run_folder, False),
    (
        "NUL in argv/env/cwd, empty or A=B env name (spec, pipeline; quick, full)",
        bad_strings,
        False,
    ),
    ("wait on a job removed while waited on", wait_removed, False),
    ("1,200-stage chain in reverse order; 2,000-stage cycle", long_pipelines, False),
    ("a FIFO named config.toml (daemon, submits, then removed)", fifo_config, False),
    ("orphaned lake .tmp-* and run folder (killed ingest, killed rm)", orphans, False),
    ("rm killed right after its commit: secret in state.db.bak?", killed_rm, False),
]


def run_attack(attack: Callable[[Trial], bool], repeat: int) -> list[int]:
    """[worked, jobs lost, run twice, processes left, tracebacks] over `repeat` attempts."""
    counts = [0, 0, 0, 0, 0]
    for _ in range(repeat):
        trial = Trial()
        try:
            if not attack(trial):
                counts[0] += 1
        except Exception as error:  # an attack that broke the harness counts as worked
            trial.outputs.append(f"{type(error).__name__}: {error}")
            counts[0] += 1
        finally:
            counts[4] += trial.tracebacks()
            trial.count_jobs()
            counts[1] += trial.lost
            counts[2] += trial.twice
            counts[3] += trial.close()
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="each attack once, results not written")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--before",
        metavar="DIR",
        help="also run each attack once with PYTHONPATH=DIR (a checkout of the code before)",
    )
    parser.add_argument(
        "--team",
        action="store_true",
        help="the attacker's pass on team mode instead (a second user against a system daemon)",
    )
    args = parser.parse_args()
    repeat = 1 if args.tiny else args.repeat
    if args.team:
        return team_pass(repeat, args.tiny)
    rows = []
    bad_total = 0
    for name, attack, needs_root in ATTACKS:
        if needs_root and os.geteuid() != 0:
            rows.append([name, "skipped (needs root)", "-", "-", "-", "-", "-"])
            continue
        counts = run_attack(attack, repeat)
        bad_total += sum(counts)
        row = [name, str(repeat), *map(str, counts)]
        if args.before:
            EXTRA_ENV["PYTHONPATH"] = str(Path(args.before).resolve())
            try:
                before = run_attack(attack, 1)
            finally:
                EXTRA_ENV.clear()
            row.append(f"worked {before[0]}/1, lost {before[1]}, tracebacks {before[4]}")
        rows.append(row)
    headers = ["attack", "attempts", "worked", "jobs lost", "run twice", "processes left"]
    headers.append("tracebacks")
    if args.before:
        headers.append("before this round (1 attempt)")
    body = table(headers, rows)
    body += (
        "\n\nEach attempt in a fresh home inside a shared 1777 folder, through the real CLI and"
        ' daemon; "worked" counts attempts whose outcome was wrong (exit code, message, a file'
        " written through a link, a datagram received by the planted daemon). Another user is"
        f" uid {NOBODY}."
        + (
            " The last column ran the same attacks against the code before this round (its"
            " checkout on PYTHONPATH)."
            if args.before
            else ""
        )
        + " The machine was shared with other developers and loaded (load average"
        f" {os.getloadavg()[0]:.1f} at the end)."
    )
    print(body)
    if not args.tiny:
        command = f"python bench/attacks.py --repeat {repeat}"
        if args.before:
            command += " --before CHECKOUT"
        write_section("attacks on a home", command, body)
    return 1 if bad_total else 0


def team_pass(repeat: int, tiny: bool) -> int:
    """`--team`: the attacks of `_team_attacks` as a second, unprivileged user; its table in
    bench/RESULTS.md (section "attacks in team mode") unless tiny."""
    import _team_attacks

    rows, bad = _team_attacks.run(repeat)
    body = table(_team_attacks.HEADERS, rows)
    gained = sum(int(r[2]) for r in rows if r[2].isdigit())
    read = sum(int(r[3]) for r in rows if r[3].isdigit())
    body += (
        f"\n\nPrivilege gained {gained}, other users' data read {read}. One system daemon"
        " (root) installed in a folder under /tmp; the victim's job runs throughout with secrets"
        " in its environment, log and working directory; the attacker is a second unprivileged"
        ' user (runuser). "privilege gained" counts anything of the attacker\'s choosing done as'
        ' root or as the victim; "data read" counts outputs the attacker saw holding a secret.'
        " The machine was shared with other developers and loaded (load average"
        f" {os.getloadavg()[0]:.1f} at the end)."
    )
    print(body)
    if not tiny:
        write_section(
            "attacks in team mode", f"python bench/attacks.py --team --repeat {repeat}", body
        )
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
