"""Training an ML engineer would trust, end to end through the queue on scikit-learn's data:
imbalance (class weights, threshold, per-class gates), regression in float64 against Ridge,
task inference, missing targets at test time, NaN never ranked best, sweeps with a failed point,
and the pure pieces (stratified split, losses, spec checks) table-driven."""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import remove_home, wait_state, workbench
from sklearn import metrics as skm

from workbench.catalog import lake, tracking
from workbench.daemon.client import Client
from workbench.db.store import Job
from workbench.paths import Home
from workbench.queue.requests import build_request
from workbench.queue.spec import SpecError


def breast_cancer_tables() -> tuple[pa.Table, pa.Table]:
    """Training rows with 5% malignant (300 benign, 16 malignant); the test rows are the other
    57 benign and all 196 other malignant, so minority recall is measured on many rows."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    rng = np.random.default_rng(0)
    malignant = rng.permutation(np.flatnonzero(data.target == 0))
    benign = rng.permutation(np.flatnonzero(data.target == 1))

    def table(rows: np.ndarray) -> pa.Table:
        columns = {f"f{i}": data.data[rows, i] for i in range(30)}
        columns["diagnosis"] = np.where(data.target[rows] == 0, "malignant", "benign")
        return pa.table(columns)

    return table(np.r_[benign[:300], malignant[:16]]), table(np.r_[benign[300:], malignant[16:]])


def diabetes_split() -> tuple[pa.Table, pa.Table, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    order = np.random.default_rng(0).permutation(len(data.target))
    cut = int(0.8 * len(order))

    def table(rows: np.ndarray) -> pa.Table:
        columns = {f"x{j}": data.data[rows, j] for j in range(10)}
        columns["progression"] = data.target[rows]
        return pa.table(columns)

    return table(order[:cut]), table(order[cut:]), order[:cut], order[cut:]


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Client, Home]]:
    """One home with the datasets of this module, its daemon stopped at the end."""
    root = Path(tempfile.mkdtemp(prefix="wb-", dir="/tmp"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_HOME", str(root))
        patch.delenv("WORKBENCH_FAKE_NVML", raising=False)
        home = Home(root).ensure()
        client = Client(home)
        try:
            bc_train, bc_test = breast_cancer_tables()
            lake.publish_arrow(home, client.store, "bc_train", bc_train)
            lake.publish_arrow(home, client.store, "bc_test", bc_test)
            diabetes_train, diabetes_test, _, _ = diabetes_split()
            lake.publish_arrow(home, client.store, "diabetes_train", diabetes_train)
            lake.publish_arrow(home, client.store, "diabetes_test", diabetes_test)
            yield client, home
        finally:
            client.close()
            remove_home(home)


def run(client: Client, **table: object) -> Job:
    job_id = client.submit(build_request(dict(table), Path("."), "test"))
    return wait_state(client, job_id, {"succeeded", "failed", "cancelled"}, timeout=300)


def report_of(home: Home, job: Job) -> dict[str, object]:
    return dict(json.loads((home.run_dir(job.id) / "report.json").read_text()))


# ---- imbalance -----------------------------------------------------------------------------


def test_class_weights_raise_minority_recall_at_5_percent_positives(
    lab: tuple[Client, Home],
) -> None:
    client, home = lab
    recall = {}
    for weights in (None, "balanced"):
        spec = {"class_weight": weights} if weights else {}
        trained = run(
            client,
            kind="train",
            dataset="bc_train",
            target="diagnosis",
            model="linear",
            epochs=60,
            lr=0.01,
            batch_size=32,
            **spec,
        )
        assert trained.state == "succeeded", trained.reason
        tested = run(
            client,
            kind="test",
            model=str(trained.id),
            dataset="bc_test",
            gate={"min_recall": {"malignant": 0.9}},
        )
        report = report_of(home, tested)
        per_class = report["report"]["per_class"]  # type: ignore[index]
        recall[weights] = per_class["malignant"]["recall"]
        assert 0.9 < report["metrics"]["pr_auc"] <= 1.0  # type: ignore[index]
        assert set(per_class) == {"benign", "malignant"}
        if weights is None:  # the per-class gate is what catches the weak minority recall
            assert tested.state == "failed"
            assert "gate min_recall.malignant: recall of malignant = " in (tested.reason or "")
        else:
            assert tested.state == "succeeded", tested.reason
    assert recall["balanced"] >= recall[None] + 0.05, recall


def test_threshold_f1_is_chosen_on_validation_and_carried_to_tests(
    lab: tuple[Client, Home],
) -> None:
    client, home = lab
    trained = run(
        client,
        kind="train",
        dataset="bc_train",
        target="diagnosis",
        model="linear",
        epochs=20,
        lr=0.01,
        threshold="f1",
        val_fraction=0.3,
    )
    assert trained.state == "succeeded", trained.reason
    record = json.loads((home.run_dir(trained.id) / "run.json").read_text())
    assert 0 < record["threshold"] < 1
    assert (
        "the best F1 of 'malignant' on validation" in (home.run_dir(trained.id) / "log").read_text()
    )
    tested = run(client, kind="test", model=str(trained.id), dataset="bc_test")
    assert tested.state == "succeeded", tested.reason
    report = report_of(home, tested)
    assert report["report"]["threshold"] == record["threshold"]  # type: ignore[index]
    predictions, _ = lake.read_arrow(home, f"run{trained.id}_predictions")
    positive = np.asarray(predictions.column("p_malignant").to_numpy()) >= record["threshold"]
    assert (
        np.where(positive, "malignant", "benign") == predictions.column("prediction").to_pylist()
    ).all()


# ---- regression ----------------------------------------------------------------------------


def test_diabetes_linear_r2_within_0_02_of_ridge_on_the_same_split(
    lab: tuple[Client, Home],
) -> None:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    client, home = lab
    trained = run(
        client,
        kind="train",
        dataset="diabetes_train",
        target="progression",
        model="linear",
        epochs=300,
        lr=0.05,
        batch_size=512,  # the whole split per step: the least-squares optimum, not SGD noise
        val_dataset="diabetes_test",
    )
    assert trained.state == "succeeded", trained.reason
    log = (home.run_dir(trained.id) / "log").read_text()
    assert (
        "task regression: the target is double" in log
        and "validation: dataset diabetes_test v1" in log
    )
    tested = run(client, kind="test", model=str(trained.id), dataset="diabetes_test")
    assert tested.state == "succeeded", tested.reason
    ours = report_of(home, tested)["metrics"]["r2"]  # type: ignore[index]
    data = load_diabetes()
    _, _, train_rows, test_rows = diabetes_split()
    ridge = Ridge(alpha=1.0).fit(data.data[train_rows], data.target[train_rows])
    expected = skm.r2_score(data.target[test_rows], ridge.predict(data.data[test_rows]))
    assert abs(ours - expected) <= 0.02, (ours, expected)
    predictions, _ = lake.read_arrow(home, f"run{trained.id}_predictions")
    assert predictions.schema.field("prediction").type == pa.float64()
    labels = predictions.column("label").to_numpy()
    predicted = predictions.column("prediction").to_numpy()
    assert ours == pytest.approx(skm.r2_score(labels, predicted), rel=1e-12)


def test_targets_near_1e8_keep_float64_precision_through_test_and_onnx(
    lab: tuple[Client, Home],
) -> None:
    import onnxruntime as ort

    client, home = lab
    x = np.arange(199, dtype=np.float64)
    lake.publish_arrow(home, client.store, "big", pa.table({"x": x, "y": 1e8 + 3 * x}))
    trained = run(
        client,
        kind="train",
        dataset="big",
        target="y",
        model="linear",
        epochs=300,
        lr=0.05,
        batch_size=512,
        val_fraction=0.1,
    )
    assert trained.state == "succeeded", trained.reason
    tested = run(client, kind="test", model=str(trained.id), dataset="big")
    assert tested.state == "succeeded", tested.reason
    predictions, _ = lake.read_arrow(home, f"run{trained.id}_predictions")
    predicted = predictions.column("prediction").to_numpy()
    assert len(np.unique(predicted)) == 199  # float32 left 7 distinct values
    assert np.abs(predicted - (1e8 + 3 * x)).max() < 0.5
    exported = run(client, kind="export", model=str(trained.id))
    assert exported.state == "succeeded", exported.reason
    card = json.loads((home.run_dir(exported.id) / "model_card.json").read_text())
    assert card["parity"]["units"] == "standardised target" and card["parity"]["violations"] == 0
    session = ort.InferenceSession(card["file"], providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("x", "tensor(double)")]
    output = session.run(None, {"x": x.reshape(-1, 1)})[0]
    assert output.dtype == np.float64 and len(np.unique(output)) == 199
    np.testing.assert_allclose(output[:, 0], predicted, rtol=0, atol=1e-3)


def test_integer_target_with_30_classes_is_classification_and_task_overrides(
    lab: tuple[Client, Home],
) -> None:
    client, home = lab
    rng = np.random.default_rng(1)
    label = np.repeat(np.arange(30), 10)
    table = pa.table({"a": rng.normal(size=300) + label, "label": label.astype(np.int64)})
    lake.publish_arrow(home, client.store, "thirty", table)
    job = run(client, kind="train", dataset="thirty", target="label", epochs=1)
    assert job.state == "succeeded", job.reason
    run_record = tracking.get_run(client.store, job.id)
    assert run_record is not None and run_record.task == "classification"
    assert (
        "task classification: the integer target has 30 distinct values (at most 50)"
        in (home.run_dir(job.id) / "log").read_text()
    )
    forced = run(
        client, kind="train", dataset="thirty", target="label", epochs=1, task="regression"
    )
    forced_run = tracking.get_run(client.store, forced.id)
    assert forced_run is not None and forced_run.task == "regression"


# ---- missing targets at test time -----------------------------------------------------------


def test_missing_targets_in_test_data_are_left_out_and_counted(lab: tuple[Client, Home]) -> None:
    client, home = lab
    regression = run(
        client,
        kind="train",
        dataset="diabetes_train",
        target="progression",
        model="linear",
        epochs=5,
    )
    assert regression.state == "succeeded", regression.reason
    test_table, _ = lake.read_arrow(home, "diabetes_test")
    values = test_table.column("progression").to_pylist()
    holes = pa.array([None if i % 5 == 0 else v for i, v in enumerate(values)], pa.float64())
    lake.publish_arrow(
        home, client.store, "diabetes_holes", test_table.set_column(10, "progression", holes)
    )
    tested = run(
        client,
        kind="test",
        model=str(regression.id),
        dataset="diabetes_holes",
        gate={"max_rmse": 1e9},
    )
    assert tested.state == "succeeded", tested.reason
    report = report_of(home, tested)
    counts = report["report"]["counts"]  # type: ignore[index]
    assert counts["missing_targets"] == math.ceil(len(values) / 5)
    predictions, _ = lake.read_arrow(home, f"run{regression.id}_predictions")
    assert predictions.num_rows == len(values)  # every row predicted, labelled or not
    labelled = predictions.filter(predictions.column("label").is_valid())
    rmse = math.sqrt(
        skm.mean_squared_error(labelled.column("label"), labelled.column("prediction"))
    )
    assert report["metrics"]["rmse"] == pytest.approx(rmse)  # type: ignore[index]
    assert (
        "rows without a 'progression' value left out"
        in (home.run_dir(tested.id) / "log").read_text()
    )

    classifier = run(
        client, kind="train", dataset="bc_train", target="diagnosis", model="linear", epochs=3
    )
    bc_test, _ = lake.read_arrow(home, "bc_test")
    labels = bc_test.column("diagnosis").to_pylist()
    holes = pa.array([None if i % 7 == 0 else v for i, v in enumerate(labels)], pa.string())
    index = bc_test.column_names.index("diagnosis")
    ids = pa.array([f"patient-{i:04d}" for i in range(len(labels))])
    with_ids = bc_test.set_column(index, "diagnosis", holes).append_column("id", ids)
    lake.publish_arrow(home, client.store, "bc_holes", with_ids)
    tested = run(client, kind="test", model=str(classifier.id), dataset="bc_holes", key="id")
    assert tested.state == "succeeded", tested.reason
    counts = report_of(home, tested)["report"]["counts"]  # type: ignore[index]
    assert counts["missing_targets"] == math.ceil(len(labels) / 7)
    predictions, _ = lake.read_arrow(home, f"run{classifier.id}_predictions")
    assert predictions.column("id").to_pylist() == ids.to_pylist()
    assert predictions.column("label").null_count == counts["missing_targets"]
    assert predictions.column("correct").null_count == counts["missing_targets"]


# ---- NaN is never best ----------------------------------------------------------------------


def test_runs_sort_puts_nan_and_missing_last_either_way(home: Home) -> None:
    from workbench.db.store import Store

    store = Store.open(home.state_db)
    info = lake.VersionInfo("d", 1, home.root, 1, 1, "h", [], [], 0, None, 0.0, None)
    for job_id, value in ((1, 5.0), (2, math.nan), (3, 1.0), (4, None)):
        tracking.start_run(store, job_id, f"run{job_id}", "mlp", "regression", info, {}, {}, None)
        tracking.finish_run(store, job_id, {} if value is None else {"val_rmse": value}, "")
    for sort, expected in (("-val_rmse", [3, 1, 2, 4]), ("val_rmse", [3, 1, 2, 4])):
        listed = json.loads(workbench("runs", "--json", f"--sort={sort}").stdout)
        assert [r["job_id"] for r in listed][:2] == expected[:2], sort
        assert {r["job_id"] for r in listed[2:]} == {2, 4}
    assert [r.job_id for r in tracking.sort_runs(tracking.list_runs(store), "val_loss")] == [
        1,
        2,
        3,
        4,
    ]
    store.close()


def test_best_point_skips_nan_and_breaks_ties_by_val_loss_then_age(home: Home) -> None:
    from workbench.db.store import Store

    store = Store.open(home.state_db)
    info = lake.VersionInfo("d", 1, home.root, 1, 1, "h", [], [], 0, None, 0.0, None)
    points = {
        1: {"val_accuracy": 0.9, "val_loss": 0.30},
        2: {"val_accuracy": math.nan, "val_loss": 0.10},
        3: {"val_accuracy": 0.9, "val_loss": 0.20},
        4: {"val_accuracy": 0.9, "val_loss": 0.20},
    }
    for job_id, metrics in points.items():
        tracking.start_run(store, job_id, f"p{job_id}", "mlp", "classification", info, {}, {}, None)
        tracking.finish_run(store, job_id, metrics, "")
    runs = [dataclasses.replace(r, state="succeeded") for r in tracking.list_runs(store)]
    best = tracking.best_run(runs, "val_accuracy")
    assert best is not None and best.job_id == 3  # ties: lower val_loss, then the older job
    assert tracking.best_run([r for r in runs if r.job_id == 2], "val_accuracy") is None
    store.close()


# ---- sweeps and pipelines -------------------------------------------------------------------


def test_failed_sweep_point_is_recorded_and_the_best_point_is_exported_and_tested(
    home: Home, tmp_path: Path
) -> None:
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
            lr = 0.01
            [stage.sweep]
            model = ["cnn", "mlp"]
            metric = "val_accuracy"

            [[stage]]
            name = "export"
            kind = "export"
            after = ["train"]
            model = "train"

            [[stage]]
            name = "test"
            kind = "test"
            after = ["export"]
            model = "export"
            dataset = "penguins"
            gate = { min_accuracy = 0.5 }
            """
        )
    )
    result = workbench("--batch", str(tmp_path / "sweep.toml"), "--json", timeout=400)
    summary = json.loads(result.stdout.splitlines()[-1])
    assert result.returncode == 0, result.stdout + result.stderr
    (sweep,) = summary["sweeps"]
    (failed,) = sweep["failed"]
    assert (
        failed["state"] == "failed" and "model 'cnn' needs image-shaped input" in failed["reason"]
    )
    assert sweep["best_job"] is not None and sweep["best_name"] == "train[model=mlp]"
    states = {s["stage"]: s["state"] for s in summary["stages"] if s["stage"] != "train"}
    assert states == {"ingest": "succeeded", "export": "succeeded", "test": "succeeded"}
    test_job = next(s["job"] for s in summary["stages"] if s["stage"] == "test")
    report = json.loads((home.run_dir(test_job) / "report.json").read_text())
    assert report["model"]["format"] == "onnx" and report["model"]["path"].endswith("model.onnx")
    assert report["model"]["run_job_id"] == sweep["best_job"]


def test_gate_names_are_refused_at_submit(home: Home, tmp_path: Path) -> None:
    spec = tmp_path / "job.toml"
    spec.write_text('kind = "test"\nmodel = "1"\ndataset = "d"\ngate = { min_auc = 0.9 }\n')
    result = workbench("submit", "--spec", str(spec))
    assert result.returncode == 2
    assert "key 'gate.min_auc'" in result.stderr and "did you mean min_roc_auc" in result.stderr
    (tmp_path / "p.toml").write_text(
        textwrap.dedent(
            """
            [[stage]]
            name = "train"
            kind = "train"
            dataset = "d"
            target = "y"
            task = "regression"

            [[stage]]
            name = "test"
            kind = "test"
            after = ["train"]
            model = "train"
            dataset = "d"
            gate = { min_accuracy = 0.9 }
            """
        )
    )
    result = workbench("--batch", str(tmp_path / "p.toml"))
    assert result.returncode == 2
    assert "stage 'test'" in result.stderr
    assert "'accuracy' is not a metric of a regression model" in result.stderr


# ---- validation, losses and spec checks (no jobs) -------------------------------------------


def test_stratified_split_keeps_class_proportions_and_split_seed_is_separate() -> None:
    from jobs.train import Spec, split_table
    from workbench.queue.spec import from_table

    label = ["pos"] * 10 + ["neg"] * 190
    table = pa.table({"x": np.arange(200.0), "y": label})
    base = {"dataset": "d", "target": "y", "val_fraction": 0.2}
    for split_seed in range(5):
        spec = from_table(Spec, {**base, "split_seed": split_seed}, "t")
        train, val = split_table(table, spec, "classification")
        assert val.column("y").to_pylist().count("pos") == 2
        assert train.num_rows + val.num_rows == 200
    one = split_table(table, from_table(Spec, {**base, "seed": 1}, "t"), "classification")[1]
    two = split_table(table, from_table(Spec, {**base, "seed": 2}, "t"), "classification")[1]
    assert one.equals(two)  # the weights' seed leaves the split alone
    other = split_table(table, from_table(Spec, {**base, "split_seed": 9}, "t"), "classification")
    assert not other[1].equals(one)
    plain = from_table(Spec, {**base, "stratify": False, "split_seed": 3}, "t")
    counts = {split_table(table, plain, "classification")[1].column("y").to_pylist().count("pos")}
    assert counts  # unstratified draws are allowed to miss the proportion


def test_losses_and_class_weights() -> None:
    import torch
    from sklearn.utils.class_weight import compute_class_weight

    from jobs.bundle import Preprocessor
    from jobs.train import Spec, class_weights, make_criterion
    from workbench.queue.spec import from_table

    logits = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (50,), generator=torch.Generator().manual_seed(1))
    weights = torch.tensor([1.0, 2.0, 0.5])
    base = {"dataset": "d", "target": "t"}
    focal = make_criterion(
        from_table(Spec, {**base, "loss": "focal", "focal_gamma": 0.0}, "t"),
        "classification",
        weights,
    )
    cross = make_criterion(from_table(Spec, base, "t"), "classification", weights)
    assert focal(logits, y).item() == pytest.approx(cross(logits, y).item(), rel=1e-6)
    sharp = make_criterion(from_table(Spec, {**base, "loss": "focal"}, "t"), "classification", None)
    assert (
        sharp(logits, y).item()
        < make_criterion(from_table(Spec, base, "t"), "classification", None)(logits, y).item()
    )
    out = torch.tensor([[0.0], [3.0], [-1.0]])
    target = torch.tensor([0.5, 0.0, -1.0])
    huber = make_criterion(from_table(Spec, {**base, "loss": "huber"}, "t"), "regression", None)
    mse = make_criterion(from_table(Spec, base, "t"), "regression", None)
    assert huber(out, target).item() == pytest.approx((0.125 + 2.5 + 0.0) / 3)
    assert mse(out, target).item() == pytest.approx((0.25 + 9.0 + 0.0) / 3)
    codes = np.array([0] * 30 + [1] * 15 + [2] * 5)
    pre = Preprocessor([], "t", "classification", ["a", "b", "c"])
    balanced = class_weights(
        from_table(Spec, {**base, "class_weight": "balanced"}, "t"), pre, codes
    )
    assert balanced is not None
    np.testing.assert_allclose(
        balanced, compute_class_weight("balanced", classes=np.arange(3), y=codes), rtol=1e-6
    )
    table = class_weights(from_table(Spec, {**base, "class_weight": {"c": 4.0}}, "t"), pre, codes)
    assert table is not None and table.tolist() == [1.0, 1.0, 4.0]


SPEC_ERRORS = [
    ({"loss": "focal", "task": "regression"}, "key 'loss': 'focal' is not a regression loss"),
    ({"class_weight": "balance"}, "key 'class_weight': \"balanced\" or a table"),
    ({"threshold": 1.5}, "key 'threshold': must be in (0, 1)"),
    ({"threshold": "best"}, "key 'threshold': a probability in (0, 1) or \"f1\""),
    ({"early_stopping": {"patience": 2, "metric": "val_f1"}}, "did you mean 'val_f1_macro'?"),
    ({"early_stopping": {"patience": 0}}, "key 'early_stopping.patience': must be at least 1"),
    ({"val_version": 2}, "key 'val_version': give 'val_dataset' too"),
    ({"warmup_epochs": -1}, "key 'warmup_epochs': must not be negative"),
]


@pytest.mark.parametrize(("extra", "message"), SPEC_ERRORS)
def test_training_keys_are_checked_at_submit(
    tmp_path: Path, extra: dict[str, object], message: str
) -> None:
    with pytest.raises(SpecError, match=None) as error:
        build_request({"kind": "train", "dataset": "d", "target": "t", **extra}, tmp_path, "stage")
    assert message in str(error.value)


def test_early_stopping_on_any_metric_with_min_delta_and_warmup(lab: tuple[Client, Home]) -> None:
    client, home = lab
    job = run(
        client,
        kind="train",
        dataset="bc_train",
        target="diagnosis",
        model="linear",
        epochs=20,
        lr=0.01,
        warmup_epochs=2,
        early_stopping={"metric": "val_f1_macro", "patience": 2, "min_delta": 0.5},
    )
    assert job.state == "succeeded", job.reason
    record = json.loads((home.run_dir(job.id) / "run.json").read_text())
    assert record["stopped_early"] and record["epochs_run"] == 3 and record["best_epoch"] == 1
    log = (home.run_dir(job.id) / "log").read_text()
    assert "early stopping: val_f1_macro has not improved by more than 0.5 for 2 epochs" in log
    lr = [value for _, value in client.store.metrics(job.id, ["lr"])["lr"]]
    assert lr[:3] == pytest.approx([0.005, 0.01, 0.01])
