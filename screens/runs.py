"""The Runs screen: training runs with status, key params and metrics (live for running runs),
loss and metric curves on separate charts by epoch (or by time), two runs compared on the same
scale, and a sweep's points named by the parameters that differ between them, best first."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, Static
from textual_plotext import PlotextPlot

from screens.widgets import WorkbenchScreen, is_dark, state_text
from workbench.catalog.tracking import Run, sort_runs

SORTS = ("job", "val_accuracy", "val_loss", "val_rmse")
LOSSES = ("train_loss", "train_loss_epoch", "val_loss")
SCORES = ("val_accuracy", "val_f1_macro", "val_rmse", "val_mae", "val_r2")
SERIES = (*LOSSES, *SCORES, "epoch")
COLUMNS = (
    "job",
    "name",
    "state",
    "model",
    "dataset",
    "lr",
    "epoch",
    "val_accuracy",
    "val_loss",
    "val_rmse",
)
NARROW_DROPS = ("model", "dataset", "lr")
AXES = ("epoch", "time")
TABLE_METRICS = ("epoch", "val_accuracy", "val_loss", "val_rmse")  # what `cells` reads
# A live run's charts and table figures are redrawn at most this often (seconds): a chart
# costs 20-60 ms of CPU to draw (plotext), the table as much (it redraws whole on a cell's
# change), and a run writes a metric row every step (an epoch a second on a small dataset).
# TensorBoard's page reloads every 30 s; bench/tui.py --live-run-only measures the cost.
LIVE_CURVES_S = 10.0
LIVE_TABLE_S = 3.0
ENDED = ("succeeded", "failed", "cancelled", "blocked")


@dataclass
class RunsRead(Message):
    """The runs (running ones with their latest metrics) and the metrics mark."""

    runs: list[Run]
    mark: int


@dataclass
class CurvesRead(Message):
    """Per job, per metric: [(step, time, value), ...]."""

    series: dict[int, dict[str, list[tuple[int, float, float | None]]]]


def sweep_labels(runs: list[Run]) -> dict[int, str]:
    """Runs of the same pipeline stage (a sweep) named by the parameters that differ between
    them, e.g. `lr=0.01 hidden=[64]`; runs alone in their stage are not in the result."""
    groups: dict[tuple[int | None, str | None], list[Run]] = {}
    for run in runs:
        if run.pipeline_id is not None:
            groups.setdefault((run.pipeline_id, run.stage), []).append(run)
    labels: dict[int, str] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        keys = sorted({k for r in members for k in r.params})
        differing = [k for k in keys if len({repr(r.params.get(k)) for r in members}) > 1]
        for run in members:
            labels[run.job_id] = (
                " ".join(f"{k}={run.params.get(k)}" for k in differing) or f"job {run.job_id}"
            )
    return labels


def cells(run: Run, label: str | None, dark: bool = True) -> dict[str, Any]:
    def metric(name: str) -> Text:
        value = run.metrics.get(name)
        return Text(f"{value:.4f}" if value is not None else "", justify="right")

    epoch = run.metrics.get("epoch")
    epochs = run.params.get("epochs")
    shown_epoch = f"{epoch:.0f}/{epochs}" if epoch is not None and epochs else (str(epochs or ""))
    return {
        "job": Text(str(run.job_id), justify="right"),
        "name": (label or run.name)[:40],
        "state": state_text(run.state, dark),
        "model": run.model.rsplit("/", 1)[-1][:16],
        "dataset": f"{run.dataset} v{run.dataset_version}" if run.dataset else "-",
        "lr": Text(f"{run.params.get('lr', '')}", justify="right"),
        "epoch": Text(shown_epoch, justify="right"),
        "val_accuracy": metric("val_accuracy"),
        "val_loss": metric("val_loss"),
        "val_rmse": metric("val_rmse"),
    }


# One colour per run, the same on every chart and in the legend (distinct hues, readable on
# both themes).
PALETTE = (
    (79, 195, 247),
    (255, 167, 38),
    (186, 104, 200),
    (102, 187, 106),
    (239, 83, 80),
    (212, 225, 87),
    (144, 164, 174),
    (240, 98, 146),
)
SMOOTHING = (0.0, 0.6, 0.9)


def run_colour(position: int) -> tuple[int, int, int]:
    return PALETTE[position % len(PALETTE)]


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def smooth(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average with weight `weight` (0: none),
    debiased so the first points are not pulled towards zero."""
    if weight <= 0:
        return list(values)
    out, last = [], 0.0
    for count, value in enumerate(values, start=1):
        last = last * weight + (1 - weight) * value
        out.append(last / (1 - weight**count))
    return out


def params_diff(runs: list[Run], width: int = 80) -> Any:
    """The parameters that differ between any number of runs, then their final metrics: a
    table with a column per run (cells cut, never wrapped, so long names keep it aligned)."""
    from rich.console import Group
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 1))
    name_width = 14
    each = max(6, (width - name_width - 2) // max(1, len(runs)) - 1)
    table.add_column("", style="cyan", no_wrap=True, max_width=name_width, overflow="ellipsis")
    for position, run in enumerate(runs):
        table.add_column(
            Text(f"job {run.job_id}", style=f"bold {hex_colour(run_colour(position))}"),
            justify="right",
            no_wrap=True,
            overflow="ellipsis",
            max_width=each,
        )
    keys = sorted({k for r in runs for k in r.params})
    differing = [k for k in keys if len({repr(r.params.get(k)) for r in runs}) > 1]
    if len({r.dataset_hash for r in runs}) > 1:
        table.add_row("dataset", *(f"{r.dataset} v{r.dataset_version}" for r in runs))
    for key in differing:
        table.add_row(key, *(str(r.params.get(key, "-")) for r in runs))
    for name in sorted({m for r in runs for m in r.metrics} - {"epoch"}):
        values = (r.metrics.get(name) for r in runs)
        table.add_row(
            Text(name, style="magenta"), *(f"{v:.4f}" if v is not None else "-" for v in values)
        )
    head = Text(f"{len(runs)} runs compared", style="bold")
    if not differing:
        head.append("  same parameters", style="dim")
    return Group(head, table)


def x_values(
    series: dict[str, list[tuple[int, float, float | None]]], axis: str
) -> tuple[dict[int, float], str]:
    """Map each step of a run to its x: the epoch (fractional, from the steps per epoch the
    `epoch` metric reveals), else the step; or the seconds (minutes past 10 min) since its
    first metric. Returns (step -> x, axis label)."""
    points = [p for name in series for p in series[name]]
    if not points:
        return {}, axis
    if axis == "time":
        start = min(t for _, t, _ in points)
        span = max(t for _, t, _ in points) - start
        scale, unit = (60.0, "minutes") if span > 600 else (1.0, "seconds")
        return {step: (t - start) / scale for step, t, _ in points}, f"{unit} since start"
    per_epoch = [step / value for step, _, value in series.get("epoch", []) if value]
    if per_epoch:
        steps = per_epoch[-1]
        return {step: step / steps for step, _, _ in points}, "epoch"
    return {step: float(step) for step, _, _ in points}, "step (no epoch finished yet)"


def plot_points(width: int) -> int:
    """How many points of a series to read for a chart `width` cells wide: four per cell, at
    least 240. A braille chart resolves two x positions a cell, so more points only cost: plotext
    took 43 ms a chart for 2,000 points, 10 ms for 500 (workbench.db.metric_series thins a longer
    series in SQLite: a 50,000-point run reads a few hundred rows)."""
    return max(240, 4 * width)


class RunsScreen(WorkbenchScreen):
    """Runs and their curves. Space marks runs (any number) to compare on the same axes."""

    TITLE_NAME = "Runs"
    AUTO_FOCUS = "#runs"
    BINDINGS = [
        Binding(
            "o",
            "sort",
            "Sort",
            id="tracking.sort",
            tooltip="Sort by job, val_accuracy, val_loss or val_rmse",
        ),
        Binding(
            "space",
            "mark",
            "Mark",
            id="tracking.mark",
            tooltip="Mark a run for comparison (any number)",
        ),
        Binding(
            "c",
            "compare",
            "Compare",
            id="tracking.compare",
            tooltip="Compare the marked runs: params diff, curves on the same axes",
        ),
        Binding(
            "z",
            "smoothing",
            "Smooth",
            id="tracking.smoothing",
            tooltip="Smooth the curves (TensorBoard's moving average): off, 0.6, 0.9",
        ),
        Binding(
            "x",
            "axis",
            "By epoch/time",
            id="tracking.axis",
            tooltip="Plot the curves by epoch (default) or by time since the run started",
        ),
        Binding(
            "w",
            "sweep",
            "Sweep",
            id="tracking.sweep",
            tooltip="Show only the selected run's sweep, best first",
        ),
        Binding(
            "escape",
            "show_all",
            "All runs",
            id="tracking.all",
            tooltip="Back to every run, no comparison",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: dict[int, Run] = {}
        self.labels: dict[int, str] = {}
        self.sort_index = 0
        self.marked: list[int] = []
        self.comparing = False
        self.sweep_of: Run | None = None
        self.mark = -1
        self.signature: Any = None
        self.axis = "epoch"
        self.plotted: dict[int, dict[str, list[tuple[int, float, float | None]]]] = {}
        self.columns: tuple[str, ...] = ()
        self.smoothing = 0.0
        self.shown_cells: dict[str, dict[str, Any]] = {}
        self.status_text: Text | None = None
        self.detail_text: Any = None
        self.drawn: dict[str, Any] = {}
        self.curve_states: dict[int, str] = {}
        self.curves_at = 0.0
        self.applied_at = 0.0

    def compose(self) -> ComposeResult:
        yield self.title_bar()
        with Horizontal(id="runs-body"):
            with Vertical(id="runs-left"):
                yield Static(id="runs-status")
                table: DataTable[Any] = DataTable(id="runs", cursor_type="row", zebra_stripes=True)
                table.border_title = "runs"
                yield table
                yield Static(id="runs-detail")
            with Vertical(id="charts-pane"):
                yield Static(id="legend")
                with Vertical(id="charts"):
                    yield PlotextPlot(id="curves")
                    yield PlotextPlot(id="scores")
        yield self.bottom_bar()

    def on_mount(self) -> None:
        self.set_class(self.size.width < 120, "narrow")
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self.apply())
        # No read here: the screen's resume, which follows its mount, reads (two reads on
        # opening drew the table and read the curves twice).

    def on_resize(self) -> None:
        narrow = self.size.width < 120
        if narrow != self.has_class("narrow"):
            self.set_class(narrow, "narrow")
            self.apply()

    def on_screen_resume(self) -> None:
        self.mark = -1
        self.signature = None
        self.poll()

    @work(thread=True, exclusive=True, exit_on_error=False, group="runs", description="read runs")
    def poll(self) -> None:
        """The runs (a few rows), with the latest metrics of those still running; curves are
        re-read only when a metric was written (the metrics mark moved)."""
        from workbench.catalog import tracking
        from workbench.db.metric_series import metrics_mark

        def read(store: Any) -> RunsRead:
            live = [
                replace(run, metrics={**store.last_metrics(run.job_id), **run.metrics})
                if run.state in ("running", "starting", "paused")
                else run
                for run in tracking.list_runs(store)
            ]
            return RunsRead(live, metrics_mark(store))

        self.post_message(self.app.source.read(read))  # type: ignore[attr-defined]

    def on_runs_read(self, message: RunsRead) -> None:
        # Only what the table shows: a live run writes a metric row every step, most of which
        # (train_loss, the step) no row shows; those change the curves, not the table. A row
        # added, gone or changing state shows at once; a live run's figures at most every
        # LIVE_TABLE_S (a DataTable redraws whole on any cell's change).
        rows = [
            (r.job_id, r.name, r.state, r.model, r.dataset, r.dataset_version,
             repr(sorted(r.params.items())))
            for r in message.runs
        ]  # fmt: skip
        figures = [tuple(r.metrics.get(m) for m in TABLE_METRICS) for r in message.runs]
        self.runs = {r.job_id: r for r in message.runs}
        if (
            self.signature is None
            or rows != self.signature[0]
            or (figures != self.signature[1] and time.monotonic() - self.applied_at >= LIVE_TABLE_S)
        ):
            self.signature = (rows, figures)
            self.labels = sweep_labels(message.runs)
            self.applied_at = time.monotonic()
            self.apply()
        if message.mark != self.mark:
            shown = self.shown_runs()
            if not any(r.state not in ENDED for r in shown):
                self.mark = message.mark
                if any(self.curve_states.get(r.job_id) != r.state for r in shown):
                    self.load_curves()  # an ended run's curves, once read, do not move
            elif time.monotonic() - self.curves_at >= LIVE_CURVES_S:
                self.mark = message.mark  # else the next poll sees the mark moved still
                self.load_curves()
        if self.app.is_running and not getattr(self.app, "frozen", False):
            self.set_timer(1.0, self._next)

    def _next(self) -> None:
        if self.is_current:
            self.poll()

    def ordered(self) -> list[Run]:
        runs = list(self.runs.values())
        if self.sweep_of is not None:
            sweep = self.sweep_of
            runs = [
                r for r in runs if r.pipeline_id == sweep.pipeline_id and r.stage == sweep.stage
            ]
            metric = sweep.sweep_metric or (
                "val_accuracy" if sweep.task == "classification" else "-val_loss"
            )
        else:
            metric = SORTS[self.sort_index]
        if metric == "job":
            return sorted(runs, key=lambda r: r.job_id)
        return sort_runs(runs, metric)

    def shown_columns(self, ordered: list[Run]) -> tuple[str, ...]:
        """Every column with something to show; below 120 columns, model, dataset and lr go."""
        drop = set(NARROW_DROPS) if self.has_class("narrow") else set()
        for metric in ("val_accuracy", "val_loss", "val_rmse"):
            if all(r.metrics.get(metric) is None for r in ordered):
                drop.add(metric)
        return tuple(c for c in COLUMNS if c not in drop)

    def apply(self) -> None:
        table = self.query_one("#runs", DataTable)
        ordered = self.ordered()
        selected = self.selected()
        columns = self.shown_columns(ordered)
        rows = {}
        for run in ordered:
            row = cells(run, self.labels.get(run.job_id), is_dark(self))
            if run.job_id in self.marked:
                row["job"] = Text(f"*{run.job_id}", style="bold cyan", justify="right")
            rows[str(run.job_id)] = row
        with self.app.batch_update():
            if columns == self.columns and list(rows) == [k.value for k in table.rows]:
                # The same rows in the same order: only the cells that changed are redrawn.
                for key, row in rows.items():
                    before = self.shown_cells.get(key, {})
                    for column in columns:
                        if before.get(column) != row[column]:
                            table.update_cell(key, column, row[column])
            else:
                if columns != self.columns:
                    table.clear(columns=True)
                    for column in columns:
                        table.add_column(column, key=column)
                    self.columns = columns
                table.clear()
                for key, row in rows.items():
                    table.add_row(*(row[c] for c in columns), key=key)
                if selected is not None and str(selected.job_id) in table.rows:
                    table.move_cursor(row=table.get_row_index(str(selected.job_id)))
            self.shown_cells = rows
        status = Text(f"{len(self.runs)} runs", style="bold")
        if self.sweep_of is not None:
            status.append(
                f"  sweep {self.sweep_of.stage}: {len(ordered)} points, best first (esc: all)",
                style="magenta",
            )
        else:
            status.append(f"  sorted by {SORTS[self.sort_index]}", style="dim")
        status.append(f"  by {self.axis} (x)", style="dim")
        if self.smoothing:
            status.append(f"  smoothed {self.smoothing:g} (z)", style="dim")
        if self.marked:
            status.append(f"  marked: {', '.join(map(str, self.marked))}", style="cyan")
        if not self.runs:
            status = Text(
                "no runs yet: a train job or a script using workbench.track records one"
                " (workbench --batch examples/quickstart.toml)",
                style="dim",
            )
        if status != self.status_text:
            self.status_text = status
            self.query_one("#runs-status", Static).update(status)

    def selected(self) -> Run | None:
        table = self.query_one("#runs", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.runs.get(int(key)) if key else None

    @on(DataTable.RowHighlighted, "#runs")
    def highlighted(self) -> None:
        if not self.comparing:
            self.load_curves()

    def shown_runs(self) -> list[Run]:
        if self.comparing and len(self.marked) >= 2:
            return [self.runs[i] for i in self.marked if i in self.runs]
        run = self.selected()
        return [run] if run else []

    def load_curves(self) -> None:
        runs = self.shown_runs()
        self.curve_states = {r.job_id: r.state for r in runs}
        self.curves_at = time.monotonic()
        if runs:
            charts = [w.size.width for w in self.query(PlotextPlot)]
            self.read_curves(
                [r.job_id for r in runs], plot_points(max(charts or [self.size.width]))
            )
        detail = self.query_one("#runs-detail", Static)
        self.set_class(len(runs) >= 2, "comparing")
        if len(runs) >= 2:
            detail.update(params_diff(runs, detail.size.width or self.size.width))
            self.detail_text = None
        elif runs:
            run = runs[0]
            text = Text()
            text.append(f"job {run.job_id} {run.name}\n", style="bold")
            text.append(
                f"{run.task} on {run.dataset} v{run.dataset_version} ({run.dataset_hash[:12]})\n",
                style="dim",
            )
            shown = {
                k: v
                for k, v in run.params.items()
                if k in ("model", "hidden", "lr", "batch_size", "epochs", "optimizer", "seed")
            }
            text.append(", ".join(f"{k}={v}" for k, v in shown.items()) + "\n")
            text.append(
                f"torch {run.env.get('torch')} on {run.env.get('device_name')} ({run.env.get('device')})\n",
                style="dim",
            )
            if text != self.detail_text:  # a live run's metric rows leave it as it was
                self.detail_text = text
                detail.update(text)

    @work(
        thread=True, exclusive=True, exit_on_error=False, group="curves", description="read curves"
    )
    def read_curves(self, job_ids: list[int], points: int) -> None:
        from workbench.db.metric_series import metric_series

        series = self.app.source.read(  # type: ignore[attr-defined]
            lambda store: {i: metric_series(store, i, SERIES, points) for i in job_ids}
        )
        self.post_message(CurvesRead(series))

    def on_curves_read(self, message: CurvesRead) -> None:
        self.plotted = message.series
        self.draw()

    def label(self, job_id: int, name: str, many: bool) -> str:
        if not many:
            return name
        return f"{self.labels.get(job_id) or f'job {job_id}'} {name}"

    def chart_lines(
        self,
    ) -> dict[str, tuple[str, list[tuple[int, str, str, list[float], list[float]]]]]:
        """What each chart plots: {chart id: (x label, [(job, metric, label, xs, ys), ...])}.
        Losses go on `curves`, the task metric on `scores`, every run on the same x (epoch or
        time), smoothed by the chosen weight."""
        many = len(self.plotted) > 1
        out: dict[str, tuple[str, list[tuple[int, str, str, list[float], list[float]]]]] = {}
        for widget_id, names in (("curves", LOSSES), ("scores", SCORES)):
            xlabel = self.axis
            lines = []
            for job_id, series in self.plotted.items():
                xs, xlabel = x_values(series, self.axis)
                for name in names:
                    if name == "train_loss" and many and series.get("train_loss_epoch"):
                        continue  # comparing: the per-epoch mean reads better than every step
                    if name == "train_loss_epoch" and not many:
                        continue
                    points = [(xs[s], v) for s, _, v in series.get(name, []) if v is not None]
                    if points:
                        ys = smooth([p[1] for p in points], self.smoothing)
                        lines.append(
                            (
                                job_id,
                                name,
                                self.label(job_id, name, many),
                                [p[0] for p in points],
                                ys,
                            )
                        )
            out[widget_id] = (xlabel, lines)
        return out

    def chart_series(self) -> dict[str, tuple[str, list[tuple[str, list[float], list[float]]]]]:
        """`chart_lines` without the job and metric: {chart id: (x label, [(label, xs, ys)])}."""
        return {
            key: (xlabel, [(label, xs, ys) for _, _, label, xs, ys in lines])
            for key, (xlabel, lines) in self.chart_lines().items()
        }

    def colours(self) -> dict[int, tuple[int, int, int]]:
        """One colour per shown run, the same on both charts and in the legend."""
        return {job_id: run_colour(i) for i, job_id in enumerate(self.plotted)}

    def draw(self) -> None:
        """Loss on one chart, the task metric on the other; one colour per run, training
        curves drawn in braille and validation in dots; the legend sits above the charts,
        never over a curve."""
        titles = {"curves": "loss", "scores": "validation metric"}
        colours = self.colours()
        for widget_id, (xlabel, lines) in self.chart_lines().items():
            drawn = (xlabel, lines, [colours[line[0]] for line in lines])
            if self.drawn.get(widget_id) == drawn:
                continue  # new points on the other chart only (a step's loss, not an epoch's)
            self.drawn[widget_id] = drawn
            widget = self.query_one(f"#{widget_id}", PlotextPlot)
            plt = widget.plt
            plt.clear_figure()
            for job_id, name, _, xs, ys in lines:
                marker = "braille" if name.startswith("train") else "dot"
                plt.plot(xs, ys, marker=marker, color=colours[job_id])
            title = titles[widget_id]
            plt.title(title if lines else f"{title}: nothing recorded yet")
            plt.xlabel(xlabel)
            widget.refresh()
        legend = Text(no_wrap=True, overflow="ellipsis")
        many = len(self.plotted) > 1
        for job_id, colour in colours.items():
            name = self.labels.get(job_id) or (
                self.runs[job_id].name if job_id in self.runs else f"job {job_id}"
            )
            legend.append("■ ", style=hex_colour(colour))
            legend.append(f"{job_id} {name}  " if many else f"{name}  ")
        legend.append("⠶ train  • val", style="dim")
        if legend != self.drawn.get("legend"):
            self.drawn["legend"] = legend
            self.query_one("#legend", Static).update(legend)

    def action_smoothing(self) -> None:
        self.smoothing = SMOOTHING[(SMOOTHING.index(self.smoothing) + 1) % len(SMOOTHING)]
        self.notify(f"smoothing {self.smoothing:g}", timeout=1.5)
        self.apply()
        self.draw()

    def action_sort(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(SORTS)
        self.apply()

    def action_axis(self) -> None:
        self.axis = AXES[(AXES.index(self.axis) + 1) % len(AXES)]
        self.notify(f"curves by {self.axis}", timeout=1.5)
        self.apply()
        self.draw()

    def action_mark(self) -> None:
        run = self.selected()
        if run is None:
            self.notify("no run selected", severity="warning")
            return
        if run.job_id in self.marked:
            self.marked.remove(run.job_id)
        else:
            self.marked.append(run.job_id)
        self.apply()

    def action_compare(self) -> None:
        if len(self.marked) < 2:
            self.notify("mark two runs or more with space first", severity="warning")
            return
        self.comparing = True
        self.load_curves()

    def action_sweep(self) -> None:
        run = self.selected()
        if run is None or run.pipeline_id is None:
            self.notify("this run is not part of a pipeline stage", severity="warning")
            return
        self.sweep_of = run
        self.apply()

    def action_show_all(self) -> None:
        if self.sweep_of is None and not self.comparing:
            self.notify("already showing every run", timeout=1.5)
            return
        self.sweep_of = None
        self.comparing = False
        self.apply()
        self.load_curves()
