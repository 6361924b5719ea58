"""The Runs screen: training runs with status, key params and metrics (sortable), a run's loss
and validation curves updating while it trains, two runs compared, a sweep's points ranked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static
from textual_plotext import PlotextPlot

from screens.widgets import state_text
from workbench.catalog.tracking import Run, sort_runs

SORTS = ("job", "val_accuracy", "val_loss", "val_rmse")
COLUMNS = (
    "job",
    "name",
    "state",
    "model",
    "dataset",
    "lr",
    "epochs",
    "val_accuracy",
    "val_loss",
    "val_rmse",
)


@dataclass
class RunsRead(Message):
    runs: list[Run]
    version: int


@dataclass
class CurvesRead(Message):
    series: dict[int, dict[str, list[tuple[int, float | None]]]]


def cells(run: Run) -> tuple[Any, ...]:
    def metric(name: str) -> str:
        value = run.metrics.get(name)
        return f"{value:.4f}" if value is not None else ""

    return (
        str(run.job_id),
        run.name[:36],
        state_text(run.state),
        run.model.rsplit("/", 1)[-1][:16],
        f"{run.dataset} v{run.dataset_version}",
        f"{run.params.get('lr', '')}",
        f"{run.params.get('epochs', '')}",
        metric("val_accuracy"),
        metric("val_loss"),
        metric("val_rmse"),
    )


def params_diff(a: Run, b: Run) -> Text:
    """The parameters that differ between two runs, then their final metrics side by side."""
    text = Text()
    text.append(f"job {a.job_id} vs job {b.job_id}\n", style="bold")
    keys = sorted(set(a.params) | set(b.params))
    differing = [k for k in keys if a.params.get(k) != b.params.get(k)]
    if a.dataset_hash != b.dataset_hash:
        text.append(
            f"dataset  {a.dataset} v{a.dataset_version}  |  {b.dataset} v{b.dataset_version}\n",
            style="yellow",
        )
    for key in differing:
        text.append(f"{key:<14}", style="cyan")
        text.append(f"{a.params.get(key)!s:>14}  |  {b.params.get(key)!s}\n")
    if not differing:
        text.append("same parameters\n", style="dim")
    for name in sorted(set(a.metrics) | set(b.metrics)):
        left, right = (
            f"{v:.4f}" if v is not None else "-" for v in (a.metrics.get(name), b.metrics.get(name))
        )
        text.append(f"{name:<14}", style="magenta")
        text.append(f"{left:>14}  |  {right}\n")
    return text


class RunsScreen(Screen[None]):
    """Runs and their curves. Space marks up to two runs to compare."""

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
            tooltip="Mark a run for comparison (two at most)",
        ),
        Binding(
            "c",
            "compare",
            "Compare",
            id="tracking.compare",
            tooltip="Compare the two marked runs: params diff, curves overlaid",
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
        self.sort_index = 0
        self.marked: list[int] = []
        self.comparing = False
        self.sweep_of: Run | None = None
        self.version = -1
        self.plotted: dict[int, dict[str, list[tuple[int, float | None]]]] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="runs-body"):
            with Vertical(id="runs-left"):
                yield Static(id="runs-status")
                yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
                yield Static(id="runs-detail")
            yield PlotextPlot(id="curves")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one("#runs", DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.poll()

    def on_screen_resume(self) -> None:
        self.version = -1
        self.poll()

    @work(thread=True, exclusive=True, exit_on_error=False, group="runs", description="read runs")
    def poll(self) -> None:
        from workbench.catalog import tracking

        source = self.app.source  # type: ignore[attr-defined]
        store = source.store()
        self.post_message(RunsRead(tracking.list_runs(store), source.data_version()))

    def on_runs_read(self, message: RunsRead) -> None:
        changed = message.version != self.version
        self.version = message.version
        self.runs = {r.job_id: r for r in message.runs}
        if changed:
            self.apply()
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

    def apply(self) -> None:
        table = self.query_one("#runs", DataTable)
        ordered = self.ordered()
        selected = self.selected()
        with self.app.batch_update():
            table.clear()
            for run in ordered:
                mark = "*" if run.job_id in self.marked else ""
                row = list(cells(run))
                row[0] = f"{mark}{row[0]}"
                table.add_row(*row, key=str(run.job_id))
            if selected is not None and str(selected.job_id) in table.rows:
                table.move_cursor(row=table.get_row_index(str(selected.job_id)))
        status = Text(f"{len(self.runs)} runs", style="bold")
        if self.sweep_of is not None:
            status.append(
                f"  sweep {self.sweep_of.stage}: {len(ordered)} points, best first (esc: all)",
                style="magenta",
            )
        else:
            status.append(f"  sorted by {SORTS[self.sort_index]}", style="dim")
        if self.marked:
            status.append(f"  marked: {', '.join(map(str, self.marked))}", style="cyan")
        if not self.runs:
            status = Text(
                "no runs yet: a train job records one (workbench --batch examples/quickstart.toml)",
                style="dim",
            )
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
        if self.comparing and len(self.marked) == 2:
            return [self.runs[i] for i in self.marked if i in self.runs]
        run = self.selected()
        return [run] if run else []

    def load_curves(self) -> None:
        runs = self.shown_runs()
        if runs:
            self.read_curves([r.job_id for r in runs])
        detail = self.query_one("#runs-detail", Static)
        if len(runs) == 2:
            detail.update(params_diff(runs[0], runs[1]))
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
            detail.update(text)

    @work(
        thread=True, exclusive=True, exit_on_error=False, group="curves", description="read curves"
    )
    def read_curves(self, job_ids: list[int]) -> None:
        store = self.app.source.store()  # type: ignore[attr-defined]
        names = ["train_loss", "val_loss", "val_accuracy", "val_rmse"]
        self.post_message(CurvesRead({job_id: store.metrics(job_id, names) for job_id in job_ids}))

    def on_curves_read(self, message: CurvesRead) -> None:
        self.plotted = message.series
        widget = self.query_one("#curves", PlotextPlot)
        plt = widget.plt
        plt.clear_figure()
        plt.title("loss and validation per step" if len(message.series) == 1 else "runs compared")
        for job_id, series in message.series.items():
            for name in ("train_loss", "val_loss", "val_accuracy", "val_rmse"):
                points = [(s, v) for s, v in series.get(name, []) if v is not None]
                if points:
                    label = f"{job_id} {name}" if len(message.series) > 1 else name
                    plt.plot(
                        [p[0] for p in points],
                        [p[1] for p in points],
                        label=label,
                        marker="braille",
                    )
        plt.xlabel("step")
        widget.refresh()

    def action_sort(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(SORTS)
        self.apply()

    def action_mark(self) -> None:
        run = self.selected()
        if run is None:
            return
        if run.job_id in self.marked:
            self.marked.remove(run.job_id)
        else:
            self.marked = [*self.marked[-1:], run.job_id]
        self.apply()

    def action_compare(self) -> None:
        if len(self.marked) != 2:
            self.notify("mark two runs with space first", severity="warning")
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
        self.sweep_of = None
        self.comparing = False
        self.apply()
        self.load_curves()
