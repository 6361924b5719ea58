"""The GPU boundary: the only module that imports pynvml (from the nvidia-ml-py distribution).

NVML is initialised once per `Gpus` and sampled every tick for the cheap, changing fields
(utilisation, memory, temperature, power, clocks, fan, processes); the static ones (name, UUID,
PCI bus id, MIG mode, power limit) are read at open and refreshed every STATIC_REFRESH_S.
NotSupported reads as None ("n/a"); a GPU that fails mid-run becomes an error row and the others
carry on. `nvmlDeviceGetPcieThroughput` is never called: it blocks for over 20 ms.

Set WORKBENCH_FAKE_NVML to a scenario JSON file (see workbench/fakenvml.py) to run against a
simulated driver instead of libnvidia-ml.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from workbench.queue import scheduler
from workbench.telemetry import fakenvml

try:
    import pynvml
except ImportError:  # nvidia-ml-py is a dependency, but a broken install is a normal state too
    pynvml = None

FAKE_ENV = "WORKBENCH_FAKE_NVML"
STATIC_REFRESH_S = 60.0
OK, NO_DRIVER, NO_DEVICE, ERROR = "ok", "no_driver", "no_device", "error"
_NO_INSTANCE = 0xFFFFFFFF


@dataclass(frozen=True)
class GpuProcess:
    """A process with memory on a GPU."""

    pid: int
    used_memory_bytes: int | None  # None: the driver does not say (e.g. WDDM, some MIG setups)
    sm_util: int | None = None  # % of the SM time it used lately; None: not reported
    kind: str = "compute"  # "compute", "graphics" or "compute+graphics"
    gpu_instance_id: int | None = None  # the MIG instance it runs in

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one moment. None in a field means the GPU does not report it ("n/a")."""

    index: int
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    ok: bool = True
    error: str | None = None  # why `ok` is False, e.g. "GPU is lost"
    uuid: str | None = None
    pci_bus_id: str | None = None
    mig_mode: bool | None = None
    util_gpu: int | None = None  # %
    util_memory: int | None = None  # % of time memory was being read or written
    temperature_c: int | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    clock_sm_mhz: int | None = None
    clock_mem_mhz: int | None = None
    fan_percent: int | None = None
    processes: tuple[GpuProcess, ...] | None = None  # None: the driver cannot list them
    time: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["processes"] = None if self.processes is None else [p.to_json() for p in self.processes]
        return out


def error_row(
    index: int, error: str, name: str | None = None, total: int = 0, **ids: Any
) -> GpuSample:
    """A GPU that could not be read: what is still known about it, and why."""
    return GpuSample(
        index, name or f"GPU {index}", total, 0, ok=False, error=error, time=time.time(), **ids
    )


@dataclass
class _Device:
    """What a `Gpus` remembers about one GPU between ticks."""

    index: int
    handle: Any = None
    name: str | None = None
    uuid: str | None = None
    pci_bus_id: str | None = None
    mig_mode: bool | None = None
    power_limit_w: float | None = None
    memory_total_bytes: int = 0
    static_due: float = 0.0
    last_util_us: int = field(default_factory=lambda: int((time.time() - 1.0) * 1e6))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _use_fake_from_env() -> None:
    """Install the simulated driver named by WORKBENCH_FAKE_NVML (or remove a stale one)."""
    path = os.environ.get(FAKE_ENV)
    driver = fakenvml.installed(pynvml)
    if not path:
        if driver is not None:
            fakenvml.uninstall(pynvml)
        return
    source = str(Path(path).resolve())
    if driver is None or driver.initialised == 0 or fakenvml.installed_from(pynvml) != source:
        fakenvml.install(pynvml, fakenvml.Scenario.load(Path(path)), source)


def fake_driver() -> fakenvml.FakeDriver | None:
    """The simulated driver in use (WORKBENCH_FAKE_NVML), for tests to inspect; else None."""
    return fakenvml.installed(pynvml) if pynvml is not None else None


def drop_fake() -> None:
    """Put the real NVML binding back (tests call this after unsetting WORKBENCH_FAKE_NVML)."""
    if pynvml is not None:
        fakenvml.uninstall(pynvml)


def _init_failure(error: Exception) -> tuple[str, str]:
    """(status, message) for an nvmlInit that failed."""
    assert pynvml is not None
    if isinstance(error, pynvml.NVMLError_LibraryNotFound):
        return NO_DRIVER, "no NVIDIA driver on this machine (libnvidia-ml.so.1 not found)"
    if isinstance(error, pynvml.NVMLError_DriverNotLoaded):
        return NO_DRIVER, "the NVIDIA driver is not loaded (is the nvidia kernel module in?)"
    if isinstance(error, pynvml.NVMLError_LibRmVersionMismatch):
        return ERROR, (
            "NVIDIA driver/library version mismatch: the loaded kernel module and"
            " libnvidia-ml differ, usually after a driver upgrade; reboot to fix it"
        )
    if isinstance(error, pynvml.NVMLError_NoPermission):
        return ERROR, "no permission to use the NVIDIA driver (check /dev/nvidia* access)"
    return ERROR, f"NVML failed to start: {error}"


class Gpus:
    """An NVML session, initialised once; `sample()` reads every GPU."""

    def __init__(
        self,
        nvml: Any | None,
        status: str,
        message: str | None,
        count: int = 0,
        driver_version: str | None = None,
        cuda_version: str | None = None,
    ):
        self.nvml = nvml
        self.status = status
        self.message = message
        self.driver_version = driver_version
        self.cuda_version = cuda_version
        self._devices = [_Device(i) for i in range(count)]

    @classmethod
    def open(cls) -> Gpus:
        if pynvml is None:
            return cls(None, ERROR, "nvidia-ml-py is not installed; GPU panels are off")
        try:
            _use_fake_from_env()
        except (OSError, ValueError) as error:
            return cls(None, ERROR, f"{FAKE_ENV}: {error}")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            return cls(None, *_init_failure(error))
        try:
            count = pynvml.nvmlDeviceGetCount()
            driver = _text(pynvml.nvmlSystemGetDriverVersion())
            cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        except pynvml.NVMLError as error:
            pynvml.nvmlShutdown()
            return cls(None, ERROR, f"NVML started but cannot list GPUs: {error}")
        if count == 0:
            pynvml.nvmlShutdown()
            return cls(None, NO_DEVICE, f"no GPU on this machine (NVIDIA driver {driver})")
        return cls(pynvml, OK, None, count, driver, f"{cuda // 1000}.{cuda % 1000 // 10}")

    def sample(self) -> list[GpuSample]:
        """Every GPU now; a GPU that fails is an error row, the others are unaffected."""
        if self.nvml is None:
            return []
        now = time.time()
        return [self._sample_device(device, now) for device in self._devices]

    def close(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except self.nvml.NVMLError:
                pass
            self.nvml = None

    # ---- one GPU -----------------------------------------------------------------------

    def _optional(self, call: Callable[..., Any], *args: Any) -> Any:
        """A field the GPU may not report: NotSupported (and the like) reads as None."""
        nvml: Any = self.nvml
        try:
            return call(*args)
        except (
            nvml.NVMLError_NotSupported,
            nvml.NVMLError_NoPermission,
            nvml.NVMLError_FunctionNotFound,
            nvml.NVMLError_NoData,
            # A binding newer than the driver: the versioned call it wants is not there.
            getattr(nvml, "NVMLLibraryMismatchError", nvml.NVMLError_FunctionNotFound),
        ):
            return None

    def _sample_device(self, device: _Device, now: float) -> GpuSample:
        nvml: Any = self.nvml
        try:
            if device.handle is None:
                device.handle = nvml.nvmlDeviceGetHandleByIndex(device.index)
            if now >= device.static_due:
                self._read_static(device, now)
            handle = device.handle
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            device.memory_total_bytes = int(memory.total)
            util = self._optional(nvml.nvmlDeviceGetUtilizationRates, handle)
            temperature = self._optional(
                nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU
            )
            power_mw = self._optional(nvml.nvmlDeviceGetPowerUsage, handle)
            return GpuSample(
                index=device.index,
                name=device.name or f"GPU {device.index}",
                memory_total_bytes=int(memory.total),
                memory_used_bytes=int(memory.used),
                uuid=device.uuid,
                pci_bus_id=device.pci_bus_id,
                mig_mode=device.mig_mode,
                util_gpu=None if util is None else int(util.gpu),
                util_memory=None if util is None else int(util.memory),
                temperature_c=temperature,
                power_draw_w=None if power_mw is None else power_mw / 1000.0,
                power_limit_w=device.power_limit_w,
                clock_sm_mhz=self._optional(
                    nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM
                ),
                clock_mem_mhz=self._optional(
                    nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_MEM
                ),
                fan_percent=self._optional(nvml.nvmlDeviceGetFanSpeed, handle),
                processes=self._processes(device),
                time=now,
            )
        except nvml.NVMLError as error:
            device.handle = None  # ask for it afresh next tick, in case the GPU came back
            device.static_due = 0.0
            return error_row(
                device.index,
                str(error),
                device.name,
                device.memory_total_bytes,
                uuid=device.uuid,
                pci_bus_id=device.pci_bus_id,
            )

    def _read_static(self, device: _Device, now: float) -> None:
        nvml: Any = self.nvml
        handle = device.handle
        if device.name is None:
            device.name = _text(nvml.nvmlDeviceGetName(handle))
            uuid = self._optional(nvml.nvmlDeviceGetUUID, handle)
            device.uuid = None if uuid is None else _text(uuid)
            pci = self._optional(nvml.nvmlDeviceGetPciInfo, handle)
            device.pci_bus_id = None if pci is None else _text(pci.busId)
        mig = self._optional(nvml.nvmlDeviceGetMigMode, handle)
        device.mig_mode = None if mig is None else mig[0] == nvml.NVML_DEVICE_MIG_ENABLE
        limit_mw = self._optional(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        if limit_mw is None:
            limit_mw = self._optional(nvml.nvmlDeviceGetPowerManagementLimit, handle)
        device.power_limit_w = None if limit_mw is None else limit_mw / 1000.0
        device.static_due = now + STATIC_REFRESH_S

    def _processes(self, device: _Device) -> tuple[GpuProcess, ...] | None:
        nvml: Any = self.nvml
        handle = device.handle
        compute = self._optional(nvml.nvmlDeviceGetComputeRunningProcesses, handle)
        graphics = self._optional(nvml.nvmlDeviceGetGraphicsRunningProcesses, handle)
        if compute is None and graphics is None:
            return None
        found: dict[int, GpuProcess] = {}
        for kind, listed in (("compute", compute or []), ("graphics", graphics or [])):
            for proc in listed:
                pid = int(proc.pid)
                used = None if proc.usedGpuMemory is None else int(proc.usedGpuMemory)
                instance = getattr(proc, "gpuInstanceId", _NO_INSTANCE)
                seen = found.get(pid)
                if seen is not None:  # listed as both: count its memory once
                    found[pid] = GpuProcess(
                        pid, seen.used_memory_bytes, None, "compute+graphics", seen.gpu_instance_id
                    )
                    continue
                found[pid] = GpuProcess(
                    pid, used, None, kind, None if instance == _NO_INSTANCE else int(instance)
                )
        sm = self._sm_util(device) if found else None
        return tuple(
            GpuProcess(
                p.pid,
                p.used_memory_bytes,
                None if sm is None else sm.get(p.pid, 0),
                p.kind,
                p.gpu_instance_id,
            )
            for p in sorted(found.values(), key=lambda p: p.pid)
        )

    def _sm_util(self, device: _Device) -> dict[int, int] | None:
        """Each process's SM % from the samples since the last tick; None if not reported."""
        nvml: Any = self.nvml
        try:
            samples = nvml.nvmlDeviceGetProcessUtilization(device.handle, device.last_util_us)
        except nvml.NVMLError_NotFound:
            return {}  # no samples since the last tick: nothing ran
        except (
            nvml.NVMLError_NotSupported,
            nvml.NVMLError_NoPermission,
            nvml.NVMLError_FunctionNotFound,
        ):
            return None
        latest: dict[int, tuple[int, int]] = {}
        for sample in samples:
            stamp = int(sample.timeStamp)
            if stamp >= latest.get(int(sample.pid), (-1, 0))[0]:
                latest[int(sample.pid)] = (stamp, int(sample.smUtil))
            device.last_util_us = max(device.last_util_us, stamp)
        return {pid: min(100, util) for pid, (_, util) in latest.items()}


# ---- for the scheduler and the dashboard -------------------------------------------------


def gpu_slots(samples: Iterable[GpuSample], our_pids: set[int]) -> tuple[scheduler.GpuSlot, ...]:
    """The scheduler's GPU inventory. Memory used by others is everything in use except what our
    job processes hold (so driver and context overhead counts as taken); without a process list
    it is all memory in use. An error row is an unhealthy slot."""
    slots = []
    for sample in samples:
        if not sample.ok:
            slots.append(
                scheduler.GpuSlot(sample.index, sample.memory_total_bytes, 0, healthy=False)
            )
            continue
        ours = 0
        if sample.processes is not None:
            ours = sum(p.used_memory_bytes or 0 for p in sample.processes if p.pid in our_pids)
        other = max(0, sample.memory_used_bytes - ours)
        slots.append(scheduler.GpuSlot(sample.index, sample.memory_total_bytes, other))
    return tuple(slots)


def job_of_process(pid: int, jobs_by_group: Mapping[int, int]) -> int | None:
    """The queue job a process belongs to: by its process group (each job leads one), else by
    walking its parents (a job step that made its own group). `jobs_by_group` maps a job's
    process-group id (its wrapper's pid) to the job id."""
    try:
        group = os.getpgid(pid)
    except OSError:
        return None  # gone, or a pid from another pid namespace
    if group in jobs_by_group:
        return jobs_by_group[group]
    if pid in jobs_by_group:
        return jobs_by_group[pid]
    try:
        for parent in psutil.Process(pid).parents():
            if parent.pid in jobs_by_group:
                return jobs_by_group[parent.pid]
    except psutil.Error:
        return None
    return None


def attribute_processes(
    samples: Iterable[GpuSample],
    jobs_by_group: Mapping[int, int],
    not_ours: set[int] | None = None,
) -> dict[int, int]:
    """{GPU process pid: job id} for the GPU processes that belong to queue jobs.

    `not_ours`, if given, remembers pids found to belong to no job (a process cannot join a job
    that started after it), so the parent walk runs once per process, not every tick; pids no
    longer on any GPU are dropped from it."""
    pids = {p.pid for s in samples if s.processes for p in s.processes}
    owners: dict[int, int] = {}
    for pid in pids:
        if not_ours is not None and pid in not_ours:
            continue
        job = job_of_process(pid, jobs_by_group) if jobs_by_group else None
        if job is not None:
            owners[pid] = job
        elif not_ours is not None and jobs_by_group:
            not_ours.add(pid)
    if not_ours is not None:
        not_ours.intersection_update(pids)
    return owners
