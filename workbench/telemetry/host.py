"""Host telemetry over psutil: CPU per core, memory, swap, network, disks and folder sizes."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

FOLDER_REFRESH_S = 30.0
FOLDER_BUDGET_S = 0.002
SLOW_REFRESH_S = 30.0  # how often to re-list mounts, disks and interfaces
_SKIP_DISKS = ("loop", "ram", "zram", "sr", "fd", "nbd")
_VIRTUAL_DISKS = ("dm-", "md")  # stacked on other disks: listed, but not added to the totals


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
