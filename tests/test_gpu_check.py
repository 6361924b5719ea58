"""bench/gpu_check.py against the fake NVML (its plumbing: daemon, jobs, verdicts), and the GPU
paths it checks that can be proven without a GPU (export's choice of onnxruntime provider)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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
        "--fake", "--tiny", "--home", str(home.root), "--json-out", str(report), "--budget", "240"
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


def load_script() -> Any:
    """bench/gpu_check.py as a module (it is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_nvml_memory_is_compared_with_nvidia_smi_by_uuid_counting_what_the_driver_reserves() -> (
    None
):
    from workbench.telemetry.gpu import GpuSample

    check = load_script()
    mib = 1024**2
    samples = [
        GpuSample(0, "NVIDIA H200", 143771 * mib, 1103 * mib, uuid="GPU-aaa"),
        GpuSample(1, "NVIDIA H200", 143771 * mib, 40000 * mib, uuid="GPU-bbb"),
    ]
    fields = [*check.SMI_FIELDS, "memory.reserved"]
    # nvidia-smi lists by its own order; NVML's used includes the 590 MiB the driver reserves.
    agree = "GPU-bbb, 1, 143771, 39990, 590\nGPU-aaa, 0, 143771, 513, 590\n"
    figures, problems, compared = check.compare_with_smi(samples, agree, fields)
    assert (problems, compared) == ([], 2)
    assert figures[0] == (
        "GPU 0: total NVML 143771 MiB, nvidia-smi 143771 MiB; used NVML 1103 MiB,"
        " nvidia-smi 513 MiB (+ 590 MiB reserved)"
    )
    differ = "GPU-aaa, 0, 143000, 5000, 590\n"
    _, problems, compared = check.compare_with_smi(samples, differ, fields)
    assert compared == 1
    assert problems == [
        "GPU 0: total 143771 MiB by NVML, 143000 by nvidia-smi",
        "GPU 0: used 1103 MiB by NVML, 5000 (+590 reserved) by nvidia-smi",
        "GPU 1 (GPU-bbb) is not in nvidia-smi's list",
    ]
    # An older nvidia-smi (no memory.reserved) whose used equals NVML's; and [N/A] figures.
    older = "GPU-aaa, 0, 143771, 1100\nGPU-bbb, 1, [N/A], [N/A]\n"
    figures, problems, compared = check.compare_with_smi(samples, older, check.SMI_FIELDS)
    assert (problems, compared) == ([], 1)
    assert figures[1].endswith("nvidia-smi n/a; used NVML 40000 MiB, nvidia-smi n/a")


GIB = 1024**3
CAPPED = "GPU memory capped at 2.0 GiB of 139.8 GiB"


@pytest.mark.parametrize(
    ("log", "peak", "seen", "problems"),
    [
        (CAPPED, 0.02 * GIB, 0.6 * GIB, []),
        (CAPPED, 0.02 * GIB, None, []),  # no NVML sample caught it: torch's figure decides
        ("", 0.02 * GIB, 0.6 * GIB, ["job 7 did not cap its GPU memory"]),
        (CAPPED, None, None, ["job 7 recorded no gpu_mem_bytes (did it train on the GPU?)"]),
        (CAPPED, 2.5 * GIB, None, ["job 7 allocated 2560.0 MiB, over its cap of 2048.0 MiB"]),
        (CAPPED, 0.02 * GIB, 2.2 * GIB, ["job 7 held 2252.8 MiB by NVML, over its cap"]),
    ],
)
def test_a_fractional_job_is_held_to_its_cap_by_its_log_its_allocator_and_nvml(
    log: str, peak: float | None, seen: float | None, problems: list[str]
) -> None:
    check = load_script()
    job = {
        "id": 7,
        "metrics": {} if peak is None else {"gpu_mem_bytes": peak},
        "peak_gpu_mem": seen,
    }
    figure, found = check.cap_findings(job, f"epoch 1/40\n{log}\n", 2 * GIB)
    assert found == problems
    assert figure.startswith("job 7: ")


BF16 = {"dtype": "bfloat16", "rel_err": 3.1e-3, "fp32_rel_err": 2e-7}


@pytest.mark.parametrize(
    ("env", "direct", "supported", "problems"),
    [
        ({"device": "cuda:0", "autocast": "bfloat16"}, BF16, True, []),
        ({"device": "cuda:0", "autocast": None}, BF16, False, []),
        (
            {"device": "cpu", "autocast": None},
            BF16,
            True,
            [
                "the train job ran on cpu, not the granted GPU",
                "the job's autocast is None, expected bfloat16",
            ],
        ),
        (
            {"device": "cuda:0"},
            BF16,
            True,
            ["the train job does not record whether it used autocast"],
        ),
        (
            {"device": "cuda:0", "autocast": "bfloat16"},
            {**BF16, "rel_err": 2e-7},  # float32 accuracy: autocast did nothing
            True,
            ["torch's autocast did not compute in bfloat16: " + str({**BF16, "rel_err": 2e-7})],
        ),
    ],
)
def test_bf16_autocast_is_what_the_train_job_recorded_and_what_torch_computed(
    env: dict[str, Any], direct: dict[str, Any], supported: bool, problems: list[str]
) -> None:
    assert load_script().autocast_findings(env, direct, supported) == problems


CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("seen", "latency", "verdict", "detail"),
    [
        (
            {"available": CUDA, "session_providers": CUDA, "max_abs_diff_vs_cpu": 3e-6,
             "node_runs_by_provider": {"CUDAExecutionProvider": 15, "CPUExecutionProvider": 6}},
            {"cpu": {}, "cuda": {}},
            "PASS",
            "15 node runs on CUDAExecutionProvider; outputs match the CPU's",
        ),
        (
            {"onnxruntime": "1.30.0", "available": ["CPUExecutionProvider"]},
            {"cpu": {}},
            "NOT AVAILABLE",
            "onnxruntime 1.30.0 has no CUDAExecutionProvider (available: CPUExecutionProvider);"
            " onnxruntime-gpu provides it",
        ),
        (  # onnxruntime-gpu whose CUDA libraries do not load: a CPU session, quietly
            {"available": CUDA, "session_providers": ["CPUExecutionProvider"],
             "node_runs_by_provider": {"CPUExecutionProvider": 21}, "max_abs_diff_vs_cpu": 0.0},
            {"cpu": {}},
            "FAIL",
            "CUDAExecutionProvider is available but the session ran on ['CPUExecutionProvider']"
            " (node runs {'CPUExecutionProvider': 21}); its CUDA libraries could not be loaded"
            " (see the probe job's log)",
        ),
        (
            {"available": CUDA, "session_providers": CUDA, "max_abs_diff_vs_cpu": 0.5,
             "node_runs_by_provider": {"CUDAExecutionProvider": 15}},
            {"cpu": {}, "cuda": {}},
            "FAIL",
            "CUDA and CPU outputs differ by 5.00e-01",
        ),
        (
            {"available": CUDA, "session_providers": CUDA, "max_abs_diff_vs_cpu": 0.0,
             "node_runs_by_provider": {"CUDAExecutionProvider": 15}},
            {"cpu": {}},
            "FAIL",
            "the export job did not time onnxruntime on the GPU it was granted",
        ),
    ],
)  # fmt: skip
def test_onnxruntime_on_the_gpu_is_judged_by_the_provider_that_ran_each_node(
    seen: dict[str, Any], latency: dict[str, Any], verdict: str, detail: str
) -> None:
    assert load_script().ort_verdict(seen, latency) == (verdict, detail)
