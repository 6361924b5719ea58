"""The command line as a newcomer meets it: a mistyped command, dataset or sort key gets a
"did you mean" (exit 2), tables fit 80 columns without wrapping a cell, a cancelled job is
said to be cancelled once, `ingest --wait` ends with what it made, `--batch` says it starts a
daemon that stays, completions for three shells, and an example config.toml in a new home."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import workbench

from workbench.paths import Home


def test_a_mistyped_command_gets_did_you_mean(home: Home) -> None:
    result = workbench("sumbit", "--", "true")
    assert result.returncode == 2
    assert "did you mean 'submit'?" in result.stderr and "invalid choice" not in result.stderr
    result = workbench("frobnicate")
    assert result.returncode == 2 and "the commands: submit, ls" in result.stderr


def test_sql_on_a_missing_table_lists_the_datasets(home: Home) -> None:
    import pyarrow as pa

    from workbench.catalog import lake
    from workbench.db.store import Store

    store = Store.open(home.state_db)
    lake.publish_arrow(home, store, "scores", pa.table({"x": [1, 2]}))
    store.close()
    result = workbench("sql", "SELECT * FROM score")
    assert result.returncode == 2
    assert "no dataset 'score'; did you mean 'scores'?" in result.stderr
    assert "datasets: scores" in result.stderr and "pg_sequences" not in result.stderr


def test_runs_refuses_an_unknown_sort_key(home: Home) -> None:
    result = workbench("runs", "--sort=nosuch")
    assert result.returncode == 2 and "no metric 'nosuch'" in result.stderr
    result = workbench("runs", "--sort=val_acuracy")
    assert "did you mean 'val_accuracy'?" in result.stderr
    assert workbench("runs", "--sort=-val_loss").returncode == 0


def test_cancel_of_a_cancelled_job_says_so_once(home: Home) -> None:
    job = workbench("submit", "--paused", "--", "true").stdout.strip()
    assert workbench("cancel", job).returncode == 0
    again = workbench("cancel", job)
    assert again.stderr.strip() == f"job {job}: already cancelled"


def test_ingest_wait_ends_with_rows_rejects_and_version(home: Home, tmp_path: Path) -> None:
    csv = tmp_path / "toy.csv"
    csv.write_text("x,label\n1,a\n2,b\nthree,c\n")
    result = workbench("ingest", str(csv), "--dataset", "toy", "--wait", "--type", "x=INTEGER")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "dataset toy v1: 2 rows, 1 rejected"


def test_batch_says_it_starts_a_daemon_that_stays(home: Home, tmp_path: Path) -> None:
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        '[pipeline]\nname = "tiny"\n\n[[stage]]\nname = "hello"\nkind = "command"\n'
        'argv = ["true"]\n'
    )
    result = workbench("--batch", str(pipeline))
    assert result.returncode == 0, result.stderr
    assert "starting a daemon for" in result.stderr and "keeps running" in result.stderr
    assert workbench("daemon", "status").returncode == 0
    again = workbench("--batch", str(pipeline))
    assert "starting a daemon" not in again.stderr


def test_runs_and_models_tables_fit_80_columns(tmp_path: Path) -> None:
    """`runs` was 128 columns wide, wrapping its metrics over 5 lines; `models` cut names."""
    from test_runs_models_screens import build_home

    home = build_home(tmp_path / "h")
    env = {"WORKBENCH_HOME": str(home.root), "COLUMNS": "80"}
    runs = workbench("runs", env=env)
    assert runs.returncode == 0, runs.stderr
    lines = runs.stdout.splitlines()
    assert len(lines) == 3 and all(len(line) <= 80 for line in lines), runs.stdout
    assert "val_accuracy" in runs.stdout
    models = workbench("models", env=env)
    assert all(len(line) <= 80 for line in models.stdout.splitlines()), models.stdout
    assert "toy-mlp-job1" in models.stdout  # the whole name, never `toy-m…`


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(home: Home, shell: str) -> None:
    result = workbench("completion", shell)
    assert result.returncode == 0, result.stderr
    assert "submit" in result.stdout and "completion" in result.stdout
    assert "follow" in result.stdout  # a command's own option (logs --follow)
    if shutil.which(shell):
        checked = subprocess.run([shell, "-n"], input=result.stdout, text=True, capture_output=True)
        assert checked.returncode == 0, checked.stderr


def test_a_new_home_gets_an_example_config(tmp_path: Path) -> None:
    from workbench.config import Config, load_config

    root = tmp_path / "new-home"
    result = workbench("ls", env={"WORKBENCH_HOME": str(root)})
    assert result.returncode == 0, result.stderr
    text = (root / "config.toml").read_text()
    assert "# [daemon]" in text and "# [sql]" in text
    assert all(not line or line.startswith("#") for line in text.splitlines())
    assert load_config(root / "config.toml") == Config()


def test_show_continues_long_values_under_themselves(home: Home) -> None:
    """`show` wrapped long lines back to column 0; at 80 columns a long command continues
    under its value and no line is wider than the terminal."""
    words = [f"--option-number-{i}=value-{i}" for i in range(12)]
    job = workbench("submit", "--paused", "--", "echo", *words).stdout.strip()
    shown = workbench("show", job, env={"COLUMNS": "80"})
    lines = shown.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), shown.stdout
    start = next(i for i, line in enumerate(lines) if line.startswith("  command:"))
    assert lines[start + 1].startswith(" " * 13) and "--option-number" in lines[start + 1]


def test_batch_first_wait_reason_is_the_dependency() -> None:
    """A stage the daemon has not planned yet read "behind other waiting jobs" before its real
    reason, "waiting for dependency 1"."""
    import io

    from tui_data import job

    from workbench.queue.pipeline import _Reporter

    err = io.StringIO()
    reporter = _Reporter(False, io.StringIO(), err)
    first = job(1, "ingest", "running", stage="ingest")
    second = job(
        2,
        "train",
        "queued",
        stage="train",
        deps=((1, "ok"),),
        reason="behind other waiting jobs that go first (within quota, then by priority and age)",
    )
    reporter.update([first, second])
    assert "[train] job 2 queued (waiting for dependency 1)" in err.getvalue()
    assert "behind other waiting" not in err.getvalue()
