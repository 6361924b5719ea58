"""The Dashboard: a panel per GPU (meters, history, its processes and their jobs) and host panels
for CPU, memory, network and disks, fed by the daemon's 1 Hz samples in the store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Group
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, VerticalScroll
from textual.message import Message
from textual.widgets import Static

from screens.widgets import WorkbenchScreen, meter, spark
from workbench.units import format_rate, format_size

HISTORY_S = 300
PANELS = {"gpus": "GPUs", "cpu": "CPU", "memory": "Memory", "network": "Network", "disks": "Disks"}


@dataclass
class TelemetryRead(Message):
    """A worker's read of the latest snapshot and the recent history."""

    snapshot: dict[str, Any] | None
    history: list[dict[str, Any]]


def _gpu_series(history: list[dict[str, Any]], index: int, key: str) -> list[float | None]:
    out: list[float | None] = []
    for row in history:
        match = next((g for g in row.get("gpus") or [] if g.get("index") == index), None)
        out.append(match.get(key) if match else None)
    return out


def render_gpu(gpu: dict[str, Any], history: list[dict[str, Any]], width: int) -> Group:
    """One GPU: meters with their history, then its processes with the jobs that own them."""
    bar = max(8, min(30, width // 3))
    hist = max(4, width - bar - 38)
    title = Text()
    title.append(f"GPU {gpu['index']}  ", style="bold")
    title.append(gpu.get("name") or "?", style="bold cyan")
    if gpu.get("pci_bus_id"):
        title.append(f"  {gpu['pci_bus_id']}", style="dim")
    if gpu.get("mig_mode"):
        title.append("  MIG", style="magenta")
    if not gpu.get("ok", True):
        return Group(title, Text(f"error: {gpu.get('error') or 'unavailable'}", style="bold red"))
    total = gpu.get("memory_total_bytes") or 0
    used = gpu.get("memory_used_bytes") or 0
    power, limit = gpu.get("power_draw_w"), gpu.get("power_limit_w")
    temperature = gpu.get("temperature_c")
    lines = [title]
    util = meter("util", gpu.get("util_gpu"), bar)
    util.append("  ")
    util.append(spark(_gpu_series(history, gpu["index"], "util"), hist, 100))
    lines.append(util)
    mem = meter(
        "mem",
        used / total * 100 if total else None,
        bar,
        f"{format_size(used)}/{format_size(total)}",
    )
    mem.append("  ")
    mem.append(
        spark(
            _gpu_series(history, gpu["index"], "memory_used"), hist, float(total) if total else None
        )
    )
    lines.append(mem)
    pwr = meter(
        "pwr",
        power / limit * 100 if power is not None and limit else None,
        bar,
        f"{power or 0:.0f}/{limit or 0:.0f} W",
    )
    pwr.append("  ")
    pwr.append(spark(_gpu_series(history, gpu["index"], "power_w"), hist, limit))
    lines.append(pwr)
    temp = Text("temp ")
    temp.append(
        f"{temperature}°C" if temperature is not None else "n/a",
        style="bold" if (temperature or 0) < 80 else "bold red",
    )
    if gpu.get("fan_percent") is not None:
        temp.append(f"  fan {gpu['fan_percent']}%", style="dim")
    clocks = [
        f"sm {gpu['clock_sm_mhz']} MHz" if gpu.get("clock_sm_mhz") else "",
        f"mem {gpu['clock_mem_mhz']} MHz" if gpu.get("clock_mem_mhz") else "",
    ]
    temp.append("  " + "  ".join(c for c in clocks if c), style="dim")
    temp.append("  ")
    temp.append(spark(_gpu_series(history, gpu["index"], "temperature_c"), max(8, hist - 20), 100))
    lines.append(temp)
    processes = gpu.get("processes")
    if processes is None:
        lines.append(Text("processes: n/a (the driver does not list them)", style="dim"))
    elif not processes:
        lines.append(Text("no processes", style="dim"))
    for proc in processes or []:
        line = Text(f"  pid {proc['pid']:<7} {format_size(proc.get('used_memory_bytes')):>10}")
        if proc.get("sm_util") is not None:
            line.append(f"  sm {proc['sm_util']:>3}%")
        if proc.get("job_id") is not None:
            line.append(f"  job {proc['job_id']} {proc.get('job_name') or ''}", style="bold yellow")
        elif proc.get("command"):
            line.append(f"  {proc['command']}", style="dim")
        lines.append(line)
    return Group(*lines)


def render_cpu(snap: dict[str, Any], history: list[dict[str, Any]], width: int) -> Group:
    """Total CPU with its history, then a meter per core (two columns when there is room)."""
    cpu = snap.get("cpu") or {}
    per_core = cpu.get("per_core") or []
    columns = 2 if width >= 60 and len(per_core) > 4 else 1
    core_bar = max(4, (width - 2 * (columns - 1)) // columns - 10)
    total_bar = max(6, width // 2 - 10)
    load = " ".join(f"{v:.2f}" for v in cpu.get("load_avg") or [])
    lines = [Text(f"CPU  {cpu.get('count', len(per_core))} cores  load {load}", style="bold")]
    total = meter("all", cpu.get("total"), total_bar)
    total.append("  ")
    total.append(spark([r.get("cpu") for r in history], max(4, width - total_bar - 12), 100))
    lines.append(total)
    row: list[Text] = []
    for index, value in enumerate(per_core):
        row.append(meter(f"{index}", value, core_bar))
        if len(row) == columns:
            lines.append(Text("  ").join(row))
            row = []
    if row:
        lines.append(Text("  ").join(row))
    return Group(*lines)


def render_memory(snap: dict[str, Any], history: list[dict[str, Any]], width: int) -> Group:
    memory, swap = snap.get("memory") or {}, snap.get("swap") or {}
    bar = max(6, width - 38)
    lines = [Text("Memory", style="bold")]
    lines.append(
        meter(
            "ram",
            memory.get("percent"),
            bar,
            f"{format_size(memory.get('used_bytes'))}/{format_size(memory.get('total_bytes'))}",
        )
    )
    if swap.get("total_bytes"):
        lines.append(
            meter(
                "swap",
                swap.get("percent"),
                bar,
                f"{format_size(swap.get('used_bytes'))}/{format_size(swap.get('total_bytes'))}",
            )
        )
    else:
        lines.append(Text("swap none", style="dim"))
    lines.append(
        spark(
            [r.get("memory_used") for r in history],
            max(8, width - 2),
            float(memory.get("total_bytes") or 1),
        )
    )
    return Group(*lines)


def render_network(snap: dict[str, Any], history: list[dict[str, Any]], width: int) -> Group:
    lines = [Text("Network", style="bold")]
    interfaces = snap.get("network") or {}
    for name, rates in sorted(interfaces.items()):
        lines.append(
            Text(
                f"{name:<10} rx {format_rate(rates.get('rx_bytes_per_s')):>13}  tx {format_rate(rates.get('tx_bytes_per_s')):>13}"
            )
        )
    if not interfaces:
        lines.append(Text("no interfaces up", style="dim"))
    lines.append(spark([r.get("net_rx") for r in history], max(8, width - 2)))
    return Group(*lines)


def render_disks(snap: dict[str, Any], history: list[dict[str, Any]], width: int) -> Group:
    lines = [Text("Disks", style="bold")]
    bar = max(6, width - 38)
    for disk in snap.get("disks") or []:
        lines.append(
            meter(
                disk["mount"][-5:],
                disk.get("percent"),
                bar,
                f"{format_size(disk.get('used_bytes'))}/{format_size(disk.get('total_bytes'))}",
            )
        )
    for name, rates in sorted((snap.get("disk_io") or {}).items()):
        lines.append(
            Text(
                f"{name:<8} read {format_rate(rates.get('read_bytes_per_s')):>12}  write {format_rate(rates.get('write_bytes_per_s')):>12}",
                style="dim",
            )
        )
    folders = snap.get("folders") or {}
    lines.append(
        Text(
            f"lake {format_size(folders.get('lake_bytes'))}   runs {format_size(folders.get('runs_bytes'))}",
            style="dim",
        )
    )
    return Group(*lines)


class Panel(Static):
    """A bordered panel whose content is re-rendered from the latest telemetry."""

    DEFAULT_CSS = "Panel { border: round $primary-darken-1; padding: 0 1; height: auto; }"


class DashboardScreen(WorkbenchScreen):
    """Live machine panels. Polls only while it is the current screen."""

    TITLE_NAME = "Dashboard"

    BINDINGS = [
        Binding(
            "1",
            "toggle('gpus')",
            "GPUs",
            id="dashboard.gpus",
            tooltip="Show or hide the GPU panels",
        ),
        Binding(
            "2", "toggle('cpu')", "CPU", id="dashboard.cpu", tooltip="Show or hide the CPU panel"
        ),
        Binding(
            "3",
            "toggle('memory')",
            "Memory",
            id="dashboard.memory",
            tooltip="Show or hide the memory panel",
        ),
        Binding(
            "4",
            "toggle('network')",
            "Network",
            id="dashboard.network",
            tooltip="Show or hide the network panel",
        ),
        Binding(
            "5",
            "toggle('disks')",
            "Disks",
            id="dashboard.disks",
            tooltip="Show or hide the disks panel",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.snapshot: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []

    def compose(self) -> ComposeResult:
        yield self.title_bar()
        with VerticalScroll(id="dashboard"):
            yield Static(id="gpu-status")
            yield Grid(id="gpus")
            with Grid(id="host"):
                for key in ("cpu", "memory", "network", "disks"):
                    yield Panel(id=key)
        yield self.bottom_bar()

    def on_mount(self) -> None:
        self.poll()

    def on_screen_resume(self) -> None:
        self.poll()

    def action_toggle(self, panel: str) -> None:
        widget = self.query_one("#gpus" if panel == "gpus" else f"#{panel}")
        widget.display = not widget.display
        if panel == "gpus":
            self.query_one("#gpu-status").display = widget.display
        self.notify(f"{PANELS[panel]} {'shown' if widget.display else 'hidden'}", timeout=1.5)

    @work(
        thread=True,
        exclusive=True,
        exit_on_error=False,
        group="telemetry",
        description="read telemetry",
    )
    def poll(self) -> None:
        source = self.app.source  # type: ignore[attr-defined]
        snapshot = source.telemetry()
        history = source.history(HISTORY_S)
        if snapshot is None:
            snapshot = self._fallback_snapshot()
        self.post_message(TelemetryRead(snapshot, history))

    def on_telemetry_read(self, message: TelemetryRead) -> None:
        self.snapshot, self.history = message.snapshot, message.history
        self.refresh_panels()
        if self.app.is_running and not getattr(self.app, "frozen", False):
            self.set_timer(1.0, self._next_poll)

    def _next_poll(self) -> None:
        if self.is_current:
            self.poll()

    def _fallback_snapshot(self) -> dict[str, Any] | None:
        """No daemon history yet: one direct sample (NVML is only opened here, then closed).

        It waits `interval_s` to measure rates, so it runs in the polling thread, never on the
        event loop."""
        from workbench.telemetry import sampler as telemetry

        try:
            return telemetry.snapshot(self.app.source.home, interval_s=0.2)  # type: ignore[attr-defined]
        except Exception:
            return None

    def on_resize(self) -> None:
        self.set_class(self.size.width >= 150, "wide")
        if self.snapshot is not None:
            self.refresh_panels()

    def refresh_panels(self) -> None:
        snap = self.snapshot
        if snap is None:
            self.query_one("#gpu-status", Static).update(
                Text("waiting for the first sample...", style="dim")
            )
            return
        wide = self.size.width >= 150
        # Inside a panel: its border and padding take 4 columns; the screen's padding 2 more.
        gpu_width = (self.size.width - 3) // (2 if wide else 1) - 5
        host_width = (self.size.width - 3) // (4 if wide else 2) - 5
        status = self.query_one("#gpu-status", Static)
        gpus = snap.get("gpus") or []
        if snap.get("gpu_status") != "ok" or not gpus:
            status.update(
                Text(
                    f"GPUs: {snap.get('gpu_message') or 'no GPU on this machine'}",
                    style="bold magenta",
                )
            )
        else:
            status.update(
                Text(
                    f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''}  driver {snap.get('driver_version')}  CUDA {snap.get('cuda_version')}",
                    style="dim",
                )
            )
        grid = self.query_one("#gpus", Grid)
        panels = list(grid.query(Panel))
        if len(panels) != len(gpus):
            grid.remove_children()
            panels = [Panel(classes="gpu") for _ in gpus]
            grid.mount_all(panels)
        for panel, gpu in zip(panels, gpus, strict=True):
            panel.update(render_gpu(gpu, self.history, gpu_width))
        self.query_one("#cpu", Panel).update(render_cpu(snap, self.history, host_width))
        self.query_one("#memory", Panel).update(render_memory(snap, self.history, host_width))
        self.query_one("#network", Panel).update(render_network(snap, self.history, host_width))
        self.query_one("#disks", Panel).update(render_disks(snap, self.history, host_width))
