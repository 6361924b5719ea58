"""Machine telemetry: GPU and host samples as one snapshot, 1 Hz history, per-job GPU use.

The daemon owns a `Sampler` and calls `tick()` once per sample interval (single-threaded, no
threads started here). Each tick writes one history row and the full latest snapshot to the
store and updates each running job's `peak_gpu_mem` and `mean_gpu_util`. Rows older than the
history setting (24 h by default) are thinned into 60 s averages, kept for 30 days. The lake and
runs folder sizes are walked at most every 30 s, spending at most 2 ms per tick.

`workbench top --once --json` prints `snapshot(home)` (schema 1):

    {"schema": 1,
     "time": 1717171717.5,                 # unix seconds
     "interval_s": 0.5,                    # seconds the rates below cover (null: no rates yet)
     "gpu_status": "ok",                   # "ok" | "no_driver" | "no_device" | "error"
     "gpu_message": null,                  # why there are no GPUs, in words, when not "ok"
     "driver_version": "550.54.15", "cuda_version": "12.4",
     "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "ok": true, "error": null,
               "uuid": "GPU-...", "pci_bus_id": "00000000:18:00.0", "mig_mode": false,
               "memory_total_bytes": 85899345920, "memory_used_bytes": 1073741824,
               "util_gpu": 37, "util_memory": 12, "temperature_c": 55,
               "power_draw_w": 250.0, "power_limit_w": 700.0,
               "clock_sm_mhz": 1980, "clock_mem_mhz": 2619, "fan_percent": null,
               "processes": [{"pid": 4242, "used_memory_bytes": 1073741824, "sm_util": 35,
                              "kind": "compute", "gpu_instance_id": null,
                              "command": "python", "job_id": 12, "job_name": "train-mlp"}],
               "time": 1717171717.5}],
     "cpu": {"total": 12.5, "per_core": [10.0, 15.0], "load_avg": [0.8, 0.6, 0.5], "count": 2},
     "memory": {"total_bytes": ..., "used_bytes": ..., "available_bytes": ..., "percent": 41.0},
     "swap": {"total_bytes": ..., "used_bytes": ..., "percent": 0.0},
     "network": {"eth0": {"rx_bytes_per_s": 1200.0, "tx_bytes_per_s": 300.0,
                          "rx_bytes": 123456, "tx_bytes": 65432}},
     "disks": [{"mount": "/", "device": "/dev/vda", "fstype": "ext4", "total_bytes": ...,
                "used_bytes": ..., "free_bytes": ..., "percent": 63.2}],
     "disk_io": {"vda": {"read_bytes_per_s": 0.0, "write_bytes_per_s": 4096.0}},
     "folders": {"lake_bytes": 1048576, "runs_bytes": 2048, "measured_at": 1717171717.5}}

A null number means "n/a" (the GPU or OS does not report it). `gpus` is empty when
`gpu_status` is not "ok". A process's `job_id`/`job_name` are null when it is not a queue job's.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from workbench.config import Config
from workbench.db.store import Store
from workbench.db.telemetry import HISTORY_COLUMNS
from workbench.paths import Home
from workbench.telemetry.gpu import Gpus, GpuSample, attribute_processes
from workbench.units import format_rate, format_size

SCHEMA = 1
THIN_BUCKET_S = 60.0
KEEP_THINNED_S = 30 * 86400.0
FOLDER_REFRESH_S = 30.0
FOLDER_BUDGET_S = 0.002
SLOW_REFRESH_S = 30.0  # how often to re-list mounts, disks and interfaces
_SKIP_DISKS = ("loop", "ram", "zram", "sr", "fd", "nbd")
_VIRTUAL_DISKS = ("dm-", "md")  # stacked on other disks: listed, but not added to the totals
_HISTORY_COLUMNS = HISTORY_COLUMNS
_HISTORY_NAMES = {
    "mem_used": "memory_used",
    "swap_used": "swap_used",
}
_GPU_HISTORY_FIELDS = ("util", "memory_util", "memory_used", "power_w", "temperature_c")


# ---- host --------------------------------------------------------------------------------


def _busy_percent(before: Any, after: Any) -> float | None:
    """CPU busy % between two psutil cpu_times readings (guest time is already in user)."""
    skip = {"idle", "iowait", "guest", "guest_nice"}
    names = after._fields
    total = float(
        sum(
            getattr(after, n) - getattr(before, n)
            for n in names
            if n not in ("guest", "guest_nice")
        )
    )
    if total <= 0:
        return None
    busy = float(sum(getattr(after, n) - getattr(before, n) for n in names if n not in skip))
    return round(max(0.0, min(100.0, 100.0 * busy / total)), 1)


def _rate(before: int | None, after: int, seconds: float) -> float | None:
    if before is None or seconds <= 0 or after < before:
        return None  # no earlier reading, or the counter was reset
    return round((after - before) / seconds, 1)


def _list_disks() -> list[str] | None:
    """Whole disks (not partitions, loops or RAM disks); None where /sys/block is absent."""
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return None
    return sorted(n for n in names if not n.startswith(_SKIP_DISKS))


def _list_mounts() -> list[Any]:
    """Real filesystems, one mount per device (bind mounts and snaps left out)."""
    seen: set[str] = set()
    mounts = []
    partitions = sorted(psutil.disk_partitions(all=False), key=lambda p: len(p.mountpoint))
    for part in partitions:
        if part.device in seen or part.device.startswith("/dev/loop") or part.fstype == "squashfs":
            continue
        seen.add(part.device)
        mounts.append(part)
    return sorted(mounts, key=lambda p: p.mountpoint)


def _list_interfaces() -> set[str]:
    """Network interfaces that are up, loopback left out."""
    return {name for name, stats in psutil.net_if_stats().items() if stats.isup and name != "lo"}


@dataclass
class HostSampler:
    """Reads CPU, memory, network and disks; rates are against the previous reading."""

    _time: float | None = None
    _cpu: list[Any] = field(default_factory=list)
    _net: dict[str, Any] = field(default_factory=dict)
    _disk_io: dict[str, Any] = field(default_factory=dict)
    _listed_at: float = -1e18
    _disks: list[str] | None = None
    _mounts: list[Any] = field(default_factory=list)
    _interfaces: set[str] = field(default_factory=set)

    def read(self, now: float) -> dict[str, Any]:
        """One reading: the host part of a snapshot."""
        if now - self._listed_at >= SLOW_REFRESH_S:
            self._relist()
            self._listed_at = now
        seconds = 0.0 if self._time is None else now - self._time
        out: dict[str, Any] = {"interval_s": round(seconds, 3) if self._time is not None else None}
        out["cpu"] = self._read_cpu()
        out["memory"], out["swap"] = self._read_memory()
        out["network"] = self._read_network(seconds)
        out["disks"] = self._read_disk_usage()
        out["disk_io"] = self._read_disk_io(seconds)
        self._time = now
        return out

    def _relist(self) -> None:
        try:
            self._disks = _list_disks()
            self._mounts = _list_mounts()
            self._interfaces = _list_interfaces()
        except (OSError, psutil.Error):
            pass

    def _read_cpu(self) -> dict[str, Any]:
        per_core_times = psutil.cpu_times(percpu=True)
        per_core: list[float | None] = [None] * len(per_core_times)
        total = None
        if self._cpu and len(self._cpu) == len(per_core_times):
            per_core = [_busy_percent(b, a) for b, a in zip(self._cpu, per_core_times, strict=True)]
            known = [c for c in per_core if c is not None]
            total = round(sum(known) / len(known), 1) if known else None
        self._cpu = list(per_core_times)
        try:
            load = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            load = []
        return {"total": total, "per_core": per_core, "load_avg": load, "count": len(per_core)}

    def _read_memory(self) -> tuple[dict[str, Any], dict[str, Any]]:
        vm = psutil.virtual_memory()
        memory = {
            "total_bytes": vm.total,
            "used_bytes": vm.total - vm.available,
            "available_bytes": vm.available,
            "percent": vm.percent,
        }
        sw = psutil.swap_memory()
        return memory, {"total_bytes": sw.total, "used_bytes": sw.used, "percent": sw.percent}

    def _read_network(self, seconds: float) -> dict[str, Any]:
        counters = psutil.net_io_counters(pernic=True)
        out = {}
        for name in sorted(self._interfaces):
            now_io = counters.get(name)
            if now_io is None:
                continue
            was = self._net.get(name)
            out[name] = {
                "rx_bytes_per_s": _rate(
                    was.bytes_recv if was else None, now_io.bytes_recv, seconds
                ),
                "tx_bytes_per_s": _rate(
                    was.bytes_sent if was else None, now_io.bytes_sent, seconds
                ),
                "rx_bytes": now_io.bytes_recv,
                "tx_bytes": now_io.bytes_sent,
            }
        self._net = counters
        return out

    def _read_disk_usage(self) -> list[dict[str, Any]]:
        out = []
        for part in self._mounts:
            try:
                usage = psutil.disk_usage(part.mountpoint)
            except OSError:
                continue
            out.append(
                {
                    "mount": part.mountpoint,
                    "device": part.device,
                    "fstype": part.fstype,
                    "total_bytes": usage.total,
                    "used_bytes": usage.used,
                    "free_bytes": usage.free,
                    "percent": usage.percent,
                }
            )
        return out

    def _read_disk_io(self, seconds: float) -> dict[str, Any]:
        try:
            counters = psutil.disk_io_counters(perdisk=True) or {}
        except (OSError, RuntimeError):
            return {}
        names = self._disks if self._disks is not None else sorted(counters)
        out = {}
        for name in names:
            now_io = counters.get(name)
            if now_io is None:
                continue
            was = self._disk_io.get(name)
            out[name] = {
                "read_bytes_per_s": _rate(
                    was.read_bytes if was else None, now_io.read_bytes, seconds
                ),
                "write_bytes_per_s": _rate(
                    was.write_bytes if was else None, now_io.write_bytes, seconds
                ),
            }
        self._disk_io = counters
        return out


# ---- folder sizes --------------------------------------------------------------------------


class FolderSizes:
    """Total file size under a few folders, walked a little at a time so no tick is slow."""

    def __init__(self, roots: Mapping[str, Path], refresh_s: float = FOLDER_REFRESH_S):
        self.roots = dict(roots)
        self.refresh_s = refresh_s
        self.sizes: dict[str, int | None] = {name: None for name in self.roots}
        self.measured_at: float | None = None
        self._due = 0.0
        self._pending: list[tuple[str, str]] = []
        self._partial: dict[str, int] = {}
        self._walking = False

    def step(self, now: float, budget_s: float | None = FOLDER_BUDGET_S) -> None:
        """Walk on for up to `budget_s` (None: to the end); publish the sizes when a pass ends."""
        if not self._walking:
            if now < self._due:
                return
            self._pending = [(name, str(path)) for name, path in self.roots.items()]
            self._partial = {name: 0 for name in self.roots}
            self._walking = True
        deadline = None if budget_s is None else time.perf_counter() + budget_s
        while self._pending:
            name, folder = self._pending.pop()
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                self._pending.append((name, entry.path))
                            elif entry.is_file(follow_symlinks=False):
                                self._partial[name] += entry.stat(follow_symlinks=False).st_size
                        except OSError:
                            continue
            except OSError:
                pass  # vanished, or not readable
            if deadline is not None and time.perf_counter() >= deadline:
                return
        self.sizes = {
            name: self._partial[name] if os.path.isdir(path) else None
            for name, path in self.roots.items()
        }
        self.measured_at = now
        self._walking = False
        self._due = now + self.refresh_s

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"{name}_bytes": size for name, size in self.sizes.items()}
        out["measured_at"] = self.measured_at
        return out


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


# ---- history -------------------------------------------------------------------------------


def _history_row(snap: Mapping[str, Any]) -> tuple[Any, ...]:
    """The compact history columns of a snapshot (totals, not per core or interface)."""

    def total(table: Mapping[str, Any], key: str, skip: tuple[str, ...] = ()) -> float | None:
        values = [
            v[key] for name, v in table.items() if not name.startswith(skip) and v[key] is not None
        ]
        return round(sum(values), 1) if values else None

    gpus = [
        [
            g["index"],
            g["util_gpu"],
            g["util_memory"],
            g["memory_used_bytes"] if g["ok"] else None,
            g["power_draw_w"],
            g["temperature_c"],
        ]
        for g in snap["gpus"]
    ]
    load = snap["cpu"]["load_avg"]
    return (
        snap["cpu"]["total"],
        load[0] if load else None,
        snap["memory"]["used_bytes"],
        snap["swap"]["used_bytes"],
        total(snap["network"], "rx_bytes_per_s"),
        total(snap["network"], "tx_bytes_per_s"),
        total(snap["disk_io"], "read_bytes_per_s", _VIRTUAL_DISKS),
        total(snap["disk_io"], "write_bytes_per_s", _VIRTUAL_DISKS),
        json.dumps(gpus, separators=(",", ":")) if gpus else None,
    )


def _mean(values: Iterable[Any]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _average(rows: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """The mean of history rows (t_ms, span_s, columns..., gpus), ignoring n/a values."""
    columns = []
    for position in range(2, 2 + len(_HISTORY_COLUMNS)):
        value = _mean(r[position] for r in rows)
        integer = _HISTORY_COLUMNS[position - 2] in ("mem_used", "swap_used")
        columns.append(None if value is None else (round(value) if integer else round(value, 2)))
    per_gpu: dict[int, list[list[Any]]] = {}
    for row in rows:
        for gpu in json.loads(row[-1]) if row[-1] else []:
            per_gpu.setdefault(gpu[0], []).append(gpu[1:])
    gpus = []
    for index, readings in sorted(per_gpu.items()):
        means = [_mean(r[k] for r in readings) for k in range(len(_GPU_HISTORY_FIELDS))]
        rounded = [None if m is None else round(m, 1) for m in means]
        if rounded[2] is not None:
            rounded[2] = round(rounded[2])
        gpus.append([index, *rounded])
    return (*columns, json.dumps(gpus, separators=(",", ":")) if gpus else None)


def _row_to_dict(row: Sequence[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"time": row[0] / 1000.0, "span_s": row[1]}
    for name, value in zip(_HISTORY_COLUMNS, row[2:-1], strict=True):
        out[_HISTORY_NAMES.get(name, name)] = value
    out["gpus"] = [
        {"index": g[0], **dict(zip(_GPU_HISTORY_FIELDS, g[1:], strict=True))}
        for g in (json.loads(row[-1]) if row[-1] else [])
    ]
    return out


def history(
    store: Store, since: float, until: float | None = None, bucket_s: float | None = None
) -> list[dict[str, Any]]:
    """History rows between two unix times, oldest first. Each row: time, span_s (seconds it
    covers), cpu %, load1, memory_used, swap_used (bytes), net_rx, net_tx, disk_read,
    disk_write (bytes/s) and gpus [{index, util, memory_util, memory_used, power_w,
    temperature_c}]. `bucket_s` averages rows into buckets of that many seconds (for long
    ranges on a narrow chart)."""
    end = time.time() + 1 if until is None else until
    rows = store.telemetry.rows_between(int(since * 1000), int(end * 1000))
    if bucket_s:
        rows = _bucketed(rows, bucket_s)
    return [_row_to_dict(r) for r in rows]


def _bucketed(rows: Sequence[tuple[Any, ...]], bucket_s: float) -> list[tuple[Any, ...]]:
    width_ms = int(bucket_s * 1000)
    groups: dict[int, list[tuple[Any, ...]]] = {}
    for row in rows:
        groups.setdefault(row[0] // width_ms * width_ms, []).append(row)
    return [
        (start, max(bucket_s, max(r[1] for r in group)), *_average(group))
        for start, group in groups.items()
    ]


def latest(store: Store) -> dict[str, Any] | None:
    """The last full snapshot the daemon wrote (check its "time" for staleness), or None."""
    text = store.telemetry.latest()
    return None if text is None else dict(json.loads(text))


def thin(
    store: Store,
    now: float,
    keep_raw_s: float,
    keep_thinned_s: float = KEEP_THINNED_S,
    bucket_s: float = THIN_BUCKET_S,
) -> int:
    """Average rows older than `keep_raw_s` into `bucket_s` rows (whole buckets only) and drop
    anything older than `keep_thinned_s`. Returns how many rows were folded."""
    width_ms = int(bucket_s * 1000)
    cutoff_ms = int((now - keep_raw_s) * 1000) // width_ms * width_ms
    return store.telemetry.thin(
        cutoff_ms,
        bucket_s,
        lambda rows: _bucketed(rows, bucket_s),
        int((now - keep_thinned_s) * 1000),
    )


# ---- the daemon's sampler ------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    """What one tick saw: the snapshot, the raw GPU samples and {GPU pid: job id}."""

    snapshot: dict[str, Any]
    gpus: list[GpuSample]
    owners: dict[int, int]


@dataclass
class _JobUse:
    peak_bytes: int
    util_sum: float
    util_count: int


class Sampler:
    """The daemon's telemetry: one `tick()` per sample interval, all on the caller's thread."""

    def __init__(self, store: Store, home: Home, gpus: Gpus, config: Config | None = None):
        config = config or Config()
        self.store = store
        self.gpus = gpus
        self.interval_s = config.sample_interval_s
        self.keep_raw_s = config.history_s
        self.host = HostSampler()
        self.folders = FolderSizes({"lake": home.lake, "runs": home.runs})
        self._not_ours: set[int] = set()
        self._commands: dict[int, str | None] = {}
        self._job_use: dict[int, _JobUse] = {}
        self._thin_due = 0.0

    def tick(self, jobs_by_group: Mapping[int, int], now: float | None = None) -> Tick:
        """Sample everything, record it, and return it. `jobs_by_group`: {job process group:
        job id} of the jobs this daemon runs."""
        now = time.time() if now is None else now
        samples = self.gpus.sample()
        owners = attribute_processes(samples, jobs_by_group, self._not_ours)
        host = self.host.read(now)
        self.folders.step(now)
        names = _job_names(self.store, owners.values())
        pids = [p.pid for s in samples for p in s.processes or ()]
        commands = _process_names(pids, self._commands)
        snap = build_snapshot(
            now, self.gpus, samples, host, self.folders.to_json(), owners, names, commands
        )
        updates = self._job_updates(samples, owners, now)
        self.store.telemetry.record(
            int(now * 1000),
            self.interval_s,
            _history_row(snap),
            json.dumps(snap, separators=(",", ":")),
            now,
        )
        self.store.set_gpu_use(updates)
        if now >= self._thin_due:
            thin(self.store, now, self.keep_raw_s)
            self._thin_due = now + THIN_BUCKET_S
        return Tick(snap, samples, owners)

    def _job_updates(
        self, samples: Sequence[GpuSample], owners: Mapping[int, int], now: float
    ) -> list[tuple[int, float | None, int]]:
        """(peak bytes, mean util %, job id) for each job with processes on a GPU now."""
        memory: dict[int, int] = {}
        sm: dict[int, list[int]] = {}
        gpu_util: dict[int, list[int]] = {}
        for sample in samples:
            for proc in sample.processes or ():
                job = owners.get(proc.pid)
                if job is None:
                    continue
                memory[job] = memory.get(job, 0) + (proc.used_memory_bytes or 0)
                if proc.sm_util is not None:
                    sm.setdefault(job, []).append(proc.sm_util)
                if sample.util_gpu is not None:
                    gpu_util.setdefault(job, []).append(sample.util_gpu)
        for job in set(self._job_use) - set(owners.values()):
            del self._job_use[job]
        updates = []
        for job, used in memory.items():
            use = self._job_use.get(job) or self._resume(job, now)
            self._job_use[job] = use
            use.peak_bytes = max(use.peak_bytes, used)
            # Its own SM share where the driver reports it, else the busyness of its GPUs.
            util = min(100.0, float(sum(sm[job]))) if job in sm else _mean(gpu_util.get(job, []))
            if util is not None:
                use.util_sum += util
                use.util_count += 1
            mean = round(use.util_sum / use.util_count, 1) if use.util_count else None
            updates.append((use.peak_bytes, mean, job))
        return updates

    def _resume(self, job: int, now: float) -> _JobUse:
        """Carry on from what an earlier daemon recorded (its mean weighted by the job's age)."""
        found = self.store.find(job)
        if found is None:
            return _JobUse(0, 0.0, 0)
        peak, mean, started = found.peak_gpu_mem or 0, found.mean_gpu_util, found.started_at
        if mean is None or started is None:
            return _JobUse(peak, 0.0, 0)
        weight = max(1, int((now - started) / self.interval_s))
        return _JobUse(peak, mean * weight, weight)
