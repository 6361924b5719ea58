"""The Data screen under the SQL limits: a query past the statement time limit or the memory
limit ends with a message in the status line, not a traceback; export keeps a trailing comment."""

from __future__ import annotations

import pyarrow as pa
from test_data_screen import run_query, status
from test_tui import until
from textual.widgets import TextArea

from screens.app import WorkbenchApp
from screens.source import Source
from workbench.catalog import lake
from workbench.daemon.client import Client
from workbench.paths import Home


async def test_time_and_memory_limits_end_with_a_message(home: Home, client: Client) -> None:
    lake.publish_arrow(home, client.store, "scores", pa.table({"id": [1, 2, 3]}))
    home.config.write_text('[sql]\ntimeout = "1s"\n')
    app = WorkbenchApp(Source(home))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("s")
        app.screen.query_one(
            "#sql", TextArea
        ).text = "SELECT count(*) FROM range(100000000) a, range(100000000) b"
        await pilot.press("ctrl+r")
        await until(
            pilot,
            lambda: "running" not in status(app) and status(app).strip(),
            timeout=60,
            what="the query to end",
        )
        assert "stopped after 1.0s, the statement time limit" in status(app), status(app)
        home.config.write_text(
            '[sql]\nmemory_limit = "64MiB"\nspill_limit = "64MiB"\n'
        )  # per query
        app.screen.query_one("#sql", TextArea).text = "SELECT list(range) FROM range(100000000)"
        await pilot.press("ctrl+r")
        await until(pilot, lambda: "memory limit" in status(app), timeout=60, what=status(app))
        await run_query(app, pilot, "SELECT * FROM scores -- all of them")
        assert "rows 1-3" in status(app)
