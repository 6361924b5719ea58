"""The Queue: a virtual job table (only the rows around the screen are read, and only when the
store changed), job control with feedback and a confirmation before a running job is cancelled,
a submit form for every kind, the pipeline dialog, and the job detail screen."""

from __future__ import annotations

import dataclasses
import os
import shlex
import time
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import (
    Button,
    Footer,
    Input,
    Label,
    LoadingIndicator,
    RichLog,
    Select,
    Static,
)

from screens.jobtable import JobTable, Window
from screens.source import JobPage, LogPiece
from screens.widgets import (
    LiveGuard,
    WorkbenchScreen,
    fit_value,
    is_dark,
    state_style,
    state_text,
    unit,
)
from workbench.daemon.logs import rotated, tail_bytes
from workbench.db.job_pages import JobFilter
from workbench.db.store import Job, JobEvent
from workbench.present import (
    granted_text,
    job_progress,
    job_resources,
    recorded_usage,
    used_parts,
)
from workbench.units import format_duration, format_size

STATE_FILTERS = (
    None,
    "queued",
    "running",
    "paused",
    "blocked",
    "succeeded",
    "failed",
    "cancelled",
)
POLL_S = 1.0
PRIORITY = Binding.Group("Prio", compact=True)
ENDED = ("succeeded", "failed", "cancelled")


@dataclass
class PageRead(Message):
    """A worker's read of the job window (None: the store did not change)."""

    page: JobPage | None
    now: float
    version: int
    where: JobFilter
    select_id: int | None = None
    daemon_running: bool = True


@dataclass
class ActionDone(Message):
    text: str
    error: bool = False


class ConfirmScreen(LiveGuard, ModalScreen[bool]):
    """A yes/no question; `y` or Enter answers yes, `n` or Esc no."""

    BINDINGS = [
        Binding("y,enter", "answer(True)", "Yes", id="confirm.yes", tooltip="Do it"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no", tooltip="Leave it"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Label(self.question)
            yield Label("y / Enter: yes    n / Esc: no", classes="hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class QueueScreen(WorkbenchScreen):
    """The job table and job control."""

    TITLE_NAME = "Queue"
    AUTO_FOCUS = "#jobs"

    BINDINGS = [
        Binding(
            "o", "open", "Open", id="queue.open", tooltip="Open the job (also Enter)", show=False
        ),
        Binding("n", "submit", "New", id="queue.submit", tooltip="Submit a job of any kind"),
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
            tooltip="Cancel the job (asks first if it is running)",
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
            key_display="+",
            group=PRIORITY,
        ),
        Binding(
            "minus",
            "priority(-1)",
            "Prio-",
            id="queue.priority_down",
            tooltip="Lower the job's priority",
            key_display="-",
            group=PRIORITY,
        ),
        Binding(
            "f",
            "cycle_state",
            "State",
            id="queue.state_filter",
            tooltip="Show only jobs in one state (again: the next state)",
        ),
        Binding("slash", "filter_text", "Find", id="queue.find", tooltip="Filter jobs by text"),
        Binding(
            "w",
            "toggle_mine",
            "Mine/all",
            id="queue.mine",
            tooltip="Show only my jobs, or everyone's (again: the other)",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.where = JobFilter()
        self.version = -1
        self.counts: dict[str, int] = {}
        self.status_shown: Text | None = None
        self.first_read = True
        self.anchor_id: int | None = None
        self.daemon_running = True

    def compose(self) -> ComposeResult:
        yield self.title_bar()
        yield Static(id="queue-status")
        find = Input(
            placeholder="text in id, name, kind or reason; Enter applies, empty clears", id="find"
        )
        find.border_title = "find"
        yield find
        table = JobTable(id="jobs")
        table.border_title = "jobs"
        yield table
        yield self.bottom_bar()

    def on_mount(self) -> None:
        self.query_one("#find", Input).display = False
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self.show_status())
        self.poll(force=True)

    def on_screen_resume(self) -> None:
        self.poll(force=True)

    @property
    def table(self) -> JobTable:
        return self.query_one("#jobs", JobTable)

    # ---- reading ---------------------------------------------------------------------

    def poll(self, force: bool = False, select_id: int | None = None) -> None:
        table = self.table
        offset = -1 if self.first_read else table.wanted_offset()
        self._read(force, offset, table.wanted_rows(), self.where, select_id)

    @work(thread=True, exclusive=True, exit_on_error=False, group="jobs", description="read jobs")
    def _read(
        self, force: bool, offset: int, rows: int, where: JobFilter, select_id: int | None
    ) -> None:
        """Read the window only when the store changed (its data version moved) or the view moved;
        otherwise the message carries only the time, for the visible ages."""
        source = self.app.source  # type: ignore[attr-defined]
        version = source.data_version()
        now = source.now()
        daemon = source.daemon_running()
        if version == self.version and not force:
            self.post_message(PageRead(None, now, version, where, daemon_running=daemon))
            return
        if select_id is not None:
            position = source.job_position(where, select_id)
            offset = max(0, position - rows // 3)
        if offset < 0:
            total = source.job_page(where, 0, 0).total
            offset = max(0, total - rows)
        page = source.job_page(where, offset, rows)
        self.post_message(
            PageRead(page, now, version, where, select_id, daemon_running=source.daemon_running())
        )

    def on_page_read(self, message: PageRead) -> None:
        table = self.table
        daemon_changed = message.daemon_running != self.daemon_running
        self.daemon_running = message.daemon_running
        if message.page is None:
            table.set_now(message.now)
            if daemon_changed:
                self.show_status()
        elif message.where == self.where:
            page = message.page
            self.version = message.version
            self.counts = page.counts
            window = Window(page.total, page.offset, tuple(page.jobs), page.idle)
            table.set_window(window, message.now)
            if self.first_read:
                self.first_read = False
                table.move_to(page.total - 1, follow=True)
            elif message.select_id is not None:
                index = next(
                    (page.offset + i for i, j in enumerate(page.jobs) if j.id >= message.select_id),
                    page.total - 1,
                )
                table.move_to(index)
            self.show_status()
        if self.app.is_running and not getattr(self.app, "frozen", False):
            self.set_timer(POLL_S, self._next_poll)

    def _next_poll(self) -> None:
        if self.is_current:
            self.poll()

    @on(JobTable.WindowWanted)
    def load_window(self, message: JobTable.WindowWanted) -> None:
        self._read(True, message.offset, message.rows, self.where, None)

    def show_status(self) -> None:
        status = Text(no_wrap=True, overflow="ellipsis")
        source = self.app.source  # type: ignore[attr-defined]
        if source.queue_label:
            status.append(f"{source.queue_label}  ", style="bold cyan")
        for state in (*STATE_FILTERS[1:],):
            if self.counts.get(state):
                status.append(f"{self.counts[state]:,} ", style="bold")
                status.append(f"{state}  ", style=state_style(state, is_dark(self)))
        if not self.counts:
            status.append("no jobs yet: press n to submit one", style="dim")
        table = self.table
        total = table.window.total
        if self.where.state or self.where.text or self.where.owner is not None:
            shown = f"{self.where.state or 'any state'}"
            if self.where.text:
                shown += f" {self.where.text!r}"
            if self.where.owner is not None:
                shown += " mine"
            status.append(f" filter {shown}: {total} ", style="magenta")
        if not self.daemon_running:
            status.append(f" {source.down_text()}", style="yellow")
        if status != self.status_shown:  # an update lays the screen out again: only on change
            self.status_shown = status
            self.query_one("#queue-status", Static).update(status)

    # ---- actions ---------------------------------------------------------------------

    def selected(self) -> Job | None:
        return self.table.selected()

    @on(JobTable.Selected)
    def open_selected(self, message: JobTable.Selected) -> None:
        self.app.push_screen(JobDetailScreen(message.job.id))

    def action_open(self) -> None:
        job = self.selected()
        if job is None:
            self.notify("no job selected", severity="warning")
            return
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
        if action == "cancel" and job.state in ("running", "starting"):

            def answered(yes: bool | None) -> None:
                if yes:
                    self.send_control(job.id, action)
                else:
                    self.notify(f"job {job.id}: left running", timeout=2)

            self.app.push_screen(
                ConfirmScreen(f"Cancel running job {job.id} ({job.name})?"), answered
            )
            return
        self.send_control(job.id, action)

    def send_control(self, job_id: int, action: str) -> None:
        self.notify(f"job {job_id}: {action} requested", timeout=2)
        self.run_control(job_id, action)

    def action_priority(self, step: int) -> None:
        job = self.selected()
        if job is None:
            self.notify("no job selected", severity="warning")
            return
        self.run_priority(job.id, job.priority + step)

    @work(thread=True, exit_on_error=False, group="actions", description="job control")
    def run_control(self, job_id: int, action: str) -> None:
        try:
            result = self.app.source.act(lambda client: client.control(job_id, action))  # type: ignore[attr-defined]
            self.post_message(ActionDone(f"job {job_id}: {result}"))
        except Exception as error:
            self.post_message(ActionDone(f"job {job_id}: {error}", error=True))

    @work(thread=True, exit_on_error=False, group="actions", description="priority")
    def run_priority(self, job_id: int, priority: int) -> None:
        try:
            self.app.source.act(lambda client: client.set_priority(job_id, priority))  # type: ignore[attr-defined]
            self.post_message(ActionDone(f"job {job_id}: priority {priority}"))
        except Exception as error:
            self.post_message(ActionDone(f"job {job_id}: {error}", error=True))

    def on_action_done(self, message: ActionDone) -> None:
        self.notify(message.text, severity="error" if message.error else "information", timeout=3)
        self.poll(force=True)

    def set_filter(self, where: JobFilter) -> None:
        """Show the jobs matching `where`, keeping the cursor on the same job where it still shows."""
        job = self.selected()
        if job is not None:
            self.anchor_id = job.id  # kept through a filter that shows no rows
        self.where = where
        self.poll(force=True, select_id=self.anchor_id)

    def action_cycle_state(self) -> None:
        index = STATE_FILTERS.index(self.where.state)
        state = STATE_FILTERS[(index + 1) % len(STATE_FILTERS)]
        self.set_filter(dataclasses.replace(self.where, state=state))
        self.notify(f"state filter: {state or 'any state'}", timeout=1.5)

    def action_toggle_mine(self) -> None:
        """Only my jobs (this user's uid; a per-user home's jobs are all mine), or everyone's."""
        owner = None if self.where.owner is not None else os.getuid()
        self.set_filter(dataclasses.replace(self.where, owner=owner))
        self.notify(
            "showing my jobs" if owner is not None else "showing everyone's jobs", timeout=1.5
        )

    def action_filter_text(self) -> None:
        find = self.query_one("#find", Input)
        find.value = self.where.text
        find.display = True
        find.focus()

    @on(Input.Submitted, "#find")
    def apply_text_filter(self, event: Input.Submitted) -> None:
        event.input.display = False
        self.table.focus()
        self.set_filter(dataclasses.replace(self.where, text=event.value.strip()))

    def key_escape(self) -> None:
        find = self.query_one("#find", Input)
        if find.display:
            find.display = False
            self.table.focus()


# ---- submit form --------------------------------------------------------------------------


def spec_fields(kind: str) -> list[tuple[str, str, Any]]:
    """(name, type as written, default or MISSING) of a kind's spec fields."""
    from dataclasses import MISSING

    from workbench.queue.kinds import load_kind

    out = []
    for item in fields(load_kind(kind).Spec):
        default: Any = item.default
        if item.default_factory is not MISSING:
            default = item.default_factory()
        out.append((item.name, str(item.type), default))
    return out


def literal_options(type_name: str) -> list[str]:
    """The values a `Literal['a', 'b']` type allows (empty for any other type)."""
    import re

    match = re.search(r"Literal\[(.*?)\]", type_name)
    return re.findall(r"'([^']*)'", match.group(1)) if match else []


def field_hint(name: str, type_name: str, default: Any, required: bool) -> str:
    """A field's placeholder in the syntax it accepts: `KEY=VALUE, ...`, `replace | append`,
    `WORD ...`, `N N ...`, `true | false`, a number, then `(required)` or the default."""
    options = literal_options(type_name)
    if options:
        hint = " | ".join(options)
    elif "dict" in type_name:
        hint = "KEY=VALUE, ..."
    elif type_name.startswith("list") and "int" in type_name:
        hint = "N N ..., e.g. 128 128"
    elif type_name.startswith("list"):
        hint = "WORD ... (as a shell line)"
    elif type_name.startswith("bool"):
        hint = "true | false"
    elif type_name.startswith("int"):
        hint = "a whole number"
    elif type_name.startswith("float"):
        hint = "a number"
    elif type_name.startswith("str | float"):  # a duration (kill_grace, signal_before)
        hint = "DURATION, e.g. 30s"
    else:
        hint = "text"
    if required:
        return f"{hint} (required)"
    if default not in (None, [], {}, ""):
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        if isinstance(default, list):
            shown = " ".join(map(str, default))
        return f"{hint} (default {shown})"
    return hint


def parse_field(name: str, type_name: str, text: str) -> Any:
    """A form field's text as the value a spec file would hold: lists split like a shell line
    (or written as TOML `[...]`), tables as `KEY=VALUE, ...` (or TOML `{...}`), numbers and
    booleans as TOML, strings as typed. ValueError names what was expected."""
    if type_name.startswith("list") or type_name.startswith("list["):
        if text.startswith("["):
            return tomllib.loads(f"v = {text}")["v"]
        words = shlex.split(text)
        if "int" in type_name:
            return [int(w) for w in words]
        return words
    if "dict" in type_name and ("=" in text or not type_name.startswith("str")):
        if text.startswith("{"):
            return tomllib.loads(f"v = {text}")["v"]
        from screens.widgets import top_level_parts

        table: dict[str, Any] = {}
        for part in top_level_parts(text, ","):
            key, equals, value = part.rstrip(",").strip().partition("=")
            if not equals or not key.strip():
                raise ValueError(f"expected KEY=VALUE, ..., got {part.strip()!r}")
            value = value.strip()
            if "dict[str, str]" not in type_name:
                try:
                    table[key.strip()] = tomllib.loads(f"v = {value}")["v"]
                    continue
                except tomllib.TOMLDecodeError:
                    pass
            table[key.strip()] = value.strip("\"'") if value[:1] in "\"'" else value
        return table
    options = literal_options(type_name)
    if options and text not in options:
        raise ValueError(f"expected {' | '.join(options)}, got {text!r}")
    if type_name.startswith("str") or options or type_name == "Format":
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


COMMON_FIELDS = (
    ("name", "name", "text (optional)"),
    ("after", "after", "job ids, e.g. 12 14"),
    ("priority", "priority", "a whole number, e.g. 5"),
    ("group", "group", "text (default default)"),
    ("gpus", "gpus", "N, e.g. 1 or 0.5"),
    ("gpu_mem", "gpu mem", "SIZE, e.g. 8GiB"),
    ("cpus", "cpus", "N, e.g. 2"),
    ("mem", "mem", "SIZE, e.g. 4GiB"),
    ("time_limit", "time limit", "DURATION, e.g. 2h"),
    ("retries", "retries", "a whole number"),
)


def field_row(field_id: str, label: str, hint: str) -> Vertical:
    """One labelled field: `label  [input]`, and under it the field's error (hidden)."""
    return Vertical(
        Horizontal(
            Label(label, classes="label"),
            Input(placeholder=hint, id=field_id, compact=True),
            classes="field",
        ),
        Static(id=f"error-{field_id}", classes="field-error"),
        classes="field-row",
    )


class SubmitScreen(LiveGuard, ModalScreen[None]):
    """A form for one job of any kind: the kind's own fields from its spec, then the queue and
    resource options; validated exactly as `workbench submit --spec` does."""

    BINDINGS = [
        Binding(
            "escape", "dismiss", "Close", id="submit.close", tooltip="Close without submitting"
        ),
        Binding("ctrl+s", "submit", "Submit", id="submit.send", tooltip="Validate and queue"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.kind = "command"
        self.fields: list[tuple[str, str, Any]] = []
        self.building = True  # the kind's fields are being (re)mounted: nothing to read yet

    def compose(self) -> ComposeResult:
        from workbench.queue.kinds import kind_names

        with VerticalScroll(id="submit-form"):
            yield Label(
                "Submit a job  (Tab: next field, Enter or ctrl+s: submit, Esc: close)",
                classes="title",
            )
            with Horizontal(classes="field"):
                yield Label("kind", classes="label")
                yield Select(
                    [(k, k) for k in kind_names()],
                    value="command",
                    allow_blank=False,
                    id="kind",
                    compact=True,
                )
            yield Vertical(id="spec-fields")
            yield Label("queue and resources", classes="section")
            with Grid(id="options"):
                for key, label, hint in COMMON_FIELDS:
                    yield field_row(f"opt-{key}", label, hint)
            yield Static(id="submit-error")
            with Horizontal(classes="buttons"):
                yield Button("Submit", variant="primary", id="do-submit", compact=True)
                yield Button("Cancel", id="cancel-submit", compact=True)
        yield Footer(compact=True, show_command_palette=False)

    def on_resize(self) -> None:
        self.set_class(self.size.width >= 110, "wide")

    async def on_mount(self) -> None:
        await self.show_kind("command")

    async def show_kind(self, kind: str) -> None:
        from dataclasses import MISSING

        self.building = True
        self.kind = kind
        self.fields = spec_fields(kind)
        box = self.query_one("#spec-fields", Vertical)
        await box.remove_children()
        rows = []
        for name, type_name, default in self.fields:
            hint = field_hint(name, type_name, default, default is MISSING)
            label = name.replace("_", " ")
            if kind == "command" and name == "argv":
                hint, label = "WORD ..., e.g. python train.py --epochs 3 (required)", "command"
            rows.append(field_row(f"spec-{name}", label, hint))
        await box.mount_all(rows)
        self.building = False
        # The form may have closed while its fields mounted (Esc in the same burst): focus the
        # first field only if it is there.
        for first in self.query(f"#spec-{self.fields[0][0]}").results(Input) if rows else ():
            first.focus()

    @on(Select.Changed, "#kind")
    async def kind_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and event.value != self.kind:
            await self.show_kind(event.value)

    @on(Button.Pressed, "#cancel-submit")
    def cancel(self) -> None:
        self.dismiss()

    def table(self) -> tuple[dict[str, Any], tuple[tuple[int, str], ...]]:
        """The form as a spec table plus the dependencies; SpecError names a bad field."""
        from workbench.queue.spec import SpecError

        table: dict[str, Any] = {"kind": self.kind}
        for name, type_name, _ in self.fields:
            text = self.query_one(f"#spec-{name}", Input).value.strip()
            if not text:
                continue
            try:
                table[name] = parse_field(name, type_name, text)
            except (ValueError, tomllib.TOMLDecodeError) as error:
                raise SpecError(f"form: key {name!r}: cannot read {text!r}: {error}") from None
        after: list[tuple[int, str]] = []
        for key, _, _ in COMMON_FIELDS:
            text = self.query_one(f"#opt-{key}", Input).value.strip()
            if not text:
                continue
            if key == "after":
                try:
                    after = [(int(word), "ok") for word in text.replace(",", " ").split()]
                except ValueError:
                    raise SpecError(f"form: key 'after': expected job ids, got {text!r}") from None
            elif key in ("gpus", "cpus"):
                try:
                    table[key] = float(text)
                except ValueError:
                    raise SpecError(f"form: key {key!r}: not a number: {text!r}") from None
            elif key in ("priority", "retries"):
                try:
                    table[key] = int(text)
                except ValueError:
                    raise SpecError(f"form: key {key!r}: not a whole number: {text!r}") from None
            else:
                table[key] = text
        return table, tuple(after)

    @on(Input.Submitted)
    @on(Button.Pressed, "#do-submit")
    def action_submit(self) -> None:
        from workbench.queue.requests import build_request
        from workbench.queue.spec import SpecError

        if self.building:  # Enter or ctrl+s while a kind's fields are swapped in: not yet
            self.query_one("#submit-error", Static).update(
                Text("the form is changing kind: submit again", style="yellow")
            )
            return
        self.clear_errors()
        try:
            table, after = self.table()
            request = build_request(table, Path(os.getcwd()), "form", after=after)
        except (SpecError, ValueError) as error:
            shown = self.show_error(str(error))
            summary = f"{shown}: see the field marked in red" if shown else str(error)
            self.query_one("#submit-error", Static).update(Text(summary, style="bold red"))
            return
        self.query_one("#submit-error", Static).update(Text("submitting...", style="yellow"))
        self.send(request)

    def clear_errors(self) -> None:
        for error in self.query(".field-error"):
            error.display = False
        for field in self.query(Input):
            field.remove_class("-invalid")

    def show_error(self, message: str) -> str | None:
        """The error under the field it names (the first field whose key it quotes), that
        field marked and focused; the message without the `form: key 'x':` it repeats."""
        import re

        keys = [f"spec-{name}" for name, _, _ in self.fields] + [
            f"opt-{key}" for key, _, _ in COMMON_FIELDS
        ]
        for quoted in re.findall(r"'(\w+)'", message):
            field_id = next((k for k in keys if k.split("-", 1)[1] == quoted), None)
            if field_id is None:
                continue
            short = re.sub(rf"^.*?\b(key )?'{quoted}'[:,]?\s*", "", message) or message
            error = self.query_one(f"#error-{field_id}", Static)
            error.update(Text(short, style="bold red"))
            error.display = True
            field = self.query_one(f"#{field_id}", Input)
            field.add_class("-invalid")
            field.focus()
            return quoted
        return None

    @work(thread=True, exit_on_error=False, group="actions", description="submit")
    def send(self, request: Any) -> None:
        from workbench.queue.submission import capture_repro

        try:
            request = capture_repro(request)  # git state, environment (and a snapshot): off the UI
            job_id = self.app.source.act(lambda client: client.submit(request))  # type: ignore[attr-defined]
        except Exception as error:
            self.app.call_from_thread(self.app.notify, f"submit failed: {error}", severity="error")
            return
        self.app.call_from_thread(self.app.notify, f"job {job_id} queued", timeout=3)
        self.app.call_from_thread(self.dismiss)


class PipelineScreen(LiveGuard, ModalScreen[None]):
    """Queue a pipeline file's stages; the whole file is validated first, as with --batch."""

    BINDINGS = [
        Binding("escape", "dismiss", "Close", id="pipeline.close", tooltip="Close without queueing")
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="submit-form"):
            yield Label("Run a pipeline file (Enter: queue, Esc: close)", classes="title")
            yield Input(placeholder="path, e.g. examples/quickstart.toml", id="pipeline-path")
            yield Static(id="pipeline-error")
            yield LoadingIndicator(id="pipeline-busy")

    def on_mount(self) -> None:
        self.query_one("#pipeline-busy").display = False
        self.query_one("#pipeline-path", Input).focus()

    @on(Input.Submitted, "#pipeline-path")
    def queue(self, event: Input.Submitted) -> None:
        self.query_one("#pipeline-busy").display = True
        self.query_one("#pipeline-error", Static).update(
            Text("validating every stage, then queueing...", style="yellow")
        )
        self.send(event.value.strip())

    def done(self, error: str | None) -> None:
        self.query_one("#pipeline-busy").display = False
        self.query_one("#pipeline-error", Static).update(
            Text(error, style="bold red") if error else Text("")
        )

    @work(thread=True, exit_on_error=False, group="actions", description="queue a pipeline")
    def send(self, path: str) -> None:
        from workbench.queue.pipeline import load_pipeline
        from workbench.queue.spec import SpecError

        try:
            pipeline = load_pipeline(Path(path).expanduser())
            _, ids = self.app.source.act(lambda client: client.submit_pipeline(pipeline))  # type: ignore[attr-defined]
        except SpecError as error:
            self.app.call_from_thread(self.done, str(error))
            return
        except Exception as error:
            self.app.call_from_thread(self.done, f"pipeline failed: {error}")
            return
        self.app.call_from_thread(
            self.app.notify, f"pipeline {pipeline.name}: jobs {ids[0]}-{ids[-1]} queued", timeout=4
        )
        self.app.call_from_thread(self.dismiss)


# ---- job detail ---------------------------------------------------------------------------

LOG_TAIL_BYTES = 128 * 1024


@dataclass
class DetailRead(Message):
    job: Job | None
    events: list[JobEvent]
    metrics: dict[str, float | None]
    log_chunk: str
    log_reset: bool
    now: float
    usage: dict[str, float] | None = None
    recorded: dict[str, float | int | None] | None = None


def job_facts(
    job: Job,
    metrics: dict[str, float | None],
    now: float,
    usage: dict[str, float] | None = None,
    peak_rss: float | None = None,
    recorded: dict[str, float | int | None] | None = None,
) -> list[tuple[str, str]]:
    """The job detail's (label, value) lines: what it is, asked, granted, used, how long.
    `usage` is the live process tree's CPU seconds and RSS; `peak_rss` the most seen so far;
    `recorded` an ended job's CPU time and peak memory from its exit record (`recorded_usage`)."""
    facts: list[tuple[str, str]] = []
    if job.reason:
        facts.append(("reason", job.reason))
    if job.argv:
        facts.append(("command", shlex.join(job.argv)))
    elif job.spec:
        facts.append(
            ("spec", ", ".join(f"{k}={v}" for k, v in job.spec.items() if v not in (None, [], {})))
        )
    facts.append(("cwd", job.cwd))
    facts.append(("asked", job_resources(job)))
    facts.append(("granted", granted_text(job)))
    used = used_parts(job, recorded, usage, peak_rss)
    facts.append(("used", ", ".join(unit(u) for u in used) if used else "not measured yet"))
    if job.started_at is not None:
        end = job.ended_at if job.ended_at is not None else now
        facts.append(
            (
                "duration",
                format_duration(end - job.started_at) + ("" if job.ended_at else " so far"),
            )
        )
        facts.append(("waited", format_duration(job.started_at - job.created_at)))
    elif job.state in ENDED:
        facts.append(("ran", "never started"))
    else:
        facts.append(("waiting", format_duration(now - job.created_at)))
    facts.append(
        (
            "queue",
            ", ".join(
                unit(part)
                for part in (
                    f"group {job.group}",
                    f"priority {job.priority}",
                    f"attempt {job.attempt} of {job.retries + 1}",
                )
            ),
        )
    )
    if job.deps:
        facts.append(("after", ", ".join(f"{d} ({c})" for d, c in job.deps)))
    if job.time_limit:
        facts.append(("limit", format_duration(job.time_limit)))
    if job.exit_code is not None:
        facts.append(("exit code", str(job.exit_code)))
    if job.progress is not None or job.progress_msg:
        facts.append(("progress", job_progress(job)))
    if metrics:
        shown = (
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in sorted(metrics.items())
        )
        facts.append(("metrics", ", ".join(shown)))
    return facts


class JobDetailScreen(WorkbenchScreen):
    """One job: what it is, what happened to it, what it was granted and used, its log live."""

    TITLE_NAME = "Queue"
    BINDINGS = [
        Binding("escape,q", "back", "Back", id="detail.back", tooltip="Back to the queue"),
        Binding("c", "control('cancel')", "Cancel", id="detail.cancel", tooltip="Cancel this job"),
        Binding(
            "x", "control('retry')", "Retry", id="detail.retry", tooltip="Queue this job again"
        ),
        Binding("slash", "find", "Find", id="detail.find", tooltip="Search the log"),
        Binding("n", "find_next(1)", "Next", id="detail.next", tooltip="Next match in the log"),
        Binding(
            "N",
            "find_next(-1)",
            "Prev",
            id="detail.previous",
            tooltip="Previous match in the log",
            show=False,
        ),
    ]
    AUTO_FOCUS = "#log"

    def __init__(self, job_id: int):
        super().__init__()
        self.job_id = job_id
        self.log_offset = 0
        self.log_inode: int | None = None
        self.log_refused = False  # the daemon refused this job's log (another user's)
        self.job: Job | None = None
        self.peak_rss: float | None = None
        self.log_rest = ""  # the log's unfinished last line (a progress bar redrawing it)
        self.following = True  # new lines scroll the log to its end
        self.last_read: DetailRead | None = None
        self.search = ""

    def compose(self) -> ComposeResult:
        yield self.title_bar()
        with Horizontal(id="detail"):
            with VerticalScroll(id="detail-info") as info:
                info.border_title = "job"
                yield Static(id="summary")
                yield Static(id="history")
            with Vertical(id="log-pane"):
                log = RichLog(id="log", highlight=False, wrap=True, max_lines=20000)
                log.border_title = "log"
                yield log
                yield Static(id="log-current")
                yield Static(id="log-state")
                find = Input(placeholder="text to find in the log; Enter: find", id="log-find")
                find.display = False
                yield find
        yield self.bottom_bar()

    def on_mount(self) -> None:
        self.set_class(self.size.width < 120, "narrow")
        self.app.theme_changed_signal.subscribe(self, self.theme_changed)
        self.poll()

    def on_resize(self) -> None:
        self.set_class(self.size.width < 120, "narrow")
        if self.last_read is not None:
            self.call_after_refresh(self.show_summary)

    def show_summary(self) -> None:
        """The facts, fitted to the pane's width (again after a resize)."""
        message = self.last_read
        if message is not None and message.job is not None:
            self.query_one("#summary", Static).update(self.render_summary(message.job, message))

    def show_history(self) -> None:
        """The job's state changes, each in its state's colour for the theme shown."""
        message = self.last_read
        if message is None:
            return
        history = Text()
        history.append("history\n", style="bold")
        for event in message.events:
            stamp = time.strftime("%m-%d %H:%M:%S", time.localtime(event.t))
            history.append(f"{stamp} ")
            history.append(state_text(event.state, is_dark(self)))
            history.append(f"  {event.reason or ''}\n", style="dim")
        self.query_one("#history", Static).update(history)

    def theme_changed(self, _theme: object) -> None:
        self.show_summary()
        self.show_history()

    @work(thread=True, exclusive=True, exit_on_error=False, group="detail", description="read job")
    def poll(self) -> None:
        source = self.app.source  # type: ignore[attr-defined]
        job = source.job(self.job_id)
        events = source.events(self.job_id) if job else []
        metrics = source.last_metrics(self.job_id) if job else {}
        chunk, reset = self.read_log(source)
        usage = (
            source.process_usage(job.pid)
            if job is not None and job.pid and job.state in ("running", "paused")
            else None
        )
        run_dir = source.run_dir(job) if job is not None else None
        recorded = recorded_usage(job, run_dir) if job is not None else None
        self.post_message(
            DetailRead(job, events, metrics, chunk, reset, source.now(), usage, recorded)
        )

    def read_log(self, source: Any) -> tuple[str, bool]:
        """New log text since the last read. The first read (and the first after the log was
        rotated or rewritten) takes the tail of `log.1` + `log` at once: the last LOG_TAIL_BYTES,
        from a line start, with a note of what was skipped; later reads continue in `log`."""
        fixed = getattr(source, "fixed_logs", None)
        if fixed is not None:
            text = fixed.get(self.job_id, "") if self.log_offset == 0 else ""
            self.log_offset = 1
            return text, False
        if self.log_refused:
            return "", False
        piece = source.log_piece(self.job_id, None if self.log_inode is None else self.log_offset)
        if piece is not None:
            return self.take_piece(piece)
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
        if self.log_inode is None or reset:
            return self.read_tail(path, stat), reset
        if stat.st_size <= self.log_offset:
            return "", reset
        with open(path, "rb") as handle:
            handle.seek(self.log_offset)
            data = handle.read(1 << 20)
        self.log_offset += len(data)
        return data.decode(errors="replace"), reset

    def take_piece(self, piece: LogPiece) -> tuple[str, bool]:
        """New log text from a piece the daemon sent (team mode); its refusal, once, as a
        line in the log (another user's log is theirs to read)."""
        if piece.refused is not None:
            self.log_refused = True  # asked once: the refusal stands
            return f"[{piece.refused}]\n", False
        if piece.offset is None:  # no answer: ask again from where the last piece ended
            return "", False
        self.log_inode, self.log_offset = 0, piece.offset
        return piece.data, piece.reset

    def read_tail(self, path: Path, stat: os.stat_result) -> str:
        """The tail of a rotated log across `log.1` and `log` (`tail_bytes`), taken when `log`
        held still around the read, so that the next read continues where this one ended."""
        for _ in range(5):
            data = tail_bytes(path, LOG_TAIL_BYTES)
            try:
                after = path.stat()
            except FileNotFoundError:
                return ""
            if (after.st_ino, after.st_size) == (stat.st_ino, stat.st_size):
                break
            stat = after
        self.log_inode, self.log_offset = stat.st_ino, stat.st_size
        try:
            total = stat.st_size + rotated(path).stat().st_size
        except FileNotFoundError:
            total = stat.st_size
        skipped = ""
        if total > len(data):
            data = data[data.find(b"\n") + 1 :]  # start at a line start
            skipped = (
                f"[{format_size(total - len(data))} earlier skipped;"
                f" the whole log: workbench logs {self.job_id}]\n"
            )
        return skipped + data.decode(errors="replace")

    def on_detail_read(self, message: DetailRead) -> None:
        job = message.job
        self.job = job
        if message.usage is not None:
            self.peak_rss = max(self.peak_rss or 0.0, message.usage["rss_bytes"])
        if job is None:
            self.query_one("#summary", Static).update(
                Text(f"job {self.job_id} no longer exists", style="bold red")
            )
            return
        self.last_read = message
        self.show_summary()
        self.show_history()
        self.show_log(message.log_chunk, message.log_reset, job.state in ENDED)
        if (
            self.app.is_running
            and not getattr(self.app, "frozen", False)
            and (job.state not in ENDED or message.log_chunk)
        ):
            self.set_timer(0.5, self._next_poll)

    def _next_poll(self) -> None:
        if self.is_current:
            self.poll()

    # ---- the log, followed like `less +F` ------------------------------------------------

    def show_log(self, chunk: str, reset: bool, ended: bool) -> None:
        """Append `chunk` as a terminal shows it (`\\r` redraws overwrite their line: the
        CLI's `terminal_lines`); the unfinished last line shows under the log until it ends.
        New lines scroll the view only while it is at the end: scrolling up (Up, Home, PgUp,
        the mouse) stops following, End resumes it."""
        from workbench.daemon.logs import overwrite_redraws, terminal_lines

        log = self.query_one("#log", RichLog)
        if reset:
            log.clear()
            self.log_rest = ""
        following = self.following
        if chunk:
            lines, self.log_rest = terminal_lines(self.log_rest + chunk)
            for line in lines:
                log.write(Text(line), scroll_end=following)
        if ended and self.log_rest:
            log.write(Text(overwrite_redraws(self.log_rest)), scroll_end=following)
            self.log_rest = ""
        current = self.query_one("#log-current", Static)
        current.display = bool(self.log_rest)
        current.update(Text(overwrite_redraws(self.log_rest), no_wrap=True, overflow="ellipsis"))
        self.show_follow_state()

    def show_follow_state(self) -> None:
        state = "following" if self.following else "paused (End: follow)"
        found = f"  found {self.search!r}: n / N" if self.search else "  /: find"
        self.query_one("#log-state", Static).update(Text(state + found, style="dim"))

    def set_following(self, following: bool) -> None:
        self.following = following
        if following:
            self.query_one("#log", RichLog).scroll_end(animate=False)
        self.show_follow_state()

    def _follow_if_at_end(self) -> None:
        log = self.query_one("#log", RichLog)
        self.set_following(log.scroll_y >= log.max_scroll_y)

    def on_key(self, event: Any) -> None:
        """Up, Home and PgUp in the log stop following; End resumes it, and so does scrolling
        down to the last line."""
        if not isinstance(self.focused, RichLog):
            return
        if event.key in ("up", "home", "pageup"):
            self.set_following(False)
        elif event.key == "end":
            self.set_following(True)
        elif event.key in ("down", "pagedown"):
            self.call_after_refresh(self._follow_if_at_end)

    def on_mouse_scroll_up(self) -> None:
        self.set_following(False)

    def on_mouse_scroll_down(self) -> None:
        self.call_after_refresh(self._follow_if_at_end)

    def action_find(self) -> None:
        find = self.query_one("#log-find", Input)
        find.value = self.search
        find.display = True
        find.focus()

    @on(Input.Submitted, "#log-find")
    def find_submitted(self, event: Input.Submitted) -> None:
        event.input.display = False
        log = self.query_one("#log", RichLog)
        log.focus()
        self.search = event.value.strip()
        if self.search:
            self.find_next(1, from_line=int(log.scroll_y) - 1)
        self.show_follow_state()

    def action_find_next(self, step: int) -> None:
        if not self.search:
            self.action_find()
            return
        self.find_next(step, from_line=int(self.query_one("#log", RichLog).scroll_y))

    def find_next(self, step: int, from_line: int) -> None:
        """Scroll so that the next (`step` 1) or previous (-1) line holding the search text,
        after or before `from_line`, is the top line; the view stops following."""
        log = self.query_one("#log", RichLog)
        needle = self.search.lower()
        rows = [i for i, strip in enumerate(log.lines) if needle in strip.text.lower()]
        if not rows:
            self.notify(f"{self.search!r} is not in the log", severity="warning", timeout=2)
            return
        after = [i for i in rows if (i > from_line if step > 0 else i < from_line)]
        row = (after[0] if step > 0 else after[-1]) if after else rows[0 if step > 0 else -1]
        self.set_following(False)
        log.scroll_to(y=row, animate=False)
        self.notify(f"match {rows.index(row) + 1} of {len(rows)} (n / N)", timeout=1.5)

    def action_back(self) -> None:
        """Esc closes the find field if it is open, else goes back to the queue."""
        find = self.query_one("#log-find", Input)
        if find.display:
            find.display = False
            self.query_one("#log", RichLog).focus()
            return
        self.app.pop_screen()

    def render_summary(self, job: Job, message: DetailRead) -> Group:
        """The title line, then the facts in two columns (a long value wraps under itself)."""
        from rich.table import Table

        title = Text()
        title.append(f"job {job.id}  ", style="bold")
        title.append(job.name, style="bold cyan")
        title.append("  ")
        title.append(state_text(job.state, is_dark(self)))
        title.append(f"  ({job.kind})")
        facts = Table.grid(padding=(0, 1))
        facts.add_column(style="bold", no_wrap=True)
        facts.add_column(overflow="fold")
        rows = job_facts(
            job,
            message.metrics,
            message.now,
            message.usage,
            self.peak_rss,
            message.recorded,
        )
        label_width = max(len(label) for label, _ in rows)
        width = self.query_one("#summary", Static).content_size.width - label_width - 1
        for label, value in rows:
            facts.add_row(label, fit_value(value, width))
        return Group(title, facts)

    def action_control(self, action: str) -> None:
        job = self.job
        if action == "cancel" and job is not None and job.state in ("running", "starting"):

            def answered(yes: bool | None) -> None:
                if yes:
                    self.send_control(action)

            self.app.push_screen(
                ConfirmScreen(f"Cancel running job {job.id} ({job.name})?"), answered
            )
            return
        self.send_control(action)

    def send_control(self, action: str) -> None:
        self.notify(f"job {self.job_id}: {action} requested", timeout=2)

        def run() -> None:
            try:
                result = self.app.source.act(lambda client: client.control(self.job_id, action))  # type: ignore[attr-defined]
                self.app.call_from_thread(self.notify, f"job {self.job_id}: {result}")
            except Exception as error:
                self.app.call_from_thread(
                    self.notify, f"job {self.job_id}: {error}", severity="error"
                )
            self.app.call_from_thread(self.poll)

        self.run_worker(run, thread=True, exit_on_error=False, group="actions")
