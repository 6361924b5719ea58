"""The Models screen: exported models with their lineage (dataset, run, test, export), the test
report with its confusion matrix drawn, the worst slices, and a key that opens the Data screen
with a query of the errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Static

from screens.widgets import WorkbenchScreen, unit
from workbench.units import format_size


@dataclass
class ModelsRead(Message):
    models: list[dict[str, Any]]
    tests: dict[int, dict[str, Any]]


def confusion(report: dict[str, Any]) -> Table:
    """The confusion matrix with cells shaded by their share of the true class."""
    classes = report["classes"]
    matrix = report["confusion_matrix"]
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("")
    for name in classes:
        table.add_column(name[:10], justify="right")
    for name, row in zip(classes, matrix, strict=True):
        total = sum(row) or 1
        shaded = []
        for j, count in enumerate(row):
            share = count / total
            if j == classes.index(name):
                style = "bold green" if share > 0.9 else "green"
            else:
                style = "bold red" if share > 0.1 else ("red" if count else "dim")
            shaded.append(Text(str(count), style=style))
        table.add_row(name[:12], *shaded)
    return table


def speed_ratio(torch_ms: float, ort_ms: float) -> str:
    """How onnxruntime's median latency compares with torch's, in words that stay readable at
    any ratio: `422x faster`, `1.3x faster`, `2.0x slower`, `same speed` (never `x0.00`)."""
    if torch_ms <= 0 or ort_ms <= 0:
        return "no ratio"
    ratio = torch_ms / ort_ms
    if 0.95 <= ratio <= 1.05:
        return "same speed"
    faster = ratio > 1
    factor = ratio if faster else 1 / ratio
    shown = f"{factor:,.0f}" if factor >= 10 else f"{factor:.1f}"
    return f"onnxruntime {shown}x {'faster' if faster else 'slower'}"


def render_model(model: dict[str, Any], test: dict[str, Any] | None) -> Group:
    card = model["card"]
    data = card.get("dataset") or {}
    run = card.get("run") or {}
    lines: list[Any] = []
    head = Text()
    head.append(f"{card.get('name')}\n", style="bold cyan")
    head.append(
        f"file {card.get('file')}  {format_size(card.get('bytes'))}  sha256 {model['sha256'][:16]}\n",
        style="dim",
    )
    head.append("lineage  ", style="bold")
    head.append(
        unit(
            f"dataset {data.get('name')} v{data.get('version')} ({str(data.get('content_hash'))[:10]})"
        )
    )
    head.append(" -> ")
    head.append(unit(f"train job {run.get('job_id')}"))
    if card.get("test"):
        head.append(" -> ")
        passed = card["test"].get("gate_passed")
        head.append(unit(f"test job {card['test']['job_id']}"), style="green" if passed else "red")
    if card.get("source") == "script":  # registered by workbench.track: not exported yet
        head.append(
            f"\n{card.get('format')} registered by job {card.get('job_id')}'s script; a test or"
            " export stage whose model is that stage takes it\n",
            style="dim",
        )
        lines.append(head)
        return Group(*lines)
    head.append(" -> ")
    head.append(unit(f"export job {card.get('export_job_id')}") + "\n")
    parity = card.get("parity") or {}
    diff = unit(f"max abs diff {parity.get('max_abs_diff', 0):.1e}")
    rows = unit(f"{parity.get('rows') or 0:,} rows")
    exporter = unit(str(card.get("exporter")))
    axis = unit(f"batch axis {card.get('batch_axis')}")
    head.append(f"parity  {diff} on {rows}; exporter {exporter}, {axis}\n")
    for batch, row in (card.get("latency", {}).get("cpu") or {}).items():
        if not batch.startswith("batch_") or "torch" not in row:  # threads; an int8 model's row
            continue
        torch_ms, ort_ms = row["torch"]["median_ms"], row["onnxruntime"]["median_ms"]
        head.append(
            f"latency {batch.replace('_', ' ')}: torch {torch_ms:.3f} ms, onnxruntime"
            f" {ort_ms:.3f} ms ({speed_ratio(torch_ms, ort_ms)})\n",
            style="dim",
        )
    for line in model.get("serving") or []:
        head.append(f"serving {line}\n", style="green")
    if card.get("quantized"):
        q = card["quantized"]
        head.append(
            f"int8    {q['metric']} {q['fp32']} -> {q['int8']}, {format_size(q['bytes'])}\n",
            style="dim",
        )
    lines.append(head)
    if test is None:
        lines.append(Text("no test report for this run", style="dim"))
        return Group(*lines)
    metrics = Text("test    ", style="bold")
    metrics.append(", ".join(f"{k} {v:.4f}" for k, v in test["metrics"].items()))
    metrics.append(f"  on {test['dataset']['name']} v{test['dataset']['version']}\n")
    lines.append(metrics)
    report = test.get("report") or {}
    if "confusion_matrix" in report:
        lines.append(Text("confusion (rows: true, columns: predicted)", style="bold"))
        lines.append(confusion(report))
    slices = test.get("slices") or []
    if slices:
        worst = Text("\nworst slices\n", style="bold")
        for item in slices[:6]:
            value = item.get("accuracy", item.get("rmse"))
            metric = "accuracy" if "accuracy" in item else "rmse"
            worst.append(f"  {item['slice']:<40} {metric} {value:.3f}  ({item['rows']:,} rows)\n")
        lines.append(worst)
    return Group(*lines)


class ModelsScreen(WorkbenchScreen):
    """Exported models; `e` queries the selected model's test errors in the Data screen."""

    TITLE_NAME = "Models"

    AUTO_FOCUS = "#models"
    BINDINGS = [
        Binding(
            "e",
            "errors",
            "Errors in SQL",
            id="registry.errors",
            tooltip="Open the Data screen with a query of the rows this model got wrong",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.models: list[dict[str, Any]] = []
        self.tests: dict[int, dict[str, Any]] = {}

    def compose(self) -> ComposeResult:
        yield self.title_bar()
        with Horizontal(id="models-body"):
            yield DataTable(id="models", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="model-detail"):
                yield Static(id="model-card")
        yield self.bottom_bar()

    def on_mount(self) -> None:
        table = self.query_one("#models", DataTable)
        for column in ("id", "name", "test", "parity"):
            table.add_column(column, key=column)
        self.poll()

    def on_screen_resume(self) -> None:
        self.poll()

    def on_resize(self) -> None:
        self.set_class(self.size.width < 120, "narrow")

    @work(
        thread=True, exclusive=True, exit_on_error=False, group="models", description="read models"
    )
    def poll(self) -> None:
        from workbench.catalog import registry

        def read(store: Any) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
            listed = registry.list_models(store)
            serving = [
                j
                for j in store.list_jobs(states=["queued", "starting", "running"], light="no-env")
                if j.kind == "serve"
            ]
            for model in listed:  # serve jobs of this model: their live request counts
                model["serving"] = [
                    f"serve job {j.id} ({j.state}): {j.progress_msg or 'starting'}"
                    for j in serving
                    if str(j.spec.get("model")) in (str(model["id"]), str(model["path"]))
                ]
            tests: dict[int, dict[str, Any]] = {}
            for model in listed:
                run_id = model["run_job_id"]
                if run_id is not None and run_id not in tests:
                    found = registry.evaluations(store, run_id)
                    if found:
                        tests[run_id] = found[0]
            return listed, tests

        listed, tests = self.app.source.read(read)  # type: ignore[attr-defined]
        self.post_message(ModelsRead(listed, tests))

    def on_models_read(self, message: ModelsRead) -> None:
        self.models, self.tests = message.models, message.tests
        table = self.query_one("#models", DataTable)
        table.clear()
        for model in self.models:
            test = model["card"].get("held_out") or self.tests.get(model["run_job_id"])  # int8
            headline = next(iter((test or {}).get("metrics", {}).items()), None)
            table.add_row(
                str(model["id"]),
                model["card"].get("name", "")[:28],
                f"{headline[0]} {headline[1]:.3f}" if headline and headline[1] is not None else "-",
                f"{model['card']['parity']['max_abs_diff']:.0e}",
                key=str(model["id"]),
            )
        if not self.models:
            self.query_one("#model-card", Static).update(
                Text("no models yet: an export job records one", style="dim")
            )
        else:
            self.show_selected()

    def selected(self) -> dict[str, Any] | None:
        table = self.query_one("#models", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((m for m in self.models if str(m["id"]) == key), None)

    @on(DataTable.RowHighlighted, "#models")
    def show_selected(self) -> None:
        model = self.selected()
        if model is not None:
            self.query_one("#model-card", Static).update(
                render_model(model, self.tests.get(model["run_job_id"]))
            )

    def action_errors(self) -> None:
        model = self.selected()
        test = self.tests.get(model["run_job_id"]) if model else None
        if model is None or test is None:
            self.notify("no test report for this model", severity="warning")
            return
        dataset = test["predictions"]["dataset"]
        condition = (
            "NOT correct"
            if test.get("task") == "classification"
            else "abs(error) > (SELECT quantile_cont(abs(error), 0.9) FROM " + dataset + ")"
        )
        order = "confidence DESC" if test.get("task") == "classification" else "abs(error) DESC"
        sql = f"SELECT * FROM {dataset} WHERE {condition} ORDER BY {order}"
        self.app.switch_mode("data")

        def run_there() -> None:
            # The results are what to look at next; the focus goes there, not to the editor,
            # so the screen keys keep working.
            data = self.app.screen
            data.run_sql(sql)  # type: ignore[attr-defined]
            data.query_one("#results").focus()

        self.app.call_later(run_there)
