"""The scheduler's decisions as a pure function, table-driven, without processes."""

from __future__ import annotations

import pytest

from workbench.queue.scheduler import (
    NO_GPU,
    Block,
    Fail,
    GpuSlot,
    Holding,
    Resources,
    Settings,
    Start,
    Wait,
    Want,
    plan,
)

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
        {2: Start(2, (1,))},
    ),
    (
        "a fraction does not take a GPU held whole",
        [Want(2, gpus=0.5)],
        [Holding(1, gpu_indices=(0,), gpus=1)],
        {},
        BOX,
        Settings(),
        {2: Start(2, (1,))},
    ),
    (
        "packing stops when GPU memory would not fit",
        [Want(2, gpus=0.25, gpu_mem=50 * GiB)],
        [Holding(1, gpu_indices=(0,), gpus=0.25, gpu_mem=40 * GiB)],
        {},
        Resources(gpus=(GpuSlot(0, 80 * GiB),), cpus=8),
        Settings(),
        {2: Wait(2, "waiting for 0.25 GPU with 50.0 GiB free (most free now: 40.0 GiB)")},
    ),
    (
        "memory used by other processes counts",
        [Want(1, gpus=1, gpu_mem=40 * GiB)],
        [],
        {},
        Resources(gpus=(GpuSlot(0, 80 * GiB, 60 * GiB), GpuSlot(1, 80 * GiB, 10 * GiB)), cpus=8),
        Settings(),
        {1: Start(1, (1,))},
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
        {2: Start(2, (0, 1)), 1: Wait(1, "waiting for 2 GPU (0 of 2 free)")},
    ),
    (
        "backfill: a small job passes a big one that does not fit",
        [Want(1, gpus=2), Want(2, cpus=1)],
        [Holding(9, gpu_indices=(0,), gpus=1)],
        {},
        BOX,
        Settings(),
        {1: Wait(1, "waiting for 2 GPU (1 of 2 free)"), 2: Start(2, ())},
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
    assert decisions[3] == Start(3, (1,))


def test_one_pass_hands_each_gpu_out_once() -> None:
    decisions = decide([Want(i, gpus=1) for i in range(1, 5)])
    started = [d for d in decisions.values() if isinstance(d, Start)]
    assert sorted(d.gpu_indices for d in started) == [(0,), (1,)]
    assert all(isinstance(decisions[i], Wait) for i in (3, 4))
