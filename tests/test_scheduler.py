"""The scheduler's decisions as a pure function, table-driven, without processes."""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import wait_for, wait_state, workbench

from workbench.config import load_config
from workbench.daemon.client import Client
from workbench.daemon.stopping import NOT_CHECKPOINTABLE
from workbench.paths import Home
from workbench.queue.requests import build_request
from workbench.queue.scheduler import (
    NO_GPU,
    Block,
    Exceeds,
    Fail,
    GpuSlot,
    Holding,
    MigSlot,
    OtherProcess,
    Preempt,
    Resources,
    Settings,
    Start,
    Wait,
    Want,
    gpu_units,
    plan,
)
from workbench.queue.spec import SpecError
from workbench.telemetry import fakenvml

GiB = 1024**3
TWO_GPUS = (GpuSlot(0, 80 * GiB), GpuSlot(1, 80 * GiB))
BOX = Resources(gpus=TWO_GPUS, cpus=8, mem_bytes=64 * GiB)
NO_GPU_BOX = Resources(gpus=(), cpus=2, mem_bytes=24 * GiB)


def decide(queued, running=(), deps=None, res=BOX, settings=Settings()):  # type: ignore[no-untyped-def]
    return {d.job_id: d for d in plan(list(queued), list(running), deps or {}, res, settings)}


CASES = [
    # (description, queued, running, dep_states, resources, settings, expected {id: decision})
    (
        "cpu job starts with an empty GPU list",
        [Want(1)],
        [],
        {},
        BOX,
        Settings(),
        {1: Start(1, ())},
    ),
    (
        "whole GPU goes to the lowest free index",
        [Want(1, gpus=1)],
        [],
        {},
        BOX,
        Settings(),
        {1: Start(1, (0,))},
    ),
    (
        "second GPU job gets the other GPU",
        [Want(2, gpus=1)],
        [Holding(1, gpu_indices=(0,), gpus=1)],
        {},
        BOX,
        Settings(),
        {2: Start(2, (1,))},
    ),
    (
        "third GPU job waits with a reason",
        [Want(3, gpus=1)],
        [Holding(1, gpu_indices=(0,), gpus=1), Holding(2, gpu_indices=(1,), gpus=1)],
        {},
        BOX,
        Settings(),
        {3: Wait(3, "waiting for 1 GPU (0 of 2 free)")},
    ),
    ("two GPUs for a 2-GPU job", [Want(1, gpus=2)], [], {}, BOX, Settings(), {1: Start(1, (0, 1))}),
    (
        "more GPUs than the machine has waits forever",
        [Want(1, gpus=4)],
        [],
        {},
        BOX,
        Settings(),
        {1: Wait(1, "needs 4 GPUs, this machine has 2")},
    ),
    (
        "no GPU: a GPU job stays queued",
        [Want(1, gpus=1)],
        [],
        {},
        NO_GPU_BOX,
        Settings(),
        {1: Wait(1, NO_GPU)},
    ),
    (
        "no GPU: a batch job fails instead",
        [Want(1, gpus=1, fail_unrunnable=True)],
        [],
        {},
        NO_GPU_BOX,
        Settings(),
        {1: Fail(1, NO_GPU)},
    ),
    (
        "fractions pack onto one GPU",
        [Want(2, gpus=0.5)],
        [Holding(1, gpu_indices=(1,), gpus=0.5)],
        {},
        BOX,
        Settings(),
        {2: Start(2, (1,), gpu_mem_cap=40 * GiB)},
    ),
    (
        "a fraction does not take a GPU held whole",
        [Want(2, gpus=0.5)],
        [Holding(1, gpu_indices=(0,), gpus=1)],
        {},
        BOX,
        Settings(),
        {2: Start(2, (1,), gpu_mem_cap=40 * GiB)},
    ),
    (
        "packing stops when GPU memory would not fit",
        [Want(2, gpus=0.25, gpu_mem=50 * GiB)],
        [Holding(1, gpu_indices=(0,), gpus=0.25, gpu_mem=40 * GiB)],
        {},
        Resources(gpus=(GpuSlot(0, 80 * GiB),), cpus=8),
        Settings(),
        {2: Wait(2, "needs 50.0 GiB on one GPU; the largest free is 40.0 GiB on GPU 0")},
    ),
    (
        "memory used by other processes counts",
        [Want(1, gpus=1, gpu_mem=40 * GiB)],
        [],
        {},
        Resources(gpus=(GpuSlot(0, 80 * GiB, 60 * GiB), GpuSlot(1, 80 * GiB, 10 * GiB)), cpus=8),
        Settings(),
        {1: Start(1, (1,), gpu_mem_cap=40 * GiB)},
    ),
    (
        "a lost GPU is never granted",
        [Want(1, gpus=1)],
        [],
        {},
        Resources(gpus=(GpuSlot(0, 80 * GiB, healthy=False), GpuSlot(1, 80 * GiB)), cpus=8),
        Settings(),
        {1: Start(1, (1,))},
    ),
    (
        "cpus are counted",
        [Want(2, cpus=4)],
        [Holding(1, cpus=6)],
        {},
        BOX,
        Settings(),
        {2: Wait(2, "waiting for 4 CPUs (2 free)")},
    ),
    (
        "higher priority starts first",
        [Want(1, gpus=2), Want(2, gpus=2, priority=5)],
        [],
        {},
        BOX,
        Settings(),
        {2: Start(2, (0, 1)), 1: Wait(1, "waiting for 2 GPUs (0 of 2 free)")},
    ),
    (
        "backfill: a small job passes a big one that does not fit",
        [Want(1, gpus=2), Want(2, cpus=1)],
        [Holding(9, gpu_indices=(0,), gpus=1)],
        {},
        BOX,
        Settings(),
        {1: Wait(1, "waiting for 2 GPUs (1 of 2 free)"), 2: Start(2, ())},
    ),
    (
        "group limit",
        [Want(2, group="sweep"), Want(3, group="other")],
        [Holding(1, group="sweep")],
        {},
        BOX,
        Settings(group_limits={"sweep": 1}),
        {2: Wait(2, "group 'sweep' is at its limit of 1 running"), 3: Start(3, ())},
    ),
    (
        "drain mode",
        [Want(1)],
        [],
        {},
        BOX,
        Settings(drain=True),
        {1: Wait(1, "drain mode: nothing new starts")},
    ),
    (
        "after ok: waits",
        [Want(2, deps=((1, "ok"),))],
        [],
        {1: "running"},
        BOX,
        Settings(),
        {2: Wait(2, "waiting for dependency 1")},
    ),
    (
        "after ok: starts",
        [Want(2, deps=((1, "ok"),))],
        [],
        {1: "succeeded"},
        BOX,
        Settings(),
        {2: Start(2, ())},
    ),
    (
        "after ok: blocked by failure",
        [Want(2, deps=((1, "ok"),))],
        [],
        {1: "failed"},
        BOX,
        Settings(),
        {2: Block(2, "dependency 1 failed")},
    ),
    (
        "after ok: blocked by a blocked dep",
        [Want(3, deps=((2, "ok"),))],
        [],
        {2: "blocked"},
        BOX,
        Settings(),
        {3: Block(3, "dependency 2 blocked")},
    ),
    (
        "after any: runs after a failure",
        [Want(2, deps=((1, "any"),))],
        [],
        {1: "failed"},
        BOX,
        Settings(),
        {2: Start(2, ())},
    ),
    (
        "after any: runs after a cancel",
        [Want(2, deps=((1, "any"),))],
        [],
        {1: "cancelled"},
        BOX,
        Settings(),
        {2: Start(2, ())},
    ),
    (
        "after fail: runs after a failure",
        [Want(2, deps=((1, "fail"),))],
        [],
        {1: "failed"},
        BOX,
        Settings(),
        {2: Start(2, ())},
    ),
    (
        "after fail: blocked by success",
        [Want(2, deps=((1, "fail"),))],
        [],
        {1: "succeeded"},
        BOX,
        Settings(),
        {2: Block(2, "dependency 1 succeeded; this job runs only after a failure")},
    ),
    (
        "removed dependency blocks",
        [Want(2, deps=((1, "ok"),))],
        [],
        {},
        BOX,
        Settings(),
        {2: Block(2, "dependency 1 was removed")},
    ),
    (
        "several deps listed while waiting",
        [Want(3, deps=((1, "ok"), (2, "any")))],
        [],
        {1: "queued", 2: "running"},
        BOX,
        Settings(),
        {3: Wait(3, "waiting for dependencies 1, 2")},
    ),
    (
        "a blocked job is blocked even in drain mode",
        [Want(2, deps=((1, "ok"),))],
        [],
        {1: "failed"},
        BOX,
        Settings(drain=True),
        {2: Block(2, "dependency 1 failed")},
    ),
    # A GPU that reports an error may answer again: a job that needs it waits, saying so, and
    # is not failed as one that can never run here (nor told the machine has fewer GPUs).
    (
        "a job that needs a GPU in error waits, naming it",
        [Want(1, gpus=2, fail_unrunnable=True)],
        [],
        {},
        Resources(gpus=(GpuSlot(0, 80 * GiB), GpuSlot(1, 80 * GiB, healthy=False)), cpus=8),
        Settings(),
        {1: Wait(1, "waiting for 2 GPUs (1 of 1 free; GPU 1 reports an error)")},
    ),
    (
        "every GPU in error: a wait, not a failure",
        [Want(1, gpus=0.5, gpu_mem=8 * GiB, fail_unrunnable=True)],
        [],
        {},
        Resources(gpus=(GpuSlot(0, 80 * GiB, healthy=False),), cpus=8),
        Settings(),
        {1: Wait(1, "waiting for 0.5 GPUs (0 of 0 free; GPU 0 reports an error)")},
    ),
    (
        "a MIG instance on a GPU in error",
        [Want(1, mig_profile="1g.10gb", fail_unrunnable=True)],
        [],
        {},
        Resources(
            gpus=(
                GpuSlot(0, 80 * GiB, healthy=False, mig=(MigSlot("MIG-a", "1g.10gb", 10 * GiB),)),
                GpuSlot(1, 80 * GiB),
            ),
            cpus=8,
        ),
        Settings(),
        {1: Wait(1, "needs a MIG 1g.10gb instance; GPU 0 reports an error")},
    ),
    (
        "memory reasons name a GPU in error too",
        [Want(1, gpus=0.5, gpu_mem=90 * GiB)],
        [],
        {},
        Resources(
            gpus=(
                GpuSlot(0, 80 * GiB, healthy=False),
                GpuSlot(1, 80 * GiB),
                GpuSlot(2, 100 * GiB, 20 * GiB),
            ),
            cpus=8,
        ),
        Settings(),
        {
            1: Wait(
                1,
                "needs 90.0 GiB on one GPU; the largest free is 80.0 GiB on GPU 1 (GPU 2:"
                " 20.0 GiB in use outside the queue); GPU 0 reports an error",
            )
        },
    ),
]


@pytest.mark.parametrize(
    ("queued", "running", "deps", "res", "settings", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_plan(queued, running, deps, res, settings, expected):  # type: ignore[no-untyped-def]
    assert decide(queued, running, deps, res, settings) == expected


def test_fraction_goes_to_the_fullest_gpu_it_fits_keeping_whole_gpus_free() -> None:
    decisions = decide([Want(3, gpus=0.25)], [Holding(1, gpu_indices=(1,), gpus=0.5)])
    assert decisions[3] == Start(3, (1,), gpu_mem_cap=20 * GiB)


def test_one_pass_hands_each_gpu_out_once() -> None:
    decisions = decide([Want(i, gpus=1) for i in range(1, 5)])
    started = [d for d in decisions.values() if isinstance(d, Start)]
    assert sorted(d.gpu_indices for d in started) == [(0,), (1,)]
    assert all(isinstance(decisions[i], Wait) for i in (3, 4))


# ---- GPU pooling: inventories of 1, 2 and 8 GPUs, one with MIG, memory held outside the queue

ONE_GPU = Resources(gpus=(GpuSlot(0, 24 * GiB),), cpus=8)
# Eight GPUs: NUMA node 0 holds GPUs 0-3, node 1 GPUs 4-7; pairs share a PCIe switch.
EIGHT = Resources(
    gpus=tuple(GpuSlot(i, 80 * GiB, numa_node=i // 4, switch=i // 2) for i in range(8)),
    cpus=64,
)
EIGHT_FLAT = Resources(gpus=tuple(GpuSlot(i, 80 * GiB) for i in range(8)), cpus=64)
MIG_BOX = Resources(
    gpus=(
        GpuSlot(
            0,
            80 * GiB,
            mig=(
                MigSlot("MIG-a", "1g.10gb", 10 * GiB),
                MigSlot("MIG-b", "1g.10gb", 10 * GiB),
                MigSlot("MIG-c", "3g.40gb", 40 * GiB),
            ),
        ),
        GpuSlot(1, 80 * GiB),
    ),
    cpus=8,
)
OTHERS_BOX = Resources(
    gpus=(
        GpuSlot(0, 80 * GiB),
        GpuSlot(1, 80 * GiB, 30 * GiB, others=(OtherProcess(812, 30 * GiB),)),
    ),
    cpus=8,
)
QUOTAS = Settings(quotas={"vision": 1, "sweep": 1})
EIGHT_ONE_MIG = Resources(
    gpus=(MIG_BOX.gpus[0], *(GpuSlot(i, 80 * GiB) for i in range(1, 8))),
    cpus=64,
)


@dataclass(frozen=True)
class Case:
    """One row: the queue, the running jobs, the machine, the policy, the clock, and the
    decisions expected (by job id; Exceeds and Preempt decisions by the running job's id)."""

    name: str
    queued: list[Want]
    running: list[Holding]
    res: Resources
    expected: dict[int, object]
    settings: Settings = field(default_factory=Settings)
    now: float = 0.0


def decide_at(case: Case) -> dict[int, object]:
    out: dict[int, object] = {}
    for d in plan(case.queued, case.running, {}, case.res, case.settings, case.now):
        out[d.job_id] = d
    return out


MEMORY = [
    Case(
        "a starting job's declared memory is held through its grace though NVML shows less",
        [Want(2, gpus=0.5, gpu_mem=48 * GiB)],
        [
            Holding(
                1, gpu_indices=(0,), gpus=0.5, gpu_mem=40 * GiB, started_at=100, gpu_mem_seen=GiB
            )
        ],
        Resources((GpuSlot(0, 80 * GiB),), 8),
        {2: Wait(2, "needs 48.0 GiB on one GPU; the largest free is 40.0 GiB on GPU 0")},
        now=110,
    ),
    Case(
        "memory a starting job allocated before NVML attributes it is not counted twice",
        [Want(2, gpus=0.5, gpu_mem=40 * GiB)],
        [Holding(1, gpu_indices=(0,), gpus=0.5, gpu_mem=40 * GiB, started_at=100)],
        Resources((GpuSlot(0, 80 * GiB, 30 * GiB),), 8),
        {2: Start(2, (0,), gpu_mem_cap=40 * GiB)},
        now=110,
    ),
    Case(
        "after the grace, unattributed memory is someone else's",
        [Want(2, gpus=0.5, gpu_mem=40 * GiB)],
        [Holding(1, gpu_indices=(0,), gpus=0.5, gpu_mem=40 * GiB, started_at=100)],
        Resources((GpuSlot(0, 80 * GiB, 30 * GiB),), 8),
        {
            2: Wait(
                2,
                "needs 40.0 GiB on one GPU; the largest free is 10.0 GiB on GPU 0"
                " (GPU 0: 30.0 GiB in use outside the queue)",
            )
        },
        now=1000,
    ),
    Case(
        "after its grace a job holds what NVML shows when that is more than it declared",
        [Want(2, gpus=0.25, gpu_mem=40 * GiB)],
        [Holding(1, gpu_indices=(0,), gpus=0.5, gpu_mem=20 * GiB, gpu_mem_seen=50 * GiB)],
        Resources((GpuSlot(0, 80 * GiB),), 8),
        {
            1: Exceeds(1, "uses 50.0 GiB of GPU memory, over its reservation of 20.0 GiB", False),
            2: Wait(2, "needs 40.0 GiB on one GPU; the largest free is 30.0 GiB on GPU 0"),
        },
        now=1000,
    ),
    Case(
        "after its grace a job that uses less than it declared still holds what it declared",
        [Want(2, gpus=0.5, gpu_mem=40 * GiB)],
        [Holding(1, gpu_indices=(0,), gpus=0.5, gpu_mem=40 * GiB, gpu_mem_seen=10 * GiB)],
        Resources((GpuSlot(0, 80 * GiB),), 8),
        {2: Start(2, (0,), gpu_mem_cap=40 * GiB)},
        now=1000,
    ),
    Case(
        "memory held outside the queue is subtracted and named in the reason",
        [Want(3, gpus=0.5, gpu_mem=40 * GiB)],
        [
            Holding(1, gpu_indices=(0,), gpus=0.5, gpu_mem=58 * GiB),
            Holding(2, gpu_indices=(1,), gpus=0.25, gpu_mem=30 * GiB),
        ],
        OTHERS_BOX,
        {
            3: Wait(
                3,
                "needs 40.0 GiB on one GPU; the largest free is 22.0 GiB on GPU 0"
                " (GPU 1: 30.0 GiB held by pid 812, not a queue job)",
            )
        },
    ),
    Case(
        "a job over its reservation is stopped when strict",
        [],
        [Holding(1, gpu_indices=(0,), gpus=0.5, gpu_mem=8 * GiB, gpu_mem_seen=9 * GiB)],
        ONE_GPU,
        {1: Exceeds(1, "uses 9.0 GiB of GPU memory, over its reservation of 8.0 GiB", True)},
        Settings(strict=True),
    ),
    Case(
        "an undeclared fraction is capped at its share of the card",
        [Want(1, gpus=0.25)],
        [],
        ONE_GPU,
        {1: Start(1, (0,), gpu_mem_cap=6 * GiB)},
    ),
    Case(
        "a fraction waits while the one GPU is held whole",
        [Want(2, gpus=0.5)],
        [Holding(1, gpu_indices=(0,), gpus=1)],
        ONE_GPU,
        {2: Wait(2, "needs 0.5 of a GPU; the most free is 0 of GPU 0")},
    ),
    Case(
        "a whole GPU waits while a fraction runs on the one GPU",
        [Want(2, gpus=1)],
        [Holding(1, gpu_indices=(0,), gpus=0.5)],
        ONE_GPU,
        {2: Wait(2, "waiting for 1 GPU (0 of 1 free)")},
    ),
]

QUOTA = [
    Case(
        "a group borrows an idle GPU beyond its quota",
        [Want(2, group="sweep", gpus=1)],
        [Holding(1, group="sweep", gpu_indices=(0,), gpus=1)],
        BOX,
        {2: Start(2, (1,))},
        QUOTAS,
    ),
    Case(
        "a group at its quota with nothing idle waits, saying so",
        [Want(3, group="vision", gpus=1)],
        [
            Holding(1, group="vision", gpu_indices=(0,), gpus=1),
            Holding(2, group="sweep", gpu_indices=(1,), gpus=1),
        ],
        BOX,
        {3: Wait(3, "group vision is at its quota of 1 and nothing is idle to borrow")},
        QUOTAS,
    ),
    Case(
        "a group under its quota reclaims the youngest over-quota job",
        [Want(3, group="vision", gpus=1)],
        [
            Holding(1, group="sweep", gpu_indices=(0,), gpus=1, started_at=10),
            Holding(2, group="sweep", gpu_indices=(1,), gpus=1, started_at=20),
        ],
        BOX,
        {
            2: Preempt(
                2,
                "preempted for job 3: group sweep is over its quota of 1 and group vision is"
                " under its own",
                3,
            ),
            3: Wait(
                3,
                "within its group's quota of 1; reclaiming GPU 1 by preempting job 2 (over-quota)",
            ),
        },
        QUOTAS,
        now=30,
    ),
    Case(
        "a job that opted out of preemption is never chosen",
        [Want(3, group="vision", gpus=1)],
        [
            Holding(1, group="sweep", gpu_indices=(0,), gpus=1, started_at=10),
            Holding(2, group="sweep", gpu_indices=(1,), gpus=1, started_at=20, preemptible=False),
        ],
        BOX,
        {
            1: Preempt(
                1,
                "preempted for job 3: group sweep is over its quota of 1 and group vision is"
                " under its own",
                3,
            ),
            3: Wait(
                3,
                "within its group's quota of 1; reclaiming GPU 0 by preempting job 1 (over-quota)",
            ),
        },
        QUOTAS,
        now=30,
    ),
    Case(
        "nothing preemptible: the job waits for GPUs like any other",
        [Want(3, group="vision", gpus=1)],
        [
            Holding(1, group="sweep", gpu_indices=(0,), gpus=1, preemptible=False),
            Holding(2, group="sweep", gpu_indices=(1,), gpus=1, preemptible=False),
        ],
        BOX,
        {
            3: Wait(
                3,
                "waiting for 1 GPU (0 of 2 free); within its group's quota of 1, but nothing can"
                " be reclaimed: job 2 (group sweep) borrows beyond its group's quota and opted"
                " out of preemption",
            )
        },
        QUOTAS,
    ),
    Case(
        "command jobs that are not checkpointable are not preempted, and the reason says so",
        [Want(3, group="vision", gpus=1)],
        [
            Holding(
                1,
                group="sweep",
                gpu_indices=(0,),
                gpus=1,
                preemptible=False,
                kept_because=NOT_CHECKPOINTABLE,
            ),
            Holding(
                2,
                group="sweep",
                gpu_indices=(1,),
                gpus=1,
                preemptible=False,
                kept_because=NOT_CHECKPOINTABLE,
            ),
        ],
        BOX,
        {
            3: Wait(
                3,
                "waiting for 1 GPU (0 of 2 free); within its group's quota of 1, but nothing can"
                " be reclaimed: job 2 (group sweep) borrows beyond its group's quota and is not"
                " checkpointable, so it is not preempted",
            )
        },
        QUOTAS,
    ),
    Case(
        "several borrowers, none checkpointable: the reason names them all",
        [Want(4, group="vision", gpus=2)],
        [
            Holding(
                1,
                group="sweep",
                gpu_indices=(0,),
                gpus=1,
                preemptible=False,
                kept_because=NOT_CHECKPOINTABLE,
            ),
            Holding(
                2,
                group="sweep",
                gpu_indices=(1,),
                gpus=1,
                preemptible=False,
                kept_because=NOT_CHECKPOINTABLE,
            ),
            Holding(
                3,
                group="sweep",
                gpu_indices=(2,),
                gpus=1,
                preemptible=False,
                kept_because=NOT_CHECKPOINTABLE,
            ),
        ],
        Resources(gpus=tuple(GpuSlot(i, 80 * GiB) for i in range(3)), cpus=64, mem_bytes=0),
        {
            4: Wait(
                4,
                "waiting for 2 GPUs (0 of 3 free); within its group's quota of 2, but nothing"
                " can be reclaimed: jobs 2 (group sweep), 3 (group sweep) borrow beyond their"
                " groups' quotas and are not checkpointable, so they are not preempted",
            )
        },
        Settings(quotas={"vision": 2, "sweep": 1}),
    ),
    Case(
        "while a preempted job stops, nothing more is preempted and its GPU is kept",
        [Want(3, group="vision", gpus=1), Want(4, group="sweep", gpus=0.5, time_limit=1)],
        [
            Holding(1, group="sweep", gpu_indices=(0,), gpus=1, started_at=10),
            Holding(2, group="sweep", gpu_indices=(1,), gpus=1, started_at=20, stopping=True),
        ],
        BOX,
        {
            3: Wait(3, "within its group's quota; waiting for job 2 to stop and free GPU 1"),
            4: Wait(
                4,
                "group sweep is at its quota of 1 and nothing is idle to borrow; kept for jobs"
                " ahead of it: GPU 1 (job 3)",
            ),
        },
        QUOTAS,
        now=30,
    ),
    Case(
        "while a preempted job stops, a free GPU the reclaiming job needs is kept for it too",
        [Want(3, group="vision", gpus=2), Want(4, group="sweep", gpus=0.5, time_limit=1)],
        [Holding(2, group="sweep", gpu_indices=(1,), gpus=1, started_at=20, stopping=True)],
        BOX,
        {
            3: Wait(3, "within its group's quota; waiting for job 2 to stop and free GPU 1"),
            4: Wait(
                4,
                "needs 0.5 of a GPU; the most free is 1 of GPU 0; kept for jobs ahead of it:"
                " GPUs 0, 1 (job 3)",
            ),
        },
        Settings(quotas={"vision": 2}),
        now=30,
    ),
    Case(
        "a job whose group fills its quota during the pass waits behind jobs still within theirs",
        [
            Want(1, group="sweep", gpus=1),
            Want(2, group="sweep", gpus=1),
            Want(3, group="vision", gpus=1),
        ],
        [],
        BOX,
        {
            1: Start(1, (0,)),
            3: Start(3, (1,)),
            2: Wait(2, "group sweep is at its quota of 1 and nothing is idle to borrow"),
        },
        QUOTAS,
    ),
    Case(
        "a job within its quota goes before an older one that would borrow",
        [Want(1, group="sweep", gpus=1), Want(2, group="vision", gpus=1)],
        [Holding(9, group="sweep", gpu_indices=(0,), gpus=1)],
        BOX,
        {
            2: Start(2, (1,)),
            1: Wait(1, "group sweep is at its quota of 1 and nothing is idle to borrow"),
        },
        QUOTAS,
    ),
    Case(
        "on eight GPUs a group under its quota reclaims as many GPUs as it needs, youngest first",
        [Want(9, group="vision", gpus=2)],
        [Holding(i, group="sweep", gpu_indices=(i,), gpus=1, started_at=i) for i in range(8)],
        EIGHT_FLAT,
        {
            7: Preempt(
                7,
                "preempted for job 9: group sweep is over its quota of 2 and group vision is"
                " under its own",
                9,
            ),
            6: Preempt(
                6,
                "preempted for job 9: group sweep is over its quota of 2 and group vision is"
                " under its own",
                9,
            ),
            9: Wait(
                9,
                "within its group's quota of 6; reclaiming GPUs 6, 7 by preempting jobs 6, 7"
                " (over-quota)",
            ),
        },
        Settings(quotas={"vision": 6, "sweep": 2}),
        now=100,
    ),
    Case(
        "borrowed fractions spread over GPUs: the GPUs cheapest to free, within the spare",
        [Want(20, group="vision", gpus=4)],
        [
            Holding(1, group="vision", gpu_indices=(3,), gpus=1, started_at=10),
            *[
                Holding(i, group="sweep", gpu_indices=(g,), gpus=1, started_at=100)
                for i, g in ((2, 0), (3, 1), (4, 6))
            ],
            Holding(5, group="sweep", gpu_indices=(2,), gpus=0.25, started_at=50),
            *[
                Holding(i, group="sweep", gpu_indices=(5,), gpus=0.25, started_at=40)
                for i in (6, 7)
            ],
            *[
                Holding(i, group="sweep", gpu_indices=(4,), gpus=0.25, started_at=30)
                for i in (8, 9, 10)
            ],
        ],
        EIGHT_FLAT,
        {
            **{
                i: Preempt(
                    i,
                    "preempted for job 20: group sweep is over its quota of 3 and group vision is"
                    " under its own",
                    20,
                )
                for i in range(5, 11)
            },
            20: Wait(
                20,
                "within its group's quota of 5; reclaiming GPUs 2, 4, 5 by preempting jobs 5, 6,"
                " 7, 8, 9, 10 (over-quota)",
            ),
        },
        Settings(quotas={"vision": 5, "sweep": 3}),
        now=200,
    ),
    Case(
        "fractions count by share against a quota",
        [Want(3, group="vision", gpus=0.5)],
        [
            Holding(1, group="vision", gpu_indices=(0,), gpus=0.5),
            Holding(2, group="sweep", gpu_indices=(1,), gpus=1),
        ],
        BOX,
        {3: Start(3, (0,), gpu_mem_cap=40 * GiB)},
        QUOTAS,
    ),
]

# One GPU shared by quarters ending at t=100, 100 and 150.
QUARTERS_ENDING_AT_100_100_150 = [
    Holding(10, gpu_indices=(0,), gpus=0.25, time_limit=100),
    Holding(11, gpu_indices=(0,), gpus=0.25, time_limit=100),
    Holding(12, gpu_indices=(0,), gpus=0.25, started_at=50, time_limit=100),
]

BACKFILL = [
    # GPUs 0-1 end at t=100, 2-5 at t=500; 6-7 are free. The 4-GPU job 1 keeps 6, 7, 0, 1
    # and starts at t=100.
    Case(
        "a short job backfills onto a kept GPU when it ends before the large job starts",
        [Want(1, gpus=4), Want(2, gpus=1, time_limit=50)],
        [
            Holding(10 + i, gpu_indices=(i,), gpus=1, time_limit=100 if i < 2 else 500)
            for i in range(6)
        ],
        EIGHT_FLAT,
        {
            1: Wait(1, "waiting for 4 GPUs (2 of 8 free)"),
            2: Start(2, (6,)),
        },
    ),
    Case(
        "a job that would delay the large job's start waits",
        [Want(1, gpus=4), Want(2, gpus=1, time_limit=200), Want(3, gpus=0.5)],
        [
            Holding(10 + i, gpu_indices=(i,), gpus=1, time_limit=100 if i < 2 else 500)
            for i in range(6)
        ],
        EIGHT_FLAT,
        {
            1: Wait(1, "waiting for 4 GPUs (2 of 8 free)"),
            2: Wait(
                2,
                "waiting for 1 GPU (2 of 8 free); kept for jobs ahead of it: GPUs 0, 1, 6, 7 (job 1)",
            ),
            3: Wait(
                3,
                "needs 0.5 of a GPU; the most free is 1 of GPU 6; kept for jobs ahead of it:"
                " GPUs 0, 1, 6, 7 (job 1), GPU 2 (job 2)",
            ),
        },
    ),
    # A waiting 0.75 fits at t=100. Small fractions arriving all the time used to fill every
    # quarter freed, so it never did.
    Case(
        "a waiting fraction keeps the GPU it fits on soonest: a longer small one waits",
        [Want(1, gpus=0.75, time_limit=100), Want(2, gpus=0.25, time_limit=1000)],
        QUARTERS_ENDING_AT_100_100_150,
        Resources(gpus=(GpuSlot(0, 80 * GiB),), cpus=8),
        {
            1: Wait(1, "needs 0.75 of a GPU; the most free is 0.25 of GPU 0"),
            2: Wait(
                2,
                "needs 0.25 of a GPU; the most free is 0.25 of GPU 0; kept for jobs ahead of"
                " it: GPU 0 (job 1)",
            ),
        },
        now=60,
    ),
    Case(
        "a small fraction that ends before the kept GPU frees backfills",
        [Want(1, gpus=0.75, time_limit=100), Want(2, gpus=0.25, time_limit=30)],
        QUARTERS_ENDING_AT_100_100_150,
        Resources(gpus=(GpuSlot(0, 80 * GiB),), cpus=8),
        {
            1: Wait(1, "needs 0.75 of a GPU; the most free is 0.25 of GPU 0"),
            2: Start(2, (0,), gpu_mem_cap=20 * GiB),
        },
        now=60,
    ),
    # 0.5 ends at t=100, 0.25 runs on: the waiting half starts then and leaves a quarter free,
    # which a long quarter may take now (it delays nothing); a second one may not.
    Case(
        "a fraction may use the room a kept fraction leaves beside it, and no more",
        [
            Want(1, gpus=0.5),
            Want(2, gpus=0.25, time_limit=1000),
            Want(3, gpus=0.25, time_limit=1000),
        ],
        [
            Holding(10, gpu_indices=(0,), gpus=0.5, time_limit=100),
            Holding(11, gpu_indices=(0,), gpus=0.25, time_limit=1000),
        ],
        Resources(gpus=(GpuSlot(0, 80 * GiB), GpuSlot(1, 80 * GiB, 70 * GiB)), cpus=8),
        {
            1: Wait(
                1,
                "needs 0.5 of a GPU; the most free is 1 of GPU 1 (GPU 1: 70.0 GiB in use"
                " outside the queue)",
            ),
            2: Start(2, (0,), gpu_mem_cap=20 * GiB),
            3: Wait(
                3,
                "needs 0.25 of a GPU; the most free is 1 of GPU 1 (GPU 1: 70.0 GiB in use"
                " outside the queue); kept for jobs ahead of it: GPU 0 (job 1)",
            ),
        },
        now=10,
    ),
    Case(
        "the highest priority starts first, a negative one included in the order",
        [Want(1, gpus=1, priority=-1), Want(2, gpus=1), Want(3, gpus=1, priority=2)],
        [Holding(9, gpu_indices=(0,), gpus=1)],
        BOX,
        {
            3: Start(3, (1,)),
            2: Wait(2, "waiting for 1 GPU (0 of 2 free)"),
            1: Wait(1, "waiting for 1 GPU (0 of 2 free)"),
        },
    ),
    Case(
        "higher priority first within a group; the lower one waits behind it",
        [Want(1, gpus=1), Want(2, gpus=1, priority=5)],
        [Holding(9, gpu_indices=(0,), gpus=1)],
        BOX,
        {
            2: Start(2, (1,)),
            1: Wait(1, "waiting for 1 GPU (0 of 2 free)"),
        },
    ),
]

PLACEMENT = [
    Case(
        "a whole GPU is given where nothing outside the queue holds memory, if it can be",
        [Want(1, gpus=1), Want(2, gpus=2)],
        [],
        Resources(
            gpus=(
                GpuSlot(0, 80 * GiB, 30 * GiB, others=(OtherProcess(812, 30 * GiB),)),
                GpuSlot(1, 80 * GiB, 1 * GiB),
                GpuSlot(2, 80 * GiB),
                GpuSlot(3, 80 * GiB, 2 * GiB),
            ),
            cpus=8,
        ),
        {1: Start(1, (2,)), 2: Start(2, (1, 3))},
    ),
    Case(
        "a 2-GPU job lands on GPUs under one PCIe switch",
        [Want(1, gpus=2)],
        [Holding(8, gpu_indices=(0,), gpus=1), Holding(9, gpu_indices=(2,), gpus=1)],
        EIGHT,
        {1: Start(1, (4, 5))},
    ),
    Case(
        "without topology it takes the lowest free indices",
        [Want(1, gpus=2)],
        [Holding(8, gpu_indices=(0,), gpus=1), Holding(9, gpu_indices=(2,), gpus=1)],
        EIGHT_FLAT,
        {1: Start(1, (1, 3))},
    ),
    Case(
        "a 4-GPU job lands on one NUMA node",
        [Want(1, gpus=4)],
        [Holding(8, gpu_indices=(0,), gpus=1)],
        EIGHT,
        {1: Start(1, (4, 5, 6, 7))},
    ),
    Case(
        "a single GPU fills a broken pair first, keeping whole pairs for larger jobs",
        [Want(1, gpus=1)],
        [Holding(8, gpu_indices=(2,), gpus=1)],
        EIGHT,
        {1: Start(1, (3,))},
    ),
    Case(
        "a fraction is packed onto a GPU already shared",
        [Want(1, gpus=0.25)],
        [Holding(8, gpu_indices=(5,), gpus=0.5)],
        EIGHT,
        {1: Start(1, (5,), gpu_mem_cap=20 * GiB)},
    ),
    Case(
        "a MIG profile gets one instance, named by its UUID",
        [Want(1, mig_profile="1g.10gb"), Want(2, mig_profile="1g.10gb")],
        [],
        MIG_BOX,
        {1: Start(1, (0,), ("MIG-a",)), 2: Start(2, (0,), ("MIG-b",))},
    ),
    Case(
        "all instances of a profile in use: it waits naming their jobs",
        [Want(3, mig_profile="1g.10gb")],
        [
            Holding(1, gpu_indices=(0,), mig_uuids=("MIG-a",), mig_profile="1g.10gb"),
            Holding(2, gpu_indices=(0,), mig_uuids=("MIG-b",), mig_profile="1g.10gb"),
        ],
        MIG_BOX,
        {3: Wait(3, "needs a MIG 1g.10gb instance; all 2 are in use (jobs 1, 2)")},
    ),
    Case(
        "a profile this machine lacks can never run",
        [Want(1, mig_profile="2g.20gb")],
        [],
        MIG_BOX,
        {
            1: Wait(
                1,
                "needs a MIG 2g.20gb instance; this machine has none"
                " (MIG instances: 1g.10gb on GPU 0, 3g.40gb on GPU 0)",
            )
        },
    ),
    Case(
        "a MIG profile on a machine without MIG waits, saying none exists",
        [Want(1, mig_profile="1g.10gb")],
        [],
        BOX,
        {1: Wait(1, "needs a MIG 1g.10gb instance; this machine has none")},
    ),
    Case(
        "on 8 GPUs with MIG on one, a MIG job gets an instance and whole jobs the other seven",
        [Want(1, mig_profile="3g.40gb"), Want(2, gpus=4), Want(3, gpus=4)],
        [],
        EIGHT_ONE_MIG,
        {
            1: Start(1, (0,), ("MIG-c",)),
            2: Start(2, (1, 2, 3, 4)),
            3: Wait(3, "waiting for 4 GPUs (3 of 7 free)"),
        },
    ),
    Case(
        "whole and fractional jobs never get a GPU split into MIG instances",
        [Want(1, gpus=1), Want(2, gpus=0.5), Want(3, gpus=2)],
        [],
        MIG_BOX,
        {
            1: Start(1, (1,)),
            2: Wait(2, "needs 0.5 of a GPU; the most free is 0 of GPU 1"),
            3: Wait(3, "needs 2 GPUs, this machine has 1 (1 GPU split into MIG instances)"),
        },
    ),
]


# Reclaiming whole GPUs where the borrower's share is fractions spread over GPUs that also hold
# its guaranteed jobs; jobs that took their group past its quota; several reclaims in one pass.
Q8 = Settings(quotas={"vision": 5, "sweep": 3})


def _frac(job_id: int, gpu: int, started_at: float) -> Holding:
    return Holding(job_id, group="sweep", gpu_indices=(gpu,), gpus=0.25, started_at=started_at)


# Sweep (quota 3) holds 14 quarters = 3.5 GPUs on GPUs 4-7 (4, 3, 3, 4): every GPU costs more
# than its 0.5 beyond the quota, so no GPU frees within that. Freeing GPU 5 (its oldest job is
# the youngest) preempts two over-quota quarters and moves the third to the room on GPU 6:
# sweep ends at 3.0, its quota.
SPREAD = [_frac(40 + k, 4, 10) for k in range(4)]
SPREAD += [_frac(50 + k, 5, 100) for k in range(3)]
SPREAD += [_frac(60 + k, 6, 50) for k in range(3)]
SPREAD += [_frac(70 + k, 7, 10) for k in range(4)]
OVER = "group sweep is over its quota of 3 and group vision is under its own"
MOVED = (
    "group vision is under its quota and needs whole GPUs; this job can start again at once"
    " on room left on another GPU"
)
SPREAD_EXPECTED: dict[int, object] = {
    50: Preempt(50, f"preempted for job 1: {OVER}", 1),
    51: Preempt(51, f"preempted for job 1: {OVER}", 1),
    52: Preempt(52, f"preempted for job 1: {MOVED}", 1),
    1: Wait(
        1,
        "within its group's quota of 5; reclaiming GPU 5 by preempting jobs 50, 51 (over-quota)"
        " and job 52 (to move to room on other GPUs)",
    ),
}
RECLAIM = [
    Case(
        "8 GPUs: fractions spread past the spare: some preempted, one moved, group at its quota",
        [Want(1, group="vision", gpus=1)],
        [Holding(10 + i, group="vision", gpu_indices=(i,), gpus=1) for i in range(4)] + SPREAD,
        EIGHT_FLAT,
        SPREAD_EXPECTED,
        Q8,
        now=200,
    ),
    Case(
        "8 GPUs with MIG on one: the same, the MIG GPU never freed nor moved onto",
        [Want(1, group="vision", gpus=1)],
        [Holding(10 + i, group="vision", gpu_indices=(i,), gpus=1) for i in range(1, 4)]
        + [Holding(9, "vision", (0,), mig_uuids=("MIG-c",), mig_profile="3g.40gb")]
        + SPREAD,
        EIGHT_ONE_MIG,
        SPREAD_EXPECTED,
        Q8,
        now=200,
    ),
    Case(
        "2 GPUs: a group within its quota spread thin has a fraction moved to free a GPU",
        [Want(1, group="vision", gpus=1)],
        [_frac(11, 0, 10), _frac(12, 1, 20)],
        BOX,
        {
            12: Preempt(12, f"preempted for job 1: {MOVED}", 1),
            1: Wait(
                1,
                "within its group's quota of 1; reclaiming GPU 1 by preempting job 12"
                " (to move to room on other GPUs)",
            ),
        },
        QUOTAS,
        now=30,
    ),
    Case(
        "1 GPU: fractions with nowhere to move are not preempted below their quota",
        [Want(1, group="vision", gpus=1)],
        [_frac(11, 0, 10), _frac(12, 0, 20), _frac(13, 0, 30)],
        ONE_GPU,
        {
            1: Wait(
                1,
                "waiting for 1 GPU (0 of 1 free); within its group's quota of 1, but nothing can"
                " be reclaimed: stopping job 13, which borrows, would not make room for it",
            )
        },
        Settings(quotas={"vision": 1, "sweep": 0.5}),
        now=40,
    ),
    Case(
        "8 GPUs: two jobs reclaiming in one pass each preempt for themselves",
        [Want(1, group="vision", gpus=1), Want(2, group="vision", gpus=1)],
        [Holding(10 + i, group="sweep", gpu_indices=(i,), gpus=1, started_at=i) for i in range(8)],
        EIGHT_FLAT,
        {
            17: Preempt(17, f"preempted for job 1: {OVER}", 1),
            1: Wait(
                1,
                "within its group's quota of 5; reclaiming GPU 7 by preempting job 17 (over-quota)",
            ),
            16: Preempt(16, f"preempted for job 2: {OVER}", 2),
            2: Wait(
                2,
                "within its group's quota of 5; reclaiming GPU 6 by preempting job 16 (over-quota)",
            ),
        },
        Q8,
        now=100,
    ),
    Case(
        "2 GPUs: a stopping job's GPU promised to one job is not waited for by the next",
        [Want(1, group="vision", gpus=1), Want(2, group="vision", gpus=1)],
        [
            Holding(11, group="sweep", gpu_indices=(0,), gpus=1, stopping=True),
            Holding(12, group="sweep", gpu_indices=(1,), gpus=1, stopping=True),
        ],
        BOX,
        {
            1: Wait(1, "within its group's quota; waiting for job 11 to stop and free GPU 0"),
            2: Wait(2, "within its group's quota; waiting for job 12 to stop and free GPU 1"),
        },
        Settings(quotas={"vision": 2, "sweep": 0}),
        now=100,
    ),
    Case(
        "8 GPUs: a 4-GPU job that took its group past its quota is reclaimed for a fraction",
        [Want(3, group="sweep", gpus=0.25)],
        [
            Holding(1, group="vision", gpu_indices=(0, 1, 2, 3), gpus=4, started_at=10),
            Holding(2, group="vision", gpu_indices=(4, 5, 6, 7), gpus=4, started_at=20),
        ],
        EIGHT,
        {
            2: Preempt(
                2,
                "preempted for job 3: group vision is over its quota of 5 and group sweep is"
                " under its own",
                3,
            ),
            3: Wait(
                3,
                "within its group's quota of 3; reclaiming GPUs 4, 5, 6, 7 by preempting job 2"
                " (over-quota)",
            ),
        },
        Q8,
        now=30,
    ),
    Case(
        "1 GPU: a job within its group's quota is never reclaimed",
        [Want(2, group="sweep", gpus=0.25)],
        [Holding(1, group="vision", gpu_indices=(0,), gpus=1, started_at=10)],
        ONE_GPU,
        {
            2: Wait(
                2,
                "needs 0.25 of a GPU; the most free is 0 of GPU 0; within its group's quota of"
                " 0.5, but nothing can be reclaimed: no other group holds more than its own quota"
                " (the quotas add up to 1.5 GPUs, this machine has 1)",
            )
        },
        Settings(quotas={"vision": 1, "sweep": 0.5}),
        now=30,
    ),
    Case(
        "8 GPUs: once a group fills its quota in a pass, its later jobs of that shape all borrow",
        [Want(i, group="sweep", gpus=1) for i in range(1, 6)]
        + [Want(6, group="vision", gpus=4), Want(7, group="vision", gpus=1)],
        [],
        EIGHT_FLAT,
        {
            1: Start(1, (0,)),
            2: Start(2, (1,)),
            3: Start(3, (2,)),
            6: Start(6, (3, 4, 5, 6)),
            7: Start(7, (7,)),
            4: Wait(4, "group sweep is at its quota of 3 and nothing is idle to borrow"),
            5: Wait(5, "group sweep is at its quota of 3 and nothing is idle to borrow"),
        },
        Q8,
    ),
]


@pytest.mark.parametrize(
    ("res", "running"),
    [
        (ONE_GPU, [_frac(1, 0, 10), _frac(2, 0, 20), Holding(3, cpus=2, mem=GiB)]),
        (
            BOX,
            [
                Holding(1, "vision", (0,), 1, started_at=5, gpu_mem_seen=70 * GiB),
                Holding(2, "sweep", (1,), 0.5, 30 * GiB, cpus=1, started_at=95),
                _frac(3, 1, 50),
            ],
        ),
        (
            EIGHT_ONE_MIG,
            [
                Holding(1, "vision", (0,), mig_uuids=("MIG-c",), mig_profile="3g.40gb"),
                Holding(2, "vision", (1, 2, 3, 4), 4, started_at=10),
                *SPREAD,
            ],
        ),
    ],
)
def test_a_trial_ledger_less_some_jobs_counts_as_one_built_without_them(
    res: Resources, running: list[Holding]
) -> None:
    """Reclaims try many victim sets: the copy less the victims must count what a ledger of
    the remaining jobs counts (a whole GPU exactly free, or it would not be taken)."""
    from workbench.queue.scheduler import _Ledger

    base = _Ledger(running, res, 100.0, Q8)
    for cut in range(len(running) + 1):
        removed = {h.id for h in running[:cut]}
        trial = base.without(removed)
        fresh = _Ledger([h for h in running if h.id not in removed], res, 100.0, Q8)
        for name in ("share", "reserved", "starting", "mig_used", "cpus", "mem"):
            assert getattr(trial, name) == pytest.approx(getattr(fresh, name)), name
        assert {g: u for g, u in trial.group_units.items() if u} == pytest.approx(
            {g: u for g, u in fresh.group_units.items() if u}
        )
        assert [h.id for h in trial.held] == [h.id for h in fresh.held]
        assert all(trial.share[i] == 0 for i in fresh.share if fresh.share[i] == 0)


# Counts in reasons read right: one GPU, four GPUs, one CPU, the only MIG instance.
WORDING = [
    Case(
        "a 4-GPU job waits for 4 GPUs, on 8 GPUs",
        [Want(1, gpus=4)],
        [Holding(9, gpu_indices=(i,), gpus=1) for i in range(6)],
        EIGHT_FLAT,
        {1: Wait(1, "waiting for 4 GPUs (2 of 8 free)")},
    ),
    Case(
        "a 2-GPU job waits for 2 GPUs, on 2 GPUs",
        [Want(1, gpus=2)],
        [Holding(9, gpu_indices=(0,), gpus=1)],
        BOX,
        {1: Wait(1, "waiting for 2 GPUs (1 of 2 free)")},
    ),
    Case(
        "a 1-GPU job waits for 1 GPU, on 1 GPU",
        [Want(1, gpus=1)],
        [Holding(9, gpu_indices=(0,), gpus=1)],
        ONE_GPU,
        {1: Wait(1, "waiting for 1 GPU (0 of 1 free)")},
    ),
    Case(
        "a job of one CPU waits for 1 CPU",
        [Want(1, cpus=1)],
        [Holding(9, cpus=8)],
        ONE_GPU,
        {1: Wait(1, "waiting for 1 CPU (0 free)")},
    ),
    Case(
        "a job of two CPUs waits for 2 CPUs",
        [Want(1, cpus=2)],
        [Holding(9, cpus=7)],
        ONE_GPU,
        {1: Wait(1, "waiting for 2 CPUs (1 free)")},
    ),
    Case(
        "a job asking more GPUs than the machine has, with MIG on one",
        [Want(1, gpus=2)],
        [],
        MIG_BOX,
        {1: Wait(1, "needs 2 GPUs, this machine has 1 (1 GPU split into MIG instances)")},
    ),
    Case(
        "the only MIG instance of a profile is in use",
        [Want(2, mig_profile="3g.40gb")],
        [Holding(1, gpu_indices=(0,), mig_uuids=("MIG-c",), mig_profile="3g.40gb")],
        MIG_BOX,
        {2: Wait(2, "needs a MIG 3g.40gb instance; the only one is in use (job 1)")},
    ),
]


@pytest.mark.parametrize(
    "case", MEMORY + QUOTA + BACKFILL + PLACEMENT + WORDING + RECLAIM, ids=lambda c: c.name
)
def test_pooling(case: Case) -> None:
    assert decide_at(case) == case.expected


def test_backfill_never_delays_the_large_job() -> None:
    """Run the day forward: the 4-GPU job starts when its kept GPUs free, not later."""
    running = [
        Holding(10 + i, gpu_indices=(i,), gpus=1, time_limit=100 if i < 2 else 500)
        for i in range(6)
    ]
    queued = [Want(1, gpus=4)] + [Want(20 + k, gpus=1, time_limit=60) for k in range(6)]
    started_large = None
    now = 0.0
    while started_large is None and now <= 200:
        ending = [h for h in running if h.started_at + (h.time_limit or 0) <= now]
        running = [h for h in running if h not in ending]
        for d in plan(queued, running, {}, EIGHT_FLAT, Settings(), now):
            if isinstance(d, Start):
                want = next(w for w in queued if w.id == d.job_id)
                queued.remove(want)
                running.append(
                    Holding(
                        want.id,
                        gpu_indices=d.gpu_indices,
                        gpus=want.gpus,
                        started_at=now,
                        time_limit=want.time_limit,
                    )
                )
                if want.id == 1:
                    started_large = now
        now += 10
    assert started_large == 100


def test_a_mig_job_counts_its_slices_against_the_quota() -> None:
    decisions = decide_at(
        Case(
            "",
            [Want(2, group="vision", mig_profile="3g.40gb")],
            [Holding(1, group="vision", gpu_indices=(1,), gpus=0.5)],
            MIG_BOX,
            {},
            Settings(quotas={"vision": 1}),
        )
    )
    assert decisions[2] == Start(2, (0,), ("MIG-c",))
    assert gpu_units(0, "3g.40gb") == pytest.approx(3 / 7)


# ---- quotas in config.toml and on the command line ----------------------------------------


def test_quotas_from_config_and_the_command_line(home: Home) -> None:
    home.ensure()
    home.config.write_text(
        "[groups.vision]\nquota = 2\nparallel = 3\npreemptible = false\n\n"
        "[groups.sweep]\nquota = 1\n"
    )
    config = load_config(home.config)
    assert config.group_quotas == {"vision": 2.0, "sweep": 1.0}
    assert config.group_parallel == {"vision": 3}
    assert config.not_preemptible == {"vision"}
    assert workbench("group", "sweep", "--quota", "3").returncode == 0
    shown = json.loads(workbench("group", "sweep", "--json").stdout)
    assert shown == {"name": "sweep", "parallel": 0, "quota": 3.0}
    listing = workbench("group").stdout
    assert "vision: 3 in parallel, 2 GPUs guaranteed" in listing
    assert "sweep: unlimited in parallel, 3 GPUs guaranteed" in listing


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[groups.vision]\nquota = -1\n", "[groups.vision]: key 'quota': must be 0 or more GPUs"),
        (
            "[groups.vision]\nquota = 1.5\n",
            "[groups.vision]: key 'quota': above 1 it must be a whole",
        ),
        (
            "[groups.vision]\nquotas = 1\n",
            "[groups.vision]: unknown key 'quotas' (did you mean 'quota'?)",
        ),
        ("[groups]\nvision = 1\n", "[groups.vision]: expected a table"),
        ('[scheduler]\nstart_grace = "soon"\n', "[scheduler]"),
    ],
)
def test_bad_group_config_names_the_key(home: Home, text: str, message: str) -> None:
    home.ensure()
    home.config.write_text(text)
    with pytest.raises(SpecError, match=re.escape(message)):
        load_config(home.config)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-2", "--quota"),
        ("nan", "--quota"),
        ("1.5", "--quota: above 1 it must be a whole number"),
        ("1e30", "--quota: must be at most 9223372036854775807 GPUs"),  # as config.toml refuses
    ],
)
def test_a_bad_quota_on_the_command_line_exits_2(home: Home, value: str, message: str) -> None:
    result = workbench("group", "vision", f"--quota={value}")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["", " ", " vision", "a\nb", "esc\x1b[2J", "x" * 129])
def test_a_group_name_that_cannot_be_shown_is_refused_everywhere(home: Home, name: str) -> None:
    """Blank names, names with spaces around them or control characters (which broke the
    `group` listing and every wait reason naming the group) were accepted."""
    for args in (["group", name, "--quota", "1"], ["submit", "--group", name, "--", "true"]):
        result = workbench(*args)
        assert result.returncode == 2, (args, result.stdout)
        assert "group" in result.stderr and "Traceback" not in result.stderr
    home.config.write_text(f"[groups.{json.dumps(name)}]\nquota = 1\n")
    with pytest.raises(SpecError, match=re.escape("[groups]: a group")):
        load_config(home.config)


@pytest.mark.parametrize("value", ["8", "512", "1000KB"])
def test_gpu_memory_without_a_unit_is_refused_not_taken_as_bytes(
    home: Home, tmp_path: Path, value: str
) -> None:
    """`--gpu-mem 8` was 8 bytes: a shared job's cap (WORKBENCH_GPU_MEM_BYTES, a train job's
    memory fraction) that no CUDA context fits in."""
    result = workbench("submit", "--gpus", "0.5", "--gpu-mem", value, "--", "true")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "key 'gpu_mem'" in result.stderr and "give a unit, e.g. 8GiB" in result.stderr
    spec = tmp_path / "job.toml"
    spec.write_text(f'kind = "command"\nargv = ["true"]\ngpus = 0.5\ngpu_mem = "{value}"\n')
    result = workbench("submit", "--spec", str(spec))
    assert result.returncode == 2 and "key 'gpu_mem'" in result.stderr


def test_gpu_memory_for_a_job_that_asks_for_no_gpu_is_refused(home: Home, tmp_path: Path) -> None:
    """`--gpu-mem 8GiB` without `--gpus` was accepted and dropped: the job ran on the CPU and
    no GPU memory was ever reserved for it. A MIG profile is a GPU: it may carry gpu_mem."""
    result = workbench("submit", "--gpu-mem", "8GiB", "--", "true")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "key 'gpu_mem'" in result.stderr and "asks for no GPU" in result.stderr
    spec = tmp_path / "job.toml"
    spec.write_text('kind = "command"\nargv = ["true"]\ngpu_mem = "8GiB"\n')
    result = workbench("submit", "--spec", str(spec))
    assert result.returncode == 2 and "asks for no GPU" in result.stderr
    assert workbench("ls", "--all", "--json").stdout.strip() in ("[]", "")
    mig = workbench("submit", "--gpus", "1g.10gb", "--gpu-mem", "8GiB", "--paused", "--", "true")
    assert mig.returncode == 0, mig.stderr


def test_quotas_set_at_the_same_time_are_all_kept(home: Home) -> None:
    """`workbench group NAME --quota G` read the stored quotas and wrote them back in two
    steps: two groups' quotas set at once (a script setting several) lost one of them."""
    import threading

    from workbench.config import set_stored_quota, stored_quotas
    from workbench.db.store import Store

    Store.open(home.state_db).close()
    names = [f"g{i}" for i in range(8)]

    def set_many(name: str) -> None:
        store = Store.open(home.state_db)
        for n in range(40):
            set_stored_quota(store, f"{name}-{n}", 1)
        store.close()

    threads = [threading.Thread(target=set_many, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store = Store.open(home.state_db)
    assert len(stored_quotas(store)) == 8 * 40
    store.close()


def test_quotas_adding_up_past_the_machine_are_warned_about(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_machine(tmp_path, monkeypatch, [{}, {}])
    assert "warning" not in workbench("group", "vision", "--quota", "2").stderr
    result = workbench("group", "sweep", "--quota", "1")
    assert result.returncode == 0
    assert (
        "warning: the group quotas (sweep 1, vision 2) add up to 3 GPUs and this machine has"
        " 2 GPUs: not every guarantee can be met at once"
    ) in result.stderr


# ---- through the daemon, against the fake NVML ----------------------------------------------


def fake_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpus: list[dict[str, object]]
) -> None:
    """Point the daemon (started later, inheriting the environment) at a simulated driver."""
    scenario = fakenvml.write_scenario(tmp_path / "gpus.json", gpus)
    monkeypatch.setenv("WORKBENCH_FAKE_NVML", str(scenario))


def gpu_held_by(pid_file: Path) -> dict[str, object]:
    """A simulated 80 GiB GPU on which the process whose pid is written to `pid_file` (by a job,
    once it runs) holds 30 GiB."""
    return {
        "memory_total": 80 * GiB,
        "memory_used": 30 * GiB,
        "processes": [{"pid_file": str(pid_file), "used_memory": 30 * GiB}],
    }


def submit_command(
    client: Client, tmp_path: Path, argv: list[str], after: tuple[int, ...] = (), **options: object
) -> int:
    """A command job; opted in to preemption (a command job is preempted only when it says it is
    checkpointable or opts in: these tests are about pooling, not about checkpoints)."""
    options.setdefault("preemptible", True)
    request = build_request(
        {"kind": "command", "argv": argv, **options},
        tmp_path,
        "test",
        after=tuple((job, "ok") for job in after),
    )
    return client.submit(request)


def test_a_command_job_is_told_its_gpu_memory_cap(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_machine(tmp_path, monkeypatch, [{"memory_total": 80 * GiB}])
    show = ["sh", "-c", 'echo "cap=${WORKBENCH_GPU_MEM_BYTES:-none} visible=$CUDA_VISIBLE_DEVICES"']
    shared = submit_command(client, tmp_path, show, gpus=0.5)
    declared = submit_command(client, tmp_path, show, gpus=0.25, gpu_mem="8GiB")
    whole = submit_command(client, tmp_path, show, after=(shared, declared), gpus=1)
    for job_id in (shared, declared, whole):
        assert wait_state(client, job_id, "succeeded").state == "succeeded"
    logs = [(home.run_dir(j) / "log").read_text().strip() for j in (shared, declared, whole)]
    assert logs == [f"cap={40 * GiB} visible=0", f"cap={8 * GiB} visible=0", "cap=none visible=0"]


def test_ls_and_show_say_which_memory_outside_the_queue_keeps_a_job_waiting(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_machine(
        tmp_path,
        monkeypatch,
        [
            {
                "memory_total": 48 * GiB,
                "memory_used": 26 * GiB,
                # pids above the kernel's highest pid_max (2**22): no real process is named
                # with its owner ("held by root's pid ...")
                "processes": [{"pid": 4194900, "used_memory": 26 * GiB}],
            },
            {
                "memory_total": 48 * GiB,
                "memory_used": 30 * GiB,
                "processes": [{"pid": 4194812, "used_memory": 30 * GiB}],
            },
        ],
    )
    job_id = submit_command(client, tmp_path, ["true"], gpus=0.5, gpu_mem="40GiB")
    expected = (
        "needs 40.0 GiB on one GPU; the largest free is 22.0 GiB on GPU 0 (GPU 0: 26.0 GiB held"
        " by pid 4194900, not a queue job; GPU 1: 30.0 GiB held by pid 4194812, not a queue job)"
    )
    client.nudge()
    wait_for(lambda: client.store.get(job_id).reason == expected, what="the wait reason")
    listed = json.loads(workbench("ls", "--json").stdout)
    assert [j["reason"] for j in listed if j["id"] == job_id] == [expected]
    assert json.loads(workbench("show", str(job_id), "--json").stdout)["reason"] == expected
    assert "reason:    needs 40.0 GiB on one GPU" in workbench("show", str(job_id)).stdout
    client.control(job_id, "cancel")


@pytest.mark.slow
def test_a_group_under_its_quota_preempts_a_borrowing_train_job_which_resumes_to_the_same_metrics(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_train import digits_table

    from workbench.catalog import lake, tracking

    fake_machine(tmp_path, monkeypatch, [{}, {}])
    home.config.write_text(
        '[daemon]\nkill_grace = "30s"\n\n[groups.vision]\nquota = 1\n\n[groups.sweep]\nquota = 1\n'
    )
    lake.publish_arrow(home, client.store, "digits", digits_table())
    spec = {
        "kind": "train",
        "dataset": "digits",
        "target": "digit",
        "model": "mlp",
        "hidden": [128, 128],
        "epochs": 12,
        "batch_size": 8,
        "seed": 3,
        "cpus": 1,
        "dropout": 0.1,
        "gpus": 1,
        "group": "sweep",
    }
    whole_id = client.submit(build_request(spec, tmp_path, "test"))
    whole = wait_state(client, whole_id, {"succeeded", "failed"}, timeout=240)
    assert whole.state == "succeeded", whole.reason

    # sweep holds its one guaranteed GPU with a long job, then borrows the second for training.
    held = submit_command(client, tmp_path, ["sleep", "600"], gpus=1, group="sweep")
    wait_state(client, held, "running")
    borrower = client.submit(build_request(spec, tmp_path, "test"))
    wait_for(lambda: (client.store.get(borrower).progress or 0) >= 0.3, timeout=120, what="epochs")
    # vision, under its quota of 1, asks for a GPU: the youngest over-quota job gives it back.
    vision = submit_command(client, tmp_path, ["sleep", "1"], gpus=1, group="vision")
    wait_state(client, vision, "succeeded", timeout=60)
    resumed = wait_state(client, borrower, {"succeeded", "failed"}, timeout=240)
    assert resumed.state == "succeeded", resumed.reason
    client.control(held, "cancel")

    events = client.store.events(borrower)
    preempted = [e for e in events if e.event == "preempt"]
    assert len(preempted) == 1 and preempted[0].state == "queued"
    assert f"preempted for job {vision}" in (preempted[0].reason or "")
    assert resumed.attempt == 1  # a preemption is not a failed attempt
    assert "resumed from" in (home.run_dir(borrower) / "log").read_text()
    assert client.store.get(held).state in ("running", "cancelled")  # never preempted
    first, second = (
        tracking.get_run(client.store, whole_id),
        tracking.get_run(client.store, borrower),
    )
    assert first is not None and second is not None
    assert first.metrics == second.metrics
    assert client.store.metrics(whole_id, ["train_loss"]) == client.store.metrics(
        borrower, ["train_loss"]
    )


@pytest.mark.parametrize("strict", [False, True])
def test_a_job_over_its_gpu_memory_reservation_is_reported_and_stopped_when_strict(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strict: bool
) -> None:
    pid_file = tmp_path / "job.pid"
    fake_machine(tmp_path, monkeypatch, [gpu_held_by(pid_file)])
    home.config.write_text(f"[scheduler]\nstrict = {'true' if strict else 'false'}\n")
    job_id = submit_command(
        client,
        tmp_path,
        ["sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"],
        gpus=0.25,
        gpu_mem="8GiB",
    )
    over = "uses 30.0 GiB of GPU memory, over its reservation of 8.0 GiB"
    if strict:
        ended = wait_state(client, job_id, {"failed", "succeeded", "cancelled"}, timeout=60)
        assert ended.state == "failed"
        assert ended.reason == f"{over}; stopped (strict)"
        # The log says why it ends there, not only `show`.
        log = (home.run_dir(job_id) / "log").read_text()
        assert f"[workbench] stopping: {over}; stopped (strict)\n" in log
    else:
        wait_for(lambda: client.store.get(job_id).reason == over, what="the over-reservation")
        shown = json.loads(workbench("show", str(job_id), "--json").stdout)
        assert shown["state"] == "running" and shown["reason"] == over
        # A running job's reason is hidden in listings, except this one: ls and the Queue screen.
        assert over in workbench("ls").stdout
        from screens.jobtable import cell_texts

        assert cell_texts(client.store.get(job_id), time.time())["reason"] == over
        client.control(job_id, "cancel")
        wait_state(client, job_id, "cancelled", timeout=30)


def test_a_mig_profile_job_runs_on_an_instance_named_by_its_uuid(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mig_uuid = "MIG-5e1f0000-0000-4000-8000-000000000001"
    fake_machine(
        tmp_path,
        monkeypatch,
        [
            {
                "name": "NVIDIA A100-SXM4-80GB",
                "mig": True,
                "mig_instances": [
                    {"profile": "1g.10gb", "memory_total": 10 * GiB, "uuid": mig_uuid},
                    {"profile": "3g.40gb", "memory_total": 40 * GiB},
                ],
            },
            {"memory_total": 80 * GiB},
        ],
    )
    show = ["sh", "-c", 'echo "visible=$CUDA_VISIBLE_DEVICES"']
    done = workbench("submit", "--gpus", "1g.10gb", "--wait", "--json", "--", *show)
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    job_id = job["id"]
    assert job["resources"]["mig_profile"] == "1g.10gb"
    assert (home.run_dir(job_id) / "log").read_text().strip() == f"visible={mig_uuid}"
    # `submit --json` prints the job as queued (granted nothing yet, unless it started first):
    # the grant is read once it ended.
    ended = json.loads(workbench("show", str(job_id), "--json").stdout)
    assert ended["granted_devices"] == [mig_uuid]
    # `show` names the instance the job got, as CUDA_VISIBLE_DEVICES did, not just its GPU,
    # from the store: a pruned run folder loses nothing of it.
    shutil.rmtree(home.run_dir(job_id))
    shown = workbench("show", str(job_id)).stdout
    assert f"granted MIG 1g.10gb instance {mig_uuid} on GPU 0" in " ".join(shown.split())
    # A profile no GPU is split into waits, saying so in words, in `ls` and `show`.
    lacking = submit_command(client, tmp_path, ["true"], gpus="2g.20gb")
    expected = (
        "needs a MIG 2g.20gb instance; this machine has none"
        " (MIG instances: 1g.10gb on GPU 0, 3g.40gb on GPU 0)"
    )
    client.nudge()
    wait_for(lambda: client.store.get(lacking).reason == expected, what="the MIG wait reason")
    assert expected[:40] in workbench("ls").stdout
    assert "mig 2g.20gb" in workbench("show", str(lacking)).stdout
    client.control(lacking, "cancel")


@pytest.mark.parametrize(
    ("profile", "devices", "text"),
    [
        ("1g.10gb", ["MIG-x"], "MIG 1g.10gb instance MIG-x on GPU 0"),
        ("1g.10gb", None, "MIG 1g.10gb instance on GPU 0"),  # started before it was recorded
        ("1g.10gb", ["MIG-\x1b[2J"], "MIG 1g.10gb instance MIG-\\x1b[2J on GPU 0"),
        (None, None, "GPU 0"),
    ],
)
def test_a_mig_grant_is_shown_as_the_instance_the_attempt_was_launched_with(
    profile: str | None, devices: list[str] | None, text: str
) -> None:
    from types import SimpleNamespace

    from workbench.jobmodel.resources import Resources as Asked
    from workbench.present import granted_text

    asked = Asked(gpus=0 if profile else 1, mig_profile=profile)
    job = SimpleNamespace(granted_gpus=[0], resources=asked, granted_devices=devices)
    assert granted_text(job) == text  # type: ignore[arg-type]


def test_a_job_that_opts_out_of_preemption_keeps_its_borrowed_gpu(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_machine(tmp_path, monkeypatch, [{}])
    home.config.write_text("[groups.vision]\nquota = 1\n\n[groups.sweep]\nquota = 0\n")
    result = workbench(
        "submit",
        "--group",
        "sweep",
        "--gpus",
        "1",
        "--checkpointable",
        "--no-preempt",
        "--",
        "sleep",
        "600",
    )
    assert result.returncode == 0, result.stderr
    kept = int(result.stdout)
    wait_state(client, kept, "running")
    vision = submit_command(client, tmp_path, ["true"], gpus=1, group="vision")
    client.nudge()
    wait_for(
        lambda: (
            client.store.get(vision).reason
            == "waiting for 1 GPU (0 of 1 free); within its group's quota of 1, but nothing can be"
            f" reclaimed: job {kept} (group sweep) borrows beyond its group's quota and opted out"
            " of preemption"
        ),
        what="the quota job's wait reason",
    )
    assert client.store.get(kept).state == "running"
    assert not [e for e in client.store.events(kept) if e.event == "preempt"]
    client.control(vision, "cancel")
    client.control(kept, "cancel")
    wait_state(client, kept, "cancelled", timeout=30)


def test_a_restarted_daemon_keeps_an_adopted_jobs_mig_instance_and_opt_out(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal

    from workbench.daemon.client import ensure_daemon
    from workbench.daemon.link import lock_holder

    fake_machine(
        tmp_path,
        monkeypatch,
        [{"mig": True, "mig_instances": [{"profile": "1g.10gb", "memory_total": 10 * GiB}]}],
    )
    home.config.write_text("[groups.vision]\nquota = 1\n\n[groups.sweep]\nquota = 0\n")
    held = submit_command(
        client,
        tmp_path,
        ["sleep", "600"],
        gpus="1g.10gb",
        group="sweep",
        preemptible=False,
        checkpointable=True,
    )
    wait_state(client, held, "running")
    os.kill(lock_holder(home) or 0, signal.SIGKILL)
    wait_for(lambda: not lock_holder(home), what="the daemon to die")
    ensure_daemon(home)
    second = submit_command(client, tmp_path, ["true"], gpus="1g.10gb", group="vision")
    client.nudge()
    expected = (
        f"needs a MIG 1g.10gb instance; the only one is in use (job {held}); within its group's"
        f" quota of 1, but nothing can be reclaimed: job {held} (group sweep) borrows beyond its"
        " group's quota and opted out of preemption"
    )
    wait_for(lambda: client.store.get(second).reason == expected, what="the MIG in-use reason")
    assert client.store.get(held).state == "running"
    assert not [e for e in client.store.events(held) if e.event == "preempt"]
    client.control(second, "cancel")
    client.control(held, "cancel")
    wait_state(client, held, "cancelled", timeout=30)


def test_a_job_within_its_quota_behind_a_long_queue_of_borrowers_still_reclaims(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon reads the queue a page at a time; a job within its group's quota used to be
    planned only if it was in the first page, so 200 older borrowers kept it waiting (unseen)
    while their group held the GPU: every group's head is planned in every pass."""
    fake_machine(tmp_path, monkeypatch, [{}])
    home.config.write_text("[groups.vision]\nquota = 1\n\n[groups.sweep]\nquota = 0\n")
    borrower = submit_command(client, tmp_path, ["sleep", "600"], gpus=1, group="sweep")
    wait_state(client, borrower, "running")
    backlog = [
        build_request(
            {"kind": "command", "argv": ["true"], "gpus": 1, "group": "sweep"}, tmp_path, "test"
        )
        for _ in range(200)
    ]
    client.submit_many(backlog)
    vision = submit_command(client, tmp_path, ["true"], gpus=1, group="vision")
    assert wait_state(client, vision, "succeeded", timeout=60).state == "succeeded"
    assert [e.event for e in client.store.events(borrower)].count("preempt") == 1
