"""What a job asks of the machine: the one value type for GPUs, GPU memory, CPUs and memory."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from workbench.units import parse_number

# A MIG profile as NVML names a GPU instance: `1g.10gb`, `3g.40gb`, `1g.10gb+me`, or with a
# compute-instance part, `1c.3g.40gb` (NVIDIA MIG user guide, "Supported MIG Profiles").
MIG_PROFILE = re.compile(r"(?:[1-7]c\.)?[1-7]g\.[0-9]+gb(?:\+me)?")

# The words a running job's reason starts with when it uses more GPU memory than it reserved
# (written by the scheduler, picked out by listings that otherwise hide a running job's reason).
OVER_RESERVATION = "over its reservation"
OVER_MEM = "over its --mem"  # an ended job's reason, where memory.max could not enforce it
OOM_AT_MEM = "out of memory"  # an ended job's reason: the OOM killer stopped it at memory.max


def parse_gpus(value: str | int | float) -> tuple[float, str | None]:
    """A `gpus` value -> (GPU count, MIG profile): `2` -> (2.0, None), `0.5` -> (0.5, None),
    `"1g.10gb"` -> (0.0, "1g.10gb"). Raises ValueError (saying what is accepted) for a
    negative, non-finite or non-whole count above 1, or a string that is neither."""
    if isinstance(value, str) and not re.fullmatch(r"\s*[0-9.eE+-]+\s*", value):
        profile = value.strip().lower()
        if MIG_PROFILE.fullmatch(profile):
            return 0.0, profile
        raise ValueError(
            f"expected a number of GPUs or a MIG profile such as 1g.10gb, got {value!r}"
        )
    count = parse_number(value, minimum=0.0)
    if count > 1 and count != int(count):
        raise ValueError(f"above 1 it must be a whole number, got {count:g}")
    return count, None


@dataclass(frozen=True)
class Resources:
    """A job's resource request.

    gpus: GPU count (a fraction below 1 shares a GPU; above 1 a whole number).
    gpu_mem: bytes of GPU memory per granted GPU, or None for "no stated need".
    cpus: CPU cores (fractions allowed; 0 = no reservation).
    mem: bytes of host memory, or None.
    mig_profile: one MIG instance of this profile (e.g. "1g.10gb") instead of GPUs, or None.
    Validation of user input happens where it is parsed (`workbench.units`, `queue.requests`);
    this type only carries checked values.
    """

    gpus: float = 0.0
    gpu_mem: int | None = None
    cpus: float = 0.0
    mem: int | None = None
    mig_profile: str | None = None

    def to_json(self) -> dict[str, Any]:
        """`{"gpus": float, "gpu_mem": bytes|None, "cpus": float, "mem": bytes|None,
        "mig_profile": str|None}`."""
        return {
            "gpus": self.gpus,
            "gpu_mem": self.gpu_mem,
            "cpus": self.cpus,
            "mem": self.mem,
            "mig_profile": self.mig_profile,
        }
