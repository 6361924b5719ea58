"""The Data screen against a real lake: browsing, paged queries with sort and filter pushed down,
errors, sandbox, history, completion, cancel, export, and a 10-million-row first page."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pytest
from conftest import wait_state
from test_tui import until
from textual.widgets import DataTable, TextArea

from screens.app import WorkbenchApp
from screens.data import DataScreen, Query
from screens.source import Source
from workbench.catalog import lake
from workbench.daemon.client import Client
from workbench.paths import Home


def status(app: WorkbenchApp) -> str:
    from rich.console import Console

    console = Console(width=200, record=True, file=io.StringIO())
    console.print(app.screen.query_one("#sql-status").content)
    return console.export_text()


def results(app: WorkbenchApp) -> list[list[str]]:
    table = app.screen.query_one("#results", DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


@pytest.fixture
def data_home(home: Home, client: Client) -> Home:
    table = pa.table(
        {
            "id": list(range(250)),
            "group": [f"g{i % 3}" for i in range(250)],
            "score": [i * 0.5 for i in range(250)],
        }
    )
    lake.publish_arrow(home, client.store, "scores", table)
    return home


async def run_query(app: WorkbenchApp, pilot: Any, sql: str) -> None:
    app.screen.query_one("#sql", TextArea).text = sql
    await pilot.press("ctrl+r")
    await until(
        pilot,
        lambda: "rows" in status(app) or "Error" in status(app) or "only SELECT" in status(app),
        what="the query to finish",
    )


async def test_browse_page_sort_filter(data_home: Home) -> None:
    app = WorkbenchApp(Source(data_home))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("s")
        assert isinstance(app.screen, DataScreen)
        table = app.screen.query_one("#datasets", DataTable)
        await until(pilot, lambda: "scores@v1" in table.rows, what="the dataset list")
        table.focus()
        await pilot.press("enter")
        await until(pilot, lambda: "rows 1-100" in status(app), what="first page")
        assert len(results(app)) == 100 and "F8 next" in status(app)
        await until(pilot, lambda: "rows 1-100 of 250" in status(app), what="the count")
        assert isinstance(app.focused, TextArea)  # opening a dataset: the focus is in the editor
        await pilot.press("f8", "f8")
        await until(pilot, lambda: "rows 201-250 of 250" in status(app), what="third page")
        assert "F8 next" not in status(app)
        await pilot.press("f8")  # past the end: a message, and the page stays
        await pilot.pause()
        assert "rows 201-250 of 250" in status(app) and len(results(app)) == 50
        assert any("last page" in str(n.message) for n in app._notifications)
        reads = []
        real_page_of = Query.page_of

        def counted(self: Query, con: Any) -> Any:
            reads.append(self.page)
            return real_page_of(self, con)

        Query.page_of = counted  # type: ignore[method-assign]
        try:
            await pilot.press("f7")
            await until(pilot, lambda: "rows 101-200" in status(app), what="page 2 again")
        finally:
            Query.page_of = real_page_of  # type: ignore[method-assign]
        assert reads == []  # a page already read is not queried again
        results_table = app.screen.query_one("#results", DataTable)
        results_table.focus()
        results_table.move_cursor(row=0, column=2)
        await pilot.pause()
        await pilot.press("ctrl+o")  # score ascending
        await until(pilot, lambda: "sorted by score asc" in status(app), what="sorted ascending")
        await pilot.press("ctrl+o")  # then descending
        await until(
            pilot, lambda: "sorted by score desc" in status(app), what=f"sorted: {status(app)!r}"
        )
        assert results(app)[0][0] == "249"
        results_table.move_cursor(row=0, column=1)
        await pilot.pause()
        await pilot.press("ctrl+f")
        await until(pilot, lambda: "where group = 'g0'" in status(app), what="filtered")
        assert {row[1] for row in results(app)} == {"g0"}


async def test_errors_sandbox_history_and_completion(data_home: Home, client: Client) -> None:
    app = WorkbenchApp(Source(data_home))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("s")
        await run_query(app, pilot, "SELECT nope FROM scores")
        assert 'Referenced column "nope" not found' in status(app) and "LINE 1" in status(app)
        assert app.screen.query_one("#sql", TextArea).cursor_location == (0, 7)
        await run_query(app, pilot, "COPY scores TO '/tmp/out.csv'")
        assert "only SELECT and EXPLAIN" in status(app)
        await run_query(app, pilot, "SELECT * FROM read_csv('/etc/passwd')")
        assert "Permission Error" in status(app)
        history = [h["sql"] for h in lake.query_history(client.store)]
        assert history[0] == "SELECT * FROM read_csv('/etc/passwd')"
        editor = app.screen.query_one("#sql", TextArea)
        editor.text = ""
        app.screen.load_catalog()
        await pilot.pause(0.3)
        await pilot.press("ctrl+up", "ctrl+up")
        assert editor.text == "COPY scores TO '/tmp/out.csv'"
        editor.text = "SELECT sco"
        editor.cursor_location = (0, 10)
        editor.focus()
        await pilot.press("ctrl+n")
        assert editor.text.startswith("SELECT score")


async def test_typing_a_query_never_fires_screen_keys(data_home: Home) -> None:
    """After a dataset is opened the focus is in the editor: a query holding every global key
    letter (d j s r m q T) and the Queue's (c p x n b f o u) is typed, not obeyed; Esc leaves
    the editor, and only then does `j` switch screens."""
    app = WorkbenchApp(Source(data_home))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("s")
        datasets = app.screen.query_one("#datasets", DataTable)
        await until(pilot, lambda: "scores@v1" in datasets.rows, what="the dataset list")
        assert app.focused is datasets
        await pilot.press("enter")
        editor = app.screen.query_one("#sql", TextArea)
        await until(pilot, lambda: "rows 1-100" in status(app), what="the dataset's rows")
        assert app.focused is editor
        theme = app.theme
        query = (
            'SELECT "group" AS djsrmqT, count(*) AS cpxnbfou FROM scores GROUP BY ALL ORDER BY 1'
        )
        editor.text = ""
        await pilot.press(*query)
        assert isinstance(app.screen, DataScreen) and app.theme == theme
        assert editor.text == query
        await pilot.press("tab")  # indents inside the editor
        assert editor.text.startswith(query + " ") and app.focused is editor
        editor.text = query
        await pilot.press("ctrl+r")
        await until(pilot, lambda: "rows 1-3 of 3" in status(app), what="the typed query's rows")
        assert [
            c.label.plain for c in app.screen.query_one("#results", DataTable).ordered_columns
        ] == [
            "djsrmqT",
            "cpxnbfou",
        ]
        await pilot.press("escape")  # leaves the editor for the results
        assert app.focused is app.screen.query_one("#results", DataTable)
        await pilot.press("shift+tab", "shift+tab")  # back through the panes: editor, datasets
        assert app.focused is datasets
        await pilot.press("j")
        assert type(app.screen).__name__ == "QueueScreen"


async def test_profile_rejects_sidebar_and_errors(data_home: Home) -> None:
    """Profile figures rounded; a key with nothing to do says so; the sidebar hides; an error
    clears the results it replaces; numbers are right-aligned."""
    app = WorkbenchApp(Source(data_home))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("s")
        datasets = app.screen.query_one("#datasets", DataTable)
        await until(pilot, lambda: "scores@v1" in datasets.rows, what="the dataset list")
        await pilot.press("ctrl+j")
        await pilot.pause()
        assert any("rejected no rows" in str(n.message) for n in app._notifications)
        await run_query(app, pilot, "SELECT avg(score) / 3 AS third, 1 AS one FROM scores")
        table = app.screen.query_one("#results", DataTable)
        third = table.get_row_at(0)[0]
        assert third.justify == "right" and str(third) == str(62.25 / 3)
        editor = app.screen.query_one("#sql", TextArea)
        typed = editor.text
        await pilot.press("ctrl+s")  # profile (SUMMARIZE) of the selected dataset, own pane
        profile = app.screen.query_one("#profile", DataTable)
        await until(pilot, lambda: profile.row_count == 3, what="the profile")
        assert editor.text == typed and profile.display and not table.display
        figures = [str(c) for i in range(3) for c in profile.get_row_at(i)]
        decimals = [
            f.split(".")[1]
            for f in figures
            if f.replace(".", "").replace("-", "").isdigit() and "." in f
        ]
        assert decimals and all(len(d) <= 6 for d in decimals), figures
        await pilot.press("ctrl+s")  # again: back to the results, as they were
        assert table.display and not profile.display and table.row_count == 1
        catalog = app.screen.query_one("#catalog")
        await pilot.press("ctrl+b")
        assert not catalog.display
        await pilot.press("ctrl+b")
        assert catalog.display
        await run_query(app, pilot, "SELECT nope FROM scores")
        assert table.row_count == 0 and not table.columns


async def test_cancel_a_long_query(data_home: Home) -> None:
    app = WorkbenchApp(Source(data_home))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("s")
        app.screen.query_one(
            "#sql", TextArea
        ).text = (
            "SELECT count(*) FROM range(10000000000) a, range(1000) b WHERE a.range % 7 = b.range"
        )
        await pilot.press("ctrl+r")
        await until(pilot, lambda: app.screen.running is not None, what="the query to start")  # type: ignore[attr-defined]
        await pilot.press("ctrl+g")
        await until(pilot, lambda: "cancelled" in status(app), timeout=10, what="the cancel")


async def test_export_runs_as_a_queue_job(data_home: Home, client: Client) -> None:
    app = WorkbenchApp(Source(data_home))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("s")
        await run_query(app, pilot, "SELECT * FROM scores WHERE score > 100")
        await pilot.press("ctrl+t")
        job = await until(
            pilot,
            lambda: next(
                (j for j in client.store.list_jobs() if j.name.startswith("export query-")), None
            ),
            what="the export job",
        )
    done = wait_state(client, job.id, {"succeeded", "failed"}, timeout=60)
    assert done.state == "succeeded", done.reason
    written = next((data_home.root / "exports").glob("*.parquet"))
    import pyarrow.parquet as pq

    assert pq.read_table(written).num_rows == 49


@pytest.mark.slow
async def test_first_page_of_ten_million_rows_without_materialising(
    home: Home, client: Client
) -> None:
    import duckdb

    def write(tmp: Path) -> None:
        duckdb.connect().execute(
            f"COPY (SELECT range AS id, range * 2 AS twice, md5(range::VARCHAR) AS h FROM range(10000000)) TO '{tmp / 'part-0.parquet'}' (FORMAT parquet)"
        )

    lake.publish(home, client.store, "big", write)
    app = WorkbenchApp(Source(home))
    process = psutil.Process()
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("s")
        before = process.memory_info().rss
        started = time.perf_counter()
        await run_query(app, pilot, "SELECT * FROM big")
        elapsed = time.perf_counter() - started
        after = process.memory_info().rss
        assert len(results(app)) == 100 and "F8 next" in status(app)
    # 10 million rows of three columns would be gigabytes as Python objects; one page is not.
    assert after - before < 300 * 1024**2, f"memory grew by {(after - before) / 1024**2:.0f} MiB"
    print(f"first page of 10M rows in {elapsed:.2f}s")


async def test_history_holds_this_sessions_queries_and_keeps_the_draft(data_home: Home) -> None:
    """A fresh home: the queries run in this session are the history at once (no "no queries
    yet" after six), consecutive duplicates once; browsing keeps the unsaved text as a draft
    that ctrl+down brings back; ctrl+a selects everything; the editor numbers its lines; the
    catalog lists the store's tables after the datasets and opens them."""
    app = WorkbenchApp(Source(data_home))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("s")
        screen = app.screen
        assert isinstance(screen, DataScreen)
        datasets = screen.query_one("#datasets", DataTable)
        await until(pilot, lambda: "scores@v1" in datasets.rows, what="the dataset list")
        assert {"jobs", "runs", "metrics"} <= {str(k.value) for k in datasets.rows}
        for sql in ("SELECT 1", "SELECT 2", "SELECT 2", "SELECT 3"):
            await run_query(app, pilot, sql)
        editor = screen.query_one("#sql", TextArea)
        assert editor.show_line_numbers
        editor.text = "SELECT id FROM scores WHERE"  # unsaved work
        editor.focus()
        await pilot.press("ctrl+up")
        assert editor.text == "SELECT 3"
        await pilot.press("ctrl+up", "ctrl+up")
        assert editor.text == "SELECT 1"  # SELECT 2 once
        await pilot.press("ctrl+down", "ctrl+down", "ctrl+down")
        assert editor.text == "SELECT id FROM scores WHERE"  # the draft is back
        await pilot.press("ctrl+a")
        assert editor.selected_text == "SELECT id FROM scores WHERE"
        datasets.focus()
        datasets.move_cursor(row=datasets.get_row_index("jobs"))
        await pilot.press("enter")
        await until(pilot, lambda: editor.text == "SELECT * FROM jobs", what="the store table")
        await until(pilot, lambda: "no rows" in status(app) or "rows" in status(app))


def contrast_ratio(fg: tuple[int, int, int], bg: tuple[int, int, int]) -> float:
    """WCAG 2 contrast ratio of two sRGB colours (1.0 to 21.0)."""

    def luminance(values: tuple[int, int, int]) -> float:
        def channel(v: int) -> float:
            c = v / 255
            return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

        r, g, b = (channel(v) for v in values)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    a, b = luminance(fg), luminance(bg)
    return (max(a, b) + 0.05) / (min(a, b) + 0.05)


async def test_editor_title_is_readable_focused_or_not_in_both_themes(home: Home) -> None:
    """The editor's title was drawn in the blurred border's colour on the code editor's own
    background (#191919 on #272822 dark, #d0d1d0 on #272822 light): nearly invisible unfocused.
    The title as rendered reads at 4.5:1 (WCAG AA for text) in both themes, focused or not."""
    from textual.geometry import Region

    app = WorkbenchApp(Source(home), frozen=True)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("s")
        await until(pilot, lambda: bool(app.screen.query("#sql")), what="the data screen")
        editor = app.screen.query_one("#sql", TextArea)
        for theme in ("textual-dark", "textual-light"):
            app.theme = theme
            for focused in (False, True):
                (editor if focused else app.screen.query_one("#datasets")).focus()
                await pilot.pause()
                strip = editor.render_lines(Region(0, 0, editor.outer_size.width, 1))[0]
                title = [s for s in strip if "editor" in s.text]
                assert title, (theme, strip.text)
                style = title[0].style
                assert style is not None and style.color and style.bgcolor
                fg, bg = style.color.get_truecolor(), style.bgcolor.get_truecolor()
                ratio = contrast_ratio(tuple(fg), tuple(bg))
                assert ratio >= 4.5, (theme, focused, fg.hex, bg.hex, ratio)
