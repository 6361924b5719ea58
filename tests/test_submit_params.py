"""Parameters that made training wrong or fail late are refused at submit, naming the key; a
wrong dataset, target or feature name is refused against the catalog with close matches; a
stage whose `model` names another stage runs after it without `after`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import workbench

from workbench.catalog import lake
from workbench.db.store import Store
from workbench.paths import Home
from workbench.queue.pipeline import load_pipeline
from workbench.queue.requests import build_request
from workbench.queue.spec import SpecError

TRAIN = {"kind": "train", "dataset": "vote", "target": "party"}

BAD_PARAMS = [
    ({"clip_grad": -1}, "key 'clip_grad': the largest gradient norm must be positive"),
    ({"clip_grad": 0}, "key 'clip_grad'"),
    ({"features": ["age", "party"]}, "key 'features': lists the target 'party'"),
    ({"features": ["age", "age"]}, "key 'features': 'age' is listed twice"),
    ({"hidden": [0]}, "key 'hidden': every layer needs at least 1 unit"),
    ({"hidden": [16, -2]}, "key 'hidden'"),
    ({"split_seed": -1}, "key 'split_seed': must not be negative"),
    ({"seed": -3}, "key 'seed': must not be negative"),
    ({"weight_decay": -0.1}, "key 'weight_decay': must not be negative"),
    ({"momentum": -0.5}, "key 'momentum': must be in [0, 1)"),
    ({"momentum": 1.0}, "key 'momentum'"),
    ({"dropout": 1.5}, "key 'dropout': a probability in [0, 1)"),
    ({"dropout": -0.1}, "key 'dropout'"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_PARAMS, ids=[str(b[0]) for b in BAD_PARAMS])
def test_bad_training_parameters_are_refused_naming_the_key(
    tmp_path: Path, extra: dict[str, object], message: str
) -> None:
    with pytest.raises(SpecError) as caught:
        build_request({**TRAIN, **extra}, tmp_path, "t")
    assert message in str(caught.value)


def test_bad_parameter_exits_2_from_the_cli_and_queues_nothing(home: Home, tmp_path: Path) -> None:
    spec = tmp_path / "train.toml"
    spec.write_text('kind = "train"\ndataset = "vote"\ntarget = "party"\ndropout = 1.5\n')
    result = workbench("submit", "--spec", str(spec))
    assert result.returncode == 2, result.stderr
    assert "key 'dropout'" in result.stderr and "Traceback" not in result.stderr
    assert not home.state_db.exists() or Store.open(home.state_db).list_jobs() == []


@pytest.fixture
def vote(home: Home) -> Home:
    store = Store.open(home.state_db)
    table = pa.table({"age": [30, 40, 50], "income": [1.0, 2.0, 3.0], "party": ["a", "b", "a"]})
    lake.publish_arrow(home, store, "vote", table)
    store.close()
    return home


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"dataset": "Vote"}, "key 'dataset': no dataset named 'Vote' (did you mean 'vote'?)"),
        ({"dataset": "vot"}, "(did you mean 'vote'?)"),
        (
            {"target": "Party"},
            "key 'target': dataset vote v1 has no column 'Party' (did you mean 'party'?)",
        ),
        (
            {"features": ["age", "incom"]},
            "key 'features': dataset vote v1 has no column 'incom' (did you mean 'income'?)",
        ),
        ({"version": 7}, "key 'version': dataset 'vote' has no version 7"),
        ({"val_dataset": "vote", "target": "partie"}, "key 'target'"),
    ],
)
def test_wrong_dataset_target_or_feature_is_refused_with_suggestions(
    vote: Home, tmp_path: Path, extra: dict[str, object], message: str
) -> None:
    with pytest.raises(SpecError) as caught:
        build_request({**TRAIN, **extra}, tmp_path, "t")
    assert message in str(caught.value)


def test_names_the_catalog_does_not_contradict_are_accepted(vote: Home, tmp_path: Path) -> None:
    build_request({**TRAIN, "features": ["age"]}, tmp_path, "t")
    build_request({**TRAIN, "dataset": "elsewhere"}, tmp_path, "t")  # may be ingested later
    test = {"kind": "test", "model": "3", "dataset": "Vote"}
    with pytest.raises(SpecError, match="did you mean 'vote'"):
        build_request(test, tmp_path, "t")


def test_a_pipeline_ingest_stage_may_write_a_dataset_close_to_an_existing_one(
    vote: Home, tmp_path: Path
) -> None:
    (tmp_path / "v.csv").write_text("age,party\n1,a\n")
    path = tmp_path / "p.toml"
    path.write_text(
        textwrap.dedent(
            """
            [[stage]]
            name = "load"
            kind = "ingest"
            source = ["v.csv"]
            dataset = "Vote"

            [[stage]]
            name = "fit"
            kind = "train"
            dataset = "Vote"
            target = "party"
            after = ["load"]

            [[stage]]
            name = "bad"
            kind = "train"
            dataset = "vote"
            target = "Party"
            """
        )
    )
    with pytest.raises(SpecError) as caught:
        load_pipeline(path)
    assert "stage 'bad': key 'target'" in str(caught.value)
    assert "did you mean 'party'?" in str(caught.value)


def test_a_stage_naming_another_as_its_model_runs_after_it(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        textwrap.dedent(
            """
            [[stage]]
            name = "check"
            kind = "test"
            model = "ship"
            dataset = "d"

            [[stage]]
            name = "ship"
            kind = "export"
            model = "fit"

            [[stage]]
            name = "fit"
            kind = "train"
            dataset = "d"
            target = "y"
            """
        )
    )
    pipeline = load_pipeline(path)
    stages = {s.name: s for s in pipeline.stages}
    assert [s.name for s in pipeline.stages] == ["fit", "ship", "check"]
    assert stages["ship"].after == (("fit", "ok"),)
    assert stages["check"].after == (("ship", "ok"),)
