"""What a job asks of the machine: the one value type for GPUs, GPU memory, CPUs and memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Resources:
    """A job's resource request.

    gpus: GPU count (a fraction below 1 shares a GPU; above 1 a whole number).
    gpu_mem: bytes of GPU memory per granted GPU, or None for "no stated need".
    cpus: CPU cores (fractions allowed; 0 = no reservation).
    mem: bytes of host memory, or None.
    Validation of user input happens where it is parsed (`workbench.units`, `queue.requests`);
    this type only carries checked values.
    """

    gpus: float = 0.0
    gpu_mem: int | None = None
    cpus: float = 0.0
    mem: int | None = None

    def to_json(self) -> dict[str, Any]:
        """`{"gpus": float, "gpu_mem": bytes|None, "cpus": float, "mem": bytes|None}`."""
        return {"gpus": self.gpus, "gpu_mem": self.gpu_mem, "cpus": self.cpus, "mem": self.mem}
