"""Fixed data for the TUI snapshot tests: jobs in every state, and a telemetry snapshot whose GPU
part comes from the real NVML adapter running against the fake driver."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from workbench.db.store import Job, JobEvent, JobState, Resources
from workbench.telemetry import fakenvml

NOW = 1_800_000_000.0
GiB = 1024**3


def job(job_id: int, name: str, state: str, **extra: Any) -> Job:
    fields: dict[str, Any] = {
        "id": job_id,
        "name": name,
        "kind": "command",
        "state": state,
        "spec": {"argv": ["python", "train.py"]},
        "argv": ["python", "train.py", "--epochs", "3"],
        "cwd": "/srv/project",
        "env": {},
        "priority": 0,
        "group": "default",
        "retries": 0,
        "attempt": 1,
        "time_limit": None,
        "fail_unrunnable": False,
        "pipeline_id": None,
        "stage": None,
        "created_at": NOW - 600 + job_id * 30,
        "started_at": None,
        "ended_at": None,
        "exit_code": None,
        "reason": None,
        "pid": None,
        "pid_start": None,
        "granted_gpus": None,
        "intent": None,
        "progress": None,
        "progress_msg": None,
        "peak_gpu_mem": None,
        "mean_gpu_util": None,
    }
    wanted = {k: extra.pop(k) for k in ("gpus", "gpu_mem", "cpus", "mem") if k in extra}
    fields.update(extra)
    fields["state"] = JobState(fields["state"])
    return Job(**fields, resources=Resources(**wanted))


JOBS = [
    job(
        1,
        "prepare data",
        "succeeded",
        kind="ingest",
        exit_code=0,
        reason="exited with code 0",
        progress=1.0,
        progress_msg="v1: 344 rows",
        cpus=1.0,
    ),
    job(
        2,
        "train mlp",
        "running",
        kind="train",
        gpus=1.0,
        granted_gpus=[0],
        pid=4242,
        started_at=NOW - 530,
        progress=0.4,
        progress_msg="epoch 12/30 val_accuracy 0.951",
        peak_gpu_mem=12 * GiB,
        mean_gpu_util=87.0,
    ),
    job(
        3,
        "sweep lr=0.01",
        "queued",
        kind="train",
        gpus=1.0,
        reason="waiting for 1 GPU (0 of 1 free)",
        group="sweeps",
    ),
    job(4, "evaluate", "blocked", kind="test", reason="dependency 5 failed", deps=((5, "ok"),)),
    job(5, "flaky step", "failed", exit_code=3, reason="exited with code 3", attempt=2, retries=1),
    job(
        6,
        "long export",
        "paused",
        kind="export",
        pid=4300,
        reason="paused",
        progress=0.2,
        group="exports",
    ),
    job(7, "old experiment", "cancelled", exit_code=143, reason="cancelled (killed by SIGTERM)"),
]

EVENTS = {
    2: [
        JobEvent(2, NOW - 540, "queued", "submitted"),
        JobEvent(2, NOW - 530, "running", "started"),
    ],
}
LOGS = {
    2: "loading dataset penguins v1 (344 rows)\nepoch 1/30: train_loss 1.0312, val_accuracy 0.6812\nepoch 2/30: train_loss 0.8123, val_accuracy 0.8261\n"
}

HOST = {
    "cpu": {
        "total": 37.5,
        "per_core": [45.0, 30.0, 80.0, 12.5],
        "load_avg": [1.5, 1.2, 0.9],
        "count": 4,
    },
    "memory": {
        "total_bytes": 64 * GiB,
        "used_bytes": 20 * GiB,
        "available_bytes": 44 * GiB,
        "percent": 31.25,
    },
    "swap": {"total_bytes": 8 * GiB, "used_bytes": 0, "percent": 0.0},
    "network": {
        "eth0": {
            "rx_bytes_per_s": 12.5 * 1024**2,
            "tx_bytes_per_s": 640 * 1024,
            "rx_bytes": 0,
            "tx_bytes": 0,
        }
    },
    "disks": [
        {
            "mount": "/",
            "device": "/dev/nvme0n1p1",
            "fstype": "ext4",
            "total_bytes": 1024 * GiB,
            "used_bytes": 400 * GiB,
            "free_bytes": 624 * GiB,
            "percent": 39.1,
        }
    ],
    "disk_io": {"nvme0n1": {"read_bytes_per_s": 150 * 1024**2, "write_bytes_per_s": 20 * 1024**2}},
    "folders": {"lake_bytes": 3 * GiB, "runs_bytes": 12 * GiB, "measured_at": NOW},
}


def fake_gpu_snapshot(tmp_path: Path) -> dict[str, Any]:
    """Two fake H100s through the real adapter: GPU 0 busy with job 2, GPU 1 idle."""
    from workbench.telemetry.gpu import Gpus

    scenario = fakenvml.write_scenario(
        tmp_path / "scenario.json",
        [
            {
                "name": "NVIDIA H100 80GB HBM3",
                "memory_total": 80 * GiB,
                "memory_used": 13 * GiB,
                "utilization_gpu": 92,
                "utilization_memory": 61,
                "temperature": 71,
                "power_draw_w": 512.0,
                "power_limit_w": 700.0,
                "processes": [{"pid": 4242, "used_memory": 12 * GiB, "sm_util": 88}],
            },
            {
                "name": "NVIDIA H100 80GB HBM3",
                "memory_total": 80 * GiB,
                "memory_used": 1 * GiB,
                "utilization_gpu": 0,
                "utilization_memory": 0,
                "temperature": 34,
                "power_draw_w": 70.0,
                "power_limit_w": 700.0,
                "processes": [{"pid": 5150, "used_memory": 1 * GiB, "sm_util": 3}],
            },
        ],
    )
    previous = os.environ.get("WORKBENCH_FAKE_NVML")
    os.environ["WORKBENCH_FAKE_NVML"] = str(scenario)
    try:
        gpus = Gpus.open()
        samples = [s.to_json() for s in gpus.sample()]
        status, message = gpus.status, gpus.message
        driver, cuda = gpus.driver_version, gpus.cuda_version
        gpus.close()
    finally:
        if previous is None:
            os.environ.pop("WORKBENCH_FAKE_NVML", None)
        else:
            os.environ["WORKBENCH_FAKE_NVML"] = previous
    for sample in samples:
        sample["time"] = NOW
        for proc in sample.get("processes") or []:
            if proc["pid"] == 4242:
                proc.update({"job_id": 2, "job_name": "train mlp", "command": "python"})
            else:
                proc.update({"job_id": None, "job_name": None, "command": "jupyter-lab"})
    return {
        "schema": 1,
        "time": NOW,
        "interval_s": 1.0,
        "gpu_status": status,
        "gpu_message": message,
        "driver_version": driver,
        "cuda_version": cuda,
        "gpus": samples,
        **HOST,
    }


def no_gpu_snapshot() -> dict[str, Any]:
    return {
        "schema": 1,
        "time": NOW,
        "interval_s": 1.0,
        "gpu_status": "no_driver",
        "gpu_message": "no NVIDIA driver on this machine (libnvidia-ml.so.1 not found)",
        "driver_version": None,
        "cuda_version": None,
        "gpus": [],
        **HOST,
    }


def history(with_gpus: bool) -> list[dict[str, Any]]:
    rows = []
    for i in range(60):
        wave = (i % 20) / 20
        gpus = [
            {
                "index": 0,
                "util": 60 + 35 * wave,
                "memory_util": 50.0,
                "memory_used": (8 + 5 * wave) * GiB,
                "power_w": 300 + 200 * wave,
                "temperature_c": 60 + 10 * wave,
            },
            {
                "index": 1,
                "util": 0.0,
                "memory_util": 0.0,
                "memory_used": 1.0 * GiB,
                "power_w": 70.0,
                "temperature_c": 34.0,
            },
        ]
        rows.append(
            {
                "time": NOW - 60 + i,
                "span_s": 1.0,
                "cpu": 20 + 30 * wave,
                "load1": 1.0,
                "memory_used": (18 + 2 * wave) * GiB,
                "swap_used": 0,
                "net_rx": 10 * 1024**2 * wave,
                "net_tx": 1024**2,
                "disk_read": 0,
                "disk_write": 0,
                "gpus": gpus if with_gpus else [],
            }
        )
    return rows


FILL_STATES = ("succeeded", "succeeded", "failed", "cancelled", "succeeded", "blocked", "paused")


def fill_jobs(store: Any, count: int, now: float | None = None) -> list[int]:
    """`count` command jobs, most of them ended, some blocked and paused (states a daemon leaves
    alone): the table a busy queue builds over months, for the Queue's tests and benchmark."""
    import time

    from workbench.db.store import JobRequest

    requests = [
        JobRequest(
            name=f"sweep point {i} lr={0.001 * (1 + i % 9):.3f}",
            kind="command",
            spec={"argv": ["python", "train.py", str(i)]},
            cwd="/srv/project",
            env={"PATH": "/usr/bin", "HOME": "/home/user"},
            argv=["python", "train.py", str(i)],
            resources=Resources(cpus=1.0),
            paused=True,
        )
        for i in range(count)
    ]
    ids = store.submit_many(requests)
    now = now or time.time()
    with store.transaction() as conn:
        # One job a minute, the newest a minute old: ages like a queue's over weeks.
        conn.executemany(
            "UPDATE jobs SET state = ?, reason = ?, created_at = ?, ended_at = ?, exit_code = ?"
            " WHERE id = ?",
            [
                (
                    state,
                    {
                        "failed": "exited with code 1",
                        "cancelled": "cancelled (killed by SIGTERM)",
                        "paused": "paused",
                        "blocked": "dependency 1 failed",
                    }.get(state),
                    now - 60 * (count - index),
                    now - 60 * (count - index) + 30
                    if state in ("succeeded", "failed", "cancelled")
                    else None,
                    {"succeeded": 0, "failed": 1, "cancelled": 143}.get(state),
                    job_id,
                )
                for index, (job_id, state) in enumerate(
                    zip(ids, (FILL_STATES[i % len(FILL_STATES)] for i in range(count)), strict=True)
                )
            ],
        )
    return ids


# What psutil would say of the GPU process (pid 4242 is job 2's training process).
PROCESSES: dict[int, dict[str, Any]] = {
    4242: {
        "user": "alice",
        "cpu_percent": 98.0,
        "rss_bytes": 6 * GiB,
        "started": NOW - 530,
        "command": "python -P -m jobs 2 (train mlp on penguins v1)",
    },
    5150: {
        "user": "bob",
        "cpu_percent": 4.0,
        "rss_bytes": 900 * 1024**2,
        "started": NOW - 7200,
        "command": "/usr/bin/python3 /usr/local/bin/jupyter-lab --no-browser --port 8888",
    },
}
