"""The train kind with its default settings against scikit-learn baselines in the same run:
StandardScaler (+ one-hot for categories, mean fill for missing numbers) and
LogisticRegression (classification, accuracy) or Ridge (regression, R2), on the built-in
datasets (iris, wine, breast_cancer, diabetes, penguins) and two generated ones, each split
80/20 (stratified for classes) with seed 0. The workbench side runs `jobs.train.prepare_data`
and `jobs.train.fit` exactly as a train job does, with only `dataset` and `target` given, and
scores the held-out rows with the test kind's `Predictor`.

Usage: python bench/defaults.py [--tiny] [--seeds N]. --tiny: two small datasets, a capped
length, nothing written to RESULTS.md (the smoke test)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/queue.py
sys.path.append(str(HERE))
sys.path.insert(0, str(HERE.parent))
from _results import table, write_section  # noqa: E402

GOAL = 0.02


class _Quiet:
    """What `jobs.train.fit` needs of a job context when it records nothing."""

    cancel_requested = False
    gpu_indices: list[int] = []
    cpus = 2

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)

    def progress(self, *args: Any, **kwargs: Any) -> None:
        pass


def _frame_table(frame: Any) -> Any:
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


def datasets(tiny: bool) -> list[tuple[str, Any, str, str]]:
    """(name, pyarrow table, target, task)."""
    import numpy as np
    import pandas as pd
    from sklearn import datasets as sk

    out = []
    for name, loader, task in (
        ("iris", sk.load_iris, "classification"),
        ("wine", sk.load_wine, "classification"),
        ("breast_cancer", sk.load_breast_cancer, "classification"),
        ("diabetes", sk.load_diabetes, "regression"),
    ):
        frame = loader(as_frame=True).frame
        if task == "classification":
            frame["target"] = "c" + frame["target"].astype(str)
        out.append((name, _frame_table(frame), "target", task))
    penguins = pd.concat(
        [pd.read_csv(HERE.parent / "examples" / f"penguins_{s}.csv") for s in ("train", "test")]
    )
    out.append(("penguins", _frame_table(penguins), "species", "classification"))
    rng = np.random.default_rng(0)
    x, y = sk.make_classification(
        n_samples=400, n_features=10, n_informative=5, n_classes=3, random_state=0
    )
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(10)])
    frame["label"] = ["k" + str(v) for v in y]
    out.append(("generated_3class", _frame_table(frame), "label", "classification"))
    rows = 300
    colour = rng.choice(["red", "green", "blue", None], rows)
    ident = 1_500_000_000 + rng.integers(0, 5000, rows)
    z = rng.normal(size=(rows, 3))
    shift = np.select([colour == "red", colour == "green"], [5.0, -5.0], 0.0)
    frame = pd.DataFrame({"ident": ident, "z0": z[:, 0], "z1": z[:, 1], "z2": z[:, 2]})
    frame["colour"] = colour
    frame["price"] = (
        3 * z[:, 0] - 2 * z[:, 1] + shift + (ident - 1.5e9) / 1000 + rng.normal(size=rows)
    )
    out.append(("generated_prices", _frame_table(frame), "price", "regression"))
    if tiny:
        return [out[0], out[3]]
    return out


def split(table: Any, target: str, task: str, seed: int) -> tuple[Any, Any]:
    import numpy as np
    from sklearn.model_selection import train_test_split

    index = np.arange(table.num_rows)
    labels = table.column(target).to_pylist() if task == "classification" else None
    train, test = train_test_split(index, test_size=0.2, random_state=seed, stratify=labels)
    return table.take(np.sort(train)), table.take(np.sort(test))


def baseline(train: Any, test: Any, target: str, task: str) -> float:
    """LogisticRegression or Ridge on standardised numbers and one-hot categories."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame, held = train.to_pandas(), test.to_pandas()
    frame = frame[frame[target].notna()]
    held = held[held[target].notna()]
    features = [c for c in frame.columns if c != target]
    import pandas as pd

    text = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])]
    numbers = [c for c in features if c not in text]
    encode = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), numbers),
            ("cat", OneHotEncoder(handle_unknown="ignore"), text),
        ]
    )
    for column in text:
        frame[column] = frame[column].fillna("missing")
        held[column] = held[column].fillna("missing")
    model = LogisticRegression(max_iter=5000) if task == "classification" else Ridge()
    pipeline = make_pipeline(encode, model).fit(frame[features], frame[target])
    return float(pipeline.score(held[features], held[target]))


def workbench_default(train: Any, test: Any, target: str, task: str) -> tuple[float, str]:
    """The metric of a train job with defaults on `test` (accuracy or R2), and its length line."""
    import numpy as np

    from jobs import train as train_kind
    from jobs.evaluate import Predictor, evaluate_table

    spec = train_kind.Spec(dataset="bench", target=target)
    data = train_kind.prepare_data(train, spec, "bench")
    ctx = _Quiet()
    resolved, line = train_kind.resolve_length(spec, len(data.x_train), len(data.x_val))
    model, outcome = train_kind.fit(ctx, spec, data, train_kind._select_device(ctx), record=False)  # type: ignore[arg-type]
    report, _ = evaluate_table(Predictor("bundle", data.pre, model=model.cpu().eval()), test)
    metric = report["accuracy"] if task == "classification" else report["r2"]
    assert resolved.epochs is not None
    return float(metric), f"{outcome.epochs_run}/{resolved.epochs} epochs" if line else str(np.nan)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="smoke test: 2 datasets, short")
    parser.add_argument("--seeds", type=int, default=3, help="train/test splits per dataset")
    parser.add_argument("--patience", type=int, help="try another AUTO_PATIENCE (0: none)")
    parser.add_argument("--min-steps", type=int, help="try another AUTO_MIN_STEPS")
    args = parser.parse_args()

    import torch

    from jobs import train as train_kind

    torch.set_num_threads(2)
    if args.patience is not None:
        train_kind.AUTO_PATIENCE = args.patience
    if args.min_steps is not None:
        train_kind.AUTO_MIN_STEPS = args.min_steps
    if args.tiny:
        train_kind.AUTO_MIN_STEPS, train_kind.AUTO_MAX_EPOCHS = 40, 20
        args.seeds = 1
    rows, misses = [], 0
    started = time.perf_counter()
    for name, data, target, task in datasets(args.tiny):
        ours, theirs, lengths = [], [], []
        for seed in range(args.seeds):
            train, test = split(data, target, task, seed)
            metric, length = workbench_default(train, test, target, task)
            ours.append(metric)
            lengths.append(length)
            theirs.append(baseline(train, test, target, task))
        mean_ours, mean_theirs = sum(ours) / len(ours), sum(theirs) / len(theirs)
        gap = mean_theirs - mean_ours
        misses += gap > GOAL
        rows.append(
            [
                name,
                f"{data.num_rows}",
                "accuracy" if task == "classification" else "R2",
                f"{mean_ours:.3f}",
                f"{mean_theirs:.3f}",
                f"{-gap:+.3f}",
                "yes" if gap <= GOAL else "no",
                ", ".join(lengths),
            ]
        )
    text = table(
        [
            "dataset",
            "rows",
            "metric",
            "workbench defaults",
            "sklearn baseline",
            "difference",
            f"within {GOAL}",
            "length (run/cap)",
        ],
        rows,
    )
    note = (
        f"\n\nMean over {args.seeds} 80/20 splits (seeds 0..{args.seeds - 1}); baseline:"
        " LogisticRegression(max_iter=5000) or Ridge() on StandardScaler + one-hot, same rows."
        f" Workbench: `train` with only dataset and target (MLP 64-64, Adam lr 1e-3, batch 64,"
        f" at least {train_kind.AUTO_MIN_STEPS} steps within {train_kind.AUTO_MIN_EPOCHS}-"
        f"{train_kind.AUTO_MAX_EPOCHS} epochs, early stopping patience"
        f" {train_kind.AUTO_PATIENCE}), torch on 2 CPU threads. {misses} of {len(rows)}"
        f" datasets miss the goal; {time.perf_counter() - started:.0f} s in all. The machine was"
        " shared with other developers' work while this ran."
    )
    print(text + note)
    if not args.tiny and args.patience is None and args.min_steps is None:
        write_section(
            "train defaults", f"python bench/defaults.py --seeds {args.seeds}", text + note
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
