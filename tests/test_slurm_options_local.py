"""Per-job Slurm options (`[slurm]` of a spec, `[stage.slurm]`, `--slurm KEY=VALUE`) on a job
that runs on the local executor were dropped without a word; every way in refuses them at
submit (exit 2), naming the field and the executor. No Slurm is needed: the refusal comes first."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import workbench

from workbench.daemon.client import ensure_daemon
from workbench.daemon.teamops import RequestError, request_from_wire
from workbench.db.store import Store
from workbench.paths import Home

FULL = {"WORKBENCH_NO_INTAKE": "1"}  # the client checks and queues it itself


def _no_jobs(home: Home) -> bool:
    store = Store.open(home.state_db)
    try:
        return store.list_jobs() == []
    finally:
        store.close()


@pytest.mark.parametrize("env", [FULL, None], ids=["full-cli", "daemon-intake"])
def test_slurm_flags_on_a_local_home_are_refused(home: Home, env: dict[str, str] | None) -> None:
    if env is None:  # a running daemon takes the submission over its intake socket
        ensure_daemon(home)
    done = workbench("submit", "--slurm", "partition=gpu", "--slurm", "nodes=2", "--", "true",
                     env=env)  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--slurm (nodes, partition)" in done.stderr, done.stderr
    assert "home's executor is local" in done.stderr and "Traceback" not in done.stderr
    assert _no_jobs(home)


def test_a_spec_files_slurm_table_on_a_local_job_is_refused(home: Home, tmp_path: Path) -> None:
    spec = tmp_path / "job.toml"
    spec.write_text('kind = "command"\nargv = ["true"]\n[slurm]\nqos = "long"\n')
    done = workbench("submit", "--spec", str(spec), env=FULL)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{spec}: key 'slurm' (qos)" in done.stderr and "local executor" in done.stderr
    empty = tmp_path / "empty.toml"  # an empty table asks for nothing: taken
    empty.write_text('kind = "command"\nargv = ["true"]\n[slurm]\n')
    assert workbench("submit", "--paused", "--spec", str(empty), env=FULL).returncode == 0


def test_executor_local_on_a_slurm_home_says_so(home: Home) -> None:
    home.config.write_text('[executor]\nkind = "slurm"\n')
    done = workbench("submit", "--executor", "local", "--slurm", "exclusive", "--", "true")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--slurm (exclusive)" in done.stderr and "(--executor local)" in done.stderr
    assert _no_jobs(home)


def test_a_pipeline_stage_with_slurm_options_on_the_local_executor_is_refused(
    home: Home, tmp_path: Path
) -> None:
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        '[[stage]]\nname = "first"\nkind = "command"\nargv = ["true"]\n'
        '[[stage]]\nname = "second"\nkind = "command"\nargv = ["true"]\n'
        '[stage.slurm]\naccount = "lab"\n'
    )
    done = workbench("--batch", str(pipeline))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "stage 'second': key 'slurm' (account)" in done.stderr, done.stderr
    assert "home's executor is local" in done.stderr
    assert not home.state_db.exists() or _no_jobs(home)


def test_the_daemon_refuses_a_raw_intake_request_with_slurm_options(home: Home) -> None:
    """A client that bypasses the CLI and writes the intake datagram itself."""
    from tests.test_intake import _datagram, _request

    ensure_daemon(home)
    answer = _datagram(home, _request(home, ["--slurm", "constraint=a100", "--", "true"]))
    assert isinstance(answer, dict) and answer.get("exit") == 2, answer
    assert "--slurm (constraint)" in str(answer.get("stderr")), answer
    assert _no_jobs(home)


def test_team_mode_refuses_slurm_options_on_the_wire() -> None:
    wire = {"name": "x", "kind": "command", "spec": {}, "cwd": "/tmp", "env": {},
            "argv": ["true"], "slurm": {"partition": "gpu"}}  # fmt: skip
    with pytest.raises(RequestError, match=r"field 'slurm'.*local"):
        request_from_wire(wire, 1500)
    assert request_from_wire({**wire, "slurm": None}, 1500).slurm is None
