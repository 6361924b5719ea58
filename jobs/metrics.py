"""Task metrics as plain NumPy functions, equal to scikit-learn's on every edge (checked in the tests)."""

from __future__ import annotations

import difflib
import math
from typing import Any

import numpy as np

CLASSIFICATION_METRICS = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "log_loss",
    "roc_auc",
    "pr_auc",
)
REGRESSION_METRICS = ("mae", "rmse", "r2")
PER_CLASS_METRICS = ("precision", "recall", "f1")
LOWER_IS_BETTER = ("loss", "rmse", "mae", "mse", "error")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (rows, classes) logits, float64; a row with a NaN stays NaN."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) counts of int codes in [0, classes); rows: true, columns: predicted."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def label_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Accuracy, per-class and macro precision/recall/F1 and the confusion matrix of two label
    arrays (any sortable labels, same length, at least one row).

    As scikit-learn does (`precision_recall_fscore_support`, `average="macro"`, `zero_division=0`):
    the labels are the sorted union of true and predicted labels, so a class that is predicted
    but never true counts with precision 0 and recall 0; a 0/0 ratio is 0."""
    labels, codes = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    true_codes, pred_codes = codes[: len(y_true)], codes[len(y_true) :]
    matrix = confusion_matrix(true_codes, pred_codes, len(labels))
    true_pos = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    actual = matrix.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_pos / predicted, 0.0)
        recall = np.where(actual > 0, true_pos / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        "accuracy": float((true_codes == pred_codes).mean()),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "labels": labels.tolist(),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": actual.astype(np.int64),
        "confusion_matrix": matrix,
    }


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney rank statistic (ties get average ranks), as
    `sklearn.metrics.roc_auc_score`; NaN when `positive` holds one class only."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # Average rank of each run of equal scores.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the precision-recall curve as the step sum AP = sum_n (R_n - R_{n-1}) P_n over
    the distinct score thresholds, highest first (`sklearn.metrics.average_precision_score`, no
    interpolation). With no positive row it is 0.0, as scikit-learn returns."""
    if not positive.any():
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, hits = scores[order], positive[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    true_pos = np.cumsum(hits)[last]
    false_pos = (last + 1) - true_pos
    precision = true_pos / (true_pos + false_pos)
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def predict_labels(proba: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Class codes from (rows, classes) probabilities: the argmax, or for two classes with a
    `threshold`, class 1 where its probability is >= threshold."""
    if threshold is not None and proba.shape[1] == 2:
        return (proba[:, 1] >= threshold).astype(np.int64)
    return np.asarray(proba.argmax(axis=1), dtype=np.int64)


def classification_report(
    y_true: np.ndarray,
    proba: np.ndarray,
    class_names: list[str],
    threshold: float | None = None,
) -> dict[str, Any]:
    """The report of a classifier on labelled rows.

    `y_true`: int codes into `class_names` (the model's classes), -1 where the label is missing;
    `proba`: (rows, len(class_names)) probabilities. Rows with a missing label are dropped and
    counted (`counts.missing_targets`). Label metrics (accuracy, macro precision/recall/F1,
    per-class, confusion matrix) follow `label_metrics`: labels are the union of true and
    predicted. Probability metrics use every model class as scikit-learn does with
    `labels=class_names`: log loss (probabilities clipped to [eps, 1 - eps] of float64), ROC AUC
    (binary: of class 1; more classes: one-vs-rest macro), PR AUC (average precision; binary: of
    class 1; more classes: one-vs-rest macro). Undefined values (ROC AUC with a class absent)
    are None, with the reason in `undefined` (metric -> why). If any kept row has a non-finite probability every metric is NaN and
    `counts.nan_outputs` says how many rows: such a model fails every gate.
    Raises ValueError when the shapes disagree."""
    proba = np.asarray(proba, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    if proba.ndim != 2 or proba.shape != (len(y_true), len(class_names)):
        raise ValueError(
            f"probabilities of shape {proba.shape} do not match {len(y_true)} rows x {len(class_names)} classes"
        )
    known = y_true >= 0
    missing = int((~known).sum())
    y_true, proba = y_true[known], proba[known]
    bad_rows = int((~np.isfinite(proba).all(axis=1)).sum())
    counts = {"rows": len(y_true), "missing_targets": missing, "nan_outputs": bad_rows}
    if bad_rows or len(y_true) == 0:
        nan = math.nan
        return {
            **dict.fromkeys(CLASSIFICATION_METRICS, nan),
            "per_class": {},
            "confusion_matrix": [],
            "classes": [],
            "threshold": threshold,
            "counts": counts,
            "undefined": dict.fromkeys(CLASSIFICATION_METRICS, _why_none(counts)),
        }
    y_pred = predict_labels(proba, threshold)
    scored = label_metrics(y_true, y_pred)
    names = [class_names[int(code)] for code in scored["labels"]]
    eps = float(np.finfo(np.float64).eps)
    clipped = np.clip(proba[np.arange(len(y_true)), y_true], eps, 1 - eps)
    if len(class_names) == 2:
        auc = roc_auc(proba[:, 1], y_true == 1)
        pr_auc = average_precision(proba[:, 1], y_true == 1)
    else:
        auc = float(np.mean([roc_auc(proba[:, k], y_true == k) for k in range(len(class_names))]))
        pr_auc = float(
            np.mean([average_precision(proba[:, k], y_true == k) for k in range(len(class_names))])
        )
    absent = [class_names[k] for k in range(len(class_names)) if not (y_true == k).any()]
    undefined = {}
    if not math.isfinite(auc):
        undefined["roc_auc"] = (
            f"class {absent[0]!r} is absent from the {len(y_true)} labelled rows"
            if absent
            else "every labelled row has the same class"
        ) + ": ROC AUC needs positives and negatives of each class"
    return {
        "accuracy": scored["accuracy"],
        "precision_macro": scored["precision_macro"],
        "recall_macro": scored["recall_macro"],
        "f1_macro": scored["f1_macro"],
        "log_loss": float(-np.log(clipped).mean()),
        "roc_auc": auc if math.isfinite(auc) else None,
        "pr_auc": pr_auc,
        "per_class": {
            name: {
                "precision": float(scored["precision"][k]),
                "recall": float(scored["recall"][k]),
                "f1": float(scored["f1"][k]),
                "support": int(scored["support"][k]),
            }
            for k, name in enumerate(names)
        },
        "confusion_matrix": scored["confusion_matrix"].tolist(),
        "classes": names,
        "threshold": threshold,
        "counts": counts,
        "undefined": undefined,
    }


def _why_none(counts: dict[str, int]) -> str:
    """Why no metric is defined: non-finite outputs, or no labelled row."""
    if counts["nan_outputs"]:
        return f"the model gave NaN or infinite outputs for {counts['nan_outputs']} rows"
    return "no row has a label"


def regression_report(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """MAE, RMSE and R2 of float64 targets and predictions (same length).

    Rows whose target is NaN are dropped and counted (`counts.missing_targets`). A NaN or
    infinite prediction makes every metric NaN (`counts.nan_outputs`), so it fails any gate.
    R2 = 1 - SS_res / SS_tot as `sklearn.metrics.r2_score` (force_finite): 1.0 for a perfect fit
    of a constant target, 0.0 for an imperfect one."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    known = ~np.isnan(y_true)
    y_true, y_pred = y_true[known], y_pred[known]
    bad = int((~np.isfinite(y_pred)).sum())
    counts = {"rows": len(y_true), "missing_targets": int((~known).sum()), "nan_outputs": bad}
    if bad or len(y_true) == 0:
        return {
            **dict.fromkeys(REGRESSION_METRICS, math.nan),
            "counts": counts,
            "undefined": dict.fromkeys(REGRESSION_METRICS, _why_none(counts)),
        }
    error = y_pred - y_true
    residual = float((error**2).sum())
    total = float(((y_true - y_true.mean()) ** 2).sum())
    perfect = 1.0 if residual == 0 else 0.0
    r2 = 1 - residual / total if total > 0 else perfect
    return {
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt((error**2).mean())),
        "r2": float(r2),
        "counts": counts,
        "undefined": {},
    }


def headline(report: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics of a report (what gates, runs and `repeat` statistics look at); an
    undefined metric (None) is NaN here."""
    return {
        k: (math.nan if v is None else float(v))
        for k, v in report.items()
        if k in CLASSIFICATION_METRICS or k in REGRESSION_METRICS
        if v is None or (isinstance(v, int | float) and not isinstance(v, bool))
    }


def gate_metric_problem(key: str, value: Any, task: str | None) -> str | None:
    """Why gate entry `key` (e.g. "min_accuracy", or "min_recall" with a per-class table) cannot
    be checked for `task` ("classification", "regression", or None for either), or None."""
    bound, _, metric = key.partition("_")
    if bound not in ("min", "max") or not metric:
        return f"gate {key}: gates are min_<metric> or max_<metric> (e.g. min_accuracy, max_rmse)"
    if isinstance(value, dict):
        if task == "regression" or metric not in PER_CLASS_METRICS:
            return (
                f"gate {key}: a per-class gate takes {', '.join(PER_CLASS_METRICS)}"
                " of a classification model"
            )
        return None
    names = {
        "classification": CLASSIFICATION_METRICS,
        "regression": REGRESSION_METRICS,
        None: CLASSIFICATION_METRICS + REGRESSION_METRICS,
    }[task]
    if metric in names:
        return None
    close = [n for n in names if metric in n] or difflib.get_close_matches(metric, names, n=1)
    hint = f" (did you mean {' or '.join(f'{bound}_{c}' for c in close)}?)" if close else ""
    about = f"a {task} model" if task else "a model"
    return f"gate {key}: {metric!r} is not a metric of {about}{hint}; known: {', '.join(names)}" + (
        f"; per class: {bound}_<{'|'.join(PER_CLASS_METRICS)}> = {{ class = bound }}"
        if task != "regression"
        else ""
    )


def _violation(key: str, name: str, value: float | None, bound: float) -> str | None:
    kind = key.partition("_")[0]
    if value is None or not math.isfinite(value):
        return (
            f"gate {key}: {name} is {'undefined' if value is None else value}, which passes no gate"
        )
    if kind == "min" and value < bound:
        return f"gate {key}: {name} = {value:.4f} is below {bound}"
    if kind == "max" and value > bound:
        return f"gate {key}: {name} = {value:.4f} is above {bound}"
    return None


def check_gate(
    gate: dict[str, Any],
    values: dict[str, float],
    per_class: dict[str, dict[str, Any]] | None = None,
) -> list[str]:
    """Violations of `min_<metric>` / `max_<metric>` bounds, each naming value and bound. A
    bound given as a table applies per class: `min_recall = {pos = 0.5}`. A NaN, infinite or
    undefined value fails its gate."""
    problems = []
    for key, bound in sorted(gate.items()):
        metric = key.partition("_")[2]
        if isinstance(bound, dict):
            for label, limit in sorted(bound.items()):
                entry = (per_class or {}).get(str(label))
                if entry is None:
                    known = ", ".join(sorted(per_class or {}))
                    problems.append(
                        f"gate {key}.{label}: class {label!r} is not in the report (classes: {known})"
                    )
                    continue
                found = _violation(
                    f"{key}.{label}", f"{metric} of {label}", entry.get(metric), limit
                )
                if found:
                    problems.append(found)
            continue
        if metric not in values:
            problems.append(
                f"gate {key}: metric {metric!r} was not measured (measured: {', '.join(sorted(values))})"
            )
            continue
        found = _violation(key, metric, values[metric], float(bound))
        if found:
            problems.append(found)
    return problems


def slice_table(
    groups: dict[str, np.ndarray],
    correct: np.ndarray | None,
    error: np.ndarray | None,
    min_rows: int = 3,
) -> list[dict[str, Any]]:
    """Per slice (a boolean mask per named group): rows and accuracy (classification) or RMSE
    (regression); the worst slices first."""
    rows: list[dict[str, Any]] = []
    for name, mask in groups.items():
        count = int(mask.sum())
        if count < min_rows:
            continue
        if correct is not None:
            rows.append({"slice": name, "rows": count, "accuracy": float(correct[mask].mean())})
        elif error is not None:
            rows.append(
                {"slice": name, "rows": count, "rmse": float(np.sqrt((error[mask] ** 2).mean()))}
            )
    if correct is not None:
        rows.sort(key=lambda r: (float(r["accuracy"]), -int(r["rows"])))
    else:
        rows.sort(key=lambda r: (-float(r["rmse"]), -int(r["rows"])))
    return rows
