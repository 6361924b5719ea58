"""Scheduling decisions as a pure function of (queue, running jobs, resources, settings, time)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from workbench.jobmodel.states import SETTLED
from workbench.jobmodel.states import JobState as S
from workbench.units import format_size

NO_GPU = "no GPU on this machine"


@dataclass(frozen=True)
class Want:
    """A queued job as the scheduler sees it."""

    id: int
    priority: int = 0
    group: str = "default"
    gpus: float = 0.0
    gpu_mem: int | None = None
    cpus: float = 0.0
    mem: int | None = None
    deps: tuple[tuple[int, str], ...] = ()
    fail_unrunnable: bool = False


@dataclass(frozen=True)
class Holding:
    """A running (or paused-while-running) job and what it was granted."""

    id: int
    group: str = "default"
    gpu_indices: tuple[int, ...] = ()
    gpus: float = 0.0
    gpu_mem: int | None = None
    cpus: float = 0.0
    mem: int | None = None


@dataclass(frozen=True)
class GpuSlot:
    """One GPU: its index (PCI bus order), memory, and memory used by processes not ours."""

    index: int
    memory_total_bytes: int
    memory_used_other_bytes: int = 0
    healthy: bool = True


@dataclass(frozen=True)
class Resources:
    gpus: tuple[GpuSlot, ...] = ()
    cpus: int = 1
    mem_bytes: int = 0


@dataclass(frozen=True)
class Settings:
    drain: bool = False
    group_limits: Mapping[str, int] = field(default_factory=dict)
    default_parallel: int = 0  # for groups without a limit; 0 = only resources limit


@dataclass(frozen=True)
class Start:
    job_id: int
    gpu_indices: tuple[int, ...]


@dataclass(frozen=True)
class Wait:
    job_id: int
    reason: str


@dataclass(frozen=True)
class Block:
    """A dependency can never be satisfied."""

    job_id: int
    reason: str


@dataclass(frozen=True)
class Fail:
    """The job can never run on this machine and its submitter asked to fail rather than wait."""

    job_id: int
    reason: str


Decision = Start | Wait | Block | Fail


def _dependency_verdict(want: Want, dep_states: Mapping[int, str]) -> tuple[str, str | None]:
    """('ready' | 'wait' | 'block', reason)."""
    waiting: list[int] = []
    for dep_id, cond in want.deps:
        state = dep_states.get(dep_id)
        if state is None:
            return "block", f"dependency {dep_id} was removed"
        if cond == "ok":
            if state == S.SUCCEEDED:
                continue
            if state in (S.FAILED, S.CANCELLED, S.BLOCKED):
                return "block", f"dependency {dep_id} {state}"
        elif cond == "any":
            if state in SETTLED:
                continue
        elif cond == "fail":
            if state == S.FAILED:
                continue
            if state in (S.SUCCEEDED, S.CANCELLED, S.BLOCKED):
                return "block", f"dependency {dep_id} {state}; this job runs only after a failure"
        waiting.append(dep_id)
    if waiting:
        listed = ", ".join(str(d) for d in waiting)
        return (
            "wait",
            f"waiting for {'dependency' if len(waiting) == 1 else 'dependencies'} {listed}",
        )
    return "ready", None


def _never_fits(want: Want, res: Resources) -> str | None:
    """Why this job can never run here, whatever else finishes; None if it could."""
    healthy = [g for g in res.gpus if g.healthy]
    if want.gpus > 0 and not res.gpus:
        return NO_GPU
    if want.gpus > 0 and not healthy:
        return "no working GPU (all GPUs report errors)"
    if want.gpus > len(healthy):
        return f"needs {want.gpus:g} GPUs, this machine has {len(healthy)}"
    if (
        want.gpu_mem
        and want.gpus > 0
        and not any(g.memory_total_bytes >= want.gpu_mem for g in healthy)
    ):
        return f"needs {format_size(want.gpu_mem)} of GPU memory, the largest GPU has {format_size(max(g.memory_total_bytes for g in healthy))}"
    if want.cpus > res.cpus:
        return f"needs {want.cpus:g} CPUs, this machine has {res.cpus}"
    if want.mem and res.mem_bytes and want.mem > res.mem_bytes:
        return f"needs {format_size(want.mem)} of memory, this machine has {format_size(res.mem_bytes)}"
    return None


class _Ledger:
    """What is in use while one scheduling pass hands things out."""

    def __init__(self, running: Sequence[Holding], res: Resources):
        self.res = res
        self.share = {g.index: 0.0 for g in res.gpus}
        self.reserved = {g.index: 0 for g in res.gpus}
        self.cpus = 0.0
        self.mem = 0
        self.groups: dict[str, int] = {}
        for held in running:
            self.take(held.group, held.gpu_indices, held.gpus, held.gpu_mem, held.cpus, held.mem)

    def take(
        self,
        group: str,
        indices: Sequence[int],
        gpus: float,
        gpu_mem: int | None,
        cpus: float,
        mem: int | None,
    ) -> None:
        per_gpu = gpus if gpus < 1 else 1.0
        for index in indices:
            if index in self.share:
                self.share[index] += per_gpu
                self.reserved[index] += gpu_mem or 0
        self.cpus += cpus
        self.mem += mem or 0
        self.groups[group] = self.groups.get(group, 0) + 1

    def free_gpu_mem_bytes(self, slot: GpuSlot) -> int:
        return slot.memory_total_bytes - slot.memory_used_other_bytes - self.reserved[slot.index]

    def pick_gpus(self, want: Want) -> tuple[int, ...] | None:
        """Whole GPUs for gpus >= 1; one shared GPU for a fraction, packed while memory fits."""
        healthy = [g for g in self.res.gpus if g.healthy]
        mem_ok = [
            g for g in healthy if not want.gpu_mem or self.free_gpu_mem_bytes(g) >= want.gpu_mem
        ]
        if want.gpus >= 1:
            count = math.ceil(want.gpus)
            free = [g.index for g in mem_ok if self.share[g.index] == 0]
            return tuple(free[:count]) if len(free) >= count else None
        # A fraction: the fullest GPU it still fits on, so whole GPUs stay free for others.
        fits = [g for g in mem_ok if self.share[g.index] + want.gpus <= 1.0 + 1e-9]
        if not fits:
            return None
        best = max(fits, key=lambda g: (self.share[g.index], -g.index))
        return (best.index,)

    def wait_reason(self, want: Want) -> str:
        healthy = [g for g in self.res.gpus if g.healthy]
        if want.gpus > 0:
            free = sum(1 for g in healthy if self.share[g.index] == 0)
            if want.gpu_mem:
                best = max((self.free_gpu_mem_bytes(g) for g in healthy), default=0)
                return (
                    f"waiting for {want.gpus:g} GPU with {format_size(want.gpu_mem)} free"
                    f" (most free now: {format_size(max(best, 0))})"
                )
            return f"waiting for {want.gpus:g} GPU ({free} of {len(healthy)} free)"
        return "waiting"


def plan(
    queued: Sequence[Want],
    running: Sequence[Holding],
    dep_states: Mapping[int, str],
    res: Resources,
    settings: Settings,
) -> list[Decision]:
    """Decide, for every queued job, whether it starts now, waits, is blocked, or fails.

    Jobs are considered by priority (higher first), then by id (older first). A job that
    does not fit does not stop a later one that does (backfill).
    """
    ledger = _Ledger(running, res)
    decisions: list[Decision] = []
    for want in sorted(queued, key=lambda w: (-w.priority, w.id)):
        verdict, reason = _dependency_verdict(want, dep_states)
        if verdict == "block":
            decisions.append(Block(want.id, reason or "a dependency can never be satisfied"))
            continue
        never = _never_fits(want, res)
        if never is not None:
            decisions.append(Fail(want.id, never) if want.fail_unrunnable else Wait(want.id, never))
            continue
        if verdict == "wait":
            decisions.append(Wait(want.id, reason or "waiting for dependencies"))
            continue
        if settings.drain:
            decisions.append(Wait(want.id, "drain mode: nothing new starts"))
            continue
        limit = settings.group_limits.get(want.group, settings.default_parallel)
        if limit and ledger.groups.get(want.group, 0) >= limit:
            decisions.append(
                Wait(want.id, f"group '{want.group}' is at its limit of {limit} running")
            )
            continue
        if want.cpus and ledger.cpus + want.cpus > res.cpus + 1e-9:
            free = max(res.cpus - ledger.cpus, 0)
            decisions.append(Wait(want.id, f"waiting for {want.cpus:g} CPUs ({free:g} free)"))
            continue
        if want.mem and res.mem_bytes and ledger.mem + want.mem > res.mem_bytes:
            free_mem = max(res.mem_bytes - ledger.mem, 0)
            decisions.append(
                Wait(
                    want.id,
                    f"waiting for {format_size(want.mem)} of memory ({format_size(free_mem)} free)",
                )
            )
            continue
        indices: tuple[int, ...] = ()
        if want.gpus > 0:
            picked = ledger.pick_gpus(want)
            if picked is None:
                decisions.append(Wait(want.id, ledger.wait_reason(want)))
                continue
            indices = picked
        ledger.take(want.group, indices, want.gpus, want.gpu_mem, want.cpus, want.mem)
        decisions.append(Start(want.id, indices))
    return decisions
