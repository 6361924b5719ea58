"""Your own training script, first-class: the tracking API (workbench.track) in real scripts run
as real jobs by the real daemon; their runs in `workbench runs`, their models in a pipeline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
from conftest import wait_for, workbench

from workbench.catalog import lake, registry, tracking
from workbench.db.store import Store
from workbench.paths import Home

LOOP = textwrap.dedent(
    """
    import sys, time
    import torch
    import workbench.track as wt

    lr = float(sys.argv[1]) if len(sys.argv) > 1 else 0.1
    data = wt.dataset("blobs")
    table = data.relation().to_arrow_table()
    x = torch.tensor([table.column(c).to_pylist() for c in ("a", "b")], dtype=torch.float32).T
    labels = sorted(set(table.column("label").to_pylist()))
    y = torch.tensor([labels.index(v) for v in table.column("label").to_pylist()])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    wt.params({"lr": lr, "hidden": 16, "optimizer": "sgd"})
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    for epoch in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        accuracy = (model(x).argmax(1) == y).float().mean()
        wt.log({"loss": loss, "val_accuracy": accuracy, "bad": "text"}, step=epoch, epoch=epoch)
        wt.progress((epoch + 1) / epochs, f"epoch {epoch + 1}")
        if len(sys.argv) > 3:
            time.sleep(float(sys.argv[3]))
    torch.save(model.state_dict(), "weights.pt")
    wt.register_model("weights.pt", features=["a", "b"], target="label", build="netdef:build")
    print("trained", flush=True)
    """
)

NETDEF = textwrap.dedent(
    """
    import torch

    def build(in_features, out_features):
        return torch.nn.Sequential(
            torch.nn.Linear(in_features, 16), torch.nn.ReLU(), torch.nn.Linear(16, out_features)
        )
    """
)


def blobs(home: Home) -> None:
    """Two separable classes in columns a, b -> label."""
    rows = 80
    a = [(i % 2) * 4.0 + (i % 7) * 0.1 for i in range(rows)]
    b = [(i % 2) * -3.0 + (i % 5) * 0.1 for i in range(rows)]
    label = ["left" if i % 2 == 0 else "right" for i in range(rows)]
    store = Store.open(home.state_db)
    lake.publish_arrow(home, store, "blobs", pa.table({"a": a, "b": b, "label": label}))
    store.close()


def script_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "train.py").write_text(LOOP)
    (folder / "netdef.py").write_text(NETDEF)
    return folder


def runs_json() -> list[dict[str, Any]]:
    result = workbench("runs", "--json")
    assert result.returncode == 0, result.stderr
    listed: list[dict[str, Any]] = json.loads(result.stdout)
    return listed


def test_pytorch_loop_in_a_pipeline_command_test_export(home: Home, tmp_path: Path) -> None:
    """A plain PyTorch loop logs through the API: its run in `runs --json` with params, metrics
    (the string value refused, the script going on), its dataset's lineage; the model it
    registered is taken by a test and an export stage of the same pipeline, whose card's
    lineage reaches the dataset."""
    blobs(home)
    folder = script_dir(tmp_path)
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        textwrap.dedent(
            f"""
            [pipeline]
            name = "byo"

            [[stage]]
            name = "fit"
            kind = "command"
            argv = ["{sys.executable}", "train.py", "0.5"]
            cwd = "{folder}"
            env = {{ PYTHONPATH = "{folder}" }}

            [[stage]]
            name = "check"
            kind = "test"
            after = ["fit"]
            model = "fit"
            dataset = "blobs"
            gate = {{ min_accuracy = 0.9 }}

            [[stage]]
            name = "ship"
            kind = "export"
            after = ["check"]
            model = "fit"
            dataset = "blobs"
            """
        )
    )
    result = workbench("--batch", str(pipeline), "--json", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    [run] = [r for r in runs_json() if r["source"] == "script"]
    assert run["params"] == {"lr": 0.5, "hidden": 16, "optimizer": "sgd"}
    assert run["metrics"]["val_accuracy"] >= 0.9 and run["metrics"]["epoch"] == 29
    assert "bad" not in run["metrics"]
    store = Store.open(home.state_db)
    info = lake.version_info(store, "blobs")
    assert run["datasets"] == [{"name": "blobs", "version": 1, "content_hash": info.content_hash}]
    assert run["dataset"] == "blobs" and run["finished_at"] is not None
    series = store.metrics(run["job_id"], ["loss"])["loss"]
    assert [s for s, _ in series] == list(range(30))
    log = (home.run_dir(run["job_id"]) / "log").read_text()
    assert log.count("metric 'bad'") == 1 and "trained" in log
    [evaluation] = registry.evaluations(store, run["job_id"])
    assert evaluation["gate_passed"] and evaluation["metrics"]["accuracy"] >= 0.9
    exported = [m for m in registry.list_models(store) if m["format"] == "onnx"]
    [card] = [m["card"] for m in exported]
    assert card["run"]["job_id"] == run["job_id"]
    assert card["dataset"]["name"] == "blobs"
    assert card["dataset"]["content_hash"] == info.content_hash
    assert card["parity"]["max_abs_diff"] < 1e-4 and card["latency"]
    assert card["test"]["gate_passed"]
    store.close()


def test_metrics_are_live_while_the_script_trains(home: Home, tmp_path: Path) -> None:
    """Points reach `runs --json` while the job runs (applied every half second)."""
    blobs(home)
    folder = script_dir(tmp_path)
    submitted = workbench(
        "submit", "--cwd", str(folder), "--", sys.executable, "train.py", "0.1", "400", "0.05",
        env={"PYTHONPATH": str(folder)},
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout.split()[0])

    def live() -> dict[str, Any] | None:
        found = [r for r in runs_json() if r["job_id"] == job_id and r["metrics"]]
        return found[0] if found and found[0]["state"] == "running" else None

    run = wait_for(live, timeout=60, interval=0.3, what="metrics of the running script")
    assert run["source"] == "script" and "loss" in run["metrics"]
    assert workbench("cancel", str(job_id)).returncode == 0


def _script_job(home: Home, tmp_path: Path, body: str) -> tuple[subprocess.Popen[str], Path]:
    """Run `body` as if the daemon had started it as job 1 (its environment, its run folder)."""
    run_dir = home.run_dir(1)
    run_dir.mkdir(parents=True, exist_ok=True)
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "WORKBENCH_JOB_ID": "1", "WORKBENCH_RUN_DIR": str(run_dir)}
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    return proc, run_dir / "records.jsonl"


def test_kill_9_loses_at_most_the_flush_window(home: Home, tmp_path: Path) -> None:
    """Points logged more than FLUSH_INTERVAL_S before a SIGKILL are in the records file."""
    from workbench import track

    proc, records = _script_job(
        home,
        tmp_path,
        """
        import sys, time
        import workbench.track as wt
        step = 0
        while True:
            wt.log({"loss": 1.0 / (step + 1)}, step=step)
            print(step, time.time(), flush=True)
            step += 1
            time.sleep(0.01)
        """,
    )
    assert proc.stdout is not None
    logged: list[tuple[int, float]] = []
    while len(logged) < 150:
        step, at = proc.stdout.readline().split()
        logged.append((int(step), float(at)))
    os.kill(proc.pid, signal.SIGKILL)
    killed_at = time.time()
    proc.wait()
    written = [json.loads(line)["step"] for line in records.read_text().splitlines()]
    assert written == list(range(len(written)))  # whole lines, in order
    window = track.FLUSH_INTERVAL_S + 0.1  # plus the scheduling slack of a loaded machine
    must_have = [s for s, at in logged if at < killed_at - window]
    assert must_have and max(written) >= max(must_have)


def test_bad_values_and_unknown_datasets_never_crash_the_script(home: Home, tmp_path: Path) -> None:
    """NaN is stored as missing, inf kept; strings, lists, huge dicts and bad steps are refused
    with one warning each and the script goes on; `dataset()` of an unknown name raises a
    DatasetError naming it, which the script may catch."""
    blobs(home)
    proc, records = _script_job(
        home,
        tmp_path,
        """
        import workbench.track as wt
        for step in range(3):
            wt.log({"nan": float("nan"), "inf": float("inf"), "s": "x", "l": [1, 2]}, step=step)
        wt.log({f"m{i}": i for i in range(5000)})
        wt.log({"ok": 1}, step="soon")
        wt.log("not a dict")
        wt.params({"lr": object()})
        wt.progress(float("nan"), "nan progress")
        wt.artifact("/no/such/file")
        wt.register_model("/no/such/model.pt", features=["a"], target="label")
        try:
            wt.dataset("nope")
        except wt.DatasetError as error:
            print("dataset error:", error)
        try:
            wt.dataset("blobs", version=7)
        except LookupError as error:
            print("version error:", error)
        print("still training", wt.dataset("blobs").version)
        """,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "dataset error: no dataset named 'nope' in the lake (datasets: blobs)" in out
    assert "version error: dataset 'blobs' has no version 7 (it has v1)" in out
    assert "still training 1" in out
    assert err.count("metric 's'") == 1 and err.count("metric 'l'") == 1
    assert "5000 metrics refused" in err and "register_model" in err
    store = Store.open(home.state_db)
    from workbench.db.journal import apply_records
    from workbench.db.store import JobRequest

    job_id = store.submit(JobRequest("script", "command", {"argv": ["x"]}, "/", {}))
    assert job_id == 1
    notes: list[str] = []
    apply_records(store, 1, records, 0, notes)
    values = store.metrics(1)
    assert values["nan"] == [(0, None), (1, None), (2, None)]
    assert values["inf"][0] == (0, float("inf"))
    run = tracking.get_run(store, 1)
    assert run is not None and run.params["lr"].startswith("<object object at")
    assert [d["name"] for d in run.datasets] == ["blobs"]
    assert not notes
    store.close()


def test_the_script_runs_unchanged_outside_the_workbench(tmp_path: Path) -> None:
    """No job environment: every call does nothing, one note on stderr, exit 0."""
    script = tmp_path / "plain.py"
    script.write_text(
        textwrap.dedent(
            """
            import workbench.track as wt
            wt.params({"lr": 0.1})
            for step in range(100):
                wt.log({"loss": 1.0}, step=step)
            wt.progress(0.5, "half")
            print(wt.artifact(__file__), wt.checkpoint_dir().name, wt.restarts(), wt.is_resume(),
                  wt.stop_requested())
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
    env["WORKBENCH_HOME"] = str(tmp_path / "nohome")
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("workbench.track:") == 1
    assert result.stdout.split()[1:] == ["checkpoints", "0", "False", "None"]
    assert not (tmp_path / "records.jsonl").exists()


def test_restart_and_stop_helpers_read_the_job_environment(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from workbench import track

    stop = tmp_path / "stop"
    monkeypatch.setenv("WORKBENCH_CHECKPOINT_DIR", str(tmp_path / "ck"))
    monkeypatch.setenv("WORKBENCH_RESTARTS", "2")
    monkeypatch.setenv("WORKBENCH_STOP_FILE", str(stop))
    assert track.checkpoint_dir() == tmp_path / "ck" and (tmp_path / "ck").is_dir()
    assert track.restarts() == 2 and track.is_resume()
    assert track.stop_requested() is None
    stop.write_text("preempted by group a\n")
    assert track.stop_requested() == "preempted by group a"


def test_a_command_stage_sweeps_and_its_best_point_is_tested(home: Home, tmp_path: Path) -> None:
    """`{lr}` in a command stage's argv is swept; each point's run records its params and the
    sweep metric; the test stage takes the best point by the logged metric."""
    blobs(home)
    folder = script_dir(tmp_path)
    pipeline = tmp_path / "sweep.toml"
    pipeline.write_text(
        textwrap.dedent(
            f"""
            [pipeline]
            name = "byo-sweep"

            [[stage]]
            name = "fit"
            kind = "command"
            argv = ["{sys.executable}", "train.py", "{{lr}}", "5"]
            cwd = "{folder}"
            env = {{ PYTHONPATH = "{folder}" }}
            sweep = {{ lr = [0.0001, 0.5], metric = "val_accuracy" }}

            [[stage]]
            name = "check"
            kind = "test"
            after = ["fit"]
            model = "fit"
            dataset = "blobs"
            """
        )
    )
    result = workbench("--batch", str(pipeline), "--json", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    runs = {r["params"]["lr"]: r for r in runs_json() if r["source"] == "script"}
    assert set(runs) == {0.0001, 0.5}
    assert all(r["sweep_metric"] == "val_accuracy" for r in runs.values())
    assert runs[0.5]["metrics"]["val_accuracy"] > runs[0.0001]["metrics"]["val_accuracy"]
    [sweep] = report["sweeps"]
    assert sweep["best_job"] == runs[0.5]["job_id"]
    store = Store.open(home.state_db)
    [evaluation] = registry.evaluations(store)
    assert evaluation["model"]["run_job_id"] == runs[0.5]["job_id"]
    store.close()


def test_a_command_sweep_must_name_its_metric_and_placeholders(home: Home, tmp_path: Path) -> None:
    pipeline = tmp_path / "bad.toml"
    for sweep, wanted in (
        ("{ lr = [0.1, 0.2] }", "key 'sweep.metric'"),
        ('{ lr = [0.1], wd = [1], metric = "loss" }', "key 'sweep.wd': argv has no {wd}"),
    ):
        pipeline.write_text(
            '[pipeline]\nname = "p"\n[[stage]]\nname = "fit"\nkind = "command"\n'
            f'argv = ["python", "t.py", "{{lr}}"]\nsweep = {sweep}\n'
        )
        result = workbench("--batch", str(pipeline))
        assert result.returncode == 2 and wanted in result.stderr, result.stderr


TENSORBOARD_SCRIPT = textwrap.dedent(
    """
    import time
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter("tb/run1")
    for step in range(20):
        writer.add_scalar("train/loss", 1.0 / (step + 1), step)
        writer.add_scalar("val/accuracy", step / 20, step)
        writer.flush()
        time.sleep(0.05)
    writer.close()
    """
)

LIGHTNING_SCRIPT = textwrap.dedent(
    """
    # What Lightning's CSVLogger writes (lightning_logs/version_N/metrics.csv): one row per
    # log call, blank cells for metrics not logged then; the file is rewritten when columns grow.
    import csv, os
    os.makedirs("lightning_logs/version_0", exist_ok=True)
    rows = []
    for epoch in range(3):
        for step in range(epoch * 10, epoch * 10 + 10, 5):
            rows.append({"epoch": epoch, "step": step, "train_loss": 1.0 / (step + 1)})
        rows.append({"epoch": epoch, "step": epoch * 10 + 9, "val_loss": 0.5 / (epoch + 1)})
        with open("lightning_logs/version_0/metrics.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, ["epoch", "step", "train_loss", "val_loss"])
            writer.writeheader()
            writer.writerows(rows)
    """
)

HF_SCRIPT = textwrap.dedent(
    """
    # What the Hugging Face Trainer writes: trainer_state.json in each checkpoint-N folder and
    # in output_dir, each with the whole log_history so far.
    import json, os
    history = []
    for step in (10, 20, 30):
        history.append({"epoch": step / 30, "step": step, "loss": 3.0 / step, "learning_rate": 1e-3})
        history.append({"epoch": step / 30, "step": step, "eval_loss": 2.0 / step})
        os.makedirs(f"out/checkpoint-{step}", exist_ok=True)
        state = {"global_step": step, "log_history": history}
        with open(f"out/checkpoint-{step}/trainer_state.json", "w") as handle:
            json.dump(state, handle)
    with open("out/trainer_state.json", "w") as handle:
        json.dump(state, handle)
    """
)


def test_captured_files_become_the_run_metrics(home: Home, tmp_path: Path) -> None:
    """Three scripts that import nothing of the workbench: TensorBoard events (torch's
    SummaryWriter), a Lightning CSVLogger metrics.csv and Hugging Face trainer_state.json files,
    declared with --capture; their points become the runs' metrics. A metrics.csv left in the
    folder by an earlier run (older than the job) is not read."""
    folder = tmp_path / "proj"
    (folder / "lightning_logs" / "version_9").mkdir(parents=True)
    stale = folder / "lightning_logs" / "version_9" / "metrics.csv"
    stale.write_text("epoch,step,stale_loss\n0,0,1.0\n")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    jobs = {}
    for name, body, capture in (
        ("tb", TENSORBOARD_SCRIPT, "tb"),
        ("lightning", LIGHTNING_SCRIPT, "lightning_logs"),
        ("hf", HF_SCRIPT, "out"),
    ):
        (folder / f"{name}.py").write_text(body)
        result = workbench(
            "submit", "--cwd", str(folder), "--capture", capture, "--name", name, "--wait",
            "--", sys.executable, f"{name}.py",
            timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        jobs[name] = int(result.stdout.split()[0])
    store = Store.open(home.state_db)
    tb = store.metrics(jobs["tb"])
    assert [s for s, _ in tb["train/loss"]] == list(range(20))
    assert abs(tb["val/accuracy"][-1][1] - 19 / 20) < 1e-6  # float32 in the event file
    lightning = store.metrics(jobs["lightning"])
    assert "stale_loss" not in lightning
    assert [s for s, _ in lightning["train_loss"]] == [0, 5, 10, 15, 20, 25]
    assert [s for s, _ in lightning["val_loss"]] == [9, 19, 29]
    hf = store.metrics(jobs["hf"])
    assert [s for s, _ in hf["loss"]] == [10, 20, 30]  # once each, though in four files
    assert [s for s, _ in hf["eval_loss"]] == [10, 20, 30]
    listed = {r["name"]: r for r in runs_json()}
    assert listed["hf"]["metrics"]["eval_loss"] == 2.0 / 30
    assert listed["tb"]["source"] == "script"
    store.close()


TORCHSCRIPT_SCRIPT = textwrap.dedent(
    """
    import torch
    import workbench.track as wt

    table = wt.dataset("line").relation().to_arrow_table()
    x = torch.tensor(table.column("x").to_pylist(), dtype=torch.float32).reshape(-1, 1)
    y = torch.tensor(table.column("y").to_pylist(), dtype=torch.float32).reshape(-1, 1)
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        wt.log({"train_loss": loss.item()})
    torch.jit.save(torch.jit.script(model), "line.ts")
    wt.artifact("line.ts")
    wt.register_model("line.ts", features=["x"], target="y", task="regression")
    """
)


def test_a_torchscript_regression_model_is_tested_in_the_pipeline(
    home: Home, tmp_path: Path
) -> None:
    """TorchScript, regression: the test stage's metrics are in the target's units; the run
    records the artifact the script kept; export refuses it saying what it can export."""
    store = Store.open(home.state_db)
    xs = [i / 10 for i in range(50)]
    lake.publish_arrow(home, store, "line", pa.table({"x": xs, "y": [3 * x + 1 for x in xs]}))
    store.close()
    folder = tmp_path / "ts"
    folder.mkdir()
    (folder / "fit.py").write_text(TORCHSCRIPT_SCRIPT)
    pipeline = tmp_path / "ts.toml"
    pipeline.write_text(
        textwrap.dedent(
            f"""
            [pipeline]
            name = "ts"

            [[stage]]
            name = "fit"
            kind = "command"
            argv = ["{sys.executable}", "fit.py"]
            cwd = "{folder}"

            [[stage]]
            name = "check"
            kind = "test"
            after = ["fit"]
            model = "fit"
            dataset = "line"
            gate = {{ max_rmse = 0.1 }}

            [[stage]]
            name = "ship"
            kind = "export"
            after = ["check"]
            model = "fit"
            dataset = "line"
            """
        )
    )
    result = workbench("--batch", str(pipeline), timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "check  job 2     succeeded" in result.stdout
    assert "a TorchScript model cannot be exported to ONNX here" in result.stdout
    [run] = runs_json()
    assert run["task"] == "regression" and run["metrics"]["train_loss"] < 0.01
    assert [Path(a["path"]).name for a in run["artifacts"]] == ["line.ts"]
    store = Store.open(home.state_db)
    [evaluation] = registry.evaluations(store)
    assert evaluation["metrics"]["rmse"] < 0.1 and evaluation["gate_passed"]
    store.close()


def test_a_forked_worker_never_writes_the_parents_points_twice(home: Home, tmp_path: Path) -> None:
    """A DataLoader-style fork: the child inherits the parent's unwritten buffer; only the parent
    writes it, and what the child logs itself is kept too."""
    proc, records = _script_job(
        home,
        tmp_path,
        """
        import os, sys
        import workbench.track as wt
        for step in range(5):
            wt.log({"loss": 1.0}, step=step)
        pid = os.fork()
        if pid == 0:
            wt.log({"child": 1.0}, step=100)
            sys.exit(0)  # runs atexit, as a worker process ending normally does
        os.waitpid(pid, 0)
        wt.log({"loss": 1.0}, step=5)
        """,
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    steps = sorted(json.loads(line)["step"] for line in records.read_text().splitlines())
    assert steps == [0, 1, 2, 3, 4, 5, 100]


def test_a_restarted_job_continues_its_steps(home: Home, tmp_path: Path) -> None:
    """With WORKBENCH_RESTARTS set, `log()` without a step goes on after the last step the
    earlier start wrote."""
    body = """
        import workbench.track as wt
        for _ in range(3):
            wt.log({"loss": 1.0})
        """
    first, records = _script_job(home, tmp_path, body)
    assert first.wait(timeout=60) == 0
    os.environ["WORKBENCH_RESTARTS"] = "1"
    try:
        second, _ = _script_job(home, tmp_path, body)
        assert second.wait(timeout=60) == 0
    finally:
        del os.environ["WORKBENCH_RESTARTS"]
    steps = [json.loads(line)["step"] for line in records.read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5]
