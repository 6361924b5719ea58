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
from collections.abc import Callable, Collection, Iterable, Mapping
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


@dataclass(frozen=True)
class GpuPlacement:
    """Where a GPU sits and how it is split, for the scheduler: its NUMA node, an id shared by
    the GPUs under one PCIe switch (from `nvmlDeviceGetTopologyCommonAncestor`), and its MIG
    instances when MIG is on. None: the driver does not say."""

    numa_node: int | None = None
    switch: int | None = None
    mig: tuple[scheduler.MigSlot, ...] = ()


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
        self._placement: dict[int, GpuPlacement] = {}
        self._placement_due = 0.0

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

    def placement(self) -> dict[int, GpuPlacement]:
        """{GPU index: placement}, read at first use and every STATIC_REFRESH_S after (NUMA
        node and topology are fixed; MIG instances change only when an admin reconfigures)."""
        if self.nvml is None:
            return {}
        now = time.time()
        if now >= self._placement_due:
            self._placement = self._read_placement()
            self._placement_due = now + STATIC_REFRESH_S
        return self._placement

    def _read_placement(self) -> dict[int, GpuPlacement]:
        nvml: Any = self.nvml
        handles: dict[int, Any] = {}
        for device in self._devices:
            try:
                handles[device.index] = device.handle or nvml.nvmlDeviceGetHandleByIndex(
                    device.index
                )
            except nvml.NVMLError:
                continue
        switch: dict[int, int] = {}
        known: set[int] = set()
        indices = sorted(handles)
        for position, first in enumerate(indices):
            for second in indices[position + 1 :]:
                try:
                    level = nvml.nvmlDeviceGetTopologyCommonAncestor(
                        handles[first], handles[second]
                    )
                except nvml.NVMLError:
                    continue
                known.update((first, second))
                if level <= nvml.NVML_TOPOLOGY_MULTIPLE:  # under the same PCIe switch tree
                    root = switch.get(first, first)
                    switch[second] = switch.setdefault(first, root)
        out: dict[int, GpuPlacement] = {}
        for index, handle in handles.items():
            numa = None
            try:
                numa = self._optional(nvml.nvmlDeviceGetNumaNodeId, handle)
            except nvml.NVMLError:
                numa = None
            numa_node = None if numa is None or int(numa) < 0 else int(numa)
            out[index] = GpuPlacement(
                numa_node,
                switch.get(index, index) if index in known else None,
                self._mig_instances(handle),
            )
        return out

    def _mig_instances(self, handle: Any) -> tuple[scheduler.MigSlot, ...]:
        """The MIG instances of a GPU with MIG on (empty otherwise), as allocatable slots."""
        nvml: Any = self.nvml
        try:
            mode = self._optional(nvml.nvmlDeviceGetMigMode, handle)
            if mode is None or mode[0] != nvml.NVML_DEVICE_MIG_ENABLE:
                return ()
            count = nvml.nvmlDeviceGetMaxMigDeviceCount(handle)
        except nvml.NVMLError:
            return ()
        found = []
        for number in range(count):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, number)
                name = _text(nvml.nvmlDeviceGetName(mig))
                uuid = _text(nvml.nvmlDeviceGetUUID(mig))
                total = int(nvml.nvmlDeviceGetMemoryInfo(mig).total)
            except nvml.NVMLError:
                continue  # NotFound: an empty slot
            profile = name.rsplit(" MIG ", 1)[-1] if " MIG " in name else name
            found.append(scheduler.MigSlot(uuid, profile, total))
        return tuple(found)

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


def process_owner(pid: int) -> str | None:
    """The Unix user name a process runs as (its real uid, through `pwd`), or None when it is
    gone or cannot be read (NVML lists pids of other containers too)."""
    from workbench.queue.accounts import user_name

    try:
        return user_name(psutil.Process(pid).uids().real)
    except (psutil.Error, OSError):
        return None


def gpu_slots(
    samples: Iterable[GpuSample],
    our_pids: set[int],
    placement: Mapping[int, GpuPlacement] | None = None,
    granted: Mapping[int, tuple[int, Collection[int]]] | None = None,
) -> tuple[scheduler.GpuSlot, ...]:
    """The scheduler's GPU inventory. Memory used by others is everything in use except what our
    job processes hold (so driver and context overhead counts as taken); without a process list
    it is all memory in use. The other processes are named (pid, bytes) for wait reasons. An
    error row is an unhealthy slot. `placement` adds NUMA node, PCIe switch and MIG instances.
    `granted` maps a job process's pid to (its job id, the GPU indices the job was granted): what it holds on any other GPU (a job that set CUDA_VISIBLE_DEVICES itself) is in
    no reservation there, so it counts as another's, named with its job."""
    slots = []
    where = placement or {}
    for sample in samples:
        place = where.get(sample.index, GpuPlacement())
        if not sample.ok:
            slots.append(
                scheduler.GpuSlot(
                    sample.index,
                    sample.memory_total_bytes,
                    0,
                    healthy=False,
                    numa_node=place.numa_node,
                    switch=place.switch,
                    uuid=sample.uuid,
                )
            )
            continue
        ours = 0
        others: tuple[scheduler.OtherProcess, ...] = ()
        if sample.processes is not None:
            grants = granted or {}
            # A job's process counts as ours only on the GPUs its job was granted.
            here = {
                p.pid
                for p in sample.processes
                if p.pid in our_pids and (p.pid not in grants or sample.index in grants[p.pid][1])
            }
            ours = sum(p.used_memory_bytes or 0 for p in sample.processes if p.pid in here)
            others = tuple(
                scheduler.OtherProcess(
                    p.pid,
                    p.used_memory_bytes,
                    grants[p.pid][0] if p.pid in grants else None,
                    None if p.pid in grants else process_owner(p.pid),
                )
                for p in sample.processes
                if p.pid not in here and p.used_memory_bytes
            )
        other = max(0, sample.memory_used_bytes - ours)
        slots.append(
            scheduler.GpuSlot(
                sample.index,
                sample.memory_total_bytes,
                other,
                others=others,
                numa_node=place.numa_node,
                switch=place.switch,
                uuid=sample.uuid,
                mig=place.mig,
            )
        )
    return tuple(slots)


def job_gpu_memory(
    samples: Iterable[GpuSample],
    owners: Mapping[int, int],
    granted: Mapping[int, Collection[int]] | None = None,
) -> dict[int, int]:
    """{job id: bytes} the most GPU memory each job's processes hold on any one GPU, from
    `owners` ({pid: job id}, as `attribute_processes` finds them); with `granted` ({job id: GPU
    indices}), only on the GPUs each job was granted (what it holds elsewhere is no part of its
    reservation: `gpu_slots` counts it as another's there)."""
    seen: dict[int, int] = {}
    for sample in samples:
        per_job: dict[int, int] = {}
        for proc in sample.processes or ():
            job = owners.get(proc.pid)
            if job is None or not proc.used_memory_bytes:
                continue
            if granted is not None and job in granted and sample.index not in granted[job]:
                continue
            per_job[job] = per_job.get(job, 0) + proc.used_memory_bytes
        for job, used in per_job.items():
            seen[job] = max(seen.get(job, 0), used)
    return seen


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
