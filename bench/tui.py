"""TUI start-up (time to first frame against `python -c "import textual"` and against a bare
Textual app's first frame in the same harness); for every screen in a real terminal (tmux) with the
daemon sampling, the time from its key to its data and its idle CPU beside a bare Textual app's
(and btop's or glances' where installed); the Queue at 200, 5,000 and 20,000 jobs: open time,
idle CPU and memory.

First text: from launch to the first character on a real terminal (tmux), for `workbench` in a
new home and with its daemon running, beside btop's in the same run.

Run: .venv/bin/python bench/tui.py [--idle-seconds 15] [--repeats 2] [--runs 5] [--tiny]
     [--live-run-only] (every screen's idle CPU while one run trains, beside btop's)
     [--runs-open-only [--open-runs 200] [--points 50000]] (the Runs screen opening, beside
     btop's first text; with --tiny: 5 runs of 200 points)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import median, table, write_section

ROOT = Path(__file__).resolve().parent.parent

# Both children run this as their auto-pilot and write a line on the first frame.
SAY_FIRST_FRAME = """
import os

async def first_frame(pilot):
    await pilot.pause()
    os.write(1, b"FIRST FRAME\\n")  # print() is captured while the app runs
    pilot.app.exit()
"""

# Starts the real app headless, says so on its first frame and exits; reports what start-up
# imported. The parent times launch to that line: the exit (worker threads winding down) is
# not part of the first frame.
FIRST_FRAME = (
    SAY_FIRST_FRAME
    + """
import json, sys
from screens.app import WorkbenchApp
from screens.source import Source
from workbench.paths import Home

app = WorkbenchApp(Source(Home.current().ensure()))
app.run(headless=True, size=(120, 40), auto_pilot=first_frame)
heavy = [m for m in ("torch", "onnxruntime", "duckdb") if m in sys.modules]
print(json.dumps({"heavy": heavy}))
"""
)

# The same harness on a bare Textual app: how much of the gap to `import textual` is Textual's.
BARE_FRAME = (
    SAY_FIRST_FRAME
    + """
from textual.app import App
from textual.widgets import Footer, Header, Static

class Bare(App):
    def compose(self):
        yield Header()
        yield Static("hello")
        yield Footer()

Bare().run(headless=True, size=(120, 40), auto_pilot=first_frame)
"""
)


def first_frame(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Seconds from launch to the child's FIRST FRAME line, and the rest of its output."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - start
    rest, err = proc.communicate(timeout=120)
    if proc.returncode != 0 or not line.startswith("FIRST FRAME"):
        raise SystemExit(f"{argv[:3]} failed:\n{err[-2000:]}")
    return elapsed, rest


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv[:3]} failed:\n{done.stderr[-2000:]}")
    return elapsed, done.stdout


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children."""
    import psutil

    process = psutil.Process(pid)
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        try:
            times = member.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def rss_bytes(pid: int) -> int:
    import psutil

    process = psutil.Process(pid)
    return sum(m.memory_info().rss for m in [process, *process.children(recursive=True)])


class Terminal:
    """A program in its own tmux server (never the user's), read back with capture-pane."""

    def __init__(self, command: str, env: dict[str, str], size: tuple[int, int] = (120, 40)):
        self.server = f"wb-bench-{os.getpid()}-{time.monotonic_ns()}"
        subprocess.run(
            ["tmux", "-L", self.server, "new-session", "-d", "-s", "bench",
             "-x", str(size[0]), "-y", str(size[1]), command],
            check=True, env=env, cwd=ROOT,
        )  # fmt: skip
        out = self.tmux("list-panes", "-t", "bench", "-F", "#{pane_pid}")
        self.pid = int(out.split()[0])

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.server, *args], capture_output=True, text=True
        ).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "bench")

    def keys(self, *names: str) -> None:
        self.tmux("send-keys", "-t", "bench", *names)

    def wait_for(self, text: str, timeout: float = 60.0) -> float:
        """Seconds until `text` is on screen."""
        start = time.perf_counter()
        while text not in self.screen():
            if time.perf_counter() - start > timeout:
                raise SystemExit(f"{text!r} never showed:\n{self.screen()}")
            time.sleep(0.01)
        return time.perf_counter() - start

    def idle_percent(self, seconds: float) -> float:
        """Percent of one core the program used over `seconds` of doing nothing."""
        cpu0, t0 = cpu_seconds(self.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = cpu_seconds(self.pid), time.monotonic()
        return 100 * (cpu1 - cpu0) / (t1 - t0)

    def close(self) -> None:
        self.tmux("kill-server")


# (key, screen title, text on screen once the screen shows its data)
SCREENS = [
    ("d", "Dashboard", "window"),
    ("j", "Queue", " reason"),
    ("s", "Data", "dataset"),
    ("r", "Runs", "no runs yet"),
    ("m", "Models", "parity"),
]

BARE_APP = """
from textual.app import App
from textual.widgets import Footer, Header, Static

class Bare(App):
    def compose(self):
        yield Header()
        yield Static("bare app ready")
        yield Footer()

Bare().run()
"""


def workbench_command(home: Path) -> str:
    return f"env -u COLUMNS -u LINES WORKBENCH_HOME={home} {sys.executable} -m workbench"


def fill(home: Path, jobs: int) -> None:
    """A store with `jobs` jobs (most ended), made without a daemon."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tui_data import fill_jobs

    from workbench.db.store import Store
    from workbench.paths import Home

    store = Store.open(Home(home).ensure().state_db)
    fill_jobs(store, jobs)
    store.close()


def screens_idle(env: dict[str, str], home: Path, seconds: float, repeats: int) -> list[list[str]]:
    """Per screen: time from its key to its data on screen, and idle CPU beside a bare Textual
    app's, interleaved (bare, screen, bare, screen...) with the daemon sampling at 1 Hz."""
    rows = []
    bare_app = home / "bare_app.py"
    bare_app.write_text(BARE_APP)
    for key, title, ready in SCREENS:
        opened, idle, bare = [], [], []
        for _ in range(repeats):
            other = Terminal(f"{sys.executable} {bare_app}", env)
            try:
                other.wait_for("bare app ready")
                time.sleep(1)
                bare.append(other.idle_percent(seconds))
            finally:
                other.close()
            term = Terminal(workbench_command(home), env)
            try:
                term.wait_for("Dashboard")
                time.sleep(1)
                if key != "d":
                    term.keys(key)
                start = time.perf_counter()
                term.wait_for(ready)
                opened.append(time.perf_counter() - start)
                time.sleep(2)  # start-up work settles
                idle.append(term.idle_percent(seconds))
            finally:
                term.close()
        shown = "start screen" if key == "d" else f"{median(opened) * 1000:.0f} ms"
        rows.append(
            [title, shown, f"{median(idle):.2f}% of a core"
             f" ({min(idle):.2f}-{max(idle):.2f})", f"{median(bare):.2f}%"]
        )  # fmt: skip
    return rows


def queue_sizes(env: dict[str, str], sizes: list[int], seconds: float) -> list[list[str]]:
    """The Queue at each size: key to first rows, idle CPU and the TUI's memory, daemon running."""
    from workbench.daemon.client import ensure_daemon
    from workbench.paths import Home

    rows = []
    for count in sizes:
        home = Path(tempfile.mkdtemp(prefix=f"wb-bench-q{count}-", dir="/tmp"))
        local = {**env, "WORKBENCH_HOME": str(home)}
        try:
            fill(home, count)
            os.environ["WORKBENCH_HOME"] = str(home)
            ensure_daemon(Home(home))
            term = Terminal(workbench_command(home), local)
            try:
                term.wait_for("Dashboard")
                time.sleep(1)
                term.keys("j")
                start = time.perf_counter()
                term.wait_for(f"{count} sweep point {count - 1}")
                opened = time.perf_counter() - start
                time.sleep(2)
                idle = term.idle_percent(seconds)
                memory = rss_bytes(term.pid)
            finally:
                term.close()
        finally:
            subprocess.run([sys.executable, "-m", "workbench", "daemon", "stop"], env=local,
                           capture_output=True)  # fmt: skip
            shutil.rmtree(home, ignore_errors=True)
        rows.append(
            [f"Queue, {count:,} jobs", f"{opened * 1000:.0f} ms", f"{idle:.2f}% of a core",
             f"{memory / 1024**2:.0f} MiB"]
        )  # fmt: skip
    return rows


LIVE_TRAIN = """
kind = "train"
name = "live train"
dataset = "penguins_train"
target = "species"
model = "mlp"
hidden = [64, 64]
epochs = 100000
batch_size = 8
lr = 1e-3
seed = 0
"""


# (key, row label, text on screen once the screen shows its data while a run trains)
LIVE_SCREENS = [
    ("d", "Dashboard, one run training", "window"),
    ("j", "Queue, one run training", " reason"),
    ("s", "Data, one run training", "penguins_train"),
    ("r", "Runs, one run training", "live train"),
    ("m", "Models, one run training", "Models"),
]


def btop_idle(env: dict[str, str], seconds: float) -> float | None:
    """btop's idle CPU (percent of a core) over `seconds` in the same harness; None without it."""
    if shutil.which("btop") is None:
        return None
    term = Terminal("btop", env)
    try:
        term.wait_for("cpu", timeout=30)
        time.sleep(2)
        return term.idle_percent(seconds)
    finally:
        term.close()


def runs_live(
    env: dict[str, str], seconds: float, repeats: int, keys: str = "djsrm"
) -> list[list[str]]:
    """Every screen's idle CPU while one run trains (an MLP on the penguins, writing a metric
    row every step), in its own home with the daemon running, each repeat beside btop's idle
    CPU in the same run (btop, then each screen); the run is cancelled after. Rows: [screen,
    key to its data on screen, idle CPU (range), btop idle (range)]."""
    home = Path(tempfile.mkdtemp(prefix="wb-bench-live-", dir="/tmp"))
    local = {**env, "WORKBENCH_HOME": str(home)}
    cli = [sys.executable, "-m", "workbench"]
    screens = [screen for screen in LIVE_SCREENS if screen[0] in keys]
    opened: dict[str, list[float]] = {label: [] for _, label, _ in screens}
    idle: dict[str, list[float]] = {label: [] for _, label, _ in screens}
    btop: list[float] = []
    try:
        subprocess.run([*cli, "ingest", str(ROOT / "examples" / "penguins_train.csv"),
                        "--dataset", "penguins_train", "--wait"],
                       env=local, check=True, capture_output=True)  # fmt: skip
        spec = home / "live_train.toml"
        spec.write_text(LIVE_TRAIN)
        out = subprocess.run([*cli, "submit", "--spec", str(spec), "--json"], env=local,
                             check=True, capture_output=True, text=True).stdout  # fmt: skip
        job = json.loads(out)["id"]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # the run has started and written metrics
            listed = subprocess.run([*cli, "runs", "--json"], env=local, capture_output=True,
                                    text=True).stdout  # fmt: skip
            if any(r.get("state") == "running" for r in json.loads(listed or "[]")):
                time.sleep(5)  # past torch's import: training steps
                break
            time.sleep(1)
        for _ in range(repeats):
            seen = btop_idle(local, seconds)
            if seen is not None:
                btop.append(seen)
            for key, label, ready in screens:
                term = Terminal(workbench_command(home), local)
                try:
                    term.wait_for("Dashboard")
                    time.sleep(1)
                    if key != "d":
                        term.keys(key)
                    start = time.perf_counter()
                    term.wait_for(ready, timeout=120)
                    opened[label].append(time.perf_counter() - start)
                    if key == "r":
                        term.wait_for("running", timeout=120)
                    time.sleep(3)  # the first curves drawn, start-up work settled
                    idle[label].append(term.idle_percent(seconds))
                finally:
                    term.close()
        subprocess.run([*cli, "cancel", str(job)], env=local, capture_output=True)
    finally:
        subprocess.run([*cli, "daemon", "stop"], env=local, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    shown_btop = (
        f"{median(btop):.2f}% ({min(btop):.2f}-{max(btop):.2f})" if btop else "not installed"
    )
    return [
        [label, "start screen" if key == "d" else f"{median(opened[label]) * 1000:.0f} ms",
         f"{median(idle[label]):.2f}% of a core"
         f" ({min(idle[label]):.2f}-{max(idle[label]):.2f})", shown_btop]
        for key, label, _ in screens
    ]  # fmt: skip


def runs_open(env: dict[str, str], runs: int, points: int, repeats: int) -> list[list[str]]:
    """The Runs screen opening over `runs` ended runs of `points` metric points each (made as
    bench/track.py makes them): seconds from its key to the first run's row on a real terminal
    (tmux, 160x48), and to its curves drawn, each repeat beside btop's first text in the same
    run. Rows: [what, key to rows (range), btop's first text (range)], then the curves'."""
    from track import fill_runs

    from workbench.paths import Home

    home = Path(tempfile.mkdtemp(prefix="wb-bench-open-", dir="/tmp"))
    local = {**env, "WORKBENCH_HOME": str(home)}
    opened: list[float] = []
    curves: list[float] = []
    btop: list[float] = []
    try:
        fill_runs(Home(home).ensure(), runs, points, ("train_loss", "val_accuracy"))
        for _ in range(repeats):
            if shutil.which("btop"):
                btop += first_text("btop", local, 1)
            term = Terminal(workbench_command(home), local, size=(160, 48))
            try:
                term.wait_for("Dashboard")
                time.sleep(2)
                term.keys("r")
                start = time.perf_counter()
                # The second run's row (the legend names only the first, the selected one).
                term.wait_for(f"train.py lr={min(runs, 2) - 1} ", timeout=120)
                opened.append(time.perf_counter() - start)
                term.wait_for("⠶ train", timeout=120)  # the legend, drawn with the curves
                curves.append(time.perf_counter() - start)
            finally:
                term.close()
    finally:
        subprocess.run([sys.executable, "-m", "workbench", "daemon", "stop"], env=local,
                       capture_output=True)  # fmt: skip
        shutil.rmtree(home, ignore_errors=True)
    shown_btop = (
        f"{median(btop) * 1000:.0f} ms ({min(btop) * 1000:.0f}-{max(btop) * 1000:.0f})"
        if btop
        else "not installed"
    )
    return [
        [f"Runs, {runs} runs x {points:,} points: key to rows",
         f"{median(opened) * 1000:.0f} ms ({min(opened) * 1000:.0f}-{max(opened) * 1000:.0f})",
         shown_btop],
        ["  key to the first run's curves drawn",
         f"{median(curves) * 1000:.0f} ms ({min(curves) * 1000:.0f}-{max(curves) * 1000:.0f})",
         "-"],
    ]  # fmt: skip


def other_monitors(env: dict[str, str], seconds: float) -> list[list[str]]:
    """btop and glances idle CPU, where installed."""
    rows = []
    for name, command, ready in (
        ("btop (2 s refresh)", "btop", "cpu"),
        ("glances", "glances", "CPU"),
    ):
        if shutil.which(command) is None:
            rows.append([name, "not installed", "-", "-"])
            continue
        term = Terminal(command, env)
        try:
            term.wait_for(ready, timeout=30)
            time.sleep(2)
            rows.append([name, "-", f"{term.idle_percent(seconds):.2f}% of a core", "-"])
        finally:
            term.close()
    return rows


def first_text(
    command: str,
    env: dict[str, str],
    runs: int,
    size: tuple[int, int] = (120, 40),
    drawn: str | None = None,
    frames: list[float] | None = None,
) -> list[float]:
    """Seconds from launching `command` in a fresh tmux pane to the first visible text on it
    (the pane read every 5 ms), `runs` times: what a user waits for after pressing Enter. With
    `drawn`, the seconds until that text shows (the app's own first frame) go to `frames`."""
    times = []
    server = f"wb-first-{os.getpid()}"
    for run in range(runs):
        session = f"first{run}"
        tmux = ["tmux", "-L", server]
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        started = time.perf_counter()
        subprocess.run(
            [*tmux, "new-session", "-d", "-s", session, "-x", str(size[0]), "-y", str(size[1]),
             f"env WORKBENCH_HOME={env['WORKBENCH_HOME']} {command}"],
            env=env, check=True,
        )  # fmt: skip
        deadline = started + 30
        while time.perf_counter() < deadline:
            shown = subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True
            ).stdout
            if shown.strip() and len(times) <= run:
                times.append(time.perf_counter() - started)
            if len(times) > run and (drawn is None or drawn in shown):
                if drawn is not None and frames is not None:
                    frames.append(time.perf_counter() - started)
                break
            time.sleep(0.005)
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        time.sleep(0.3)
    return times


def first_text_rows(env: dict[str, str], home: Path, runs: int) -> list[list[str]]:
    """First text of `workbench` (a new home: no daemon yet; then with the daemon running)
    beside btop's, in the same terminal, interleaved run by run."""
    from workbench.daemon.client import ensure_daemon
    from workbench.paths import Home

    command = workbench_command(home)
    rows = []
    fresh: list[float] = []
    fresh_frames: list[float] = []
    frames: list[float] = []
    for _ in range(runs):
        root = Path(tempfile.mkdtemp(prefix="wb-first-", dir="/tmp"))
        fresh_env = {**env, "WORKBENCH_HOME": str(root / "home")}
        fresh += first_text(
            workbench_command(root / "home"), fresh_env, 1, drawn="Dashboard", frames=fresh_frames
        )
        subprocess.run([sys.executable, "-m", "workbench", "daemon", "stop"], env=fresh_env,
                       capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
    ensure_daemon(Home(home))
    running = first_text(command, env, runs, drawn="Dashboard", frames=frames)
    btop = first_text("btop", env, runs) if shutil.which("btop") else []
    for label, values in (
        ("workbench, new home (starts the daemon)", fresh),
        ("  its first frame (title bar drawn)", fresh_frames),
        ("workbench, daemon running", running),
        ("  its first frame (title bar drawn)", frames),
        ("btop", btop),
    ):
        shown = (
            f"{median(values) * 1000:.0f} ms ({min(values) * 1000:.0f}-{max(values) * 1000:.0f})"
            if values
            else "not installed"
        )
        verdict = (
            "-"
            if not values or label == "btop" or label.startswith("  ")
            else ("ok" if median(values) < 0.5 else "over the 0.5 s goal")
        )
        rows.append([label, shown, verdict])
    return rows


LIVE_HEADER = ["screen", "key to its data on screen", "idle CPU (goal < 1%)", "btop idle, same run"]
OPEN_HEADER = ["what", "median (range)", "btop's first text, same run"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--tiny", action="store_true", help="first text only, one run each (the smoke test)"
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=15.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", default="200,5000,20000")
    parser.add_argument(
        "--live-run-only",
        action="store_true",
        help="only every screen's idle CPU while one run trains, beside btop's (prints its table)",
    )
    parser.add_argument(
        "--runs-open-only",
        action="store_true",
        help="only the Runs screen opening over --open-runs runs of --points points each",
    )
    parser.add_argument(
        "--live-screens", default="djsrm", help="the screens' keys --live-run-only measures"
    )
    parser.add_argument("--open-runs", type=int, default=200)
    parser.add_argument("--points", type=int, default=50_000)
    args = parser.parse_args()
    env = {**os.environ}
    env.pop("WORKBENCH_FAKE_NVML", None)
    if args.live_run_only:
        live = runs_live(env, args.idle_seconds, args.repeats, args.live_screens)
        print(table(LIVE_HEADER, live))
        return 0
    if args.runs_open_only:
        if args.tiny:
            args.open_runs, args.points, args.repeats = 5, 200, 1
        print(table(OPEN_HEADER, runs_open(env, args.open_runs, args.points, args.repeats)))
        return 0
    home = Path(tempfile.mkdtemp(prefix="wb-bench-", dir="/tmp"))
    env["WORKBENCH_HOME"] = str(home)
    if args.tiny:
        try:
            rows = first_text_rows(env, home, 1)
        finally:
            subprocess.run([sys.executable, "-m", "workbench", "daemon", "stop"], env=env,
                           capture_output=True)  # fmt: skip
            shutil.rmtree(home, ignore_errors=True)
        print(table(["first text in tmux (120x40)", "median (range)", "goal < 0.5 s"], rows))
        return 0
    try:
        first_rows = first_text_rows(env, home, args.runs)
        baseline, bare, first, heavy = [], [], [], set()
        for _ in range(args.runs):
            baseline.append(timed([sys.executable, "-c", "import textual"], env)[0])
            bare.append(first_frame([sys.executable, "-c", BARE_FRAME], env)[0])
            elapsed, out = first_frame([sys.executable, "-c", FIRST_FRAME], env)
            first.append(elapsed)
            heavy.update(json.loads(out.strip().splitlines()[-1])["heavy"])
        from workbench.daemon.client import ensure_daemon
        from workbench.paths import Home

        fill(home, 200)
        ensure_daemon(Home(home))
        try:
            per_screen = screens_idle(env, home, args.idle_seconds, args.repeats)
            monitors = other_monitors(env, args.idle_seconds)
        finally:
            subprocess.run([sys.executable, "-m", "workbench", "daemon", "stop"], env=env,
                           capture_output=True)  # fmt: skip
        live = runs_live(env, args.idle_seconds, args.repeats)
        opening = runs_open(env, args.open_runs, args.points, args.repeats)
        sizes = queue_sizes(env, [int(s) for s in args.sizes.split(",")], args.idle_seconds)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    imported = ", ".join(sorted(heavy)) or "none"
    start_rows = [
        ["time to first frame (median)", f"{median(first) * 1000:.0f} ms",
         f"{median(baseline) * 1000:.0f} ms (`python -c \"import textual\"`)",
         f"{median(first) / median(baseline):.2f}x (goal < 1.5x)"],
        ["  same, against a bare Textual app's first frame", f"{median(first) * 1000:.0f} ms",
         f"{median(bare) * 1000:.0f} ms (Header, Static, Footer; same harness)",
         f"{median(first) / median(bare):.2f}x"],
        ["heavy modules imported at start", imported, "-",
         "ok" if not heavy & {"torch", "onnxruntime"} else "FAIL: torch/onnxruntime imported"],
    ]  # fmt: skip
    body = "\n\n".join(
        [
            "First text: from Enter to the first character on the screen, in a real terminal"
            f" (tmux, 120x40), {args.runs} runs each, interleaved with btop's:",
            table(["first text in tmux (120x40)", "median (range)", "goal < 0.5 s"], first_rows),
            table(["measure", "workbench", "baseline", "result"], start_rows),
            f"Each screen in a real terminal (tmux, 120x40), the daemon sampling at 1 Hz, 200 jobs;"
            f" idle over {args.idle_seconds:.0f} s, median of {args.repeats} (range), interleaved"
            " with a bare Textual app (Header, Static, Footer) measured the same way:",
            table(
                ["screen", "key to data on screen", "idle CPU", "bare Textual app idle"],
                per_screen + monitors,
            ),
            "Every screen while one run trains (same terminal, its own home; btop measured in"
            " the same run, before each round of screens):",
            table(LIVE_HEADER, live),
            "The Runs screen opening over many runs (tmux, 160x48; key to the first run's row):",
            table(OPEN_HEADER, opening),
            "The Queue at each size (same terminal, daemon running, most jobs ended):",
            table(["store", "key to rows on screen", "idle CPU", "TUI memory (RSS)"], sizes),
        ]
    )
    print(body)
    write_section("tui", f"python bench/tui.py --idle-seconds {args.idle_seconds:g}"
                  f" --repeats {args.repeats}", body)  # fmt: skip
    return 0 if not heavy & {"torch", "onnxruntime"} else 1


if __name__ == "__main__":
    raise SystemExit(main())
