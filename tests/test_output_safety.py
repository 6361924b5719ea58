"""What the workbench prints is data, never terminal commands: control sequences in cells, column
names, file names and reasons are shown escaped (one sanitiser, `workbench.safetext`), repeated
column names survive JSON, wide results page by columns, and a non-UTF-8 terminal gets
escapes instead of a traceback. The terminal cases also run in tmux with the screen read back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import wait_for, workbench
from test_data_screen import results, run_query
from test_tmux_smoke import capture, tmux

from screens.app import WorkbenchApp
from screens.source import Source
from workbench.catalog import lake
from workbench.daemon.client import Client
from workbench.paths import Home
from workbench.safetext import display_text

TITLE = "\x1b]0;pwned\x07"  # OSC 0: retitle the terminal
CLEAR = "\x1b[2J"  # clear the screen
CLIP = "\x1b]52;c;cHduZWQ=\x07"  # OSC 52: write the clipboard
NASTY = [TITLE, CLEAR, CLIP, "\x9b31m", "a\u202eb"]


def raw_bytes(text: str) -> bool:
    """Whether `text` holds a control character a terminal would act on."""
    return any((ord(c) < 0x20 and c not in "\n") or 0x7F <= ord(c) < 0xA0 for c in text)


def nasty_dataset(home: Home, client: Client) -> None:
    table = pa.table({"id": list(range(len(NASTY))), f"col{TITLE}": NASTY})
    lake.publish_arrow(home, client.store, "nasty", table)


def test_display_text_escapes_every_control_sequence() -> None:
    for text in NASTY:
        shown = display_text(text)
        assert not raw_bytes(shown) and "\u202e" not in shown
    assert display_text(TITLE) == "\\x1b]0;pwned\\x07"


def test_sql_table_and_csv_show_control_sequences_escaped(home: Home, client: Client) -> None:
    nasty_dataset(home, client)
    table = workbench("sql", "SELECT * FROM nasty ORDER BY id")
    assert table.returncode == 0, table.stderr
    assert not raw_bytes(table.stdout) and "\\x1b]0;pwned\\x07" in table.stdout
    assert "\\x1b[2J" in table.stdout and "\\x1b]52;c;" in table.stdout
    # JSON escapes them itself; CSV into a file or pipe keeps the bytes (it is data)
    out = workbench("sql", "SELECT * FROM nasty ORDER BY id", "--json").stdout
    assert [json.loads(line)[f"col{TITLE}"] for line in out.splitlines()] == NASTY


def test_rich_markup_in_data_is_shown_as_text(home: Home) -> None:
    done = workbench("sql", "SELECT '[bold]x[/]' AS \"[red]c\", '[/]' AS d")
    assert done.returncode == 0, done.stderr
    assert "[bold]x[/]" in done.stdout and "[red]c" in done.stdout and "[/]" in done.stdout


def test_csv_to_a_terminal_is_escaped(home: Home, client: Client) -> None:
    import pty

    nasty_dataset(home, client)
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "workbench", "sql", "SELECT * FROM nasty ORDER BY id", "--csv"],
        stdout=follower,
        stderr=subprocess.PIPE,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(timeout=60) == 0
    os.close(leader)
    text = b"".join(chunks).decode()
    assert not raw_bytes(text.replace("\r", "")) and "\\x1b]0;pwned\\x07" in text


def test_datasets_rejects_and_batch_reasons_are_escaped(home: Home, tmp_path: Path) -> None:
    name = tmp_path / f"evil{TITLE}.csv"
    name.write_text(f"id,name{CLEAR}\n1,a\n2,b,extra{CLIP}\n")
    done = workbench("ingest", str(name), "--dataset", "evil", "--wait")
    assert done.returncode == 0, done.stderr
    listed = workbench("datasets")
    assert "\\x1b]0;pwned" in listed.stdout and not raw_bytes(listed.stdout)
    one = workbench("datasets", "evil")
    assert "\\x1b[2J" in one.stdout and not raw_bytes(one.stdout)
    rejects = workbench("sql", "SELECT file, raw_line FROM evil_rejects")
    assert "\\x1b]52;c;" in rejects.stdout and not raw_bytes(rejects.stdout)
    empty = tmp_path / f"empty{TITLE}.csv"
    empty.write_text("")
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        f'[pipeline]\nname = "p"\n[[stage]]\nname = "load"\nkind = "ingest"\nsource = [{json.dumps(str(empty))}]\n'
        'dataset = "e"\n'
    )
    batch = workbench("--batch", str(pipeline))
    assert batch.returncode != 0
    assert "is empty" in batch.stdout + batch.stderr
    assert not raw_bytes(batch.stdout + batch.stderr), batch.stderr
    assert "\\x1b]0;pwned" in batch.stdout + batch.stderr


def test_repeated_column_names_survive_json_and_csv(home: Home) -> None:
    done = workbench("sql", "SELECT 1 AS a, 2 AS a", "--json")
    assert json.loads(done.stdout) == {"a": 1, "a_1": 2}
    assert "a -> a_1" in done.stderr
    joined = workbench("sql", "SELECT x.id, y.id FROM range(1) x(id), (SELECT 5 AS id) y", "--json")
    assert json.loads(joined.stdout) == {"id": 0, "id_1": 5}
    csv_out = workbench("sql", "SELECT 1 AS a, 2 AS a", "--csv")
    assert csv_out.stdout.splitlines()[0] == "a,a_1"


@pytest.mark.parametrize("width", [40, 5000])
def test_wide_results_page_by_columns(home: Home, width: int) -> None:
    select = ", ".join(f"{i} AS column_{i}" for i in range(width))
    done = workbench("sql", f"SELECT {select}", env={"COLUMNS": "160"})
    assert done.returncode == 0, done.stderr
    assert f"of {width:,} shown" in done.stdout and "--columns" in done.stdout
    header = next(line for line in done.stdout.splitlines() if "column_0" in line)
    assert "column_1" in header and "…" not in header
    more = workbench("sql", f"SELECT {select}", "--columns", "12", env={"COLUMNS": "160"})
    assert "columns 12-" in more.stdout and "column_11 " in more.stdout


def test_a_latin1_output_gets_escapes_not_a_traceback(home: Home) -> None:
    done = workbench("sql", "SELECT '東京' AS city", env={"PYTHONIOENCODING": "latin-1"})
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "\\u6771\\u4eac" in done.stdout


async def test_data_screen_cells_and_names_are_escaped(home: Home, client: Client) -> None:
    nasty_dataset(home, client)
    app = WorkbenchApp(Source(home))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("s")
        await run_query(app, pilot, "SELECT * FROM nasty ORDER BY id")
        cells = [c for row in results(app) for c in row]
        assert cells and not any(raw_bytes(c) for c in cells)
        assert "\\x1b]0;pwned\\x07" in cells
        from textual.widgets import DataTable

        table = app.screen.query_one("#results", DataTable)
        labels = [str(c.label) for c in table.columns.values()]
        assert "col\\x1b]0;pwned\\x07" in labels


def _latin1_locale(tmp_path: Path) -> dict[str, str]:
    """A generated en_US.ISO-8859-1 locale (localedef), as environment variables."""
    target = tmp_path / "locale"
    target.mkdir()
    made = subprocess.run(
        ["localedef", "-i", "en_US", "-f", "ISO-8859-1", str(target / "en_US.ISO-8859-1")],
        capture_output=True,
        text=True,
    )
    if not (target / "en_US.ISO-8859-1").exists():
        pytest.fail(f"localedef failed: {made.stderr}")
    return {"LOCPATH": str(target), "LANG": "en_US.ISO-8859-1", "LC_ALL": "en_US.ISO-8859-1"}


@pytest.mark.slow
def test_in_tmux_a_nasty_cell_neither_retitles_nor_clears(
    home: Home, client: Client, tmp_path: Path
) -> None:
    assert shutil.which("tmux"), "tmux is needed (installed by .ci/setup)"
    nasty_dataset(home, client)
    lake.publish_arrow(home, client.store, "cities", pa.table({"city": ["東京"]}))
    locale = _latin1_locale(tmp_path)
    session = f"wb-safe-{int(time.time() * 1000)}"
    script = tmp_path / "run.sh"
    script.write_text(
        "echo BEFORE-MARK\n"
        f"WORKBENCH_HOME={home.root} {sys.executable} -m workbench sql"
        " 'SELECT * FROM nasty ORDER BY id'\n"
        f"env LOCPATH={locale['LOCPATH']} LANG={locale['LANG']} LC_ALL={locale['LC_ALL']}"
        f" WORKBENCH_HOME={home.root} {sys.executable} -m workbench sql"
        " 'SELECT city FROM cities'; echo EXIT=$?\n"
        "sleep 600\n"
    )
    tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "48", f"sh {script}")
    try:
        wait_for(lambda: "EXIT=" in capture(session), timeout=60, what="the queries")
        screen = capture(session)
        assert "BEFORE-MARK" in screen, screen  # the screen was not cleared
        assert "\\x1b]0;pwned\\x07" in screen and "\\x1b[2J" in screen
        assert "EXIT=0" in screen and "Traceback" not in screen
        assert "\\u6771\\u4eac" in screen
        title = tmux("display-message", "-p", "-t", session, "#{pane_title}").stdout
        assert "pwned" not in title
    finally:
        tmux("kill-server", check=False)


@pytest.mark.slow
def test_in_tmux_the_tui_under_a_latin1_locale_says_so(home: Home, tmp_path: Path) -> None:
    assert shutil.which("tmux"), "tmux is needed (installed by .ci/setup)"
    locale = _latin1_locale(tmp_path)
    session = f"wb-latin1-{int(time.time() * 1000)}"
    env = " ".join(f"{k}={v}" for k, v in locale.items())
    command = (
        f"env -u COLUMNS -u LINES {env} WORKBENCH_HOME={home.root} {sys.executable} -m workbench"
        "; echo TUI-EXIT=$?; sleep 600"
    )
    tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40", command)
    try:
        wait_for(lambda: "Dashboard" in capture(session), timeout=30, what="the TUI to draw")
        tmux("send-keys", "-t", session, "q")
        wait_for(lambda: "TUI-EXIT=" in capture(session), timeout=30, what="the TUI to quit")
        screen = capture(session)
        assert "TUI-EXIT=0" in screen and "Traceback" not in screen, screen
        assert "not UTF-8" in screen and "iso8859-1" in screen.lower(), screen
    finally:
        tmux("kill-server", check=False)
