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
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static, TextArea

PAGE_ROWS = 100
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

    con = lake.connect(source.home, source.store(), for_sql=sql)
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


@dataclass
class CatalogRead(Message):
    datasets: list[Any]
    columns: dict[str, list[tuple[str, str]]]
    history: list[str]


@dataclass
class PageRead(Message):
    generation: int
    query: Query
    columns: list[str]
    rows: list[tuple[Any, ...]]
    seconds: float
    error: str | None = None


class DataScreen(Screen[None]):
    """Datasets on the left, the SQL editor and paged results on the right."""

    AUTO_FOCUS = "#sql"
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
            tooltip="Complete a dataset, column or keyword",
        ),
        Binding(
            "ctrl+up",
            "history(1)",
            "History",
            id="data.history_back",
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
        Binding("f8", "page(1)", "Page+", id="data.next_page", tooltip="Next page of results"),
        Binding("f7", "page(-1)", "Page-", id="data.prev_page", tooltip="Previous page of results"),
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
            tooltip="Rows the selected dataset's ingest rejected",
        ),
        Binding(
            "ctrl+e",
            "export('csv')",
            "CSV",
            id="data.export_csv",
            tooltip="Write the full result to CSV (a queue job)",
        ),
        Binding(
            "ctrl+t",
            "export('parquet')",
            "Parquet",
            id="data.export_parquet",
            tooltip="Write the full result to Parquet (a queue job)",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.query_state: Query | None = None
        self.columns: dict[str, list[tuple[str, str]]] = {}
        self.datasets: list[Any] = []
        self.history: list[str] = []
        self.history_index = -1
        self.running: Any = None
        self.result_columns: list[str] = []
        self.generation = 0  # only the newest request's page is shown

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="data"):
            with Vertical(id="catalog"):
                yield DataTable(id="datasets", cursor_type="row")
                yield Static(id="schema")
            with Vertical(id="workspace"):
                yield TextArea.code_editor(
                    "", language="sql", id="sql", soft_wrap=True, show_line_numbers=False
                )
                yield Static(id="sql-status")
                yield DataTable(id="results", zebra_stripes=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one("#datasets", DataTable)
        for column in ("dataset", "ver", "rows"):
            table.add_column(column, key=column)
        self.load_catalog()

    def on_screen_resume(self) -> None:
        self.load_catalog()

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

        store = self.app.source.store()  # type: ignore[attr-defined]
        infos = lake.versions(store)
        columns: dict[str, list[tuple[str, str]]] = {}
        for info in infos:
            columns[f"{info.dataset}@v{info.version}"] = info.schema
            columns[info.dataset] = info.schema
        history = [h["sql"] for h in lake.query_history(store, 200)]
        self.post_message(CatalogRead(infos, columns, history))

    def on_catalog_read(self, message: CatalogRead) -> None:
        self.datasets, self.columns, self.history = (
            message.datasets,
            message.columns,
            message.history,
        )
        table = self.query_one("#datasets", DataTable)
        table.clear()
        for info in message.datasets:
            table.add_row(
                info.dataset,
                f"v{info.version}",
                str(info.rows),
                key=f"{info.dataset}@v{info.version}",
            )
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

    @on(DataTable.RowHighlighted, "#datasets")
    def show_schema(self) -> None:
        info = self.selected_dataset()
        if info is None:
            return
        text = Text()
        text.append(f"{info.dataset} v{info.version}\n", style="bold")
        text.append(f"{info.rows} rows, {info.rejected_rows} rejected\n", style="dim")
        for name, kind in info.schema:
            text.append(f"{name}", style="cyan")
            text.append(f"  {kind}\n", style="dim")
        self.query_one("#schema", Static).update(text)

    @on(DataTable.RowSelected, "#datasets")
    def query_selected(self) -> None:
        info = self.selected_dataset()
        if info is not None:
            latest = max(v.version for v in self.datasets if v.dataset == info.dataset)
            name = info.dataset if info.version == latest else f"{info.dataset}@v{info.version}"
            self.run_sql(f"SELECT * FROM {quote(name)}")

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
        self.history_index = -1
        self.fetch(self.query_state, record=True)

    def fetch(self, query: Query, record: bool = False) -> None:
        """Fetch a page of `query` as it is now (a copy: later key presses make new requests)."""
        self.generation += 1
        self._fetch(self.generation, replace(query, filters=list(query.filters)), record)

    @work(thread=True, exit_on_error=False, group="query", description="run a query")
    def _fetch(self, generation: int, query: Query, record: bool) -> None:
        import duckdb

        from workbench.catalog import lake

        source = self.app.source  # type: ignore[attr-defined]
        store = source.store()
        started = time.perf_counter()
        self.app.call_from_thread(
            self.set_status, Text("running... (ctrl+g cancels)", style="yellow")
        )
        deadline = None
        try:
            limits = lake.settings(source.home)
            con = lake.connect(source.home, store, for_sql=query.sql, limits=limits)
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
                lake.record_query(store, query.sql, None, None, message)
            self.post_message(
                PageRead(generation, query, [], [], time.perf_counter() - started, message)
            )
            return
        seconds = time.perf_counter() - started
        if record:
            lake.record_query(store, query.sql, seconds, len(rows), None)
        self.post_message(PageRead(generation, query, columns, rows, seconds))

    def on_page_read(self, message: PageRead) -> None:
        if message.generation != self.generation:
            return  # an older request finished after a newer one was made
        if message.error is not None:
            self.set_status(Text(message.error, style="bold red"))
            self.move_to_error(message.error)
            return
        table = self.query_one("#results", DataTable)
        more = len(message.rows) > PAGE_ROWS
        rows = message.rows[:PAGE_ROWS]
        keep = self._cursor_cell()
        with self.app.batch_update():
            table.clear(columns=True)
            self.result_columns = message.columns
            for column in message.columns:
                table.add_column(column, key=column)
            for row in rows:
                table.add_row(*["NULL" if v is None else str(v) for v in row])
            if keep is not None and keep[0] in message.columns:  # stay on the column (sort again)
                table.move_cursor(row=0, column=message.columns.index(keep[0]))
        query = message.query
        first = query.page * PAGE_ROWS + 1
        status = Text(f"rows {first}-{first + len(rows) - 1}" if rows else "no rows")
        status.append(" (more: F8)" if more else "", style="dim")
        if not getattr(self.app, "frozen", False):  # snapshots must not depend on timing
            status.append(f"  {message.seconds * 1000:.0f} ms", style="dim")
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
            return
        self.query_state.page = max(0, self.query_state.page + step)
        self.fetch(self.query_state)

    def _cursor_cell(self) -> tuple[str, Any] | None:
        table = self.query_one("#results", DataTable)
        if self.query_state is None or table.row_count == 0 or not self.result_columns:
            return None
        column = table.cursor_coordinate.column
        name = self.result_columns[column]
        value = table.get_cell_at(table.cursor_coordinate)
        return name, (None if value == "NULL" else value)

    def action_sort(self) -> None:
        cell = self._cursor_cell()
        if cell is None or self.query_state is None:
            return
        column = cell[0]
        descending = self.query_state.order == (column, False)
        self.query_state.order = (column, descending)
        self.query_state.page = 0
        self.fetch(self.query_state)

    def action_filter(self) -> None:
        cell = self._cursor_cell()
        if cell is None or self.query_state is None:
            return
        # The cell is shown as text; DuckDB casts the literal to the column's type.
        self.query_state.filters.append(cell)
        self.query_state.page = 0
        self.fetch(self.query_state)

    def action_clear_filters(self) -> None:
        if self.query_state is not None:
            self.query_state = Query(self.query_state.sql)
            self.fetch(self.query_state)

    def action_profile(self) -> None:
        info = self.selected_dataset()
        if info is not None:
            self.run_sql(f"SUMMARIZE SELECT * FROM {quote(f'{info.dataset}@v{info.version}')}")

    def action_rejects(self) -> None:
        info = self.selected_dataset()
        if info is None:
            return
        if not info.rejected_rows:
            self.notify(f"{info.dataset} v{info.version} has no rejected rows")
            return
        self.run_sql(f"SELECT * FROM {quote(f'{info.dataset}@v{info.version}_rejects')}")

    def action_history(self, step: int) -> None:
        if not self.history:
            return
        self.history_index = max(-1, min(len(self.history) - 1, self.history_index + step))
        text = self.history[self.history_index] if self.history_index >= 0 else ""
        self.query_one("#sql", TextArea).text = text

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
            job_id = source.client().submit(request)
        except Exception as error:
            self.app.call_from_thread(self.notify, f"export failed: {error}", severity="error")
            return
        self.app.call_from_thread(self.notify, f"job {job_id} writes {target}", timeout=5)
