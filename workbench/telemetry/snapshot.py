"""One telemetry snapshot (GPUs, host, folders, which job owns each GPU process) and its text.

The snapshot's JSON shape is documented in `workbench.telemetry.sampler`."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psutil

from workbench.db.store import Store
from workbench.paths import Home
from workbench.telemetry.gpu import Gpus, GpuSample, attribute_processes
from workbench.telemetry.host import FolderSizes, HostSampler
from workbench.units import format_rate, format_size

SCHEMA = 1


# ---- snapshots -----------------------------------------------------------------------------


def _process_names(pids: Iterable[int], cache: dict[int, str | None]) -> dict[int, str | None]:
    """Command names (cached per pid; the cache keeps only the pids asked for now)."""
    wanted = set(pids)
    for pid in wanted - set(cache):
        try:
            cache[pid] = psutil.Process(pid).name()
        except psutil.Error:
            cache[pid] = None
    for pid in set(cache) - wanted:
        del cache[pid]
    return cache


def build_snapshot(
    now: float,
    gpus: Gpus,
    samples: Sequence[GpuSample],
    host: Mapping[str, Any],
    folders: Mapping[str, Any],
    owners: Mapping[int, int],
    job_names: Mapping[int, str],
    commands: Mapping[int, str | None],
) -> dict[str, Any]:
    """Everything at one moment, as `top --once --json` prints it (schema 1)."""
    gpu_rows = []
    for sample in samples:
        row = sample.to_json()
        for proc in row["processes"] or []:
            job = owners.get(proc["pid"])
            proc["command"] = commands.get(proc["pid"])
            proc["job_id"] = job
            proc["job_name"] = None if job is None else job_names.get(job)
        gpu_rows.append(row)
    return {
        "schema": SCHEMA,
        "time": now,
        "interval_s": host.get("interval_s"),
        "gpu_status": gpus.status,
        "gpu_message": gpus.message,
        "driver_version": gpus.driver_version,
        "cuda_version": gpus.cuda_version,
        "gpus": gpu_rows,
        "cpu": host["cpu"],
        "memory": host["memory"],
        "swap": host["swap"],
        "network": host["network"],
        "disks": host["disks"],
        "disk_io": host["disk_io"],
        "folders": dict(folders),
    }


def _job_names(store: Store, job_ids: Iterable[int]) -> dict[int, str]:
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    return store.job_names(ids)


def running_job_groups(store: Store) -> dict[int, int]:
    """{process group (the wrapper's pid): job id} for jobs running now, as the store knows them."""
    return store.live_job_groups()


class Snapshots:
    """Fresh snapshots without a daemon, NVML opened once: `with Snapshots(home) as s: s.take()`.
    Rates cover the time since the previous `take()` (or `interval_s` for the first)."""

    def __init__(self, home: Home, interval_s: float = 0.5):
        self.home = home
        self.interval_s = interval_s
        self.host = HostSampler()
        self.gpus = Gpus.open()
        self.commands: dict[int, str | None] = {}
        self._primed_at = time.time()
        self.host.read(self._primed_at)
        self._first = True

    def __enter__(self) -> Snapshots:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.gpus.close()

    def take(self) -> dict[str, Any]:
        if self._first:
            time.sleep(max(0.0, self.interval_s - (time.time() - self._primed_at)))
            self._first = False
        samples = self.gpus.sample()
        now = time.time()
        host = self.host.read(now)
        folders = FolderSizes({"lake": self.home.lake, "runs": self.home.runs})
        folders.step(now, budget_s=None)
        owners: dict[int, int] = {}
        names: dict[int, str] = {}
        if self.home.state_db.exists():
            store = Store.open(self.home.state_db)
            try:
                owners = attribute_processes(samples, running_job_groups(store))
                names = _job_names(store, owners.values())
            finally:
                store.close()
        pids = [p.pid for s in samples for p in s.processes or ()]
        commands = _process_names(pids, self.commands)
        return build_snapshot(
            now, self.gpus, samples, host, folders.to_json(), owners, names, commands
        )


def snapshot(home: Home, interval_s: float = 0.5) -> dict[str, Any]:
    """One fresh sample, no daemon needed: rates are measured over `interval_s`."""
    with Snapshots(home, interval_s) as snapshots:
        return snapshots.take()


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


def render_text(snap: Mapping[str, Any]) -> str:
    """A snapshot as plain text lines (for `workbench top` without the TUI)."""
    lines = []
    if snap["gpu_status"] != "ok":
        lines.append(f"GPUs     {snap['gpu_message']}")
    for g in snap["gpus"]:
        head = f"GPU {g['index']}    {g['name']}"
        if not g["ok"]:
            lines.append(f"{head}  ERROR: {g['error']}")
            continue
        power = "n/a" if g["power_draw_w"] is None else f"{g['power_draw_w']:.0f}"
        limit = "n/a" if g["power_limit_w"] is None else f"{g['power_limit_w']:.0f}"
        temp = "n/a" if g["temperature_c"] is None else f"{g['temperature_c']}°C"
        sm = "n/a" if g["clock_sm_mhz"] is None else f"{g['clock_sm_mhz']} MHz"
        mig = "  MIG" if g["mig_mode"] else ""
        lines.append(
            f"{head}{mig}  util {_pct(g['util_gpu'])}  mem {format_size(g['memory_used_bytes'])}"
            f" / {format_size(g['memory_total_bytes'])}  {temp}  {power} / {limit} W"
            f"  SM {sm}  fan {_pct(g['fan_percent'])}"
        )
        for p in g["processes"] or []:
            job = f"  job {p['job_id']} {p['job_name'] or ''}" if p["job_id"] is not None else ""
            lines.append(
                f"         pid {p['pid']}  {format_size(p['used_memory_bytes'])}"
                f"  SM {_pct(p['sm_util'])}  {p['command'] or '?'}{job}"
            )
    cpu = snap["cpu"]
    cores = " ".join(_pct(c) for c in cpu["per_core"])
    load = " ".join(f"{x:.2f}" for x in cpu["load_avg"])
    lines.append(f"CPU      {_pct(cpu['total'])}  load {load}  cores {cores}")
    mem, swap = snap["memory"], snap["swap"]
    lines.append(
        f"Memory   {format_size(mem['used_bytes'])} / {format_size(mem['total_bytes'])}"
        f" ({mem['percent']:.0f}%)  swap {format_size(swap['used_bytes'])}"
        f" / {format_size(swap['total_bytes'])}"
    )
    for name, net in snap["network"].items():
        lines.append(
            f"Net      {name}  rx {format_rate(net['rx_bytes_per_s'])}"
            f"  tx {format_rate(net['tx_bytes_per_s'])}"
        )
    for disk in snap["disks"]:
        lines.append(
            f"Disk     {disk['mount']}  {format_size(disk['used_bytes'])}"
            f" / {format_size(disk['total_bytes'])} ({disk['percent']:.0f}%)"
        )
    for name, io in snap["disk_io"].items():
        lines.append(
            f"Disk I/O {name}  read {format_rate(io['read_bytes_per_s'])}"
            f"  write {format_rate(io['write_bytes_per_s'])}"
        )
    folders = snap["folders"]
    lines.append(
        f"Folders  lake {format_size(folders.get('lake_bytes'))}"
        f"  runs {format_size(folders.get('runs_bytes'))}"
    )
    return "\n".join(lines)
