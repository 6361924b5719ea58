"""Pipeline files: whole-file validation before anything runs, and `workbench --batch`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import wait_for, workbench

from workbench.daemon.client import Client
from workbench.db.store import Store
from workbench.paths import Home
from workbench.queue.pipeline import Pipeline, load_pipeline, run_pipeline
from workbench.queue.spec import SpecError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(textwrap.dedent(text))
    return path


BAD = [
    (
        "unknown key",
        """
        [[stage]]
        name = "a"
        kind = "command"
        argv = ["true"]
        retry = 2
        """,
        "stage 'a': unknown key 'retry' (did you mean 'retries'?)",
    ),
    (
        "wrong type",
        """
        [[stage]]
        name = "a"
        kind = "command"
        argv = "true"
        """,
        "stage 'a': key 'argv': expected list of string, got string 'true'",
    ),
    (
        "unknown after",
        """
        [[stage]]
        name = "a"
        kind = "command"
        argv = ["true"]
        after = ["setup"]
        """,
        "stage 'a': key 'after': no stage named 'setup'",
    ),
    (
        "cycle",
        """
        [[stage]]
        name = "a"
        kind = "command"
        argv = ["true"]
        after = ["b"]

        [[stage]]
        name = "b"
        kind = "command"
        argv = ["true"]
        after = ["a"]
        """,
        "key 'after': cycle a -> b -> a",
    ),
    (
        "unknown kind",
        """
        [[stage]]
        name = "a"
        kind = "bake"
        """,
        "stage 'a': key 'kind': unknown kind 'bake'",
    ),
    (
        "missing directory",
        """
        [[stage]]
        name = "a"
        kind = "command"
        argv = ["true"]
        cwd = "nowhere"
        """,
        "stage 'a': key 'cwd': no such directory",
    ),
    (
        "duplicate stage",
        """
        [[stage]]
        name = "a"
        kind = "command"
        argv = ["true"]

        [[stage]]
        name = "a"
        kind = "command"
        argv = ["true"]
        """,
        "stage 'a': key 'name': another stage has this name",
    ),
    (
        "bad resource",
        """
        [[stage]]
        name = "a"
        kind = "command"
        argv = ["true"]
        mem = "lots"
        """,
        "stage 'a': key 'mem': not a size: 'lots'",
    ),
    ("not toml", "[[stage]\nname = 1", "not valid TOML"),
    ("no stages", "[pipeline]\nname = 'x'\n", "no [[stage]] tables"),
]


@pytest.mark.parametrize(("text", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_pipelines_are_refused_naming_stage_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(SpecError) as caught:
        load_pipeline(write(tmp_path, text))
    assert message in str(caught.value)


def test_bad_pipeline_exits_2_and_runs_nothing(home: Home, tmp_path: Path) -> None:
    path = write(tmp_path, BAD[0][1])
    result = workbench("--batch", str(path))
    assert result.returncode == 2
    assert "unknown key 'retry'" in result.stderr
    assert not home.state_db.exists() or Store.open(home.state_db).list_jobs() == []


def test_batch_runs_stages_in_order_and_reports_json(home: Home, tmp_path: Path) -> None:
    out = tmp_path / "trace"
    path = write(
        tmp_path,
        f"""
        [pipeline]
        name = "demo"

        [[stage]]
        name = "first"
        kind = "command"
        argv = ["sh", "-c", "echo first >> {out}"]

        [[stage]]
        name = "second"
        kind = "command"
        after = ["first"]
        argv = ["sh", "-c", "echo second >> {out}"]
        """,
    )
    result = workbench("--batch", str(path), "--json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    summary = events[-1]
    assert summary["type"] == "summary" and summary["ok"] is True
    assert [s["stage"] for s in summary["stages"]] == ["first", "second"]
    assert all(s["state"] == "succeeded" for s in summary["stages"])
    assert out.read_text().split() == ["first", "second"]
    assert {"pipeline", "state"} <= {e["type"] for e in events}


def test_batch_exits_1_when_a_stage_fails_and_skips_dependents(home: Home, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[stage]]
        name = "boom"
        kind = "command"
        argv = ["sh", "-c", "echo broken >&2; exit 4"]

        [[stage]]
        name = "after"
        kind = "command"
        after = ["boom"]
        argv = ["true"]
        """,
    )
    result = workbench("--batch", str(path))
    assert result.returncode == 1
    assert (
        "boom" in result.stdout
        and "failed" in result.stdout
        and "exited with code 4" in result.stdout
    )
    assert "blocked" in result.stdout


def test_batch_gpu_stage_fails_without_gpu(home: Home, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[stage]]
        name = "gpu"
        kind = "command"
        gpus = 1
        argv = ["nvidia-smi"]
        """,
    )
    result = workbench("--batch", str(path), "--json")
    assert result.returncode == 1
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["stages"][0]["reason"] == "no GPU on this machine"


ONE_LONG_STAGE = """
[[stage]]
name = "long"
kind = "command"
argv = ["sleep", "60"]
"""


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)]
)
def test_ctrl_c_cancels_what_the_batch_started(
    home: Home, tmp_path: Path, signum: int, code: int
) -> None:
    """Ctrl-C, and SIGTERM as `timeout` or a CI runner sends it, cancel the batch's stages; the
    exit code is the shell's for that signal (130, 143)."""
    path = write(tmp_path, ONE_LONG_STAGE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "--batch", str(path), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )

    def running() -> bool:
        if not home.state_db.exists():
            return False
        jobs = Store.open(home.state_db).list_jobs()
        return bool(jobs) and jobs[0].state == "running"

    wait_for(running, what="the stage to run")
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == code, stderr
    assert "interrupted" in stderr
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["stages"][0]["state"] == "cancelled"


def test_ctrl_c_during_submit_still_cancels_the_queued_stages(
    client: Client, tmp_path: Path
) -> None:
    """A Ctrl-C that lands while the submit call is still in flight (the daemon may already
    have started a stage) cancels the stages instead of leaving them unwatched."""
    import io

    pipeline = load_pipeline(write(tmp_path, ONE_LONG_STAGE))

    def submit_then_ctrl_c(p: Pipeline) -> tuple[int, list[int]]:
        submitted = client.submit_pipeline(p)
        os.kill(os.getpid(), signal.SIGINT)
        return submitted

    out, err = io.StringIO(), io.StringIO()
    code = run_pipeline(
        pipeline,
        submit_then_ctrl_c,
        lambda ids: [client.store.get(i) for i in ids],
        lambda job_id: client.control(job_id, "cancel"),
        json_mode=True,
        out=out,
        err=err,
    )
    assert code == 130
    assert "interrupted" in err.getvalue()
    summary = json.loads(out.getvalue().splitlines()[-1])
    assert summary["stages"][0]["state"] == "cancelled"
