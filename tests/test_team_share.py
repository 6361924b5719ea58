"""Team mode, item 7: each user's data is private; a user shares a dataset read-only with a
group, its members query and train on it as `OWNER.DATASET`, and lineage names it.

Run as root with real Unix users (the fixtures of tests/test_team_mode.py): alice ingests into
her own home through her per-user daemon, shares with a group bob joins during the test, and
bob reads it with his own rights. The system daemon checks what it records (links, owners,
modes, membership) without reading the files. Per-user daemons are stopped by `daemon stop`."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_team_mode import System, Users, install_system, stop_system
from test_team_mode import users as users

pytestmark = pytest.mark.xdist_group("unix-users")

REPO = Path(__file__).resolve().parents[1]
NOT_PERMITTED = 4


@pytest.fixture(scope="module")
def system(users: Users) -> Iterator[System]:
    installed = install_system(users.folder / "home", users)
    try:
        yield installed
    finally:
        for who in (users.alice, users.bob):
            installed.wb(who, "daemon", "stop", extra_env=OWN_PYTHON)
        stop_system(installed)


# The users' per-user daemons and jobs start this Python's modules by name (`-m workbench`,
# `-m jobs`): where the test users cannot run this interpreter (a venv under a folder only
# root may enter), `runners` gives them the system's python3, which finds them here.
OWN_PYTHON = {
    "PYTHONPATH": os.pathsep.join([str(REPO), *(p for p in sys.path if p.endswith("-packages"))])
}


def wb(system: System, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`workbench ARGS` as `user`, with what their own daemon needs (`OWN_PYTHON`)."""
    return system.wb(user, *args, extra_env=OWN_PYTHON)


def give(home: Path, *paths: Path) -> None:
    """Make files the test wrote (as root) in a user's home that user's, as if they wrote them."""
    info = home.stat()
    for path in paths:
        os.chown(path, info.st_uid, info.st_gid)


def _as(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True)


def _sql(system: System, user: str, query: str) -> subprocess.CompletedProcess[str]:
    return wb(system, user, "sql", query, "--json")


def test_a_dataset_shared_with_a_group_is_read_by_its_members_only(system: System) -> None:
    users = system.users
    alice_home = Path(os.path.expanduser(f"~{users.alice}"))
    csv = alice_home / "penguins.csv"
    csv.write_bytes((REPO / "examples" / "penguins_train.csv").read_bytes())
    give(alice_home, csv)
    done = wb(system, users.alice, "ingest", str(csv), "--dataset", "penguins", "--wait")
    assert done.returncode == 0, done.stderr
    mine = json.loads(wb(system, users.alice, "datasets", "penguins", "--json").stdout)[0]
    # Private by default: bob cannot read alice's own lake, nor list it as shared.
    part = Path(mine["path"]) / "part-0.parquet"
    assert part.exists() or list(Path(mine["path"]).glob("part-*.parquet"))
    denied = _as(users.bob, "cat", str(next(Path(mine["path"]).glob("part-*.parquet"))))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    refused = _sql(system, users.bob, "SELECT count(*) FROM penguins")
    assert refused.returncode == 2
    shared = wb(system, users.alice, "share", "penguins", "--group", users.extra)
    assert shared.returncode == 0, shared.stderr
    assert f"{users.alice}.penguins" in shared.stdout
    name = f"{users.alice}.penguins"
    # bob is not in the group yet: nothing listed, nothing read.
    listed = json.loads(wb(system, users.bob, "datasets", "--shared", "--json").stdout)
    assert listed == []
    outside = _sql(system, users.bob, f"SELECT count(*) AS n FROM {name}")
    assert outside.returncode == 2 and "Traceback" not in outside.stderr, outside.stderr
    assert f"no shared dataset {name} that you may read" in outside.stderr, outside.stderr
    subprocess.run(["usermod", "-aG", users.extra, users.bob], check=True)
    listed = json.loads(wb(system, users.bob, "datasets", "--shared", "--json").stdout)
    assert [(s["owner"], s["dataset"], s["version"]) for s in listed] == [
        (users.alice, "penguins", 1)
    ]
    assert listed[0]["content_hash"] == mine["content_hash"]
    counted = _sql(system, users.bob, f"SELECT count(*) AS n FROM {name}")
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout) == {"n": mine["rows"]}
    same = _sql(
        system,
        users.bob,
        f'SELECT count(*) AS n FROM (SELECT * FROM {users.alice}."penguins@v1"'
        f" EXCEPT ALL SELECT * FROM {name})",
    )
    assert same.returncode == 0 and json.loads(same.stdout) == {"n": 0}, same.stderr
    # Read-only for the group: no write, no new file, no removal.
    folder = Path(listed[0]["folder"])
    first = next(folder.glob("part-*.parquet"))
    for attempt in (
        ["sh", "-c", f"echo x >> {first}"],
        ["touch", str(folder / "part-9.parquet")],
        ["rm", "-f", str(first)],
    ):
        assert _as(users.bob, *attempt).returncode != 0, attempt
    assert first.exists()
    # bob trains on it through his own daemon: the run's lineage names alice's dataset.
    spec = Path(os.path.expanduser(f"~{users.bob}")) / "train.toml"
    spec.write_text(
        f'kind = "train"\ndataset = "{name}"\ntarget = "species"\nepochs = 2\nseed = 0\n'
    )
    os.chmod(spec, 0o644)
    bob_home = os.path.expanduser(f"~{users.bob}/.local/share/workbench")
    trained = system.wb(
        users.bob, "submit", "--spec", str(spec), "--wait",
        extra_env={**OWN_PYTHON, "WORKBENCH_HOME": bob_home},
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr + trained.stdout
    runs = json.loads(wb(system, users.bob, "runs", "--json").stdout)
    assert [(r["dataset"], r["dataset_version"]) for r in runs] == [(name, 1)], runs
    assert runs[0]["dataset_hash"] == mine["content_hash"], runs
    # Unshared: the record and the files are gone; bob reads nothing.
    assert wb(system, users.alice, "unshare", "penguins").returncode == 0
    assert not folder.exists()
    assert _sql(system, users.bob, f"SELECT count(*) FROM {name}").returncode == 2


# Sends one request (JSON, argv[2]) to the system daemon's socket (argv[1]); prints the reply.
ASK = """
import json, sys
from workbench.daemon.wire import ask
print(json.dumps(ask(sys.argv[1], json.loads(sys.argv[2]))))
"""


def ask_system(system: System, user: str, request: dict[str, object]) -> dict[str, object]:
    """`request` sent by `user` (through runuser) to the system daemon's socket; its reply."""
    script = system.users.folder / "ask_share.py"
    if not script.exists():
        script.write_text(ASK)
        script.chmod(0o644)
    sock = str(system.root / "gate" / "team.sock")
    done = subprocess.run(
        ["runuser", "-u", user, "--", *system.users.py, str(script), sock, json.dumps(request)],
        capture_output=True, text=True, env=system.env(), cwd="/",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_the_daemon_records_only_checked_files(system: System) -> None:
    """A share request is checked before it is recorded, without following a link or
    opening a file: a planted link, a file another user owns or that the group may write, a
    name that is no part, a group the sharer is not in, a folder named by the request."""
    users = system.users
    ask_as = functools.partial(ask_system, system)

    base = system.root / "shared"
    mine = Path(str(ask_as(users.alice, {"op": "share-space"})["folder"]))
    assert mine.parent == base and mine.stat().st_uid == int(_as(users.alice, "id", "-u").stdout)
    group = users.extra
    fields = {
        "dataset": "planted", "version": 1, "group": group, "rows": 1, "rejected_rows": 0,
        "bytes": 1, "content_hash": "x", "schema": [["a", "INTEGER"]], "sources": [],
        "created_at": 0,
    }  # fmt: skip

    def ask(**changes: object) -> dict[str, object]:
        return ask_as(users.alice, {"op": "share", **fields, **changes})

    def prepare(*steps: str) -> None:
        script = f"cd {mine} && rm -rf planted && mkdir planted planted/v1 && " + " && ".join(steps)
        done = _as(users.alice, "sh", "-c", script)
        assert done.returncode == 0, done.stderr

    fix = f"chgrp -R {group} planted && chmod 750 planted planted/v1"
    cases = [
        (["ln -s /etc/shadow planted/v1/part-0.parquet", fix], "not a regular file"),
        (["echo x > planted/v1/part-0.parquet", fix, "chmod 664 planted/v1/part-0.parquet"],
         "writable by no one else"),
        (["echo x > planted/v1/notes.txt", fix, "chmod 440 planted/v1/notes.txt"],
         "not a part"),
        (["echo x > planted/v1/part-0.parquet", "chmod 750 planted planted/v1"],
         "not of the group"),
        (["ln -s /etc planted/v2", "echo x > planted/v1/part-0.parquet", fix,
          "chmod 440 planted/v1/part-0.parquet"], "v2"),
    ]  # fmt: skip
    for steps, why in cases:
        prepare(*steps)
        version = 2 if why == "v2" else 1
        reply = ask(version=version)
        assert reply["ok"] is False and reply["exit"] == 2, reply
        if why != "v2":
            assert why in str(reply["error"]), reply
    prepare("echo x > planted/v1/part-0.parquet", fix, "chmod 440 planted/v1/part-0.parquet")
    assert ask()["ok"] is True
    assert ask(group=users.admin_group)["exit"] == NOT_PERMITTED  # not her group
    assert ask(dataset="../../etc")["exit"] == 2  # a name, never a path
    assert ask(folder="/etc", version=1)["ok"] is True  # a named folder is ignored
    recorded = json.loads(wb(system, users.bob, "datasets", "--shared", "--json").stdout)
    assert all(Path(s["folder"]).parent.parent == mine for s in recorded), recorded
    assert wb(system, users.alice, "unshare", "planted").returncode == 0


def test_a_uid_given_to_a_new_account_does_not_inherit_the_old_ones_shares(
    system: System,
) -> None:
    """Shares are keyed by uid. A sharer removed with `userdel` whose uid is given to a new
    account (`useradd -u`): the new account became the owner of the old one's shares, and
    group members read them under the new name. Each record now keeps the name that shared it;
    one whose uid names another account is forgotten, and no one is shown it."""
    users = system.users
    old, new = f"{users.alice}old", f"{users.alice}new"
    ask_as = functools.partial(ask_system, system)

    def shared_names(user: str) -> list[str]:
        reply = ask_as(user, {"op": "shared"})
        return [f"{s['owner']}.{s['dataset']}" for s in reply["shares"]]  # type: ignore[union-attr]

    subprocess.run(["useradd", "-M", "-G", users.extra, old], check=True)
    try:
        uid = int(_as(old, "id", "-u").stdout)
        mine = Path(str(ask_as(old, {"op": "share-space"})["folder"]))
        group = users.extra
        done = _as(old, "sh", "-c", f"cd {mine} && mkdir -p notes/v1 && echo x >"
                   f" notes/v1/part-0.parquet && chgrp -R {group} notes && chmod 750 notes"
                   " notes/v1 && chmod 440 notes/v1/part-0.parquet")  # fmt: skip
        assert done.returncode == 0, done.stderr
        reply = ask_as(old, {
            "op": "share", "dataset": "notes", "version": 1, "group": group, "rows": 1,
            "rejected_rows": 0, "bytes": 1, "content_hash": "x", "schema": [["a", "INTEGER"]],
            "sources": [], "created_at": 0,
        })  # fmt: skip
        assert reply["ok"] is True, reply
        assert f"{old}.notes" in shared_names(users.alice)
        subprocess.run(["pkill", "-KILL", "-u", old], capture_output=True)
        subprocess.run(["userdel", old], check=True)
        subprocess.run(["useradd", "-M", "-u", str(uid), "-G", users.extra, new], check=True)
        for who in (users.alice, new):
            names = shared_names(who)
            assert not [n for n in names if n.endswith(".notes")], (who, names)
        counted = _sql(system, users.alice, f"SELECT count(*) FROM {new}.notes")
        assert counted.returncode == 2 and "no shared dataset" in counted.stderr, counted.stderr
    finally:
        for name in (old, new):
            subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
            subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture(scope="module")
def iris(system: System) -> str:
    """scikit-learn's iris, ingested once into alice's own lake as `iris` (its name), so a
    test that trains on it does not depend on another having run first."""
    users = system.users
    home = Path(os.path.expanduser(f"~{users.alice}"))
    csv = home / "iris.csv"
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame
    csv.write_text(frame.to_csv(index=False))
    give(home, csv)
    done = wb(system, users.alice, "ingest", str(csv), "--dataset", "iris", "--wait")
    assert done.returncode == 0, done.stderr
    return "iris"


def test_a_built_in_kind_runs_through_the_team_queue_in_its_owners_home(
    system: System, iris: str
) -> None:
    """The system daemon took command jobs only, so a team's training bypassed its shares.
    Now `submit` of a built-in kind in team mode queues it in the submitter's own home (bound
    to executor `team`) and the team queue runs it there as them: its run, lineage and
    checkpoints are theirs, its log is in both places, and others see only its public view."""
    users = system.users
    home = Path(os.path.expanduser(f"~{users.alice}"))
    spec = home / "train.toml"
    spec.write_text('kind = "train"\ndataset = "iris"\ntarget = "target"\nepochs = 2\nseed = 0\n')
    give(home, spec)
    trained = wb(system, users.alice, "submit", "--spec", str(spec), "--wait")
    assert trained.returncode == 0, trained.stderr + trained.stdout
    team_id = int(trained.stdout.split()[0])
    assert f"team job {team_id} runs it as job" in trained.stderr, trained.stderr
    own_id = int(trained.stderr.split(" runs it as job ")[1].split()[0])
    shown = json.loads(wb(system, users.alice, "show", str(team_id), "--json").stdout)
    assert shown["owner"] == users.alice and shown["state"] == "succeeded", shown
    team_log = wb(system, users.alice, "logs", str(team_id)).stdout
    assert f"as team job {team_id}" in team_log and "train" in team_log, team_log
    # In alice's own home: the job, its run (lineage: her dataset), its files, all hers.
    own = {**OWN_PYTHON, "WORKBENCH_HOME": str(home / ".local/share/workbench")}
    mine = json.loads(system.wb(users.alice, "show", str(own_id), "--json", extra_env=own).stdout)
    assert mine["state"] == "succeeded" and mine["executor"] == "team", mine
    runs = json.loads(system.wb(users.alice, "runs", "--json", extra_env=own).stdout)
    assert [(r["job_id"], r["dataset"]) for r in runs] == [(own_id, "iris")], runs
    run_dir = home / ".local/share/workbench/runs" / str(own_id)
    uid = home.stat().st_uid
    assert all(p.stat().st_uid == uid for p in [run_dir, *run_dir.rglob("*")])
    assert "epoch" in (run_dir / "log").read_text()
    # bob sees the team job's public view only.
    peeked = wb(system, users.bob, "logs", str(team_id))
    assert peeked.returncode == NOT_PERMITTED, peeked.stderr


def test_a_pipeline_with_built_in_stages_runs_through_the_team_queue(system: System) -> None:
    """`--batch` in team mode refused ingest/train stages; now they run in the submitter's own
    home through the team queue, in the pipeline's order, with the usual summary."""
    users = system.users
    home = Path(os.path.expanduser(f"~{users.alice}"))
    (home / "penguins.csv").write_bytes((REPO / "examples" / "penguins_train.csv").read_bytes())
    pipeline = home / "flow.toml"
    pipeline.write_text(
        '[[stage]]\nname = "load"\nkind = "ingest"\nsource = ["penguins.csv"]\n'
        'dataset = "birds"\n\n[[stage]]\nname = "fit"\nkind = "train"\nafter = ["load"]\n'
        'dataset = "birds"\ntarget = "species"\nepochs = 2\nseed = 0\n'
    )
    give(home, home / "penguins.csv", pipeline)
    done = wb(system, users.alice, "--batch", str(pipeline), "--json")
    assert done.returncode == 0, done.stderr + done.stdout
    events = [json.loads(line) for line in done.stdout.splitlines()]
    summary = events[-1]
    assert [s["state"] for s in summary["stages"]] == ["succeeded", "succeeded"], summary
    listed = json.loads(wb(system, users.alice, "ls", "--json", "--all").stdout)
    flow = [j for j in listed if j.get("stage") in ("load", "fit")]
    assert len(flow) >= 2 and all(j["owner"] == users.alice for j in flow), flow
    own = {**OWN_PYTHON, "WORKBENCH_HOME": str(home / ".local/share/workbench")}
    runs = json.loads(system.wb(users.alice, "runs", "--json", extra_env=own).stdout)
    assert "birds" in [r["dataset"] for r in runs], runs


def test_a_train_job_preempted_in_the_team_queue_resumes_from_its_checkpoint(
    users: Users, tmp_path: Path
) -> None:
    """alice holds her deserved GPU and trains on the second; bob asks for his deserved GPU:
    the team queue preempts her training (the team job runs it in her home through
    workbench.daemon.teamrun), which checkpoints there, is marked stopped with the reason,
    and when the team job starts again resumes from its checkpoint and ends with the same
    metrics as the same training run uninterrupted."""
    from test_train import digits_table

    system = install_system(users.folder / "gpus-home", users, gpus=2)
    try:
        (system.root / "config.toml").write_text(
            '[daemon]\nkill_grace = "30s"\nsample_interval = "0.2s"\n\n'
            f"[users.{users.alice}]\ndeserved_gpus = 1\n\n[users.{users.bob}]\ndeserved_gpus = 1\n"
        )
        home = Path(os.path.expanduser(f"~{users.alice}"))
        csv = home / "digits.csv"
        csv.write_text(digits_table().to_pandas().to_csv(index=False))
        give(home, csv)
        done = wb(system, users.alice, "ingest", str(csv), "--dataset", "digits", "--wait")
        assert done.returncode == 0, done.stderr
        spec = home / "digits.toml"
        spec.write_text(
            'kind = "train"\ndataset = "digits"\ntarget = "digit"\nmodel = "mlp"\n'
            "hidden = [128, 128]\nepochs = 12\nbatch_size = 8\nseed = 3\ncpus = 1\ngpus = 1\n"
        )
        give(home, spec)
        # The same training uninterrupted first, for its final metrics.
        whole = wb(system, users.alice, "submit", "--spec", str(spec), "--wait")
        assert whole.returncode == 0, whole.stderr
        whole_id = int(whole.stderr.split(" runs it as job ")[1].split()[0])
        held = wb(system, users.alice, "submit", "--gpus", "1", "--", "sleep", "600")
        assert held.returncode == 0, held.stderr
        held_id = int(held.stdout.split()[0])
        queued = wb(system, users.alice, "submit", "--spec", str(spec))
        assert queued.returncode == 0, queued.stderr
        team_id = int(queued.stdout.split()[0])
        own_id = int(queued.stderr.split(" runs it as job ")[1].split()[0])
        own = {**OWN_PYTHON, "WORKBENCH_HOME": str(home / ".local/share/workbench")}

        def mine() -> dict[str, object]:
            shown = system.wb(users.alice, "show", str(own_id), "--json", extra_env=own)
            return dict(json.loads(shown.stdout))

        deadline = time.monotonic() + 180
        while float(mine().get("progress") or 0) < 0.3:
            assert time.monotonic() < deadline, mine()
            time.sleep(0.5)
        bob = wb(system, users.bob, "submit", "--gpus", "1", "--wait", "--", "sleep", "1")
        assert bob.returncode == 0, bob.stderr
        deadline = time.monotonic() + 300
        while mine()["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, mine()
            time.sleep(1)
        assert mine()["state"] == "succeeded", mine()
        assert wb(system, users.alice, "cancel", str(held_id)).returncode == 0
        team = json.loads(wb(system, users.alice, "show", str(team_id), "--json").stdout)
        assert team["state"] == "succeeded", team
        assert any(e["event"] == "preempt" for e in team["events"]), team["events"]
        log = (home / ".local/share/workbench/runs" / str(own_id) / "log").read_text()
        assert "resumed from" in log, log[-2000:]
        events = system.wb(users.alice, "show", str(own_id), "--json", extra_env=own).stdout
        assert "stopped by the system daemon" in events
        runs = json.loads(system.wb(users.alice, "runs", "--json", extra_env=own).stdout)
        metrics = {r["job_id"]: r["metrics"] for r in runs}
        assert metrics[own_id] == metrics[whole_id], metrics  # the same final weights' metrics
    finally:
        for who in (users.alice, users.bob):
            system.wb(who, "daemon", "stop", extra_env=OWN_PYTHON)
        stop_system(system)


@pytest.mark.parametrize("action", ["cancel", "rm"])
def test_a_built_in_kind_cancelled_in_the_team_queue_is_not_left_queued_at_home(
    system: System, iris: str, action: str
) -> None:
    """A built-in kind's team job cancelled (or removed) before it started left its job in the
    owner's own home queued for ever ("waits in the team queue as its job N"): nothing would
    ever run or settle it. The owner's client now settles it too; a cancelled one runs again
    when the team job is retried."""
    users = system.users
    home = Path(os.path.expanduser(f"~{users.alice}"))
    spec = home / f"never-{action}.toml"
    spec.write_text('kind = "train"\ndataset = "iris"\ntarget = "target"\nepochs = 1\n')
    give(home, spec)
    queued = wb(system, users.alice, "submit", "--spec", str(spec), "--gpus", "64")
    assert queued.returncode == 0, queued.stderr + queued.stdout
    team_id = int(queued.stdout.split()[0])
    own_id = int(queued.stderr.split(" runs it as job ")[1].split()[0])
    own = {**OWN_PYTHON, "WORKBENCH_HOME": str(home / ".local/share/workbench")}

    def own_state() -> str:
        shown = system.wb(users.alice, "show", str(own_id), "--json", extra_env=own)
        return str(json.loads(shown.stdout)["state"])

    assert own_state() == "queued"
    done = wb(system, users.alice, action, str(team_id))
    assert done.returncode == 0, done.stderr
    assert own_state() == "cancelled"


def test_a_pipeline_stage_blocked_in_the_team_queue_is_not_left_queued_at_home(
    system: System,
) -> None:
    """A built-in stage whose upstream failed is blocked in the team queue, where nobody (not
    its owner's client) cancels it: its job in the owner's own home stayed queued for ever.
    The pipeline's run (and `ls`, `wait`) now settle it."""
    users = system.users
    home = Path(os.path.expanduser(f"~{users.alice}"))
    (home / "broken.csv").write_bytes(b"\xff\xfe\x00 not a table\n")
    pipeline = home / "broken.toml"
    pipeline.write_text(
        '[[stage]]\nname = "load"\nkind = "ingest"\nsource = ["broken.csv"]\n'
        'dataset = "broken"\n\n[[stage]]\nname = "fit"\nkind = "train"\nafter = ["load"]\n'
        'dataset = "broken"\ntarget = "species"\nepochs = 1\n'
    )
    give(home, home / "broken.csv", pipeline)
    done = wb(system, users.alice, "--batch", str(pipeline), "--json")
    summary = json.loads(done.stdout.splitlines()[-1])
    states = [s["state"] for s in summary["stages"]]
    assert states[0] == "failed" and states[1] != "succeeded", summary
    own = {**OWN_PYTHON, "WORKBENCH_HOME": str(home / ".local/share/workbench")}
    mine = json.loads(system.wb(users.alice, "ls", "--all", "--json", extra_env=own).stdout)
    fit = [j for j in mine if j.get("stage") == "fit"]
    assert fit and all(j["state"] != "queued" for j in fit), fit


def _own_state_soon(system: System, own_id: int, timeout: float = 15.0) -> str:
    """The state of job `own_id` of alice's own home once it is no longer queued (or after
    `timeout` s), read with a per-user command, which settles nothing of the team queue."""
    users = system.users
    home = Path(os.path.expanduser(f"~{users.alice}"))
    own = {**OWN_PYTHON, "WORKBENCH_HOME": str(home / ".local/share/workbench")}
    deadline = time.monotonic() + timeout
    while True:
        shown = system.wb(users.alice, "show", str(own_id), "--json", extra_env=own)
        state = str(json.loads(shown.stdout)["state"])
        if state != "queued" or time.monotonic() > deadline:
            return state
        time.sleep(0.3)


@pytest.mark.parametrize("action", ["cancel", "rm"])
def test_a_built_in_kind_an_admin_cancels_in_the_team_queue_is_settled_by_the_daemon(
    system: System, action: str
) -> None:
    """An admin's cancel (or rm) of alice's built-in team job before it started left her
    own-home job queued until alice next ran `ls`, `wait` or the TUI in team mode. The system
    daemon now settles it itself, as alice (`workbench.daemon.teamsettle`), with no command
    of hers; a cancelled team job retried by her still runs it."""
    users = system.users
    home = Path(os.path.expanduser(f"~{users.alice}"))
    csv = home / f"settle-{action}.csv"
    csv.write_text("a,b\n1,2\n3,4\n")
    spec = home / f"settle-{action}.toml"
    spec.write_text(f'kind = "ingest"\nsource = ["{csv.name}"]\ndataset = "settle_{action}"\n')
    give(home, csv, spec)
    queued = wb(system, users.alice, "submit", "--spec", str(spec), "--paused")
    assert queued.returncode == 0, queued.stderr + queued.stdout
    team_id = int(queued.stdout.split()[0])
    own_id = int(queued.stderr.split(" runs it as job ")[1].split()[0])
    done = system.wb(users.carol, action, str(team_id))
    assert done.returncode == 0, done.stderr
    assert _own_state_soon(system, own_id) == "cancelled"
    own = {**OWN_PYTHON, "WORKBENCH_HOME": str(home / ".local/share/workbench")}
    shown = json.loads(system.wb(users.alice, "show", str(own_id), "--json", extra_env=own).stdout)
    assert shown["reason"].startswith("stopped by the system daemon"), shown
    assert f"team job {team_id}" in shown["reason"], shown
    if action == "cancel":  # retried, the team job runs it in her home after all
        assert wb(system, users.alice, "retry", str(team_id)).returncode == 0
        waited = wb(system, users.alice, "wait", str(team_id), "--timeout", "90")
        log = wb(system, users.alice, "logs", str(team_id)).stdout
        assert waited.returncode == 0, waited.stderr + log
        assert _own_state_soon(system, own_id) == "succeeded"


def test_a_pipeline_stage_blocked_in_the_team_queue_is_settled_by_the_daemon(
    system: System,
) -> None:
    """A built-in stage blocked in the team queue by its upstream's failure, after its
    owner's `--batch` was killed (nothing of hers follows it): the system daemon settles its
    job in her own home, which stayed queued until she next ran a team command."""
    users = system.users
    home = Path(os.path.expanduser(f"~{users.alice}"))
    go = users.folder / "settle-go"
    pipeline = home / "blocked.toml"
    pipeline.write_text(
        '[[stage]]\nname = "gate"\nkind = "command"\n'
        f'argv = ["sh", "-c", "while [ ! -e {go} ]; do sleep 0.1; done; exit 1"]\n\n'
        '[[stage]]\nname = "late"\nkind = "train"\nafter = ["gate"]\n'
        'dataset = "nothing_here"\ntarget = "species"\nepochs = 1\n'
    )
    give(home, pipeline)
    client = subprocess.Popen(
        ["runuser", "-u", users.alice, "--", *users.wb, "--batch", str(pipeline), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**system.env(), "HOME": str(home), **OWN_PYTHON},
        cwd=str(home),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        late: list[dict[str, object]] = []
        while not late:
            assert time.monotonic() < deadline and client.poll() is None, client.communicate()
            listed = json.loads(system.wb(users.carol, "ls", "--all", "--json").stdout)
            late = [j for j in listed if j.get("stage") == "late" and j["owner"] == users.alice]
            time.sleep(0.2)
    finally:
        os.killpg(client.pid, signal.SIGKILL)  # her client is gone: nothing of hers settles
        client.communicate()
    go.touch()
    team_id = int(str(late[0]["id"]))
    deadline = time.monotonic() + 60
    while True:
        team = json.loads(system.wb(users.carol, "show", str(team_id), "--json").stdout)
        if team["state"] == "blocked":
            break
        assert time.monotonic() < deadline, team
        time.sleep(0.3)
    own = {**OWN_PYTHON, "WORKBENCH_HOME": str(home / ".local/share/workbench")}
    mine = json.loads(system.wb(users.alice, "ls", "--all", "--json", extra_env=own).stdout)
    (own_id,) = [int(j["id"]) for j in mine if j.get("stage") == "late"]
    assert _own_state_soon(system, own_id) == "cancelled"


def test_a_built_in_kind_submitted_paused_runs_when_resumed(system: System) -> None:
    """`submit --paused` of a built-in kind in team mode held its job in the owner's own home
    too, where teamrun starts only a queued job: resumed, the team job ran nothing and failed.
    The hold is the team job's alone now."""
    users = system.users
    home = Path(os.path.expanduser(f"~{users.alice}"))
    csv = home / "held.csv"
    csv.write_text("a,b\n1,2\n3,4\n")
    spec = home / "held.toml"
    spec.write_text('kind = "ingest"\nsource = ["held.csv"]\ndataset = "held"\n')
    give(home, csv, spec)
    queued = wb(system, users.alice, "submit", "--spec", str(spec), "--paused")
    assert queued.returncode == 0, queued.stderr + queued.stdout
    team_id = int(queued.stdout.split()[0])
    assert wb(system, users.alice, "resume", str(team_id)).returncode == 0
    done = wb(system, users.alice, "wait", str(team_id), "--timeout", "90")
    log = wb(system, users.alice, "logs", str(team_id)).stdout
    assert done.returncode == 0, done.stderr + log
