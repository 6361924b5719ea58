"""The Data screen: datasets and versions with their schema, column profiles and rejects, and a
SQL editor whose results are paged from DuckDB (sort and filter pushed down as SQL), cancellable,
with history in the store and export of the full result as a queue job."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, Static, TextArea

from screens.widgets import WorkbenchScreen
from workbench.safetext import display_text

PAGE_ROWS = 100
PAGES = Binding.Group("Page", compact=True)
KEYWORDS = (
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP BY",
    "ORDER BY",
    "LIMIT",
    "JOIN",
    "COUNT",
    "SUMMARIZE",
    "DESCRIBE",
    "DISTINCT",
)


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def positioned_error(source: Any, sql: str, message: str) -> str:
    """The relational API reports errors without their position; planning the same statement
    (EXPLAIN binds without running it) gives DuckDB's `LINE n:` and caret, shifted back."""
    import duckdb

    from workbench.catalog import lake

    con = source.read(lambda store: lake.connect(source.home, store, for_sql=sql))
    try:
        con.execute("EXPLAIN " + sql.strip().rstrip(";"))
    except duckdb.Error as error:
        text = str(error)
        if "\nLINE 1: EXPLAIN " in text:
            head, _, tail = text.partition("\nLINE 1: EXPLAIN ")
            line, _, caret = tail.partition("\n")
            return f"{head}\nLINE 1: {line}\n{caret[8:]}"
        return text if "LINE " in text else message
    finally:
        con.close()
    return message


class QueryError(ValueError):
    """A statement the results view cannot page."""


@dataclass
class Query:
    """What the results table shows: the user's SQL plus sort, filters and the page."""

    sql: str
    order: tuple[str, bool] | None = None  # (column, descending)
    filters: list[tuple[str, Any]] = field(default_factory=list)
    page: int = 0

    def paged_sql(self) -> str:
        """The user's query as a subquery: filters and sort pushed down, one page (+1 row to know
        whether there is more) fetched."""
        from workbench.catalog.lake import wrap_user_sql

        wrapped = wrap_user_sql(self.sql)
        if self.filters:
            wrapped += " WHERE " + " AND ".join(
                f"{quote(c)} IS NULL" if v is None else f"{quote(c)} = {literal(v)}"
                for c, v in self.filters
            )
        if self.order is not None:
            wrapped += f" ORDER BY {quote(self.order[0])} {'DESC' if self.order[1] else 'ASC'}"
        return f"{wrapped} LIMIT {PAGE_ROWS + 1} OFFSET {self.page * PAGE_ROWS}"

    def page_of(self, con: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
        """One page through DuckDB's relational API: the user's query is bound as written (so
        error positions match the editor), then filter, order and limit are pushed down."""
        relation = con.sql(self.sql.strip().rstrip(";"))
        if relation is None:
            raise QueryError("this statement returns no rows")
        for column, value in self.filters:
            relation = relation.filter(
                f"{quote(column)} IS NULL"
                if value is None
                else f"{quote(column)} = {literal(value)}"
            )
        if self.order is not None:
            relation = relation.order(
                f"{quote(self.order[0])} {'DESC' if self.order[1] else 'ASC'}"
            )
        relation = relation.limit(PAGE_ROWS + 1, offset=self.page * PAGE_ROWS)
        return list(relation.columns), relation.fetchall()

    def full_sql(self) -> str:
        """The whole result (for export): the same filters and order, no page."""
        return self.paged_sql().rsplit(" LIMIT ", 1)[0]

    def key(self) -> tuple[str, tuple[str, bool] | None, tuple[tuple[str, Any], ...]]:
        """What identifies the result (not the page): pages and the row count are kept per key."""
        return (self.sql, self.order, tuple(self.filters))

    def count_of(self, con: Any) -> int:
        """How many rows the whole result has (filters applied; order does not matter)."""
        relation = con.sql(self.sql.strip().rstrip(";"))
        if relation is None:
            raise QueryError("this statement returns no rows")
        for column, value in self.filters:
            relation = relation.filter(
                f"{quote(column)} IS NULL"
                if value is None
                else f"{quote(column)} = {literal(value)}"
            )
        rows = relation.aggregate("count(*)").fetchall()
        return int(rows[0][0]) if rows else 0


def is_profile(sql: str) -> bool:
    return sql.lstrip().upper().startswith("SUMMARIZE")


def cell(value: Any, profile: bool) -> Text:
    """A result cell: NULL dimmed, numbers right-aligned; a profile's figures (SUMMARIZE gives
    them as text with up to 17 digits) rounded to 6 significant digits."""
    if value is None:
        return Text("NULL", style="dim", justify="right")
    if isinstance(value, bool):
        return Text(str(value))
    if isinstance(value, int | float):
        return Text(
            f"{value:.6g}" if profile and isinstance(value, float) else str(value), justify="right"
        )
    if hasattr(value, "as_integer_ratio") and not isinstance(value, str):  # Decimal
        return Text(str(value), justify="right")
    if profile and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return Text(display_text(value))
        if "." in value or "e" in value.lower():
            return Text(f"{number:.6g}", justify="right")
        return Text(display_text(value), justify="right")
    return Text(display_text(str(value)))  # data is shown, never run by the terminal


class SqlHistory:
    """The editor's history, newest first: the store's (earlier sessions) with this session's
    queries in front as soon as they run, consecutive duplicates dropped. Browsing keeps the
    unsaved text as a draft: going back from it saves it, coming forward past the newest query
    brings it back, and editing a query shown from history makes the edit the new draft."""

    def __init__(self) -> None:
        self.entries: list[str] = []
        self.session: list[str] = []
        self.index = -1  # -1: the draft (not browsing)
        self.draft = ""

    @staticmethod
    def _dedupe(entries: list[str]) -> list[str]:
        out: list[str] = []
        for sql in entries:
            if sql.strip() and (not out or out[-1].strip() != sql.strip()):
                out.append(sql)
        return out

    def load(self, stored: list[str]) -> None:
        """The store's history (newest first), with this session's queries it lacks in front."""
        missing = [sql for sql in self.session if sql not in stored]
        self.entries = self._dedupe(missing + stored)
        self.index = min(self.index, len(self.entries) - 1)

    def record(self, sql: str) -> None:
        """A query was run: it is the newest entry, and browsing starts again from the draft."""
        self.session.insert(0, sql)
        self.entries = self._dedupe([sql, *self.entries])
        self.index, self.draft = -1, ""

    def browse(self, step: int, text: str) -> str | None:
        """The text to show after moving `step` back (1) or forward (-1) from what the editor
        holds (`text`); None at either end."""
        shown = self.entries[self.index] if self.index >= 0 else self.draft
        if text != shown:  # edited: the edit is the draft, browsing restarts from it
            self.index, self.draft = -1, text
        elif self.index == -1:
            self.draft = text
        index = self.index + step
        if index < -1 or index >= len(self.entries):
            return None
        self.index = index
        return self.entries[index] if index >= 0 else self.draft


class SqlEditor(TextArea):
    """The SQL editor: Textual's code editor with ctrl+a selecting everything (as harlequin and
    most editors do; Home still goes to the line start)."""

    BINDINGS = [
        Binding("ctrl+a", "select_all", "Select all", id="editor.select_all", show=False),
    ]


@dataclass
class CatalogRead(Message):
    datasets: list[Any]
    columns: dict[str, list[tuple[str, str]]]
    history: list[str]
    store_tables: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class ProfileRead(Message):
    """SUMMARIZE of one dataset, for the profile pane (or the error)."""

    name: str
    columns: list[str]
    rows: list[tuple[Any, ...]]
    error: str | None = None


@dataclass
class PageRead(Message):
    generation: int
    query: Query
    columns: list[str]
    rows: list[tuple[Any, ...]]
    seconds: float
    error: str | None = None


@dataclass
class CountRead(Message):
    """The row count of a result, counted after its first page was shown."""

    key: Any
    total: int | None


class DataScreen(WorkbenchScreen):
    """Datasets on the left, the SQL editor and paged results on the right."""

    TITLE_NAME = "Data"

    AUTO_FOCUS = "#datasets"
    BINDINGS = [
        Binding(
            "ctrl+r,ctrl+enter", "run", "Run", id="data.run", tooltip="Run the query (first page)"
        ),
        Binding("ctrl+g", "cancel", "Cancel", id="data.cancel", tooltip="Stop the running query"),
        Binding(
            "ctrl+n",
            "complete",
            "Compl",
            id="data.complete",
            show=False,
            tooltip="Complete a dataset, column or keyword",
        ),
        Binding(
            "ctrl+up",
            "history(1)",
            "History",
            id="data.history_back",
            show=False,
            tooltip="The previous query from history",
        ),
        Binding(
            "ctrl+down",
            "history(-1)",
            "History",
            id="data.history_forward",
            tooltip="The next query from history",
            show=False,
        ),
        # Priority: the editor binds F7 to "select all"; here it pages wherever the focus is.
        Binding(
            "f8",
            "page(1)",
            "Page+",
            id="data.next_page",
            group=PAGES,
            tooltip="Next page of results",
            priority=True,
        ),
        Binding(
            "f7",
            "page(-1)",
            "Page-",
            id="data.prev_page",
            group=PAGES,
            tooltip="Previous page of results",
            priority=True,
        ),
        Binding(
            "ctrl+b",
            "toggle_sidebar",
            "Sidebar",
            id="data.sidebar",
            tooltip="Hide or show the datasets sidebar (more room for results)",
        ),
        Binding(
            "ctrl+o",
            "sort",
            "Sort",
            id="data.sort",
            tooltip="Sort by the results column under the cursor (again: descending)",
        ),
        Binding(
            "ctrl+f",
            "filter",
            "Filter",
            id="data.filter",
            tooltip="Keep rows equal to the value under the cursor",
        ),
        Binding(
            "ctrl+l",
            "clear_filters",
            "Unfilter",
            id="data.clear",
            tooltip="Drop sort and filters",
            show=False,
        ),
        Binding(
            "ctrl+s",
            "profile",
            "Profile",
            id="data.profile",
            tooltip="Profile the selected dataset (SUMMARIZE)",
        ),
        Binding(
            "ctrl+j",
            "rejects",
            "Rejects",
            id="data.rejects",
            show=False,
            tooltip="Rows the selected dataset's ingest rejected",
        ),
        Binding(
            "ctrl+e",
            "export('csv')",
            "CSV",
            id="data.export_csv",
            show=False,
            tooltip="Write the full result to CSV (a queue job)",
        ),
        Binding(
            "ctrl+t",
            "export('parquet')",
            "Parquet",
            id="data.export_parquet",
            show=False,
            tooltip="Write the full result to Parquet (a queue job)",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.query_state: Query | None = None
        self.columns: dict[str, list[tuple[str, str]]] = {}
        self.datasets: list[Any] = []
        self.history = SqlHistory()
        self.store_tables: dict[str, list[str]] = {}
        self.running: Any = None
        self.result_columns: list[str] = []
        self.generation = 0  # only the newest request's page is shown
        # Pages already read, per result and page number (a result's pages are read once), and
        # row counts per result (None while counting).
        self.pages: dict[tuple[Any, int], tuple[list[str], list[tuple[Any, ...]]]] = {}
        self.totals: dict[Any, int | None] = {}
        self.more = False
        self.page_rows: list[tuple[Any, ...]] = []  # the raw values shown (for sort and filter)
        self.last_rows, self.last_seconds = 0, 0.0

    def compose(self) -> ComposeResult:
        yield self.title_bar()
        with Horizontal(id="data"):
            with Vertical(id="catalog"):
                datasets: DataTable[Any] = DataTable(id="datasets", cursor_type="row")
                datasets.border_title = "datasets"
                yield datasets
                yield Static(id="schema")
            with Vertical(id="workspace"):
                editor = SqlEditor.code_editor(
                    "", language="sql", id="sql", soft_wrap=True, show_line_numbers=True
                )
                editor.border_title = "editor"
                yield editor
                yield Static(id="sql-status")
                results: DataTable[Any] = DataTable(id="results", zebra_stripes=True)
                results.border_title = "results"
                yield results
                profile: DataTable[Any] = DataTable(id="profile", zebra_stripes=True)
                profile.border_title = "profile"
                profile.display = False
                yield profile
        yield self.bottom_bar()

    def on_mount(self) -> None:
        table = self.query_one("#datasets", DataTable)
        for column in ("dataset", "ver", "rows"):
            table.add_column(column, key=column)
        self.load_catalog()

    def on_screen_resume(self) -> None:
        self.load_catalog()

    def on_resize(self) -> None:
        self.set_class(self.size.width < 110, "narrow")
        self.set_class(self.size.height < 32, "short")

    # ---- catalog ---------------------------------------------------------------------

    @work(
        thread=True,
        exclusive=True,
        exit_on_error=False,
        group="catalog",
        description="read the catalog",
    )
    def load_catalog(self) -> None:
        from workbench.catalog import lake
        from workbench.db.catalog import exposed_columns

        source = self.app.source  # type: ignore[attr-defined]
        infos, recent, tables = source.read(
            lambda store: (
                lake.versions(store),
                lake.query_history(store, 200),
                exposed_columns(store),
            )
        )
        columns: dict[str, list[tuple[str, str]]] = {}
        for info in infos:
            columns[f"{info.dataset}@v{info.version}"] = info.schema
            columns[info.dataset] = info.schema
        history = [h["sql"] for h in recent]
        self.post_message(CatalogRead(infos, columns, history, tables))

    def on_catalog_read(self, message: CatalogRead) -> None:
        self.datasets, self.columns = message.datasets, message.columns
        self.history.load(message.history)
        self.store_tables = message.store_tables
        for name, names in message.store_tables.items():
            self.columns.setdefault(name, [(c, "") for c in names])
        table = self.query_one("#datasets", DataTable)
        keep = table.cursor_row
        table.clear()
        for info in message.datasets:
            table.add_row(
                info.dataset,
                f"v{info.version}",
                f"{info.rows:,}",
                key=f"{info.dataset}@v{info.version}",
            )
        for name in message.store_tables:  # the store's own tables, read-only, after the lake
            table.add_row(Text(name, style="italic"), Text("store", style="dim"), "", key=name)
        if 0 < keep < table.row_count:
            table.move_cursor(row=keep)
        if not message.datasets:
            self.query_one("#schema", Static).update(
                Text("no datasets yet: workbench ingest FILE --dataset NAME", style="dim")
            )

    def selected_dataset(self) -> Any:
        table = self.query_one("#datasets", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((d for d in self.datasets if f"{d.dataset}@v{d.version}" == key), None)

    def selected_store_table(self) -> str | None:
        table = self.query_one("#datasets", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return key if key in self.store_tables else None

    @on(DataTable.RowHighlighted, "#datasets")
    def show_schema(self) -> None:
        info = self.selected_dataset()
        store_table = self.selected_store_table()
        if store_table is not None:
            text = Text(f"{store_table}", style="bold")
            text.append("  the store's table (read-only)\n", style="dim")
            for name in self.store_tables[store_table]:
                text.append(f"{name}\n", style="cyan")
            self.query_one("#schema", Static).update(text)
            return
        if info is None:
            return
        text = Text()
        text.append(f"{info.dataset} v{info.version}\n", style="bold")
        text.append(f"{info.rows:,} rows, {info.rejected_rows:,} rejected\n", style="dim")
        for name, kind in info.schema:
            text.append(display_text(name), style="cyan")
            text.append(f"  {display_text(kind)}\n", style="dim")
        self.query_one("#schema", Static).update(text)

    @on(DataTable.RowSelected, "#datasets")
    def query_selected(self) -> None:
        """Open a dataset: its rows in the results, the focus in the editor (to refine it)."""
        info = self.selected_dataset()
        store_table = self.selected_store_table()
        if store_table is not None:
            self.run_sql(f"SELECT * FROM {store_table}")
        if info is not None:
            latest = max(v.version for v in self.datasets if v.dataset == info.dataset)
            name = info.dataset if info.version == latest else f"{info.dataset}@v{info.version}"
            self.run_sql(f"SELECT * FROM {quote(name)}")
        if info is not None or store_table is not None:
            editor = self.query_one("#sql", TextArea)
            editor.focus()
            editor.move_cursor(editor.document.end)

    def action_toggle_sidebar(self) -> None:
        catalog = self.query_one("#catalog")
        catalog.display = not catalog.display
        if not catalog.display and self.focused is not None and self.focused.id == "datasets":
            self.query_one("#sql", TextArea).focus()
        self.notify(f"sidebar {'shown' if catalog.display else 'hidden'} (ctrl+b)", timeout=1.5)

    # ---- running queries -------------------------------------------------------------

    def run_sql(self, sql: str) -> None:
        """Put `sql` in the editor and run it (used by other screens, e.g. Models' errors key)."""
        self.query_one("#sql", TextArea).text = sql
        self.action_run()

    def action_run(self) -> None:
        sql = self.query_one("#sql", TextArea).text.strip()
        if not sql:
            self.notify("write a query first", severity="warning")
            return
        self.query_state = Query(sql)
        self.history.record(sql)
        self.show_results()
        self.fetch(self.query_state, record=True)

    def fetch(self, query: Query, record: bool = False) -> None:
        """Show a page of `query` as it is now (a copy: later key presses make new requests):
        from the pages already read, else read by a worker."""
        self.generation += 1
        copy = replace(query, filters=list(query.filters))
        if record:  # run again: the data may have changed
            self.pages = {k: v for k, v in self.pages.items() if k[0] != copy.key()}
            self.totals.pop(copy.key(), None)
        cached = self.pages.get((copy.key(), copy.page))
        if cached is not None:
            self.on_page_read(PageRead(self.generation, copy, cached[0], cached[1], 0.0))
            return
        self._fetch(self.generation, copy, record)

    @work(thread=True, exit_on_error=False, group="count", description="count the rows")
    def _count(self, query: Query) -> None:
        import duckdb

        from workbench.catalog import lake

        source = self.app.source  # type: ignore[attr-defined]
        try:
            limits = lake.settings(source.home)
            con = source.read(
                lambda store: lake.connect(source.home, store, for_sql=query.sql, limits=limits)
            )
            try:
                total: int | None = query.count_of(con)
            finally:
                con.close()
        except (duckdb.Error, QueryError, AttributeError, lake.LakeError):
            total = -1  # could not count: the status says so instead of "counting"
        self.post_message(CountRead(query.key(), total))

    def on_count_read(self, message: CountRead) -> None:
        self.totals[message.key] = message.total
        if self.query_state is not None and self.query_state.key() == message.key:
            self.show_page_status(self.query_state, self.last_rows, self.last_seconds)

    @work(thread=True, exit_on_error=False, group="query", description="run a query")
    def _fetch(self, generation: int, query: Query, record: bool) -> None:
        import duckdb

        from workbench.catalog import lake

        source = self.app.source  # type: ignore[attr-defined]
        started = time.perf_counter()
        self.app.call_from_thread(
            self.set_status, Text("running... (ctrl+g cancels)", style="yellow")
        )
        deadline = None
        try:
            limits = lake.settings(source.home)
            con = source.read(
                lambda store: lake.connect(source.home, store, for_sql=query.sql, limits=limits)
            )
            self.running = con
            try:
                lake.check_read_only(con, query.sql)
                with lake.Deadline(con, limits) as deadline:
                    columns, rows = query.page_of(con)
            finally:
                self.running = None
                con.close()
        except (duckdb.Error, lake.QueryRefused, QueryError, ValueError) as error:
            stopped = deadline.explain(error) if deadline is not None else None
            message = "cancelled" if isinstance(error, duckdb.InterruptException) else str(error)
            if stopped is not None and str(stopped) != "interrupted":
                message = str(stopped)  # the time or memory limit, in words
            if (
                isinstance(error, duckdb.Error)
                and "LINE " not in message
                and not isinstance(error, duckdb.InterruptException)
            ):
                message = positioned_error(source, query.sql, message)
            if record:
                source.read(lambda store: lake.record_query(store, query.sql, None, None, message))
            self.post_message(
                PageRead(generation, query, [], [], time.perf_counter() - started, message)
            )
            return
        seconds = time.perf_counter() - started
        if record:
            count = len(rows)
            source.read(lambda store: lake.record_query(store, query.sql, seconds, count, None))
        self.post_message(PageRead(generation, query, columns, rows, seconds))

    def on_page_read(self, message: PageRead) -> None:
        if message.generation != self.generation:
            return  # an older request finished after a newer one was made
        table = self.query_one("#results", DataTable)
        if message.error is not None:
            with self.app.batch_update():
                table.clear(columns=True)  # no stale rows under an error
            self.result_columns = []
            self.page_rows = []
            self.more = False
            self.set_status(Text(display_text(message.error), style="bold red"))
            self.move_to_error(message.error)
            return
        query = message.query
        self.pages[(query.key(), query.page)] = (message.columns, message.rows)
        self.more = len(message.rows) > PAGE_ROWS
        rows = message.rows[:PAGE_ROWS]
        if not self.more and query.key() not in self.totals:
            self.totals[query.key()] = query.page * PAGE_ROWS + len(rows)
        elif query.key() not in self.totals:
            self.totals[query.key()] = None
            self._count(query)
        keep = self._cursor_cell()
        profile = is_profile(query.sql)
        with self.app.batch_update():
            table.clear(columns=True)
            self.result_columns = message.columns
            for column in message.columns:
                table.add_column(Text(display_text(column)), key=column)
            for row in rows:
                table.add_row(*[cell(v, profile) for v in row])
            if keep is not None and keep[0] in message.columns:  # stay on the column (sort again)
                table.move_cursor(row=0, column=message.columns.index(keep[0]))
        self.page_rows = rows
        self.last_rows, self.last_seconds = len(rows), message.seconds
        self.show_page_status(query, len(rows), message.seconds)

    def show_page_status(self, query: Query, shown: int, seconds: float) -> None:
        """`rows 1-100 of 2,500 (F8 more)  12 ms  sorted by ...`; `of ...` while counting."""
        first = query.page * PAGE_ROWS + 1
        total = self.totals.get(query.key())
        status = Text(f"rows {first:,}-{first + shown - 1:,}" if shown else "no rows")
        if shown:
            if total is None:
                status.append(" of ... (counting)")
            elif total >= 0:
                status.append(f" of {total:,}")
        if self.more:
            status.append("  F8 next", style="dim")
        if query.page:
            status.append("  F7 previous", style="dim")
        if not getattr(self.app, "frozen", False):  # snapshots must not depend on timing
            status.append(f"  {seconds * 1000:.0f} ms", style="dim")
        if query.order:
            status.append(
                f"  sorted by {query.order[0]} {'desc' if query.order[1] else 'asc'}",
                style="magenta",
            )
        if query.filters:
            status.append(
                "  where " + " and ".join(f"{c} = {literal(v)}" for c, v in query.filters),
                style="magenta",
            )
        self.set_status(status)

    def set_status(self, text: Text) -> None:
        self.query_one("#sql-status", Static).update(text)

    def move_to_error(self, error: str) -> None:
        """DuckDB marks the error under `LINE n:`; put the editor's cursor there."""
        match = re.search(r"LINE (\d+): (.*)\n( *)\^", error)
        if match:
            line = int(match.group(1)) - 1
            column = len(match.group(3)) - len(f"LINE {match.group(1)}: ")
            editor = self.query_one("#sql", TextArea)
            editor.cursor_location = (line, max(0, column))

    def action_cancel(self) -> None:
        running = self.running
        if running is not None:
            running.interrupt()
        else:
            self.notify("no query is running", severity="warning")

    def action_page(self, step: int) -> None:
        if self.query_state is None:
            self.notify("no results to page: run a query first (ctrl+r)", severity="warning")
            return
        if step > 0 and not self.more:
            self.notify("this is the last page", timeout=2)
            return
        if step < 0 and self.query_state.page == 0:
            self.notify("this is the first page", timeout=2)
            return
        self.query_state.page = max(0, self.query_state.page + step)
        self.fetch(self.query_state)

    def _cursor_cell(self) -> tuple[str, Any] | None:
        """(column, raw value) under the results cursor."""
        table = self.query_one("#results", DataTable)
        if self.query_state is None or table.row_count == 0 or not self.result_columns:
            return None
        row, column = table.cursor_coordinate
        if row >= len(self.page_rows) or column >= len(self.result_columns):
            return None
        return self.result_columns[column], self.page_rows[row][column]

    def action_sort(self) -> None:
        cell = self._cursor_cell()
        if cell is None or self.query_state is None:
            self.notify("no results to sort: run a query first", severity="warning")
            return
        column = cell[0]
        descending = self.query_state.order == (column, False)
        self.query_state.order = (column, descending)
        self.query_state.page = 0
        self.fetch(self.query_state)

    def action_filter(self) -> None:
        cell = self._cursor_cell()
        if cell is None or self.query_state is None:
            self.notify("no results to filter: run a query first", severity="warning")
            return
        # The cell is shown as text; DuckDB casts the literal to the column's type.
        self.query_state.filters.append(cell)
        self.query_state.page = 0
        self.fetch(self.query_state)

    def action_clear_filters(self) -> None:
        if self.query_state is None or not (self.query_state.filters or self.query_state.order):
            self.notify("no sort or filter to drop", timeout=2)
            return
        self.query_state = Query(self.query_state.sql)
        self.fetch(self.query_state)

    def action_profile(self) -> None:
        """The selected dataset's column profile (SUMMARIZE) in its own pane, in place of the
        results until ctrl+s again (or a query) brings them back; the editor keeps its text."""
        profile = self.query_one("#profile", DataTable)
        if profile.display:
            self.show_results()
            return
        info = self.selected_dataset()
        store_table = self.selected_store_table()
        if info is None and store_table is None:
            self.notify("select a dataset to profile first", severity="warning")
            return
        name = store_table or quote(f"{info.dataset}@v{info.version}")
        shown = store_table or f"{info.dataset} v{info.version}"
        profile.border_title = f"profile of {shown} (ctrl+s: back to results)"
        profile.clear(columns=True)
        self.query_one("#results").display = False
        profile.display = True
        self.read_profile(shown, f"SUMMARIZE SELECT * FROM {name}")

    def show_results(self) -> None:
        self.query_one("#profile").display = False
        self.query_one("#results").display = True

    @work(thread=True, exclusive=True, exit_on_error=False, group="profile", description="profile")
    def read_profile(self, shown: str, sql: str) -> None:
        import duckdb

        from workbench.catalog import lake

        source = self.app.source  # type: ignore[attr-defined]
        try:
            con = source.read(lambda store: lake.connect(source.home, store, for_sql=sql))
            try:
                relation = con.sql(sql)
                columns, rows = list(relation.columns), relation.fetchall()
            finally:
                con.close()
        except (duckdb.Error, lake.QueryRefused, lake.LakeError) as error:
            self.post_message(ProfileRead(shown, [], [], str(error)))
            return
        self.post_message(ProfileRead(shown, columns, rows))

    def on_profile_read(self, message: ProfileRead) -> None:
        profile = self.query_one("#profile", DataTable)
        if message.error is not None:
            self.set_status(Text(f"profile of {message.name}: {message.error}", style="bold red"))
            return
        with self.app.batch_update():
            profile.clear(columns=True)
            for column in message.columns:
                profile.add_column(column, key=column)
            for row in message.rows:
                profile.add_row(*[cell(v, True) for v in row])

    def action_rejects(self) -> None:
        info = self.selected_dataset()
        if info is None:
            self.notify("select a dataset first", severity="warning")
            return
        if not info.rejected_rows:
            self.notify(f"{info.dataset} v{info.version}: its ingest rejected no rows", timeout=3)
            return
        self.run_sql(f"SELECT * FROM {quote(f'{info.dataset}@v{info.version}_rejects')}")

    def action_history(self, step: int) -> None:
        """ctrl+up: the previous query (this session's first); ctrl+down: the next, and past the
        newest the text that was in the editor before browsing."""
        if not self.history.entries:
            self.notify("no queries in the history yet", timeout=2)
            return
        editor = self.query_one("#sql", TextArea)
        text = self.history.browse(step, editor.text)
        if text is None:
            where = "oldest query" if step > 0 else "newest: your draft"
            self.notify(f"history: at the {where}", timeout=1.5)
            return
        editor.text = text
        editor.move_cursor(editor.document.end)

    def action_complete(self) -> None:
        """Complete the word before the cursor from dataset names, their columns and keywords."""
        editor = self.query_one("#sql", TextArea)
        row, column = editor.cursor_location
        line = editor.document.get_line(row)
        match = re.search(r"[\w@]+$", line[:column])
        prefix = match.group(0) if match else ""
        names = sorted(
            {*self.columns, *(c for cols in self.columns.values() for c, _ in cols), *KEYWORDS}
        )
        options = [n for n in names if n.lower().startswith(prefix.lower()) and n != prefix]
        if not options:
            self.notify(f"nothing completes {prefix!r}", severity="warning", timeout=2)
            return
        common = options[0]
        for option in options[1:]:
            while not option.lower().startswith(common.lower()):
                common = common[:-1]
        completion = options[0] if len(options) == 1 else common
        if len(completion) > len(prefix):
            editor.insert(completion[len(prefix) :])
        if len(options) > 1:
            self.set_status(
                Text("  ".join(options[:12]) + ("  ..." if len(options) > 12 else ""), style="cyan")
            )

    def action_export(self, fmt: str) -> None:
        if self.query_state is None:
            self.notify("run a query first", severity="warning")
            return
        self.submit_export(self.query_state.full_sql(), fmt)

    @work(thread=True, exit_on_error=False, group="actions", description="export")
    def submit_export(self, sql: str, fmt: str) -> None:
        from pathlib import Path

        from workbench.queue.requests import build_request

        source = self.app.source  # type: ignore[attr-defined]
        target = source.home.root / "exports" / f"query-{time.strftime('%Y%m%d-%H%M%S')}.{fmt}"
        argv = [sys.executable, "-m", "workbench", "sql", sql, "--out", str(target)]
        try:
            request = build_request(
                {"kind": "command", "argv": argv, "name": f"export {target.name}"},
                Path.cwd(),
                "export",
            )
            job_id = source.act(lambda client: client.submit(request))
        except Exception as error:
            self.app.call_from_thread(self.notify, f"export failed: {error}", severity="error")
            return
        self.app.call_from_thread(self.notify, f"job {job_id} writes {target}", timeout=5)
