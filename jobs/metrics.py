"""Task metrics as plain NumPy functions (checked against scikit-learn in the tests): accuracy,
per-class precision/recall/F1, confusion matrix, log loss, ROC AUC; MAE, RMSE, R2; slices."""

from __future__ import annotations

from typing import Any

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def _auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve by the rank statistic (ties averaged); None with one class."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_report(
    y_true: np.ndarray, proba: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Accuracy, per-class and macro precision/recall/F1, confusion matrix, log loss, ROC AUC."""
    classes = len(class_names)
    y_pred = proba.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, classes)
    true_pos = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    actual = matrix.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_pos / predicted, 0.0)
        recall = np.where(actual > 0, true_pos / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    clipped = np.clip(proba[np.arange(len(y_true)), y_true], 1e-15, 1.0)
    if classes == 2:
        auc = _auc(proba[:, 1], y_true == 1)
    else:
        per_class = [_auc(proba[:, k], y_true == k) for k in range(classes)]
        known = [a for a in per_class if a is not None]
        auc = float(np.mean(known)) if len(known) == classes else None
    present = actual > 0
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "precision_macro": float(precision[present].mean()),
        "recall_macro": float(recall[present].mean()),
        "f1_macro": float(f1[present].mean()),
        "log_loss": float(-np.log(clipped).mean()),
        "roc_auc": auc,
        "per_class": {
            name: {
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "support": int(actual[k]),
            }
            for k, name in enumerate(class_names)
        },
        "confusion_matrix": matrix.tolist(),
        "classes": class_names,
    }


def regression_report(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    error = y_pred - y_true
    total = float(((y_true - y_true.mean()) ** 2).sum())
    return {
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt((error**2).mean())),
        "r2": float(1 - (error**2).sum() / total) if total > 0 else None,
    }


def headline(report: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics of a report (what gates and `repeat` statistics look at)."""
    return {
        k: float(v)
        for k, v in report.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def check_gate(gate: dict[str, float], values: dict[str, float]) -> list[str]:
    """Violations of `min_<metric>` / `max_<metric>` bounds, each naming value and bound."""
    problems = []
    for key, bound in sorted(gate.items()):
        kind, _, metric = key.partition("_")
        value = values.get(metric)
        if value is None:
            problems.append(
                f"gate {key}: metric {metric!r} was not measured (measured: {', '.join(sorted(values))})"
            )
        elif kind == "min" and value < bound:
            problems.append(f"gate {key}: {metric} = {value:.4f} is below {bound}")
        elif kind == "max" and value > bound:
            problems.append(f"gate {key}: {metric} = {value:.4f} is above {bound}")
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
