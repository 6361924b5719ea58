"""The GPU boundary: the only module that imports pynvml (from the nvidia-ml-py distribution)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one moment."""

    index: int
    name: str
    memory_total_bytes: int
    memory_used_bytes: int


class Gpus:
    """An NVML session, initialised once."""

    def __init__(self, nvml: Any | None, status: str, message: str | None):
        self.nvml = nvml
        self.status = status
        self.message = message

    @classmethod
    def open(cls) -> Gpus:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as error:
            return cls(None, "no_driver", f"no GPU on this machine (NVML: {error})")
        if pynvml.nvmlDeviceGetCount() == 0:
            return cls(pynvml, "no_device", "no GPU on this machine")
        return cls(pynvml, "ok", None)

    def sample(self) -> list[GpuSample]:
        if self.nvml is None:
            return []
        out = []
        for index in range(self.nvml.nvmlDeviceGetCount()):
            handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
            memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            out.append(GpuSample(index, str(self.nvml.nvmlDeviceGetName(handle)), memory.total, memory.used))
        return out

    def close(self) -> None:
        if self.nvml is not None:
            self.nvml.nvmlShutdown()
            self.nvml = None
