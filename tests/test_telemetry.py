"""Host telemetry with real psutil, history in a real store, per-job GPU use, `top --once` data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from workbench.config import Config
from workbench.daemon.executors import Handle
from workbench.daemon.supervisor import Daemon
from workbench.db.store import RUNNING, STARTING, Event, JobRequest, Store
from workbench.paths import Home
from workbench.queue import scheduler
from workbench.telemetry import fakenvml, gpu
from workbench.telemetry import sampler as telemetry
from workbench.telemetry.gpu import Gpus

GIB = 1024**3
DAY = 86400.0


@pytest.fixture
def fake_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """fake_gpus(gpus, **scenario): point WORKBENCH_FAKE_NVML at that simulated machine."""

    def use(gpus: list[dict[str, Any]], **scenario: Any) -> Path:
        path = tmp_path / f"scenario-{time.monotonic_ns()}.json"
        fakenvml.write_scenario(path, {**scenario, "gpus": gpus})
        monkeypatch.setenv(gpu.FAKE_ENV, str(path))
        return path

    yield use
    monkeypatch.delenv(gpu.FAKE_ENV, raising=False)
    gpu.drop_fake()


@pytest.fixture
def tmp_home(tmp_path: Path) -> Home:
    return Home(tmp_path / "home").ensure()


@pytest.fixture
def store(tmp_home: Home) -> Iterator[Store]:
    opened = Store.open(tmp_home.state_db)
    yield opened
    opened.close()


def running_job(store: Store, pid: int, name: str = "train-mlp") -> int:
    job_id = store.submit(JobRequest(name=name, kind="command", spec={}, cwd="/", env={}))
    assert store.transition(job_id, Event.START, "starting", started_at=time.time()) == STARTING
    assert store.transition(job_id, Event.LAUNCHED, "started", pid=pid) == RUNNING
    return job_id


@pytest.fixture
def sleeper() -> Iterator[int]:
    """A real process leading its own process group (as a job wrapper does)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    yield proc.pid
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# ---- top --once --json ---------------------------------------------------------------------


def test_snapshot_shape_with_gpus_and_host(fake_gpus: Any, tmp_home: Home) -> None:
    fake_gpus([{"name": "NVIDIA L4", "memory_used": GIB}, {"name": "NVIDIA L4"}])
    (tmp_home.lake / "part-0.parquet").write_bytes(b"x" * 10_000)
    (tmp_home.runs / "7").mkdir()
    (tmp_home.runs / "7" / "stdout.log").write_bytes(b"y" * 300)
    snap = telemetry.snapshot(tmp_home, interval_s=0.2)
    assert json.loads(json.dumps(snap)) == snap
    assert snap["schema"] == 1
    assert abs(snap["time"] - time.time()) < 5
    assert snap["interval_s"] >= 0.19
    assert (snap["gpu_status"], snap["gpu_message"]) == ("ok", None)
    assert [g["name"] for g in snap["gpus"]] == ["NVIDIA L4", "NVIDIA L4"]
    assert snap["gpus"][0]["memory_used_bytes"] == GIB
    cpu = snap["cpu"]
    assert len(cpu["per_core"]) == psutil.cpu_count() == cpu["count"]
    assert 0 <= cpu["total"] <= 100
    assert len(cpu["load_avg"]) == 3
    assert snap["memory"]["total_bytes"] == psutil.virtual_memory().total
    assert 0 < snap["memory"]["used_bytes"] < snap["memory"]["total_bytes"]
    assert "total_bytes" in snap["swap"]
    assert "lo" not in snap["network"]
    for counters in snap["network"].values():
        assert counters["rx_bytes_per_s"] is not None and counters["rx_bytes_per_s"] >= 0
    assert "/" in {d["mount"] for d in snap["disks"]}
    root = next(d for d in snap["disks"] if d["mount"] == "/")
    assert 0 < root["used_bytes"] < root["total_bytes"]
    assert not any(name.startswith("loop") for name in snap["disk_io"])
    assert snap["folders"]["lake_bytes"] == 10_000
    assert snap["folders"]["runs_bytes"] == 300


def test_snapshot_without_a_driver_says_why_and_still_shows_the_host(
    fake_gpus: Any, tmp_home: Home
) -> None:
    fake_gpus([], failure="library_missing")
    snap = telemetry.snapshot(tmp_home, interval_s=0.05)
    assert snap["gpus"] == []
    assert snap["gpu_status"] == "no_driver"
    assert "libnvidia-ml" in snap["gpu_message"]
    assert snap["cpu"]["total"] is not None


def test_snapshot_names_the_job_beside_its_gpu_process(
    fake_gpus: Any, tmp_home: Home, store: Store, sleeper: int
) -> None:
    job_id = running_job(store, sleeper, "train-mlp")
    fake_gpus([{"processes": [{"pid": sleeper, "used_memory": 3 * GIB}]}])
    snap = telemetry.snapshot(tmp_home, interval_s=0.05)
    [proc] = snap["gpus"][0]["processes"]
    assert (proc["pid"], proc["job_id"], proc["job_name"]) == (sleeper, job_id, "train-mlp")
    assert proc["command"] == psutil.Process(sleeper).name()
    assert f"pid {sleeper}  3.0 GiB" in telemetry.render_text(snap)
    assert f"job {job_id} train-mlp" in telemetry.render_text(snap)


def test_repeated_snapshots_open_nvml_once_and_show_a_lost_gpu(
    fake_gpus: Any, tmp_home: Home
) -> None:
    fake_gpus([{"name": "NVIDIA L4"}, {"name": "NVIDIA T4", "lost_after": 1}])
    with telemetry.Snapshots(tmp_home, interval_s=0.05) as snapshots:
        first, second = snapshots.take(), snapshots.take()
        driver = gpu.fake_driver()
        assert driver is not None and driver.calls["nvmlInitWithFlags"] == 1
    assert [g["ok"] for g in first["gpus"]] == [True, True]
    assert [g["ok"] for g in second["gpus"]] == [True, False]
    text = telemetry.render_text(second)
    assert "GPU 1    NVIDIA T4  ERROR: GPU is lost" in text
    assert "GPU 0    NVIDIA L4  util 0%" in text


# ---- host rates (real psutil) --------------------------------------------------------------


def test_cpu_busy_shows_up_as_about_one_core_of_work() -> None:
    host = telemetry.HostSampler()
    first = host.read(time.time())
    assert first["cpu"]["total"] is None  # no rate before a second reading
    assert first["interval_s"] is None
    end = time.perf_counter() + 0.6
    while time.perf_counter() < end:
        pass
    second = host.read(time.time())
    busy_cores = sum(c for c in second["cpu"]["per_core"] if c is not None) / 100
    assert busy_cores >= 0.7, second["cpu"]


def _whole_disk(folder: Path) -> str | None:
    """The /sys/block name of the disk holding `folder` (a partition resolves to its disk)."""
    device = os.stat(folder).st_dev
    node = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}")
    if not node.exists():
        return None  # tmpfs, overlay and other filesystems without a block device
    node = node.resolve()
    return node.parent.name if (node / "partition").exists() else node.name


def test_disk_writes_show_up_as_a_write_rate(tmp_path: Path) -> None:
    disks = set(telemetry._list_disks() or [])
    # The temporary folder first; where it is in memory, a temporary folder in the checkout.
    with tempfile.TemporaryDirectory(dir=Path.cwd(), prefix=".wb-disk-test-") as in_checkout:
        folder, disk = next(
            (
                (folder, _whole_disk(folder))
                for folder in (tmp_path, Path(in_checkout))
                if _whole_disk(folder) in disks
            ),
            (None, None),
        )
        if folder is None or disk is None:
            pytest.skip("neither the temporary folder nor the checkout is on a listed disk")
        host = telemetry.HostSampler()
        start = time.time()
        host.read(start)
        with open(folder / "blob", "wb") as out:
            out.write(os.urandom(16 * 1024**2))
            out.flush()
            os.fsync(out.fileno())
        now = time.time()
        written = host.read(now)["disk_io"][disk]["write_bytes_per_s"] * (now - start)
        (folder / "blob").unlink()  # 16 MiB: not left in pytest's folder
    assert written >= 15 * 1024**2


def test_folder_sizes_are_walked_a_little_at_a_time(tmp_path: Path) -> None:
    for i in range(40):
        folder = tmp_path / "lake" / f"d{i}"
        folder.mkdir(parents=True)
        (folder / "f").write_bytes(b"z" * 100)
    sizes = telemetry.FolderSizes({"lake": tmp_path / "lake", "runs": tmp_path / "nope"})
    steps = 0
    while sizes.measured_at is None:
        sizes.step(1000.0, budget_s=0.0)  # one folder per step
        steps += 1
        assert sizes.sizes["lake"] is None or sizes.measured_at is not None
    assert steps > 10
    assert sizes.sizes == {"lake": 4000, "runs": None}
    (tmp_path / "lake" / "more").write_bytes(b"m" * 50)
    sizes.step(1010.0, budget_s=None)  # not due yet: 30 s between passes
    assert sizes.sizes["lake"] == 4000
    sizes.step(1031.0, budget_s=None)
    assert sizes.sizes["lake"] == 4050


# ---- the daemon's sampler: history and per-job GPU use ---------------------------------------


def test_each_tick_is_kept_in_history_and_as_the_latest_snapshot(
    fake_gpus: Any, tmp_home: Home, store: Store
) -> None:
    fake_gpus([{"utilization_gpu": [10, 30], "memory_used": [GIB, 2 * GIB], "power_draw_w": 100}])
    gpus = Gpus.open()
    sampler = telemetry.Sampler(store, tmp_home, gpus, Config())
    start = float(int(time.time()))  # history keeps times to the millisecond
    for i in range(4):
        sampler.tick({}, now=start + i)
        time.sleep(0.05)  # CPU time advances in 10 ms steps
    rows = telemetry.history(store, start - 1, start + 10)
    assert [round(r["time"] - start, 3) for r in rows] == [0, 1, 2, 3]
    assert [r["gpus"][0]["util"] for r in rows] == [10, 30, 10, 30]
    assert [r["gpus"][0]["memory_used"] for r in rows] == [GIB, 2 * GIB, GIB, 2 * GIB]
    assert rows[-1]["cpu"] is not None and rows[-1]["memory_used"] > 0
    assert telemetry.history(store, start + 1.5, start + 2.5)[0]["gpus"][0]["util"] == 10
    [bucket] = telemetry.history(store, start, start + 3, bucket_s=3600)
    assert bucket["gpus"][0]["util"] == 20
    latest = telemetry.latest(store)
    assert latest is not None and latest["time"] == start + 3
    assert latest["gpus"][0]["util_gpu"] == 30
    gpus.close()


def test_history_is_thinned_to_minute_averages_after_the_history_window(
    fake_gpus: Any, tmp_home: Home, store: Store
) -> None:
    fake_gpus([{"utilization_gpu": [0, 100], "temperature": [40, 60]}])
    gpus = Gpus.open()
    sampler = telemetry.Sampler(store, tmp_home, gpus, Config())
    now = 1_800_000_000.0  # a whole minute
    old = now - 2 * DAY
    sampler.tick({}, now=now - 40 * DAY)  # older than thinned rows are kept
    for second in range(120):  # two whole minutes, two days ago
        sampler.tick({}, now=old + second)
    assert len(telemetry.history(store, old, old + 120)) == 120  # all still at 1 s
    for second in range(5):  # recent: the sampler thins as it goes
        sampler.tick({}, now=now + second)
    rows = telemetry.history(store, now - 50 * DAY, now + 10)
    thinned = [r for r in rows if r["span_s"] == 60]
    assert [r["time"] for r in thinned] == [old, old + 60]
    assert [r["gpus"][0]["util"] for r in thinned] == [50, 50]
    assert [r["gpus"][0]["temperature_c"] for r in thinned] == [50, 50]
    assert [r["time"] - now for r in rows if r["span_s"] == 1] == [0, 1, 2, 3, 4]
    assert all(r["time"] > now - 30 * DAY for r in rows)


def test_a_full_day_is_kept_at_one_second_resolution(
    fake_gpus: Any, tmp_home: Home, store: Store
) -> None:
    fake_gpus([{}])
    gpus = Gpus.open()
    sampler = telemetry.Sampler(store, tmp_home, gpus, Config())
    now = 1_800_000_000.0
    for second in range(90):
        sampler.tick({}, now=now - DAY + 60 + second)  # just inside 24 h
    for second in range(90):
        sampler.tick({}, now=now - DAY - 180 + second)  # just outside
    assert telemetry.thin(store, now, keep_raw_s=Config().history_s) == 90
    rows = telemetry.history(store, now - 2 * DAY, now)
    assert [r["span_s"] for r in rows].count(1) == 90
    assert [r["span_s"] for r in rows].count(60) == 2  # 90 s spread over two minutes
    assert telemetry.thin(store, now, keep_raw_s=Config().history_s) == 0
    gpus.close()


def test_running_jobs_get_their_peak_gpu_memory_and_mean_utilisation(
    fake_gpus: Any, tmp_home: Home, store: Store, sleeper: int
) -> None:
    job_id = running_job(store, sleeper)
    fake_gpus(
        [
            {
                "memory_used": 10 * GIB,
                "processes": [
                    {
                        "pid": sleeper,
                        "used_memory": [GIB, 3 * GIB, 2 * GIB],
                        "sm_util": [20, 60, 40],
                    },
                    {"pid": os.getpid(), "used_memory": 5 * GIB, "sm_util": 90},
                ],
            }
        ]
    )
    gpus = Gpus.open()
    sampler = telemetry.Sampler(store, tmp_home, gpus, Config())
    for _ in range(3):
        tick = sampler.tick({sleeper: job_id})
        time.sleep(0.002)
    assert tick.owners == {sleeper: job_id}
    job = store.get(job_id)
    assert job.peak_gpu_mem == 3 * GIB
    assert job.mean_gpu_util == 40.0
    gpus.close()


def test_the_daemon_sample_feeds_the_scheduler_and_the_history(
    fake_gpus: Any, tmp_home: Home, store: Store, sleeper: int
) -> None:
    job_id = running_job(store, sleeper)
    fake_gpus(
        [
            {
                "memory_used": 20 * GIB,
                "processes": [
                    {"pid": sleeper, "used_memory": 12 * GIB},
                    {"pid": os.getpid(), "used_memory": 7 * GIB},
                ],
            },
            {"lost_after": 0},
        ]
    )
    daemon = Daemon(tmp_home, Config())
    daemon.store = store
    daemon.gpus = Gpus.open()
    daemon.sampler = telemetry.Sampler(store, tmp_home, daemon.gpus, Config())
    handle = Handle("token", tmp_home.run_dir(job_id), sleeper, None)
    holding = scheduler.Holding(job_id, "default", (0,), 1.0, None, 0.0, None)
    daemon._track(job_id, handle, holding, None)
    try:
        daemon._sample()
        ours, lost = daemon.gpu_slots
        assert ours.memory_used_other_bytes == 8 * GIB  # 20 GiB in use, 12 of it our job's
        assert lost.healthy is False
        assert len(telemetry.history(store, time.time() - 60)) == 1
        assert store.get(job_id).peak_gpu_mem == 12 * GIB
    finally:
        daemon.gpus.close()
        for tracked in daemon.tracked.values():
            daemon._unwatch(tracked)


def test_a_tick_costs_little_cpu(fake_gpus: Any, tmp_home: Home, store: Store) -> None:
    fake_gpus([{"processes": [{"pid": os.getpid(), "sm_util": 10}]} for _ in range(8)])
    gpus = Gpus.open()
    sampler = telemetry.Sampler(store, tmp_home, gpus, Config())
    now = time.time()
    sampler.tick({}, now=now)
    start = time.process_time()
    for i in range(1, 51):
        sampler.tick({}, now=now + i)
    per_tick = (time.process_time() - start) / 50
    assert per_tick < 0.02, f"{per_tick * 1000:.1f} ms of CPU per tick"
    gpus.close()


def test_a_steady_gpu_job_does_not_wake_the_readers_of_jobs(
    fake_gpus: Any, tmp_home: Home, store: Store, sleeper: int
) -> None:
    """Samples go to telemetry.db; a job's GPU use is written to state.db only when it moves,
    so a reader polling data_version wakes for changes, not for every 1 Hz tick."""
    job_id = running_job(store, sleeper)
    fake_gpus([{"processes": [{"pid": sleeper, "used_memory": GIB, "sm_util": 50}]}])
    gpus = Gpus.open()
    sampler = telemetry.Sampler(store, tmp_home, gpus, Config())
    reader = Store.open(tmp_home.state_db)
    try:
        sampler.tick({sleeper: job_id})
        version = reader.data_version()
        for _ in range(5):
            sampler.tick({sleeper: job_id})
            time.sleep(0.002)
        assert reader.data_version() == version
        assert len(telemetry.history(store, 0)) == 6
        assert store.get(job_id).peak_gpu_mem == GIB
    finally:
        reader.close()
        gpus.close()
