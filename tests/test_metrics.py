"""The metric functions against scikit-learn on the edges: absent classes, a single class,
missing targets, NaN predictions; a property test over random label sets; gates on NaN."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from jobs.metrics import (
    average_precision,
    check_gate,
    classification_report,
    gate_metric_problem,
    headline,
    label_metrics,
    regression_report,
    roc_auc,
    softmax,
)

# scikit-learn's notice for single-label inputs: the single-class cases are the point here
pytestmark = pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")


def _sk_label_metrics(y_true: list[str], y_pred: list[str]) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero_division and single-label notices
        return {
            "accuracy": skm.accuracy_score(y_true, y_pred),
            "precision_macro": skm.precision_score(
                y_true, y_pred, average="macro", zero_division=0
            ),
            "recall_macro": skm.recall_score(y_true, y_pred, average="macro", zero_division=0),
            "f1_macro": skm.f1_score(y_true, y_pred, average="macro", zero_division=0),
        }


LABEL_CASES = {
    # the issue's case: every true label is a, one prediction is b -> sklearn f1_macro 0.429
    "predicted-class-absent-from-truth": (["a"] * 4, ["a", "a", "a", "b"]),
    "true-class-never-predicted": (["a", "b", "c", "c"], ["a", "a", "c", "c"]),
    "single-class-all-right": (["a"] * 5, ["a"] * 5),
    "single-class-all-wrong": (["a"] * 3, ["b"] * 3),
    "disjoint-labels": (["a", "b"], ["c", "d"]),
    "one-row": (["x"], ["y"]),
    "balanced-three": (["a", "b", "c"] * 4, ["a", "c", "b"] * 4),
}


@pytest.mark.parametrize(("y_true", "y_pred"), LABEL_CASES.values(), ids=LABEL_CASES.keys())
def test_label_metrics_equal_sklearn(y_true: list[str], y_pred: list[str]) -> None:
    ours = label_metrics(np.array(y_true), np.array(y_pred))
    for name, expected in _sk_label_metrics(y_true, y_pred).items():
        assert ours[name] == pytest.approx(expected), name
    labels = sorted(set(y_true) | set(y_pred))
    assert (
        ours["confusion_matrix"].tolist()
        == skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    )
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, zero_division=0
    )
    assert ours["precision"].tolist() == pytest.approx(list(precision))
    assert ours["recall"].tolist() == pytest.approx(list(recall))
    assert ours["f1"].tolist() == pytest.approx(list(f1))
    assert ours["support"].tolist() == list(support)


def test_the_issue_example_gives_sklearns_0_429() -> None:
    report = label_metrics(np.array(["a"] * 4), np.array(["a", "a", "a", "b"]))
    assert report["f1_macro"] == pytest.approx(0.4286, abs=1e-4)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=40).map(
        lambda pairs: ([f"c{t}" for t, _ in pairs], [f"c{p}" for _, p in pairs])
    )
)
def test_label_metrics_equal_sklearn_on_random_label_sets(
    labels: tuple[list[str], list[str]],
) -> None:
    y_true, y_pred = labels
    ours = label_metrics(np.array(y_true), np.array(y_pred))
    for name, expected in _sk_label_metrics(y_true, y_pred).items():
        assert ours[name] == pytest.approx(expected), name
    labels = sorted(set(y_true) | set(y_pred))
    assert (
        ours["confusion_matrix"].tolist()
        == skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    )


@settings(max_examples=100, deadline=None)
@given(
    st.integers(2, 5).flatmap(
        lambda k: st.tuples(
            st.just(k),
            st.lists(st.integers(0, k - 1), min_size=2, max_size=60),
            st.integers(0, 2**31 - 1),
        )
    )
)
def test_probability_metrics_equal_sklearn_on_random_label_sets(
    case: tuple[int, list[int], int],
) -> None:
    classes, y, seed = case
    y_true = np.array(y)
    rng = np.random.default_rng(seed)
    # rounded logits make ties in scores, the case rank statistics get wrong most easily
    proba = softmax(np.round(rng.normal(size=(len(y_true), classes)), 1))
    report = classification_report(y_true, proba, [f"c{i}" for i in range(classes)])
    labels = list(range(classes))
    assert report["log_loss"] == pytest.approx(skm.log_loss(y_true, proba, labels=labels))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if classes == 2:
            auc = skm.roc_auc_score(y_true, proba[:, 1]) if len(set(y)) == 2 else math.nan
            ap = skm.average_precision_score(y_true == 1, proba[:, 1])
        else:
            try:
                auc = skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=labels)
            except ValueError:  # sklearn refuses a single present class outright
                auc = math.nan
            ap = skm.average_precision_score(np.eye(classes)[y_true], proba, average="macro")
    if math.isnan(auc):
        assert report["roc_auc"] is None
    else:
        assert report["roc_auc"] == pytest.approx(auc)
    assert report["pr_auc"] == pytest.approx(ap)


def test_missing_targets_are_dropped_and_counted() -> None:
    y = np.array([0, 1, -1, 1, 0, -1])
    proba = softmax(np.array([[2, 0], [0, 2], [0, 2], [2, 0], [2, 0], [1, 1]], dtype=float))
    report = classification_report(y, proba, ["a", "b"])
    assert report["counts"] == {"rows": 4, "missing_targets": 2, "nan_outputs": 0}
    kept = y >= 0
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y[kept], proba[kept].argmax(1)))
    values = np.array([1.0, np.nan, 3.0, 4.0])
    pred = np.array([1.5, 2.0, 2.0, 4.5])
    reg = regression_report(values, pred)
    assert reg["counts"]["missing_targets"] == 1
    keep = ~np.isnan(values)
    assert reg["mae"] == pytest.approx(skm.mean_absolute_error(values[keep], pred[keep]))
    assert reg["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(values[keep], pred[keep])))
    assert reg["r2"] == pytest.approx(skm.r2_score(values[keep], pred[keep]))


def test_nan_predictions_are_nan_metrics_that_fail_every_gate() -> None:
    y = np.array([1.0, 2.0, 3.0])
    pred = np.array([1.0, np.nan, 3.0])
    with pytest.raises(ValueError):  # scikit-learn refuses such input outright
        skm.mean_squared_error(y, pred)
    report = regression_report(y, pred)
    assert math.isnan(report["rmse"]) and report["counts"]["nan_outputs"] == 1
    problems = check_gate({"max_rmse": 10.0, "min_r2": -1.0}, headline(report))
    assert len(problems) == 2 and all("passes no gate" in p for p in problems)
    proba = softmax(np.array([[1.0, 0.0], [np.nan, 0.0]]))
    cls = classification_report(np.array([0, 1]), proba, ["a", "b"])
    assert math.isnan(cls["accuracy"]) and cls["counts"]["nan_outputs"] == 1
    assert check_gate({"min_accuracy": 0.0}, headline(cls))


def test_regression_edges_equal_sklearn() -> None:
    cases = [
        (np.array([5.0, 5.0, 5.0]), np.array([5.0, 5.0, 5.0])),  # constant, perfect: r2 1
        (np.array([5.0, 5.0, 5.0]), np.array([4.0, 5.0, 6.0])),  # constant, imperfect: r2 0
        (np.array([1e8 + i for i in range(199)]), np.array([1e8 + i + 0.5 for i in range(199)])),
    ]
    for y, pred in cases:
        report = regression_report(y, pred)
        assert report["mae"] == pytest.approx(skm.mean_absolute_error(y, pred), rel=1e-12)
        assert report["r2"] == pytest.approx(skm.r2_score(y, pred), rel=1e-12)


def test_auc_and_ap_single_class_follow_sklearn() -> None:
    scores = np.array([0.1, 0.4, 0.4, 0.9])
    assert math.isnan(roc_auc(scores, np.zeros(4, dtype=bool)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert average_precision(scores, np.zeros(4, dtype=bool)) == skm.average_precision_score(
            [0, 0, 0, 0], scores
        )
    positive = np.array([False, True, False, True])
    assert roc_auc(scores, positive) == pytest.approx(skm.roc_auc_score(positive, scores))
    assert average_precision(scores, positive) == pytest.approx(
        skm.average_precision_score(positive, scores)
    )


def test_threshold_moves_binary_predictions() -> None:
    proba = np.array([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]])
    y = np.array([1, 1, 0])
    assert classification_report(y, proba, ["n", "p"])["per_class"]["p"]["recall"] == 0.5
    low = classification_report(y, proba, ["n", "p"], threshold=0.25)
    assert low["per_class"]["p"]["recall"] == 1.0 and low["threshold"] == 0.25


GATES = [
    ({"min_accuracy": 0.9}, {"accuracy": 0.95}, []),
    (
        {"min_accuracy": 0.99},
        {"accuracy": 0.95},
        ["gate min_accuracy: accuracy = 0.9500 is below 0.99"],
    ),
    ({"max_rmse": 1.0}, {"rmse": 2.5}, ["gate max_rmse: rmse = 2.5000 is above 1.0"]),
    ({"max_rmse": 1.0}, {"rmse": math.nan}, ["gate max_rmse: rmse is nan, which passes no gate"]),
    ({"min_r2": 0.0}, {"r2": math.inf}, ["gate min_r2: r2 is inf, which passes no gate"]),
]


@pytest.mark.parametrize(("gate", "values", "expected"), GATES)
def test_gate_messages_name_value_and_bound(
    gate: dict[str, float], values: dict[str, float], expected: list[str]
) -> None:
    assert check_gate(gate, values) == expected


def test_per_class_gates() -> None:
    per_class = {"neg": {"recall": 0.99}, "pos": {"recall": 0.3}}
    problems = check_gate({"min_recall": {"pos": 0.5, "neg": 0.9}}, {}, per_class)
    assert problems == ["gate min_recall.pos: recall of pos = 0.3000 is below 0.5"]
    assert (
        "class 'cat' is not in the report"
        in check_gate({"min_recall": {"cat": 0.5}}, {}, per_class)[0]
    )


GATE_NAMES = [
    ("min_accuracy", 0.9, "classification", None),
    ("max_rmse", 3.0, "regression", None),
    ("min_auc", 0.9, None, "did you mean min_roc_auc or min_pr_auc?"),
    ("min_auc", 0.9, "classification", "'auc' is not a metric of a classification model"),
    ("min_accuracy", 0.9, "regression", "'accuracy' is not a metric of a regression model"),
    ("min_recall", {"pos": 0.5}, "classification", None),
    ("min_recall", {"pos": 0.5}, "regression", "a per-class gate takes"),
    ("accuracy", 0.9, None, "gates are min_<metric> or max_<metric>"),
]


@pytest.mark.parametrize(("key", "bound", "task", "message"), GATE_NAMES)
def test_gate_names_are_checked_against_the_task(
    key: str, bound: object, task: str | None, message: str | None
) -> None:
    problem = gate_metric_problem(key, bound, task)
    if message is None:
        assert problem is None
    else:
        assert problem is not None and message in problem
