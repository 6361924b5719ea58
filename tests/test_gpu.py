"""The GPU adapter against the simulated driver: the real pynvml binding runs, only C is faked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from workbench.queue import scheduler
from workbench.telemetry import fakenvml, gpu
from workbench.telemetry.gpu import (
    GpuPlacement,
    GpuProcess,
    Gpus,
    GpuSample,
    attribute_processes,
    gpu_slots,
    job_gpu_memory,
)

GIB = 1024**3
Scenario = Callable[..., Gpus]


@pytest.fixture
def open_fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Scenario]:
    """open_fake(gpus=[...], **scenario) -> an open Gpus on that simulated machine."""
    opened: list[Gpus] = []

    def make(gpus: list[dict[str, Any]] | None = None, **scenario: Any) -> Gpus:
        path = tmp_path / f"scenario{len(opened)}.json"
        fakenvml.write_scenario(path, {**scenario, "gpus": gpus if gpus is not None else [{}]})
        monkeypatch.setenv(gpu.FAKE_ENV, str(path))
        opened.append(Gpus.open())
        return opened[-1]

    yield make
    for gpus in opened:
        gpus.close()
    monkeypatch.delenv(gpu.FAKE_ENV)
    gpu.drop_fake()


def calls(name: str) -> int:
    driver = gpu.fake_driver()
    assert driver is not None
    return driver.calls.get(name, 0)


def test_one_gpu_reports_every_live_field_through_the_binding(open_fake: Scenario) -> None:
    gpus = open_fake(
        [
            {
                "name": "NVIDIA H100 80GB HBM3",
                "memory_total": 80 * GIB,
                "memory_used": 30 * GIB,
                "utilization_gpu": 87,
                "utilization_memory": 41,
                "temperature": 66,
                "power_draw_w": 412.5,
                "power_limit_w": 700,
                "clock_sm_mhz": 1755,
                "clock_mem_mhz": 2619,
                "fan_percent": 55,
                "pci_bus_id": "00000000:1B:00.0",
                "processes": [{"pid": 4242, "used_memory": 29 * GIB, "sm_util": 83}],
            }
        ],
        driver_version="550.54.15",
        cuda_version=12040,
    )
    assert (gpus.status, gpus.message) == ("ok", None)
    assert (gpus.driver_version, gpus.cuda_version) == ("550.54.15", "12.4")
    [sample] = gpus.sample()
    assert sample.ok and sample.error is None
    assert sample.name == "NVIDIA H100 80GB HBM3"
    assert (sample.memory_total_bytes, sample.memory_used_bytes) == (80 * GIB, 30 * GIB)
    assert (sample.util_gpu, sample.util_memory, sample.temperature_c) == (87, 41, 66)
    assert (sample.power_draw_w, sample.power_limit_w) == (412.5, 700.0)
    assert (sample.clock_sm_mhz, sample.clock_mem_mhz, sample.fan_percent) == (1755, 2619, 55)
    assert sample.pci_bus_id == "00000000:1B:00.0"
    assert sample.uuid is not None and sample.uuid.startswith("GPU-")
    assert sample.mig_mode is False
    assert sample.processes == (GpuProcess(4242, 29 * GIB, 83, "compute", None),)
    encoded = json.loads(json.dumps(sample.to_json()))
    assert encoded["processes"][0]["sm_util"] == 83
    assert encoded["power_draw_w"] == 412.5


def test_eight_gpus_init_once_read_static_fields_once_and_never_pcie(open_fake: Scenario) -> None:
    gpus = open_fake([{"memory_used": i * GIB, "utilization_gpu": [i, 10 * i]} for i in range(8)])
    for _ in range(3):
        samples = gpus.sample()
    assert [s.index for s in samples] == list(range(8))
    assert [s.memory_used_bytes for s in samples] == [i * GIB for i in range(8)]
    assert [s.util_gpu for s in samples] == [i for i in range(8)]  # third sample: first value again
    assert len({s.uuid for s in samples}) == 8
    assert len({s.pci_bus_id for s in samples}) == 8
    assert calls("nvmlInitWithFlags") == 1
    assert calls("nvmlDeviceGetName") == 8
    assert calls("nvmlDeviceGetUUID") == 8
    assert calls("nvmlDeviceGetMemoryInfo") == 24
    assert calls("nvmlDeviceGetPcieThroughput") == 0


@pytest.mark.parametrize(
    ("missing", "absent"),
    [
        ("utilization", ("util_gpu", "util_memory")),
        ("temperature", ("temperature_c",)),
        ("power_draw", ("power_draw_w",)),
        ("power_limit", ("power_limit_w",)),
        ("clocks", ("clock_sm_mhz", "clock_mem_mhz")),
        ("fan", ("fan_percent",)),
        ("processes", ("processes",)),
        ("mig", ("mig_mode",)),
        ("uuid", ("uuid",)),
        ("pci", ("pci_bus_id",)),
    ],
)
def test_a_field_the_gpu_does_not_support_reads_as_none_and_the_rest_still_shows(
    open_fake: Scenario, missing: str, absent: tuple[str, ...]
) -> None:
    gpus = open_fake([{"not_supported": [missing], "processes": [{"pid": 7, "sm_util": 5}]}])
    [sample] = gpus.sample()
    assert sample.ok
    values = sample.to_json()
    for name in absent:
        assert values[name] is None, name
    present = {
        "util_gpu",
        "temperature_c",
        "power_draw_w",
        "power_limit_w",
        "clock_sm_mhz",
        "fan_percent",
        "processes",
        "mig_mode",
        "uuid",
        "pci_bus_id",
    } - set(absent)
    for name in present:
        assert values[name] is not None, name


def test_process_utilisation_not_supported_leaves_sm_share_unknown(open_fake: Scenario) -> None:
    gpus = open_fake([{"not_supported": ["process_utilization"], "processes": [{"pid": 7}]}])
    [sample] = gpus.sample()
    assert sample.processes == (GpuProcess(7, 512 * 1024**2, None, "compute", None),)


def test_an_older_driver_without_the_newer_calls_shows_those_fields_as_na(
    open_fake: Scenario,
) -> None:
    gpus = open_fake(
        [{"processes": [{"pid": 7}], "memory_used": GIB}],
        missing_functions=[
            "nvmlDeviceGetComputeRunningProcesses_v3",
            "nvmlDeviceGetGraphicsRunningProcesses_v3",
            "nvmlDeviceGetFanSpeed",
        ],
    )
    [sample] = gpus.sample()
    assert sample.ok
    assert (sample.processes, sample.fan_percent) == (None, None)
    assert sample.memory_used_bytes == GIB and sample.temperature_c is not None


def test_mig_enabled_gpu_shows_mig_and_its_instances_not_whole_gpu_utilisation(
    open_fake: Scenario,
) -> None:
    gpus = open_fake(
        [
            {
                "name": "NVIDIA A100-SXM4-80GB",
                "mig": True,
                "memory_used": 10 * GIB,
                "processes": [
                    {"pid": 11, "used_memory": 4 * GIB, "gpu_instance_id": 1, "sm_util": 50},
                    {"pid": 12, "used_memory": 6 * GIB, "gpu_instance_id": 2},
                ],
            },
            {"mig": False},
        ]
    )
    mig, plain = gpus.sample()
    assert mig.mig_mode is True and plain.mig_mode is False
    assert mig.util_gpu is None and plain.util_gpu is not None
    assert mig.processes is not None
    assert [(p.pid, p.gpu_instance_id, p.sm_util) for p in mig.processes] == [
        (11, 1, None),
        (12, 2, None),
    ]
    assert mig.memory_used_bytes == 10 * GIB


def test_gpu_lost_mid_run_becomes_an_error_row_and_other_gpus_carry_on(
    open_fake: Scenario,
) -> None:
    gpus = open_fake([{"name": "A", "memory_used": GIB}, {"name": "B", "lost_after": 2}])
    for _ in range(2):
        assert all(s.ok for s in gpus.sample())
    for _ in range(2):  # stays an error row, and keeps what was known about it
        first, lost = gpus.sample()
        assert first.ok and first.memory_used_bytes == GIB
        assert not lost.ok
        assert lost.error == "GPU is lost"
        assert lost.name == "B"
        assert lost.memory_total_bytes == 80 * GIB
        assert lost.uuid is not None
    slots = gpu_slots([first, lost], set())
    assert [s.healthy for s in slots] == [True, False]


@pytest.mark.parametrize(
    ("failure", "status", "words"),
    [
        ("library_missing", "no_driver", "libnvidia-ml.so.1 not found"),
        ("driver_not_loaded", "no_driver", "driver is not loaded"),
        ("version_mismatch", "error", "version mismatch"),
    ],
)
def test_no_usable_driver_is_a_normal_state_with_a_clear_message(
    open_fake: Scenario, failure: str, status: str, words: str
) -> None:
    gpus = open_fake(failure=failure)
    assert gpus.status == status
    assert gpus.message is not None and words in gpus.message
    assert gpus.sample() == []
    assert gpu_slots(gpus.sample(), set()) == ()


def test_driver_without_gpus_reports_no_device(open_fake: Scenario) -> None:
    gpus = open_fake([], driver_version="535.104.05")
    assert gpus.status == "no_device"
    assert gpus.message == "no GPU on this machine (NVIDIA driver 535.104.05)"


def test_a_broken_scenario_file_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"gpus": [{"nmae": "typo"}]}))
    monkeypatch.setenv(gpu.FAKE_ENV, str(path))
    gpus = Gpus.open()
    assert gpus.status == "error"
    assert gpus.message is not None and "nmae" in gpus.message
    gpu.drop_fake()


def test_the_binding_raises_the_real_nvml_error_classes(open_fake: Scenario) -> None:
    open_fake([{"not_supported": ["fan"], "lost_after": 0}])
    nvml = gpu.pynvml
    assert nvml is not None
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetFanSpeed(handle)
    with pytest.raises(nvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceGetMemoryInfo(handle)
    with pytest.raises(nvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetHandleByIndex(5)


def test_closing_shuts_nvml_down(open_fake: Scenario) -> None:
    gpus = open_fake()
    driver = gpu.fake_driver()
    assert driver is not None and driver.initialised == 1
    gpus.close()
    assert driver.initialised == 0
    assert gpus.sample() == []


# ---- the scheduler's inventory -------------------------------------------------------------


def sample(
    index: int, used: int, procs: tuple[GpuProcess, ...] | None, ok: bool = True
) -> GpuSample:
    return GpuSample(index, "GPU", 80 * GIB, used, ok=ok, processes=procs)


@pytest.mark.parametrize(
    ("samples", "ours", "expected"),
    [
        # Nothing running: driver overhead still counts as taken.
        ([sample(0, GIB // 2, ())], set(), [scheduler.GpuSlot(0, 80 * GIB, GIB // 2)]),
        # Our job's memory is ours; someone else's notebook is not.
        (
            [sample(0, 30 * GIB, (GpuProcess(1, 20 * GIB), GpuProcess(2, 10 * GIB)))],
            {1},
            [
                scheduler.GpuSlot(
                    0, 80 * GIB, 10 * GIB, others=(scheduler.OtherProcess(2, 10 * GIB),)
                )
            ],
        ),
        # No process list: everything in use counts as someone else's.
        ([sample(0, 30 * GIB, None)], {1}, [scheduler.GpuSlot(0, 80 * GIB, 30 * GIB)]),
        # A process whose memory the driver cannot tell: counted as in use by others.
        (
            [sample(0, 5 * GIB, (GpuProcess(1, None),))],
            {1},
            [scheduler.GpuSlot(0, 80 * GIB, 5 * GIB)],
        ),
        # An error row is an unhealthy slot.
        (
            [sample(0, 0, None), sample(1, 0, None, ok=False)],
            set(),
            [scheduler.GpuSlot(0, 80 * GIB, 0), scheduler.GpuSlot(1, 80 * GIB, 0, healthy=False)],
        ),
    ],
)
def test_gpu_slots(
    samples: list[GpuSample], ours: set[int], expected: list[scheduler.GpuSlot]
) -> None:
    assert list(gpu_slots(samples, ours)) == expected


def test_gpu_slots_carry_topology_and_mig_instances() -> None:
    mig = (scheduler.MigSlot("MIG-x", "1g.10gb", 10 * GIB),)
    slots = gpu_slots(
        [sample(0, 0, ()), sample(1, 0, ())],
        set(),
        {0: GpuPlacement(0, 0), 1: GpuPlacement(1, 1, mig)},
    )
    assert [(s.numa_node, s.switch, s.mig) for s in slots] == [(0, 0, ()), (1, 1, mig)]


def test_a_jobs_gpu_memory_is_its_processes_on_its_fullest_gpu() -> None:
    samples = [
        sample(0, 0, (GpuProcess(10, 3 * GIB), GpuProcess(11, 2 * GIB), GpuProcess(99, GIB))),
        sample(1, 0, (GpuProcess(12, 4 * GIB), GpuProcess(13, None))),
    ]
    owners = {10: 1, 11: 1, 12: 1, 13: 2}
    assert job_gpu_memory(samples, owners) == {1: 5 * GIB}


EIGHT_WITH_TOPOLOGY = [{"numa_node": i // 4, "switch": i // 2} for i in range(8)]


def test_topology_from_the_driver_groups_gpus_by_pcie_switch_and_numa_node(
    open_fake: Scenario,
) -> None:
    gpus = open_fake(EIGHT_WITH_TOPOLOGY)
    placement = gpus.placement()
    assert [placement[i].numa_node for i in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [placement[i].switch for i in range(8)] == [0, 0, 2, 2, 4, 4, 6, 6]
    assert calls("nvmlDeviceGetTopologyCommonAncestor") == 28  # each pair once
    gpus.placement()
    assert calls("nvmlDeviceGetTopologyCommonAncestor") == 28  # then cached


def test_without_topology_support_placement_is_unknown(open_fake: Scenario) -> None:
    gpus = open_fake([{}, {}])
    assert gpus.placement() == {0: GpuPlacement(), 1: GpuPlacement()}


def test_mig_instances_are_read_as_allocatable_slots_with_their_uuids(
    open_fake: Scenario,
) -> None:
    gpus = open_fake(
        [
            {
                "name": "NVIDIA A100-SXM4-80GB",
                "mig": True,
                "mig_instances": [
                    {"profile": "1g.10gb", "memory_total": 10 * GIB},
                    {"profile": "1g.10gb", "memory_total": 10 * GIB, "uuid": "MIG-given"},
                    {"profile": "3g.40gb", "memory_total": 40 * GIB},
                ],
            },
            {},
        ]
    )
    place = gpus.placement()
    assert place[1].mig == ()
    assert [(m.profile, m.memory_total_bytes) for m in place[0].mig] == [
        ("1g.10gb", 10 * GIB),
        ("1g.10gb", 10 * GIB),
        ("3g.40gb", 40 * GIB),
    ]
    uuids = [m.uuid for m in place[0].mig]
    assert uuids[1] == "MIG-given" and all(u.startswith("MIG-") for u in uuids)
    assert len(set(uuids)) == 3
    slots = gpu_slots(gpus.sample(), set(), place)
    decisions = scheduler.plan(
        [scheduler.Want(1, mig_profile="3g.40gb")],
        [],
        {},
        scheduler.Resources(slots, 8),
        scheduler.Settings(),
    )
    assert decisions == [scheduler.Start(1, (0,), (uuids[2],))]


# ---- attributing GPU processes to jobs -------------------------------------------------------

TREE = """
import os, subprocess, sys, time
same = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
own = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print(same.pid, own.pid, flush=True)
time.sleep(60)
"""


@pytest.fixture
def job_tree() -> Iterator[tuple[int, int, int]]:
    """A job wrapper leading its own process group, with a child in the group and a child that
    made its own session: (wrapper pid, child in group, child in its own group)."""
    wrapper = subprocess.Popen(
        [sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert wrapper.stdout is not None
    same, own = (int(x) for x in wrapper.stdout.readline().split())
    yield wrapper.pid, same, own
    for group in (own, wrapper.pid):
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wrapper.wait()


def test_gpu_processes_are_attributed_to_the_job_whose_group_they_are_in(
    open_fake: Scenario, job_tree: tuple[int, int, int]
) -> None:
    wrapper, same, own = job_tree
    stranger = os.getpid()
    gpus = open_fake(
        [
            {
                "memory_used": 30 * GIB,
                "processes": [
                    {"pid": same, "used_memory": 10 * GIB},
                    {"pid": own, "used_memory": 8 * GIB},
                    {"pid": stranger, "used_memory": 12 * GIB},
                ],
            }
        ]
    )
    samples = gpus.sample()
    not_ours: set[int] = set()
    owners = attribute_processes(samples, {wrapper: 12}, not_ours)
    assert owners == {same: 12, own: 12}
    assert not_ours == {stranger}
    [slot] = gpu_slots(samples, set(owners))
    assert slot.memory_used_other_bytes == 12 * GIB


def test_a_process_that_ended_belongs_to_no_job(open_fake: Scenario) -> None:
    done = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    done.wait()
    gpus = open_fake([{"processes": [{"pid": done.pid}]}])
    assert attribute_processes(gpus.sample(), {done.pid: 3}) == {}


def test_sampling_cost_per_tick_is_small(open_fake: Scenario) -> None:
    gpus = open_fake([{"processes": [{"pid": 10 + i, "sm_util": i}]} for i in range(8)])
    gpus.sample()
    start = time.process_time()
    for _ in range(50):
        gpus.sample()
    per_tick = (time.process_time() - start) / 50
    assert per_tick < 0.01, f"{per_tick * 1000:.1f} ms of CPU per tick for 8 GPUs"
