"""GPU check: the workbench's GPU paths against the real driver, each check PASS, FAIL or NOT
AVAILABLE (with why), one never stopping the others.

Checks, in order:
  nvml             NVML figures through the project's adapter (workbench/telemetry/gpu.py)
  nvidia-smi       NVML's memory total/used against `nvidia-smi --query-gpu`
  daemon start     a real daemon in a temporary WORKBENCH_HOME (jobs go through the real CLI)
  visible devices  a `--gpus 1` command job gets CUDA_VISIBLE_DEVICES set to its grant
  torch sees grant torch in that job sees exactly one device, the granted one (by UUID)
  pair overlap     two `--gpus 0.5 --gpu-mem 2GiB` train jobs run at once on the same GPU
  pair caps        each holds itself to its cap (set_per_process_memory_fraction): the log says
                   so, torch's peak allocation and the daemon's NVML peak are within it
  cap enforced     a train job whose model needs more than its cap fails with CUDA OOM
  bf16 autocast    a `--gpus 1` train job records bf16 autocast; autocast checked in torch too
  onnxruntime cuda an export job on the GPU, then its ONNX model run with onnxruntime's
                   CUDAExecutionProvider (which provider ran each node, from ORT's profile)
  daemon stop      the daemon stopped by pid; no process of the temporary home left

NOT AVAILABLE means the machine lacks what a check needs (no CUDA in torch, no
CUDAExecutionProvider in onnxruntime, no nvidia-smi, a missing Python package); FAIL means it
has it and the workbench got it wrong. Exit 0 iff nothing FAILed.

With --fake it runs against the simulated driver (workbench/telemetry/fakenvml.py: one fake
H200), so the plumbing is proven on a machine without a GPU: the NVML figures come from the fake,
the daemon grants fractions of the fake GPU and the jobs train on the CPU.

Usage: python bench/gpu_check.py [--fake] [--write] [--home DIR] [--json-out FILE] [--budget S]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [
    p for p in sys.path if Path(p or ".").resolve() != HERE
]  # bench/queue.py shadows queue
sys.path.append(str(HERE))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _results import table, write_section  # noqa: E402

from workbench.paths import Home  # noqa: E402

GIB = 1024**3
MIB = 1024**2
PASS, FAIL, NOT_AVAILABLE = "PASS", "FAIL", "NOT AVAILABLE"
SECTION = "GPU check"
SMI_FIELDS = ["uuid", "index", "memory.total", "memory.used"]
SMI_USED_SLACK_MIB = 256  # used memory moves between the two reads
MARK = "GPUCHECK "  # the probes' result line in a job's log
PAIR_CAP = "2GiB"
HOG_CAP = "1GiB"
HOG_BYTES = 3 * GIB // 2
FEATURES = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
PACKAGES = {  # import name -> what needs it
    "pynvml": "NVML (nvidia-ml-py)",
    "psutil": "the daemon and telemetry",
    "duckdb": "ingest and train (the lake)",
    "pyarrow": "the lake",
    "rich": "the CLI",
    "numpy": "train and export",
    "torch": "train and export",
    "onnx": "export",
    "onnxscript": "export (the dynamo exporter)",
    "onnxruntime": "export and the CUDA provider check",
}
FAKE_SCENARIO: dict[str, Any] = {
    "driver_version": "580.159.04",
    "cuda_version": 13000,
    "gpus": [
        {
            "name": "NVIDIA H200",
            "memory_total": 143771 * MIB,
            "memory_used": 512 * MIB,
            "utilization_gpu": [0, 3],
            "temperature": 31,
            "power_draw_w": 76.5,
            "power_limit_w": 700.0,
            "numa_node": 0,
        }
    ],
}


class NotAvailable(Exception):
    """Raised inside a check: the machine lacks what the check needs (the message says what)."""


class Failed(Exception):
    """Raised inside a check: the workbench did not do what the check expects."""


@dataclass
class Result:
    """One check's outcome: PASS, FAIL or NOT AVAILABLE, a one-line why, and its figures."""

    name: str
    verdict: str
    detail: str
    figures: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Deadline:
    """The script's time budget (seconds), shared by every wait."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self, at_most: float) -> float:
        return max(1.0, min(at_most, self.end - time.monotonic()))

    @property
    def spent(self) -> bool:
        return time.monotonic() >= self.end


# ---- probes: run inside jobs (python bench/gpu_check.py --probe KIND [PATH]) ---------------------


def probe_cuda() -> dict[str, Any]:
    """What torch sees inside the job: CUDA_VISIBLE_DEVICES, the devices (name, UUID, memory) and
    a bf16 autocast matmul (its dtype and error against float64)."""
    out: dict[str, Any] = {
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "CUDA_DEVICE_ORDER": os.environ.get("CUDA_DEVICE_ORDER"),
        "WORKBENCH_GPU_MEM_BYTES": os.environ.get("WORKBENCH_GPU_MEM_BYTES"),
    }
    try:
        import torch
    except ImportError as error:
        out["error"] = f"torch cannot be imported: {error}"
        return out
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["cuda_available"] = bool(torch.cuda.is_available())
    if not out["cuda_available"]:
        return out
    out["device_count"] = torch.cuda.device_count()
    devices = []
    for index in range(out["device_count"]):
        props = torch.cuda.get_device_properties(index)
        uuid = getattr(props, "uuid", None)
        devices.append(
            {
                "name": props.name,
                "total_memory": int(props.total_memory),
                "uuid": str(uuid) if uuid is not None else None,
            }
        )
    out["devices"] = devices
    out["bf16_supported"] = bool(torch.cuda.is_bf16_supported())
    torch.manual_seed(0)
    a = torch.randn(1024, 1024, device="cuda")
    b = torch.randn(1024, 1024, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        product = a @ b
    reference = a.double() @ b.double()
    plain = a @ b
    out["autocast"] = {
        "dtype": str(product.dtype).replace("torch.", ""),
        "rel_err": float((product.double() - reference).norm() / reference.norm()),
        "fp32_rel_err": float((plain.double() - reference).norm() / reference.norm()),
    }
    return out


def probe_ort(model_path: str) -> dict[str, Any]:
    """The ONNX model on onnxruntime asking for CUDAExecutionProvider first: the providers the
    session got, which provider ran each node (ORT's own profile), and the largest difference
    from the CPU provider's output on 256 penguin-like rows."""
    out: dict[str, Any] = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as error:
        out["error"] = f"onnxruntime cannot be imported: {error}"
        return out
    out["onnxruntime"] = ort.__version__
    out["available"] = list(ort.get_available_providers())
    cpu = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    inputs = cpu.get_inputs()
    first = inputs[0]
    if len(inputs) > 1:  # one named (n, 1) input per column, as `export` writes them
        width = len(inputs)
    else:
        width = first.shape[1] if isinstance(first.shape[1], int) else len(FEATURES)
    rng = np.random.default_rng(0)
    if width == len(FEATURES):
        x = rng.normal([44.0, 17.0, 200.0, 4200.0], [5.0, 2.0, 14.0, 800.0], size=(256, width))
    else:
        x = rng.normal(size=(256, width))
    if len(inputs) > 1:
        kinds = {"tensor(double)": np.float64, "tensor(float)": np.float32}
        feed = {
            i.name: (
                x[:, k : k + 1].astype(kinds[i.type])
                if i.type in kinds
                else np.full((256, 1), "a", dtype=object)
            )
            for k, i in enumerate(inputs)
        }
    else:
        feed = {first.name: x.astype(np.float32)}
    options = ort.SessionOptions()
    options.enable_profiling = True
    folder = os.environ.get("WORKBENCH_RUN_DIR") or tempfile.mkdtemp(prefix="gpucheck-ort-")
    options.profile_file_prefix = str(Path(folder) / "ort_profile")
    session = ort.InferenceSession(
        model_path, options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    out["session_providers"] = list(session.get_providers())
    for _ in range(3):
        got = session.run(None, feed)[0]
    profile = session.end_profiling()
    counts: dict[str, int] = {}
    for event in json.loads(Path(profile).read_text()):
        args = event.get("args") or {}
        if (
            event.get("cat") == "Node"
            and "provider" in args
            and event["name"].endswith("_kernel_time")
        ):
            counts[args["provider"]] = counts.get(args["provider"], 0) + 1
    out["node_runs_by_provider"] = counts
    out["max_abs_diff_vs_cpu"] = float(np.abs(got - cpu.run(None, feed)[0]).max())
    return out


# ---- running the CLI ------------------------------------------------------------------------------


class Workbench:
    """The real CLI (`python -m workbench`) in one WORKBENCH_HOME, and the daemon it starts."""

    def __init__(self, home: Path, env: dict[str, str], deadline: Deadline):
        self.home = home
        self.env = env
        self.deadline = deadline
        self.daemon_pid: int | None = None
        self.submitted: list[int] = []

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "workbench", *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=ROOT,
            timeout=timeout,
        )

    def ok(self, *args: str, timeout: float = 60) -> str:
        """stdout of a command that must succeed; Failed naming the command otherwise."""
        done = self.run(*args, timeout=timeout)
        if done.returncode != 0:
            said = (done.stderr.strip() or done.stdout.strip()).splitlines()
            raise Failed(
                f"`workbench {' '.join(args)}` exited {done.returncode}: "
                + (said[-1] if said else "no output")
            )
        return done.stdout

    def submit(self, *args: str) -> int:
        job = json.loads(self.ok("submit", "--json", *args))
        job_id = int(job["id"])
        self.submitted.append(job_id)
        return job_id

    def show(self, job_id: int) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.ok("show", str(job_id), "--json"))
        return data

    def wait(self, job_id: int, at_most: float = 180) -> dict[str, Any]:
        """The job once it ended; a job still going at the limit is cancelled and Failed."""
        limit = self.deadline.left(at_most)
        self.run("wait", str(job_id), "--timeout", f"{limit:.0f}", timeout=limit + 30)
        job = self.show(job_id)
        if job["state"] not in ("succeeded", "failed", "cancelled", "blocked"):
            self.run("cancel", str(job_id))
            raise Failed(
                f"job {job_id} ({job['name']}) had not ended after waiting {limit:.0f}s (cancelled):"
                f" {job['state']}, {job.get('reason')}"
            )
        return job

    def failure(self, job: dict[str, Any]) -> str:
        """Why a job did not succeed, with the end of its log."""
        tail = " | ".join(self.log(job).strip().splitlines()[-3:])
        return (
            f"job {job['id']} ({job['name']}) {job['state']}: {job.get('reason')}; log ends: {tail}"
        )

    def log(self, job: dict[str, Any]) -> str:
        path = Path(job["paths"]["log"])
        return path.read_text(errors="replace") if path.exists() else ""

    def probe_result(self, job: dict[str, Any]) -> dict[str, Any]:
        """The probe's JSON line from the job's log."""
        for line in reversed(self.log(job).splitlines()):
            if line.startswith(MARK):
                data: dict[str, Any] = json.loads(line[len(MARK) :])
                return data
        raise Failed(f"job {job['id']} printed no result; its log ends: {self.log(job)[-300:]!r}")

    def start_daemon(self) -> int:
        self.ok("daemon", "start")
        status = json.loads(self.ok("daemon", "status", "--json"))
        if not status.get("pid"):
            raise Failed(f"`workbench daemon status` says it is not running: {status}")
        self.daemon_pid = int(status["pid"])
        return self.daemon_pid

    def stop_daemon(self) -> tuple[bool, str]:
        """Cancel the jobs still going (and wait for them to end), stop the daemon by its pid
        (SIGTERM, SIGKILL after 15 s), then look for any process of this home still alive
        (killed, and reported). (ok, what happened)."""
        from workbench.daemon.link import lock_holder

        notes: list[str] = []
        going = []
        for job_id in self.submitted:
            done = self.run("show", str(job_id), "--json")
            if done.returncode == 0 and json.loads(done.stdout)["state"] in (
                "queued", "starting", "running", "paused",
            ):  # fmt: skip
                going.append(str(job_id))
        if going:
            self.run("cancel", *going)
            self.run("wait", *going, "--timeout", "30", timeout=60)
            notes.append(f"cancelled job(s) {', '.join(going)}")
        holder = lock_holder(Home(self.home))
        pid = self.daemon_pid or (holder if holder and holder > 0 else None)
        if pid is None:
            return False, "no daemon was running"
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False, f"daemon pid {pid} was already gone before the stop"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        killed = _alive(pid)
        if killed:
            os.kill(pid, signal.SIGKILL)
            notes.append(f"daemon pid {pid} did not stop within 15s: SIGKILL")
        time.sleep(0.2)
        left = _processes_of_home(self.home)
        for found in left:
            try:
                os.kill(int(found.split()[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        if left:
            notes.append(f"still running after the stop, killed: {', '.join(left)}")
        ok = not killed and not left
        return ok, "; ".join(
            [f"daemon pid {pid} stopped by SIGTERM" if not killed else "daemon killed", *notes]
            + (["no process of the home left"] if ok else [])
        )


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _processes_of_home(home: Path) -> list[str]:
    """Processes (pid and name) whose environment names `home` as WORKBENCH_HOME."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get("WORKBENCH_HOME") == str(home):
                found.append(f"{proc.pid} {proc.info['name']}")
        except (psutil.Error, OSError):
            continue
    return found


# ---- the checks -----------------------------------------------------------------------------------


class GpuCheck:
    """Runs every check in order, keeping what later checks need (the NVML session, job ids)."""

    def __init__(self, args: argparse.Namespace, home: Path, env: dict[str, str]):
        self.args = args
        self.home = home
        self.deadline = Deadline(args.budget)
        self.wb = Workbench(home, env, self.deadline)
        self.results: list[Result] = []
        self.missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
        self.gpus: Any = None
        self.samples: list[Any] = []
        self.placement: dict[int, Any] = {}
        self.cuda: dict[str, Any] | None = None  # what torch sees outside the queue
        self.daemon_ok = False
        self.dataset_ok: str | None = None  # None: the dataset is in the lake; else why not
        self.visible_job: dict[str, Any] | None = None
        self.pair: list[dict[str, Any]] = []
        self.pair_seen_together = 0
        self.pair_samples = 0
        self.train_job: dict[str, Any] | None = None
        self.export_job: dict[str, Any] | None = None

    # ---- harness --------------------------------------------------------------------------------

    def check(self, name: str, body: Callable[[Result], str]) -> None:
        """Run one check: `body` returns the PASS detail or raises NotAvailable / Failed; any other
        exception is a FAIL too (with its traceback on stderr). Never raises."""
        result = Result(name, FAIL, "")
        started = time.monotonic()
        print(f"[gpu-check] {name} ...", file=sys.stderr, flush=True)
        try:
            if self.deadline.spent:
                raise Failed(f"not run: the time budget of {self.args.budget:.0f}s was spent")
            result.detail = body(result)
            result.verdict = PASS
        except NotAvailable as why:
            result.verdict, result.detail = NOT_AVAILABLE, str(why)
        except Failed as why:
            result.detail = str(why)
        except Exception as error:
            traceback.print_exc()
            result.detail = f"{type(error).__name__}: {error}"
        result.seconds = time.monotonic() - started
        self.results.append(result)
        print(f"[gpu-check] {name}: {result.verdict} {result.detail}", file=sys.stderr, flush=True)

    def need(self, *packages: str) -> None:
        lacking = [p for p in packages if p in self.missing]
        if lacking:
            raise NotAvailable(
                "Python package " + ", ".join(lacking) + " is missing here (needed by "
                + "; ".join(PACKAGES[p] for p in lacking) + ")"
            )  # fmt: skip

    def depends_on(self, name: str, why: str = "") -> None:
        """Raise for a check that cannot go on without what check `name` should have left: NOT
        AVAILABLE where that one was, else FAIL (not run)."""
        earlier = next((r for r in self.results if r.name == name), None)
        said = f"needs '{name}'{f' ({why})' if why else ''}, which"
        if earlier is not None and earlier.verdict == NOT_AVAILABLE:
            raise NotAvailable(f"{said} was not available: {earlier.detail}")
        raise Failed(f"not run: {said} did not succeed")

    def need_daemon(self) -> None:
        if not self.daemon_ok:
            raise Failed("not run: the daemon did not start (see 'daemon start')")

    def need_dataset(self) -> None:
        self.need("duckdb", "pyarrow", "torch")
        self.need_daemon()
        if self.dataset_ok is not None:
            raise Failed(f"not run: the example dataset could not be ingested: {self.dataset_ok}")

    def need_cuda(self) -> dict[str, Any]:
        if self.cuda is None:
            self.need("torch")
            self.cuda = self._probe_here()
        if self.cuda.get("error"):
            raise NotAvailable(self.cuda["error"])
        if not self.cuda.get("cuda_available"):
            raise NotAvailable(
                f"torch {self.cuda.get('torch')} has no CUDA here (torch.version.cuda"
                f" {self.cuda.get('torch_cuda')}, torch.cuda.is_available() False)"
            )
        return self.cuda

    def _probe_here(self) -> dict[str, Any]:
        """probe_cuda in a child process (this one never creates a CUDA context)."""
        env = {k: v for k, v in self.wb.env.items() if k != "CUDA_VISIBLE_DEVICES"}
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--probe", "cuda"],
            capture_output=True, text=True, env=env, timeout=self.deadline.left(120),
        )  # fmt: skip
        for line in done.stdout.splitlines():
            if line.startswith(MARK):
                data: dict[str, Any] = json.loads(line[len(MARK) :])
                return data
        return {"error": f"the torch probe failed: {done.stderr.strip()[-300:]}"}

    def whole_gpu(self) -> str:
        """`--gpus` for a job that takes a whole GPU: 1, or a MIG profile where every GPU is in
        MIG mode (whole GPUs are then not allocatable)."""
        if not self.samples:
            raise NotAvailable("NVML found no GPU to grant")
        if all(s.mig_mode for s in self.samples):
            for place in self.placement.values():
                if place.mig:
                    return str(place.mig[0].profile)
            raise NotAvailable("every GPU is in MIG mode and has no MIG instance")
        return "1"

    # ---- 1. NVML ----------------------------------------------------------------------------------

    def nvml(self, result: Result) -> str:
        self.need("pynvml", "psutil")
        from workbench.telemetry.gpu import NO_DEVICE, NO_DRIVER, OK, Gpus

        self.gpus = Gpus.open()
        if self.gpus.status in (NO_DRIVER, NO_DEVICE):
            raise NotAvailable(self.gpus.message)
        if self.gpus.status != OK:
            raise Failed(self.gpus.message)
        self.gpus.sample()
        time.sleep(0.5)  # utilisation covers the time since the last sample
        self.samples = self.gpus.sample()
        self.placement = self.gpus.placement()
        result.figures.append(
            f"NVIDIA driver {self.gpus.driver_version}, CUDA driver API {self.gpus.cuda_version},"
            f" {len(self.samples)} GPU(s)"
        )
        bad = []
        for s in self.samples:
            place = self.placement.get(s.index)
            mig = "on" if s.mig_mode else ("off" if s.mig_mode is False else "n/a")
            if place is not None and place.mig:
                mig += " (" + ", ".join(f"{m.profile} {m.uuid}" for m in place.mig) + ")"
            numa = "n/a" if place is None or place.numa_node is None else place.numa_node
            switch = "n/a" if place is None or place.switch is None else place.switch
            result.figures.append(
                f"GPU {s.index} {s.name}: memory {_gib(s.memory_used_bytes)} used of"
                f" {_gib(s.memory_total_bytes)}; util {_na(s.util_gpu, '%')}, memory util"
                f" {_na(s.util_memory, '%')}; {_na(s.temperature_c, ' C')};"
                f" power {_na(s.power_draw_w, ' W')} of {_na(s.power_limit_w, ' W')};"
                f" SM clock {_na(s.clock_sm_mhz, ' MHz')}; MIG {mig}; NUMA node {numa};"
                f" PCIe switch group {switch}; {s.pci_bus_id}; {s.uuid};"
                f" processes {'n/a' if s.processes is None else len(s.processes)}"
            )
            if not s.ok:
                bad.append(f"GPU {s.index}: {s.error}")
            elif s.memory_total_bytes <= 0 or not s.name:
                bad.append(f"GPU {s.index}: no name or no memory total")
        if bad:
            raise Failed("; ".join(bad))
        return f"{len(self.samples)} GPU(s) read: " + ", ".join(
            f"{s.index} {s.name}" for s in self.samples
        )

    def nvidia_smi(self, result: Result) -> str:
        if self.args.fake:
            raise NotAvailable(
                "fake NVML: nvidia-smi would describe the real machine, not the fake"
            )
        smi = shutil.which("nvidia-smi")
        if smi is None:
            raise NotAvailable("nvidia-smi is not on the PATH")
        if not self.samples:
            raise NotAvailable("NVML gave no GPU to compare")
        fields = [*SMI_FIELDS, "memory.reserved"]
        done = _smi(smi, fields)
        if done.returncode != 0:  # an older nvidia-smi without memory.reserved
            fields = SMI_FIELDS
            done = _smi(smi, fields)
        if done.returncode != 0:
            raise Failed(f"nvidia-smi exited {done.returncode}: {done.stderr.strip()[-200:]}")
        figures, problems, compared = compare_with_smi(self.samples, done.stdout, fields)
        result.figures.extend(figures)
        if problems:
            raise Failed("; ".join(problems))
        if not compared:
            raise NotAvailable("nvidia-smi gave no memory figures to compare")
        return f"memory total equal, used within {SMI_USED_SLACK_MIB} MiB on every GPU"

    # ---- 2. the daemon and its jobs ---------------------------------------------------------------

    def daemon_start(self, result: Result) -> str:
        self.need("psutil", "pyarrow", "rich")
        pid = self.wb.start_daemon()
        self.daemon_ok = True
        print(f"[gpu-check] WORKBENCH_HOME {self.home}", file=sys.stderr, flush=True)
        try:
            self.need("duckdb")
            self.wb.ok(
                "ingest", str(ROOT / "examples" / "penguins_train.csv"), "--dataset", "penguins",
                "--wait", timeout=self.deadline.left(180),
            )  # fmt: skip
            result.figures.append("examples/penguins_train.csv ingested as dataset penguins")
        except (NotAvailable, Failed) as why:
            self.dataset_ok = str(why)
            result.figures.append(f"dataset not ingested: {why}")
        return f"daemon pid {pid} in a temporary WORKBENCH_HOME"

    def visible_devices(self, result: Result) -> str:
        self.need_daemon()
        if not self.samples:
            raise NotAvailable("NVML found no GPU to grant")
        asked = self.whole_gpu()
        job_id = self.wb.submit(
            "--name", "gpucheck-visible", "--gpus", asked, "--",
            sys.executable, str(Path(__file__).resolve()), "--probe", "cuda",
        )  # fmt: skip
        job = self.wb.wait(job_id, 180)
        if job["state"] != "succeeded":
            raise Failed(self.wb.failure(job))
        self.visible_job = job
        seen = self.wb.probe_result(job)
        acceptable = self._acceptable_devices(job)
        result.figures.append(
            f"job {job_id} --gpus {asked}: granted {job['granted_gpus']}, CUDA_VISIBLE_DEVICES"
            f" {seen['CUDA_VISIBLE_DEVICES']!r}, CUDA_DEVICE_ORDER {seen['CUDA_DEVICE_ORDER']!r}"
        )
        if seen["CUDA_VISIBLE_DEVICES"] not in acceptable:
            raise Failed(
                f"the job saw CUDA_VISIBLE_DEVICES={seen['CUDA_VISIBLE_DEVICES']!r}; its grant"
                f" gives {' or '.join(sorted(acceptable)) or 'nothing'}"
            )
        return f"CUDA_VISIBLE_DEVICES={seen['CUDA_VISIBLE_DEVICES']} for a job granted {job['granted_gpus']}"

    def _acceptable_devices(self, job: dict[str, Any]) -> set[str]:
        """The CUDA_VISIBLE_DEVICES values the grant allows: its GPU indices, or for a MIG grant
        the UUID of any instance of that profile on the granted GPU (as NVML lists them)."""
        profile = job["resources"].get("mig_profile")
        if not profile:
            return {",".join(str(i) for i in job["granted_gpus"])}
        return {
            m.uuid
            for index in job["granted_gpus"]
            for m in getattr(self.placement.get(index), "mig", ())
            if m.profile == profile
        }

    def torch_sees_grant(self, result: Result) -> str:
        cuda = self.need_cuda()
        result.figures.append(
            f"outside the queue torch {cuda['torch']} (CUDA {cuda['torch_cuda']}) sees"
            f" {cuda['device_count']} device(s): "
            + ", ".join(f"{d['name']} {d['uuid']}" for d in cuda["devices"])
        )
        if self.visible_job is None:
            self.depends_on("visible devices")
        seen = self.wb.probe_result(self.visible_job)
        if not seen.get("cuda_available"):
            raise Failed(f"torch in the job sees no CUDA device: {seen}")
        result.figures.append(
            f"inside job {self.visible_job['id']}: {seen['device_count']} device(s): "
            + ", ".join(f"{d['name']} {d['uuid']}" for d in seen["devices"])
        )
        if seen["device_count"] != 1:
            raise Failed(f"the job sees {seen['device_count']} devices, granted 1")
        granted = _bare_uuid(self._granted_uuid(self.visible_job))
        got = _bare_uuid(seen["devices"][0]["uuid"])
        mig = bool(self.visible_job["resources"].get("mig_profile"))
        if granted and got and granted != got:
            if not mig:
                raise Failed(f"the job's device is {got}, the granted GPU is {granted}")
            result.figures.append(f"MIG: CUDA names the instance {got}, NVML {granted}")
        if not (granted and got) or granted != got:
            return f"one device, {seen['devices'][0]['name']} (UUIDs not compared)"
        return f"one device, the granted one ({seen['devices'][0]['name']}, UUID {got})"

    def _granted_uuid(self, job: dict[str, Any]) -> str | None:
        if job["resources"].get("mig_profile"):
            visible: str | None = self.wb.probe_result(job)["CUDA_VISIBLE_DEVICES"]
            return visible
        by_index = {s.index: s.uuid for s in self.samples}
        return by_index.get(int(job["granted_gpus"][0])) if job["granted_gpus"] else None

    def pair_overlap(self, result: Result) -> str:
        self.need_dataset()
        if not self.samples:
            raise NotAvailable("NVML found no GPU to share")
        if all(s.mig_mode for s in self.samples):
            raise NotAvailable("every GPU is in MIG mode: fractions of a GPU do not apply")
        spec = self._train_spec("gpucheck-pair", epochs=40)
        pair_options = ["--gpus", "0.5", "--gpu-mem", PAIR_CAP, "--cpus", "1", "--paused"]
        ids = [
            self.wb.submit("--spec", str(spec), "--name", f"gpucheck-pair-{n}", *pair_options)
            for n in (1, 2)
        ]
        self.wb.ok("resume", *map(str, ids))
        self._watch_pair(ids)
        self.pair = [self.wb.wait(i, 240) for i in ids]
        for job in self.pair:
            ran = (
                f"ran {_clock(job['started_at'])} to {_clock(job['ended_at'])}"
                f" ({job['ended_at'] - job['started_at']:.1f}s)"
                if job["started_at"] and job["ended_at"]
                else "never ran"
            )
            result.figures.append(
                f"job {job['id']}: {job['state']}, granted GPU {job['granted_gpus']}, {ran}"
            )
        failed = [j for j in self.pair if j["state"] != "succeeded"]
        if failed:
            raise Failed(
                "; ".join(f"job {j['id']} {j['state']}: {j.get('reason')}" for j in failed)
            )
        first, second = self.pair
        if first["granted_gpus"] != second["granted_gpus"] or len(first["granted_gpus"]) != 1:
            raise Failed(
                f"granted {first['granted_gpus']} and {second['granted_gpus']}, not one GPU"
            )
        overlap = min(first["ended_at"], second["ended_at"]) - max(
            first["started_at"], second["started_at"]
        )
        shorter = min(j["ended_at"] - j["started_at"] for j in self.pair)
        if self.pair_samples:
            result.figures.append(
                f"NVML listed both jobs' processes on the GPU together in {self.pair_seen_together}"
                f" of {self.pair_samples} samples taken while they ran"
            )
        if overlap <= 0:
            raise Failed(f"the two jobs did not run at the same time (gap {-overlap:.2f}s)")
        return (
            f"both on GPU {first['granted_gpus'][0]} at once for {overlap:.1f}s"
            f" ({100 * overlap / shorter:.0f}% of the shorter job)"
        )

    def _watch_pair(self, ids: list[int]) -> None:
        """Sample NVML while the pair runs: were both jobs' processes on the GPU together?"""
        if self.gpus is None or self.args.fake:
            return
        from workbench.telemetry.gpu import attribute_processes

        deadline = time.monotonic() + self.deadline.left(240)
        while time.monotonic() < deadline:
            jobs = [self.wb.show(i) for i in ids]
            if all(j["state"] not in ("queued", "starting", "running") for j in jobs):
                return
            groups = {int(j["pid"]): int(j["id"]) for j in jobs if j.get("pid")}
            samples = self.gpus.sample()
            if any(s.processes for s in samples):
                self.pair_samples += 1
                owners = attribute_processes(samples, groups)
                if set(owners.values()) >= set(ids):
                    self.pair_seen_together += 1
            time.sleep(0.25)

    def pair_caps(self, result: Result) -> str:
        self.need_cuda()
        if len(self.pair) != 2 or any(j["state"] != "succeeded" for j in self.pair):
            self.depends_on("pair overlap")
        bad = []
        for job in self.pair:
            figure, problems = cap_findings(job, self.wb.log(job), 2 * GIB)
            result.figures.append(figure)
            bad += problems
        if bad:
            raise Failed("; ".join(bad))
        return "both capped at 2 GiB and within it (torch's allocator and NVML)"

    def cap_enforced(self, result: Result) -> str:
        self.need_cuda()
        self.need_dataset()
        if not self.samples:
            raise NotAvailable("NVML found no GPU to share")
        if all(s.mig_mode for s in self.samples):
            raise NotAvailable("every GPU is in MIG mode: fractions of a GPU do not apply")
        model = self.home / "gpucheck" / "hog.py"
        model.write_text(
            "import torch\n\n\nclass Hog(torch.nn.Module):\n"
            "    def __init__(self, inputs, outputs):\n"
            "        super().__init__()\n"
            "        self.linear = torch.nn.Linear(inputs, outputs)\n"
            f"        self.register_buffer('hog', torch.empty({HOG_BYTES}, dtype=torch.uint8))\n\n"
            "    def forward(self, x):\n        return self.linear(x)\n\n\n"
            "def build(inputs, outputs):\n    return Hog(inputs, outputs)\n"
        )
        spec = self._train_spec("gpucheck-hog", epochs=2, model=f"{model}:build")
        job_id = self.wb.submit(
            "--spec", str(spec), "--gpus", "0.5", "--gpu-mem", HOG_CAP, "--cpus", "1"
        )
        job = self.wb.wait(job_id, 180)
        result.figures.append(
            f"job {job_id} (--gpu-mem {HOG_CAP}, model holding {_mib(HOG_BYTES)}): {job['state']},"
            f" {job.get('reason')}"
        )
        if job["state"] != "failed" or "out of memory" not in (job.get("reason") or ""):
            raise Failed(
                f"expected a CUDA out-of-memory failure, got {job['state']}: {job.get('reason')}"
            )
        return "the model past its cap failed with CUDA out of memory"

    def bf16(self, result: Result) -> str:
        self.need_dataset()
        asked = self.whole_gpu()
        spec = self._train_spec("gpucheck-bf16", epochs=30)
        job_id = self.wb.submit("--spec", str(spec), "--gpus", asked, "--cpus", "1")
        job = self.wb.wait(job_id, 240)
        if job["state"] != "succeeded":
            raise Failed(self.wb.failure(job))
        self.train_job = job
        run = json.loads((Path(job["paths"]["run_dir"]) / "run.json").read_text())
        env = run.get("environment", {})
        result.figures.append(
            f"job {job_id} --gpus {asked}: device {env.get('device')} ({env.get('device_name')}),"
            f" torch {env.get('torch')}, CUDA {env.get('cuda')}, autocast"
            f" {env.get('autocast', 'not recorded')}; val_accuracy"
            f" {job['metrics'].get('val_accuracy')}"
        )
        cuda = self.need_cuda()
        direct = (self.wb.probe_result(self.visible_job) if self.visible_job else cuda).get(
            "autocast"
        )
        if direct:
            result.figures.append(
                f"torch directly: a 1024x1024 matmul under autocast gives {direct['dtype']}, relative"
                f" error {direct['rel_err']:.2e} against float64 (float32 {direct['fp32_rel_err']:.2e})"
            )
        problems = autocast_findings(env, direct, bool(cuda.get("bf16_supported")))
        if problems:
            raise Failed("; ".join(problems))
        return f"train job used {env['autocast']} autocast on {env.get('device_name')}"

    def onnxruntime_cuda(self, result: Result) -> str:
        self.need("onnx", "onnxscript", "onnxruntime")
        asked = self.whole_gpu()
        if self.train_job is None:
            self.depends_on("bf16 autocast", "its train job gives the model to export")
        spec = self.home / "gpucheck" / "export.toml"
        spec.write_text(
            f'kind = "export"\nname = "gpucheck-export"\nmodel = "{self.train_job["id"]}"\n'
            "quantize = false\nlatency_runs = 20\n"
        )
        export_id = self.wb.submit("--spec", str(spec), "--gpus", asked, "--cpus", "1")
        export = self.wb.wait(export_id, 300)
        if export["state"] != "succeeded":
            raise Failed(self.wb.failure(export))
        card = json.loads((Path(export["paths"]["run_dir"]) / "model_card.json").read_text())
        latency = card.get("latency", {})
        on_gpu = card.get("gpu_provider") or {}
        result.figures.append(
            f"export job {export_id}: {card.get('exporter')}, opset {card.get('opset')}, parity max"
            f" abs diff {card.get('parity', {}).get('max_abs_diff')}; latency timed on"
            f" {', '.join(latency) or 'nothing'}; onnxruntime on the GPU:"
            f" {on_gpu.get('provider') or on_gpu.get('why_not') or 'not recorded'}"
        )
        model = Path(export["paths"]["run_dir"]) / "model.onnx"
        probe_id = self.wb.submit(
            "--name", "gpucheck-ort", "--gpus", asked, "--cpus", "1", "--",
            sys.executable, str(Path(__file__).resolve()), "--probe", "ort", str(model),
        )  # fmt: skip
        probe = self.wb.wait(probe_id, 180)
        if probe["state"] != "succeeded":
            raise Failed(self.wb.failure(probe))
        seen = self.wb.probe_result(probe)
        result.figures.append(
            f"probe job {probe_id} (CUDA_VISIBLE_DEVICES {seen.get('CUDA_VISIBLE_DEVICES')!r}):"
            f" onnxruntime {seen.get('onnxruntime')}, available {seen.get('available')}, session"
            f" {seen.get('session_providers')}, node runs by provider"
            f" {seen.get('node_runs_by_provider')}, max abs diff against CPU"
            f" {seen.get('max_abs_diff_vs_cpu', float('nan')):.2e}"
        )
        verdict, detail = ort_verdict(seen, latency)
        if verdict == NOT_AVAILABLE:
            raise NotAvailable(detail)
        if verdict == FAIL:
            raise Failed(detail)
        return detail

    def daemon_stop(self, result: Result) -> str:
        ok, what = self.wb.stop_daemon()
        result.figures.append(what)
        if not ok:
            raise Failed(what)
        return what

    def _train_spec(self, name: str, epochs: int, model: str = "mlp") -> Path:
        folder = self.home / "gpucheck"
        folder.mkdir(exist_ok=True)
        path = folder / f"{name}.toml"
        path.write_text(
            f'kind = "train"\nname = "{name}"\ndataset = "penguins"\ntarget = "species"\n'
            f"features = {json.dumps(FEATURES)}\nmodel = {json.dumps(model)}\nhidden = [64, 64]\n"
            f"epochs = {epochs}\nbatch_size = 32\nlr = 3e-3\nseed = 0\n"
        )
        return path

    # ---- the whole run ------------------------------------------------------------------------------

    def run_all(self) -> None:
        self.check("nvml", self.nvml)
        self.check("nvidia-smi", self.nvidia_smi)
        self.check("daemon start", self.daemon_start)
        try:
            self.check("visible devices", self.visible_devices)
            self.check("torch sees grant", self.torch_sees_grant)
            self.check("pair overlap", self.pair_overlap)
            self.check("pair caps", self.pair_caps)
            self.check("cap enforced", self.cap_enforced)
            self.check("bf16 autocast", self.bf16)
            self.check("onnxruntime cuda", self.onnxruntime_cuda)
        finally:
            self.deadline = Deadline(60)  # stopping is never skipped for want of time
            self.check("daemon stop", self.daemon_stop)
            if self.gpus is not None:
                self.gpus.close()

    def versions(self) -> list[str]:
        def version(name: str) -> str:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                return "missing"

        cuda = self.cuda or {}
        gpus = self.gpus
        return [
            f"mode: {'FAKE NVML (simulated H200; jobs train on the CPU)' if self.args.fake else 'real driver'}",
            f"Python {platform.python_version()}; torch {version('torch')} (CUDA"
            f" {cuda.get('torch_cuda', 'n/a')}, cuda available {cuda.get('cuda_available', 'n/a')});"
            f" onnxruntime {version('onnxruntime')}; onnxruntime-gpu {version('onnxruntime-gpu')};"
            f" nvidia-ml-py {version('nvidia-ml-py')}; duckdb {version('duckdb')}",
            f"NVIDIA driver {getattr(gpus, 'driver_version', None)}, CUDA driver API"
            f" {getattr(gpus, 'cuda_version', None)}",
            "missing Python packages: " + (", ".join(self.missing) or "none"),
        ]

    def report(self) -> str:
        rows = [[r.name, r.verdict, r.detail] for r in self.results]
        lines = [*(f"- {v}" for v in self.versions()), ""]
        lines += [table(["check", "result", "detail"], rows), ""]
        for r in self.results:
            if r.figures:
                lines += [f"{r.name} ({r.seconds:.1f}s):", ""]
                lines += [*(f"- {figure}" for figure in r.figures), ""]
        return "\n".join(lines).rstrip() + "\n"


def cap_findings(job: dict[str, Any], log_text: str, cap_bytes: int) -> tuple[str, list[str]]:
    """A fractional train job against its GPU memory cap: (a figure line, problems). It must say
    in its log that it capped itself, record torch's peak allocation (`gpu_mem_bytes`, so it
    trained on the GPU) within the cap, and the daemon's NVML peak (`peak_gpu_mem`, None when
    no sample caught it) must be within it too."""
    capped = next((line for line in log_text.splitlines() if "GPU memory capped" in line), None)
    peak = job["metrics"].get("gpu_mem_bytes")
    seen = job.get("peak_gpu_mem")
    figure = (
        f"job {job['id']}: {capped or 'no cap line in the log'}; torch peak allocated"
        f" {_mib(peak)}; NVML peak {_mib(seen)} (cap {_mib(cap_bytes)})"
    )
    problems = []
    if capped is None:
        problems.append(f"job {job['id']} did not cap its GPU memory")
    if peak is None:
        problems.append(f"job {job['id']} recorded no gpu_mem_bytes (did it train on the GPU?)")
    elif peak > cap_bytes:
        problems.append(
            f"job {job['id']} allocated {_mib(peak)}, over its cap of {_mib(cap_bytes)}"
        )
    if seen is not None and seen > cap_bytes:
        problems.append(f"job {job['id']} held {_mib(seen)} by NVML, over its cap")
    return figure, problems


def autocast_findings(
    env: dict[str, Any], direct: dict[str, Any] | None, bf16_supported: bool
) -> list[str]:
    """Problems with bf16 autocast: the train job's recorded environment (run.json) must show
    the GPU and `autocast` "bfloat16" where the GPU supports bf16 (None where not), and torch's
    own autocast matmul (`direct`, from probe_cuda) must come out in bfloat16 with a relative
    error of a bf16 product: above 1e-4 (so not float32) and below 5e-2 (so not garbage)."""
    problems = []
    if not str(env.get("device", "")).startswith("cuda"):
        problems.append(f"the train job ran on {env.get('device')}, not the granted GPU")
    if "autocast" not in env:
        problems.append("the train job does not record whether it used autocast")
    elif env["autocast"] != ("bfloat16" if bf16_supported else None):
        expected = "bfloat16" if bf16_supported else None
        problems.append(f"the job's autocast is {env['autocast']}, expected {expected}")
    if direct is None or direct["dtype"] != "bfloat16" or not 1e-4 < direct["rel_err"] < 5e-2:
        problems.append(f"torch's autocast did not compute in bfloat16: {direct}")
    return problems


def ort_verdict(seen: dict[str, Any], latency: dict[str, Any]) -> tuple[str, str]:
    """(verdict, detail) of onnxruntime on the GPU, from probe_ort's findings (`seen`) and the
    export job's model card `latency`: NOT AVAILABLE without a CUDAExecutionProvider; FAIL when
    the session fell back to the CPU, no node ran on CUDA, outputs differ from the CPU's by more
    than 1e-2, or the export job did not time the GPU it was granted."""
    if "CUDAExecutionProvider" not in (seen.get("available") or []):
        return NOT_AVAILABLE, (
            f"onnxruntime {seen.get('onnxruntime')} has no CUDAExecutionProvider (available:"
            f" {', '.join(seen.get('available') or [])}); onnxruntime-gpu provides it"
        )
    cuda_nodes = (seen.get("node_runs_by_provider") or {}).get("CUDAExecutionProvider", 0)
    first = (seen.get("session_providers") or [None])[0]
    if first != "CUDAExecutionProvider" or not cuda_nodes:
        return FAIL, (
            f"CUDAExecutionProvider is available but the session ran on"
            f" {seen.get('session_providers')} (node runs {seen.get('node_runs_by_provider')});"
            " its CUDA libraries could not be loaded (see the probe job's log)"
        )
    if seen["max_abs_diff_vs_cpu"] > 1e-2:
        return FAIL, f"CUDA and CPU outputs differ by {seen['max_abs_diff_vs_cpu']:.2e}"
    if "cuda" not in latency:
        return FAIL, "the export job did not time onnxruntime on the GPU it was granted"
    return PASS, f"{cuda_nodes} node runs on CUDAExecutionProvider; outputs match the CPU's"


def compare_with_smi(
    samples: list[Any], csv_text: str, fields: list[str]
) -> tuple[list[str], list[str], int]:
    """NVML's memory figures (`samples`, GpuSample) against nvidia-smi's
    `--query-gpu=FIELDS --format=csv,noheader,nounits` output (MiB), matched by UUID.
    Returns (figure lines, problems, GPUs compared). Totals must agree within 1 MiB (rounding).
    Used must agree within SMI_USED_SLACK_MIB, against nvidia-smi's used or its used plus
    reserved: NVML's v1 memory info counts the driver's reservation as used, newer nvidia-smi
    reports it apart. "[N/A]" figures are shown and not compared."""
    rows = {}
    for line in csv_text.strip().splitlines():
        values = [v.strip() for v in line.split(",")]
        rows[values[0]] = dict(zip(fields, values, strict=False))
    figures, problems, compared = [], [], 0
    for s in samples:
        row = rows.get(s.uuid or "")
        if row is None:
            problems.append(f"GPU {s.index} ({s.uuid}) is not in nvidia-smi's list")
            continue
        total, used, reserved = (
            _mib_field(row.get(f)) for f in ("memory.total", "memory.used", "memory.reserved")
        )
        nvml_total, nvml_used = s.memory_total_bytes // MIB, s.memory_used_bytes // MIB
        figures.append(
            f"GPU {s.index}: total NVML {nvml_total} MiB, nvidia-smi {_na(total, ' MiB')}; used"
            f" NVML {nvml_used} MiB, nvidia-smi {_na(used, ' MiB')}"
            + ("" if reserved is None else f" (+ {reserved} MiB reserved)")
        )
        if total is None or used is None:
            continue
        compared += 1
        if abs(nvml_total - total) > 1:
            problems.append(f"GPU {s.index}: total {nvml_total} MiB by NVML, {total} by nvidia-smi")
        gap = min(abs(nvml_used - used), abs(nvml_used - used - (reserved or 0)))
        if gap > SMI_USED_SLACK_MIB:
            problems.append(
                f"GPU {s.index}: used {nvml_used} MiB by NVML, {used}"
                f" (+{reserved or 0} reserved) by nvidia-smi"
            )
    return figures, problems, compared


def _mib_field(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def _smi(smi: str, fields: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [smi, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def _bare_uuid(uuid: str | None) -> str:
    if not uuid:
        return ""
    text = uuid.lower()
    return text.split("-", 1)[1] if text.startswith(("gpu-", "mig-")) else text


def _gib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / GIB:.1f} GiB"


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / MIB:.1f} MiB"


def _na(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value}{unit}"


def _clock(t: float | None) -> str:
    return (
        "?" if t is None else time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 10)}"
    )


def take_section(source: Path) -> int:
    """Replace this checkout's `GPU check` section of bench/RESULTS.md with the one in `source`
    (a RESULTS.md that `--write` updated on the GPU machine), keeping every other section."""
    from _results import RESULTS

    pattern = re.compile(
        rf"<!-- section:{re.escape(SECTION)} -->.*?<!-- /section:{re.escape(SECTION)} -->\n", re.S
    )
    try:
        found = pattern.search(source.read_text())
    except OSError as error:
        print(f"gpu_check: --take {source}: {error.strerror}", file=sys.stderr)
        return 2
    if found is None:
        print(f"gpu_check: --take {source}: no '{SECTION}' section in it", file=sys.stderr)
        return 2
    text = RESULTS.read_text()
    text = (
        pattern.sub(lambda _: found.group(0), text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + found.group(0)
    )
    RESULTS.write_text(text)
    print(f"bench/RESULTS.md: section '{SECTION}' taken from {source}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fake", action="store_true", help="run against the simulated driver")
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    parser.add_argument(
        "--scenario", metavar="FILE.json", help="with --fake: this simulated machine instead"
    )
    parser.add_argument("--home", help="WORKBENCH_HOME to use (default: a fresh temporary one)")
    parser.add_argument("--json-out", help="also write the results as JSON to this file")
    parser.add_argument("--budget", type=float, default=300, help="seconds for all the checks")
    parser.add_argument(
        "--take",
        metavar="RESULTS.md",
        help="copy the GPU check section of a RESULTS.md written on the GPU machine into this one",
    )
    parser.add_argument("--probe", choices=["cuda", "ort"], help=argparse.SUPPRESS)
    parser.add_argument("probe_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        found = probe_cuda() if args.probe == "cuda" else probe_ort(args.probe_args[0])
        print(MARK + json.dumps(found), flush=True)
        return 0
    if args.take:
        return take_section(Path(args.take))
    if args.fake and args.write:
        print("gpu_check: --write records the real driver only, not --fake", file=sys.stderr)
        return 2
    from _results import machine

    machine_line = machine()  # before the fake NVML is installed in this process
    made = args.home is None
    home = Path(args.home or tempfile.mkdtemp(prefix="wb-gpucheck-", dir="/tmp")).resolve()
    env = {
        **os.environ,
        "WORKBENCH_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("WORKBENCH_FAKE_NVML", None)
    if args.fake:
        from workbench.telemetry import fakenvml

        home.mkdir(parents=True, exist_ok=True)
        try:
            machine_data = (
                json.loads(Path(args.scenario).read_text()) if args.scenario else FAKE_SCENARIO
            )
            scenario = fakenvml.write_scenario(home / "fake_nvml.json", machine_data)
        except (OSError, ValueError) as error:
            print(f"gpu_check: --scenario {args.scenario}: {error}", file=sys.stderr)
            return 2
        env["WORKBENCH_FAKE_NVML"] = os.environ["WORKBENCH_FAKE_NVML"] = str(scenario)
    else:
        os.environ.pop("WORKBENCH_FAKE_NVML", None)
    os.environ["WORKBENCH_HOME"] = str(home)
    checker = GpuCheck(args, home, env)
    (home / "gpucheck").mkdir(parents=True, exist_ok=True)
    try:
        checker.run_all()
    finally:
        if made:
            shutil.rmtree(home, ignore_errors=True)
    body = f"Machine: {machine_line}\n\n" + checker.report()
    print(body)
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {"versions": checker.versions(), "results": [asdict(r) for r in checker.results]},
                indent=2,
            )
        )
    if args.write:
        note = (
            "\n\nEach check is PASS, FAIL or NOT AVAILABLE (the machine lacks what it needs)."
            " The jobs ran through the real CLI and daemon in a temporary WORKBENCH_HOME."
        )
        write_section(SECTION, "python bench/gpu_check.py --write", checker.report() + note)
    return 1 if any(r.verdict == FAIL for r in checker.results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
