"""The one sanitiser for everything the workbench prints (CLI tables, CSV to a terminal, TUI
cells and titles, job names, dataset and column names, reasons): data is shown, never
interpreted by the terminal."""

from __future__ import annotations

import sys
from typing import IO

# Control characters (C0, DEL, C1) shown as escapes: text must not move the cursor, ring the
# bell, clear the screen, retitle the terminal (OSC 0) or write the clipboard (OSC 52). The
# bidirectional overrides and isolates are shown too (Unicode TR 36, "Trojan Source"): they
# reorder what is displayed.
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}
_CONTROLS.update({c: f"\\u{c:04x}" for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]})


def display_text(text: str) -> str:
    """Text safe to print: bytes that are not UTF-8 (kept as lone surrogates, as `os.fsdecode`
    gives them) are shown as `\\xe9` escapes instead of failing the terminal's encoder, and
    control characters (newlines, ESC, BEL...) and bidi overrides as `\\x1b`/`\\u202e`
    escapes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text.translate(_CONTROLS)


def unique_labels(names: list[str]) -> tuple[list[str], list[str]]:
    """Column labels made unique as DuckDB names a subquery's columns (`a`, `a_1`, `a_2`,
    never a label another column already has), and a sentence per rename."""
    taken = set(names)
    seen: set[str] = set()
    labels: list[str] = []
    notes: list[str] = []
    for name in names:
        if name not in seen:
            labels.append(name)
            seen.add(name)
            continue
        number = 1
        while f"{name}_{number}" in taken or f"{name}_{number}" in seen:
            number += 1
        label = f"{name}_{number}"
        labels.append(label)
        seen.add(label)
        notes.append(f"{name} -> {label}")
    return labels, notes


def fallback_streams() -> None:
    """On a terminal (or pipe) whose encoding is not UTF-8 (`LANG=en_US.ISO-8859-1`), write
    what it cannot show as `\\u6771` escapes instead of failing with UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        _fallback(stream)


def _fallback(stream: IO[str] | None) -> None:
    encoding = (getattr(stream, "encoding", None) or "utf-8").lower().replace("_", "-")
    if encoding.startswith("utf") or stream is None:
        return
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")


def warn_if_not_utf8() -> None:
    """Before the TUI takes the screen: say on stderr when the terminal's encoding (stdout's)
    is not UTF-8, since lines, bars and text outside it can only be drawn as escapes; the
    line stays on the normal screen after the TUI leaves its alternate one."""
    encoding = (sys.stdout.encoding or "").lower().replace("_", "-")
    if not encoding.startswith("utf"):
        print(
            f"workbench: the terminal's encoding is {sys.stdout.encoding}, not UTF-8: lines,"
            " bars and text outside it cannot be drawn and show as escapes; set LANG (or LC_ALL)"
            " to a UTF-8 locale, e.g. LANG=C.UTF-8",
            file=sys.stderr,
        )
