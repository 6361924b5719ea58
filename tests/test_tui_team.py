"""The TUI in team mode (issue 20): the Queue and Dashboard read the system daemon's queue and
telemetry through its socket (`screens.teamsource.TeamSource`), with its rights.

Run as root with real Unix users (the fixtures of tests/test_team_mode.py). The app runs
in-process as root (an admin of the team queue), and as bob, a plain user, through `runuser`:
a script that builds TeamSource and prints what it gets, and a Pilot run of the app itself, so
the daemon knows each only by the socket's peer credentials."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_team_mode import System, Users, install_system, stop_system
from test_team_mode import users as users
from test_tui import rows, text_of, until

from screens.app import WorkbenchApp
from screens.dashboard import DashboardScreen
from screens.queue import JobDetailScreen, QueueScreen
from screens.teamsource import TeamSource
from workbench.daemon.rights import PUBLIC_FIELDS
from workbench.paths import Home

pytestmark = pytest.mark.xdist_group("unix-users")

REPO = Path(__file__).resolve().parents[1]
NOT_PERMITTED = 4


@pytest.fixture(scope="module")
def system(users: Users) -> Iterator[System]:
    """A system daemon sampling two simulated GPUs (this process has none: a GPU on the
    Dashboard came from the daemon)."""
    installed = install_system(users.folder / "home", users, gpus=2)
    try:
        yield installed
    finally:
        stop_system(installed)


def socket_of(system: System) -> str:
    return str(system.root / "gate" / "team.sock")


def run_as(system: System, user: str, script: str, *args: str) -> Any:
    """Run the Python `script` as `user` (runuser) with `args`; what it printed, as JSON."""
    path = system.users.folder / f"script-{time.monotonic_ns()}.py"
    path.write_text(textwrap.dedent(script))
    path.chmod(0o644)
    done = subprocess.run(
        ["runuser", "-u", user, "--", *system.users.py, str(path), *args],
        capture_output=True,
        text=True,
        env={**system.env(), "HOME": str(Path(f"~{user}").expanduser())},
        cwd=str(Path(f"~{user}").expanduser()),
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# A plain user's TeamSource, in their own process: what each read gives them.
SOURCE_SCRIPT = """
import json, os, sys
from pathlib import Path
from screens.teamsource import TeamRefused, TeamSource
from workbench.db.job_pages import JobFilter
from workbench.paths import Home

socket, theirs, mine = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
source = TeamSource(Home(Path.home() / ".workbench"), socket)
page = source.job_page(JobFilter(), 0, 50)
by_id = {job.id: job for job in page.jobs}
other = by_id[theirs]
shown = source.job(theirs)
refused = None
try:
    source.act(lambda client: client.control(theirs, "pause"))
except TeamRefused as error:
    refused = [str(error), error.code]
own_log = source.log_piece(mine, None)
their_log = source.log_piece(theirs, None)
snapshot = source.telemetry()
from workbench.queue.requests import build_request
request = build_request({"kind": "command", "argv": ["true"]}, Path.home(), "tui", paused=True)
submitted = source.act(lambda client: client.submit(request))
from workbench.queue.pipeline import load_pipeline
pipe_path = Path.home() / "tui-pipeline.toml"
pipe_path.write_text(chr(10).join([
    '[pipeline]', 'name = "tuipipe"',
    '[[stage]]', 'name = "one"', 'kind = "command"', 'argv = ["true"]',
    '[[stage]]', 'name = "two"', 'kind = "command"', 'after = ["one"]', 'argv = ["true"]',
]))
pipeline = load_pipeline(pipe_path)  # as the Queue's pipeline dialog loads it
_, pipeline_ids = source.act(lambda client: client.submit_pipeline(pipeline))
raw = source.ask("page", limit=50)["jobs"]
print(json.dumps({
    "raw_keys": {str(v["id"]): sorted(v) for v in raw},
    "submitted": [submitted, source.job(submitted).uid, source.job(submitted).state],
    "pipeline": [[source.job(i).uid, source.job(i).stage] for i in pipeline_ids],
    "total": page.total,
    "owners": {str(j.id): j.uid for j in page.jobs},
    "other_row": [other.name, other.argv, other.cwd, other.env, other.spec],
    "other_shown": [shown.name, shown.argv, shown.cwd, shown.env, shown.spec],
    "events": [e.state for e in source.events(theirs)],
    "secret_matches": source.job_page(JobFilter(text="alice-secret"), 0, 50).total,
    "public_matches": [j.id for j in source.job_page(JobFilter(text="sh"), 0, 50).jobs],
    "mine": [j.id for j in source.job_page(JobFilter(owner=os.getuid()), 0, 50).jobs],
    "position": source.job_position(JobFilter(), mine),
    "counts": page.counts,
    "refused": refused,
    "own_log": [own_log.data, own_log.refused],
    "their_log": [their_log.data, their_log.refused],
    "telemetry": None if snapshot is None else len(snapshot["gpus"]),
    "history": len(source.history(60)),
}))
"""


def test_a_plain_users_source_sees_public_fields_of_others(system: System) -> None:
    """bob's TeamSource lists alice's job (owner, state) but gets no command, working
    directory, environment, spec or log of it, and no match when he searches its command
    line; his pause of it is refused (exit 4, naming alice); his own job's log he reads; a job he
    submits through it is his; the machine's telemetry he sees."""
    users = system.users
    alice_job = system.submit(users.alice, "sh", "-c", "echo alice-secret; sleep 120")
    bob_job = system.submit(users.bob, "sh", "-c", "echo bob-says-hi", wait=True)
    try:
        got = run_as(
            system, users.bob, SOURCE_SCRIPT, socket_of(system), str(alice_job), str(bob_job)
        )
    finally:
        system.wb(users.alice, "cancel", str(alice_job))
    public = {*PUBLIC_FIELDS, "owner"}
    assert set(got["raw_keys"][str(alice_job)]) <= public  # the page request's own rights
    assert {"argv", "cwd"} <= set(got["raw_keys"][str(bob_job)])  # his own job: whole
    uid = {
        who: int(subprocess.check_output(["id", "-u", who], text=True))
        for who in (users.alice, users.bob)
    }
    assert got["owners"][str(alice_job)] == uid[users.alice]
    assert got["owners"][str(bob_job)] == uid[users.bob]
    for name, argv, cwd, env, spec in (got["other_row"], got["other_shown"]):
        assert name == "sh" and argv is None and cwd == "" and env == {} and spec == {}
    assert got["events"] and got["events"][0] == "queued"
    assert got["secret_matches"] == 0  # the command line is alice's to read, even by search
    assert alice_job in got["public_matches"]
    assert got["mine"][:2] == [bob_job, got["submitted"][0]]
    assert got["pipeline"] == [[uid[users.bob], "one"], [uid[users.bob], "two"]]
    assert got["position"] == sorted(int(i) for i in got["owners"]).index(bob_job)
    assert sum(got["counts"].values()) == got["total"]
    message, code = got["refused"]
    assert code == NOT_PERMITTED and users.alice in message and users.bob in message
    assert got["submitted"][1:] == [uid[users.bob], "paused"]  # the TUI's submit: his job
    assert got["own_log"] == ["bob-says-hi\n", None]
    data, refusal = got["their_log"]
    assert data == "" and users.alice in refusal and "log" in refusal
    assert got["telemetry"] == 2  # the daemon's simulated GPUs


# bob opens the TUI on the team queue: his pause of alice's job and her log are refused, in
# words, and the app keeps running.
PILOT_SCRIPT = """
import asyncio, json, sys, time
from pathlib import Path
from screens.app import WorkbenchApp
from screens.jobtable import JobTable
from screens.queue import JobDetailScreen
from screens.teamsource import TeamSource
from workbench.paths import Home

socket, theirs = sys.argv[1], int(sys.argv[2])

async def until(pilot, predicate, what):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {what}")

async def main():
    app = WorkbenchApp(TeamSource(Home(Path.home() / ".workbench"), socket))
    out = {}
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("j")
        await until(pilot, lambda: any(j.id == theirs for j in app.screen.query_one(JobTable).window.jobs), "the team queue")
        table = app.screen.query_one(JobTable)
        index = next(table.window.offset + i for i, j in enumerate(table.window.jobs) if j.id == theirs)
        table.move_to(index)
        out["owner_column"] = "owner" in table.shown_columns
        await pilot.press("p")
        notes = lambda: [str(n.message) for n in app._notifications if "may not" in str(n.message)]
        await until(pilot, notes, "the refusal")
        out["refusal"] = notes()[0]
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, JobDetailScreen), "the job screen")
        log = app.screen.query_one("#log")
        await until(pilot, lambda: any("may not" in line.text for line in log.lines), "the log's refusal")
        out["log"] = [line.text for line in log.lines]
        out["running"] = app.is_running
    print(json.dumps(out))

asyncio.run(main())
"""


def test_a_plain_user_in_the_tui_is_told_what_is_refused(system: System) -> None:
    """bob's TUI shows alice's job with its owner; pausing it gives a notification naming
    alice, and its job screen shows the daemon's refusal of her log in the log pane."""
    users = system.users
    alice_job = system.submit(users.alice, "sh", "-c", "echo alice-secret; sleep 120")
    try:
        got = run_as(system, users.bob, PILOT_SCRIPT, socket_of(system), str(alice_job))
    finally:
        system.wb(users.alice, "cancel", str(alice_job))
    assert got["owner_column"]
    assert f"job {alice_job} is {users.alice}'s" in got["refusal"] and users.bob in got["refusal"]
    assert any(users.alice in line and "log" in line for line in got["log"])
    assert not any("alice-secret" in line for line in got["log"])
    assert got["running"]


async def test_root_sees_and_acts_on_the_team_queue(system: System, tmp_path: Path) -> None:
    """Root (an admin) opens the TUI on the team queue: every user's jobs with their owner,
    `w` toggles to root's own jobs (none) and back, a pause of alice's queued job goes
    through, and her job's log shows; the Dashboard shows the daemon's telemetry."""
    users = system.users
    alice_job = system.submit(users.alice, "sh", "-c", "echo alice-log-line; sleep 120")
    bob_job = system.submit(users.bob, "sh", "-c", "sleep 120")
    source = TeamSource(Home(tmp_path / "own"), socket_of(system))
    app = WorkbenchApp(source)
    try:
        async with app.run_test(size=(160, 40)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, DashboardScreen), what="dashboard")
            dashboard = app.screen
            await until(
                pilot,
                lambda: dashboard.snapshot is not None and len(dashboard.snapshot["gpus"]) == 2,
                what="the daemon's telemetry (its simulated GPUs)",
            )
            await until(pilot, lambda: source.history(60), what="the daemon's history")
            await pilot.press("j")
            await until(pilot, lambda: isinstance(app.screen, QueueScreen), what="queue")
            queue = app.screen
            shown = await until(
                pilot,
                lambda: (r := rows(app)) and str(alice_job) in r and str(bob_job) in r and r,
                what="both users' jobs",
            )
            assert shown[str(alice_job)]["owner"] == users.alice
            assert shown[str(bob_job)]["owner"] == users.bob
            status = queue.query_one("#queue-status")
            await until(pilot, lambda: "team queue" in text_of(status), what="the team label")
            await pilot.press("w")  # root's own jobs: none
            await until(pilot, lambda: not rows(app), what="only mine")
            await pilot.press("w")
            await until(pilot, lambda: str(alice_job) in rows(app), what="everyone's again")
            table = queue.table
            index = next(
                table.window.offset + i
                for i, j in enumerate(table.window.jobs)
                if j.id == alice_job
            )
            table.move_to(index)
            await until(pilot, lambda: (j := queue.selected()) and j.id == alice_job, what="cursor")
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, JobDetailScreen), what="detail")
            detail = app.screen
            log = detail.query_one("#log")
            await until(
                pilot,
                lambda: any("alice-log-line" in line.text for line in log.lines),
                what="alice's log, read by an admin",
            )
            assert detail.job is not None and detail.job.argv  # an admin sees the command
            await pilot.press("escape")
            await pilot.press("p")
            await until(
                pilot,
                lambda: (
                    json.loads(system.wb(users.carol, "show", str(alice_job), "--json").stdout)[
                        "state"
                    ]
                    == "paused"
                ),
                timeout=30,
                what="alice's job paused by root",
            )
    finally:
        for who, job in ((users.alice, alice_job), (users.bob, bob_job)):
            system.wb(who, "cancel", str(job))


async def test_the_tui_says_when_the_system_daemon_stops_answering(
    users: Users, tmp_path: Path
) -> None:
    """A system daemon stopped under the TUI: the Queue keeps its last rows and says the
    daemon is not answering, the app keeps running; the Dashboard samples by itself."""
    own = install_system(users.folder / "stopped", users)
    job_id = own.submit(users.alice, "sh", "-c", "sleep 60")
    app = WorkbenchApp(TeamSource(Home(tmp_path / "own"), socket_of(own)))
    try:
        async with app.run_test(size=(120, 30)) as pilot:
            await pilot.press("j")
            await until(pilot, lambda: str(job_id) in rows(app), what="the job")
            stop_system(own)
            status = app.screen.query_one("#queue-status")
            await until(
                pilot, lambda: "not answering" in text_of(status), what="the daemon's absence"
            )
            assert str(job_id) in rows(app) and app.is_running
            await pilot.press("d")
            dashboard = app.screen
            await until(
                pilot,
                lambda: isinstance(dashboard, DashboardScreen) and dashboard.snapshot is not None,
                what="a direct sample",
            )
    finally:
        stop_system(own)


@pytest.mark.slow
def test_workbench_in_tmux_opens_the_team_queue(system: System) -> None:
    """bob types `workbench` in a real terminal (tmux) with a system daemon installed and no
    WORKBENCH_HOME: the Queue is the team queue, alice's job shows with her name, and his
    cancel of it is refused on screen naming her; no traceback."""
    import shlex
    import shutil

    from conftest import wait_for
    from test_tmux_smoke import capture, keys, tmux

    assert shutil.which("tmux"), "tmux is needed (installed by .ci/setup)"
    users = system.users
    home = str(Path(f"~{users.bob}").expanduser())
    session = f"wb-team-{int(time.time() * 1000)}"
    command = shlex.join(
        [
            "env",
            "-u",
            "COLUMNS",
            "-u",
            "LINES",
            "-u",
            "WORKBENCH_HOME",
            f"WORKBENCH_SYSTEM_HOME={system.root}",
            f"HOME={home}",
            "runuser",
            "-u",
            users.bob,
            "--",
            *users.wb,
        ]
    )
    job_id = system.submit(users.alice, "sh", "-c", "sleep 120")
    tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "30", "-c", home, command)
    try:
        wait_for(lambda: "Dashboard" in capture(session), timeout=30, what="the TUI to draw")
        keys(session, "j")
        line = wait_for(
            lambda: next(
                (
                    row
                    for row in capture(session).splitlines()
                    if row.split()[:1] == [str(job_id)] and users.alice in row
                ),
                None,
            ),
            what=f"alice's job in bob's team queue: {capture(session)!r}",
        )
        assert "team queue" in capture(session), line
        keys(session, "end", "c")  # the cursor on the newest job: hers

        def asked_or_refused() -> str | None:
            screen = capture(session)
            return screen if "Cancel running job" in screen or "may not" in screen else None

        screen = wait_for(asked_or_refused, what="the confirmation")
        if "Cancel running job" in screen:
            keys(session, "y")
        wait_for(lambda: "may not" in capture(session), what=f"the refusal: {capture(session)!r}")
        assert "Traceback" not in capture(session)
        keys(session, "q")
    finally:
        tmux("kill-server", check=False)
        system.wb(users.alice, "cancel", str(job_id))


CANCEL_SCRIPT = """
import json, sys
from pathlib import Path
from screens.teamsource import TeamSource
from workbench.db.store import Store
from workbench.paths import Home, home_dir
from workbench.queue.requests import build_request

source = TeamSource(Home(Path.home() / ".workbench"), sys.argv[1])
spec = {"kind": "train", "dataset": "nothing", "target": "y"}
request = build_request(spec, Path.home(), "tui", paused=True)
team_id = source.act(lambda client: client.submit(request))
own_id = json.loads(json.dumps(source.ask("show", id=team_id)["job"]["spec"]))["team_of"]["job"]
source.act(lambda client: client.control(team_id, "cancel"))
store = Store.open(Home(home_dir()).state_db)
print(json.dumps({"own": str(store.get(own_id).state), "team": source.job(team_id).state}))
"""


def test_a_built_in_kind_cancelled_from_the_tui_is_not_left_queued_at_home(
    system: System,
) -> None:
    """The Queue screen's cancel of a built-in kind's team job that had not started left its
    job in the user's own home queued for ever (as `workbench cancel` did); now it is
    cancelled there too."""
    got = run_as(system, system.users.alice, CANCEL_SCRIPT, socket_of(system))
    assert got == {"own": "cancelled", "team": "cancelled"}, got
