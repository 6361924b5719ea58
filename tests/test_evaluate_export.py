"""Test and export jobs on real packaged data; metrics checked against scikit-learn, ONNX models
against PyTorch in a fresh onnxruntime session."""

from __future__ import annotations

import json
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
from conftest import remove_home, wait_state
from sklearn import metrics as skm

from jobs.metrics import check_gate, classification_report, regression_report, softmax
from workbench.catalog import lake, registry
from workbench.daemon.client import Client
from workbench.db.store import Job
from workbench.paths import Home
from workbench.queue.requests import build_request

ROOT = Path(__file__).resolve().parent.parent


# ---- the metric functions against scikit-learn -------------------------------------------


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_classification_metrics_equal_sklearn(classes: int) -> None:
    rng = np.random.default_rng(classes)
    y = rng.integers(0, classes, 300)
    logits = rng.normal(size=(300, classes)) + np.eye(classes)[y] * 1.5
    proba = softmax(logits)
    report = classification_report(y, proba, [f"c{i}" for i in range(classes)])
    pred = proba.argmax(1)
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert report["precision_macro"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert report["recall_macro"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert report["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert report["log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=list(range(classes))))
    assert report["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    expected_auc = (
        skm.roc_auc_score(y, proba[:, 1])
        if classes == 2
        else skm.roc_auc_score(y, proba, multi_class="ovr")
    )
    assert report["roc_auc"] == pytest.approx(expected_auc)
    per_class = skm.precision_recall_fscore_support(y, pred)
    assert [report["per_class"][f"c{i}"]["f1"] for i in range(classes)] == pytest.approx(
        list(per_class[2])
    )


def test_regression_metrics_equal_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=200) * 10
    pred = y + rng.normal(size=200)
    report = regression_report(y, pred)
    assert report["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert report["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)))
    assert report["r2"] == pytest.approx(skm.r2_score(y, pred))


def test_gate_messages_name_value_and_bound() -> None:
    assert check_gate({"min_accuracy": 0.9}, {"accuracy": 0.95}) == []
    assert check_gate({"min_accuracy": 0.99}, {"accuracy": 0.95}) == [
        "gate min_accuracy: accuracy = 0.9500 is below 0.99"
    ]
    assert check_gate({"max_rmse": 1.0}, {"rmse": 2.5}) == [
        "gate max_rmse: rmse = 2.5000 is above 1.0"
    ]
    assert "was not measured" in check_gate({"min_auc": 0.5}, {"accuracy": 1.0})[0]


# ---- jobs end to end ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained() -> Iterator[tuple[Client, Home, int]]:
    """One home with the penguins split ingested and an MLP trained, shared by this module."""
    root = Path(tempfile.mkdtemp(prefix="wb-", dir="/tmp"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_HOME", str(root))
        home = Home(root).ensure()
        client = Client(home)
        try:
            examples = ROOT / "examples"
            for name in ("train", "test"):
                job = run(
                    client,
                    examples,
                    kind="ingest",
                    source=[f"penguins_{name}.csv"],
                    dataset=f"penguins_{name}",
                )
                assert job.state == "succeeded", job.reason
            job = run(
                client,
                examples,
                kind="train",
                dataset="penguins_train",
                target="species",
                epochs=30,
                lr=0.003,
                batch_size=32,
            )
            assert job.state == "succeeded", job.reason
            yield client, home, job.id
        finally:
            client.close()
            remove_home(home)


def run(client: Client, base: Path, **table: object) -> Job:
    job_id = client.submit(build_request(dict(table), base, "test"))
    return wait_state(client, job_id, {"succeeded", "failed", "cancelled"}, timeout=240)


def test_test_job_report_predictions_and_gate(
    trained: tuple[Client, Home, int], tmp_path: Path
) -> None:
    client, home, run_id = trained
    job = run(
        client,
        tmp_path,
        kind="test",
        model=str(run_id),
        dataset="penguins_test",
        gate={"min_accuracy": 0.9},
    )
    assert job.state == "succeeded", job.reason
    report = json.loads((home.run_dir(job.id) / "report.json").read_text())
    table, _ = lake.read_arrow(home, f"run{run_id}_predictions")
    labels = table.column("label").to_pylist()
    predicted = table.column("prediction").to_pylist()
    assert report["metrics"]["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
    assert report["metrics"]["f1_macro"] == pytest.approx(
        skm.f1_score(labels, predicted, average="macro")
    )
    assert (
        report["report"]["confusion_matrix"]
        == skm.confusion_matrix(labels, predicted, labels=report["report"]["classes"]).tolist()
    )
    con = lake.connect(home, client.store)
    errors = con.execute(
        f"SELECT count(*) FROM run{run_id}_predictions WHERE NOT correct"
    ).fetchone()
    assert errors == (report["errors"],)
    assert report["slices"] and report["slices"][0]["accuracy"] <= report["slices"][-1]["accuracy"]
    assert (home.run_dir(job.id) / "report.md").read_text().startswith("# Test report")
    assert registry.evaluations(client.store, run_id)[0]["gate_passed"] is True


def test_gate_failure_fails_the_job_with_value_and_bound(
    trained: tuple[Client, Home, int], tmp_path: Path
) -> None:
    client, _, run_id = trained
    job = run(
        client,
        tmp_path,
        kind="test",
        model=str(run_id),
        dataset="penguins_test",
        gate={"min_accuracy": 1.01},
    )
    assert job.state == "failed"
    assert "gate min_accuracy: accuracy = " in (job.reason or "") and "is below 1.01" in (
        job.reason or ""
    )


def test_missing_feature_and_unseen_labels_fail_clearly(trained: tuple[Client, Home, int]) -> None:
    client, home, run_id = trained
    test_table, _ = lake.read_arrow(home, "penguins_test")
    lake.publish_arrow(home, client.store, "no_island", test_table.drop(["island"]))
    job = run(client, Path("."), kind="test", model=str(run_id), dataset="no_island")
    assert job.state == "failed" and "lacks column 'island' that the model needs" in (
        job.reason or ""
    )
    species = test_table.column("species").to_pylist()
    renamed = test_table.set_column(
        0, "species", pa.array(["Emperor" if s == "Gentoo" else s for s in species])
    )
    lake.publish_arrow(home, client.store, "emperors", renamed)
    job = run(client, Path("."), kind="test", model=str(run_id), dataset="emperors")
    assert job.state == "failed" and "values never seen in training: 'Emperor'" in (
        job.reason or ""
    )


def _raw_feed(session: ort.InferenceSession, table: pa.Table) -> dict[str, np.ndarray]:
    """What a consumer with the raw file would pass: each column as it is, (rows, 1); strings
    with "" for missing, numbers as float64 with NaN for missing."""
    feed = {}
    for item in session.get_inputs():
        values = table.column(item.name).to_pylist()
        if item.type == "tensor(string)":
            feed[item.name] = np.array(
                [["" if v is None else str(v)] for v in values], dtype=object
            )
        else:
            feed[item.name] = np.array(
                [[np.nan if v is None else v] for v in values], dtype=np.float64
            )
    return feed


def test_categorical_model_exports_whole_and_matches_our_predictions_on_raw_rows(
    trained: tuple[Client, Home, int], tmp_path: Path
) -> None:
    client, home, run_id = trained
    # our predictions of the held-out rows, from the bundle through a test job
    tested = run(client, tmp_path, kind="test", model=str(run_id), dataset="penguins_test")
    assert tested.state == "succeeded", tested.reason
    job = run(client, tmp_path, kind="export", model=str(run_id), quantize=True)
    assert job.state == "succeeded", job.reason
    card = json.loads((home.run_dir(job.id) / "model_card.json").read_text())
    assert card["test"]["job_id"] == tested.id
    assert card["test"]["dataset"]["name"] == "penguins_test"
    assert card["test"]["dataset"]["hash_algorithm"] == "blake2b-256"
    assert len(card["test"]["dataset"]["content_hash"]) == 64
    assert "tested by job" in (home.run_dir(job.id) / "model_card.md").read_text()
    assert card["exporter"] == "torch.onnx.export(dynamo=True)" and isinstance(
        card["batch_axis"], str
    )
    assert card["dataset"]["name"] == "penguins_train" and card["run"]["job_id"] == run_id
    assert card["dataset"]["hash_algorithm"] == "blake2b-256"
    assert (
        "sha256"
        not in (home.run_dir(job.id) / "model_card.md")
        .read_text()
        .split("trained on")[1]
        .splitlines()[0]
    )
    assert card["parity"]["violations"] == 0 and card["quantized"]["int8"] is not None
    assert set(card["latency"]["cpu"]) == {"batch_1", "batch_256", "threads"}
    assert card["latency"]["cpu"]["threads"]["onnxruntime"] >= 1
    assert set(card["parity"]["batches"]) == {"1", "7", "256"} and card["parity"]["test"]
    import hashlib

    path = Path(card["file"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == card["sha256"]
    assert not path.with_name(path.name + ".data").exists()  # one self-contained file
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    kinds = {i.name: i.type for i in session.get_inputs()}
    assert kinds["island"] == kinds["sex"] == "tensor(string)"
    assert kinds["bill_length_mm"] == "tensor(double)" and "features" not in kinds
    predictions, _ = lake.read_arrow(home, f"run{run_id}_predictions")
    classes = card["classes"]
    ours = np.stack([predictions.column(f"p_{c}").to_numpy() for c in classes], axis=1)
    test_table, _ = lake.read_arrow(home, "penguins_test")
    assert predictions.column("row_number").to_pylist() == list(range(test_table.num_rows))
    logits = session.run(None, _raw_feed(session, test_table))[0]
    np.testing.assert_allclose(softmax(logits), ours, atol=1e-4, rtol=1e-3)  # the export parity
    assert [classes[k] for k in logits.argmax(1)] == predictions.column("prediction").to_pylist()
    listed = registry.list_models(client.store)
    by_format = {m["format"]: m for m in listed if m["export_job_id"] == job.id}
    assert by_format["onnx"]["sha256"] == card["sha256"]
    int8 = by_format["onnx-int8"]
    assert (
        int8["path"] == card["quantized"]["file"]
        and int8["card"]["quantized_from"] == by_format["onnx"]["id"]
    )
    assert hashlib.sha256(Path(int8["path"]).read_bytes()).hexdigest() == int8["sha256"]
    onnx_test = run(client, tmp_path, kind="test", model=str(path), dataset="penguins_test")
    assert onnx_test.state == "succeeded", onnx_test.reason
    onnx_report = json.loads((home.run_dir(onnx_test.id) / "report.json").read_text())
    bundle_report = json.loads((home.run_dir(tested.id) / "report.json").read_text())
    assert onnx_report["metrics"]["accuracy"] == bundle_report["metrics"]["accuracy"]


def test_user_model_on_numeric_data_exports_with_preprocessing_inside(
    trained: tuple[Client, Home, int], tmp_path: Path
) -> None:
    from sklearn.datasets import load_wine

    client, home, _ = trained
    wine = load_wine(as_frame=True).frame
    lake.publish_arrow(home, client.store, "wine", pa.Table.from_pandas(wine, preserve_index=False))
    (tmp_path / "net.py").write_text(
        "from torch import nn\n\ndef build(n_in, n_out):\n    return nn.Sequential(nn.Linear(n_in, 16), nn.GELU(), nn.Linear(16, n_out))\n"
    )
    trained_job = run(
        client,
        tmp_path,
        kind="train",
        dataset="wine",
        target="target",
        task="classification",
        model="net.py:build",
        epochs=20,
        lr=0.01,
    )
    assert trained_job.state == "succeeded", trained_job.reason
    job = run(client, tmp_path, kind="export", model=str(trained_job.id))
    assert job.state == "succeeded", job.reason
    card = json.loads((home.run_dir(job.id) / "model_card.json").read_text())
    names = [c for c in wine.columns if c != "target"]
    assert [i["name"] for i in card["inputs"]] == names
    assert {i["type"] for i in card["inputs"]} == {"float64"}
    session = ort.InferenceSession(card["file"], providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == names
    from jobs.bundle import load_bundle

    model, pre, _ = load_bundle(home.run_dir(trained_job.id) / "model.pt")
    import torch

    with torch.no_grad():
        expected = model(torch.from_numpy(pre.transform(pa.Table.from_pandas(wine)))).numpy()
    got = session.run(None, {n: wine[[n]].to_numpy(dtype=np.float64) for n in names})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)


def test_operator_the_exporter_cannot_handle_is_named(
    trained: tuple[Client, Home, int], tmp_path: Path
) -> None:
    client, _, _ = trained
    (tmp_path / "odd.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class Odd(nn.Module):
                def __init__(self, n_in, n_out):
                    super().__init__()
                    self.linear = nn.Linear(n_in, n_out)

                def forward(self, x):
                    return self.linear(x) + torch.histc(x, bins=4).sum() * 0

            def build(n_in, n_out):
                return Odd(n_in, n_out)
            """
        )
    )
    trained_job = run(
        client,
        tmp_path,
        kind="train",
        dataset="penguins_train",
        target="species",
        model="odd.py:build",
        epochs=2,
    )
    assert trained_job.state == "succeeded", trained_job.reason
    job = run(client, tmp_path, kind="export", model=str(trained_job.id))
    assert job.state == "failed"
    assert "cannot handle operator aten.histc" in (job.reason or "")


def test_repeat_reports_mean_and_std(trained: tuple[Client, Home, int], tmp_path: Path) -> None:
    client, home, run_id = trained
    job = run(client, tmp_path, kind="test", model=str(run_id), dataset="penguins_test", repeat=3)
    assert job.state == "succeeded", job.reason
    repeat = json.loads((home.run_dir(job.id) / "report.json").read_text())["repeat"]
    assert repeat["accuracy"]["n"] == 3
    assert 0.8 <= repeat["accuracy"]["mean"] <= 1.0 and repeat["accuracy"]["std"] >= 0.0


def test_bad_specs_are_refused_at_submit(tmp_path: Path) -> None:
    from workbench.queue.spec import SpecError

    with pytest.raises(SpecError, match="gates are min_<metric> or max_<metric>"):
        build_request(
            {"kind": "test", "model": "train", "dataset": "d", "gate": {"accuracy": 0.9}},
            tmp_path,
            "t",
        )
    with pytest.raises(SpecError, match="no such file"):
        build_request({"kind": "export", "model": "missing.pt"}, tmp_path, "t")
