"""TUI start-up (time to first frame against `python -c "import textual"`, and against a bare
Textual app's first frame in the same harness) and idle CPU use of the
TUI and the daemon's sampler over 60 s on the Dashboard in a real terminal (tmux).

Run: .venv/bin/python bench/tui.py [--idle-seconds 60] [--runs 5]
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
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def capture(session: str) -> str:
    return subprocess.run(
        ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
    ).stdout


def idle_cpu(env: dict[str, str], home: Path, seconds: float) -> tuple[float, float]:
    """Percent of one core used by the TUI and by the daemon over `seconds` of idle Dashboard."""
    from workbench.daemon.client import ensure_daemon
    from workbench.paths import Home

    daemon_pid = ensure_daemon(Home(home))
    session = f"wb-bench-{os.getpid()}"
    command = f"WORKBENCH_HOME={home} {sys.executable} -m workbench"
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40", command],
        check=True,
        env=env,
        cwd=ROOT,
    )
    try:
        pane_pid = int(
            subprocess.run(
                ["tmux", "list-panes", "-t", session, "-F", "#{pane_pid}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()[0]
        )
        deadline = time.monotonic() + 60
        while "Dashboard" not in capture(session) and time.monotonic() < deadline:
            time.sleep(0.2)
        if "Dashboard" not in capture(session):
            raise SystemExit(f"the TUI did not show the Dashboard:\n{capture(session)}")
        time.sleep(3)  # let start-up work settle before measuring idle use
        tui0, daemon0, t0 = cpu_seconds(pane_pid), cpu_seconds(daemon_pid), time.monotonic()
        time.sleep(seconds)
        tui1, daemon1, t1 = cpu_seconds(pane_pid), cpu_seconds(daemon_pid), time.monotonic()
        wall = t1 - t0
        return 100 * (tui1 - tui0) / wall, 100 * (daemon1 - daemon0) / wall
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        subprocess.run(
            [sys.executable, "-m", "workbench", "daemon", "stop"], env=env, capture_output=True
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="wb-bench-", dir="/tmp"))
    env = {**os.environ, "WORKBENCH_HOME": str(home)}
    env.pop("WORKBENCH_FAKE_NVML", None)
    try:
        baseline, bare, first, heavy = [], [], [], set()
        for _ in range(args.runs):
            baseline.append(timed([sys.executable, "-c", "import textual"], env)[0])
            bare.append(first_frame([sys.executable, "-c", BARE_FRAME], env)[0])
            elapsed, out = first_frame([sys.executable, "-c", FIRST_FRAME], env)
            first.append(elapsed)
            heavy.update(json.loads(out.strip().splitlines()[-1])["heavy"])
        ratio = median(first) / median(baseline)
        tui_pct, daemon_pct = idle_cpu(env, home, args.idle_seconds)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    imported = ", ".join(sorted(heavy)) or "none"
    rows = [
        ["time to first frame (median)", f"{median(first) * 1000:.0f} ms",
         f"{median(baseline) * 1000:.0f} ms (`python -c \"import textual\"`)",
         f"{ratio:.2f}x (goal < 1.5x)"],
        ["  same, against a bare Textual app's first frame", f"{median(first) * 1000:.0f} ms",
         f"{median(bare) * 1000:.0f} ms (Header, Static, Footer; same harness)",
         f"{median(first) / median(bare):.2f}x (bare app: {median(bare) / median(baseline):.2f}x"
         " the import)"],
        ["heavy modules imported at start", imported, "-",
         "ok" if not heavy & {"torch", "onnxruntime"} else "FAIL: torch/onnxruntime imported"],
        [f"TUI CPU, {args.idle_seconds:.0f} s idle on Dashboard (tmux)", f"{tui_pct:.2f}% of a core",
         "-", "goal < 3%"],
        ["daemon sampler CPU, same window", f"{daemon_pct:.2f}% of a core", "-", "goal < 1%"],
    ]  # fmt: skip
    body = table(["measure", "workbench", "baseline", "result"], rows)
    print(body)
    write_section("tui", "python bench/tui.py", body)
    return 0 if not heavy & {"torch", "onnxruntime"} else 1


if __name__ == "__main__":
    raise SystemExit(main())
