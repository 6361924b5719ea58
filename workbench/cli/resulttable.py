"""How `workbench sql` draws a result as a table: rich's default table, drawn line by line."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.segment import Segments

# Characters str.splitlines() breaks at that the sanitiser leaves in place: rich measures a cell
# by its lines but draws it as one, so such a cell goes through rich's own table.
_LINE_BREAKS = ("\u2028", "\u2029")


def print_table(console: Console, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print `headers` (one per column) and `rows` (each as many cells) as rich's default
    `Table(header_style="bold")` draws them: the heavy-headed box (ASCII where the console's
    encoding lacks it), headers in bold, one space of padding, cells left-justified.

    Every header and cell must already be sanitised (`workbench.safetext.display_text`), so
    each is one line of text, shown as it is (never read as markup). When every cell fits its
    column's widest value and the table fits the console, the lines are drawn here from rich's
    box characters, cell widths (`rich.cells.cell_len`) and styles: the same output as rich's
    Table at a fraction of its time (rich measures, wraps and pads every cell through its
    general layout, ~0.2 ms a cell). Otherwise (columns to wrap, line separators in a cell)
    rich's Table lays it out."""
    from rich.cells import cell_len

    if headers and not any(b in text for b in _LINE_BREAKS for text in _texts(headers, rows)):
        widths = [
            max([cell_len(header), *(cell_len(row[index]) for row in rows)])
            for index, header in enumerate(headers)
        ]
        if all(widths) and sum(widths) + 3 * len(widths) + 1 <= console.width:
            console.print(_drawn(console, headers, rows, widths))
            return
    from rich.table import Table
    from rich.text import Text

    table = Table(header_style="bold")
    for header in headers:
        table.add_column(Text(header))
    for row in rows:
        table.add_row(*[Text(cell) for cell in row])
    console.print(table)


def _texts(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [*headers, *(cell for row in rows for cell in row)]


def _drawn(
    console: Console, headers: Sequence[str], rows: Sequence[Sequence[str]], widths: list[int]
) -> Segments:
    """The table as rich Segments, one per line for the body (its text carries no style), and
    per cell for the bold header line, as rich's Table renders them."""
    from rich import box
    from rich.cells import cell_len
    from rich.segment import Segment, Segments
    from rich.style import Style

    frame = box.HEAVY_HEAD.substitute(console.options, safe=console.safe_box)
    padded = [width + 2 for width in widths]  # one space of padding either side
    border = Style()
    bold = console.get_style("bold")
    line = Segment.line()
    segments = [Segment(frame.get_top(padded), border), line]
    pad = Segment(" ", bold)
    segments.append(Segment(frame.head_left, border))
    for index, (header, width) in enumerate(zip(headers, widths, strict=True)):
        if index:
            segments.append(Segment(frame.head_vertical, border))
        segments += [pad, Segment(_fitted(header, width, cell_len), bold), pad]
    segments += [Segment(frame.head_right, border), line]
    segments += [Segment(frame.get_row(padded, "head"), border), line]
    for number, row in enumerate(rows, 1):
        left, middle, right = (
            (frame.foot_left, frame.foot_vertical, frame.foot_right)
            if number == len(rows)
            else (frame.mid_left, frame.mid_vertical, frame.mid_right)
        )
        cells = f" {middle} ".join(
            _fitted(cell, width, cell_len) for cell, width in zip(row, widths, strict=True)
        )
        segments += [Segment(f"{left} {cells} {right}"), line]
    segments += [Segment(frame.get_bottom(padded), border), line]
    return Segments(segments)


def _fitted(text: str, width: int, cell_len: Callable[[str], int]) -> str:
    """`text` padded with spaces to `width` cells, as rich's Text pads a line it wraps: a text
    of more characters than `width` (combining marks, zero-width characters) first loses as
    many of its trailing white-space characters as it has characters too many
    (`rich.text.Text.rstrip_end`)."""
    excess = len(text) - width
    if excess > 0:
        kept = text.rstrip()
        text = text[: max(len(kept), len(text) - excess)]
    return text + " " * (width - cell_len(text))
