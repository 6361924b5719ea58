"""The Queue: the job table updated in place (rows diffed, only changed cells rewritten), job
control keys, a submit form, and the job detail screen with its log following live."""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, Log, Static

from screens.widgets import state_text
from workbench.db.store import Job, JobEvent
from workbench.present import job_details, job_progress, job_resources
from workbench.units import format_duration

COLUMNS = ("id", "name", "kind", "state", "resources", "progress", "age", "reason")
STATE_FILTERS = (None, "queued", "running", "paused", "blocked", "succeeded", "failed", "cancelled")


def row_cells(job: Job, now: float) -> tuple[Any, ...]:
    reason = job.reason if job.state not in ("running", "succeeded") else ""
    return (
        str(job.id),
        job.name[:40],
        job.kind,
        state_text(job.state),
        job_resources(job),
        job_progress(job),
        format_duration(max(0.0, now - job.created_at)),
        reason or "",
    )


@dataclass
class JobsRead(Message):
    jobs: list[Job]
    now: float
    version: int


@dataclass
class ActionDone(Message):
    text: str
    error: bool = False


class QueueScreen(Screen[None]):
    """The job table and job control."""

    AUTO_FOCUS = "#jobs"

    BINDINGS = [
        Binding(
            "o",
            "open",
            "Open",
            id="queue.open",
            tooltip="Open the job (also Enter): spec, history, resources, live log",
        ),
        Binding("n", "submit", "New", id="queue.submit", tooltip="Submit a command job"),
        Binding(
            "b",
            "pipeline",
            "Pipeline",
            id="queue.pipeline",
            tooltip="Queue every stage of a pipeline file (as --batch does, without waiting)",
        ),
        Binding(
            "c",
            "control('cancel')",
            "Cancel",
            id="queue.cancel",
            tooltip="Cancel the job (SIGTERM, then SIGKILL)",
        ),
        Binding(
            "p",
            "control('pause')",
            "Pause",
            id="queue.pause",
            tooltip="Hold a queued job or stop a running one",
        ),
        Binding(
            "u",
            "control('resume')",
            "Resume",
            id="queue.resume",
            tooltip="Release or continue the job",
        ),
        Binding(
            "x",
            "control('retry')",
            "Retry",
            id="queue.retry",
            tooltip="Queue a failed, cancelled or blocked job again",
        ),
        Binding(
            "plus,equals_sign",
            "priority(1)",
            "Prio+",
            id="queue.priority_up",
            tooltip="Raise the job's priority",
        ),
        Binding(
            "minus",
            "priority(-1)",
            "Prio-",
            id="queue.priority_down",
            tooltip="Lower the job's priority",
        ),
        Binding(
            "f",
            "cycle_state",
            "State",
            id="queue.state_filter",
            tooltip="Show only jobs in one state",
        ),
        Binding("slash", "filter_text", "Find", id="queue.find", tooltip="Filter jobs by text"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[int, Job] = {}
        self.state_filter: str | None = None
        self.text_filter = ""
        self.version = -1

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="queue-status")
        yield Input(
            placeholder="filter by text (name, kind, reason); Enter to apply, Esc to close",
            id="find",
        )
        table: DataTable[Any] = DataTable(id="jobs", cursor_type="row", zebra_stripes=True)
        yield table
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one("#jobs", DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.query_one("#find", Input).display = False
        self.poll()

    def on_screen_resume(self) -> None:
        self.version = -1
        self.poll()

    # ---- polling ---------------------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="jobs", description="read jobs")
    def poll(self) -> None:
        """Read the jobs when the store changed (data_version), else only refresh the ages."""
        source = self.app.source  # type: ignore[attr-defined]
        version = source.data_version()
        if version == self.version and self.jobs:
            self.post_message(JobsRead(list(self.jobs.values()), source.now(), version))
            return
        self.post_message(JobsRead(source.jobs(), source.now(), version))

    def on_jobs_read(self, message: JobsRead) -> None:
        self.version = message.version
        self.jobs = {j.id: j for j in message.jobs}
        self.apply(message.now)
        if self.app.is_running and not getattr(self.app, "frozen", False):
            self.set_timer(0.5, self._next_poll)

    def _next_poll(self) -> None:
        if self.is_current:
            self.poll()

    def visible(self) -> list[Job]:
        needle = self.text_filter.lower()
        out = []
        for job in self.jobs.values():
            if self.state_filter and job.state != self.state_filter:
                continue
            if (
                needle
                and needle not in f"{job.id} {job.name} {job.kind} {job.reason or ''}".lower()
            ):
                continue
            out.append(job)
        return out

    def apply(self, now: float) -> None:
        """Diff the table against the jobs: remove stale rows, add new ones, rewrite changed cells."""
        table = self.query_one("#jobs", DataTable)
        wanted = {str(j.id): j for j in self.visible()}
        with self.app.batch_update():
            for key in [k.value for k in list(table.rows)]:
                if key not in wanted:
                    table.remove_row(key)
            for key, job in wanted.items():
                cells = row_cells(job, now)
                if key not in table.rows:
                    table.add_row(*cells, key=key)
                    continue
                current = table.get_row(key)
                for column, old, new in zip(COLUMNS, current, cells, strict=True):
                    if str(old) != str(new):
                        table.update_cell(key, column, new)
        counts: dict[str, int] = {}
        for job in self.jobs.values():
            counts[job.state] = counts.get(job.state, 0) + 1
        status = Text(
            " ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            or "no jobs yet: press n to submit one"
        )
        if self.state_filter or self.text_filter:
            status.append(
                f"   filter: {self.state_filter or 'any state'} {self.text_filter!r}",
                style="magenta",
            )
        if not self.app.source.daemon_running():  # type: ignore[attr-defined]
            status.append("   daemon not running: the next action starts it", style="yellow")
        self.query_one("#queue-status", Static).update(status)

    # ---- actions ---------------------------------------------------------------------

    def selected(self) -> Job | None:
        table = self.query_one("#jobs", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return self.jobs.get(int(key)) if key is not None else None

    @on(DataTable.RowSelected, "#jobs")
    def open_selected(self) -> None:
        self.action_open()

    def action_open(self) -> None:
        job = self.selected()
        if job is not None:
            self.app.push_screen(JobDetailScreen(job.id))

    def action_submit(self) -> None:
        self.app.push_screen(SubmitScreen())

    def action_pipeline(self) -> None:
        self.app.push_screen(PipelineScreen())

    def action_control(self, action: str) -> None:
        job = self.selected()
        if job is None:
            self.notify("no job selected", severity="warning")
            return
        self.run_control(job.id, action)

    def action_priority(self, step: int) -> None:
        job = self.selected()
        if job is not None:
            self.run_priority(job.id, job.priority + step)

    @work(thread=True, exit_on_error=False, group="actions", description="job control")
    def run_control(self, job_id: int, action: str) -> None:
        try:
            result = self.app.source.client().control(job_id, action)  # type: ignore[attr-defined]
            self.post_message(ActionDone(f"job {job_id}: {result}"))
        except Exception as error:
            self.post_message(ActionDone(f"job {job_id}: {error}", error=True))

    @work(thread=True, exit_on_error=False, group="actions", description="priority")
    def run_priority(self, job_id: int, priority: int) -> None:
        try:
            self.app.source.client().set_priority(job_id, priority)  # type: ignore[attr-defined]
            self.post_message(ActionDone(f"job {job_id}: priority {priority}"))
        except Exception as error:
            self.post_message(ActionDone(f"job {job_id}: {error}", error=True))

    def on_action_done(self, message: ActionDone) -> None:
        self.notify(message.text, severity="error" if message.error else "information", timeout=3)
        self.version = -1
        self.poll()

    def action_cycle_state(self) -> None:
        index = STATE_FILTERS.index(self.state_filter)
        self.state_filter = STATE_FILTERS[(index + 1) % len(STATE_FILTERS)]
        self.apply(self.app.source.now())  # type: ignore[attr-defined]

    def action_filter_text(self) -> None:
        find = self.query_one("#find", Input)
        find.display = True
        find.focus()

    @on(Input.Submitted, "#find")
    def apply_text_filter(self, event: Input.Submitted) -> None:
        self.text_filter = event.value.strip()
        event.input.display = False
        self.query_one("#jobs", DataTable).focus()
        self.apply(self.app.source.now())  # type: ignore[attr-defined]

    def key_escape(self) -> None:
        find = self.query_one("#find", Input)
        if find.display:
            find.display = False
            self.query_one("#jobs", DataTable).focus()


class SubmitScreen(ModalScreen[None]):
    """A form for a command job with its resources."""

    BINDINGS = [
        Binding("escape", "dismiss", "Close", id="submit.close", tooltip="Close without submitting")
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="submit-form"):
            yield Label("Submit a command job", classes="title")
            yield Input(placeholder="command, e.g. python train.py --epochs 3", id="command")
            yield Input(placeholder="name (optional)", id="name")
            with Horizontal():
                yield Input(placeholder="gpus", id="gpus")
                yield Input(placeholder="cpus", id="cpus")
                yield Input(placeholder="priority", id="priority")
                yield Input(placeholder="group", id="group")
            yield Static(id="submit-error")
            with Horizontal(classes="buttons"):
                yield Button("Submit", variant="primary", id="do-submit")
                yield Button("Cancel", id="cancel-submit")

    def on_mount(self) -> None:
        self.query_one("#command", Input).focus()

    @on(Button.Pressed, "#cancel-submit")
    def cancel(self) -> None:
        self.dismiss()

    @on(Input.Submitted)
    @on(Button.Pressed, "#do-submit")
    def submit(self) -> None:
        from workbench.queue.requests import build_request
        from workbench.queue.spec import SpecError

        values = {
            key: self.query_one(f"#{key}", Input).value.strip()
            for key in ("command", "name", "gpus", "cpus", "priority", "group")
        }
        try:
            argv = shlex.split(values["command"])
            if not argv:
                raise SpecError("give a command to run")
            table: dict[str, Any] = {"kind": "command", "argv": argv}
            if values["name"]:
                table["name"] = values["name"]
            for key, cast in (("gpus", float), ("cpus", float), ("priority", int)):
                if values[key]:
                    try:
                        table[key] = cast(values[key])
                    except ValueError:
                        raise SpecError(f"{key}: not a number: {values[key]!r}") from None
            if values["group"]:
                table["group"] = values["group"]
            request = build_request(table, Path(os.getcwd()), "submit")
        except (SpecError, ValueError) as error:
            self.query_one("#submit-error", Static).update(Text(str(error), style="bold red"))
            return
        self.send(request)

    @work(thread=True, exit_on_error=False, group="actions", description="submit")
    def send(self, request: Any) -> None:
        try:
            job_id = self.app.source.client().submit(request)  # type: ignore[attr-defined]
        except Exception as error:
            self.app.call_from_thread(self.app.notify, f"submit failed: {error}", severity="error")
            return
        self.app.call_from_thread(self.app.notify, f"job {job_id} queued", timeout=3)
        self.app.call_from_thread(self.dismiss)


class PipelineScreen(ModalScreen[None]):
    """Queue a pipeline file's stages; the whole file is validated first, as with --batch."""

    BINDINGS = [
        Binding("escape", "dismiss", "Close", id="pipeline.close", tooltip="Close without queueing")
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="submit-form"):
            yield Label("Run a pipeline file", classes="title")
            yield Input(placeholder="path, e.g. examples/quickstart.toml", id="pipeline-path")
            yield Static(id="pipeline-error")

    def on_mount(self) -> None:
        self.query_one("#pipeline-path", Input).focus()

    @on(Input.Submitted, "#pipeline-path")
    def queue(self, event: Input.Submitted) -> None:
        self.send(event.value.strip())

    @work(thread=True, exit_on_error=False, group="actions", description="queue a pipeline")
    def send(self, path: str) -> None:
        from workbench.queue.pipeline import load_pipeline
        from workbench.queue.spec import SpecError

        try:
            pipeline = load_pipeline(Path(path).expanduser())
            _, ids = self.app.source.client().submit_pipeline(pipeline)  # type: ignore[attr-defined]
        except SpecError as error:
            self.app.call_from_thread(
                self.query_one("#pipeline-error", Static).update, Text(str(error), style="bold red")
            )
            return
        except Exception as error:
            self.app.call_from_thread(
                self.app.notify, f"pipeline failed: {error}", severity="error"
            )
            return
        self.app.call_from_thread(
            self.app.notify, f"pipeline {pipeline.name}: jobs {ids[0]}-{ids[-1]} queued", timeout=4
        )
        self.app.call_from_thread(self.dismiss)


@dataclass
class DetailRead(Message):
    job: Job | None
    events: list[JobEvent]
    metrics: dict[str, float | None]
    log_chunk: str
    log_reset: bool


class JobDetailScreen(Screen[None]):
    """One job: what it is, what happened to it, what it was granted and used, its log live."""

    BINDINGS = [
        Binding(
            "escape,q", "app.pop_screen", "Back", id="detail.back", tooltip="Back to the queue"
        ),
        Binding("c", "control('cancel')", "Cancel", id="detail.cancel", tooltip="Cancel this job"),
        Binding(
            "x", "control('retry')", "Retry", id="detail.retry", tooltip="Queue this job again"
        ),
    ]

    def __init__(self, job_id: int):
        super().__init__()
        self.job_id = job_id
        self.log_offset = 0
        self.log_inode: int | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="detail"):
            with VerticalScroll(id="detail-info"):
                yield Static(id="summary")
                yield Static(id="history")
            yield Log(id="log", highlight=False, max_lines=5000)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.poll()

    @work(thread=True, exclusive=True, exit_on_error=False, group="detail", description="read job")
    def poll(self) -> None:
        source = self.app.source  # type: ignore[attr-defined]
        job = source.job(self.job_id)
        events = source.events(self.job_id) if job else []
        metrics = source.last_metrics(self.job_id) if job else {}
        chunk, reset = self.read_log(source)
        self.post_message(DetailRead(job, events, metrics, chunk, reset))

    def read_log(self, source: Any) -> tuple[str, bool]:
        """New log text since the last read; a capped (rewritten) log is read again from the top."""
        fixed = getattr(source, "fixed_logs", None)
        if fixed is not None:
            text = fixed.get(self.job_id, "") if self.log_offset == 0 else ""
            self.log_offset = 1
            return text, False
        path: Path = source.log_path(self.job_id)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return "", False
        reset = False
        if self.log_inode is not None and (
            stat.st_ino != self.log_inode or stat.st_size < self.log_offset
        ):
            self.log_offset, reset = 0, True
        self.log_inode = stat.st_ino
        if stat.st_size <= self.log_offset:
            return "", reset
        with open(path, "rb") as handle:
            handle.seek(self.log_offset)
            data = handle.read(1 << 20)
        self.log_offset += len(data)
        return data.decode(errors="replace"), reset

    def on_detail_read(self, message: DetailRead) -> None:
        job = message.job
        if job is None:
            self.query_one("#summary", Static).update(
                Text(f"job {self.job_id} no longer exists", style="bold red")
            )
            return
        self.query_one("#summary", Static).update(self.render_summary(job, message.metrics))
        history = Text()
        history.append("history\n", style="bold")
        for event in message.events:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.t))
            history.append(f"{stamp} ")
            history.append(state_text(event.state))
            history.append(f"  {event.reason or ''}\n", style="dim")
        self.query_one("#history", Static).update(history)
        log = self.query_one("#log", Log)
        if message.log_reset:
            log.clear()
        if message.log_chunk:
            log.write(message.log_chunk)
        if (
            self.app.is_running
            and not getattr(self.app, "frozen", False)
            and job.state not in ("succeeded", "failed", "cancelled")
        ) or message.log_chunk:
            self.set_timer(0.5, self.poll)

    def render_summary(self, job: Job, metrics: dict[str, float | None]) -> Text:
        text = Text()
        text.append(f"job {job.id}  ", style="bold")
        text.append(job.name, style="bold cyan")
        text.append("  ")
        text.append(state_text(job.state))
        text.append(f"  ({job.kind})\n")
        for label, value in job_details(job, metrics):
            text.append(f"{label:<10}", style="bold")
            text.append(f"{value}\n")
        return text

    def action_control(self, action: str) -> None:
        def run() -> None:
            try:
                result = self.app.source.client().control(self.job_id, action)  # type: ignore[attr-defined]
                self.app.call_from_thread(self.notify, f"job {self.job_id}: {result}")
            except Exception as error:
                self.app.call_from_thread(
                    self.notify, f"job {self.job_id}: {error}", severity="error"
                )

        self.run_worker(run, thread=True, exit_on_error=False, group="actions")
