"""bench/gpu_check.py against the fake NVML (its plumbing: daemon, jobs, verdicts), and the GPU
paths it checks that can be proven without a GPU (export's choice of onnxruntime provider)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from workbench.daemon.link import lock_holder
from workbench.paths import Home

SCRIPT = ROOT / "bench" / "gpu_check.py"
RESULTS = ROOT / "bench" / "RESULTS.md"


def run_check(*args: str, timeout: float = 290) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("WORKBENCH_FAKE_NVML", None)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def processes_of(home: Path) -> list[int]:
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("WORKBENCH_HOME") == str(home):
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


@pytest.mark.slow
def test_the_gpu_check_runs_its_plumbing_on_the_fake_driver_and_leaves_nothing_running(
    home: Home, tmp_path: Path
) -> None:
    before = RESULTS.read_bytes()
    report = tmp_path / "report.json"
    done = run_check(
        "--fake", "--home", str(home.root), "--json-out", str(report), "--budget", "240"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = {r["name"]: r for r in json.loads(report.read_text())["results"]}
    verdicts = {name: r["verdict"] for name, r in results.items()}
    assert verdicts == {
        "nvml": "PASS",
        "nvidia-smi": "NOT AVAILABLE",
        "daemon start": "PASS",
        "visible devices": "PASS",
        "torch sees grant": "NOT AVAILABLE",
        "pair overlap": "PASS",
        "pair caps": "NOT AVAILABLE",
        "cap enforced": "NOT AVAILABLE",
        "bf16 autocast": "NOT AVAILABLE",
        "onnxruntime cuda": "NOT AVAILABLE",
        "daemon stop": "PASS",
    }, done.stdout
    # The figures come from the fake driver and from jobs that really ran.
    assert "GPU 0 NVIDIA H200: memory 0.5 GiB used of 140.4 GiB" in results["nvml"]["figures"][1]
    assert results["visible devices"]["detail"] == "CUDA_VISIBLE_DEVICES=0 for a job granted [0]"
    assert results["pair overlap"]["detail"].startswith("both on GPU 0 at once for")
    assert "has no CUDA here" in results["pair caps"]["detail"]
    assert "has no CUDAExecutionProvider" in results["onnxruntime cuda"]["detail"]
    # The train job records its autocast, the export job why it did not time the GPU.
    assert "device cpu" in results["bf16 autocast"]["figures"][0]
    assert "autocast None" in results["bf16 autocast"]["figures"][0]
    assert "onnxruntime on the GPU: torch sees no CUDA device" in " ".join(
        results["onnxruntime cuda"]["figures"]
    )
    assert "| pair overlap     | PASS " in done.stdout
    # Nothing left behind: no daemon, no job, no process of the home; RESULTS.md untouched.
    assert lock_holder(home) is None
    assert processes_of(home.root) == []
    assert RESULTS.read_bytes() == before


def test_fake_figures_are_never_written_into_the_results(tmp_path: Path) -> None:
    before = RESULTS.read_bytes()
    done = run_check("--fake", "--write", "--home", str(tmp_path), timeout=60)
    assert done.returncode == 2
    assert "--write records the real driver only" in done.stderr
    assert RESULTS.read_bytes() == before
    assert not (tmp_path / "state.db").exists()


def test_taking_the_section_from_a_file_without_it_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "RESULTS.md"
    other.write_text("# Benchmark results\n")
    done = run_check("--take", str(other), timeout=60)
    assert done.returncode == 2
    assert "no 'GPU check' section in it" in done.stderr


def tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnxruntime_falls_back_to_the_cpu_quietly_so_export_asks_the_session_what_it_runs_on(
    tmp_path: Path,
) -> None:
    import onnxruntime as ort

    from jobs.export import session_on

    model = tiny_onnx(tmp_path / "tiny.onnx")
    session, why_not = session_on(model, "CPUExecutionProvider")
    assert session is not None and why_not is None
    assert session.get_providers() == ["CPUExecutionProvider"]
    session, why_not = session_on(model, "CUDAExecutionProvider")
    if "CUDAExecutionProvider" in ort.get_available_providers():  # onnxruntime-gpu
        assert (session is None) == (why_not is not None)
        assert session is None or session.get_providers()[0] == "CUDAExecutionProvider"
        return
    # Asking for CUDA gives a session all the same, on the CPU: trusting the request would
    # time the CPU and call it the GPU.
    quiet = ort.InferenceSession(str(model), providers=["CUDAExecutionProvider"])
    assert quiet.get_providers() == ["CPUExecutionProvider"]
    assert session is None
    assert why_not == f"onnxruntime {ort.__version__} has no CUDAExecutionProvider"
