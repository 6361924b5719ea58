"""Task inference and encoding warnings, on generated data: a float 0/1 label with missing
values is classification (said so), a constant numeric target is refused, numeric-looking and
high-cardinality text columns are reported, unseen categories are counted per column in the
test report, and the default training length scales with the data and is stated in the log."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import stop_daemon, wait_state

from jobs import train
from jobs.bundle import Preprocessor, encoding_warnings
from jobs.context import JobFailed
from workbench.catalog import lake
from workbench.daemon.client import Client
from workbench.db.store import Job
from workbench.paths import Home
from workbench.queue.requests import build_request


def test_float_zero_one_label_with_missing_values_is_classification() -> None:
    column = pa.array([0.0, 1.0, None, 1.0, 0.0, np.nan])
    task, reason = train.infer_task(column, "auto")
    assert task == "classification"
    assert "only whole numbers" in reason and "0.0/1.0" in reason
    assert train.infer_task(pa.array([0.5, 1.0, 2.0]), "auto")[0] == "regression"


def test_many_integer_codes_stay_regression_but_say_they_may_be_classes() -> None:
    codes = pa.array(np.arange(3000) % 60)
    task, reason = train.infer_task(codes, "auto")
    assert task == "regression" and "may be class codes" in reason


def test_a_constant_numeric_target_is_refused_like_a_constant_class() -> None:
    table = pa.table({"x": np.arange(10.0), "y": np.full(10, 3.5)})
    spec = train.Spec(dataset="d", target="y", task="regression")
    with pytest.raises(JobFailed, match=r"target 'y' has a single value \(3.5\)"):
        train.prepare_data(table, spec, "dataset d v1")


def test_numeric_looking_and_high_cardinality_text_is_reported() -> None:
    rng = np.random.default_rng(0)
    amounts = [f"{v:,.1f}" for v in rng.uniform(500, 5000, 300)]  # "1,234.5"
    table = pa.table({"amount": amounts, "colour": rng.choice(["a", "b"], 300), "y": [1.0] * 300})
    pre = Preprocessor.fit(table, ["amount", "colour"], "y", "regression")
    warnings = encoding_warnings(table, pre)
    assert len(warnings) == 2, warnings
    assert "distinct values in 300 training rows" in warnings[0] and "amount" in warnings[0]
    assert "feature 'amount' is text, but 100% of its values read as numbers" in warnings[1]
    assert "," in warnings[1].split("(e.g. ")[1]
    assert not any("colour" in w for w in warnings)


def test_unseen_categories_are_counted_per_column() -> None:
    train_rows = pa.table({"a": ["x", "y", "x"], "b": ["p", "q", None], "n": [1.0, 2.0, 3.0]})
    pre = Preprocessor.fit(train_rows, ["a", "b", "n"], "n", "regression")
    later = pa.table({"a": ["x", "z", "w", None], "b": ["p", "q", "q", "r"], "n": [1.0] * 4})
    assert pre.unseen_categories(later) == {"a": 2, "b": 1}


@pytest.mark.parametrize(
    ("rows", "batch", "epochs", "stopping"),
    [(120, 64, 500, 25), (1000, 64, 125, 25), (100_000, 64, 20, 25), (500, 500, 500, 25)],
)
def test_default_length_scales_with_the_data(
    rows: int, batch: int, epochs: int, stopping: int
) -> None:
    spec = train.Spec(dataset="d", target="y", batch_size=batch)
    resolved, line = train.resolve_length(spec, rows, rows // 4)
    assert resolved.epochs == epochs
    assert resolved.early_stopping == train.EarlyStopping(stopping, "-val_loss")
    assert line is not None and f"epochs {epochs} by default" in line
    given, none = train.resolve_length(train.Spec(dataset="d", target="y", epochs=7), rows, 10)
    assert given.epochs == 7 and given.early_stopping == 0 and none is None
    no_val, _ = train.resolve_length(spec, rows, 0)
    assert no_val.early_stopping == 0


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
    job_id = client.submit(build_request(dict(table), base, "test"))
    return wait_state(client, job_id, {"succeeded", "failed", "cancelled"}, timeout=240)


def shops(rows: int, seed: int, extra_shop: bool = False) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    shop = rng.choice(
        ["north", "south", "east"] + (["west", "harbour"] if extra_shop else []), rows
    )
    label = np.where(x > 0, 1.0, 0.0)
    label[rng.choice(rows, rows // 20, replace=False)] = np.nan  # pandas' 0/1 with missing
    amount = [f"{v:,.1f}" for v in rng.uniform(1000, 9000, rows)]
    return pa.table({"x": x, "shop": shop.tolist(), "amount": amount, "bought": label})


def test_warnings_reach_the_log_run_json_and_report_json(
    daemon: tuple[Client, Home], tmp_path: Path
) -> None:
    client, home = daemon
    lake.publish_arrow(home, client.store, "shops", shops(300, 0))
    lake.publish_arrow(home, client.store, "shops_later", shops(100, 1, extra_shop=True))
    trained = run(client, tmp_path, kind="train", dataset="shops", target="bought", epochs=3)
    assert trained.state == "succeeded", trained.reason
    log = (home.run_dir(trained.id) / "log").read_text()
    assert "task classification: the double target holds only whole numbers" in log
    assert "warning: feature 'amount' is text, but 100% of its values read as numbers" in log
    assert "warning: feature 'amount' has" in log
    record = json.loads((home.run_dir(trained.id) / "run.json").read_text())
    assert record["task"] == "classification" and record["classes"] == ["0", "1"]
    assert any("taken as classes 0, 1" in w for w in record["warnings"])
    tested = run(client, tmp_path, kind="test", model=str(trained.id), dataset="shops_later")
    assert tested.state == "succeeded", tested.reason
    report = json.loads((home.run_dir(tested.id) / "report.json").read_text())
    later = shops(100, 1, extra_shop=True)
    expected = sum(v in ("west", "harbour") for v in later["shop"].to_pylist())
    assert report["unseen_categories"]["shop"] == expected > 0
    seen = set(shops(300, 0)["amount"].to_pylist())
    new_amounts = sum(v not in seen for v in later["amount"].to_pylist())
    assert report["unseen_categories"]["amount"] == new_amounts > 90
    assert (
        f"feature 'shop': {expected} of 100 values are categories training never saw"
        in (home.run_dir(tested.id) / "log").read_text()
    )


def test_default_length_is_stated_in_the_log(daemon: tuple[Client, Home], tmp_path: Path) -> None:
    client, home = daemon
    rng = np.random.default_rng(2)
    x = rng.normal(size=(80, 2))
    table = pa.table({"a": x[:, 0], "b": x[:, 1], "y": np.where(x.sum(1) > 0, "p", "n").tolist()})
    lake.publish_arrow(home, client.store, "small", table)
    job = run(client, tmp_path, kind="train", dataset="small", target="y")
    assert job.state == "succeeded", job.reason
    log = (home.run_dir(job.id) / "log").read_text()
    assert "epochs 500 by default: at least 2000 optimiser steps (1 per epoch" in log
    record = json.loads((home.run_dir(job.id) / "run.json").read_text())
    assert "early stopping after 25 epochs without a lower val_loss" in log
    assert record["params"]["epochs"] == 500
    assert record["params"]["early_stopping"] == {
        "patience": 25,
        "metric": "-val_loss",
        "min_delta": 0.0,
    }
