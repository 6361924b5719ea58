"""Exports that reproduce `test` exactly, on generated data: a 10-digit column beside a
categorical one (float32 preprocessing failed its own parity) and alone (it passed parity while
ONNX differed from `test` by 0.2), a model whose values depend on the batch size, an int8 model
with its own metric and parity, and one named, documented input per column (dates, timestamps)
with a clear error for a value of the wrong kind."""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
from conftest import stop_daemon, wait_state

from workbench.catalog import lake, registry
from workbench.daemon.client import Client
from workbench.db.store import Job
from workbench.paths import Home


@pytest.fixture(scope="module")
def daemon() -> Iterator[tuple[Client, Home]]:
    root = Path(tempfile.mkdtemp(prefix="wb-", dir="/tmp"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_HOME", str(root))
        home = Home(root).ensure()
        client = Client(home)
        yield client, home
        client.close()
        stop_daemon(home)


def run(client: Client, base: Path, **table: object) -> Job:
    from workbench.queue.requests import build_request

    job_id = client.submit(build_request(dict(table), base, "test"))
    return wait_state(client, job_id, {"succeeded", "failed", "cancelled"}, timeout=240)


def large_ids(rows: int, seed: int, categorical: bool) -> pa.Table:
    """A 10-digit identifier-like column (1.5e9 + up to 5,000: float32 keeps 128 steps of it)
    that carries the signal, a small numeric column and, optionally, a category."""
    rng = np.random.default_rng(seed)
    ident = 1_500_000_000 + rng.integers(0, 5000, rows)
    x = rng.normal(size=rows)
    y = (ident - 1_500_002_500) / 200.0 + 2 * x + rng.normal(size=rows) * 0.1
    columns: dict[str, object] = {"ident": pa.array(ident, pa.int64()), "x": x}
    if categorical:
        colour = rng.choice(["red", "green", "blue"], rows)
        y = y + np.select([colour == "red", colour == "green"], [4.0, -4.0], 0.0)
        columns["colour"] = pa.array(colour.tolist(), pa.string())
    columns["y"] = y
    return pa.table(columns)


def onnx_feed(session: ort.InferenceSession, table: pa.Table) -> dict[str, np.ndarray]:
    """Each named input from the raw column, as the card documents it."""
    feed = {}
    for item in session.get_inputs():
        values = table.column(item.name).to_pylist()
        if item.type == "tensor(string)":
            feed[item.name] = np.array([["" if v is None else v] for v in values], dtype=object)
        else:
            assert item.type == "tensor(double)", item
            feed[item.name] = np.array(
                [[np.nan if v is None else v] for v in values], dtype=np.float64
            )
    return feed


@pytest.mark.parametrize("categorical", [True, False], ids=["with_category", "numeric_only"])
def test_large_magnitude_column_exports_exactly_what_test_predicts(
    daemon: tuple[Client, Home], tmp_path: Path, categorical: bool
) -> None:
    client, home = daemon
    name = f"ids_{'cat' if categorical else 'num'}"
    lake.publish_arrow(home, client.store, name, large_ids(800, 1, categorical))
    lake.publish_arrow(home, client.store, f"{name}_test", large_ids(300, 2, categorical))
    trained = run(client, tmp_path, kind="train", dataset=name, target="y", epochs=40, lr=0.01)
    assert trained.state == "succeeded", trained.reason
    tested = run(client, tmp_path, kind="test", model=str(trained.id), dataset=f"{name}_test")
    assert tested.state == "succeeded", tested.reason
    exported = run(client, tmp_path, kind="export", model=str(trained.id))
    assert exported.state == "succeeded", exported.reason  # float32 fills failed parity here
    card = json.loads((home.run_dir(exported.id) / "model_card.json").read_text())
    assert [i["name"] for i in card["inputs"]] == (
        ["ident", "x", "colour"] if categorical else ["ident", "x"]
    )
    session = ort.InferenceSession(card["file"], providers=["CPUExecutionProvider"])
    table, _ = lake.read_arrow(home, f"{name}_test")
    got = session.run(None, onnx_feed(session, table))[0][:, 0]
    predictions, _ = lake.read_arrow(home, f"run{trained.id}_predictions")
    ours = predictions.column("prediction").to_numpy()
    # float32 preprocessing was off by up to 0.2 here; the model itself is float32 (1e-7)
    assert np.abs(got - ours).max() < 1e-4 * float(np.std(ours)), np.abs(got - ours).max()


BATCH_BRANCH = """
from torch import nn


class Branchy(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)

    def forward(self, x):
        out = self.linear(x)
        if x.shape[0] == 1:
            return out + 0.25
        return out


def build(n_in, n_out):
    return Branchy(n_in, n_out)
"""


def test_a_model_whose_values_depend_on_the_batch_size_fails_parity(
    daemon: tuple[Client, Home], tmp_path: Path
) -> None:
    client, home = daemon
    lake.publish_arrow(home, client.store, "ids_branch", large_ids(300, 3, True))
    (tmp_path / "branchy.py").write_text(textwrap.dedent(BATCH_BRANCH))
    trained = run(
        client,
        tmp_path,
        kind="train",
        dataset="ids_branch",
        target="y",
        model="branchy.py:build",
        epochs=2,
    )
    assert trained.state == "succeeded", trained.reason
    exported = run(client, tmp_path, kind="export", model=str(trained.id))
    assert exported.state == "failed"
    assert "at batch 1" in (exported.reason or ""), exported.reason


def labelled(rows: int, seed: int) -> pa.Table:
    """Two classes from a numeric, a DATE and a TIMESTAMP column."""
    rng = np.random.default_rng(seed)
    days = rng.integers(0, 3650, rows)
    micros = rng.integers(0, 10**9, rows) * 10**6
    x = rng.normal(size=rows)
    score = x + (days - 1825) / 1000 - (micros / 1e15 - 0.5)
    return pa.table(
        {
            "x": x,
            "day": pa.array(
                [dt.date(2000, 1, 1) + dt.timedelta(days=int(d)) for d in days], pa.date32()
            ),
            "at": pa.array(micros, pa.timestamp("us")),
            "label": pa.array(np.where(score > 0, "yes", "no").tolist(), pa.string()),
        }
    )


@pytest.fixture(scope="module")
def dated(daemon: tuple[Client, Home]) -> tuple[int, int]:
    """(train job, export job with int8) on `labelled` data."""
    client, home = daemon
    base = Path(tempfile.mkdtemp(prefix="wb-dated-"))
    lake.publish_arrow(home, client.store, "dated", labelled(600, 4))
    trained = run(client, base, kind="train", dataset="dated", target="label", epochs=15)
    assert trained.state == "succeeded", trained.reason
    exported = run(client, base, kind="export", model=str(trained.id), quantize=True)
    assert exported.state == "succeeded", exported.reason
    return trained.id, exported.id


def test_inputs_are_named_per_column_with_their_units(
    daemon: tuple[Client, Home], dated: tuple[int, int]
) -> None:
    client, home = daemon
    _, export_id = dated
    card = json.loads((home.run_dir(export_id) / "model_card.json").read_text())
    inputs = {i["name"]: i for i in card["inputs"]}
    assert list(inputs) == ["x", "day", "at"]
    assert inputs["day"]["type"] == inputs["at"]["type"] == "float64"
    assert "seconds since 1970-01-01" in inputs["day"]["unit"]
    assert "microseconds since 1970-01-01" in inputs["at"]["unit"]
    markdown = (home.run_dir(export_id) / "model_card.md").read_text()
    assert "`at`: float64, trained on timestamp[us]; microseconds since 1970" in markdown
    listed = {m["id"]: m for m in registry.list_models(client.store)}
    assert any(m["card"]["inputs"] == card["inputs"] for m in listed.values())
    # the documented units reproduce the model's own predictions; the order of the feed is
    # irrelevant (named inputs), so a reversed column order cannot flip labels
    session = ort.InferenceSession(card["file"], providers=["CPUExecutionProvider"])
    table = labelled(50, 5)
    day = np.array([(d - dt.date(1970, 1, 1)).days * 86400.0 for d in table["day"].to_pylist()])
    at = table["at"].cast(pa.int64()).to_numpy().astype(np.float64)
    feed = {
        "at": at.reshape(-1, 1),
        "day": day.reshape(-1, 1),
        "x": table["x"].to_numpy().reshape(-1, 1),
    }
    from jobs.evaluate import Predictor

    ours = Predictor.load("onnx", Path(card["file"])).predict(table)
    from jobs.metrics import softmax

    np.testing.assert_allclose(softmax(session.run(None, feed)[0]), ours, rtol=1e-6, atol=1e-7)


def test_a_value_of_the_wrong_kind_is_refused_naming_the_column(
    daemon: tuple[Client, Home], dated: tuple[int, int], tmp_path: Path
) -> None:
    client, home = daemon
    train_id, export_id = dated
    table = labelled(40, 6)
    as_text = table.set_column(1, "day", pa.array([str(d) for d in table["day"].to_pylist()]))
    lake.publish_arrow(home, client.store, "dated_text", as_text)
    seconds = table.set_column(2, "at", table["at"].cast(pa.int64()))
    lake.publish_arrow(home, client.store, "dated_seconds", seconds)
    onnx_file = json.loads((home.run_dir(export_id) / "model_card.json").read_text())["file"]
    for model in (str(train_id), onnx_file):
        job = run(client, tmp_path, kind="test", model=model, dataset="dated_text")
        assert job.state == "failed"
        assert "column 'day' holds string values" in (job.reason or ""), job.reason
        assert "trained on date32[day]" in (job.reason or "")
        job = run(client, tmp_path, kind="test", model=model, dataset="dated_seconds")
        assert job.state == "failed"
        assert "column 'at' holds int64 values (number)" in (job.reason or ""), job.reason
        assert "microseconds since 1970" in (job.reason or "")


def test_an_int8_model_has_its_own_metric_and_parity(
    daemon: tuple[Client, Home], dated: tuple[int, int], tmp_path: Path
) -> None:
    client, _ = daemon
    train_id, _ = dated
    tested = run(client, tmp_path, kind="test", model=str(train_id), dataset="dated")
    assert tested.state == "succeeded", tested.reason
    exported = run(client, tmp_path, kind="export", model=str(train_id), quantize=True)
    assert exported.state == "succeeded", exported.reason
    models = {
        m["format"]: m
        for m in registry.list_models(client.store)
        if m["export_job_id"] == exported.id
    }
    fp32, int8 = models["onnx"]["card"], models["onnx-int8"]["card"]
    assert fp32["test"]["job_id"] == tested.id
    assert int8["test"] is None  # the fp32 model's test is not the int8 model's
    assert int8["held_out"]["metrics"] == {"accuracy": fp32["quantized"]["int8"]}
    assert int8["parity"]["against"] == "the fp32 ONNX model"
    assert int8["parity"]["max_abs_diff"] == fp32["quantized"]["max_abs_diff_vs_fp32"]
    assert int8["latency"]["cpu"]["batch_256"]["onnxruntime"]["median_ms"] == pytest.approx(
        fp32["quantized"]["latency_ms"]
    )


@pytest.fixture(scope="module")
def dated_yes(daemon: tuple[Client, Home]) -> str:
    """A dataset of `labelled` rows of class 'yes' only (the class 'no' absent); its name. Each
    test that reads it asks for it, so none depends on another having run first."""
    client, home = daemon
    table = labelled(200, 7)
    only_yes = table.filter(pa.compute.equal(table["label"], "yes"))
    lake.publish_arrow(home, client.store, "dated_yes", only_yes)
    return "dated_yes"


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def test_every_json_file_a_job_writes_is_strict_json(
    daemon: tuple[Client, Home], dated: tuple[int, int], dated_yes: str, tmp_path: Path
) -> None:
    """ROC AUC with a class absent from the test rows is null with its reason beside it, not a
    bare NaN; then every JSON file under the home (run.json, report.json, model_card.json, the
    runner's files) parses with a parser that refuses NaN and Infinity."""
    client, home = daemon
    train_id, _ = dated
    job = run(client, tmp_path, kind="test", model=str(train_id), dataset=dated_yes)
    assert job.state == "succeeded", job.reason
    text = (home.run_dir(job.id) / "report.json").read_text()
    report = json.loads(text, parse_constant=_refuse_constant)
    assert report["metrics"]["roc_auc"] is None
    assert "class 'no' is absent" in report["undefined"]["roc_auc"]
    files = sorted(home.root.rglob("*.json"))
    assert {"run.json", "report.json", "model_card.json"} <= {f.name for f in files}
    for path in files:
        json.loads(path.read_text(), parse_constant=_refuse_constant)


def test_lineage_card_names_workbench_onnx_test_names_its_run_each_test_keeps_its_predictions(
    daemon: tuple[Client, Home], dated: tuple[int, int], dated_yes: str, tmp_path: Path
) -> None:
    import subprocess

    import workbench

    client, home = daemon
    train_id, export_id = dated
    card = json.loads((home.run_dir(export_id) / "model_card.json").read_text())
    root = Path(workbench.__file__).resolve().parent.parent
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert card["workbench"]["version"] == workbench.__version__
    assert card["workbench"]["git_commit"].startswith(head)
    assert (
        f"exported by workbench {workbench.__version__}, commit {head}"
        in (home.run_dir(export_id) / "model_card.md").read_text()
    )
    first = run(client, tmp_path, kind="test", model=card["file"], dataset="dated")
    second = run(client, tmp_path, kind="test", model=str(train_id), dataset=dated_yes)
    assert first.state == second.state == "succeeded", (first.reason, second.reason)
    report = json.loads((home.run_dir(first.id) / "report.json").read_text())
    assert report["model"]["run_job_id"] == train_id  # the .onnx file named its run
    assert report["predictions"]["dataset"] == f"run{train_id}_test{first.id}_predictions"
    assert first.id in [e["job_id"] for e in registry.evaluations(client.store, train_id)]
    mine, _ = lake.read_arrow(home, f"run{train_id}_test{first.id}_predictions")
    theirs, _ = lake.read_arrow(home, f"run{train_id}_test{second.id}_predictions")
    latest, _ = lake.read_arrow(home, f"run{train_id}_predictions")
    assert mine.num_rows == 600 and theirs.num_rows == latest.num_rows < 600
    assert latest.equals(theirs)
