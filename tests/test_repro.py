"""Reproducible queued jobs, through the real CLI, daemon and git: what a job was submitted with
(code state, environment) in `show` and the model card, `--snapshot` freezing the files a queued
job runs, its cap, and `workbench diff` of two runs."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import wait_state, workbench
from workbench.daemon.client import Client
from workbench.paths import Home


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A real git work tree with one commit (train.py prints v1, .gitignore ignores *.bin) and
    an uncommitted change to train.py (it prints v2)."""
    root = tmp_path / "project"
    root.mkdir()
    _git(root, "init", "-q")
    (root / "train.py").write_text('print("v1")\n')
    (root / ".gitignore").write_text("*.bin\n")
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "first")
    (root / "train.py").write_text('print("v2")\n')
    return root


def _submit(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workbench", "submit", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _log(home: Home, job_id: int) -> str:
    return (home.run_dir(job_id) / "log").read_text()


def test_a_file_edited_after_submit_snapshot_does_not_change_what_runs(
    client: Client, home: Home, repo: Path
) -> None:
    (repo / "helper.py").write_text("NAME = 'untracked helper'\n")  # untracked, not ignored
    (repo / "weights.bin").write_bytes(b"x" * 1000)  # ignored: not frozen
    (repo / "train.py").write_text('import helper\nprint("v2", helper.NAME)\n')  # modified
    # By absolute path: the word is pointed into the snapshot, as the working directory is.
    frozen = _submit(repo, "--paused", "--snapshot", "--", sys.executable, str(repo / "train.py"))
    plain = _submit(repo, "--paused", "--", sys.executable, "train.py")
    assert frozen.returncode == 0 and plain.returncode == 0, frozen.stderr + plain.stderr
    frozen_id, plain_id = int(frozen.stdout), int(plain.stdout)
    (repo / "train.py").write_text('import helper\nprint("edited after submit", helper.NAME)\n')
    (repo / "helper.py").write_text("NAME = 'edited helper'\n")
    for job_id in (frozen_id, plain_id):
        assert workbench("resume", str(job_id)).returncode == 0
        assert wait_state(client, job_id, {"succeeded", "failed"}).state == "succeeded"
    assert _log(home, frozen_id).strip() == "v2 untracked helper"
    assert _log(home, plain_id).strip() == "edited after submit edited helper"  # what is on disk
    shown = json.loads(workbench("show", str(frozen_id), "--json").stdout)
    snap = shown["repro"]["snapshot"]
    assert shown["cwd"] == snap["path"] and snap["source"] == str(repo)
    frozen_dir = Path(snap["path"])
    assert sorted(p.name for p in frozen_dir.iterdir()) == [".gitignore", "helper.py", "train.py"]
    assert "snapshot:" in workbench("show", str(frozen_id)).stdout


def test_git_state_and_environment_are_recorded_at_submit_and_shown(
    client: Client, home: Home, repo: Path
) -> None:
    head = _git(repo, "rev-parse", "HEAD")
    done = _submit(repo, "--wait", "--", sys.executable, "train.py")
    assert done.returncode == 0, done.stderr
    job_id = int(done.stdout.split()[0])
    shown = json.loads(workbench("show", str(job_id), "--json").stdout)
    code, env = shown["repro"]["code"], shown["repro"]["environment"]
    assert code["git"] and code["commit"] == head and code["dirty"] is True
    assert '-print("v1")' in code["diff"] and '+print("v2")' in code["diff"]
    assert code["root"] == str(repo) and code["diff_note"] is None
    assert env["python"]["version"] == platform.python_version()
    import importlib.metadata

    assert env["distributions"]["duckdb"] == importlib.metadata.version("duckdb")
    assert env["torch"] == importlib.metadata.version("torch")
    assert shown["repro"]["started"]["host"] == platform.node()
    text = workbench("show", str(job_id)).stdout
    assert f"git {head[:12]}" in text and "dirty" in text and "python:" in text


def test_a_snapshot_over_its_cap_is_refused_naming_size_and_cap(home: Home, repo: Path) -> None:
    home.config.write_text('[submit]\nsnapshot = true\nsnapshot_cap = "2KiB"\n')
    (repo / "data.csv").write_bytes(b"1,2\n" * 1024)  # 4 KiB, untracked and not ignored
    done = _submit(repo, "--", "true")  # the config's default asks for the snapshot
    assert done.returncode == 2
    assert "4.0 KiB" in done.stderr and "2.0 KiB" in done.stderr, done.stderr
    assert "snapshot_cap" in done.stderr and "Traceback" not in done.stderr
    assert workbench("ls", "--all", "--json").stdout.strip() in ("[]", "")
    assert not list((home.runs / "snapshots").glob("*/*"))  # nothing copied


def test_a_folder_outside_git_is_snapshotted_whole_but_its_virtualenv(
    client: Client, home: Home, tmp_path: Path
) -> None:
    folder = tmp_path / "plain"
    (folder / "pkg").mkdir(parents=True)
    (folder / "pkg" / "mod.py").write_text("X = 1\n")
    (folder / "venv").mkdir()
    (folder / "venv" / "pyvenv.cfg").write_text("home = /usr\n")
    home.config.write_text("[submit]\nsnapshot = true\n")
    done = _submit(folder, "--wait", "--", "sh", "-c", "find . -type f | sort")
    assert done.returncode == 0, done.stderr
    job_id = int(done.stdout.split()[0])
    assert _log(home, job_id).split() == ["./pkg/mod.py"]
    repro = json.loads(workbench("show", str(job_id), "--json").stdout)["repro"]
    assert repro["code"] == {"path": str(folder), "git": False}
    assert "not a git work tree" in repro["snapshot"]["rule"]
    # Pruned with its job, as its run folder is.
    frozen = Path(repro["snapshot"]["path"])
    assert frozen.is_dir()
    time.sleep(0.1)
    assert workbench("prune", "--older-than", "0.05s").returncode == 0
    assert not frozen.exists() and not home.run_dir(job_id).exists()


@pytest.mark.slow
def test_diff_of_two_runs_shows_params_code_environment_data_and_metrics(
    client: Client, home: Home, repo: Path
) -> None:
    from test_train import penguins_table

    from workbench.catalog import lake

    lake.publish_arrow(home, client.store, "penguins", penguins_table())
    ids = []
    for lr in ("0.01", "0.003"):
        spec = repo / f"train-{lr}.toml"
        spec.write_text(
            f'kind = "train"\ndataset = "penguins"\ntarget = "species"\nepochs = 3\nlr = {lr}\n'
        )
        done = _submit(repo, "--spec", str(spec))
        assert done.returncode == 0, done.stderr
        ids.append(int(done.stdout))
        _git(repo, "add", ".")
        _git(repo, "commit", "-qm", f"lr {lr}")
    for job_id in ids:
        assert wait_state(client, job_id, {"succeeded", "failed"}, timeout=180).state == "succeeded"
    result = json.loads(workbench("diff", str(ids[0]), str(ids[1]), "--json").stdout)
    rows = {s: {r["key"]: r for r in result[s]} for s in ("params", "code", "metrics", "datasets")}
    assert (rows["params"]["lr"]["a"], rows["params"]["lr"]["b"]) == (0.01, 0.003)
    assert not rows["params"]["lr"]["same"] and rows["params"]["epochs"]["same"]
    assert not rows["code"]["commit"]["same"] and not rows["code"]["diff"]["same"]
    assert rows["datasets"]["penguins"]["same"]
    assert (
        not rows["metrics"]["val_accuracy"]["same"]
        or rows["metrics"]["val_loss"]["a"] != (rows["metrics"]["val_loss"]["b"])
    )
    assert all(r["same"] for r in result["environment"])
    text = workbench("diff", str(ids[0]), str(ids[1])).stdout
    assert "lr" in text and "differs" in text and "commit" in text and "val_accuracy" in text
    missing = workbench("diff", str(ids[0]), "999")
    assert missing.returncode == 2 and "999" in missing.stderr


@pytest.mark.slow
def test_the_model_card_names_the_training_jobs_code_and_environment(
    client: Client, home: Home, repo: Path
) -> None:
    from test_train import penguins_table

    from workbench.catalog import lake

    lake.publish_arrow(home, client.store, "penguins", penguins_table())
    pipeline = repo / "pipeline.toml"
    pipeline.write_text(
        '[[stage]]\nname = "train"\nkind = "train"\ndataset = "penguins"\ntarget = "species"\n'
        'epochs = 3\n\n[[stage]]\nname = "export"\nkind = "export"\nmodel = "train"\n'
        'after = ["train"]\n'
    )
    done = workbench("--batch", str(pipeline), "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    export = max(j.id for j in client.store.list_jobs() if j.kind == "export")
    train = max(j.id for j in client.store.list_jobs() if j.kind == "train")
    card = json.loads((home.run_dir(export) / "model_card.json").read_text())
    training = card["training"]
    assert training["job_id"] == train
    assert training["code"]["commit"] == _git(repo, "rev-parse", "HEAD")
    assert training["code"]["dirty"] is True and "diff" not in training["code"]
    assert training["environment"]["python"]["version"] == platform.python_version()
    markdown = (home.run_dir(export) / "model_card.md").read_text()
    assert "- training code (job" in markdown and "dirty" in markdown
    assert "- training python:" in markdown
    assert os.path.exists(card["file"])


def test_a_long_diff_is_cut_at_its_cap_with_a_note(repo: Path) -> None:
    from workbench.queue.repro import code_state

    (repo / "train.py").write_text("".join(f"print({i})\n" for i in range(2000)))
    whole = code_state(str(repo))
    assert whole["diff_note"] is None and whole["diff_bytes"] == len(whole["diff"].encode())
    cut = code_state(str(repo), diff_cap=1000)
    assert len(cut["diff"]) == 1000 and cut["diff_bytes"] == whole["diff_bytes"]
    assert cut["diff_note"] is not None and cut["diff_note"].startswith("cut at 1000 B of ")
    assert cut["dirty"] and cut["branch"] and cut["commit"] == _git(repo, "rev-parse", "HEAD")
