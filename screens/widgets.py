"""Small shared pieces of every screen: meter bars, tiny sparklines, state colours, the title bar
with the screen keys, and the focus line beside the footer."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from rich.segment import Segment
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.geometry import Region, Size
from textual.message import Message
from textual.screen import Screen
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Footer, Static, TextArea

# One colour per state and theme, each of a distinct hue: running (green, bold) apart from
# blocked (amber, a dependency failed), paused (violet, held by a user) apart from failed (the
# only red). Light colours on the dark theme, dark ones on the light theme, so each reads at a
# WCAG 2 contrast of 4.5:1 or more on its theme's background and surface (one colour cannot:
# it would need a luminance over 0.23 for the dark theme and under 0.11 for the light one).
# tests/test_tui.py computes the ratios.
STATE_PALETTES: dict[str, dict[str, str]] = {
    "dark": {
        "queued": "#4fc3f7",
        "starting": "#8aa8ff",
        "running": "bold #3ddc5a",
        "paused": "#c792ea",
        "blocked": "#ffb74d",
        "succeeded": "#c0ca33",
        "failed": "bold #ff6b81",
        "cancelled": "#a8a8a8",
    },
    "light": {
        "queued": "#006680",
        "starting": "#1a4fc4",
        "running": "bold #16652a",
        "paused": "#6a2cb0",
        "blocked": "#9a4400",
        "succeeded": "#5a5a00",
        "failed": "bold #b0102a",
        "cancelled": "#555555",
    },
}
STATE_STYLES = STATE_PALETTES["dark"]

# The screens in key order: (key, title). The app's SCREENS table holds where each lives.
SCREEN_KEYS = (("d", "Dashboard"), ("j", "Queue"), ("s", "Data"), ("r", "Runs"), ("m", "Models"))

BLOCKS = " ▁▂▃▄▅▆▇█"


def meter(label: str, percent: float | None, width: int, detail: str = "") -> Text:
    """`label ███████░░░░  58% detail` with a colour by load."""
    text = Text(f"{label:<5}")
    if percent is None:
        text.append("n/a".ljust(width + 5), style="dim")
    else:
        filled = max(0, min(width, round(percent / 100 * width)))
        style = "green" if percent < 60 else "yellow" if percent < 85 else "red"
        text.append("█" * filled, style=style)
        text.append("░" * (width - filled), style="grey37")
        text.append(f" {percent:3.0f}%")
    if detail:
        text.append(f" {detail}", style="dim")
    return text


def spark(values: Sequence[float | None], width: int, top: float | None = None) -> Text:
    """The last `width` values as a one-line sparkline (gaps for missing values)."""
    recent = list(values)[-width:]
    known = [v for v in recent if v is not None]
    high = top if top is not None else (max(known) if known else 1.0) or 1.0
    chars = []
    for value in recent:
        if value is None:
            chars.append(" ")
        else:
            chars.append(BLOCKS[max(0, min(8, round(value / high * 8)))])
    return Text("".join(chars).rjust(width), style="cyan")


def unit(text: str) -> str:
    """A value that must not break across lines: its spaces made non-breaking."""
    return text.replace(" ", "\u00a0")


def top_level_parts(text: str, sep: str) -> list[str]:
    """`text` split at each `sep` outside brackets and quotes, `sep` kept at the end of each
    part but the last: `a=1, hidden=[128, 128]` -> [`a=1, `, `hidden=[128, 128]`]."""
    parts, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(text):
        char = text[i]
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(0, depth - 1)
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start : i + len(sep)])
            start = i = i + len(sep)
            continue
        i += 1
    parts.append(text[start:])
    return [p for p in parts if p]


def fit_value(text: str, width: int) -> str:
    """`text` broken into lines of at most `width` cells between values, never inside one:
    first at `, ` (outside brackets), a part still too long at its spaces, and only a single
    word wider than the line is cut into pieces. Rich wraps at any space (even a non-breaking
    one), which split `attempt 1 of 1` and `hidden=[128, 128]` across lines."""
    if width <= 0 or len(text) <= width:
        return text
    lines: list[str] = []
    line = ""
    for part in top_level_parts(text, ", "):
        pieces = [part] if len(part) <= width else top_level_parts(part, " ")
        for piece in pieces:
            if len(line) + len(piece.rstrip()) <= width:
                line += piece
                continue
            if line:
                lines.append(line.rstrip())
            while len(piece.rstrip()) > width:
                lines.append(piece[:width])
                piece = piece[width:]
            line = piece
    if line.strip():
        lines.append(line.rstrip())
    return "\n".join(lines)


def state_style(state: str, dark: bool = True) -> str:
    """The colour of a job state on the dark (or the light) theme (`STATE_PALETTES`)."""
    return STATE_PALETTES["dark" if dark else "light"].get(state, "")


def state_text(state: str, dark: bool = True) -> Text:
    return Text(state, style=state_style(state, dark))


def is_dark(widget: Widget) -> bool:
    """Whether `widget`'s app shows a dark theme (state colours are chosen by it)."""
    try:
        return bool(widget.app.current_theme.dark)
    except Exception:  # no app yet (a widget built outside one)
        return True


class TitleBar(Static):
    """One line: the app, then every screen with its key (the current one highlighted), help.

    The screen keys live here rather than in the footer, so they stay visible at 80 columns and
    the footer has room for the current screen's own keys."""

    DEFAULT_CSS = """
    TitleBar { height: 1; background: $panel; color: $text-muted; }
    """

    def __init__(self, current: str) -> None:
        super().__init__(id="title-bar")
        self.current = current

    def on_mount(self) -> None:
        self.update(self.line(self.size.width or 80))

    def on_resize(self) -> None:
        self.update(self.line(self.size.width))

    def line(self, width: int) -> Text:
        text = Text(no_wrap=True, overflow="crop")
        text.append(" gpu-workbench " if width >= 100 else " wb ", style="bold")
        for key, title in SCREEN_KEYS:
            label = f" {key} {title} " if width >= 70 else f" {key} {title[:4]} "
            text.append(label, style="bold reverse" if title == self.current else "")
        help_text = (
            " ? help  ^p palette  q quit "
            if width >= 110
            else " ? help  q quit "
            if width >= 80
            else " ? help "
        )
        text.append(" " * max(1, width - text.cell_len - len(help_text)))
        text.append(help_text, style="dim")
        return text


def pane_name(widget: Widget | None) -> str:
    """What the focus line calls a focused widget: its `border_title`, else its id."""
    if widget is None:
        return "keys"
    title = widget.border_title
    return str(title) if title else (widget.id or type(widget).__name__).replace("-", " ")


class FocusLine(Static):
    """Left of the footer: which pane has the focus, and how to leave it."""

    DEFAULT_CSS = """
    FocusLine { width: auto; max-width: 40; height: 1; padding: 0 1; background: $primary 40%; }
    """

    def show(self, widget: Widget | None) -> None:
        text = Text(pane_name(widget), style="bold")
        if isinstance(widget, TextArea) and not widget.read_only:
            text.append(" esc: leave", style="")
        elif widget is not None and "Input" in type(widget).__name__:
            text.append(" esc: close", style="")
        self.update(text)


class BottomBar(Horizontal):
    """The focus line and the footer on the last row."""

    DEFAULT_CSS = """
    BottomBar { dock: bottom; height: 1; }
    BottomBar > Footer { dock: none; width: 1fr; }
    BottomBar > Footer.-compact FooterLabel { margin: 0 1 0 0; }
    """

    def compose(self) -> ComposeResult:
        yield FocusLine(id="focus-line")
        yield Footer(compact=True, show_command_palette=False)


class LiveGuard(Screen[Any]):
    """The one guard of every screen against updates that arrive when there is nothing to update.

    A screen's messages (worker results, timers, `call_later`, widget events) can arrive before
    it is composed, after it was closed, or while the app is exiting (a `q` in a burst of keys
    that also switched screens): its widgets are then missing and `query_one` raises NoMatches.
    Every message goes through `_dispatch_message`, so the guard sits there: an exception raised
    while the screen is not `live` is dropped (the update had nowhere to go); while it is live,
    exceptions propagate as ever. Keys that reach a screen before it is composed run no action
    (`check_action`). Mixed in before `Screen`/`ModalScreen`."""

    @property
    def live(self) -> bool:
        """True while the screen is composed, attached, not closing, and the app not exiting."""
        return (
            bool(self._nodes)
            and self.is_attached
            and not (self._closing or self._closed or self._pruning)
            and not getattr(self.app, "_exit", False)
        )

    async def _dispatch_message(self, message: Message) -> None:
        try:
            await super()._dispatch_message(message)
        except Exception:
            if self.live:
                raise
            self.log.warning(f"{type(self).__name__}: dropped {type(message).__name__}: not live")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return self.live and super().check_action(action, parameters)


class WorkbenchScreen(LiveGuard):
    """A screen with the title bar on top and the focus line beside the footer; Tab and
    Shift+Tab move between its panes (Textual's focus chain)."""

    TITLE_NAME = ""

    def title_bar(self) -> TitleBar:
        return TitleBar(self.TITLE_NAME)

    def bottom_bar(self) -> BottomBar:
        return BottomBar()

    def on_descendant_focus(self, event: Any) -> None:
        self._show_focus()

    def on_descendant_blur(self, event: Any) -> None:
        self.call_after_refresh(self._show_focus)

    def on_screen_resume(self) -> None:
        self._show_focus()

    def _show_focus(self) -> None:
        for line in self.query(FocusLine):
            line.show(self.focused)


# ---- history graphs ------------------------------------------------------------------------
# Drawn with block characters rather than plotext: a plotext build of one 70x8 chart takes about
# 30 ms, and the Dashboard redraws up to a dozen charts a second; these take well under 1 ms.

WINDOWS = ((60.0, "1m"), (600.0, "10m"), (3600.0, "1h"), (86400.0, "24h"))


def short_span(seconds: float) -> str:
    """60 -> `1m`, 300 -> `5m`, 43200 -> `12h`, 30 -> `30s`."""
    if seconds >= 3600:
        return f"{seconds / 3600:g}h"
    if seconds >= 60:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def resample(
    points: Sequence[tuple[float, float | None]], start: float, end: float, width: int
) -> list[float | None]:
    """Mean of the points falling in each of `width` equal time buckets over [start, end];
    None where a bucket has no point."""
    sums = [0.0] * width
    counts = [0] * width
    span = max(1e-9, end - start)
    for t, value in points:
        if value is None or t < start or t > end:
            continue
        index = min(width - 1, int((t - start) / span * width))
        sums[index] += value
        counts[index] += 1
    return [s / c if c else None for s, c in zip(sums, counts, strict=True)]


def hold_sampling_gaps(
    values: list[float | None], points: Sequence[tuple[float, float | None]], column_s: float
) -> list[float | None]:
    """`values` (one per `column_s` column) with each empty column that only falls between two
    samples of the usual interval given its left neighbour's value: a 1 Hz series on columns
    of 0.86 s leaves every seventh column empty, which read as dropouts. A gap longer than 1.5
    times the median interval between `points` (a real dropout) stays empty."""
    times = sorted(t for t, v in points if v is not None)
    if len(times) < 3:
        return values
    steps = sorted(b - a for a, b in itertools.pairwise(times))
    usual = steps[len(steps) // 2]
    if usual <= 0 or usual * 1.5 <= column_s:
        return values  # every column spans a sample: an empty one is a dropout
    span = max(1, int(usual * 1.5 / column_s))  # columns one sampling interval may leave empty
    out = list(values)
    run = 0
    for index, value in enumerate(values):
        if value is not None:
            run = 0
            continue
        run += 1
        nxt = next((v for v in values[index + 1 : index + 1 + span] if v is not None), None)
        if index > 0 and out[index - 1] is not None and run <= span and nxt is not None:
            out[index] = out[index - 1]
    return out


def area(values: Sequence[float | None], height: int, top: float, style: str) -> list[Text]:
    """An area chart `height` rows high: each value fills its column from the bottom in eighths
    of a row (as btop draws); None leaves the column empty."""
    rows = []
    top = top or 1.0
    for row in range(height - 1, -1, -1):
        chars = []
        for value in values:
            if value is None:
                chars.append(" ")
                continue
            fill = max(0.0, min(1.0, value / top * height - row))
            chars.append(BLOCKS[round(fill * 8)] if fill > 0 else " ")
        rows.append(Text("".join(chars), style=style))
    return rows


def chart(
    points: Sequence[tuple[float, float | None]],
    end: float,
    window_s: float,
    width: int,
    height: int,
    top: float,
    style: str,
    top_label: str,
    axis: bool = True,
) -> list[Text]:
    """A history chart with a y label column (5 cells) and, with `axis`, a time axis under it:
    `-10m ... -5m ... now`. Returns `height` (+1 with the axis) lines of `width` cells."""
    plot_width = max(4, width - 5)
    # Columns cover fixed spans of clock time (not spans ending now): between two column
    # boundaries only the newest column changes, so a redraw rewrites one cell per row.
    column_s = window_s / plot_width
    end = math.ceil(end / column_s) * column_s
    values = hold_sampling_gaps(resample(points, end - window_s, end, plot_width), points, column_s)
    lines = []
    for index, row in enumerate(area(values, height, top, style)):
        label = top_label if index == 0 else ("0" if index == height - 1 else "")
        line = Text(f"{label[:4]:>4}", style="dim")
        line.append("┤" if label else "│", style="dim")
        line.append_text(row)
        lines.append(line)
    if axis:
        left, middle = f"-{short_span(window_s)}", f"-{short_span(window_s / 2)}"
        ticks = [" "] * plot_width
        for position, label in ((0, left), (plot_width // 2 - len(middle) // 2, middle)):
            for offset, char in enumerate(label):
                if 0 <= position + offset < plot_width:
                    ticks[position + offset] = char
        for offset, char in enumerate("now"):
            ticks[plot_width - 3 + offset] = char
        lines.append(Text("    └" + "".join(ticks), style="dim"))
    return lines


class Lines(Widget):
    """Lines of rich Text drawn one strip per line; `set_lines` redraws only the lines that
    changed, so a chart whose newest column moved costs one line's rendering, not the panel's."""

    DEFAULT_CSS = "Lines { height: auto; }"

    def __init__(self, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.lines: list[Text] = []
        self._keys: list[Any] = []
        self._strips: dict[int, Strip] = {}
        self._strips_style: Any = None

    @staticmethod
    def _key(line: Text) -> Any:
        return (line.plain, tuple(line.spans), str(line.style))

    def set_lines(self, lines: list[Text]) -> None:
        keys = [self._key(line) for line in lines]
        if len(keys) != len(self._keys):
            self.lines, self._keys = lines, keys
            self._strips.clear()
            self.refresh(layout=True)
            return
        changed = [i for i, (a, b) in enumerate(zip(self._keys, keys, strict=True)) if a != b]
        self.lines, self._keys = lines, keys
        for index in changed:
            self._strips.pop(index, None)
            self.refresh(Region(0, index, self.size.width, 1))

    @property
    def plain(self) -> str:
        return "\n".join(line.plain for line in self.lines)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self.lines)

    def on_resize(self) -> None:
        self._strips.clear()

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if y >= len(self.lines):
            return Strip.blank(width, self.rich_style)
        # A strip is kept with the style it was drawn in: after a theme switch (even one made
        # on another screen) every line is drawn again, not only those whose text changed.
        style = self.rich_style
        if self._strips_style != style:
            self._strips.clear()
            self._strips_style = style
        strip = self._strips.get(y)
        if strip is None:
            line = self.lines[y].copy()
            line.no_wrap, line.overflow, line.end = True, "crop", ""
            segments = [
                Segment(s.text, self.rich_style + s.style if s.style else self.rich_style)
                for s in line.render(self.app.console)
            ]
            strip = Strip(segments).crop_extend(0, width, self.rich_style)
            self._strips[y] = strip
        return strip
