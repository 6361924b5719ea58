"""The TUI's behaviour, key by key, against a real daemon in a temporary home (Pilot)."""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import stop_daemon, wait_for, wait_state
from textual.widgets import DataTable, Input, RichLog, Select

from screens.app import HelpScreen, WorkbenchApp
from screens.dashboard import DashboardScreen
from screens.jobtable import JobTable, cell_texts
from screens.queue import ConfirmScreen, JobDetailScreen, QueueScreen, SubmitScreen
from screens.source import Source
from workbench.daemon.client import Client
from workbench.paths import Home
from workbench.queue.requests import build_request


def submit(client: Client, argv: list[str], paused: bool = False, **extra: Any) -> int:
    request = build_request(
        {"kind": "command", "argv": argv, **extra}, Path.cwd(), "test", paused=paused
    )
    return client.submit(request)


async def until(
    pilot: Any, predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition"
) -> Any:
    """Let the app run until `predicate()` holds (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def text_of(widget: Any) -> str:
    """What a Static shows, as plain text."""
    from rich.console import Console

    console = Console(width=200, record=True, file=io.StringIO())
    console.print(widget.content)
    return console.export_text()


def rows(app: WorkbenchApp) -> dict[str, dict[str, str]]:
    """The Queue's held rows by job id, each {column: text}, in table order."""
    table = app.screen.query_one("#jobs", JobTable)
    return {str(job.id): cell_texts(job, table.now) for job in table.window.jobs}


def select(app: WorkbenchApp, job_id: int) -> None:
    table = app.screen.query_one("#jobs", JobTable)
    index = next(
        table.window.offset + i for i, job in enumerate(table.window.jobs) if job.id == job_id
    )
    table.move_to(index)


@pytest.fixture
def app(home: Home) -> WorkbenchApp:
    return WorkbenchApp(Source(home))


async def test_modes_help_and_theme(app: WorkbenchApp) -> None:
    async with app.run_test(size=(120, 40)) as pilot:
        assert isinstance(app.screen, DashboardScreen)
        await pilot.press("j")
        assert isinstance(app.screen, QueueScreen)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, QueueScreen)
        theme = app.theme
        await pilot.press("T")
        assert app.theme != theme
        await pilot.press("d")
        assert isinstance(app.screen, DashboardScreen)
        await pilot.press("z", "F12", "ctrl+y")  # unbound keys do nothing, and nothing breaks
        assert app.is_running


async def test_dashboard_shows_host_panels_and_hides_them(
    app: WorkbenchApp, client: Client
) -> None:
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await until(pilot, lambda: "CPU" in screen.query_one("#cpu").plain, what="CPU panel")  # type: ignore[attr-defined]
        assert "no NVIDIA driver on this machine" in text_of(screen.query_one("#gpu-status"))
        await pilot.press("2")
        assert not screen.query_one("#cpu").display
        await pilot.press("2")
        assert screen.query_one("#cpu").display


async def test_queue_updates_live_and_keeps_the_cursor(app: WorkbenchApp, client: Client) -> None:
    first = submit(client, ["sleep", "30"], name="first")
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("j")
        await until(pilot, lambda: str(first) in rows(app), what="first job row")
        select(app, first)
        second = submit(client, ["true"], name="second")
        await until(
            pilot,
            lambda: rows(app).get(str(second), {}).get("state") == "succeeded",
            what="second job succeeded",
        )
        table = app.screen.query_one("#jobs", JobTable)
        selected = table.selected()
        assert selected is not None and selected.id == first
        await pilot.press("c")  # a running job: asks first; n leaves it running
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert isinstance(app.screen, QueueScreen)
        await pilot.press("c", "y")
        await until(
            pilot, lambda: rows(app)[str(first)]["state"] == "cancelled", what="cancelled by key"
        )
        assert client.store.get(first).state == "cancelled"


async def test_pause_resume_retry_priority(app: WorkbenchApp, client: Client) -> None:
    job_id = submit(client, ["sleep", "30"])
    failing = submit(client, ["false"])
    running = wait_state(client, job_id, "running")
    wait_state(client, failing, "failed")
    # The command is forked a moment after the job turns running: see it before pausing.
    child = wait_for(
        lambda: psutil.Process(running.pid).children(), what="the job under its wrapper"
    )[0]
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("j")
        await until(pilot, lambda: str(job_id) in rows(app), what="row")
        select(app, job_id)
        await pilot.press("p")
        await until(pilot, lambda: client.store.get(job_id).state == "paused", what="paused")
        await until(pilot, lambda: child.status() == psutil.STATUS_STOPPED, what="stopped process")
        await pilot.press("u")
        await until(pilot, lambda: client.store.get(job_id).state == "running", what="resumed")
        await pilot.press("plus")
        await until(pilot, lambda: client.store.get(job_id).priority == 1, what="priority up")
        await pilot.press("minus", "minus")
        await until(pilot, lambda: client.store.get(job_id).priority == -1, what="priority down")
        select(app, failing)
        await pilot.press("x")
        await until(pilot, lambda: client.store.get(failing).attempt == 2, what="retried")
        # Every action answers: at once ("requested"), then with what the daemon did.
        await until(
            pilot,
            lambda: sum(f"job {failing}: " in str(n.message) for n in app._notifications) >= 2,
            what="feedback for retry",
        )
        assert any(f"job {failing}: retry requested" in str(n.message) for n in app._notifications)
        select(app, job_id)
        await pilot.press("c", "y")
        await until(pilot, lambda: client.store.get(job_id).state == "cancelled", what="cancelled")


async def test_filters_keep_the_id_order(app: WorkbenchApp, client: Client) -> None:
    """A state or text filter shows the matching jobs; clearing it puts every row back in id
    order (not the filtered rows first), with the cursor still on the same job."""
    names = ["alpha", "beta", "alpha two", "gamma"]
    ids = [submit(client, ["true" if i % 2 == 0 else "false"], name=n) for i, n in enumerate(names)]
    for i, job_id in enumerate(ids):
        wait_state(client, job_id, "succeeded" if i % 2 == 0 else "failed")
    everything = [str(i) for i in ids]
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("j")
        await until(pilot, lambda: list(rows(app)) == everything, what="four rows")
        for _ in range(6):  # any -> queued -> running -> paused -> blocked -> succeeded -> failed
            await pilot.press("f")
        await until(
            pilot, lambda: list(rows(app)) == [str(ids[1]), str(ids[3])], what="failed only"
        )
        select(app, ids[3])
        await pilot.press("f", "f")  # cancelled -> any state
        await until(pilot, lambda: list(rows(app)) == everything, what="all rows, in id order")
        assert app.screen.query_one("#jobs", JobTable).selected().id == ids[3]  # type: ignore[union-attr]
        await pilot.press("slash")
        assert isinstance(app.focused, Input)
        await pilot.press(*"alpha", "enter")
        await until(
            pilot, lambda: list(rows(app)) == [str(ids[0]), str(ids[2])], what="text filter"
        )
        await pilot.press("slash", "ctrl+u", "enter")  # an empty text clears it
        await until(pilot, lambda: list(rows(app)) == everything, what="all rows again")


async def test_text_filter_typing_fires_no_queue_keys(app: WorkbenchApp, client: Client) -> None:
    """In the find field, c p x u + - n b f o q T d s r m are letters of the filter, not keys."""
    running = submit(client, ["sleep", "30"], name="sleeper")
    wait_state(client, running, "running")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("j")
        await until(pilot, lambda: str(running) in rows(app), what="the row")
        theme = app.theme
        await pilot.press("slash", *"cpxu+-nbfoqTdsrm")
        assert app.screen.query_one("#find", Input).value == "cpxu+-nbfoqTdsrm"
        assert isinstance(app.screen, QueueScreen) and app.theme == theme
        await pilot.press("escape")
        assert isinstance(app.focused, JobTable)
        assert client.store.get(running).state == "running"
        assert client.store.get(running).priority == 0
        await pilot.press("c", "y")
        await until(pilot, lambda: client.store.get(running).state == "cancelled", what="cancel")


async def test_submit_form_queues_a_job(app: WorkbenchApp, client: Client) -> None:
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("j", "n")
        assert isinstance(app.screen, SubmitScreen)
        await until(pilot, lambda: app.screen.query("#spec-argv"), what="the command fields")
        app.screen.query_one("#spec-argv", Input).value = "sh -c 'echo from the form'"
        app.screen.query_one("#opt-name", Input).value = "form job"
        app.screen.query_one("#opt-cpus", Input).value = "1"
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, QueueScreen), what="form closed")
        job = await until(
            pilot,
            lambda: next((j for j in client.store.list_jobs() if j.name == "form job"), None),
            what="job in the store",
        )
        assert job.argv == ["sh", "-c", "echo from the form"] and job.cpus == 1
        await pilot.press("n")
        await until(pilot, lambda: app.screen.query("#spec-argv"), what="the command fields")
        app.screen.query_one("#spec-argv", Input).value = "true"
        app.screen.query_one("#opt-gpus", Input).value = "many"
        await pilot.press("enter")
        assert "not a number: 'many'" in text_of(app.screen.query_one("#error-opt-gpus"))
        assert app.screen.query_one("#opt-gpus").has_class("-invalid")
        assert app.focused is app.screen.query_one("#opt-gpus")
        await pilot.press("escape")
        assert isinstance(app.screen, QueueScreen)


KIND_FORMS = {
    "command": {"argv": "python -c 'print(1)'"},
    "ingest": {"source": "{csv}", "dataset": "toy"},
    "train": {"dataset": "toy", "target": "label", "epochs": "3", "hidden": "32 32"},
    "test": {"model": "7", "dataset": "toy", "gate": "{ min_accuracy = 0.5 }"},
    "export": {"model": "7", "quantize": "true"},
}


@pytest.mark.parametrize("kind", sorted(KIND_FORMS))
async def test_submit_form_queues_every_kind(
    app: WorkbenchApp, client: Client, tmp_path: Path, kind: str
) -> None:
    """The form shows the kind's own fields; the spec and the queue options (after, priority,
    group, cpus, mem, time limit) arrive in the store as `workbench submit --spec` puts them.
    Every job waits after a held job, so nothing runs."""
    (tmp_path / "toy.csv").write_text("x,label\n1,a\n2,b\n")
    held = submit(client, ["true"], paused=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("j", "n")
        form = app.screen
        assert isinstance(form, SubmitScreen)
        form.query_one("#kind", Select).value = kind
        fields = KIND_FORMS[kind]
        first = next(iter(fields))
        await until(pilot, lambda: form.query(f"#spec-{first}"), what=f"the {kind} fields")
        for name, value in fields.items():
            form.query_one(f"#spec-{name}", Input).value = value.replace(
                "{csv}", str(tmp_path / "toy.csv")
            )
        options = {
            "name": f"form {kind}",
            "after": str(held),
            "priority": "5",
            "group": "night",
            "cpus": "2",
            "mem": "1GiB",
            "time_limit": "2h",
        }
        for key, value in options.items():
            form.query_one(f"#opt-{key}", Input).value = value
        await pilot.press("ctrl+s")
        job = await until(
            pilot,
            lambda: next((j for j in client.store.list_jobs() if j.name == f"form {kind}"), None),
            what=f"the {kind} job in the store",
        )
    assert job.kind == kind and job.state == "queued"
    assert (job.priority, job.group, job.cpus, job.mem, job.time_limit) == (
        5, "night", 2.0, 1024**3, 7200.0,
    )  # fmt: skip
    assert job.deps == ((held, "ok"),)
    if kind == "train":
        assert job.spec["epochs"] == 3 and job.spec["hidden"] == [32, 32]
    if kind == "test":
        assert job.spec["gate"] == {"min_accuracy": 0.5}


async def test_submit_form_names_the_bad_field(app: WorkbenchApp, client: Client) -> None:
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("j", "n")
        form = app.screen
        form.query_one("#kind", Select).value = "train"
        await until(pilot, lambda: form.query("#spec-epochs"), what="the train fields")
        form.query_one("#spec-dataset", Input).value = "toy"
        form.query_one("#spec-target", Input).value = "label"
        form.query_one("#spec-epochs", Input).value = "many"
        await pilot.press("ctrl+s")
        assert "epochs" in text_of(form.query_one("#submit-error"))
        error = form.query_one("#error-spec-epochs")
        assert error.display and "'many'" in text_of(error)
        assert app.focused is form.query_one("#spec-epochs")
        labels = [str(label.content) for label in form.query(".label")]
        assert {"kind", "dataset", "target", "epochs", "gpus", "time limit"} <= set(labels)
        from textual.widgets._footer import FooterKey

        assert {k.description for k in form.query(FooterKey)} >= {"Submit", "Close"}
        assert client.store.list_jobs() == []


async def test_job_detail_follows_the_log(app: WorkbenchApp, client: Client) -> None:
    job_id = submit(client, ["sh", "-c", "echo first line; sleep 1; echo second line; sleep 30"])
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("j")
        await until(pilot, lambda: str(job_id) in rows(app), what="row")
        select(app, job_id)
        await pilot.press("enter")
        assert isinstance(app.screen, JobDetailScreen)
        log = app.screen.query_one("#log", RichLog)
        await until(
            pilot,
            lambda: "second line" in "\n".join(line.text for line in log.lines),
            what="the log to follow",
        )
        assert "first line" in log.lines[0].text
        assert "history" in text_of(app.screen.query_one("#history"))
        await pilot.press("c", "y")
        await until(
            pilot,
            lambda: client.store.get(job_id).state == "cancelled",
            what="cancelled from detail",
        )
        await pilot.press("escape")
        assert isinstance(app.screen, QueueScreen)


async def test_job_detail_opens_a_large_log_at_its_tail_and_shows_use(
    app: WorkbenchApp, client: Client, home: Home
) -> None:
    """A 2 MiB log opens at its last lines at once (with a note of what was skipped); long
    lines wrap instead of being cut; a running job shows its CPU time, RSS and how long it ran."""
    long_line = "x" * 300
    script = (
        "import sys, time\n"
        "for i in range(20000): print(f'line {i} ' + 'y' * 100)\n"
        f"print('{long_line}END')\n"
        "sys.stdout.flush(); time.sleep(60)\n"
    )
    job_id = submit(client, [sys.executable, "-c", script], name="chatty")
    wait_state(client, job_id, "running")
    log_path = home.run_dir(job_id) / "log"
    wait_for(lambda: log_path.exists() and b"END" in log_path.read_bytes(), what="the log")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("j")
        await until(pilot, lambda: str(job_id) in rows(app), what="row")
        select(app, job_id)
        await pilot.press("enter")
        log = app.screen.query_one("#log", RichLog)
        await until(pilot, lambda: log.lines, what="the log")
        text = [line.text for line in log.lines]
        assert "earlier skipped" in text[0] and f"workbench logs {job_id}" in text[0]
        assert len(text) < 20000 and any("line 19999" in t for t in text)
        assert all(len(t) <= log.size.width for t in text)  # wrapped, not cut
        assert "END" in "".join(text)
        summary = text_of(app.screen.query_one("#summary")).replace("\u00a0", " ")
        assert "CPU time" in summary and "RSS" in summary and "duration" in summary
        await pilot.press("c", "y")
        await until(pilot, lambda: client.store.get(job_id).state == "cancelled", what="cancel")


async def test_job_detail_shows_recorded_cpu_time_and_peak_memory(
    app: WorkbenchApp, client: Client
) -> None:
    """An ended job's detail shows the CPU time and peak memory its wrapper recorded."""
    from workbench.present import recorded_usage
    from workbench.units import format_duration, format_size

    script = (
        "import time\n"
        "block = b'x' * (50 << 20)\n"
        "start = time.process_time()\n"
        "while time.process_time() - start < 0.3: pass\n"
    )
    job_id = submit(client, [sys.executable, "-c", script], name="user")
    job = wait_state(client, job_id, "succeeded")
    recorded = recorded_usage(job, client.home.run_dir(job_id))
    cpu_s, peak = recorded["cpu_s"], recorded["peak_mem_bytes"]
    assert cpu_s is not None and 0.25 <= cpu_s < 60
    assert peak is not None and 50 << 20 <= peak < 4 << 30
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("j")
        await until(pilot, lambda: str(job_id) in rows(app), what="row")
        select(app, job_id)
        await pilot.press("enter")
        assert isinstance(app.screen, JobDetailScreen)
        summary = app.screen.query_one("#summary")

        def used_line() -> str:
            text = text_of(summary).replace("\u00a0", " ")
            return next((line for line in text.splitlines() if line.startswith("used")), "")

        await until(pilot, used_line, what="the used line")
        used = " ".join(used_line().split())
        assert f"CPU time {format_duration(cpu_s)}" in used
        assert f"peak memory {format_size(peak)}" in used


async def test_job_detail_log_tail_continues_into_the_rotated_log(
    app: WorkbenchApp, client: Client, home: Home
) -> None:
    """With a small log cap the log rotates to `log.1`; the detail shows the tail of `log.1`
    and `log` together at once, in order, with nothing repeated or left out."""
    home.config.write_text('[daemon]\nlog_cap = "16KiB"\n')
    script = "for i in range(3000): print(f'line {i:05d}', flush=i % 100 == 0)\n"
    job_id = submit(client, [sys.executable, "-c", script], name="rotating")
    wait_state(client, job_id, "succeeded")
    log_path = home.run_dir(job_id) / "log"
    older = log_path.with_name("log.1").read_bytes()
    newer = log_path.read_bytes()
    assert older and len(newer) < 16 * 1024  # rotated: `log` alone holds only the newest lines
    expected = (older + newer).decode().splitlines()
    assert len(expected) > len(newer.decode().splitlines()) and expected[-1] == "line 02999"
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("j")
        await until(pilot, lambda: str(job_id) in rows(app), what="row")
        select(app, job_id)
        await pilot.press("enter")
        log = app.screen.query_one("#log", RichLog)
        await until(pilot, lambda: log.lines, what="the log")
        await pilot.pause(0.3)
        assert [line.text for line in log.lines] == expected


async def test_lost_daemon_is_restarted_by_the_next_action(
    app: WorkbenchApp, client: Client, home: Home
) -> None:
    job_id = submit(client, ["sleep", "30"], paused=True)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("j")
        await until(pilot, lambda: str(job_id) in rows(app), what="row")
        stop_daemon(home)
        await until(
            pilot,
            lambda: "daemon not running" in text_of(app.screen.query_one("#queue-status")),
            what="status says so",
        )
        select(app, job_id)
        await pilot.press("u")  # release: the client starts the daemon again
        await until(
            pilot,
            lambda: client.store.get(job_id).state == "running",
            what="job started by the new daemon",
        )
        await pilot.press("c", "y")
        await until(pilot, lambda: client.store.get(job_id).state == "cancelled", what="cancelled")
        assert app.is_running


async def test_pipeline_file_from_the_queue(
    app: WorkbenchApp, client: Client, tmp_path: Path
) -> None:
    (tmp_path / "p.toml").write_text(
        '[[stage]]\nname = "one"\nkind = "command"\nargv = ["true"]\n\n'
        '[[stage]]\nname = "two"\nkind = "command"\nafter = ["one"]\nargv = ["true"]\n'
    )
    (tmp_path / "bad.toml").write_text(
        '[[stage]]\nname = "one"\nkind = "command"\nargvv = ["true"]\n'
    )
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("j", "b")
        field = app.screen.query_one("#pipeline-path", Input)
        field.value = str(tmp_path / "bad.toml")
        await pilot.press("enter")
        await until(
            pilot,
            lambda: "unknown key 'argvv'" in text_of(app.screen.query_one("#pipeline-error")),
            what="the refusal",
        )
        field.value = str(tmp_path / "p.toml")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, QueueScreen), what="the form to close")
        jobs = await until(
            pilot,
            lambda: (
                [j for j in client.store.list_jobs() if j.state == "succeeded"]
                if len(client.store.list_jobs()) == 2
                and all(j.state == "succeeded" for j in client.store.list_jobs())
                else None
            ),
            what="both stages to run",
        )
        assert [j.stage for j in jobs] == ["one", "two"]


async def test_dashboard_without_daemon_samples_off_the_event_loop(
    app: WorkbenchApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No daemon, no telemetry in the store: the Dashboard takes a direct sample, which waits
    to measure rates, so it must run in the polling thread and leave the UI responsive."""
    import threading

    from workbench.telemetry import snapshot as telemetry

    threads: list[threading.Thread] = []
    direct = telemetry.snapshot

    def spy(*args: Any, **kwargs: Any) -> dict[str, Any]:
        threads.append(threading.current_thread())
        return direct(*args, **kwargs)

    monkeypatch.setattr(telemetry, "snapshot", spy)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        await until(pilot, lambda: screen.snapshot is not None, what="a direct sample")
        assert "waiting for the first sample" not in text_of(screen.query_one("#gpu-status"))
    assert threads and all(t is not threading.main_thread() for t in threads)


def fixed_app(tmp_path: Path) -> WorkbenchApp:
    from tui_data import EVENTS, JOBS, LOGS, NOW, PROCESSES, fake_gpu_snapshot, history

    from screens.source import FixedSource

    source = FixedSource(
        fixed_jobs=JOBS,
        fixed_telemetry=fake_gpu_snapshot(tmp_path),
        fixed_history=history(True),
        fixed_events=EVENTS,
        fixed_logs=LOGS,
        fixed_now=NOW,
        fixed_processes=PROCESSES,
    )
    return WorkbenchApp(source, frozen=True)


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
async def test_dashboard_every_gpu_processes_window_and_owning_job(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    app = fixed_app(tmp_path)
    async with app.run_test(size=size) as pilot:
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        await until(pilot, lambda: screen.processes, what="the process table")
        gpus = screen.query_one("#gpus").plain  # type: ignore[attr-defined]
        assert "GPU 0" in gpus and "GPU 1" in gpus and "-10m" in gpus and "now" in gpus
        table = screen.query_one("#procs", DataTable)
        assert [str(table.get_row_at(i)[0]) for i in range(table.row_count)] == ["4242", "5150"]
        assert "2 train mlp" in str(table.get_row_at(0))
        await pilot.press("o")  # by SM %: still 4242 (88%) before 5150 (3%)
        await pilot.press("o", "o")  # by host memory
        assert screen.processes[0]["pid"] == 4242
        await pilot.press("o")  # by elapsed: the two-hour notebook first
        assert screen.processes[0]["pid"] == 5150
        await pilot.press("w")
        assert screen.window_s == 3600
        await pilot.press("home", "c")  # 5150 belongs to no job
        assert any("no job owns" in str(n.message) for n in app._notifications)
        await pilot.press("down", "enter")  # 4242 is job 2's
        assert isinstance(app.screen, JobDetailScreen) and app.screen.job_id == 2


async def test_help_shows_readable_key_names(tmp_path: Path) -> None:
    app = fixed_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("j")
        help_text = app.help_text()
        assert "`+ / =` Prio+" in help_text and "`-` Prio-" in help_text
        assert "equals_sign" not in help_text and "plus," not in help_text
        assert "`b` Pipeline" in help_text


async def test_queue_of_20000_jobs_holds_a_window_and_pages(home: Home) -> None:
    """20,000 jobs: the table holds a few screens of rows, not the store; End, Home, PgUp and
    PgDn move through all of them; a state filter counts in the store."""
    from tui_data import fill_jobs

    from workbench.db.store import Store

    store = Store.open(home.state_db)
    fill_jobs(store, 20_000)
    store.close()
    app = WorkbenchApp(Source(home))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("j")
        table = app.screen.query_one("#jobs", JobTable)
        await until(pilot, lambda: table.window.total == 20_000, what="the count")
        assert len(table.window.jobs) <= 3 * table.visible_rows
        assert table.selected().id == 20_000  # type: ignore[union-attr]  # opens at the newest
        await pilot.press("home")
        await until(pilot, lambda: table.selected() and table.selected().id == 1, what="Home")  # type: ignore[union-attr]
        await pilot.press("pagedown", "pagedown")
        expected = 1 + 2 * table.visible_rows
        await until(
            pilot,
            lambda: table.selected() and table.selected().id == expected,  # type: ignore[union-attr]
            what="two pages down",
        )
        await pilot.press("pageup")
        await until(
            pilot,
            lambda: table.selected() and table.selected().id == expected - table.visible_rows,  # type: ignore[union-attr]
            what="a page up",
        )
        await pilot.press("end")
        await until(pilot, lambda: table.selected() and table.selected().id == 20_000, what="End")  # type: ignore[union-attr]
        assert len(table.window.jobs) <= 3 * table.visible_rows
        for _ in range(6):  # any -> ... -> failed
            await pilot.press("f")
        await until(pilot, lambda: table.window.total == 20_000 // 7, what="failed jobs counted")
        assert all(job.state == "failed" for job in table.window.jobs)


@pytest.mark.parametrize("key", ["d", "j", "s", "r", "m"])
async def test_title_and_footer_fit_80_columns(tmp_path: Path, key: str) -> None:
    """At 80 columns the title bar names every screen key and the footer's keys all fit."""
    from textual.widgets._footer import FooterKey

    from screens.widgets import FocusLine

    app = fixed_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press(key)
        await pilot.pause(0.2)
        title = app.screen.query_one("#title-bar").content
        assert all(f" {k} " in str(title) for k in "djsrm") and "? help" in str(title)
        footer_keys = list(app.screen.query(FooterKey))
        assert footer_keys
        used = app.screen.query_one(FocusLine).outer_size.width + sum(
            k.outer_size.width for k in footer_keys
        )
        assert used <= 80, [str(k.render()) for k in footer_keys]


@pytest.mark.parametrize("width", [24, 38, 78, 156])
def test_dashboard_lines_never_wrap(tmp_path: Path, width: int) -> None:
    """Every Dashboard line fits its width, whatever the values: a load of 10+, 64 cores,
    rates in GiB/s, a long GPU name, many disks (values are cut, never wrapped)."""
    from tui_data import NOW, fake_gpu_snapshot, history

    from screens import dashboard

    snap = fake_gpu_snapshot(tmp_path)
    snap["cpu"] = {"total": 99.5, "per_core": [99.0] * 64, "load_avg": [10.5, 12.25, 99.75]}
    snap["network"] = {
        f"enp{i}s0": {"rx_bytes_per_s": 9.9 * 1024**3, "tx_bytes_per_s": 8.8 * 1024**3}
        for i in range(4)
    }
    snap["disk_io"] = {"nvme0n1": {"read_bytes_per_s": 7e9, "write_bytes_per_s": 6e9}}
    snap["gpus"][0]["name"] = "NVIDIA H100 80GB HBM3 with a very long marketing name"
    rows = history(True)
    lines = dashboard.render_gpu(snap["gpus"][0], rows, NOW, 600, width, 8)
    for render in (
        dashboard.render_cpu,
        dashboard.render_memory,
        dashboard.render_network,
        dashboard.render_disks,
    ):
        lines += render(snap, rows, NOW, 600, width, 12)
    lines += dashboard.host_lines_compact(snap, rows, width)
    assert lines and all(line.cell_len <= width for line in lines), [
        (line.cell_len, line.plain) for line in lines if line.cell_len > width
    ]
    assert all("\n" not in line.plain for line in lines)


async def test_pipeline_dialog_shows_progress_while_it_validates(
    app: WorkbenchApp, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from workbench.queue import pipeline as pipelines

    release = threading.Event()
    real = pipelines.load_pipeline

    def slow_load(path: Path) -> Any:
        release.wait(10)
        return real(path)

    monkeypatch.setattr(pipelines, "load_pipeline", slow_load)
    (tmp_path / "p.toml").write_text('[[stage]]\nname = "one"\nkind = "command"\nargv = ["true"]\n')
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("j", "b")
        app.screen.query_one("#pipeline-path", Input).value = str(tmp_path / "p.toml")
        await pilot.press("enter")
        assert app.screen.query_one("#pipeline-busy").display
        assert "validating" in text_of(app.screen.query_one("#pipeline-error"))
        release.set()
        await until(pilot, lambda: isinstance(app.screen, QueueScreen), what="queued and closed")


@pytest.mark.parametrize(
    "state,text",
    [(None, ""), ("failed", ""), (None, "LR=0.003"), ("paused", "point 1"), (None, "sigterm"),
     ("succeeded", "nothing like this")],
)  # fmt: skip
def test_job_filter_in_sql_matches_python(home: Home, state: str | None, text: str) -> None:
    """The Queue's filter counted and paged in SQL agrees with the same filter in Python, and
    pages are in id order."""
    from tui_data import fill_jobs

    from workbench.db import job_pages
    from workbench.db.job_pages import JobFilter
    from workbench.db.store import Store

    store = Store.open(home.state_db)
    fill_jobs(store, 300)
    where = JobFilter(state, text)
    everything = store.list_jobs()
    expected = [j.id for j in everything if where.matches(j)]
    assert job_pages.count_jobs(store, where) == len(expected)
    page = job_pages.page_of_jobs(store, where, 5, 20)
    assert [j.id for j in page] == expected[5:25]
    if expected:
        assert job_pages.position_of_job(store, where, expected[-1]) == len(expected) - 1
    store.close()


def test_every_state_has_its_own_colour() -> None:
    """Paused (held by a user) and blocked (a dependency failed) never look like failed."""
    from screens.widgets import state_style
    from workbench.db.store import JobState

    styles = {state: state_style(state) for state in JobState}
    assert all(styles.values()) and len(set(styles.values())) == len(styles)
    assert "red" not in styles[JobState.PAUSED] and "red" not in styles[JobState.BLOCKED]


def test_job_detail_shows_the_mig_instance_the_attempt_was_launched_with() -> None:
    """The detail's `granted` line names the MIG instance by UUID, not only its GPU's index."""
    import dataclasses

    from tui_data import NOW, job

    from screens.queue import job_facts

    mig = job(7, "mig job", "running", granted_gpus=[0], granted_devices=["MIG-4f0c"])
    mig = dataclasses.replace(
        mig, resources=dataclasses.replace(mig.resources, gpus=0.0, mig_profile="1g.10gb")
    )
    facts = dict(job_facts(mig, {}, NOW))
    assert facts["granted"] == "MIG 1g.10gb instance MIG-4f0c on GPU 0"


LOG_SCRIPT = """
import sys, time
for i in range(200):
    print(f"line {i}")
for p in range(900):
    sys.stdout.write(f"\\rprogress {p + 1:4d}/900")
print(flush=True)
i = 0
while True:
    print(f"tick {i}", flush=True)
    i += 1
    time.sleep(0.2)
"""


async def test_job_detail_log_stops_following_when_scrolled_up_and_finds_text(
    app: WorkbenchApp, client: Client
) -> None:
    """Like `less +F`: Home (or Up, PgUp) stops following while lines keep coming, End resumes;
    900 `\\r` redraws of a progress bar are one line; `/` finds text and scrolls to it."""
    job_id = submit(client, [sys.executable, "-c", LOG_SCRIPT])
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("j")
        await until(pilot, lambda: str(job_id) in rows(app), what="row")
        select(app, job_id)
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, JobDetailScreen)
        log = screen.query_one("#log", RichLog)

        def texts() -> list[str]:
            return [line.text for line in log.lines]

        def state() -> str:
            return text_of(screen.query_one("#log-state"))

        await until(pilot, lambda: any("tick 3" in t for t in texts()), what="ticks")
        assert sum("progress" in t for t in texts()) == 1
        assert any("progress  900/900" in t for t in texts())
        assert log.scroll_y == log.max_scroll_y > 0  # following
        await pilot.press("home")
        assert log.scroll_y == 0
        count = len(texts())
        await until(pilot, lambda: len(texts()) > count + 5, what="more ticks")
        assert log.scroll_y == 0 and "paused" in state()
        await pilot.press("pageup", "up")
        assert log.scroll_y == 0
        await pilot.press("end")
        count = len(texts())
        await until(pilot, lambda: len(texts()) > count + 3, what="more ticks")
        await until(pilot, lambda: log.scroll_y == log.max_scroll_y, what="the end followed")
        assert "following" in state()
        await pilot.press("slash", *"line 42", "enter")
        assert texts()[int(log.scroll_y)] == "line 42"
        assert "paused" in state()
        await pilot.press("n")
        assert "line 42" in texts()[int(log.scroll_y)] and log.scroll_y > 0
        await pilot.press("escape")
        assert isinstance(app.screen, QueueScreen)


def test_fit_value_breaks_between_values_never_inside_one() -> None:
    """Job detail's values: `attempt 1 of 1` and `hidden=[128, 128]` stay whole on a line."""
    from screens.widgets import fit_value

    lines = fit_value("group default, priority 0, attempt 1 of 1", 20).splitlines()
    assert lines == ["group default,", "priority 0,", "attempt 1 of 1"]
    lines = fit_value("model=mlp, hidden=[128, 128], lr=0.001", 22).splitlines()
    assert "hidden=[128, 128]," in lines
    assert all(len(line) <= 10 for line in fit_value("x" * 35 + ", y", 10).splitlines())


async def test_theme_switch_redraws_every_chart_line(tmp_path: Path) -> None:
    """`T`, `T` (and `T` on another screen): every line of every chart is drawn in the current
    theme's background at once; none keeps the other theme's until its text changes."""
    from screens.widgets import Lines

    def stale(app: WorkbenchApp) -> list[str]:
        out = []
        for widget in app.screen.query(Lines):
            if not widget.display or not widget.lines:
                continue
            background = widget.rich_style.bgcolor
            for y in range(len(widget.lines)):
                if any(
                    s.style is not None and s.style.bgcolor not in (None, background)
                    for s in widget.render_line(y)
                ):
                    out.append(f"{widget.id}:{y}")
        return out

    app = fixed_app(tmp_path)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.screen.query_one("#gpus", Lines).lines, what="charts")
        await pilot.pause(0.2)
        assert not stale(app)
        await pilot.press("T")
        await pilot.pause(0.2)
        assert not stale(app), "light bands after T"
        await pilot.press("T", "j", "T", "d")
        await pilot.pause(0.2)
        assert not stale(app), "bands after a switch made on another screen"


@pytest.mark.parametrize("width", [30, 37, 60])
def test_cpu_title_shows_all_three_load_averages(width: int) -> None:
    """`load 13.95 11.88 1` was cut: the title shortens the core count and the decimals first."""
    from screens.dashboard import host_lines_compact, render_cpu

    snap = {
        "cpu": {
            "total": 45.0,
            "count": 64,
            "per_core": [10.0] * 64,
            "load_avg": [13.95, 11.88, 10.02],
        }
    }
    title = render_cpu(snap, [], 0.0, 60.0, width, 1)[0].plain
    assert title.split()[-3:] in (["13.95", "11.88", "10.02"], ["13.9", "11.9", "10.0"]), title
    assert "10.02" in host_lines_compact(snap, [], 78)[1].plain


def test_latency_ratio_reads_at_any_scale() -> None:
    """59.987 ms against 0.142 ms read `x0.00`."""
    from screens.models import speed_ratio

    assert speed_ratio(59.987, 0.142) == "onnxruntime 422x faster"
    assert speed_ratio(0.142, 59.987) == "onnxruntime 422x slower"
    assert speed_ratio(1.0, 1.01) == "same speed"
    assert speed_ratio(2.6, 2.0) == "onnxruntime 1.3x faster"


def test_form_hints_are_input_syntax_and_parse_back() -> None:
    """Hints read as what to type (`KEY=VALUE, ...`, `replace | append`), never a Python
    annotation; what they describe parses to the spec's value."""
    from screens.queue import field_hint, parse_field, spec_fields

    for kind in ("command", "ingest", "train", "test", "export"):
        for name, type_name, default in spec_fields(kind):
            hint = field_hint(name, type_name, default, False)
            assert "[" not in hint.split(",")[0] and "Literal" not in hint and "dict" not in hint
    assert field_hint("env", "dict[str, str]", {}, False) == "KEY=VALUE, ..."
    assert field_hint("mode", "Literal['replace', 'append']", "replace", False) == (
        "replace | append (default replace)"
    )
    assert field_hint("kill_grace", "str | float | None", None, False) == "DURATION, e.g. 30s"
    assert parse_field("kill_grace", "str | float | None", "30s") == "30s"
    assert parse_field("env", "dict[str, str]", "A=1, B=x y") == {"A": "1", "B": "x y"}
    assert parse_field("gate", "dict[str, float]", "min_accuracy=0.5") == {"min_accuracy": 0.5}
    with pytest.raises(ValueError, match=r"replace \| append"):
        parse_field("mode", "Literal['replace', 'append']", "merge")


def test_queue_columns_keep_the_reason_first() -> None:
    """160 columns: a long progress message no longer takes 37 cells while the reason is cut;
    start, end, duration and command join when the reason has all it needs. 80 columns:
    resources and progress stay (shortened) beside a 30-cell reason."""
    from screens.jobtable import REASON_MIN, fit_columns

    widths = {
        "id": 4, "name": 20, "kind": 7, "state": 9, "prio": 4, "resources": 24,
        "progress": 37, "age": 5, "reason": 70, "start": 8, "end": 8, "duration": 6,
        "command": 60,
    }  # fmt: skip
    wide = fit_columns(widths, 158)
    assert wide["reason"] >= 70 and wide["progress"] <= 14
    assert sum(wide.values()) + len(wide) - 1 <= 158
    roomy = fit_columns({**widths, "reason": 20}, 200)
    assert {"start", "end", "duration", "command"} <= set(roomy) and roomy["reason"] >= 20
    narrow = fit_columns(widths, 78)
    assert narrow["reason"] >= REASON_MIN and {"resources", "progress"} <= set(narrow)
    assert sum(narrow.values()) + len(narrow) - 1 <= 78


def wcag_contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """WCAG 2.x contrast ratio of two sRGB colours, 1.0 to 21.0: (L1 + 0.05) / (L2 + 0.05) of
    their relative luminances, L = 0.2126 R + 0.7152 G + 0.0722 B of the linearised channels
    (https://www.w3.org/TR/WCAG21/#dfn-contrast-ratio)."""

    def luminance(rgb: tuple[int, int, int]) -> float:
        def channel(v: int) -> float:
            c = v / 255
            return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

        r, g, b = (channel(v) for v in rgb)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize("grouped", [True, False])
async def test_queue_group_column_like_pueue(grouped: bool) -> None:
    """The Queue shows each job's group (pueue's column) at 160 columns once a shown job is
    outside `default`; with every job in `default` the column says nothing and gives its room
    to the reason. The start, duration and command columns fit beside it, the reason whole."""
    import dataclasses

    from tui_data import JOBS, NOW

    from screens.source import FixedSource

    jobs = JOBS if grouped else [dataclasses.replace(j, group="default") for j in JOBS]
    app = WorkbenchApp(FixedSource(fixed_jobs=jobs, fixed_now=NOW), frozen=True)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("j")
        table = app.screen.query_one(JobTable)
        await until(pilot, lambda: table.window.total == len(jobs), what="the jobs")
        await pilot.pause()
        lines = table.render().plain.splitlines()
        header = lines[0].split()
        assert ("group" in header) is grouped, header
        assert {"start", "duration", "command", "reason"} <= set(header)
        sweep = next(line for line in lines if "sweep lr=0.01" in line)
        assert "waiting for 1 GPU (0 of 1 free)" in sweep
        if grouped:
            assert "sweeps" in sweep and table.shown_columns["group"] == len("default")


def test_queue_columns_come_from_one_spec_list() -> None:
    """Every column, its cell and its place among the optional ones come from COLUMNS (one
    line to add a column, so parallel branches merge cleanly)."""
    from tui_data import JOBS, NOW

    from screens.jobtable import COLUMNS, OPTIONAL

    names = [c.name for c in COLUMNS]
    assert list(cell_texts(JOBS[2], NOW)) == names and names[-1] == "reason"
    assert {name for name, _, _ in OPTIONAL} == {c.name for c in COLUMNS if c.steps}
    # The owner (team mode; empty, so never added, in a per-user home) comes first, then the
    # progress cut short.
    assert OPTIONAL[:2] == (("owner", 10, False), ("progress", 5, False))


def test_wcag_contrast_matches_known_ratios() -> None:
    """Black on white is 21:1, a colour on itself 1:1, #767676 on white the 4.54:1 that
    WebAIM's checker gives."""
    assert wcag_contrast((0, 0, 0), (255, 255, 255)) == pytest.approx(21.0)
    assert wcag_contrast((18, 52, 86), (18, 52, 86)) == pytest.approx(1.0)
    assert wcag_contrast((0x76, 0x76, 0x76), (255, 255, 255)) == pytest.approx(4.54, abs=0.01)


@pytest.mark.parametrize("theme", ["textual-dark", "textual-light"])
def test_state_colours_are_distinct_and_readable_in_both_themes(theme: str) -> None:
    """Running and blocked, paused and failed were nearly the same colour, and one set of
    colours read at 3:1 at best on both themes. Each theme now has its own: every state reads at
    a WCAG contrast of 4.5:1 (AA for text) on that theme's background and surface as Textual
    generates them, and no two states are closer than 50 in RGB (running/blocked and
    paused/failed: 100)."""
    import itertools

    from rich.style import Style
    from textual.color import Color
    from textual.theme import BUILTIN_THEMES

    from screens.widgets import state_style
    from workbench.db.store import JobState

    definition = BUILTIN_THEMES[theme]
    system = definition.to_color_system().generate()
    dark = definition.dark

    def rgb(state: str) -> tuple[int, int, int]:
        color = Style.parse(state_style(state, dark)).color
        assert color is not None, state
        triplet = color.get_truecolor()
        return triplet.red, triplet.green, triplet.blue

    for place in ("background", "surface"):
        back = Color.parse(system[place])
        for state in JobState:
            ratio = wcag_contrast(rgb(state), (back.r, back.g, back.b))
            assert ratio >= 4.5, (theme, place, state, round(ratio, 2))
    for a, b in itertools.combinations(list(JobState), 2):
        distance = sum((x - y) ** 2 for x, y in zip(rgb(a), rgb(b), strict=True)) ** 0.5
        apart = 100 if {a, b} in ({"running", "blocked"}, {"paused", "failed"}) else 50
        assert distance >= apart, (theme, a, b, round(distance))


async def test_state_colours_follow_a_theme_switch(home: Home) -> None:
    """`T` redraws the Queue's rows in the light theme's state colours (a row drawn in a dark
    colour reads at 3:1 or less on the light background)."""
    from tui_data import fill_jobs

    from screens.widgets import state_style
    from workbench.db.store import Store

    store = Store.open(home.state_db)
    fill_jobs(store, 5)
    store.close()
    app = WorkbenchApp(Source(home))
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("j")
        table = app.screen.query_one(JobTable)
        await until(pilot, lambda: table.selected() is not None, what="a row")

        def drawn() -> set[str]:
            return {
                seg.style.color.name
                for y in range(1, 6)
                for seg in table.render_line(y)
                if seg.style is not None and seg.style.color is not None
            }

        states = {job.state for job in table.window.jobs}
        dark = {state_style(state, True).split()[-1] for state in states}
        light = {state_style(state, False).split()[-1] for state in states}
        await until(pilot, lambda: dark <= drawn(), what="dark colours")
        await pilot.press("T")
        await until(pilot, lambda: light <= drawn(), what="light colours")
        assert not dark & drawn()


async def test_dashboard_whole_machine_processes_with_filter_and_sort_mark(home: Home) -> None:
    """`a` lists every process of the machine (this test's own among them, with its user and
    command), `/` keeps those matching a text, the sorted column carries an arrow."""
    import getpass
    import os

    app = WorkbenchApp(Source(home))
    async with app.run_test(size=(160, 48)) as pilot:
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        await until(pilot, lambda: screen.snapshot is not None, what="a sample")
        await pilot.press("a")
        me = os.getpid()
        await until(pilot, lambda: any(p["pid"] == me for p in screen.processes), what="my pid")
        await pilot.press("slash", *str(me), "enter")
        await until(pilot, lambda: [p["pid"] for p in screen.processes] == [me], what="filter")
        row = screen.processes[0]
        assert row["user"] == getpass.getuser() and "python" in row["command"]
        table = screen.query_one("#procs", DataTable)
        labels = [str(c.label) for c in table.ordered_columns]
        # No GPU process on this machine: the whole-machine view sorts by CPU %, as btop does.
        assert "cpu% ▼" in labels and "all processes" in str(table.border_title)


async def test_dashboard_process_tree_at_80_columns(home: Home) -> None:
    """`t` draws every process under its parent (this test's own under its parent's, with a
    branch), and at 80x24 the whole-machine table keeps the user and at least 32 cells of each
    command, leaving out the GPU columns no row fills (they were cut to `/bin/sh /t…`)."""
    import getpass
    import os

    app = WorkbenchApp(Source(home))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        await until(pilot, lambda: screen.snapshot is not None, what="a sample")
        await pilot.press("a", "t")
        me, parent = os.getpid(), os.getppid()
        pids = lambda: [p["pid"] for p in screen.processes]  # noqa: E731
        await until(pilot, lambda: me in pids() and parent in pids(), what="my pid and parent")
        mine = pids().index(me)
        assert pids().index(parent) < mine and screen.processes[mine]["tree"].endswith("─ ")
        table = screen.query_one("#procs", DataTable)
        labels = [str(c.label).split()[0] for c in table.ordered_columns]
        assert "user" in labels and "gpu" not in labels and "sm%" not in labels, labels
        row = table.get_row_at(mine)
        assert row[labels.index("user")].plain == getpass.getuser()
        command = row[labels.index("command")].plain
        # The branch comes first, as deep as this process sits (deeper under pytest-xdist), then
        # this process's command line, whole or cut with an ellipsis.
        words = command.lstrip(" │├└─").removesuffix("…")
        assert len(command) >= 32 and " ".join(psutil.Process(me).cmdline()).startswith(words), (
            command
        )
        await pilot.press("t")
        await until(pilot, lambda: "tree" not in screen.processes[0], what="a flat list")


def test_process_tree_branches() -> None:
    """Children under their parent in the order given, `├─`/`└─` branches with `│` below an
    unfinished sibling; a row whose parent is not listed is a root; a cycle of parents (pids
    reused between reads) is listed, never looped over."""
    from screens.dashboard import process_tree

    rows = [
        {"pid": 1, "ppid": 0},
        {"pid": 30, "ppid": 2},
        {"pid": 2, "ppid": 1},
        {"pid": 3, "ppid": 1},
        {"pid": 20, "ppid": 2},
        {"pid": 99, "ppid": 77},
        {"pid": 5, "ppid": 6},
        {"pid": 6, "ppid": 5},
    ]
    out = [(r["pid"], r["tree"]) for r in process_tree(rows)]
    assert out == [
        (1, ""),
        (2, "├─ "),
        (30, "│  ├─ "),
        (20, "│  └─ "),
        (3, "└─ "),
        (99, ""),
        (5, ""),
        (6, "└─ "),
    ]


def test_process_columns_keep_the_command_at_80() -> None:
    """Columns join by priority while the command keeps 32 cells; the sorted one always shows;
    a column every row leaves blank never does."""
    from rich.text import Text

    from screens.dashboard import PROCESS_COLUMNS, choose_process_columns

    row = dict.fromkeys(PROCESS_COLUMNS, Text("-"))
    row.update(
        pid=Text("123456"),
        user=Text("someone"),
        job=Text("-"),
        command=Text("/usr/bin/python3 -m some.long.module --with --many --arguments"),
        **{"cpu%": Text("12"), "host mem": Text("1.2 GiB"), "elapsed": Text("3h05m")},
    )
    chosen = choose_process_columns([row], 77, "cpu%")
    assert {"pid", "cpu%", "user", "command"} <= set(chosen)
    assert not {"gpu", "gpu mem", "sm%", "job"} & set(chosen)
    assert choose_process_columns([row], 77, "gpu mem")[:3] == ("pid", "user", "gpu mem")
    narrow = choose_process_columns([row], 45, "pid")
    assert narrow == ("pid", "command")


def test_process_facts_survive_a_denied_command_line() -> None:
    """Another user's process denies its command line: the row keeps its name and owner
    instead of `-` and `?`."""
    import psutil

    from screens.source import process_facts

    class Denied:
        def cmdline(self) -> list[str]:
            raise psutil.AccessDenied(1)

        def name(self) -> str:
            return "sshd"

        def username(self) -> str:
            return "root"

        def memory_info(self) -> Any:
            raise psutil.AccessDenied(1)

        def cpu_percent(self, interval: None) -> float:
            return 0.5

        def create_time(self) -> float:
            return 1.0

        def ppid(self) -> int:
            return 1

    facts = process_facts(Denied())
    assert facts["command"] == "[sshd]" and facts["user"] == "root" and facts["rss_bytes"] is None


async def test_dashboard_at_80x24_leaves_no_blank_gpu_lines_under_a_scrolling_table(
    tmp_path: Path,
) -> None:
    """Four GPUs and eight processes at 80x24: each GPU keeps its compact pair of lines and the
    process table gets every other line (it scrolled while blank lines sat above it); commands
    get the width host memory leaves."""
    import copy

    from screens.widgets import Lines

    app = fixed_app(tmp_path)
    source = app.source
    snapshot = copy.deepcopy(source.fixed_telemetry)  # type: ignore[attr-defined]
    gpus = snapshot["gpus"]
    for index in (2, 3):
        extra = copy.deepcopy(gpus[1])
        extra["index"], extra["processes"] = index, []
        gpus.append(extra)
    template = gpus[0]["processes"][0]
    gpus[0]["processes"] = [{**template, "pid": 4242 + i} for i in range(8)]
    source.fixed_telemetry = snapshot  # type: ignore[attr-defined]
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await until(pilot, lambda: len(screen.processes) == 9, what="the processes")
        await pilot.pause(0.2)
        charts = screen.query_one("#gpus", Lines)
        assert len(charts.lines) == charts.region.height == 8  # 4 GPUs x 2 lines, none blank
        table = screen.query_one("#procs", DataTable)
        assert table.region.height >= 7
        assert "host mem" not in [str(c.label) for c in table.ordered_columns]


async def test_queue_mine_everyone_toggle(app: WorkbenchApp, client: Client) -> None:
    """`w` shows only my jobs (a job without a uid, in a per-user home, is mine), then
    everyone's again; the owner column names the other user's job and leaves mine blank."""
    import dataclasses
    import os
    import pwd

    other_uid = 65534 if os.getuid() != 65534 else 0
    other = pwd.getpwuid(other_uid).pw_name
    table = {"kind": "command", "argv": ["true"]}
    mine = client.store.submit(build_request(table, Path.cwd(), "mine", paused=True))
    request = build_request(table, Path.cwd(), "theirs", paused=True)
    theirs = client.store.submit(dataclasses.replace(request, uid=other_uid))
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("j")
        await until(pilot, lambda: {str(mine), str(theirs)} <= set(rows(app)), what="both rows")
        assert rows(app)[str(theirs)]["owner"] == other and rows(app)[str(mine)]["owner"] == ""
        await pilot.press("w")
        await until(pilot, lambda: set(rows(app)) == {str(mine)}, what="only mine")
        await pilot.press("w")
        await until(pilot, lambda: {str(mine), str(theirs)} <= set(rows(app)), what="everyone")


def test_one_minute_chart_has_no_blank_columns_between_samples() -> None:
    """The 1-minute window at 80 cells gives each column 0.8 s: a 1 Hz series left every fifth
    column blank, like dropouts. Sampling gaps are held now; a real 10 s dropout still shows."""
    from screens.widgets import chart

    end = 1_000.0
    steady = [(end - 60 + t, 50.0) for t in range(61)]
    lines = chart(steady, end, 60.0, 80, 4, 100, "green", "100%", axis=False)
    bottom = lines[-1].plain[5:]
    assert " " not in bottom.rstrip(), bottom
    dropout = [(t, v) for t, v in steady if not end - 40 <= t < end - 30]
    bottom = chart(dropout, end, 60.0, 80, 4, 100, "green", "100%", axis=False)[-1].plain[5:]
    assert " " * 10 in bottom.strip(), bottom


async def test_queue_counts_read_with_thousands_separators_as_in_the_cli(home: Home) -> None:
    """Numbers read `1820` in the TUI and `1,820` in the CLI: the Queue's state counts and its
    filter total are grouped by thousands as the CLI prints them."""
    import re

    from tui_data import fill_jobs

    from workbench.db.store import Store

    store = Store.open(home.state_db)
    fill_jobs(store, 6_000)
    counts = {str(state): n for state, n in store.counts_by_state().items()}
    store.close()
    app = WorkbenchApp(Source(home))
    async with app.run_test(size=(160, 30)) as pilot:
        await pilot.press("j")
        status = app.screen.query_one("#queue-status")
        await until(pilot, lambda: "succeeded" in text_of(status), what="the counts")
        shown = text_of(status)
        for state, n in counts.items():
            if n >= 1000:
                assert f"{n:,} {state}" in shown, (state, shown)
        assert not re.search(r"\b\d{4,}\b", shown), shown


async def test_submit_while_the_form_changes_kind_never_crashes(home: Home) -> None:
    """Enter or ctrl+s arriving while the form swaps in another kind's fields (a key burst did
    this) read fields already removed: NoMatches ended the app. It now says to submit again."""
    import asyncio

    app = WorkbenchApp(Source(home))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("j", "n")
        form = await until(
            pilot, lambda: isinstance(app.screen, SubmitScreen) and app.screen, what="the form"
        )
        await until(pilot, lambda: not form.building, what="the command fields")
        swap = asyncio.ensure_future(form.show_kind("train"))
        await asyncio.sleep(0)  # the old fields are being removed
        assert form.building
        form.action_submit()
        assert "submit again" in text_of(form.query_one("#submit-error"))
        await swap
        assert not form.building and form.query("#spec-dataset")
