"""A simulated NVIDIA driver: the real pynvml binding calls fake C functions that fill its structs.

Only for tests and demos. `install(pynvml, scenario)` swaps the binding's library loader and
function-pointer table, so `pynvml.nvmlDeviceGetMemoryInfo(handle)` still builds the real
`c_nvmlMemory_t`, passes it by reference, checks the return code and raises the real
`NVMLError` subclass; only the C side is simulated. This module never imports pynvml itself:
`workbench/gpu.py` hands it the module (set WORKBENCH_FAKE_NVML to a scenario JSON file).

A scenario, as JSON (every key optional):

    {"driver_version": "550.54.15", "cuda_version": 12040,
     "failure": null,               # or "library_missing", "driver_not_loaded", "version_mismatch"
     "missing_functions": [],       # C symbols an older driver lacks, e.g. "nvmlDeviceGetFanSpeed"
     "gpu_count": 2,                # N default GPUs when "gpus" is absent
     "gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_total": 85899345920,
               "memory_used": 1073741824, "utilization_gpu": [10, 90], "utilization_memory": 5,
               "temperature": 55, "power_draw_w": 250.0, "power_limit_w": 700.0,
               "clock_sm_mhz": 1980, "clock_mem_mhz": 2619, "fan_percent": 40, "mig": false,
               "processes": [{"pid": 4242, "used_memory": 1073741824, "sm_util": 80,
                              "kind": "compute", "gpu_instance_id": null},
                             {"pid_file": "/tmp/job.pid", "used_memory": 1073741824}],
               "not_supported": ["fan", "process_utilization"],
               "lost_after": 3,
               "numa_node": 0, "switch": 0,   # topology (null: the driver does not say)
               "mig_instances": [{"profile": "1g.10gb", "memory_total": 10737418240}]}]}

A list value (as `utilization_gpu` above) is read in turn, one element per sample. A GPU with
`lost_after: K` answers K samples (memory reads) and then every call on it returns
NVML_ERROR_GPU_IS_LOST. Names allowed in `not_supported`: see NOT_SUPPORTABLE.

Topology: GPUs with the same `switch` sit under one PCIe switch
(`nvmlDeviceGetTopologyCommonAncestor` answers NVML_TOPOLOGY_SINGLE), else GPUs with the same
`numa_node` share a CPU (NVML_TOPOLOGY_NODE), else NVML_TOPOLOGY_SYSTEM; a GPU without either
answers NotSupported. `nvmlDeviceGetNumaNodeId` reads `numa_node`. A GPU with `mig: true` and
`mig_instances` has MIG device handles (`nvmlDeviceGetMigDeviceHandleByIndex`), each with its
own name ("<GPU name> MIG 1g.10gb"), UUID, memory and GPU instance id.
"""

from __future__ import annotations

import ctypes
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

FAILURES = ("library_missing", "driver_not_loaded", "version_mismatch")
NOT_SUPPORTABLE = frozenset(
    {
        "utilization",
        "memory",
        "temperature",
        "power_draw",
        "power_limit",
        "clocks",
        "fan",
        "processes",
        "process_utilization",
        "mig",
        "uuid",
        "pci",
        "topology",
        "numa",
    }
)
GIB = 1024**3
_NOT_AVAILABLE_U64 = 2**64 - 1  # NVML_VALUE_NOT_AVAILABLE_ulonglong
_NO_INSTANCE = 0xFFFFFFFF  # gpuInstanceId of a process on a GPU without MIG

Number = int | float
Varying = Number | list[Number]


@dataclass
class FakeProcess:
    """A process holding GPU memory."""

    pid: int = 0
    used_memory: Varying | None = 512 * 1024**2
    sm_util: Varying | None = None  # None: NVML has no utilisation samples for it
    kind: str = "compute"  # or "graphics"
    gpu_instance_id: int | None = None
    pid_file: str | None = None  # the pid is read from this file each call; absent: not listed

    def current_pid(self) -> int | None:
        """Its pid now: `pid`, or the number in `pid_file` (None while there is none), so a
        scenario can put a process that starts later (a queue job) on a GPU."""
        if self.pid_file is None:
            return self.pid
        try:
            text = Path(self.pid_file).read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None


@dataclass
class FakeMig:
    """One MIG instance of a GPU (a GPU instance with one compute instance)."""

    profile: str = "1g.10gb"
    memory_total: int = 10 * GIB
    uuid: str | None = None
    gpu_instance_id: int | None = None


@dataclass
class FakeGpu:
    """One simulated GPU; numbers may be lists, read one element per sample."""

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str | None = None
    pci_bus_id: str | None = None
    memory_total: int = 80 * GIB
    memory_used: Varying = 0
    utilization_gpu: Varying = 0
    utilization_memory: Varying = 0
    temperature: Varying = 35
    power_draw_w: Varying = 70.0
    power_limit_w: float = 700.0
    clock_sm_mhz: Varying = 1980
    clock_mem_mhz: Varying = 2619
    fan_percent: Varying = 30
    mig: bool = False
    processes: list[FakeProcess] = field(default_factory=list)
    not_supported: list[str] = field(default_factory=list)
    lost_after: int | None = None
    numa_node: int | None = None
    switch: int | None = None
    mig_instances: list[FakeMig] = field(default_factory=list)


@dataclass
class Scenario:
    """A whole simulated machine."""

    gpus: list[FakeGpu] = field(default_factory=list)
    driver_version: str = "550.54.15"
    cuda_version: int = 12040
    failure: str | None = None
    missing_functions: list[str] = field(default_factory=list)  # an older driver lacks these

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        """Build from JSON data; unknown keys are an error naming them."""
        _check_keys(data, {f.name for f in fields(cls)} | {"gpu_count"}, "scenario")
        gpus = []
        for number, raw in enumerate(data.get("gpus", [{}] * int(data.get("gpu_count", 1)))):
            where = f"gpus[{number}]"
            _check_keys(raw, {f.name for f in fields(FakeGpu)}, where)
            procs = []
            for p_number, proc in enumerate(raw.get("processes", [])):
                _check_keys(
                    proc, {f.name for f in fields(FakeProcess)}, f"{where}.processes[{p_number}]"
                )
                procs.append(FakeProcess(**proc))
            unknown = set(raw.get("not_supported", [])) - NOT_SUPPORTABLE
            if unknown:
                raise ValueError(f"{where}.not_supported: unknown {sorted(unknown)}")
            migs = []
            for m_number, mig in enumerate(raw.get("mig_instances", [])):
                _check_keys(
                    mig, {f.name for f in fields(FakeMig)}, f"{where}.mig_instances[{m_number}]"
                )
                migs.append(FakeMig(**mig))
            gpus.append(FakeGpu(**{**raw, "processes": procs, "mig_instances": migs}))
        if data.get("failure") not in (None, *FAILURES):
            raise ValueError(f"scenario.failure must be one of {FAILURES}, not {data['failure']!r}")
        rest = {k: v for k, v in data.items() if k not in ("gpus", "gpu_count")}
        return cls(gpus=gpus, **rest)

    @classmethod
    def load(cls, path: Path) -> Scenario:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _check_keys(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")


def _at(value: Varying, sample: int) -> Number:
    if isinstance(value, list):
        return value[sample % len(value)]
    return value


def _out(ref: Any) -> Any:
    """The object behind a `byref(...)` argument."""
    return ref._obj


class _CFunction:
    """A fake foreign function: callable, with the `restype`/`argtypes` the binding may set."""

    def __init__(self, call: Callable[..., Any]):
        self.call = call
        self.restype: Any = ctypes.c_int
        self.argtypes: Any = None

    def __call__(self, *args: Any) -> Any:
        return self.call(*args)


class _Library:
    """Stands in for CDLL("libnvidia-ml.so.1"): its attributes are the exported C functions."""

    def __init__(self, driver: FakeDriver):
        for name in dir(driver):
            if name.startswith("nvml") and name not in driver.scenario.missing_functions:
                setattr(self, name, _CFunction(getattr(driver, name)))


@dataclass
class _GpuState:
    spec: FakeGpu
    index: int
    cell: ctypes.c_uint  # the memory a handle points at
    samples: int = 0
    lost: bool = False

    @property
    def tick(self) -> int:
        return max(0, self.samples - 1)


@dataclass
class _MigState:
    spec: FakeMig
    parent: _GpuState
    number: int  # its place among the parent's MIG devices
    cell: ctypes.c_uint

    @property
    def instance_id(self) -> int:
        return self.spec.gpu_instance_id if self.spec.gpu_instance_id is not None else self.number

    @property
    def uuid(self) -> str:
        parent, number = self.parent.index, self.number
        return self.spec.uuid or f"MIG-fa4e0000-0000-4000-8000-{parent:06x}{number:06x}"


class FakeDriver:
    """The C side of NVML for one scenario. Methods named nvml* are the exported functions."""

    def __init__(self, nvml: Any, scenario: Scenario):
        self.binding = nvml
        self.scenario = scenario
        self.initialised = 0
        self.calls: dict[str, int] = {}
        self.gpus = [_GpuState(g, i, ctypes.c_uint(i)) for i, g in enumerate(scenario.gpus)]
        self.by_address = {ctypes.addressof(g.cell): g for g in self.gpus}
        self.migs = [
            _MigState(m, g, n, ctypes.c_uint(1000 + 10 * g.index + n))
            for g in self.gpus
            if g.spec.mig
            for n, m in enumerate(g.spec.mig_instances)
        ]
        self.mig_by_address = {ctypes.addressof(m.cell): m for m in self.migs}
        for name in dir(self):
            if name.startswith("nvml"):
                setattr(self, name, self._counted(name, getattr(self, name)))
        self.library = _Library(self)

    def _counted(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return call(*args)

        return counted

    # ---- helpers -----------------------------------------------------------------------

    def _code(self, name: str) -> int:
        return int(getattr(self.binding, f"NVML_ERROR_{name}"))

    def _device(self, handle: Any, need: str | None = None) -> _GpuState | int:
        """The GPU a handle names, or the error code the call must return."""
        if not self.initialised:
            return self._code("UNINITIALIZED")
        address = ctypes.cast(handle, ctypes.c_void_p).value
        gpu = self.by_address.get(address or 0)
        if gpu is None:
            return self._code("INVALID_ARGUMENT")
        if gpu.lost:
            return self._code("GPU_IS_LOST")
        if need is not None and need in gpu.spec.not_supported:
            return self._code("NOT_SUPPORTED")
        return gpu

    def _mig(self, handle: Any) -> _MigState | None:
        """The MIG device a handle names, if it names one."""
        address = ctypes.cast(handle, ctypes.c_void_p).value
        return self.mig_by_address.get(address or 0)

    def _put_handle(self, ref: Any, cell: ctypes.c_uint) -> None:
        pointer_cell = ctypes.cast(ctypes.byref(_out(ref)), ctypes.POINTER(ctypes.c_void_p))
        pointer_cell.contents.value = ctypes.addressof(cell)

    def _put_text(self, buffer: Any, length: Any, text: str) -> int:
        data = text.encode()
        if len(data) + 1 > int(length.value):
            return self._code("INSUFFICIENT_SIZE")
        buffer.value = data
        return 0

    def _put_uint(
        self, handle: Any, ref: Any, need: str, read: Callable[[_GpuState], Number]
    ) -> int:
        gpu = self._device(handle, need)
        if isinstance(gpu, int):
            return gpu
        _out(ref).value = int(read(gpu))
        return 0

    # ---- library and system ------------------------------------------------------------

    def nvmlInitWithFlags(self, flags: int) -> int:
        if self.scenario.failure == "driver_not_loaded":
            return self._code("DRIVER_NOT_LOADED")
        if self.scenario.failure == "version_mismatch":
            return self._code("LIB_RM_VERSION_MISMATCH")
        self.initialised += 1
        return 0

    def nvmlInit_v2(self) -> int:
        return self.nvmlInitWithFlags(0)

    def nvmlShutdown(self) -> int:
        if not self.initialised:
            return self._code("UNINITIALIZED")
        self.initialised -= 1
        return 0

    def nvmlErrorString(self, result: int) -> bytes:
        return f"Fake NVML error {result}".encode()

    def nvmlSystemGetDriverVersion(self, buffer: Any, length: Any) -> int:
        if not self.initialised:
            return self._code("UNINITIALIZED")
        return self._put_text(buffer, length, self.scenario.driver_version)

    def nvmlSystemGetNVMLVersion(self, buffer: Any, length: Any) -> int:
        major = self.scenario.cuda_version // 1000
        return self._put_text(buffer, length, f"{major}.{self.scenario.driver_version}")

    def nvmlSystemGetCudaDriverVersion(self, ref: Any) -> int:
        if not self.initialised:
            return self._code("UNINITIALIZED")
        _out(ref).value = self.scenario.cuda_version
        return 0

    def nvmlSystemGetCudaDriverVersion_v2(self, ref: Any) -> int:
        return self.nvmlSystemGetCudaDriverVersion(ref)

    # ---- devices -----------------------------------------------------------------------

    def nvmlDeviceGetCount_v2(self, ref: Any) -> int:
        if not self.initialised:
            return self._code("UNINITIALIZED")
        _out(ref).value = len(self.gpus)
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, index: Any, ref: Any) -> int:
        if not self.initialised:
            return self._code("UNINITIALIZED")
        number = int(index.value)
        if not 0 <= number < len(self.gpus):
            return self._code("INVALID_ARGUMENT")
        gpu = self.gpus[number]
        if gpu.lost:
            return self._code("GPU_IS_LOST")
        self._put_handle(ref, gpu.cell)
        return 0

    def nvmlDeviceGetName(self, handle: Any, buffer: Any, length: Any) -> int:
        mig = self._mig(handle)
        if mig is not None:
            return self._put_text(buffer, length, f"{mig.parent.spec.name} MIG {mig.spec.profile}")
        gpu = self._device(handle)
        if isinstance(gpu, int):
            return gpu
        return self._put_text(buffer, length, gpu.spec.name)

    def nvmlDeviceGetUUID(self, handle: Any, buffer: Any, length: Any) -> int:
        mig = self._mig(handle)
        if mig is not None:
            return self._put_text(buffer, length, mig.uuid)
        gpu = self._device(handle, "uuid")
        if isinstance(gpu, int):
            return gpu
        uuid = gpu.spec.uuid or f"GPU-fa4e0000-0000-4000-8000-{gpu.index:012x}"
        return self._put_text(buffer, length, uuid)

    def nvmlDeviceGetPciInfo_v3(self, handle: Any, ref: Any) -> int:
        gpu = self._device(handle, "pci")
        if isinstance(gpu, int):
            return gpu
        info = _out(ref)
        bus_id = gpu.spec.pci_bus_id or f"00000000:{gpu.index + 0x18:02X}:00.0"
        info.busId = bus_id.encode()
        info.busIdLegacy = bus_id.encode()[:15]
        info.domain, info.bus, info.device = 0, int(bus_id.split(":")[1], 16), 0
        info.pciDeviceId = 0x233010DE
        return 0

    def nvmlDeviceGetMigMode(self, handle: Any, current: Any, pending: Any) -> int:
        gpu = self._device(handle, "mig")
        if isinstance(gpu, int):
            return gpu
        _out(current).value = _out(pending).value = int(gpu.spec.mig)
        return 0

    def nvmlDeviceGetMemoryInfo(self, handle: Any, ref: Any) -> int:
        mig = self._mig(handle)
        if mig is not None:
            memory = _out(ref)
            memory.total = mig.spec.memory_total
            memory.used = sum(
                int(_at(p.used_memory or 0, mig.parent.tick))
                for p in mig.parent.spec.processes
                if p.gpu_instance_id == mig.instance_id
            )
            memory.free = memory.total - memory.used
            return 0
        gpu = self._device(handle, "memory")
        if isinstance(gpu, int):
            return gpu
        if gpu.spec.lost_after is not None and gpu.samples >= gpu.spec.lost_after:
            gpu.lost = True
            return self._code("GPU_IS_LOST")
        gpu.samples += 1
        memory = _out(ref)
        memory.total = gpu.spec.memory_total
        memory.used = int(_at(gpu.spec.memory_used, gpu.tick))
        memory.free = memory.total - memory.used
        if hasattr(memory, "reserved"):
            memory.reserved = 0
        return 0

    def nvmlDeviceGetMemoryInfo_v2(self, handle: Any, ref: Any) -> int:
        return self.nvmlDeviceGetMemoryInfo(handle, ref)

    # ---- topology and MIG devices ------------------------------------------------------

    def nvmlDeviceGetNumaNodeId(self, handle: Any, ref: Any) -> int:
        gpu = self._device(handle, "numa")
        if isinstance(gpu, int):
            return gpu
        if gpu.spec.numa_node is None:
            return self._code("NOT_SUPPORTED")
        _out(ref).value = gpu.spec.numa_node
        return 0

    def nvmlDeviceGetTopologyCommonAncestor(self, first: Any, second: Any, ref: Any) -> int:
        one = self._device(first, "topology")
        if isinstance(one, int):
            return one
        two = self._device(second, "topology")
        if isinstance(two, int):
            return two
        a, b = one.spec, two.spec
        if (a.switch is None and a.numa_node is None) or (b.switch is None and b.numa_node is None):
            return self._code("NOT_SUPPORTED")
        if one is two:
            level = self.binding.NVML_TOPOLOGY_INTERNAL
        elif a.switch is not None and a.switch == b.switch:
            level = self.binding.NVML_TOPOLOGY_SINGLE
        elif a.numa_node is not None and a.numa_node == b.numa_node:
            level = self.binding.NVML_TOPOLOGY_NODE
        else:
            level = self.binding.NVML_TOPOLOGY_SYSTEM
        _out(ref).value = int(level)
        return 0

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any, ref: Any) -> int:
        gpu = self._device(handle, "mig")
        if isinstance(gpu, int):
            return gpu
        _out(ref).value = 7 if gpu.spec.mig else 0
        return 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: Any, ref: Any) -> int:
        gpu = self._device(handle, "mig")
        if isinstance(gpu, int):
            return gpu
        if not gpu.spec.mig:
            return self._code("INVALID_ARGUMENT")
        number = int(index.value)
        mine = [m for m in self.migs if m.parent is gpu]
        if not 0 <= number < 7:
            return self._code("INVALID_ARGUMENT")
        if number >= len(mine):
            return self._code("NOT_FOUND")  # an empty slot: no instance was created there
        self._put_handle(ref, mine[number].cell)
        return 0

    def nvmlDeviceIsMigDeviceHandle(self, handle: Any, ref: Any) -> int:
        _out(ref).value = int(self._mig(handle) is not None)
        return 0

    def nvmlDeviceGetGpuInstanceId(self, handle: Any, ref: Any) -> int:
        mig = self._mig(handle)
        if mig is None:
            return self._code("INVALID_ARGUMENT")
        _out(ref).value = mig.instance_id
        return 0

    def nvmlDeviceGetUtilizationRates(self, handle: Any, ref: Any) -> int:
        gpu = self._device(handle, "utilization")
        if isinstance(gpu, int):
            return gpu
        if gpu.spec.mig:  # per-GPU utilisation is not reported while MIG is on
            return self._code("NOT_SUPPORTED")
        rates = _out(ref)
        rates.gpu = int(_at(gpu.spec.utilization_gpu, gpu.tick))
        rates.memory = int(_at(gpu.spec.utilization_memory, gpu.tick))
        return 0

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: Any, ref: Any) -> int:
        if int(sensor.value) != int(self.binding.NVML_TEMPERATURE_GPU):
            return self._code("INVALID_ARGUMENT")
        return self._put_uint(handle, ref, "temperature", lambda g: _at(g.spec.temperature, g.tick))

    def nvmlDeviceGetPowerUsage(self, handle: Any, ref: Any) -> int:
        return self._put_uint(
            handle, ref, "power_draw", lambda g: _at(g.spec.power_draw_w, g.tick) * 1000
        )

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any, ref: Any) -> int:
        return self._put_uint(handle, ref, "power_limit", lambda g: g.spec.power_limit_w * 1000)

    def nvmlDeviceGetPowerManagementLimit(self, handle: Any, ref: Any) -> int:
        return self.nvmlDeviceGetEnforcedPowerLimit(handle, ref)

    def nvmlDeviceGetClockInfo(self, handle: Any, clock: Any, ref: Any) -> int:
        kind = int(clock.value)
        if kind in (int(self.binding.NVML_CLOCK_SM), int(self.binding.NVML_CLOCK_GRAPHICS)):
            return self._put_uint(handle, ref, "clocks", lambda g: _at(g.spec.clock_sm_mhz, g.tick))
        if kind == int(self.binding.NVML_CLOCK_MEM):
            return self._put_uint(
                handle, ref, "clocks", lambda g: _at(g.spec.clock_mem_mhz, g.tick)
            )
        return self._code("INVALID_ARGUMENT")

    def nvmlDeviceGetFanSpeed(self, handle: Any, ref: Any) -> int:
        return self._put_uint(handle, ref, "fan", lambda g: _at(g.spec.fan_percent, g.tick))

    def _processes(self, handle: Any, count_ref: Any, array: Any, kind: str) -> int:
        gpu = self._device(handle, "processes")
        if isinstance(gpu, int):
            return gpu
        procs = [
            (pid, p)
            for p in gpu.spec.processes
            if p.kind == kind and (pid := p.current_pid()) is not None
        ]
        count = _out(count_ref)
        if array is None or count.value < len(procs):
            count.value = len(procs)
            return self._code("INSUFFICIENT_SIZE") if procs else 0
        for slot, (pid, proc) in zip(array, procs, strict=False):
            slot.pid = pid
            used = proc.used_memory
            slot.usedGpuMemory = _NOT_AVAILABLE_U64 if used is None else int(_at(used, gpu.tick))
            instance = proc.gpu_instance_id
            slot.gpuInstanceId = _NO_INSTANCE if instance is None else instance
            slot.computeInstanceId = _NO_INSTANCE if instance is None else 0
        count.value = len(procs)
        return 0

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle: Any, count: Any, array: Any) -> int:
        return self._processes(handle, count, array, "compute")

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: Any, count: Any, array: Any) -> int:
        return self._processes(handle, count, array, "compute")

    def nvmlDeviceGetGraphicsRunningProcesses_v3(self, handle: Any, count: Any, array: Any) -> int:
        return self._processes(handle, count, array, "graphics")

    def nvmlDeviceGetGraphicsRunningProcesses_v2(self, handle: Any, count: Any, array: Any) -> int:
        return self._processes(handle, count, array, "graphics")

    def nvmlDeviceGetPcieThroughput(self, handle: Any, counter: Any, ref: Any) -> int:
        time.sleep(0.02)  # the real call blocks for about 20 ms
        return self._put_uint(handle, ref, "pci", lambda g: 0)

    def nvmlDeviceGetProcessUtilization(
        self, handle: Any, array: Any, count_ref: Any, last_seen: Any
    ) -> int:
        gpu = self._device(handle, "process_utilization")
        if isinstance(gpu, int):
            return gpu
        if gpu.spec.mig:
            return self._code("NOT_SUPPORTED")
        now_us = int(time.time() * 1e6)
        if now_us <= int(last_seen.value):
            return self._code("NOT_FOUND")
        sampled = [
            (pid, p)
            for p in gpu.spec.processes
            if p.sm_util is not None and (pid := p.current_pid()) is not None
        ]
        count = _out(count_ref)
        if not sampled:
            return self._code("NOT_FOUND")
        if array is None or count.value < len(sampled):
            count.value = len(sampled)
            return self._code("INSUFFICIENT_SIZE")
        for slot, (pid, proc) in zip(array, sampled, strict=False):
            slot.pid = pid
            slot.timeStamp = now_us
            slot.smUtil = int(_at(proc.sm_util or 0, gpu.tick))
            slot.memUtil = slot.encUtil = slot.decUtil = 0
        count.value = len(sampled)
        return 0


_ATTRIBUTE = "_workbench_fake_driver"


@dataclass
class _Installed:
    driver: FakeDriver
    load_library: Callable[[], None]
    library: Any
    refcount: int
    source: object


def install(nvml: Any, scenario: Scenario, source: object = None) -> FakeDriver:
    """Route the binding `nvml` to a fresh fake driver for `scenario` (replacing any earlier one)."""
    uninstall(nvml)
    driver = FakeDriver(nvml, scenario)
    saved = _Installed(driver, nvml._LoadNvmlLibrary, nvml.nvmlLib, nvml._nvmlLib_refcount, source)

    def load_library() -> None:
        # What _LoadNvmlLibrary does after CDLL("libnvidia-ml.so.1") succeeds or fails.
        if scenario.failure == "library_missing":
            nvml._nvmlCheckReturn(nvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        with nvml.libLoadLock:
            nvml.nvmlLib = driver.library

    with nvml.libLoadLock:
        nvml.nvmlLib = None
        nvml._nvmlGetFunctionPointer_cache.clear()
        nvml._nvmlLib_refcount = 0
    nvml._LoadNvmlLibrary = load_library
    setattr(nvml, _ATTRIBUTE, saved)
    return driver


def installed(nvml: Any) -> FakeDriver | None:
    saved: _Installed | None = getattr(nvml, _ATTRIBUTE, None)
    return saved.driver if saved else None


def installed_from(nvml: Any) -> object:
    """What `source` the current fake was installed with (e.g. the scenario file), or None."""
    saved: _Installed | None = getattr(nvml, _ATTRIBUTE, None)
    return saved.source if saved else None


def uninstall(nvml: Any) -> None:
    """Put the binding back as it was before `install`."""
    saved: _Installed | None = getattr(nvml, _ATTRIBUTE, None)
    if saved is None:
        return
    with nvml.libLoadLock:
        nvml.nvmlLib = saved.library
        nvml._nvmlGetFunctionPointer_cache.clear()
        nvml._nvmlLib_refcount = saved.refcount
    nvml._LoadNvmlLibrary = saved.load_library
    delattr(nvml, _ATTRIBUTE)


def scenario_gpus(count: int, **overrides: Any) -> list[dict[str, Any]]:
    """`count` GPU entries for a scenario, each with `overrides` (a helper for tests and demos)."""
    return [dict(overrides) for _ in range(count)]


def write_scenario(path: Path, data: dict[str, Any] | Sequence[dict[str, Any]]) -> Path:
    """Validate and write a scenario JSON file (a list is taken as the GPUs)."""
    payload = {"gpus": list(data)} if isinstance(data, Sequence) else data
    Scenario.from_dict(payload)
    Path(path).write_text(json.dumps(payload, indent=2))
    return Path(path)
