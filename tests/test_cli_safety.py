"""The CLI under bad input and hostile conditions: numbers, directories, secrets, damaged or full
stores, bytes that are not UTF-8, the audit trail, listing and pruning."""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import imports_of, workbench

from workbench.db.store import Event, JobRequest, Store, StoreFull
from workbench.paths import Home
from workbench.present import job_details

SECRET = "hunter2-8c1f-unique"


def submit(*args: str, env: dict[str, str] | None = None) -> int:
    result = workbench("submit", *args, env=env)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip())


# ---- numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["submit", "--gpus", "nan", "--", "true"], "--gpus"),
        (["submit", "--cpus", "nan", "--", "true"], "--cpus"),
        (["submit", "--gpus", "inf", "--", "true"], "--gpus"),
        (["submit", "--cpus", "inf", "--", "true"], "--cpus"),
        (["submit", "--gpus", "-1", "--", "true"], "--gpus"),
        (["submit", "--mem", "99999999999999999999999TiB", "--", "true"], "--mem"),
        (["submit", "--gpu-mem", "1e999GiB", "--", "true"], "--gpu-mem"),
        (["submit", "--priority", "99999999999999999999", "--", "true"], "--priority"),
        (["submit", "--retries", "-1", "--", "true"], "--retries"),
        (["submit", "--time-limit", "-5", "--", "true"], "--time-limit"),
        (["submit", "--time-limit", "99999999999d", "--", "true"], "--time-limit"),
        (["wait", "1", "--timeout", "-5"], "--timeout"),
        (["submit", "--after", "99999999999999999999", "--", "true"], "--after"),
        (["submit", "--after-any", "0", "--", "true"], "--after-any"),
        (["show", "99999999999999999999"], "id"),
        (["priority", "1", "99999999999999999999"], "priority"),
        (["logs", "1", "-n", "-3"], "--lines"),
        (["group", "g", "--parallel", "nan"], "--parallel"),
        (["prune", "--older-than", "inf"], "--older-than"),
        (["sql", "SELECT 1", "--limit", "99999999999999999999"], "--limit"),
        (["ingest", "x.csv", "--dataset", "d", "--cpus", "nan"], "--cpus"),
        (["ingest", "x.csv", "--dataset", "d", "--max-rejects", "-1"], "--max-rejects"),
    ],
)
def test_bad_numbers_are_refused_naming_the_flag(home: Home, args: list[str], named: str) -> None:
    result = workbench(*args)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr
    assert not home.state_db.exists() or Store.open(home.state_db).list_jobs() == []


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("gpus = nan", "gpus"),
        ("cpus = inf", "cpus"),
        ("cpus = -inf", "cpus"),
        ("priority = 99999999999999999999", "priority"),
        ('mem = "99999999999999999999999TiB"', "mem"),
        ("time_limit = -5", "time_limit"),
        ("time_limit = inf", "time_limit"),
        ("retries = -1", "retries"),
    ],
)
def test_bad_numbers_in_a_spec_file_name_the_key(
    home: Home, tmp_path: Path, line: str, key: str
) -> None:
    spec = tmp_path / "job.toml"
    spec.write_text(f'kind = "command"\nargv = ["true"]\n{line}\n')
    result = workbench("submit", "--spec", str(spec))
    assert result.returncode == 2, result.stderr
    assert f"'{key}'" in result.stderr and str(spec) in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_numbers_in_config_name_the_key(home: Home) -> None:
    home.config.write_text('[retention]\njobs = "-5d"\n')
    result = workbench("prune")
    assert result.returncode == 2 and "[retention]: key 'jobs'" in result.stderr


# ---- working directory and home ------------------------------------------------------------


def test_submit_checks_cwd(home: Home, tmp_path: Path) -> None:
    missing = workbench("submit", "--cwd", "/nonexistent", "--", "true")
    assert missing.returncode == 2 and "--cwd /nonexistent: no such directory" in missing.stderr
    a_file = tmp_path / "file"
    a_file.write_text("")
    not_dir = workbench("submit", "--cwd", str(a_file), "--", "true")
    assert not_dir.returncode == 2 and "is not a directory" in not_dir.stderr
    spec = tmp_path / "job.toml"
    spec.write_text('kind = "command"\nargv = ["true"]\ncwd = "gone"\n')
    from_spec = workbench("submit", "--spec", str(spec))
    assert from_spec.returncode == 2 and "key 'cwd'" in from_spec.stderr
    assert not home.state_db.exists() or Store.open(home.state_db).list_jobs() == []


def test_home_is_created_private_and_an_existing_mode_is_kept(tmp_path: Path) -> None:
    fresh = Path(tempfile.mkdtemp(prefix="wb-", dir="/tmp")) / "new-home"
    shared = Path(tempfile.mkdtemp(prefix="wb-", dir="/tmp"))
    os.chmod(shared, 0o755)
    try:
        created = workbench("ls", env={"WORKBENCH_HOME": str(fresh)})
        assert created.returncode == 0, created.stderr
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
        assert "readable by other users" not in created.stderr
        listed = workbench("ls", env={"WORKBENCH_HOME": str(shared)})
        assert listed.returncode == 0, listed.stderr
        assert stat.S_IMODE(shared.stat().st_mode) == 0o755
        assert "readable by other users (mode 755)" in listed.stderr
        os.chmod(shared, 0o1777)  # others could plant files in it: refused, its mode kept
        refused = workbench("ls", env={"WORKBENCH_HOME": str(shared)})
        assert refused.returncode == 3 and "can be written by other users" in refused.stderr
        assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    finally:
        import shutil

        shutil.rmtree(fresh.parent, ignore_errors=True)
        shutil.rmtree(shared, ignore_errors=True)


# ---- secrets ------------------------------------------------------------------------------


def test_secret_looking_variables_are_masked_everywhere(home: Home, tmp_path: Path) -> None:
    home.config.write_text('[security]\nsecret_names = ["DSN"]\n')
    spec = tmp_path / "job.toml"
    spec.write_text(
        'kind = "command"\nargv = ["true"]\n'
        f'env = {{ AWS_SECRET_ACCESS_KEY = "{SECRET}", PLAIN = "visible" }}\n'
    )
    from_spec = submit("--spec", str(spec), "--paused")
    from_flag = submit(
        "--env", f"GITHUB_TOKEN={SECRET}", "--env", f"DB_DSN={SECRET}", "--paused", "--", "true"
    )
    captured = json.loads(
        workbench("submit", "--json", "--paused", "--", "true", env={"MY_PASSWORD": SECRET}).stdout
    )["id"]
    outputs = [
        workbench("ls", "--json"),
        workbench("ls", "--all", "--json"),
        workbench("ls"),
        *(workbench("show", str(i), "--json", "--env") for i in (from_spec, from_flag, captured)),
        *(workbench("show", str(i)) for i in (from_spec, from_flag, captured)),
        workbench("submit", "--json", "--spec", str(spec), "--paused"),
    ]
    for result in outputs:
        assert result.returncode == 0, result.stderr
        assert SECRET not in result.stdout
    shown = json.loads(workbench("show", str(from_flag), "--json", "--env").stdout)
    assert shown["env"]["GITHUB_TOKEN"] == "***" and shown["env"]["DB_DSN"] == "***"
    spec_job = json.loads(workbench("show", str(from_spec), "--json").stdout)
    assert spec_job["spec"]["env"] == {"AWS_SECRET_ACCESS_KEY": "***", "PLAIN": "visible"}
    assert "AWS_SECRET_ACCESS_KEY=*** PLAIN=visible" in workbench("show", str(from_spec)).stdout


def test_batch_json_never_prints_a_stage_secret(home: Home, tmp_path: Path) -> None:
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        '[pipeline]\nname = "p"\n\n[[stage]]\nname = "s"\nkind = "command"\n'
        f'argv = ["sh", "-c", "test -n \\"$API_TOKEN\\""]\nenv = {{ API_TOKEN = "{SECRET}" }}\n'
    )
    result = workbench("--batch", str(pipeline), "--json")
    assert result.returncode == 0, result.stderr  # the job got the real value
    assert SECRET not in result.stdout and SECRET not in result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["ok"] is True
    job = json.loads(workbench("ls", "--json").stdout)[0]
    assert job["spec"]["env"] == {"API_TOKEN": "***"}


def test_presenter_masks_what_the_tui_shows(home: Home) -> None:
    store = Store.open(home.state_db)
    job_id = store.submit(
        JobRequest(
            "x",
            "command",
            {"argv": ["true"], "env": {"API_KEY": SECRET, "N": "1"}},
            "/",
            {"API_KEY": SECRET},
            argv=["true"],
        )
    )
    lines = dict(job_details(store.get(job_id), {}))
    assert lines["env"] == "API_KEY=*** N=1"
    assert SECRET not in json.dumps(store.get(job_id).to_json(with_env=True))
    store.close()


def _store_bytes(home: Home) -> bytes:
    files = [home.state_db, *home.root.glob("state.db-*"), *home.root.glob("state.db.bak*")]
    return b"".join(p.read_bytes() for p in files if p.is_file())


def test_rm_purges_environment_values_from_the_store_and_its_backup(home: Home) -> None:
    job_id = submit("--paused", "--env", f"ANYTHING={SECRET}", "--", "true")
    stopped = workbench("daemon", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert workbench("daemon", "start").returncode == 0  # takes state.db.bak with the job in it
    backup = home.root / "state.db.bak"
    assert backup.exists() and SECRET.encode() in backup.read_bytes()
    assert SECRET.encode() in _store_bytes(home)
    removed = workbench("rm", str(job_id))
    assert removed.returncode == 0, removed.stderr
    assert SECRET.encode() not in _store_bytes(home)
    assert workbench("show", str(job_id)).returncode == 2


# ---- audit --------------------------------------------------------------------------------


def test_every_intent_is_audited(home: Home) -> None:
    blocker = submit("--paused", "--", "true")  # held: the job below stays queued behind it
    held = submit("--paused", "--after", str(blocker), "--", "true")
    assert workbench("priority", str(held), "5").returncode == 0
    assert workbench("resume", str(held)).returncode == 0
    assert workbench("pause", str(held)).returncode == 0
    assert workbench("cancel", str(held)).returncode == 0
    assert workbench("retry", str(held)).returncode == 0
    assert workbench("cancel", str(held)).returncode == 0
    assert workbench("rm", str(held)).returncode == 0
    entries = json.loads(workbench("audit", "--json", "--job", str(held)).stdout)
    assert [(e["action"], e["job_id"]) for e in entries] == [
        (action, held)
        for action in ("submit", "priority", "resume", "pause", "cancel", "retry", "cancel", "rm")
    ]
    assert {e["uid"] for e in entries} == {os.getuid()}
    other = submit("--paused", "--", "true")
    workbench("cancel", str(other))
    text = workbench("show", str(other)).stdout
    assert "audit:" in text and "submit" in text and "cancel" in text
    assert len(json.loads(workbench("audit", "--json", "--job", str(other)).stdout)) == 2


# ---- bytes that are not UTF-8 -------------------------------------------------------------


def test_argv_that_is_not_utf8_is_kept_byte_exact_and_run_as_given(home: Home) -> None:
    raw = b"caf\xe9 \xff\xfe"
    result = subprocess.run(
        [sys.executable, "-m", "workbench", "submit", "--wait", "--", "printf", "%s", raw],
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    job_id = int(result.stdout.strip())
    assert (home.run_dir(job_id) / "log").read_bytes() == raw
    job = Store.open(home.state_db).get(job_id)
    assert job.argv is not None and os.fsencode(job.argv[2]) == raw
    for args in (["ls"], ["ls", "--json"], ["show", str(job_id)], ["show", str(job_id), "--json"]):
        shown = subprocess.run(
            [sys.executable, "-m", "workbench", *args], capture_output=True, timeout=60
        )
        assert shown.returncode == 0 and b"Traceback" not in shown.stderr, shown.stderr
    listed = json.loads(workbench("ls", "--json").stdout)
    assert os.fsencode(listed[0]["argv"][2]) == raw


def test_names_that_look_like_markup_are_printed_as_given(home: Home) -> None:
    job_id = submit("--paused", "--name", "[/oops] [bold]x", "--", "echo", "[/y]")
    shown = workbench("show", str(job_id))
    assert shown.returncode == 0, shown.stderr
    assert "[/oops] [bold]x" in shown.stdout and "echo '[/y]'" in shown.stdout
    assert "[/oops] [bold]x" in workbench("ls").stdout


def test_control_characters_in_names_reach_no_terminal(home: Home) -> None:
    job_id = submit("--paused", "--name", "evil\x1b]0;pwned\x07\nline", "--", "true")
    for args in (["ls"], ["ls", "--all"], ["show", str(job_id)]):
        out = workbench(*args).stdout
        assert "\x1b" not in out and "\x07" not in out, args
        assert "evil\\x1b]0;pwned\\x07\\x0aline" in out, args
    assert json.loads(workbench("ls", "--json").stdout)[0]["name"].startswith("evil\x1b")


# ---- a damaged or full store --------------------------------------------------------------


def _corrupt_a_page(path: Path) -> None:
    store = Store.open(path)
    store.submit_many(
        [
            JobRequest(f"j{i}", "command", {"argv": ["true"]}, "/", {"X": "y" * 200}, paused=True)
            for i in range(300)
        ]
    )
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    leaves = conn.execute(
        "SELECT pageno FROM dbstat WHERE name='jobs' AND pagetype='leaf' ORDER BY pageno"
    ).fetchall()
    conn.close()
    page = leaves[len(leaves) // 2][0] - 1  # a leaf of the jobs table, in the middle
    data = bytearray(path.read_bytes())
    data[page * 4096 + 100 : page * 4096 + 400] = b"\x55" * 300
    path.write_bytes(bytes(data))


def test_clients_refuse_a_damaged_store_and_never_write_into_it(home: Home) -> None:
    _corrupt_a_page(home.state_db)
    before = home.state_db.read_bytes()
    for args in (["ls"], ["ls", "--json"], ["show", "1"], ["audit"], ["submit", "--", "true"]):
        result = workbench(*args)
        assert result.returncode == 3, (args, result.stdout, result.stderr)
        assert "state file damaged" in result.stderr and "To recover" in result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""
    assert home.state_db.read_bytes() == before


def _no_space() -> None:
    """In the child: no file may grow (what a full disk does to every write)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def test_a_full_disk_is_reported_in_words_with_exit_3(home: Home) -> None:
    Store.open(home.state_db).close()
    before = home.state_db.read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "workbench", "submit", "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_no_space,
    )
    assert result.returncode == 3, result.stderr
    assert "no space left on the device holding WORKBENCH_HOME" in result.stderr
    assert "Traceback" not in result.stderr
    assert home.state_db.read_bytes() == before
    assert Store.open(home.state_db).list_jobs() == []


def test_sqlite_full_inside_a_transaction_is_store_full(home: Home) -> None:
    store = Store.open(home.state_db)
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(StoreFull, match="no space left on the device holding WORKBENCH_HOME"):
        store.submit_many(
            [JobRequest(f"j{i}", "command", {}, "/", {"X": "y" * 4000}) for i in range(50)]
        )
    store.conn.execute("PRAGMA max_page_count=1073741823")
    assert store.list_jobs() == []  # nothing half-written
    store.close()


# ---- listing and retention ----------------------------------------------------------------


def _fill(home: Home, queued: int, ended: int) -> Store:
    store = Store.open(home.state_db)
    store.submit_many(
        [JobRequest(f"q{i}", "command", {"argv": ["true"]}, "/", {}) for i in range(queued)]
    )
    ids = store.submit_many(
        [JobRequest(f"e{i}", "command", {"argv": ["true"]}, "/", {}) for i in range(ended)]
    )
    for job_id in ids:
        store.transition(job_id, Event.START, "starting")
        store.transition(job_id, Event.LAUNCHED, "started", pid=1)
        store.transition(job_id, Event.EXIT_OK, "exited with code 0", ended_at=1000.0 + job_id)
    return store


def test_ls_groups_counts_and_pages(home: Home) -> None:
    _fill(home, queued=120, ended=30).close()
    text = workbench("ls", "--recent", "5").stdout.splitlines()
    assert text[0] == "jobs: queued 120 · succeeded 30"
    assert "... and 70 more waiting (ls --state queued|paused|blocked, or ls --all)" in text
    assert "... and 25 older ended jobs (ls --all; workbench prune removes them)" in text
    rows = [line for line in text[2:] if not line.startswith("...")]
    assert len(rows) == 50 + 5
    # `--json` lists every active job and the latest ended ones (scripts read the whole queue).
    listed = workbench("ls", "--recent", "5", "--json")
    ids = [j["id"] for j in json.loads(listed.stdout)]
    assert ids == [*range(1, 121), *range(146, 151)] and listed.stderr == ""
    everything = json.loads(workbench("ls", "--all", "--json").stdout)
    assert len(everything) == 150 and all("env" not in j for j in everything)
    assert [j["id"] for j in everything] == sorted(j["id"] for j in everything)
    assert len(workbench("ls", "--all").stdout.splitlines()) == 151
    queued = json.loads(workbench("ls", "--state", "queued", "--json").stdout)
    assert len(queued) == 120
    bad = workbench("ls", "--state", "done")
    assert bad.returncode == 2 and "unknown state 'done'" in bad.stderr


def test_prune_removes_ended_jobs_and_their_run_folders(home: Home) -> None:
    store = _fill(home, queued=2, ended=3)
    old = [j.id for j in store.list_jobs(states=["succeeded"])]
    for job_id in old:
        home.run_dir(job_id).mkdir(parents=True)
        (home.run_dir(job_id) / "log").write_text("x")
    recent = store.submit(JobRequest("recent", "command", {"argv": ["true"]}, "/", {}))
    store.request(recent, "cancel")  # ended just now: kept
    store.close()
    result = workbench("prune", "--older-than", "1d", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["removed"] == old
    assert not any(home.run_dir(i).exists() for i in old)
    left = {j["id"]: j["state"] for j in json.loads(workbench("ls", "--all", "--json").stdout)}
    assert sorted(left.values()) == ["cancelled", "queued", "queued"]
    assert [e["action"] for e in json.loads(workbench("audit", "--json").stdout)].count(
        "prune"
    ) == 3


def test_retention_from_config(home: Home) -> None:
    home.config.write_text('[retention]\njobs = "1h"\n')
    _fill(home, queued=1, ended=2).close()
    assert json.loads(workbench("prune", "--json").stdout)["older_than_s"] == 3600.0
    assert len(json.loads(workbench("ls", "--all", "--json").stdout)) == 1


def test_a_submit_imports_no_table_renderer_duckdb_or_torch(home: Home) -> None:
    result, imported = imports_of("submit", "--paused", "--", "true")
    assert result.returncode == 0, result.stderr
    assert "workbench.cli.main" in imported  # the measurement works
    assert not imported & {"rich.table", "duckdb", "torch", "pyarrow", "textual"}


def _peak_rss_mib(args: list[str]) -> float:
    """Peak resident memory of one `workbench ARGS` process (measured by a wrapper parent)."""
    probe = (
        "import resource, subprocess, sys;"
        f"subprocess.run([sys.executable, '-m', 'workbench', *{args!r}],"
        " stdout=subprocess.DEVNULL, check=True);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout) / 1024


@pytest.mark.slow
def test_listing_20000_jobs_keeps_memory_flat(home: Home) -> None:
    """Listing never holds the whole queue or its environments (ls once took 323 MiB)."""
    store = Store.open(home.state_db)
    env = {**os.environ, **{f"SETTING_{i}": "x" * 40 for i in range(20)}}
    store.submit_many(
        [
            JobRequest(f"j{i}", "command", {"argv": ["true"]}, "/", env, argv=["true"])
            for i in range(20_000)
        ]
    )
    store.close()
    text = workbench("ls").stdout.splitlines()
    assert text[0] == "jobs: queued 20,000" and len(text) == 2 + 50 + 1
    for args in (["ls"], ["ls", "--json"], ["ls", "--all"], ["ls", "--all", "--json"]):
        assert _peak_rss_mib(args) < 80, args
    assert len(json.loads(workbench("ls", "--json").stdout)) == 20_000  # every active job
    assert len(json.loads(workbench("ls", "--all", "--json").stdout)) == 20_000


def test_prune_gives_the_space_back(home: Home) -> None:
    """Retention bounds the file, not only the rows (the file used to never shrink)."""
    store = _fill(home, queued=0, ended=2000)
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = home.state_db.stat().st_size
    store.close()
    assert workbench("prune", "--older-than", "1d").returncode == 0
    assert home.state_db.stat().st_size < before / 2


def test_prune_converts_and_shrinks_a_file_without_auto_vacuum(home: Home) -> None:
    store = _fill(home, queued=0, ended=2000)
    store.conn.execute("PRAGMA auto_vacuum=NONE")
    store.conn.execute("VACUUM")  # as files created before incremental auto-vacuum are
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert store.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    before = home.state_db.stat().st_size
    store.close()
    assert workbench("prune", "--older-than", "1d").returncode == 0
    assert home.state_db.stat().st_size < before / 2
    assert Store.open(home.state_db).conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
