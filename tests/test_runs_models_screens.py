"""The Runs and Models screens over a real store: a finished and a running run, curves that
follow new metrics, comparison, and a model whose errors open in the Data screen."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from test_tui import until
from textual.widgets import DataTable

from screens.app import WorkbenchApp
from screens.data import DataScreen
from screens.models import ModelsScreen
from screens.runs import RunsScreen, sweep_labels, x_values
from screens.source import Source
from workbench.catalog import lake, registry, tracking
from workbench.db.store import Event, JobRequest, Store
from workbench.paths import Home


def text_of(widget: Any) -> str:
    from rich.console import Console

    console = Console(width=200, record=True, file=io.StringIO())
    console.print(widget.content)
    return console.export_text().replace("\u00a0", " ")  # values keep together with NBSPs


def build_home(root: Path) -> Home:
    """Two runs (one finished, one still training), a test report and an exported model."""
    home = Home(root).ensure()
    store = Store.open(home.state_db)
    table = pa.table({"x": [0.1 * i for i in range(20)], "label": ["a", "b"] * 10})
    info = lake.publish_arrow(home, store, "toy", table)
    ids = []
    for name, lr in (("train lr=0.01", 0.01), ("train lr=0.1", 0.1)):
        job_id = store.submit(JobRequest(name, "train", {"dataset": "toy"}, "/", {}))
        ids.append(job_id)
        params = {
            "dataset": "toy",
            "target": "label",
            "model": "mlp",
            "lr": lr,
            "epochs": 5,
            "hidden": [16],
            "seed": 0,
        }
        tracking.start_run(
            store,
            job_id,
            name,
            "mlp",
            "classification",
            info,
            params,
            {"torch": "2.13.0", "device": "cpu", "device_name": "x86_64"},
            None,
        )
        for step in range(1, 6 if lr == 0.01 else 3):
            store.add_metrics(
                job_id,
                step,
                {
                    "train_loss": 1.0 / step + lr,
                    "val_loss": 1.1 / step + lr,
                    "val_accuracy": 0.5 + 0.08 * step - lr,
                },
            )
    done, training = ids
    for job_id, pid in ((done, 1), (training, 2)):
        store.transition(job_id, Event.START, "starting")
        store.transition(job_id, Event.LAUNCHED, "started", pid=pid)
    store.transition(done, Event.EXIT_OK, "exited with code 0")
    tracking.finish_run(store, done, {"val_loss": 0.23, "val_accuracy": 0.89}, "/runs/1/model.pt")
    predictions = pa.table(
        {
            "row_id": list(range(20)),
            "x": [0.1 * i for i in range(20)],
            "label": ["a", "b"] * 10,
            "prediction": ["a"] * 20,
            "confidence": [0.9] * 20,
            "correct": [i % 2 == 0 for i in range(20)],
        }
    )
    lake.publish_arrow(home, store, f"run{done}_predictions", predictions)
    result = {
        "metrics": {"accuracy": 0.5, "f1_macro": 0.33},
        "report": {"classes": ["a", "b"], "confusion_matrix": [[10, 0], [10, 0]]},
        "slices": [{"slice": "x in [1.5, 1.9]", "rows": 5, "accuracy": 0.4}],
        "predictions": {"dataset": f"run{done}_predictions", "version": 1},
        "dataset": {"name": "toy", "version": 1},
        "task": "classification",
        "gate_passed": True,
    }
    registry.record_evaluation(store, 3, done, info, "bundle", "/runs/1/model.pt", result)
    card = {
        "name": "toy-mlp-job1",
        "file": "/runs/4/model.onnx",
        "bytes": 2048,
        "exporter": "torch.onnx.export(dynamo=True)",
        "batch_axis": "batch",
        "dataset": {"name": "toy", "version": 1, "content_hash": info.content_hash},
        "run": {"job_id": done},
        "test": {"job_id": 3, "metrics": result["metrics"], "gate_passed": True},
        "parity": {"max_abs_diff": 1.2e-6, "rows": 20},
        "latency": {
            "cpu": {
                "batch_1": {
                    "torch": {"median_ms": 0.05},
                    "onnxruntime": {"median_ms": 0.01},
                    "ort_over_torch_median": 0.2,
                }
            }
        },
        "export_job_id": 4,
    }
    registry.record_model(store, 4, done, "/runs/4/model.onnx", "onnx", "ab" * 32, card)
    store.close()
    return home


@pytest.fixture
def screens_home(tmp_path: Path) -> Home:
    return build_home(tmp_path / "home")


async def test_runs_list_sort_compare_and_live_curves(screens_home: Home) -> None:
    app = WorkbenchApp(Source(screens_home))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("r")
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        table = screen.query_one("#runs", DataTable)
        await until(pilot, lambda: table.row_count == 2, what="two runs")
        assert "succeeded" in str(table.get_row_at(0)) and "running" in str(table.get_row_at(1))
        await until(pilot, lambda: screen.plotted, what="curves")
        first = next(iter(screen.plotted))
        assert len(screen.plotted[first]["train_loss"]) == 5
        await pilot.press("o")  # by val_accuracy, best first
        assert "sorted by val_accuracy" in text_of(screen.query_one("#runs-status"))
        assert str(table.get_row_at(0)[0]) == "1"
        await pilot.press("down")
        await until(pilot, lambda: 2 in screen.plotted, what="the running run's curves")
        store = Store.open(screens_home.state_db)
        store.add_metrics(2, 3, {"train_loss": 0.5})
        await until(
            pilot,
            lambda: len(screen.plotted.get(2, {}).get("train_loss", [])) == 3,
            what="the curve to grow while it trains",
        )
        await pilot.press("space", "up", "space", "c")
        await until(pilot, lambda: len(screen.plotted) == 2, what="both runs overlaid")
        diff = text_of(screen.query_one("#runs-detail"))
        assert "2 runs compared" in diff and "job 1" in diff and "job 2" in diff
        assert "lr" in diff and "0.01" in diff and "0.1" in diff


async def test_models_lineage_and_errors_in_sql(screens_home: Home) -> None:
    app = WorkbenchApp(Source(screens_home))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("m")
        screen = app.screen
        assert isinstance(screen, ModelsScreen)
        await until(
            pilot,
            lambda: "lineage" in text_of(screen.query_one("#model-card")),
            what="the model card",
        )
        card = text_of(screen.query_one("#model-card"))
        assert "dataset toy v1" in card and "train job 1" in card and "export job 4" in card
        assert "confusion" in card and "x in [1.5, 1.9]" in card
        await pilot.press("e")
        await until(
            pilot,
            lambda: (
                isinstance(app.screen, DataScreen)
                and app.screen.query_one("#results", DataTable).row_count == 10
            ),
            what="the errors query",
        )
        rows = app.screen.query_one("#results", DataTable)
        assert all(str(rows.get_row_at(i)[-1]) == "False" for i in range(rows.row_count))
        # The focus is on the results, not in the editor: `j` goes to the Queue, typing nothing.
        editor = app.screen.query_one("#sql")
        before = editor.text  # type: ignore[attr-defined]
        assert app.focused is rows
        await pilot.press("j")
        assert type(app.screen).__name__ == "QueueScreen" and editor.text == before  # type: ignore[attr-defined]


def test_x_values_by_epoch_time_and_step() -> None:
    """A run of 280 steps and one of 2,100 both span epochs 0-5 by epoch; by time, seconds
    since each run's first metric; before the first epoch ends, the step."""
    short = {
        "train_loss": [(s, 1000.0 + s, 1.0) for s in range(1, 281)],
        "epoch": [(56 * e, 1000.0 + 56 * e, float(e)) for e in range(1, 6)],
    }
    long = {
        "train_loss": [(s, 2000.0 + s / 10, 1.0) for s in range(1, 2101)],
        "epoch": [(420 * e, 2000.0 + 42 * e, float(e)) for e in range(1, 6)],
    }
    for series in (short, long):
        xs, label = x_values(series, "epoch")
        assert label == "epoch" and max(xs.values()) == 5.0
    xs, label = x_values(long, "time")
    assert label == "seconds since start" and round(max(xs.values())) == 210
    xs, label = x_values({"train_loss": [(1, 5.0, 1.0), (2, 6.0, 0.9)]}, "epoch")
    assert label.startswith("step") and xs == {1: 1.0, 2: 2.0}


def test_sweep_points_are_named_by_their_parameters() -> None:
    def run(job_id: int, lr: float, hidden: list[int], stage: str | None = "sweep") -> Any:
        return tracking.Run(
            job_id, "sweep", "succeeded", "mlp", "classification", "toy", 1, "h",
            {"lr": lr, "hidden": hidden, "seed": 0}, {}, {}, None, None, 0.0, None,
            stage, 7 if stage else None,
        )  # fmt: skip

    labels = sweep_labels(
        [run(1, 0.01, [64]), run(2, 0.1, [64]), run(3, 0.1, [128]), run(4, 0.5, [8], None)]
    )
    assert labels == {1: "hidden=[64] lr=0.01", 2: "hidden=[64] lr=0.1", 3: "hidden=[128] lr=0.1"}


async def test_compare_plots_loss_and_metric_apart_by_epoch(screens_home: Home) -> None:
    """Two runs marked and compared: losses on one chart, accuracy on the other, x in epochs
    for both; the running run's latest metrics show in the table; x switches to time."""
    store = Store.open(screens_home.state_db)
    store.add_metrics(1, 5, {"epoch": 1.0})  # run 1: 5 steps per epoch
    store.add_metrics(2, 2, {"epoch": 1.0, "val_accuracy": 0.61})  # run 2: 2 steps per epoch
    store.close()
    app = WorkbenchApp(Source(screens_home))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("r")
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        table = screen.query_one("#runs", DataTable)
        await until(pilot, lambda: table.row_count == 2, what="two runs")
        running = [str(c) for c in table.get_row("2")]
        assert "0.6100" in running and "1/5" in running  # live metrics of the running run
        await pilot.press("space", "down", "space", "c")
        await until(pilot, lambda: len(screen.plotted) == 2, what="both runs")
        charts = screen.chart_series()
        loss_label, losses = charts["curves"]
        score_label, scores = charts["scores"]
        assert loss_label == score_label == "epoch"
        assert {label.split()[-1] for label, _, _ in losses} == {"train_loss", "val_loss"}
        assert {label.split()[-1] for label, _, _ in scores} == {"val_accuracy"}
        assert all(max(xs) <= 1.0 for _, xs, _ in losses)  # both runs span one epoch
        await pilot.press("x")
        assert screen.chart_series()["curves"][0] == "seconds since start"


async def test_a_script_run_is_listed_beside_the_train_runs_and_grows(screens_home: Home) -> None:
    """A command job's records (workbench.track's format), applied as the daemon applies them,
    make a run on the Runs screen beside the built-in ones; new points extend its curve."""
    import json

    from workbench.db.journal import apply_records

    store = Store.open(screens_home.state_db)
    job_id = store.submit(JobRequest("my train.py", "command", {"argv": ["python"]}, "/", {}))
    store.transition(job_id, Event.START, "starting")
    store.transition(job_id, Event.LAUNCHED, "started", pid=3)
    records = screens_home.run_dir(job_id) / "records.jsonl"
    records.parent.mkdir(parents=True)

    def append(*lines: dict[str, Any]) -> None:
        with open(records, "a") as handle:
            handle.writelines(json.dumps(line) + "\n" for line in lines)
        (offset,) = store.conn.execute(
            "SELECT records_offset FROM jobs WHERE id=?", (job_id,)
        ).fetchone()
        apply_records(store, job_id, records, offset)

    append(
        {"kind": "params", "values": {"lr": 0.3}},
        *({"kind": "metrics", "step": s, "t": 1.0 + s, "values": {"train_loss": 1 / (s + 1)}}
          for s in range(4)),
    )  # fmt: skip
    app = WorkbenchApp(Source(screens_home))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("r")
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        table = screen.query_one("#runs", DataTable)
        await until(pilot, lambda: table.row_count == 3, what="the script's run")
        row = [str(c) for c in table.get_row(str(job_id))]
        assert "my train.py" in row and "running" in row and "0.3" in row
        table.move_cursor(row=table.get_row_index(str(job_id)))
        await until(pilot, lambda: job_id in screen.plotted, what="the script's curve")
        append({"kind": "metrics", "step": 4, "t": 6.0, "values": {"train_loss": 0.1}})
        await until(
            pilot,
            lambda: len(screen.plotted.get(job_id, {}).get("train_loss", [])) == 5,
            what="the curve to grow while it trains",
        )
    store.close()


def test_long_series_are_thinned_for_the_chart_keeping_the_last_point(tmp_path: Path) -> None:
    from workbench.db.metric_series import metric_series

    store = Store.open(tmp_path / "state.db")
    store.add_metric_rows(1, [(s, "train_loss", 1.0 / (s + 1)) for s in range(50_000)])
    store.add_metric_rows(1, [(s, "val_loss", 0.5) for s in range(0, 50_000, 5_000)])
    series = metric_series(store, 1, ["train_loss", "val_loss"], 2_000)
    steps = [s for s, _, _ in series["train_loss"]]
    assert 1_900 <= len(steps) <= 2_001 and steps[0] == 0 and steps[-1] == 49_999
    assert steps == sorted(steps)
    assert len(series["val_loss"]) == 10  # short series whole
    full = metric_series(store, 1, ["train_loss"])
    assert len(full["train_loss"]) == 50_000
    store.close()


def test_a_model_registered_by_a_script_reads_as_not_exported_yet() -> None:
    from rich.console import Console

    from screens.models import render_model

    card = {"name": "blobs-script-job7", "file": "/r/7/models/w.pt", "bytes": 10,
            "format": "state_dict", "source": "script", "job_id": 7, "run": {"job_id": 7},
            "dataset": {"name": "blobs", "version": 1, "content_hash": "ab" * 8}}  # fmt: skip
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(render_model({"sha256": "cd" * 32, "card": card}, None))
    text = console.export_text()
    assert "state_dict registered by job 7's script" in text
    assert "parity" not in text and "export job" not in text


async def test_compare_like_tensorboard_at_80x24(screens_home: Home) -> None:
    """At 80x24: the params diff shows beside both charts; one colour per run on every chart;
    the legend sits outside the plots; smoothing (z) changes the drawn values; any number of
    runs can be marked."""
    from screens.runs import smooth

    app = WorkbenchApp(Source(screens_home))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("r")
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        table = screen.query_one("#runs", DataTable)
        await until(pilot, lambda: table.row_count == 2, what="two runs")
        await pilot.press("space", "down", "space", "c")
        await until(pilot, lambda: len(screen.plotted) == 2, what="both runs")
        detail = screen.query_one("#runs-detail")
        assert detail.display and detail.region.height > 0
        diff = text_of(detail)
        assert "lr" in diff and "0.01" in diff and "0.1" in diff
        assert screen.query_one("#scores").region.height > 0
        lines = screen.chart_lines()
        colours = screen.colours()
        assert len(set(colours.values())) == 2
        for _, chart in lines.values():
            for job_id, _, _, _, _ in chart:
                assert job_id in colours  # the same colour for a run on both charts
        legend = text_of(screen.query_one("#legend"))
        assert "■" in legend and "train" in legend
        raw = {(j, m): ys for j, m, _, _, ys in lines["curves"][1]}
        await pilot.press("z")
        smoothed = {(j, m): ys for j, m, _, _, ys in screen.chart_lines()["curves"][1]}
        assert smoothed != raw and smoothed[(1, "val_loss")] == smooth(raw[(1, "val_loss")], 0.6)
    assert smooth([1.0, 1.0, 1.0], 0.9) == [1.0, 1.0, 1.0]  # debiased: no pull towards 0


async def test_a_live_run_redraws_only_what_its_new_points_change(screens_home: Home) -> None:
    """Idle cost that does not grow with a live run: a step's metric row (train_loss) redraws
    the loss chart only, not the table nor the metric chart; an epoch's validation figure
    updates the changed cells in place (the table is never rebuilt) and the metric chart; while
    an ended run is shown, the live run's rows redraw nothing; a live run's charts are redrawn
    at most every 10 s and its table figures every 3 s (a metric row a step would redraw them
    every poll)."""
    from workbench.db.metric_series import metrics_mark

    app = WorkbenchApp(Source(screens_home))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("r")
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        table = screen.query_one("#runs", DataTable)
        await until(pilot, lambda: table.row_count == 2 and screen.plotted, what="two runs")
        await pilot.press("down")
        await until(pilot, lambda: 2 in screen.plotted, what="the running run's curves")
        await pilot.pause(0.3)
        calls: dict[str, int] = {"clear": 0, "update_cell": 0, "curves": 0, "scores": 0}

        def counting(name: str, real: Any) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                calls[name] += 1
                return real(*args, **kwargs)

            return call

        table.clear = counting("clear", table.clear)  # type: ignore[method-assign]
        table.update_cell = counting("update_cell", table.update_cell)  # type: ignore[method-assign]
        for chart in ("curves", "scores"):
            plt = screen.query_one(f"#{chart}").plt  # type: ignore[attr-defined]
            plt.clear_figure = counting(chart, plt.clear_figure)
        store = Store.open(screens_home.state_db)
        try:
            store.add_metrics(2, 3, {"train_loss": 0.5})
            await until(
                pilot,
                lambda: len(screen.plotted.get(2, {}).get("train_loss", [])) == 3,
                what="the step's point",
            )
            await pilot.pause(0.3)
            assert calls == {"clear": 0, "update_cell": 0, "curves": 1, "scores": 0}, calls
            first_read = screen.curves_at
            store.add_metrics(2, 4, {"train_loss": 0.45, "val_accuracy": 0.7, "epoch": 2.0})
            await until(pilot, lambda: "0.7000" in str(table.get_row("2")), what="the new cells")
            await until(
                pilot,
                lambda: any(v == 0.7 for _, _, v in screen.plotted[2].get("val_accuracy", [])),
                what="the epoch's point (a live run's charts follow at most every 10 s)",
            )
            await pilot.pause(0.3)
            assert calls["clear"] == 0 and calls["update_cell"] >= 1, calls
            assert calls["curves"] == 2 and calls["scores"] == 1, calls
            assert screen.curves_at - first_read >= 9.9  # the table followed; the charts waited
            await pilot.press("up")  # the ended run
            await until(pilot, lambda: list(screen.plotted) == [1], what="the ended run's curves")
            await pilot.pause(0.3)
            before = dict(calls)
            store.add_metrics(2, 5, {"train_loss": 0.4})
            mark = metrics_mark(store)
            await until(pilot, lambda: screen.mark == mark, what="the new metrics mark")
            await pilot.pause(0.3)
            assert calls == before, (before, calls)
        finally:
            store.close()
