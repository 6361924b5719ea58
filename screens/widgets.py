"""Small shared renderables: meter bars, tiny sparklines, state colours."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from workbench.present import STATE_STYLES

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


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))
