"""Training jobs on real packaged data, through the real queue and job processes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import wait_for, wait_state, workbench

from workbench.catalog import lake, tracking
from workbench.daemon.client import Client
from workbench.db.store import Job
from workbench.paths import Home
from workbench.queue.requests import build_request


def penguins_table() -> pa.Table:
    import palmerpenguins

    return pa.Table.from_pandas(palmerpenguins.load_penguins(), preserve_index=False)


def digits_table() -> pa.Table:
    from sklearn.datasets import load_digits

    digits = load_digits()
    columns = {f"p{i}": digits.data[:, i] for i in range(64)}
    columns["digit"] = digits.target.astype("int64")
    return pa.table(columns)


def train(client: Client, tmp_path: Path, **spec: object) -> Job:
    request = build_request({"kind": "train", **spec}, tmp_path, "test")
    job_id = client.submit(request)
    return wait_state(client, job_id, {"succeeded", "failed", "cancelled"}, timeout=180)


@pytest.fixture
def penguins(client: Client, home: Home) -> str:
    lake.publish_arrow(home, client.store, "penguins", penguins_table())
    return "penguins"


def test_mlp_on_penguins_reaches_a_sensible_accuracy(
    client: Client, home: Home, tmp_path: Path, penguins: str
) -> None:
    job = train(client, tmp_path, dataset=penguins, target="species", epochs=25, seed=1)
    assert job.state == "succeeded", job.reason
    run = tracking.get_run(client.store, job.id)
    assert run is not None and run.metrics["val_accuracy"] >= 0.9
    record = json.loads((home.run_dir(job.id) / "run.json").read_text())
    assert record["dataset"]["version"] == 1 and len(record["dataset"]["content_hash"]) == 64
    assert record["environment"]["torch"] and record["seed"] == 1
    assert set(record["classes"]) == {"Adelie", "Chinstrap", "Gentoo"}
    series = client.store.metrics(job.id, ["val_accuracy", "train_loss", "samples_per_s"])
    assert len(series["val_accuracy"]) == 25 and len(series["train_loss"]) > 25
    assert all(v is not None and v > 0 for _, v in series["samples_per_s"])
    assert client.store.get(job.id).progress == 1.0


def test_digits_cnn_trains(client: Client, home: Home, tmp_path: Path) -> None:
    lake.publish_arrow(home, client.store, "digits", digits_table())
    job = train(
        client,
        tmp_path,
        dataset="digits",
        target="digit",
        model="cnn",
        epochs=4,
        batch_size=64,
        lr=0.003,
    )
    assert job.state == "succeeded", job.reason
    run = tracking.get_run(client.store, job.id)
    assert run is not None and run.task == "classification"
    assert run.metrics["val_accuracy"] > 0.85


def test_same_seed_gives_the_same_metrics_bit_for_bit(
    client: Client, tmp_path: Path, penguins: str
) -> None:
    first = train(client, tmp_path, dataset=penguins, target="species", epochs=4, seed=7, cpus=1)
    second = train(client, tmp_path, dataset=penguins, target="species", epochs=4, seed=7, cpus=1)
    assert client.store.metrics(first.id, ["train_loss", "val_loss"]) == client.store.metrics(
        second.id, ["train_loss", "val_loss"]
    )


def test_resume_after_sigterm_equals_an_uninterrupted_run(
    client: Client, home: Home, tmp_path: Path
) -> None:
    lake.publish_arrow(home, client.store, "digits", digits_table())
    spec = {
        "dataset": "digits",
        "target": "digit",
        "model": "mlp",
        "hidden": [128, 128],
        "epochs": 12,
        "batch_size": 8,
        "seed": 3,
        "cpus": 1,
        "dropout": 0.1,
    }
    whole = train(client, tmp_path, **spec)
    assert whole.state == "succeeded", whole.reason
    request = build_request({"kind": "train", **spec}, tmp_path, "test")
    job_id = client.submit(request)
    wait_for(
        lambda: (client.store.get(job_id).progress or 0) >= 0.3, timeout=120, what="two epochs"
    )
    client.control(job_id, "cancel")
    stopped = wait_state(client, job_id, "cancelled", timeout=30)
    assert "checkpoint saved" in (stopped.reason or "")
    assert (home.run_dir(job_id) / "checkpoints" / "last.pt").exists()
    _retry_resumes_to_the_same_run(client, home, job_id, whole.id)
    assert client.store.metrics(whole.id, ["train_loss"]) == client.store.metrics(
        job_id, ["train_loss"]
    )


def _retry_resumes_to_the_same_run(client: Client, home: Home, job_id: int, whole_id: int) -> None:
    """Retry the stopped train job `job_id`: it resumes from its checkpoint and succeeds with
    the metrics (non-empty) of the uninterrupted run `whole_id`."""
    client.control(job_id, "retry")
    resumed = wait_state(client, job_id, {"succeeded", "failed"}, timeout=180)
    assert resumed.state == "succeeded", resumed.reason
    assert "resumed from" in (home.run_dir(job_id) / "log").read_text()
    first, second = tracking.get_run(client.store, whole_id), tracking.get_run(client.store, job_id)
    assert first is not None and second is not None
    assert second.metrics and first.metrics == second.metrics


def test_a_job_stopped_after_its_last_checkpoint_resumes_to_the_same_metrics(
    client: Client, home: Home, tmp_path: Path, penguins: str
) -> None:
    """A train job stopped after the checkpoint of its last epoch (while it finished up: a
    preemption that came late) resumed with no epoch to run and recorded no metrics. Its
    retry now evaluates the saved weights and records what the uninterrupted run did."""
    import dataclasses
    import shutil

    spec = {"dataset": penguins, "target": "species", "epochs": 3, "seed": 5, "cpus": 1}
    whole = train(client, tmp_path, **spec)
    assert whole.state == "succeeded", whole.reason
    saved = home.run_dir(whole.id) / "checkpoints" / "last.pt"
    assert saved.exists()
    request = build_request({"kind": "train", **spec}, tmp_path, "test")
    job_id = client.submit(dataclasses.replace(request, paused=True))
    client.control(job_id, "cancel")
    wait_state(client, job_id, "cancelled", timeout=30)
    (home.run_dir(job_id) / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copy(saved, home.run_dir(job_id) / "checkpoints" / "last.pt")
    _retry_resumes_to_the_same_run(client, home, job_id, whole.id)


def test_user_model_file(client: Client, tmp_path: Path, penguins: str) -> None:
    (tmp_path / "mymodel.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def build(in_features, out_features):
                return nn.Sequential(nn.Linear(in_features, 24), nn.Tanh(), nn.Linear(24, out_features))
            """
        )
    )
    job = train(
        client,
        tmp_path,
        dataset=penguins,
        target="species",
        model="mymodel.py:build",
        epochs=15,
        lr=0.01,
    )
    assert job.state == "succeeded", job.reason


def test_regression_target(client: Client, home: Home, tmp_path: Path, penguins: str) -> None:
    job = train(client, tmp_path, dataset=penguins, target="body_mass_g", epochs=20, lr=0.01)
    assert job.state == "succeeded", job.reason
    run = tracking.get_run(client.store, job.id)
    assert run is not None and run.task == "regression" and run.metrics["val_rmse"] < 800


BAD = [
    (  # refused at submit: the dataset is in the catalog (its run-time check stays too)
        {"target": "nope"},
        "key 'target': dataset bad v1 has no column 'nope'; its columns: a, b, label, tags, c",
    ),
    (
        {"target": "label", "features": ["a", "missing"]},
        "key 'features': dataset bad v1 has no column 'missing'",
    ),
    ({"target": "label", "features": ["tags"]}, "feature 'tags' has type list<"),
    (
        {"target": "b", "features": ["a"]},
        "target 'b' has a single class ('same') in the training data",
    ),
    (
        {"target": "a", "features": ["label"], "optimizer": "sgd", "lr": 1e15},
        "loss became",
    ),
    ({"target": "c", "features": ["a"]}, "target 'c' has 2 infinite values"),
]


@pytest.mark.parametrize(
    ("spec", "message"),
    BAD,
    ids=["target", "feature", "unencodable", "single-class", "nan-loss", "infinite-target"],
)
def test_bad_input_fails_with_a_clear_message(
    client: Client, home: Home, tmp_path: Path, spec: dict[str, object], message: str
) -> None:
    table = pa.table(
        {
            "a": [1e30 * (i + 1) for i in range(40)],
            "b": ["same"] * 40,
            "label": ["x", "y"] * 20,
            "tags": [["t"]] * 40,
            "c": [float("inf"), float("-inf")] + [float(i) for i in range(38)],
        }
    )
    lake.publish_arrow(home, client.store, "bad", table)
    if message.startswith("key "):
        from workbench.queue.spec import SpecError

        with pytest.raises(SpecError) as caught:
            train(client, tmp_path, dataset="bad", epochs=2, **spec)
        assert message in str(caught.value)
        return
    job = train(client, tmp_path, dataset="bad", epochs=2, **spec)
    assert job.state == "failed"
    assert message in (job.reason or "")


def test_user_model_that_does_not_import_leaves_its_traceback(
    client: Client, home: Home, tmp_path: Path, penguins: str
) -> None:
    (tmp_path / "broken.py").write_text(
        "import torch\nraise RuntimeError('model file is broken')\n"
    )
    job = train(
        client, tmp_path, dataset=penguins, target="species", model="broken.py:build", epochs=1
    )
    assert job.state == "failed"
    assert "model file is broken" in (job.reason or "")
    log = (home.run_dir(job.id) / "log").read_text()
    assert "Traceback" in log and "broken.py" in log


def test_spec_refused_at_submit(home: Home, tmp_path: Path) -> None:
    spec = tmp_path / "job.toml"
    spec.write_text('kind = "train"\ndataset = "d"\ntarget = "t"\nmodel = "transformer"\n')
    result = workbench("submit", "--spec", str(spec))
    assert result.returncode == 2 and "key 'model'" in result.stderr
    spec.write_text('kind = "train"\ndataset = "d"\ntarget = "t"\nepochs = 0\n')
    assert "key 'epochs'" in workbench("submit", "--spec", str(spec)).stderr


def test_oom_message_says_what_was_asked_and_free() -> None:
    from jobs.train import oom_message

    text = oom_message("NVIDIA H200", "2.00 GiB", 512 * 1024**2, 140 * 1024**3)
    assert text == (
        "CUDA out of memory on NVIDIA H200: tried to allocate 2.00 GiB; 512.0 MiB free of 140.0 GiB."
        " Lower batch_size, or ask for a GPU with more memory (gpu_mem)"
    )


def test_sweep_expands_and_names_the_best_point(home: Home, tmp_path: Path) -> None:
    import palmerpenguins

    palmerpenguins.load_penguins().to_csv(tmp_path / "penguins.csv", index=False)
    (tmp_path / "sweep.toml").write_text(
        textwrap.dedent(
            """
            [[stage]]
            name = "ingest"
            kind = "ingest"
            source = ["penguins.csv"]
            dataset = "penguins"

            [[stage]]
            name = "train"
            kind = "train"
            after = ["ingest"]
            dataset = "penguins"
            target = "species"
            epochs = 3
            [stage.sweep]
            lr = [0.001, 0.03]
            hidden = [[8], [32]]
            metric = "val_accuracy"
            parallel = 2
            """
        )
    )
    result = workbench("--batch", str(tmp_path / "sweep.toml"), "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    names = [s for s in summary["stages"] if s["stage"] == "train"]
    assert len(names) == 4
    (sweep,) = summary["sweeps"]
    assert (
        sweep["points"] == 4 and sweep["metric"] == "val_accuracy" and sweep["best_job"] is not None
    )
    listed = json.loads(workbench("runs", "--json").stdout)
    best = max(listed, key=lambda r: r["metrics"]["val_accuracy"])
    assert best["metrics"]["val_accuracy"] == sweep["best_value"]
    assert json.loads(workbench("group", "--json").stdout) == {"sweep-sweep-train": 2}


@pytest.mark.slow
def test_ddp_with_gloo_on_two_processes_matches_one_process(
    client: Client, home: Home, tmp_path: Path, penguins: str
) -> None:
    spec = {
        "dataset": penguins,
        "target": "species",
        "epochs": 4,
        "batch_size": 32,
        "lr": 0.003,
        "seed": 5,
    }
    single = train(client, tmp_path, **spec)
    ddp = train(client, tmp_path, **spec, ddp_cpu_procs=2)
    assert single.state == "succeeded", single.reason
    log = (home.run_dir(ddp.id) / "log").read_text()
    assert ddp.state == "succeeded", f"{ddp.reason}\n--- the job's log ends:\n{log[-3000:]}"
    assert "training with DDP: 2 processes (gloo)" in log
    series = client.store.metrics(ddp.id, ["val_loss"])["val_loss"]
    assert len(series) == 4  # written once per epoch, by rank 0 only
    one, two = tracking.get_run(client.store, single.id), tracking.get_run(client.store, ddp.id)
    assert one is not None and two is not None
    # Halves of each batch with averaged gradients: the same optimisation, except the last,
    # odd-sized batch of each epoch (19 rows: shards of 10 and 9 weigh rows slightly unequally).
    assert two.metrics["val_loss"] == pytest.approx(one.metrics["val_loss"], rel=2e-2)
    assert two.metrics["val_loss"] != one.metrics["val_loss"]  # really a different code path
