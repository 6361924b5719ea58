"""Machine telemetry: GPU and host samples as one snapshot, 1 Hz history, per-job GPU use.

The daemon owns a `Sampler` and calls `tick()` once per sample interval (single-threaded, no
threads started here). Each tick writes one history row and the full latest snapshot to
telemetry.db (host.py, snapshot.py, history.py hold the parts) and updates each running job's
`peak_gpu_mem` and `mean_gpu_util` in state.db when they change. Rows older than the
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
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workbench.config import Config
from workbench.db.store import Store
from workbench.paths import Home
from workbench.telemetry.gpu import Gpus, GpuSample, attribute_processes
from workbench.telemetry.history import (
    KEEP_THINNED_S,
    THIN_BUCKET_S,
    _history_row,
    _mean,
    history,
    latest,
    thin,
)
from workbench.telemetry.host import FolderSizes, HostSampler, _list_disks
from workbench.telemetry.snapshot import (
    SCHEMA,
    Snapshots,
    _job_names,
    _process_names,
    build_snapshot,
    render_text,
    running_job_groups,
    snapshot,
)

__all__ = [
    "KEEP_THINNED_S",
    "SCHEMA",
    "THIN_BUCKET_S",
    "FolderSizes",
    "HostSampler",
    "Sampler",
    "Snapshots",
    "Tick",
    "_list_disks",
    "build_snapshot",
    "history",
    "latest",
    "render_text",
    "running_job_groups",
    "snapshot",
    "thin",
]


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
        self._written: dict[int, tuple[int, float | None]] = {}  # last GPU use stored per job
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
        changed = [u for u in updates if self._written.get(u[2]) != (u[0], u[1])]
        if changed:  # no write transaction at all while nothing moved
            self.store.set_gpu_use(changed)
            self._written.update({job: (peak, mean) for peak, mean, job in changed})
        for job in set(self._written) - {u[2] for u in updates}:
            del self._written[job]
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
