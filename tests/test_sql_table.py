"""`workbench sql`'s table (workbench.cli.resulttable) draws exactly what rich's default Table
draws, byte for byte, on a pipe, a colour terminal and a latin-1 stream, without rich's Table
where every cell fits; and the command's start-up leaves out what it does not use."""

from __future__ import annotations

import io
import random
from collections.abc import Callable

import pytest
from conftest import imports_of
from rich.console import Console
from rich.table import Table
from rich.text import Text

from workbench.cli import resulttable
from workbench.paths import Home
from workbench.safetext import display_text


class Stream(io.StringIO):
    """A text stream with the encoding rich reads to choose its box characters."""

    def __init__(self, encoding: str) -> None:
        super().__init__()
        self._encoding = encoding

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding


CONSOLES: dict[str, Callable[[Stream], Console]] = {
    "pipe": lambda out: Console(file=out, width=160),
    "colour terminal": lambda out: Console(
        file=out, width=120, force_terminal=True, color_system="truecolor"
    ),
    "narrow": lambda out: Console(file=out, width=30),
}


def rich_table(console: Console, headers: list[str], rows: list[list[str]]) -> None:
    """What `workbench sql` drew before: rich's Table, every cell a Text."""
    table = Table(header_style="bold")
    for header in headers:
        table.add_column(Text(header))
    for row in rows:
        table.add_row(*[Text(cell) for cell in row])
    console.print(table)


def drawn(
    draw: Callable[[Console, list[str], list[list[str]]], None],
    console: str,
    headers: list[str],
    rows: list[list[str]],
    encoding: str = "utf-8",
) -> str:
    out = Stream(encoding)
    draw(CONSOLES[console](out), headers, rows)
    return out.getvalue()


CASES = {
    "numbers and text": (["id", "twice", "h"], [["0", "0", "cfcd2084"], ["1", "2", "c4ca"]]),
    "header wider than cells": (["a_long_column_name"], [["1"], ["22"]]),
    "no rows": (["a", "b"], []),
    "one row": (["x"], [["NULL"]]),
    "empty cells": (["a", "b"], [["", "x"], ["y", ""]]),
    "wide characters": (["city", "emoji"], [["東京", "😀"], ["Zürich", "👍🏽"]]),
    "escaped controls and markup": (
        [display_text("col\x1b]0;pwned\x07")],
        [[display_text("\x1b[2J")], ["[bold]x[/]"], [display_text("a\u202eb\tc\n")]],
    ),
    "spaces kept": (["s"], [["  lead"], ["trail  "], ["in  side"], ["\xa0nbsp\xa0"]]),
    # rich pads a cell of more characters than cells after dropping trailing white space
    "combining marks then space": (["h", "x" * 8], [["a\u0300\xa0", "e\u0301 "], ["\u200b ", "b"]]),
}


@pytest.mark.parametrize("console", sorted(CONSOLES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_table_is_the_one_rich_draws(case: str, console: str) -> None:
    headers, rows = CASES[case]
    ours = drawn(resulttable.print_table, console, headers, rows)
    assert ours == drawn(rich_table, console, headers, rows)
    assert ours.count("\n") == len(rows) + 4  # one line a row: nothing wrapped


def test_a_latin1_stream_gets_the_same_ascii_box() -> None:
    headers, rows = CASES["numbers and text"]
    ours = drawn(resulttable.print_table, "colour terminal", headers, rows, "latin-1")
    assert ours == drawn(rich_table, "colour terminal", headers, rows, "latin-1")
    assert "┃" not in ours and "+--" in ours


@pytest.mark.parametrize("over", [0, 1, 2])
def test_a_table_as_wide_as_the_console_and_wider(over: int) -> None:
    """Two columns in the 30-column console: borders and padding take 7, so 23 characters of
    cells fit exactly (over=0); one more and rich's Table narrows the wider column, cutting
    its words with an ellipsis."""
    headers = ["a" * 10, "b" * (13 + over)]
    rows = [["x" * 10, "y" * (13 + over)]]
    ours = drawn(resulttable.print_table, "narrow", headers, rows)
    assert ours == drawn(rich_table, "narrow", headers, rows)
    assert max(len(line) for line in ours.splitlines()) == 30
    assert ("…" in ours) == (over > 0)


def test_random_cells_match_rich_at_every_width() -> None:
    """Cells drawn from awkward pieces (wide, zero-width and combining characters, spaces,
    escapes, markup, line separators), tables wider than the console included: rich's own
    Table lays out what does not fit, so every one matches."""
    pieces = ["a", "Z", " ", "  ", "東", "é", "e\u0301", "😀", "\u200b", "[b]", "\x1b[2J", "\t",
              "0", "123456", "\xa0", "ﾊ", "\u0300", "", "\u3000", "\u2028"]  # fmt: skip
    chosen = random.Random(23)

    def text() -> str:
        return display_text("".join(chosen.choice(pieces) for _ in range(chosen.randint(0, 8))))

    for _ in range(300):
        columns = chosen.randint(1, 5)
        headers = [text() for _ in range(columns)]
        rows = [[text() for _ in range(columns)] for _ in range(chosen.choice([0, 1, 3]))]
        for console in CONSOLES:
            ours = drawn(resulttable.print_table, console, headers, rows)
            assert ours == drawn(rich_table, console, headers, rows), (console, headers, rows)


def test_cells_that_fit_are_drawn_without_rich_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the module: rich's Table (measuring, wrapping and padding each cell, ~0.2 ms
    a cell) is not used when every cell fits; a table wider than the console still uses it."""
    made: list[Table] = []
    original = Table.__init__

    def counting(self: Table, *args: object, **kwargs: object) -> None:
        made.append(self)
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Table, "__init__", counting)
    headers, rows = CASES["numbers and text"]
    drawn(resulttable.print_table, "pipe", headers, rows * 100)
    assert made == []
    drawn(resulttable.print_table, "narrow", ["wide"], [["x" * 40]])
    assert len(made) == 1


def test_sql_starts_without_what_a_table_does_not_need(home: Home) -> None:
    """`workbench sql` printing a table imports neither rich's Table nor what only publishing
    (hashlib, uuid), starting the daemon (subprocess), listing jobs (the scheduling layer) or
    a mistyped command (difflib) needs."""
    result, imported = imports_of("sql", "SELECT 42 AS answer, '東京' AS city")
    assert result.returncode == 0, result.stderr
    assert "answer" in result.stdout and "東京" in result.stdout
    assert "workbench.cli.resulttable" in imported and "rich.console" in imported
    unused = {"rich.table", "hashlib", "uuid", "subprocess", "workbench.db.scheduling", "difflib"}
    assert not imported & unused
