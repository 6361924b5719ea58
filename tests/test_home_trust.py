"""A home is trusted only if it is yours; nothing inside it is opened through a symbolic link.

The attacks are staged as another user would: files owned by uid 65534 (nobody), and a fake
daemon served by a forked process that setuid()s to 65534 before it binds its sockets. Every
refusal is exit 3 with a message naming the path and what to fix, and the fake daemon must
receive nothing (a submit sends its whole environment)."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import stop_daemon, wait_for, workbench

from workbench.paths import Home
from workbench.trust import UntrustedHome, check_daemon_process, check_home, check_socket

NOBODY = 65534
SECRET = "AKIAFAKESECRET0123456789"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="staging another user needs root")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A shared 1777 folder, as /tmp is (removed with what was planted in it)."""
    folder = Path(tempfile.mkdtemp(prefix="wb-shared-", dir="/tmp"))
    os.chmod(folder, 0o1777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


class FakeDaemon:
    """A process of uid 65534 holding `home`'s daemon.lock (with its own pid in it) and bound
    to its intake.sock and daemon.sock: what a victim's client would talk to. `received()`
    counts the datagrams it got."""

    def __init__(self, home: Path, make_home: bool):
        self.home = home
        ready_r, ready_w = os.pipe()
        self.count_r, count_w = os.pipe()
        self.stop_r, stop_w = os.pipe()
        self.stop_w = stop_w
        self.pid = os.fork()
        if self.pid == 0:  # the attacker
            code = 1
            try:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                if make_home:
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
                import select

                while True:
                    ready, _, _ = select.select([*socks, self.stop_r], [], [], 30)
                    if not ready or self.stop_r in ready:
                        break
                    for sock in ready:
                        _, address = sock.recvfrom(1 << 20)
                        got += 1
                        if address:  # the forged answer the issue saw printed
                            import marshal

                            forged = {"token": None, "exit": 0, "stdout": "4242\n", "fallback": 0}
                            sock.sendto(marshal.dumps(forged), address)
                os.write(count_w, str(got).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(ready_w)
        os.close(count_w)
        assert os.read(ready_r, 1) == b"r", "the fake daemon did not start"
        os.close(ready_r)

    def received(self) -> int:
        os.write(self.stop_w, b"s")
        os.waitpid(self.pid, 0)
        text = os.read(self.count_r, 64)
        return int(text or b"-1")


def test_a_home_planted_by_another_user_gets_nothing_from_submit(shared: Path) -> None:
    home = shared / "victim"
    fake = FakeDaemon(home, make_home=True)
    env = {"WORKBENCH_HOME": str(home), "AWS_SECRET_ACCESS_KEY": SECRET}
    results = [
        workbench("submit", "--", "echo", "hi", env=env),
        workbench("submit", "--env", f"K={SECRET}", "--", "true", env=env),
        workbench("ls", env=env),
        workbench("daemon", "start", env=env),
        workbench("daemon", "run", env=env),
        workbench("daemon", "status", env=env),
        workbench("daemon", "stop", env=env),  # would SIGTERM whatever pid the lock names
    ]
    assert fake.received() == 0
    for result in results:
        assert result.returncode == 3, (result.args, result.stderr)
        assert f"WORKBENCH_HOME {home} is owned by uid {NOBODY}" in result.stderr
        assert "mkdir -m 700" in result.stderr
        assert "4242" not in result.stdout and "Traceback" not in result.stderr


def test_a_socket_and_lock_planted_in_a_home_of_ours_are_refused(shared: Path) -> None:
    """The home is ours (0700) but another user's daemon.lock and sockets sit in it (planted
    before it was closed, or moved in): still refused, nothing sent."""
    elsewhere = shared / "attacker"
    fake = FakeDaemon(elsewhere, make_home=True)
    home = shared / "victim"
    home.mkdir(mode=0o700)
    for name in ("daemon.lock", "intake.sock", "daemon.sock"):
        os.rename(elsewhere / name, home / name)  # the inode, its owner and its binding move
    env = {"WORKBENCH_HOME": str(home), "AWS_SECRET_ACCESS_KEY": SECRET}
    submitted = workbench("submit", "--", "true", env=env)
    assert fake.received() == 0
    assert submitted.returncode == 3, submitted.stderr
    assert f"{home}: daemon" in submitted.stderr and f"owned by uid {NOBODY}" in submitted.stderr
    assert not (home / "state.db").exists()


@pytest.mark.parametrize("name", ["state.db", "runs", "lake", "config.toml", "daemon.lock"])
@pytest.mark.parametrize("how", ["owned by another user", "writable by others", "a link"])
def test_a_planted_or_open_state_file_or_folder_is_refused(
    shared: Path, name: str, how: str
) -> None:
    home = shared / "home"
    home.mkdir(mode=0o700)
    created = workbench("ls", env={"WORKBENCH_HOME": str(home)})
    assert created.returncode == 0, created.stderr
    stop_daemon(Home(home))
    path = home / name
    if how == "a link":
        target = shared / "elsewhere"
        target.mkdir()
        shutil.rmtree(path, ignore_errors=True)
        path.unlink(missing_ok=True)
        path.symlink_to(target)
    else:
        if not path.exists():
            path.write_text("")
        if how == "owned by another user":
            os.chown(path, NOBODY, NOBODY)
        else:
            os.chmod(path, 0o777 if path.is_dir() else 0o666)
    env = {"WORKBENCH_HOME": str(home)}
    for words in (["submit", "--", "true"], ["ls"], ["daemon", "run"]):
        result = workbench(*words, env=env)
        assert result.returncode == 3, (words, result.stderr)
        assert f"WORKBENCH_HOME {home}: {name} " in result.stderr, result.stderr
        fix = {"owned by another user": "remove it", "writable by others": "chmod go-w"}
        assert fix.get(how, f"rm {path}") in result.stderr
        assert "Traceback" not in result.stderr


def test_a_shared_folder_itself_is_refused_and_a_private_subfolder_in_it_works(
    shared: Path,
) -> None:
    refused = workbench("submit", "--", "true", env={"WORKBENCH_HOME": str(shared)})
    assert refused.returncode == 3
    assert "can be written by other users (mode 1777)" in refused.stderr
    assert f"mkdir -m 700 {shared}/NAME" in refused.stderr
    mine = shared / "mine"
    env = {"WORKBENCH_HOME": str(mine)}
    try:
        done = workbench("submit", "--wait", "--", "true", env=env)
        assert done.returncode == 0, done.stderr
        assert stat.S_IMODE(mine.stat().st_mode) == 0o700
    finally:
        stop_daemon(Home(mine))


def test_a_folder_above_the_home_that_others_own_or_can_replace_is_refused(
    shared: Path,
) -> None:
    theirs = shared / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    owned = workbench("ls", env={"WORKBENCH_HOME": str(theirs / "home")})
    assert owned.returncode == 3 and f"the folder {theirs} above it is owned by uid" in owned.stderr
    open_folder = shared / "open"
    open_folder.mkdir()
    os.chmod(open_folder, 0o777)  # others can write, and no sticky bit
    opened = workbench("ls", env={"WORKBENCH_HOME": str(open_folder / "home")})
    assert opened.returncode == 3 and "is not sticky" in opened.stderr


def test_check_socket_refuses_another_users_socket_and_a_reply_from_one_is_dropped(
    shared: Path,
) -> None:
    """The check a client makes right before it sends, on its own (a socket swapped in after
    the home was checked); the socket's file belongs to whoever bound it."""
    fake = FakeDaemon(shared / "attacker", make_home=True)
    try:
        with pytest.raises(UntrustedHome, match=f"owned by uid {NOBODY}"):
            check_socket(shared / "attacker", shared / "attacker" / "intake.sock")
        with pytest.raises(UntrustedHome, match="owned by uid"):
            check_home(shared / "attacker")
    finally:
        assert fake.received() == 0
    check_daemon_process(shared, os.getpid())  # ours: passes
    check_daemon_process(shared, 2**22 + 12345)  # gone: passes (nothing listens)
    nobody = subprocess.Popen(["sleep", "30"], user=NOBODY)
    try:
        with pytest.raises(UntrustedHome, match=f"pid {nobody.pid}\\) runs as uid {NOBODY}"):
            check_daemon_process(shared, nobody.pid)
    finally:
        nobody.kill()
        nobody.wait()
    mine = shared / "mine.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(mine))
        os.chmod(mine, 0o600)
        check_socket(shared, mine)  # ours: passes
        os.chmod(mine, 0o666)
        with pytest.raises(UntrustedHome, match="chmod go-w"):
            check_socket(shared, mine)


def test_a_forged_reply_from_another_uid_is_not_printed(home: Home) -> None:
    """A daemon of ours runs; another user sends the waiting client a forged answer (it would
    have to guess the token-named address: here it is told it). The client takes only answers
    whose sender the kernel says is our uid."""
    from workbench.cli import entry

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0workbench-test-forged")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setuid(NOBODY)
            import marshal

            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
                out.sendto(
                    marshal.dumps({"token": "t", "exit": 0, "stdout": "4242\n"}),
                    "\0workbench-test-forged",
                )
            code = 0
        finally:
            os._exit(code)
    os.waitpid(pid, 0)
    started = time.monotonic()
    entry._GIVE_UP_S = 0.3  # type: ignore[attr-defined]
    try:
        assert entry._await_reply(sock, "t", home, os.getpid()) is None  # type: ignore[arg-type]
    finally:
        entry._GIVE_UP_S = 5.0  # type: ignore[attr-defined]
        sock.close()
    assert time.monotonic() - started < 5


def test_the_daemon_refuses_to_start_in_a_home_that_became_open(home: Home) -> None:
    os.chmod(home.root, 0o777)
    started = workbench("daemon", "start")
    assert started.returncode == 3 and "chmod go-w" in started.stderr
    os.chmod(home.root, 0o700)
    assert workbench("daemon", "start").returncode == 0
    wait_for(lambda: (home.root / "intake.sock").exists(), what="the intake socket")


def test_group_write_is_refused_unless_the_group_is_the_users_private_one(shared: Path) -> None:
    """With a umask of 002 (Debian, Ubuntu) a user's own files are group-writable by their
    private group (named as the user, no other member): accepted, as Debian's ssh does; a
    group that others belong to is refused."""
    import grp
    import pwd

    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid())
    if group.gr_name != user or any(member != user for member in group.gr_mem):
        pytest.skip("this user's primary group is not a private one")
    home = shared / "home"
    home.mkdir(mode=0o700)
    config = home / "config.toml"
    config.write_text("")
    os.chmod(config, 0o664)
    check_home(home)  # the private group may write: accepted
    os.chown(config, os.geteuid(), NOBODY)  # a group of other users
    with pytest.raises(UntrustedHome, match=r"config\.toml can be written by other users"):
        check_home(home)
