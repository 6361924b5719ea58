"""How the TUI looks, at 80x24, 160x48 and 200x60 in the dark and the light theme: SVG
snapshots of the Dashboard (two fake GPUs, one busy with a queue job's process; no GPU), the
Queue with jobs in every state, the job detail, the submit form, the help, the Data, Runs and
Models screens."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from tui_data import (
    EVENTS,
    JOBS,
    LOGS,
    NOW,
    PROCESSES,
    fake_gpu_snapshot,
    history,
    no_gpu_snapshot,
)

from screens.app import WorkbenchApp
from screens.source import FixedSource

SIZES = [(80, 24), (160, 48), (200, 60)]
THEMES = ["dark", "light"]
VIEWS = [(size, theme) for size in SIZES for theme in THEMES]
VIEW_IDS = [f"{w}x{h}-{theme}" for (w, h), theme in VIEWS]
views = pytest.mark.parametrize(("size", "theme"), VIEWS, ids=VIEW_IDS)


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Times on screen are local: pin the zone so snapshots match on every machine."""
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def themed(theme: str, then: Callable[[Any], Awaitable[None]] | None = None) -> Any:
    """A `run_before` that switches to `theme` (the app starts dark on mount), then runs `then`."""

    async def run_before(pilot: Any) -> None:
        pilot.app.theme = f"textual-{theme}"
        await pilot.pause()
        if then is not None:
            await then(pilot)

    return run_before


def app_with(telemetry: dict[str, Any], gpus_in_history: bool) -> WorkbenchApp:
    source = FixedSource(
        fixed_jobs=JOBS,
        fixed_telemetry=telemetry,
        fixed_history=history(gpus_in_history),
        fixed_events=EVENTS,
        fixed_logs=LOGS,
        fixed_now=NOW,
        fixed_metrics={2: {"train_loss": 0.8123, "val_accuracy": 0.8261}},
        fixed_processes=PROCESSES,
        fixed_usage={4242: {"cpu_s": 1520.0, "rss_bytes": 6 * 1024**3}},
    )
    return WorkbenchApp(source, frozen=True)


@views
def test_dashboard_two_gpus_one_busy(
    snap_compare: Any, tmp_path: Path, size: tuple[int, int], theme: str
) -> None:
    assert snap_compare(
        app_with(fake_gpu_snapshot(tmp_path), True), terminal_size=size, run_before=themed(theme)
    )


@views
def test_dashboard_without_gpu(snap_compare: Any, size: tuple[int, int], theme: str) -> None:
    assert snap_compare(
        app_with(no_gpu_snapshot(), False), terminal_size=size, run_before=themed(theme)
    )


@views
def test_queue_with_jobs_in_every_state(
    snap_compare: Any, size: tuple[int, int], theme: str
) -> None:
    assert snap_compare(
        app_with(no_gpu_snapshot(), False),
        terminal_size=size,
        press=["j"],
        run_before=themed(theme),
    )


async def until(pilot: Any, ready: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Let the app run until `ready()`, then once more so the screen is drawn as it says.
    A snapshot taken before would differ for the wrong reason, so this fails, naming `what`,
    after `timeout` seconds (a bounded count of short pauses ran out on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        await pilot.pause(0.02)
    await pilot.pause()


@views
def test_job_detail(snap_compare: Any, size: tuple[int, int], theme: str) -> None:
    assert snap_compare(
        app_with(no_gpu_snapshot(), False),
        terminal_size=size,
        press=["j", "home", "down", "o"],
        run_before=themed(theme),
    )


@views
def test_submit_form(snap_compare: Any, size: tuple[int, int], theme: str) -> None:
    async def settle(pilot: Any) -> None:
        await pilot.press("j", "n")
        # Until the command field has the focus, not only until it exists: the form focuses
        # it after mounting its fields, and a CI run under load drew the form in between,
        # without the field's cursor.
        await until(
            pilot,
            lambda: getattr(pilot.app.focused, "id", None) == "spec-argv",
            "the submit form, its command field focused",
        )

    assert snap_compare(
        app_with(no_gpu_snapshot(), False), terminal_size=size, run_before=themed(theme, settle)
    )


@views
def test_queue_help(snap_compare: Any, size: tuple[int, int], theme: str) -> None:
    assert snap_compare(
        app_with(no_gpu_snapshot(), False),
        terminal_size=size,
        press=["j", "question_mark"],
        run_before=themed(theme),
    )


@views
def test_data_screen(snap_compare: Any, tmp_path: Path, size: tuple[int, int], theme: str) -> None:
    import pyarrow as pa

    from screens.source import Source
    from workbench.catalog import lake
    from workbench.db.store import Store
    from workbench.paths import Home

    home = Home(tmp_path / "home").ensure()
    store = Store.open(home.state_db)
    table = pa.table(
        {
            "species": ["Adelie", "Gentoo", "Chinstrap"] * 40,
            "mass_g": [3700.0 + i for i in range(120)],
        }
    )
    lake.publish_arrow(home, store, "penguins", table)
    store.close()
    app = WorkbenchApp(Source(home), frozen=True)

    async def run_query(pilot: Any) -> None:
        from textual.widgets import DataTable, TextArea

        await pilot.press("s")
        app.screen.query_one(
            "#sql", TextArea
        ).text = "SELECT species, count(*) AS n, avg(mass_g) AS mass FROM penguins GROUP BY ALL ORDER BY species"
        await pilot.press("ctrl+r")
        results = app.screen.query_one("#results", DataTable)

        def settled() -> bool:
            # The table sizes its columns to the new rows on its next idle, not on add_rows,
            # and draws them later still: wait until a screenshot shows the widest cells (a
            # loaded machine once drew `Chinstr` after the widths were already set).
            return (
                results.row_count == 3
                and results.ordered_columns[0].content_width >= len("Chinstrap")
                and all(text in app.export_screenshot() for text in ("Chinstrap", "3760.5"))
            )

        await until(pilot, settled, "the query's rows, with the columns sized to them")
        app.screen.query_one("#datasets", DataTable).focus()
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=size, run_before=themed(theme, run_query))


@views
@pytest.mark.parametrize("key", ["r", "m"], ids=["runs", "models"])
def test_runs_and_models_screens(
    snap_compare: Any, tmp_path: Path, size: tuple[int, int], theme: str, key: str
) -> None:
    """A finished and a running run with their curves; a model with lineage and its test."""
    from test_runs_models_screens import build_home

    from screens.source import Source

    app = WorkbenchApp(Source(build_home(tmp_path / "home")), frozen=True)

    async def settle(pilot: Any) -> None:
        await pilot.press(key)
        await until(
            pilot,
            lambda: bool(
                getattr(app.screen, "plotted", True)
                and app.screen.query("DataTable").first().row_count
            ),
            "the screen's rows and curves",
        )
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=size, run_before=themed(theme, settle))


OWNER_VIEWS = [((80, 24), "dark"), ((160, 48), "light")]


@pytest.mark.parametrize(
    ("size", "theme"), OWNER_VIEWS, ids=[f"{w}x{h}-{t}" for (w, h), t in OWNER_VIEWS]
)
def test_queue_with_owners_and_an_idle_gpu(
    snap_compare: Any, monkeypatch: pytest.MonkeyPatch, size: tuple[int, int], theme: str
) -> None:
    """A system daemon's queue: every job carries its owner's uid, so the owner column shows
    (names pinned here: the password database differs between machines); the running job's
    GPU is flagged idle."""
    import dataclasses

    import screens.jobtable

    names = {5001: "alice", 5002: "bob", 5003: "carol"}
    monkeypatch.setattr(screens.jobtable, "user_name", lambda uid: names.get(uid, str(uid)))
    jobs = [dataclasses.replace(j, uid=5001 + j.id % 3) for j in JOBS]
    source = FixedSource(
        fixed_jobs=jobs,
        fixed_telemetry=no_gpu_snapshot(),
        fixed_history=history(False),
        fixed_events=EVENTS,
        fixed_logs=LOGS,
        fixed_now=NOW,
        fixed_idle={2: NOW - 2100},
    )
    assert snap_compare(
        WorkbenchApp(source, frozen=True),
        terminal_size=size,
        press=["j"],
        run_before=themed(theme),
    )


@pytest.mark.parametrize(
    ("size", "theme"), OWNER_VIEWS, ids=[f"{w}x{h}-{t}" for (w, h), t in OWNER_VIEWS]
)
def test_queue_of_the_team(
    snap_compare: Any, monkeypatch: pytest.MonkeyPatch, size: tuple[int, int], theme: str
) -> None:
    """The Queue in team mode (`screens.teamsource.TeamSource`): the status line names the
    team queue; others' jobs show their public fields only (no command), each its owner."""
    import dataclasses

    import screens.jobtable

    names = {5001: "alice", 5002: "bob", 5003: "carol"}
    monkeypatch.setattr(screens.jobtable, "user_name", lambda uid: names.get(uid, str(uid)))
    jobs = [
        dataclasses.replace(
            j, uid=5001 + j.id % 3, **({} if j.id % 3 == 0 else {"argv": None, "cwd": ""})
        )
        for j in JOBS
    ]
    source = FixedSource(
        fixed_jobs=jobs,
        fixed_telemetry=no_gpu_snapshot(),
        fixed_history=history(False),
        fixed_events=EVENTS,
        fixed_logs=LOGS,
        fixed_now=NOW,
    )
    source.queue_label = "team queue"  # as TeamSource says it
    assert snap_compare(
        WorkbenchApp(source, frozen=True),
        terminal_size=size,
        press=["j"],
        run_before=themed(theme),
    )
