"""Files inside the home: no symbolic link is followed (run folders, their files, rm and
prune); run folders go with their job; what a killed writer left (a run folder after a killed
`rm`, a lake staging folder after a killed ingest) is swept at daemon start and by prune; a
removed job's secret is never left in the state backup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import stop_daemon, wait_for, workbench

from workbench import safefs
from workbench.catalog.lake import staging_name
from workbench.daemon.client import Client
from workbench.db.store import Store
from workbench.paths import Home


def _outside(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "outside"
    folder.mkdir()
    victim = folder / "victim.txt"
    victim.write_text("precious\n")
    return folder, victim


def test_a_log_planted_as_a_link_is_replaced_not_appended_through(
    home: Home, tmp_path: Path
) -> None:
    _, victim = _outside(tmp_path)
    first = workbench("submit", "--wait", "--", "echo", "one")
    assert first.returncode == 0, first.stderr
    held = workbench("submit", "--paused", "--", "echo", "job-two-output")
    assert held.stdout.strip() == "2"
    run = home.run_dir(2)
    run.mkdir()
    (run / "log").symlink_to(victim)
    (run / "exit.json").symlink_to(victim)
    assert workbench("resume", "2").returncode == 0
    assert workbench("wait", "2").returncode == 0
    assert victim.read_text() == "precious\n"
    assert not (run / "log").is_symlink()
    assert "job-two-output" in workbench("logs", "2").stdout


def test_a_run_folder_planted_as_a_link_is_replaced_and_rm_leaves_its_target(
    home: Home, tmp_path: Path
) -> None:
    folder, victim = _outside(tmp_path)
    home.run_dir(3).symlink_to(folder, target_is_directory=True)
    for word in ("one", "two", "three"):
        assert workbench("submit", "--", "echo", word).returncode == 0
    assert workbench("wait", "1", "2", "3").returncode == 0
    assert sorted(p.name for p in folder.iterdir()) == ["victim.txt"]  # nothing written there
    assert home.run_dir(3).is_dir() and not home.run_dir(3).is_symlink()
    assert (home.run_dir(3) / "exit.json").exists()
    assert "three" in workbench("logs", "3").stdout
    # A link planted after the job ended: rm removes the link, never what it points to.
    safefs.remove_tree(home.run_dir(3))
    home.run_dir(3).symlink_to(folder, target_is_directory=True)
    assert workbench("rm", "3").returncode == 0
    assert not os.path.lexists(home.run_dir(3))
    assert victim.read_text() == "precious\n"


def test_rm_removes_the_run_folder_and_prune_follows_no_link(home: Home, tmp_path: Path) -> None:
    folder, victim = _outside(tmp_path)
    assert (
        workbench(
            "submit", "--wait", "--cwd", str(tmp_path), "--", "sh", "-c", "echo o > out.txt"
        ).returncode
        == 0
    )
    assert workbench("submit", "--wait", "--", "true").returncode == 0
    assert home.run_dir(1).is_dir()
    assert workbench("rm", "1").returncode == 0
    assert not os.path.lexists(home.run_dir(1))
    (home.run_dir(2) / "link").symlink_to(folder, target_is_directory=True)
    (home.run_dir(2) / "file-link").symlink_to(victim)
    time.sleep(0.05)
    pruned = workbench("prune", "--older-than", "0.01s")
    assert pruned.returncode == 0, pruned.stderr
    assert not os.path.lexists(home.run_dir(2))
    assert victim.read_text() == "precious\n" and (folder / "victim.txt").exists()


def test_safefs_refuses_links_at_the_file_and_at_its_folder(tmp_path: Path) -> None:
    folder, victim = _outside(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "log").symlink_to(victim)
    linked = tmp_path / "linked"
    linked.symlink_to(folder, target_is_directory=True)
    for call in (
        lambda: safefs.open_file(run / "log", os.O_WRONLY | os.O_APPEND),
        lambda: safefs.read_bytes(run / "log"),
        lambda: safefs.write_bytes(linked / "exit.json", b"{}"),
        lambda: safefs.open_dir(linked),
    ):
        try:
            call()
        except OSError:
            continue
        raise AssertionError("a link was followed")
    safefs.write_atomic(run / "log", b"new")  # replaces the link itself
    assert (run / "log").read_bytes() == b"new" and victim.read_text() == "precious\n"
    safefs.make_dir(linked)
    assert linked.is_dir() and not linked.is_symlink() and (folder / "victim.txt").exists()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    try:
        safefs.read_bytes(fifo)
        raise AssertionError("a FIFO was read")
    except OSError as error:
        assert "not a regular file" in str(error)
    assert time.monotonic() - started < 2


def test_orphaned_run_folders_and_lake_staging_folders_are_swept(home: Home) -> None:
    """A `rm` killed after its commit leaves the run folder; a `kill -9` of an ingest leaves
    `lake/<name>/.tmp-*`: the next daemon start removes both, and so does prune. A staging
    folder whose writer still runs (a live job, a live process) stays."""
    client = Client(home)
    try:
        running = workbench("submit", "--", "sleep", "30").stdout.strip()
        wait_for(lambda: client.store.get(int(running)).state == "running", what="running")
        stop_daemon(home)
        orphan_run = home.run_dir(999)
        orphan_run.mkdir()
        (orphan_run / "log").write_text("secret output")
        dataset = home.lake / "penguins"
        dataset.mkdir()
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead_name = f".tmp-p{dead.pid}.1-{'a' * 8}"
        dead.wait()
        planted = {
            "dead job": dataset / f"{staging_name(998)}deadbeef",
            "dead process": dataset / dead_name,
            "live job": dataset / f"{staging_name(int(running))}cafe",
            "live process": dataset / f"{staging_name(None)}f00d",
            "unnamed, fresh": dataset / ".tmp-0123456789abcdef",
        }
        for path in planted.values():
            path.mkdir()
            (path / "part-0.parquet").write_bytes(b"x" * 1000)
        assert workbench("daemon", "start").returncode == 0
        wait_for(lambda: not orphan_run.exists(), what="the orphaned run folder to go")
        left = {name for name, path in planted.items() if path.exists()}
        assert left == {"live job", "live process", "unnamed, fresh"}
        assert workbench("cancel", running).returncode == 0
        assert workbench("wait", running).returncode != 0
        orphan_run.mkdir()
        assert workbench("prune", "--older-than", "1d").returncode == 0
        assert not orphan_run.exists()
        left = {name for name, path in planted.items() if path.exists()}
        assert left == {"live process", "unnamed, fresh"}
    finally:
        client.close()


SECRET = "hunter2-in-the-env"


def test_a_rm_killed_right_after_its_commit_leaves_no_secret_in_the_backup(home: Home) -> None:
    done = workbench("submit", "--wait", "--env", f"API_TOKEN={SECRET}", "--", "true")
    assert done.returncode == 0, done.stderr
    stop_daemon(home)
    store = Store.open(home.state_db)
    store.backup_to(home.root / "state.db.bak")
    store.close()
    assert SECRET.encode() in (home.root / "state.db.bak").read_bytes()
    # `rm` as the CLI does it, killed the moment its transaction has committed.
    script = (
        "import os\n"
        "from workbench.db.store import Store\n"
        "Store.purge_removed = lambda self, ids, **kw: os._exit(9)\n"
        f"Store.open(__import__('pathlib').Path({str(home.state_db)!r})).request(1, 'rm')\n"
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr
    backup = home.root / "state.db.bak"
    assert not backup.exists() or SECRET.encode() not in backup.read_bytes()
    # An rm that completes rewrites the backup without the removed rows.
    assert (
        workbench("submit", "--wait", "--env", f"API_TOKEN={SECRET}", "--", "true").returncode == 0
    )
    stop_daemon(home)
    assert SECRET.encode() in backup.read_bytes()  # the daemon's start backed it up
    assert workbench("rm", "2").returncode == 0
    assert backup.exists() and SECRET.encode() not in backup.read_bytes()


def test_a_fifo_named_config_toml_hangs_nothing_also_after_it_is_removed(
    home: Home, tmp_path: Path
) -> None:
    """Config files are opened non-blocking and refused unless regular: the daemon at start
    and on re-reading, submits (quick and full), and `ls` answer at once naming the file."""
    os.mkfifo(home.config, 0o600)
    started = time.monotonic()
    refused = workbench("daemon", "start", timeout=30)
    assert refused.returncode == 3, refused.stderr
    assert f"{home.config}: not a regular file" in refused.stderr
    for env in (None, {"WORKBENCH_NO_INTAKE": "1"}):
        submitted = workbench("submit", "--", "true", env=env, timeout=30)
        assert submitted.returncode == 2, submitted.stderr
        assert "config.toml: not a regular file" in submitted.stderr
    assert time.monotonic() - started < 25
    home.config.unlink()
    assert workbench("submit", "--wait", "--", "true", timeout=30).returncode == 0
    # One made while the daemon runs: it keeps its settings and keeps answering.
    os.mkfifo(home.config, 0o600)
    wait_for(
        lambda: (
            "config.toml changed but cannot be used" in home.daemon_log.read_text()
            or workbench("submit", "--", "true", timeout=30).returncode == 2
        ),
        what="the FIFO to be noticed",
    )
    quick = workbench("submit", "--", "true", timeout=30)
    assert quick.returncode == 2 and "not a regular file" in quick.stderr
    home.config.unlink()
    assert workbench("submit", "--wait", "--", "true", timeout=30).returncode == 0
    assert "Traceback" not in home.daemon_log.read_text()


def test_a_kill_9_of_an_ingest_leaves_a_staging_folder_that_prune_removes(
    client: Client, home: Home, tmp_path: Path
) -> None:
    """The real fault: an ingest job killed with SIGKILL while it writes its version leaves
    `lake/<name>/.tmp-j<id>-*`; once the job has ended, prune removes it (and so would the
    next daemon start)."""
    import duckdb

    from workbench.daemon.executors.containment import pids_with_token, signal_each
    from workbench.queue.requests import build_request

    big = tmp_path / "big.csv"
    try:
        duckdb.connect().execute(
            "COPY (SELECT range AS id, md5(range::VARCHAR) AS h FROM range(1500000))"
            f" TO '{big}' (HEADER)"
        )
        request = build_request(
            {"kind": "ingest", "source": [str(big)], "dataset": "big"}, tmp_path, "test"
        )
        job_id = client.submit(request)
        staging = home.lake / "big"
        found = wait_for(
            lambda: list(staging.glob(f".tmp-j{job_id}-*")) if staging.is_dir() else [],
            timeout=60,
            interval=0.005,
            what="the ingest's staging folder",
        )
        token = client.store.get(job_id).launch_token
        assert token
        signal_each(list(pids_with_token(token)), signal.SIGKILL)
        wait_for(lambda: client.store.get(job_id).state in ("failed", "succeeded"), what="end")
        if client.store.get(job_id).state == "succeeded":
            pytest.skip("the ingest finished before it could be killed")
        assert any(p.exists() for p in found)  # left behind by the killed writer
        assert workbench("prune", "--older-than", "1d").returncode == 0
        assert not list(staging.glob(".tmp-*"))
    finally:
        big.unlink(missing_ok=True)
