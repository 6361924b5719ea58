"""Pipeline stages run as on a cluster node (the Slurm executor's real batch script, records
instead of state.db writes) with no daemon alive: each built-in kind finds what its
dependencies produced on the shared filesystem, and the daemon that comes back later registers
it all, once. Runs without a Slurm cluster: the batch script is started by hand, in order."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.conftest import ROOT
from workbench.config import Config, ExecutorConfig
from workbench.daemon.executors.slurm import ScriptJob, SlurmClient, SlurmExecutor, batch_script
from workbench.daemon.executors.slurm_map import SlurmJob
from workbench.db import executors as placement_db
from workbench.db.store import Store
from workbench.paths import Home
from workbench.queue.kinds import job_argv
from workbench.queue.pipeline import load_pipeline


class _SlurmForgotThem(SlurmClient):
    """A cluster that has forgotten every job (past MinJobAge): the daemon settles them from
    the `exit.json` their batch scripts left."""

    def squeue_jobs(self, slurm_ids: Sequence[str]) -> dict[str, SlurmJob]:
        return {}

    def squeue(self) -> dict[str, SlurmJob]:
        return {}


def _submit_on_slurm(store: Store, path: Path) -> list[int]:
    """Queue a pipeline's stages bound to Slurm, each with a (made-up) Slurm id, as the daemon
    leaves them once the whole pipeline is in squeue."""
    pipeline = load_pipeline(path, dict(os.environ))
    stages = [
        (dataclasses.replace(request, executor="slurm"), stage.after)
        for stage in pipeline.stages
        for request in stage.requests
    ]
    _, by_stage = store.submit_pipeline(pipeline.name, str(path), stages)
    ids = [i for stage in pipeline.stages for i in by_stage[stage.name]]
    placement_db.set_slurm_id(store, ids, [str(9000 + i) for i in ids])
    return ids


def _run_as_on_a_node(home: Home, store: Store, job_id: int) -> tuple[int, float]:
    """Job `job_id` through the Slurm batch script (no daemon: state.db is only read); its exit
    code and how long it took (s)."""
    job = store.get(job_id)
    script = batch_script(
        home, [ScriptJob(job.id, job_argv(job, sys.executable), job.cwd or str(home.root))]
    )
    started = time.monotonic()
    done = subprocess.run(
        ["bash", "-s"],
        input=script,
        text=True,
        capture_output=True,
        timeout=300,
        env={**os.environ, "WORKBENCH_HOME": str(home.root), "PYTHONUNBUFFERED": "1"},
    )
    return done.returncode, time.monotonic() - started


def _daemon_comes_back(home: Home, store: Store) -> None:
    executor = SlurmExecutor(
        home, store, Config(executor=ExecutorConfig(kind="slurm")), client=_SlurmForgotThem()
    )
    executor.tick()


@pytest.mark.slow
def test_quickstart_stages_find_their_inputs_with_no_daemon(home: Home) -> None:
    """Train, test and export ran without the daemon: train waited 60 s for it to apply the
    ingest's records, then failed "no dataset named 'penguins_train' (the lake is empty)"."""
    store = Store.open(home.state_db)
    try:
        ids = _submit_on_slurm(store, ROOT / "examples" / "quickstart.toml")
        for job_id in ids:
            code, took_s = _run_as_on_a_node(home, store, job_id)
            log = (home.run_dir(job_id) / "log").read_text(errors="replace")
            assert code == 0, f"{store.get(job_id).stage}: exit {code}\n{log[-3000:]}"
            assert took_s < 55, f"{store.get(job_id).stage} took {took_s:.0f}s (waited?)"
        assert all(store.get(i).state == "queued" for i in ids)  # nothing wrote state.db
        assert store.conn.execute("SELECT count(*) FROM dataset_versions").fetchone() == (0,)
        _daemon_comes_back(home, store)
        jobs = [store.get(i) for i in ids]
        assert [(j.stage, j.state) for j in jobs] == [(j.stage, "succeeded") for j in jobs], [
            j.reason for j in jobs
        ]
        versions = store.conn.execute(
            "SELECT dataset, version, job_id FROM dataset_versions WHERE dataset LIKE 'penguins%'"
            " ORDER BY dataset"
        ).fetchall()
        assert versions == [("penguins_test", 1, ids[1]), ("penguins_train", 1, ids[0])]
        (train_id, test_id, export_id) = ids[2:]
        run = store.conn.execute(
            "SELECT dataset, dataset_version, metrics FROM runs WHERE job_id=?", (train_id,)
        ).fetchone()
        assert run[:2] == ("penguins_train", 1) and json.loads(run[2])["val_accuracy"] > 0.9
        evaluation = store.conn.execute(
            "SELECT run_job_id, metrics FROM evaluations WHERE job_id=?", (test_id,)
        ).fetchone()
        assert evaluation[0] == train_id and json.loads(evaluation[1])["accuracy"] > 0.9
        models = store.conn.execute(
            "SELECT run_job_id, format FROM models WHERE export_job_id=? ORDER BY id", (export_id,)
        ).fetchall()
        assert [m[0] for m in models] == [train_id] * len(models) and len(models) == 2
        counts = [
            store.conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            for table in ("models", "dataset_versions", "runs", "evaluations", "metrics")
        ]
        _daemon_comes_back(home, store)  # a second look applies nothing twice
        assert [
            store.conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            for table in ("models", "dataset_versions", "runs", "evaluations", "metrics")
        ] == counts
    finally:
        store.close()


def test_an_ingest_after_an_ingest_of_its_dataset_makes_the_next_version_with_no_daemon(
    home: Home, tmp_path: Path
) -> None:
    """Without the first ingest's records in its copy, the second one waited for the daemon,
    then wrote version 1 again (its row then refused by state.db)."""
    (tmp_path / "a.csv").write_text("x,y\n1,2\n3,4\n")
    (tmp_path / "b.csv").write_text("x,y\n5,6\n7,8\n9,10\n")
    (tmp_path / "p.toml").write_text(
        '[pipeline]\nname = "twice"\n\n'
        '[[stage]]\nname = "first"\nkind = "ingest"\nsource = ["a.csv"]\ndataset = "d"\n\n'
        '[[stage]]\nname = "second"\nkind = "ingest"\nafter = ["first"]\nsource = ["b.csv"]\n'
        'dataset = "d"\n'
    )
    store = Store.open(home.state_db)
    try:
        ids = _submit_on_slurm(store, tmp_path / "p.toml")
        for job_id in ids:
            code, took_s = _run_as_on_a_node(home, store, job_id)
            assert code == 0, (home.run_dir(job_id) / "log").read_text()
            assert took_s < 30, f"job {job_id} took {took_s:.0f}s (waited for the daemon?)"
        _daemon_comes_back(home, store)
        assert [store.get(i).state for i in ids] == ["succeeded", "succeeded"], [
            store.get(i).reason for i in ids
        ]
        assert store.conn.execute(
            "SELECT version, rows, job_id FROM dataset_versions WHERE dataset='d' ORDER BY version"
        ).fetchall() == [(1, 2, ids[0]), (2, 3, ids[1])]
    finally:
        store.close()


def test_a_dependency_ended_on_slurm_shows_its_end_to_the_job_after_it(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep's best point is picked among the points that succeeded: with the daemon gone, a
    stage after the sweep saw its points still queued, so none had "succeeded"."""
    from jobs.context import JobContext
    from workbench.db.journal import RECORDS_FILE
    from workbench.db.store import JobRequest

    store = Store.open(home.state_db)
    try:
        requests = [
            JobRequest(name, "command", {"argv": ["true"]}, "/", {}, argv=["true"],
                       executor="slurm")
            for name in ("ok", "bad", "pending", "after")
        ]  # fmt: skip
        ok, bad, pending, after = store.submit_pipeline(
            "p",
            "p.toml",
            [(requests[0], ()), (requests[1], ()), (requests[2], ()),
             (requests[3], (("ok", "any"), ("bad", "any"), ("pending", "any")))],
        )[1].values()  # fmt: skip
        ok_id, bad_id, pending_id, after_id = ok[0], bad[0], pending[0], after[0]
        for job_id, code in ((ok_id, 0), (bad_id, 3)):
            home.run_dir(job_id).mkdir(parents=True)
            (home.run_dir(job_id) / "exit.json").write_text(
                json.dumps({"exit_code": code, "signal": None, "ended_at": time.time()})
            )
        home.run_dir(after_id).mkdir(parents=True)
        monkeypatch.setenv("WORKBENCH_RECORDS", str(home.run_dir(after_id) / RECORDS_FILE))
        handler = signal.getsignal(signal.SIGTERM)
        try:
            ctx = JobContext.from_environment(after_id)
        finally:
            signal.signal(signal.SIGTERM, handler)
        seen = {i: ctx.store.get(i).state for i in (ok_id, bad_id, pending_id, after_id)}
        assert seen == {
            ok_id: "succeeded",
            bad_id: "failed",
            pending_id: "queued",
            after_id: "queued",
        }
        assert ctx.store.get(bad_id).exit_code == 3
        assert {store.get(i).state for i in seen} == {"queued"}  # only the job's copy
        ctx.store.set_progress(after_id, 0.5, "half")
        records = (home.run_dir(after_id) / RECORDS_FILE).read_text().splitlines()
        assert len(records) == 1 and "progress" in records[0]  # its own writes, no others
        ctx.store.close()
    finally:
        store.close()


def test_a_script_on_a_node_finds_the_dataset_an_ingest_before_it_made_with_no_daemon(
    home: Home, tmp_path: Path
) -> None:
    """`workbench.track.dataset()` in a command stage read state.db alone: "no dataset named
    'd'" until the daemon applied the ingest's records (never, with the daemon dead)."""
    (tmp_path / "a.csv").write_text("x,y\n1,2\n3,4\n")
    script = "import workbench.track as t; d = t.dataset('d'); print('found', d.version, d.rows)"
    (tmp_path / "p.toml").write_text(
        '[pipeline]\nname = "read"\n\n'
        '[[stage]]\nname = "ingest"\nkind = "ingest"\nsource = ["a.csv"]\ndataset = "d"\n\n'
        f'[[stage]]\nname = "use"\nkind = "command"\nafter = ["ingest"]\n'
        f"argv = [{json.dumps(sys.executable)}, '-c', {json.dumps(script)}]\n"
    )
    store = Store.open(home.state_db)
    try:
        ingest_id, use_id = _submit_on_slurm(store, tmp_path / "p.toml")
        for job_id in (ingest_id, use_id):
            code, _ = _run_as_on_a_node(home, store, job_id)
            assert code == 0, (home.run_dir(job_id) / "log").read_text()
        assert "found 1 2" in (home.run_dir(use_id) / "log").read_text()
        _daemon_comes_back(home, store)
        assert [store.get(i).state for i in (ingest_id, use_id)] == ["succeeded"] * 2
        lineage = store.conn.execute(
            "SELECT dataset, version FROM run_datasets WHERE job_id=?", (use_id,)
        ).fetchall()
        assert lineage == [("d", 1)]
    finally:
        store.close()
