"""A virtual job table: it knows how many rows match and holds only a window of jobs around the
visible rows; columns are sized to the visible content on every draw and the least useful ones
drop out when the terminal is narrow, so the reason a job waits stays on screen."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widget import Widget

from screens.widgets import is_dark, state_style
from workbench.db.store import Job
from workbench.present import job_progress, job_resources, shown_reason
from workbench.queue.accounts import user_name


@dataclass(frozen=True)
class Column:
    """One column of the job table: its `name` (the header), how its cells are justified, the
    cell's plain text for a job at a time (`text(job, now)`), and `steps`: the places it takes
    in the order optional columns join while the width allows, each (rank, cap, full): at
    `rank` it joins (or widens) to at most `cap` cells; a `full` step joins only when the reason
    keeps all it needs, the others when it keeps REASON_MIN. No steps: always shown (id, name,
    state) or the reason, which takes what the others leave. `blank`: a cell text that says
    nothing (a column whose visible cells are all blank is left out)."""

    name: str
    justify: str
    text: Callable[[Job, float], str]
    steps: tuple[tuple[int, int, bool], ...] = ()
    blank: str = ""


def _ran(job: Job, now: float) -> str:
    if job.started_at is None:
        return ""
    end = job.ended_at if job.ended_at is not None else now
    return short_age(max(0.0, end - job.started_at))


def _command(job: Job, now: float) -> str:
    import shlex

    return shlex.join(job.argv) if job.argv else ""


# Every column of the job table, in the order shown: the one place to add a column. The steps'
# ranks interleave the columns' widening; the reason takes the width the others leave.
COLUMNS: tuple[Column, ...] = (
    Column("id", "right", lambda job, now: str(job.id)),
    Column("name", "left", lambda job, now: job.name),
    # Empty (so never shown) in a per-user home, where every job is yours; a system daemon's
    # rows carry their owner's uid.
    Column(
        "owner",
        "left",
        lambda job, now: "" if job.uid is None else user_name(job.uid),
        ((5, 10, False),),
    ),
    Column("kind", "left", lambda job, now: job.kind, ((50, 8, False),)),
    Column("group", "left", lambda job, now: job.group, ((55, 10, False),), blank="default"),
    Column("state", "left", lambda job, now: job.state),
    Column("prio", "right", lambda job, now: str(job.priority), ((30, 4, False),)),
    Column(
        "resources",
        "left",
        lambda job, now: job_resources(job),
        ((20, 8, False), (70, 18, True), (140, 36, True)),
    ),
    Column(
        "progress",
        "left",
        lambda job, now: job_progress(job),
        ((10, 5, False), (60, 14, True), (130, 30, True)),
    ),
    Column(
        "age",
        "right",
        lambda job, now: short_age(max(0.0, now - job.created_at)),
        ((40, 6, False),),
    ),
    Column("start", "right", lambda job, now: clock(job.started_at, now), ((90, 11, True),)),
    Column("end", "right", lambda job, now: clock(job.ended_at, now), ((100, 11, True),)),
    Column("duration", "right", _ran, ((80, 8, True),)),
    Column("command", "left", _command, ((110, 40, True),)),
    Column("reason", "left", lambda job, now: shown_reason(job) or ""),
)
JUSTIFY = {column.name: column.justify for column in COLUMNS}
# The optional steps in rank order: (column, cap, full).
OPTIONAL: tuple[tuple[str, int, bool], ...] = tuple(
    (column.name, cap, full)
    for _, column, cap, full in sorted(
        ((rank, column, cap, full) for column in COLUMNS for rank, cap, full in column.steps),
        key=lambda step: step[0],
    )
)
NAME_MAX = 28
NAME_MIN = 12
NAME_SHORT = 16  # the name is cut this far to keep the short optional columns
REASON_MIN = 30


def short_age(seconds: float) -> str:
    """`42s` under a minute, then `17m`, `3h05m`, `2d4h`: past the first minute an age changes
    once a minute, so an idle table is redrawn once a minute rather than every second."""
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h"


def clock(t: float | None, now: float) -> str:
    """A start or end time: `14:05:09` today, `12-24 14:05` before."""
    import time as _time

    if t is None:
        return ""
    local, today = _time.localtime(t), _time.localtime(now)
    if local[:3] == today[:3]:
        return _time.strftime("%H:%M:%S", local)
    return _time.strftime("%m-%d %H:%M", local)


def cell_texts(job: Job, now: float, idle_since: float | None = None) -> dict[str, str]:
    """Each column's plain text for one job (`age` from `created_at` to `now`), by name; the
    reason flags GPUs idle since `idle_since` (Unix s)."""
    texts = {column.name: column.text(job, now) for column in COLUMNS if column.name != "reason"}
    texts["reason"] = shown_reason(job, idle_since, now) or ""  # with the idle GPUs flagged
    return texts


def fit_columns(
    widths: dict[str, int], total: int, empty: frozenset[str] = frozenset()
) -> dict[str, int]:
    """Choose columns and widths for `total` cells: id, name and state always, the name cut
    to NAME_MIN before the reason gets fewer than REASON_MIN cells; then each OPTIONAL column
    with something to show, as wide as its widest visible value up to its cap, while the reason
    keeps what it needs (the reason is kept first); the name gives up to NAME_SHORT for
    the first group. The reason takes what is left. Returns
    {column: width} in display order."""
    reason = widths["reason"]
    short = min(reason, REASON_MIN)
    chosen = {"id": widths["id"], "name": min(widths["name"], NAME_MAX), "state": widths["state"]}

    def left(columns: dict[str, int]) -> int:
        return total - sum(columns.values()) - len(columns)  # one space after each column

    if left(chosen) < short:
        chosen["name"] = max(NAME_MIN, chosen["name"] - (short - left(chosen)))
    for column, cap, full in OPTIONAL:
        if column in empty or column not in widths:
            continue
        width = min(widths.get(column, 0), cap)
        if chosen.get(column, 0) >= width:
            continue
        grown = {**chosen, column: width}
        missing = (reason if full else short) - left(grown)
        if missing > 0 and not full and grown["name"] - missing >= NAME_SHORT:
            grown["name"] -= missing  # a shorter name before a dropped column
            missing = 0
        if missing <= 0:
            chosen = grown
    chosen["reason"] = max(0, left(chosen))
    return {column.name: chosen[column.name] for column in COLUMNS if column.name in chosen}


def clip(text: str, width: int) -> str:
    """`text` cut to `width` cells with an ellipsis (never wrapped)."""
    if len(text) <= width:
        return text
    return text[: max(0, width - 1)] + "…" if width > 0 else ""


@dataclass
class Window:
    """The jobs held: rows `offset`.. of `total` matching ones."""

    total: int = 0
    offset: int = 0
    jobs: tuple[Job, ...] = ()
    idle: dict[int, float] = field(default_factory=dict)  # job id -> idle GPUs since (unix s)

    def get(self, index: int) -> Job | None:
        position = index - self.offset
        return self.jobs[position] if 0 <= position < len(self.jobs) else None


class JobTable(Widget, can_focus=True):
    """Rows of jobs drawn from a window the screen loads; the cursor follows a job by index."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move(-1)", "Up", show=False),
        Binding("down", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("enter", "select", "Open", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {"jobtable--header", "jobtable--cursor"}
    DEFAULT_CSS = """
    JobTable { height: 1fr; }
    JobTable > .jobtable--header { text-style: bold; color: $text-muted; }
    JobTable > .jobtable--cursor { background: $primary 30%; }
    JobTable:focus > .jobtable--cursor { background: $accent 60%; text-style: bold; }
    """

    @dataclass
    class WindowWanted(Message):
        """The visible rows are not all held: the screen should load rows from `offset`."""

        offset: int
        rows: int

    @dataclass
    class Selected(Message):
        """Enter on a job."""

        job: Job

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id=id)
        self.window = Window()
        self.cursor = 0
        self.top = 0
        self.now = 0.0
        self.shown_columns: dict[str, int] = {}
        # On the last row by default (first open, End): new jobs keep the cursor on the newest,
        # as a log follows its tail; any other move stops that.
        self.follow = True

    # ---- what the screen calls -------------------------------------------------------

    @property
    def visible_rows(self) -> int:
        return max(1, self.size.height - 1)

    def wanted_offset(self) -> int:
        """Where a window of three screens around the visible rows should start."""
        return max(0, self.top - self.visible_rows)

    def wanted_rows(self) -> int:
        return self.visible_rows * 3

    def set_window(self, window: Window, now: float) -> None:
        """New rows from the screen's read; redraws only when something shown changed."""
        before = self.visible_cells()
        grew = window.total > self.window.total
        self.window = window
        self.now = now
        if self.follow and grew:
            self.cursor = window.total - 1
        self.cursor = max(0, min(self.cursor, window.total - 1))
        self._scroll_to_cursor(request=True)
        if self.visible_cells() != before:
            self.refresh()

    def set_now(self, now: float) -> None:
        """Ages move on: redraw only if a visible age changed."""
        before = self.visible_cells()
        self.now = now
        if self.visible_cells() != before:
            self.refresh()

    def selected(self) -> Job | None:
        return self.window.get(self.cursor)

    def move_to(self, index: int, follow: bool = False) -> None:
        self.follow = follow
        self.cursor = max(0, min(index, self.window.total - 1))
        self._scroll_to_cursor(request=True)
        self.refresh()

    # ---- drawing ---------------------------------------------------------------------

    def visible_jobs(self) -> list[Job | None]:
        end = min(self.window.total, self.top + self.visible_rows)
        return [self.window.get(i) for i in range(self.top, end)]

    def visible_cells(self) -> list[tuple[str, ...] | None]:
        return [
            None
            if job is None
            else tuple(cell_texts(job, self.now, self.window.idle.get(job.id)).values())
            for job in self.visible_jobs()
        ]

    def render(self) -> Text:
        rows = self.visible_jobs()
        idle = self.window.idle
        texts = [
            None if job is None else cell_texts(job, self.now, idle.get(job.id)) for job in rows
        ]
        widths = {column.name: len(column.name) for column in COLUMNS}
        blank = {column.name: column.blank for column in COLUMNS}
        filled: set[str] = set()
        for cells in texts:
            for name, value in (cells or {}).items():
                widths[name] = max(widths[name], len(value))
                if value and value != "-" and value != blank[name]:
                    filled.add(name)
        empty = frozenset(c.name for c in COLUMNS if c.name not in filled and c.name != "reason")
        shown = fit_columns(widths, self.size.width, empty)
        self.shown_columns = shown
        header_style = self.get_component_rich_style("jobtable--header")
        cursor_style = self.get_component_rich_style("jobtable--cursor")
        dark = is_dark(self)
        justify = JUSTIFY
        out = Text(no_wrap=True, overflow="crop")
        header = " ".join(
            clip(n, w).rjust(w) if justify[n] == "right" else clip(n, w).ljust(w)
            for n, w in shown.items()
        )
        out.append(header, style=header_style)
        for index, (job, cells) in enumerate(zip(rows, texts, strict=True)):
            out.append("\n")
            line = Text(no_wrap=True, overflow="crop")
            if job is None or cells is None:
                line.append("…".ljust(self.size.width), style="dim")
            else:
                for position, (name, width) in enumerate(shown.items()):
                    if position:
                        line.append(" ")
                    value = clip(cells[name], width)
                    value = value.rjust(width) if justify[name] == "right" else value.ljust(width)
                    line.append(
                        value, style=state_style(job.state, dark) if name == "state" else ""
                    )
                line.pad_right(max(0, self.size.width - line.cell_len))
            if self.top + index == self.cursor:
                line.stylize(cursor_style)
            out.append_text(line)
        if not rows:
            out.append("\n")
        return out

    # ---- keys and mouse --------------------------------------------------------------

    def _scroll_to_cursor(self, request: bool) -> None:
        height = self.visible_rows
        if self.cursor < self.top:
            self.top = self.cursor
        elif self.cursor >= self.top + height:
            self.top = self.cursor - height + 1
        self.top = max(0, min(self.top, max(0, self.window.total - height)))
        if not request:
            return
        end = min(self.window.total, self.top + height)
        held = range(self.window.offset, self.window.offset + len(self.window.jobs))
        if self.window.total and not (self.top in held and end - 1 in held):
            self.post_message(self.WindowWanted(self.wanted_offset(), self.wanted_rows()))

    def action_move(self, step: int) -> None:
        self.move_to(self.cursor + step)

    def action_page(self, step: int) -> None:
        self.move_to(self.cursor + step * self.visible_rows)

    def action_jump(self, where: int) -> None:
        self.move_to(self.window.total - 1 if where < 0 else 0, follow=where < 0)

    def action_select(self) -> None:
        job = self.selected()
        if job is not None:
            self.post_message(self.Selected(job))

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        event.stop()
        self.move_to(self.cursor + 3)

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        event.stop()
        self.move_to(self.cursor - 3)

    def on_click(self, event: events.Click) -> None:
        if event.y >= 1:
            self.move_to(self.top + event.y - 1)

    def on_resize(self) -> None:
        self._scroll_to_cursor(request=True)
