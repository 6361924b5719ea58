"""The Dashboard (after btop and nvitop): per-GPU util and memory history charts over a chosen
window (1 min to 24 h, from the daemon's stored history), CPU per core, memory, network and disk
IO charts, and one process table for all GPUs with the job that owns each process. At 80x24 it
keeps a compact line pair per GPU, so every GPU stays on screen."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import DataTable, Input, Static

from screens.widgets import WINDOWS, Lines, WorkbenchScreen, chart, meter, spark
from workbench.units import format_duration, format_rate, format_size

PANELS = {
    "gpus": "GPUs",
    "cpu": "CPU",
    "memory": "Memory",
    "network": "Network",
    "disks": "Disks",
}
PROCESS_SORTS = ("gpu memory", "SM %", "CPU %", "host memory", "elapsed", "pid")
PROCESS_COLUMNS = (
    "pid",
    "user",
    "gpu",
    "job",
    "gpu mem",
    "sm%",
    "cpu%",
    "host mem",
    "elapsed",
    "command",
)
# Columns beside pid and command, most wanted first: each joins while the command keeps
# COMMAND_MIN cells (or all it needs), and one that every row leaves blank is left out.
PROCESS_PRIORITY = ("job", "user", "cpu%", "gpu", "gpu mem", "sm%", "host mem", "elapsed")
COMMAND_MIN = 32
BLANK_CELLS = frozenset({"-", "n/a", ""})
CORE_SAMPLES = 60  # per-core readings kept while the screen is open (the store keeps totals)


@dataclass
class TelemetryRead(Message):
    """A worker's read: the latest snapshot, the history for the window (None: not re-read),
    and details of the GPU processes."""

    snapshot: dict[str, Any] | None
    history: list[dict[str, Any]] | None
    processes: dict[int, dict[str, Any]]


def gpu_points(
    history: list[dict[str, Any]], index: int, key: str, scale: float = 1.0
) -> list[tuple[float, float | None]]:
    """(time, value * scale) of one GPU's history field."""
    out: list[tuple[float, float | None]] = []
    for row in history:
        match = next((g for g in row.get("gpus") or [] if g.get("index") == index), None)
        value = match.get(key) if match else None
        out.append((row["time"], None if value is None else value * scale))
    return out


def points(history: list[dict[str, Any]], key: str) -> list[tuple[float, float | None]]:
    return [(row["time"], row.get(key)) for row in history]


def crop(text: Text, width: int) -> Text:
    """One line, never wrapped: cut at `width` cells."""
    text.no_wrap = True
    text.overflow = "crop"
    text.truncate(width)
    return text


def gpu_header(gpu: dict[str, Any], width: int) -> Text:
    """`GPU 0 NVIDIA H100 ...  util 92%  mem 13.0 GiB/80.0 GiB 16%  71°C  512/700 W`."""
    title = Text()
    title.append(f"GPU {gpu['index']} ", style="bold")
    title.append((gpu.get("name") or "?").removeprefix("NVIDIA "), style="bold cyan")
    if not gpu.get("ok", True):
        title.append(f"  error: {gpu.get('error') or 'unavailable'}", style="bold red")
        return crop(title, width)
    total = gpu.get("memory_total_bytes") or 0
    used = gpu.get("memory_used_bytes") or 0
    util = gpu.get("util_gpu")
    facts = [
        ("util", f"{util:.0f}%" if util is not None else "n/a", "green"),
        (
            "mem",
            f"{format_size(used)}/{format_size(total)} {used / total * 100:.0f}%"
            if total
            else "n/a",
            "cyan",
        ),
    ]
    temperature = gpu.get("temperature_c")
    power, limit = gpu.get("power_draw_w"), gpu.get("power_limit_w")
    extra = []
    if temperature is not None:
        extra.append((f"{temperature}°C", "bold red" if temperature >= 80 else ""))
    if power is not None:
        extra.append((f"{power:.0f}/{limit or 0:.0f} W", ""))
    if gpu.get("fan_percent") is not None and width >= 100:
        extra.append((f"fan {gpu['fan_percent']}%", "dim"))
    if gpu.get("mig_mode"):
        extra.append(("MIG", "magenta"))
    for label, value, style in facts:
        title.append(f"  {label} ", style="dim")
        title.append(value, style=style)
    for value, style in extra:
        title.append(f"  {value}", style=style)
    if gpu.get("pci_bus_id") and width >= 140:
        title.append(f"  {gpu['pci_bus_id']}", style="dim")
    return crop(title, width)


def render_gpu(
    gpu: dict[str, Any],
    history: list[dict[str, Any]],
    end: float,
    window_s: float,
    width: int,
    height: int,
) -> list[Text]:
    """One GPU in `height` lines: its header, then util and memory charts side by side (with
    a time axis) when there are 4+ lines, else one line of both as sparklines."""
    lines = [gpu_header(gpu, width)]
    if not gpu.get("ok", True) or height < 2:
        return lines
    total = float(gpu.get("memory_total_bytes") or 0)
    util = gpu_points(history, gpu["index"], "util")
    memory = gpu_points(history, gpu["index"], "memory_used", 100 / total if total else 0.0)
    half = (width - 2) // 2
    if height < 4:
        line = Text("util ", style="dim")
        line.append(spark([v for _, v in util], half - 5, 100))
        line.append("  mem ", style="dim")
        line.append(spark([v for _, v in memory], width - half - 8, 100))
        lines.append(crop(line, width))
        return lines
    chart_rows = height - 2
    left = chart(util, end, window_s, half, chart_rows, 100, "green", "100%")
    right = chart(memory, end, window_s, width - half - 2, chart_rows, 100, "cyan", "100%")
    for a, b in zip(left, right, strict=True):
        row = Text()
        row.append_text(a)
        row.append(" " * max(0, half - a.cell_len) + "  ")
        row.append_text(b)
        lines.append(crop(row, width))
    return lines[:height]


def core_meters(
    per_core: list[float | None],
    width: int,
    rows: int,
    history: list[list[float | None]] | None = None,
) -> list[Text]:
    """A cell per core, `index sparkline pct`, in as many columns as fit `rows` lines; the
    sparkline is that core's recent readings (`history`: one list per sample, oldest first)."""
    if not per_core or rows < 1:
        return []
    columns = max(1, -(-len(per_core) // rows))
    cell = max(12, width // columns - 1)
    lines = []
    for row in range(min(rows, len(per_core))):
        line = Text()
        for column in range(columns):
            index = column * rows + row
            if index >= len(per_core):
                continue
            if column:
                line.append(" ")
            value = per_core[index]
            part = Text(f"{index:>3} ", style="dim")
            series = [s[index] if index < len(s) else None for s in history or []]
            part.append(spark(series or [value], cell - 9, 100))
            style = "green" if (value or 0) < 60 else "yellow" if (value or 0) < 85 else "red"
            part.append(f" {value:3.0f}%" if value is not None else "  n/a", style=style)
            line.append_text(crop(part, cell))
        lines.append(crop(line, width))
    return lines


def load_text(cpu: dict[str, Any], digits: int = 2) -> str:
    """The 1, 5 and 15 minute load averages, `13.95 11.88 10.02` (`digits` decimals)."""
    return " ".join(f"{v:.{digits}f}" for v in cpu.get("load_avg") or []) or "n/a"


def render_cpu(
    snap: dict[str, Any],
    history: list[dict[str, Any]],
    end: float,
    window_s: float,
    width: int,
    height: int,
    core_history: list[list[float | None]] | None = None,
) -> list[Text]:
    """Title with the load, the total CPU chart, then each core with its recent readings."""
    cpu = snap.get("cpu") or {}
    per_core = cpu.get("per_core") or []
    title = Text("CPU ", style="bold")
    total = cpu.get("total")
    title.append(f"{total:.0f}%" if total is not None else "n/a", style="green")
    count = cpu.get("count", len(per_core))
    for cores, digits in ((f"{count} cores", 2), (f"{count}c", 2), (f"{count}c", 1), ("", 1)):
        tail = f"  {cores}  load {load_text(cpu, digits)}" if cores else f" {load_text(cpu, 1)}"
        if title.cell_len + len(tail) <= width:
            break
    title.append(tail, style="dim")
    lines = [crop(title, width)]
    core_rows = min(len(per_core), max(1, (height - 1) // 2))
    chart_rows = height - 1 - core_rows - 1
    if chart_rows >= 2:
        lines += chart(
            points(history, "cpu"), end, window_s, width, chart_rows, 100, "green", "100%"
        )
    lines += core_meters(per_core, width, height - len(lines), core_history)
    return lines[:height]


def render_memory(
    snap: dict[str, Any],
    history: list[dict[str, Any]],
    end: float,
    window_s: float,
    width: int,
    height: int,
) -> list[Text]:
    memory, swap = snap.get("memory") or {}, snap.get("swap") or {}
    total = float(memory.get("total_bytes") or 0)
    title = Text("Memory ", style="bold")
    title.append(
        f"{format_size(memory.get('used_bytes'))}/{format_size(memory.get('total_bytes'))}",
        style="magenta",
    )
    lines = [crop(title, width)]
    bar = max(4, width - 28)
    if swap.get("total_bytes"):
        swap_line = meter(
            "swap",
            swap.get("percent"),
            bar,
            f"{format_size(swap.get('used_bytes'))}/{format_size(swap.get('total_bytes'))}",
        )
    else:
        swap_line = Text("swap none", style="dim")
    chart_rows = height - 3
    if chart_rows >= 2 and total:
        used = [
            (t, None if v is None else v / total * 100) for t, v in points(history, "memory_used")
        ]
        lines += chart(used, end, window_s, width, chart_rows, 100, "magenta", "100%")
    else:
        lines.append(crop(meter("ram", memory.get("percent"), bar), width))
    lines.append(crop(swap_line, width))
    return lines[:height]


def rate_charts(
    history: list[dict[str, Any]],
    keys: tuple[tuple[str, str, str], ...],
    end: float,
    window_s: float,
    width: int,
    rows: int,
) -> list[Text]:
    """Per (history key, label, style): a label line with the window's peak, then a chart
    scaled to that peak; the time axis under the last one."""
    lines: list[Text] = []
    each = max(2, rows // len(keys))
    for position, (key, label, style) in enumerate(keys):
        series = points(history, key)
        peak = max((v for _, v in series if v is not None), default=0.0)
        axis = position == len(keys) - 1
        height = each - 1 - (1 if axis else 0)
        if height < 1:
            continue
        lines.append(Text(f"{label}  peak {format_rate(peak)}", style="dim"))
        lines += chart(series, end, window_s, width, height, peak or 1.0, style, "", axis=axis)
    return [crop(line, width) for line in lines]


def render_network(
    snap: dict[str, Any],
    history: list[dict[str, Any]],
    end: float,
    window_s: float,
    width: int,
    height: int,
) -> list[Text]:
    interfaces = snap.get("network") or {}
    rx = sum(r.get("rx_bytes_per_s") or 0 for r in interfaces.values())
    tx = sum(r.get("tx_bytes_per_s") or 0 for r in interfaces.values())
    title = Text("Net ", style="bold")
    title.append(f"rx {format_rate(rx)}", style="green")
    title.append(f" tx {format_rate(tx)}", style="yellow")
    lines = [crop(title, width)]
    if height - 1 >= 5:
        lines += rate_charts(
            history,
            (("net_rx", "rx", "green"), ("net_tx", "tx", "yellow")),
            end,
            window_s,
            width,
            height - 1,
        )
    names = sorted(interfaces)
    if len(lines) < height:
        lines.append(
            crop(Text(" ".join(names) if names else "no interfaces up", style="dim"), width)
        )
    return lines[:height]


def render_disks(
    snap: dict[str, Any],
    history: list[dict[str, Any]],
    end: float,
    window_s: float,
    width: int,
    height: int,
) -> list[Text]:
    io = snap.get("disk_io") or {}
    read = sum(r.get("read_bytes_per_s") or 0 for r in io.values())
    write = sum(r.get("write_bytes_per_s") or 0 for r in io.values())
    title = Text("Disk ", style="bold")
    title.append(f"r {format_rate(read)}", style="green")
    title.append(f" w {format_rate(write)}", style="yellow")
    lines = [crop(title, width)]
    disks = snap.get("disks") or []
    folders = snap.get("folders") or {}
    usage = [
        crop(
            meter(
                disk["mount"][-5:],
                disk.get("percent"),
                max(4, width - 30),
                f"{format_size(disk.get('used_bytes'))}/{format_size(disk.get('total_bytes'))}",
            ),
            width,
        )
        for disk in disks
    ]
    usage.append(
        crop(
            Text(
                f"lake {format_size(folders.get('lake_bytes'))}  runs {format_size(folders.get('runs_bytes'))}",
                style="dim",
            ),
            width,
        )
    )
    chart_rows = height - 1 - len(usage)
    if chart_rows >= 5:
        lines += rate_charts(
            history,
            (("disk_read", "read", "green"), ("disk_write", "write", "yellow")),
            end,
            window_s,
            width,
            chart_rows,
        )
    return (lines + usage)[:height]


def host_lines_compact(
    snap: dict[str, Any], history: list[dict[str, Any]], width: int
) -> list[Text]:
    """Three lines for 80 columns: CPU with its sparkline and memory; cores; network and disks."""
    cpu = snap.get("cpu") or {}
    memory = snap.get("memory") or {}
    half = width // 2
    first = meter("cpu", cpu.get("total"), max(4, half - 26))
    first.append(" ")
    first.append(spark([r.get("cpu") for r in history], 12, 100))
    first = crop(first, half)
    first.append(" " * (half - first.cell_len))
    first.append_text(
        meter(
            "mem",
            memory.get("percent"),
            max(4, width - half - 31),
            f"{format_size(memory.get('used_bytes'))}/{format_size(memory.get('total_bytes'))}",
        )
    )
    per_core = cpu.get("per_core") or []
    # The load first: with many cores the line is cut at its end, never the load.
    cores = Text(f"load {load_text(cpu)}  cores ", style="dim")
    for index, value in enumerate(per_core):
        cores.append(f"{index}:", style="dim")
        if value is None:
            cores.append("n/a ", style="dim")
        else:
            style = "green" if value < 60 else "yellow" if value < 85 else "red"
            cores.append(f"{value:.0f}% ", style=style)
    interfaces = snap.get("network") or {}
    io = snap.get("disk_io") or {}
    rates = Text("net ", style="bold")
    rates.append(
        f"rx {format_rate(sum(r.get('rx_bytes_per_s') or 0 for r in interfaces.values()))}",
        style="green",
    )
    rates.append(
        f" tx {format_rate(sum(r.get('tx_bytes_per_s') or 0 for r in interfaces.values()))}",
        style="yellow",
    )
    rates.append("  disk ", style="bold")
    rates.append(
        f"r {format_rate(sum(r.get('read_bytes_per_s') or 0 for r in io.values()))}", style="green"
    )
    rates.append(
        f" w {format_rate(sum(r.get('write_bytes_per_s') or 0 for r in io.values()))}",
        style="yellow",
    )
    return [crop(first, width), crop(cores, width), crop(rates, width)]


SORT_COLUMNS = {
    "gpu memory": "gpu mem",
    "SM %": "sm%",
    "CPU %": "cpu%",
    "host memory": "host mem",
    "elapsed": "elapsed",
    "pid": "pid",
}


def process_rows(
    snap: dict[str, Any],
    details: dict[int, dict[str, Any]],
    now: float,
    machine: bool = False,
    text: str = "",
) -> list[dict[str, Any]]:
    """Every GPU process of every GPU with its host details, as the table shows them; with
    `machine`, every other process in `details` too (no GPU columns); with `text`, only the
    rows whose pid, user, job or command holds it (any case)."""
    out = []
    for gpu in snap.get("gpus") or []:
        for proc in gpu.get("processes") or []:
            info = details.get(proc["pid"], {})
            started = info.get("started")
            out.append(
                {
                    "pid": proc["pid"],
                    "user": info.get("user") or "-",
                    "gpu": gpu["index"],
                    "job_id": proc.get("job_id"),
                    "job": f"{proc['job_id']} {proc.get('job_name') or ''}".strip()
                    if proc.get("job_id") is not None
                    else "-",
                    "gpu_mem": proc.get("used_memory_bytes"),
                    "sm": proc.get("sm_util"),
                    "cpu": info.get("cpu_percent"),
                    "rss": info.get("rss_bytes"),
                    "elapsed": (now - started) if started else None,
                    "command": info.get("command") or proc.get("command") or "?",
                    "ppid": info.get("ppid"),
                }
            )
    if machine:
        on_gpu = {row["pid"] for row in out}
        for pid, info in details.items():
            if pid in on_gpu:
                continue
            started = info.get("started")
            out.append(
                {
                    "pid": pid,
                    "user": info.get("user") or "-",
                    "gpu": "-",
                    "job_id": None,
                    "job": "-",
                    "gpu_mem": None,
                    "sm": None,
                    "cpu": info.get("cpu_percent"),
                    "rss": info.get("rss_bytes"),
                    "elapsed": (now - started) if started else None,
                    "command": info.get("command") or "?",
                    "ppid": info.get("ppid"),
                }
            )
    if text:
        needle = text.lower()
        out = [
            row
            for row in out
            if any(needle in str(row[k]).lower() for k in ("pid", "user", "job", "command"))
        ]
    return out


def sort_processes(rows: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    key = {
        "gpu memory": "gpu_mem",
        "SM %": "sm",
        "CPU %": "cpu",
        "host memory": "rss",
        "elapsed": "elapsed",
        "pid": "pid",
    }[sort]
    descending = key != "pid"
    return sorted(rows, key=lambda r: (r[key] is not None, r[key] or 0), reverse=descending)


TREE_DEPTH = 8  # deeper processes are drawn at this depth (their branch still shows)


def process_tree(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` (each with `pid` and `ppid`) as a tree, as btop's and nvitop's tree views draw it:
    each process under its parent, siblings in the order given (the sort), a root being any
    row whose parent is not among `rows` (filtered out, or not listed). Each returned row is a
    copy with `tree`, the branch drawn before its command (`├─ `, `│  └─ `...)."""
    pids = {row["pid"] for row in rows}
    children: dict[int, list[dict[str, Any]]] = {}
    roots = []
    for row in rows:
        parent = row.get("ppid")
        if isinstance(parent, int) and parent in pids and parent != row["pid"]:
            children.setdefault(parent, []).append(row)
        else:
            roots.append(row)
    out: list[dict[str, Any]] = []
    seen: set[int] = set()

    def walk(row: dict[str, Any], lead: str, last: bool, depth: int) -> None:
        if row["pid"] in seen:  # a pid reused between two reads: never loop
            return
        seen.add(row["pid"])
        branch = "" if depth == 0 else lead + ("└─ " if last else "├─ ")
        out.append({**row, "tree": branch})
        below = children.get(row["pid"], [])
        inner = lead if depth == 0 else lead + ("   " if last else "│  ")
        if depth >= TREE_DEPTH:
            inner = lead
        for index, child in enumerate(below):
            walk(child, inner, index == len(below) - 1, depth + 1)

    for root in roots:
        walk(root, "", True, 0)
    for row in rows:  # a cycle of parents has no root: list its members flat
        if row["pid"] not in seen:
            walk(row, "", True, 0)
    return out


def process_cells(row: dict[str, Any], command_width: int) -> tuple[Text, ...]:
    def right(value: str) -> Text:
        return Text(value, justify="right")

    branch = row.get("tree", "")
    # The branch never takes more than a third of the command's room.
    branch = branch[-max(0, command_width // 3) :] if len(branch) > command_width // 3 else branch
    command = branch + row["command"]
    if len(command) > command_width:
        command = command[: max(0, command_width - 1)] + "…"
    return (
        right(str(row["pid"])),
        Text(row["user"][:10]),
        right(str(row["gpu"])),
        Text(row["job"][:24], style="bold yellow" if row["job_id"] is not None else "dim"),
        right(format_size(row["gpu_mem"]) if row["gpu_mem"] is not None else "n/a"),
        right(f"{row['sm']}" if row["sm"] is not None else "-"),
        right(f"{row['cpu']:.0f}" if row["cpu"] is not None else "-"),
        right(format_size(row["rss"]) if row["rss"] is not None else "-"),
        right(format_duration(row["elapsed"]) if row["elapsed"] is not None else "-"),
        Text(command[: len(branch)], style="dim") + Text(command[len(branch) :]),
    )


def choose_process_columns(
    full: list[dict[str, Text]], width: int, sorted_by: str = "pid"
) -> tuple[str, ...]:
    """Which process columns fit `width` cells for rows `full` ({column: cell}, the command
    whole): pid, command and the one the rows are sorted by always; then each of PROCESS_PRIORITY that some row fills, while
    the command keeps COMMAND_MIN cells (or its longest, if shorter). Each column costs its
    widest cell or label (+2 for a sort arrow) and DataTable's two cells of padding. Returns
    the columns in PROCESS_COLUMNS order."""

    def cost(name: str) -> int:
        return max([len(name) + 2] + [row[name].cell_len for row in full]) + 2

    longest = max((row["command"].cell_len for row in full), default=0)
    room = width - cost("pid") - 2
    keep = min(COMMAND_MIN, max(longest, len("command")))
    chosen = {"pid", "command", sorted_by}
    if sorted_by not in ("pid", "command"):
        room -= cost(sorted_by)
    for name in PROCESS_PRIORITY:
        if name in chosen:
            continue
        if full and all(row[name].plain.strip() in BLANK_CELLS for row in full):
            continue
        if room - cost(name) >= keep:
            chosen.add(name)
            room -= cost(name)
    return tuple(c for c in PROCESS_COLUMNS if c in chosen)


class DashboardScreen(WorkbenchScreen):
    """Live machine charts and the GPU process table. Polls only while it is the current
    screen; the history is re-read as often as one chart column spans."""

    TITLE_NAME = "Dashboard"
    AUTO_FOCUS = "#procs"
    BINDINGS = [
        Binding(
            "w",
            "window",
            "Window",
            id="dashboard.window",
            tooltip="History window of the charts: 1 min, 10 min, 1 h, 24 h",
        ),
        Binding(
            "o",
            "sort",
            "Sort",
            id="dashboard.sort",
            tooltip="Sort processes by GPU memory, SM %, CPU %, host memory, elapsed, pid",
        ),
        Binding(
            "a",
            "machine",
            "All procs",
            id="dashboard.machine",
            tooltip="Every process of the machine, not only those on a GPU (again: GPU only)",
        ),
        Binding(
            "t",
            "tree",
            "Tree",
            id="dashboard.tree",
            tooltip="Processes as a tree, each under its parent (again: a flat list)",
            show=False,
        ),
        Binding(
            "slash",
            "find",
            "Find",
            id="dashboard.find",
            tooltip="Show only processes whose pid, user, job or command holds a text",
        ),
        Binding(
            "enter",
            "open_job",
            "Job",
            id="dashboard.open_job",
            tooltip="Open the job that owns the selected process",
        ),
        Binding(
            "c",
            "cancel_job",
            "Cancel job",
            id="dashboard.cancel_job",
            tooltip="Cancel the job that owns the selected process (asks first)",
        ),
        Binding(
            "1",
            "toggle('gpus')",
            "GPUs",
            id="dashboard.gpus",
            tooltip="Show or hide the GPUs",
            show=False,
        ),
        Binding(
            "2",
            "toggle('cpu')",
            "CPU",
            id="dashboard.cpu",
            tooltip="Show or hide the CPU panel",
            show=False,
        ),
        Binding(
            "3",
            "toggle('memory')",
            "Memory",
            id="dashboard.memory",
            tooltip="Show or hide the memory panel",
            show=False,
        ),
        Binding(
            "4",
            "toggle('network')",
            "Network",
            id="dashboard.network",
            tooltip="Show or hide the network panel",
            show=False,
        ),
        Binding(
            "5",
            "toggle('disks')",
            "Disks",
            id="dashboard.disks",
            tooltip="Show or hide the disks panel",
            show=False,
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.snapshot: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.history_read_at = 0.0
        self.window_index = 1  # 10 min
        self.sort_index = 0
        self.hidden: set[str] = set()
        self.details: dict[int, dict[str, Any]] = {}
        self.processes: list[dict[str, Any]] = []
        self.shown_rows: list[Any] = []
        self.columns: tuple[str, ...] = ()
        self.core_history: deque[list[float | None]] = deque(maxlen=CORE_SAMPLES)
        self.core_time: float | None = None
        self.columns = ()
        self.machine = False  # every process of the machine, not only GPU ones
        self.as_tree = False  # processes under their parents
        self.process_filter = ""

    @property
    def window_s(self) -> float:
        return WINDOWS[self.window_index][0]

    def compose(self) -> ComposeResult:
        yield self.title_bar()
        yield Static(id="gpu-status")
        yield Lines(id="gpus")
        with Horizontal(id="host"):
            for key in ("cpu", "memory", "network", "disks"):
                yield Lines(id=key, classes="host-panel")
        yield Lines(id="host-compact")
        procs: DataTable[Any] = DataTable(id="procs", cursor_type="row", zebra_stripes=True)
        procs.border_title = "GPU processes"
        yield procs
        find = Input(placeholder="text in pid, user, job or command; Enter applies", id="proc-find")
        find.display = False
        yield find
        yield self.bottom_bar()

    def on_mount(self) -> None:
        self.poll()

    def process_columns(self, full: list[dict[str, Text]]) -> tuple[str, ...]:
        """The columns shown for rows `full` ({column: cell}) at this width (see
        `choose_process_columns`)."""
        sorted_by = SORT_COLUMNS[PROCESS_SORTS[self.sort_index]]
        return choose_process_columns(full, self.size.width - 3, sorted_by)

    def on_screen_resume(self) -> None:
        self.history_read_at = 0.0
        self.poll()

    # ---- keys ------------------------------------------------------------------------

    def action_toggle(self, panel: str) -> None:
        if panel in self.hidden:
            self.hidden.discard(panel)
        else:
            self.hidden.add(panel)
        self.notify(f"{PANELS[panel]} {'hidden' if panel in self.hidden else 'shown'}", timeout=1.5)
        self.refresh_panels()

    def action_window(self) -> None:
        self.window_index = (self.window_index + 1) % len(WINDOWS)
        self.history_read_at = 0.0
        self.notify(f"history window {WINDOWS[self.window_index][1]}", timeout=1.5)
        self.poll()

    def action_sort(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(PROCESS_SORTS)
        self.notify(f"processes by {PROCESS_SORTS[self.sort_index]}", timeout=1.5)
        self.processes = self.ordered(self.processes)
        self.refresh_processes()

    def action_machine(self) -> None:
        self.machine = not self.machine
        gpu_sort = PROCESS_SORTS[self.sort_index] in ("gpu memory", "SM %")
        on_gpu = any(g.get("processes") for g in (self.snapshot or {}).get("gpus") or [])
        if self.machine and gpu_sort and not on_gpu:
            self.sort_index = PROCESS_SORTS.index("CPU %")  # btop's order when no GPU is busy
        self.notify("every process" if self.machine else "GPU processes only", timeout=1.5)
        self.poll()

    def action_tree(self) -> None:
        self.as_tree = not self.as_tree
        self.notify("processes as a tree" if self.as_tree else "processes as a list", timeout=1.5)
        self.processes = self.ordered(self.processes)
        self.refresh_processes()

    def ordered(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`rows` in the chosen sort, as a tree under their parents when the tree is on."""
        rows = sort_processes(
            [{k: v for k, v in row.items() if k != "tree"} for row in rows],
            PROCESS_SORTS[self.sort_index],
        )
        return process_tree(rows) if self.as_tree else rows

    def action_find(self) -> None:
        find = self.query_one("#proc-find", Input)
        find.value = self.process_filter
        find.display = True
        find.focus()

    @on(Input.Submitted, "#proc-find")
    def apply_find(self, event: Input.Submitted) -> None:
        event.input.display = False
        self.query_one("#procs", DataTable).focus()
        self.process_filter = event.value.strip()
        if self.snapshot is not None:
            self.refresh_panels()

    def key_escape(self) -> None:
        find = self.query_one("#proc-find", Input)
        if find.display:
            find.display = False
            self.query_one("#procs", DataTable).focus()

    def selected_process(self) -> dict[str, Any] | None:
        table = self.query_one("#procs", DataTable)
        if not self.processes or table.row_count == 0:
            return None
        row = table.cursor_coordinate.row
        return self.processes[row] if row < len(self.processes) else None

    def action_open_job(self) -> None:
        proc = self.selected_process()
        if proc is None or proc["job_id"] is None:
            self.notify("no job owns the selected process", severity="warning")
            return
        from screens.queue import JobDetailScreen

        self.app.push_screen(JobDetailScreen(proc["job_id"]))

    @on(DataTable.RowSelected, "#procs")
    def row_selected(self) -> None:
        self.action_open_job()

    def action_cancel_job(self) -> None:
        proc = self.selected_process()
        if proc is None or proc["job_id"] is None:
            self.notify("no job owns the selected process", severity="warning")
            return
        from screens.queue import ConfirmScreen

        job_id = proc["job_id"]

        def answered(yes: bool | None) -> None:
            if yes:
                self.notify(f"job {job_id}: cancel requested", timeout=2)
                self.send_cancel(job_id)

        self.app.push_screen(
            ConfirmScreen(f"Cancel job {proc['job']} (pid {proc['pid']})?"), answered
        )

    @work(thread=True, exit_on_error=False, group="actions", description="cancel a job")
    def send_cancel(self, job_id: int) -> None:
        try:
            result = self.app.source.act(lambda client: client.control(job_id, "cancel"))  # type: ignore[attr-defined]
            self.app.call_from_thread(self.notify, f"job {job_id}: {result}")
        except Exception as error:
            self.app.call_from_thread(self.notify, f"job {job_id}: {error}", severity="error")

    # ---- reading ---------------------------------------------------------------------

    @work(
        thread=True,
        exclusive=True,
        exit_on_error=False,
        group="telemetry",
        description="read telemetry",
    )
    def poll(self) -> None:
        """The latest snapshot each second; the window's history only when a chart column has
        passed (window / 120 columns, at least 1 s), averaged into column-wide buckets."""
        source = self.app.source  # type: ignore[attr-defined]
        snapshot = source.telemetry()
        if snapshot is None:
            snapshot = self._fallback_snapshot()
        now = source.now()
        window = self.window_s
        history = None
        if now - self.history_read_at >= max(1.0, window / 120):
            bucket = window / 240 if window > 600 else None
            history = source.history(window, bucket)
        pids = [
            p["pid"] for g in (snapshot or {}).get("gpus") or [] for p in g.get("processes") or []
        ]
        details = source.process_details(pids) if pids else {}
        if self.machine:
            details = {**source.machine_processes(), **details}
        self.post_message(TelemetryRead(snapshot, history, details))

    def on_telemetry_read(self, message: TelemetryRead) -> None:
        self.snapshot = message.snapshot
        self.details = message.processes
        if message.history is not None:
            self.history = list(message.history)
            self.history_read_at = self.app.source.now()  # type: ignore[attr-defined]
        # The latest snapshot joins the history (the stored one lags by up to a bucket).
        snap = self.snapshot
        last = self.history[-1]["time"] if self.history else float("-inf")
        if snap is not None and (snap.get("time") or 0.0) > last:
            self.history.append(self._history_row(snap))
        # Per-core readings are not stored: the screen keeps the recent ones it has seen.
        if snap is not None and snap.get("time") != self.core_time:
            self.core_time = snap.get("time")
            self.core_history.append(list((snap.get("cpu") or {}).get("per_core") or []))
        self.refresh_panels()
        if self.app.is_running and not getattr(self.app, "frozen", False):
            # Every second on the 1 min window; every 2 s (btop's and nvitop's default) on the
            # longer ones, whose chart columns span 5 s or more.
            self.set_timer(1.0 if self.window_s <= 60 else 2.0, self._next_poll)

    def _history_row(self, snap: dict[str, Any]) -> dict[str, Any]:
        """The latest snapshot as a history row, so short windows move every second."""
        interfaces = snap.get("network") or {}
        io = snap.get("disk_io") or {}
        return {
            "time": snap.get("time") or 0.0,
            "cpu": (snap.get("cpu") or {}).get("total"),
            "memory_used": (snap.get("memory") or {}).get("used_bytes"),
            "net_rx": sum(r.get("rx_bytes_per_s") or 0 for r in interfaces.values()),
            "net_tx": sum(r.get("tx_bytes_per_s") or 0 for r in interfaces.values()),
            "disk_read": sum(r.get("read_bytes_per_s") or 0 for r in io.values()),
            "disk_write": sum(r.get("write_bytes_per_s") or 0 for r in io.values()),
            "gpus": [
                {
                    "index": g["index"],
                    "util": g.get("util_gpu"),
                    "memory_used": g.get("memory_used_bytes"),
                }
                for g in snap.get("gpus") or []
            ],
        }

    def _next_poll(self) -> None:
        if self.is_current:
            self.poll()

    def _fallback_snapshot(self) -> dict[str, Any] | None:
        """No daemon history yet: one direct sample (NVML is only opened here, then closed).

        It waits `interval_s` to measure rates, so it runs in the polling thread, never on the
        event loop."""
        from workbench.telemetry import snapshot as telemetry

        try:
            return telemetry.snapshot(self.app.source.home, interval_s=0.2)  # type: ignore[attr-defined]
        except Exception:
            return None

    # ---- drawing ---------------------------------------------------------------------

    def on_resize(self) -> None:
        if self.snapshot is not None:
            self.refresh_panels()

    def refresh_panels(self) -> None:
        """Lay the screen out for its size: the process table takes what its rows need (up to
        a quarter of the height), the host panels a fixed share, the GPUs the rest."""
        snap = self.snapshot
        status = self.query_one("#gpu-status", Static)
        if snap is None:
            status.update(Text("waiting for the first sample...", style="dim"))
            return
        width, height = self.size.width, self.size.height - 2
        wide = width >= 120
        gpus = snap.get("gpus") or []
        end = snap.get("time") or self.app.source.now()  # type: ignore[attr-defined]
        window = self.window_s
        selector = Text("window", style="dim")
        for seconds, label in WINDOWS:
            selector.append(f" {label} ", style="bold reverse" if seconds == window else "dim")
        selector.append("(w)  ", style="dim")
        if snap.get("gpu_status") != "ok" or not gpus:
            about = Text(
                f"GPUs: {snap.get('gpu_message') or 'no GPU on this machine'}", style="bold magenta"
            )
        else:
            about = Text(
                f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''}  driver {snap.get('driver_version')}"
                f"  CUDA {snap.get('cuda_version')}",
                style="dim",
            )
        about = crop(about, max(0, width - 2 - selector.cell_len))
        status.update(crop(selector + about, width - 2))

        self.processes = self.ordered(
            process_rows(
                snap,
                self.details,
                self.app.source.now(),  # type: ignore[attr-defined]
                self.machine,
                self.process_filter,
            )
        )
        show_procs = (bool(gpus) or self.machine) and "gpus" not in self.hidden
        proc_rows = min(max(1, len(self.processes)), max(2, height // 5)) if show_procs else 0
        procs_height = proc_rows + 2 if show_procs else 0  # border title and header
        host_shown = [k for k in ("cpu", "memory", "network", "disks") if k not in self.hidden]
        compact = height < 34 or not wide
        if compact:
            host_height = 3 if host_shown else 0
        else:
            host_height = max(8, min(14, height // 3)) if host_shown else 0
        gpu_room = height - 1 - procs_height - host_height
        if not gpus or "gpus" in self.hidden:
            gpu_room = 0
            if host_shown and not compact:
                host_height = height - 1 - procs_height
        per_gpu = max(1, gpu_room // len(gpus)) if gpus and gpu_room else 0
        if 2 < per_gpu < 4:
            per_gpu = 2  # charts need 4 lines: the compact pair takes 2, the table the rest

        gpu_widget = self.query_one("#gpus", Lines)
        lines: list[Text] = []
        if per_gpu:
            for gpu in gpus:
                lines += render_gpu(gpu, self.history, end, window, width - 2, per_gpu)
        elif compact and host_shown and gpu_room <= 0:
            # No GPU charts to show: the CPU and network charts take the room instead.
            room = height - 1 - procs_height - host_height
            if room >= 8:
                half = room // 2
                cores = list(self.core_history)
                lines = render_cpu(snap, self.history, end, window, width - 2, half, cores)
                lines = lines[:half]
                lines += render_network(snap, self.history, end, window, width - 2, room - half)
        gpu_widget.display = bool(lines)
        if lines:
            gpu_widget.set_lines(lines)

        host = self.query_one("#host", Horizontal)
        compact_widget = self.query_one("#host-compact", Lines)
        host.display = bool(host_shown) and not compact
        compact_widget.display = bool(host_shown) and compact
        if compact and host_shown:
            compact_widget.set_lines(host_lines_compact(snap, self.history, width - 2))
        elif host_shown:
            host.styles.height = host_height
            panel_width = (width - 2) // len(host_shown) - 2
            renderers = {
                "cpu": render_cpu,
                "memory": render_memory,
                "network": render_network,
                "disks": render_disks,
            }
            cores = list(self.core_history)
            for key, render in renderers.items():
                panel = self.query_one(f"#{key}", Lines)
                panel.display = key in host_shown
                if key == "cpu" and key in host_shown:
                    panel.set_lines(
                        render_cpu(snap, self.history, end, window, panel_width, host_height, cores)
                    )
                elif key in host_shown:
                    panel.set_lines(
                        render(snap, self.history, end, window, panel_width, host_height)
                    )

        table = self.query_one("#procs", DataTable)
        table.display = show_procs
        if show_procs:
            if per_gpu:  # what the GPUs leave of their share goes to the process table
                procs_height += gpu_room - per_gpu * len(gpus)
            table.styles.height = procs_height
            self.refresh_processes()

    def refresh_processes(self) -> None:
        """Rewrite the process table only when what it shows changed; the columns are those
        that fit (`choose_process_columns`), and the command takes the width left."""
        table = self.query_one("#procs", DataTable)
        full = [
            dict(zip(PROCESS_COLUMNS, process_cells(row, 10_000), strict=True))
            for row in self.processes
        ]
        columns = self.process_columns(full)
        sorted_by = SORT_COLUMNS[PROCESS_SORTS[self.sort_index]]
        used = sum(
            max([len(name) + (2 if name == sorted_by else 0)] + [r[name].cell_len for r in full])
            + 2
            for name in columns
            if name != "command"
        )
        command_width = max(8, self.size.width - used - 3)
        rows = [
            tuple(
                process_cells(row, command_width)[PROCESS_COLUMNS.index(name)] for name in columns
            )
            for row in self.processes
        ]
        labels = tuple(
            f"{c} {'▲' if c == 'pid' else '▼'}" if c == sorted_by else c for c in columns
        )
        title = "all processes" if self.machine else "GPU processes"
        if self.process_filter:
            title += f" with {self.process_filter!r}"
        table.border_title = f"{title} ({len(self.processes)}), by {PROCESS_SORTS[self.sort_index]}"
        plain = [labels, *(tuple(c.plain for c in row) for row in rows)]
        if plain == self.shown_rows:
            return
        self.shown_rows = plain
        cursor = table.cursor_coordinate.row
        with self.app.batch_update():
            if labels != self.columns:
                table.clear(columns=True)
                for column, label in zip(columns, labels, strict=True):
                    table.add_column(label, key=column)
                self.columns = labels
            table.clear()
            for row in rows:
                table.add_row(*row)
            if not rows:
                table.add_row(
                    *(Text("") for _ in columns[:-1]),
                    Text(
                        "no processes match" if self.process_filter else "no GPU processes",
                        style="dim",
                    ),
                )
            else:
                table.move_cursor(row=min(cursor, len(rows) - 1))
