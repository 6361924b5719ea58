"""The stop protocol of command jobs against the real daemon and real processes: the stop signal
and its grace on cancel, the stop file written before the signal, the warning before a time
limit, preemption only of checkpointable command jobs, and a checkpointable job that resumes
after a preemption to the same final weights as an uninterrupted run."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import wait_for, wait_state, workbench
from workbench.daemon.client import Client
from workbench.paths import Home
from workbench.telemetry import fakenvml

# A job whose handler needs 3 s to save: it writes what the stop file said, then "saved".
SLOW_HANDLER = textwrap.dedent(
    """
    import os, signal, sys, time
    def stop(signum, frame):
        why = open(os.environ["WORKBENCH_STOP_FILE"]).read().strip()
        print(f"got {signal.Signals(signum).name}: {why}", flush=True)
        time.sleep(3)
        print("saved", flush=True)
        sys.exit(0)
    signal.signal(getattr(signal, sys.argv[1]), stop)
    print("ready", flush=True)
    while True:
        time.sleep(0.1)
    """
)


def _script(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _log(home: Home, job_id: int) -> str:
    return (home.run_dir(job_id) / "log").read_text()


def _submit(*args: str) -> int:
    done = workbench("submit", *args)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


@pytest.mark.parametrize(
    ("flags", "signal_name", "saved"),
    [
        ((), "SIGTERM", True),  # the default: SIGTERM, then the configured 10 s grace
        (("--stop-signal", "USR1"), "SIGUSR1", True),
        (("--kill-grace", "1s"), "SIGTERM", False),  # a grace shorter than the handler
    ],
)
def test_cancel_sends_the_stop_signal_and_gives_the_handler_its_grace(
    client: Client,
    home: Home,
    tmp_path: Path,
    flags: tuple[str, ...],
    signal_name: str,
    saved: bool,
) -> None:
    script = _script(tmp_path, "job.py", SLOW_HANDLER)
    job_id = _submit(*flags, "--", sys.executable, str(script), signal_name)
    wait_state(client, job_id, "running")
    wait_for(lambda: "ready" in _log(home, job_id), what="the job to be ready")
    assert workbench("cancel", str(job_id)).returncode == 0
    ended = wait_state(client, job_id, "cancelled", timeout=30)
    log = _log(home, job_id)
    assert f"got {signal_name}: cancelled" in log  # the stop file was written before the signal
    assert ("saved" in log) is saved, log
    assert ("SIGKILL" in (ended.reason or "")) is not saved


def test_a_bad_stop_signal_is_refused_at_submit(home: Home) -> None:
    done = workbench("submit", "--stop-signal", "KILL", "--", "true")
    assert done.returncode == 2
    assert "stop_signal" in done.stderr and "TERM" in done.stderr
    spec = home.root / "job.toml"
    spec.write_text('kind = "command"\nargv = ["true"]\nsignal_before = "soon"\n')
    done = workbench("submit", "--spec", str(spec))
    assert done.returncode == 2 and "signal_before" in done.stderr and str(spec) in done.stderr
    done = workbench("submit", "--signal-before", "1m", "--", "true")  # no time limit to warn of
    assert done.returncode == 2 and "signal_before" in done.stderr and "time limit" in done.stderr


def test_the_time_limit_warning_comes_signal_before_the_limit(
    client: Client, home: Home, tmp_path: Path
) -> None:
    script = _script(
        tmp_path,
        "warned.py",
        textwrap.dedent(
            """
            import os, signal, time
            start = time.monotonic()
            def warned(signum, frame):
                why = open(os.environ["WORKBENCH_STOP_FILE"]).read().strip()
                print(f"warned after {time.monotonic() - start:.1f}s: {why}", flush=True)
                raise SystemExit(0)
            signal.signal(signal.SIGTERM, warned)
            time.sleep(60)
            """
        ),
    )
    job_id = _submit(
        "--time-limit", "6s", "--signal-before", "4s", "--", sys.executable, str(script)
    )
    ended = wait_state(client, job_id, {"succeeded", "failed"}, timeout=30)
    assert ended.state == "succeeded", ended.reason  # it saved and exited before its limit
    line = next(x for x in _log(home, job_id).splitlines() if x.startswith("warned after"))
    seconds = float(line.split()[2].rstrip("s:"))
    assert 1.0 <= seconds < 5.0, line
    assert "time limit of 6.0s reached in" in line


def test_the_contract_variables_reach_the_job(client: Client, home: Home) -> None:
    job_id = _submit(
        "--",
        "sh",
        "-c",
        'echo "$WORKBENCH_RESTARTS $WORKBENCH_CHECKPOINT_DIR $WORKBENCH_STOP_FILE";'
        ' test -d "$WORKBENCH_CHECKPOINT_DIR" && test ! -e "$WORKBENCH_STOP_FILE"',
    )
    assert wait_state(client, job_id, {"succeeded", "failed"}).state == "succeeded"
    run_dir = home.run_dir(job_id)
    assert _log(home, job_id).split() == ["0", str(run_dir / "checkpoints"), str(run_dir / "stop")]


# ---- GPU pooling: only checkpointable command jobs are preempted ---------------------------


def _fake_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    scenario = fakenvml.write_scenario(tmp_path / "gpus.json", [{}] * count)
    monkeypatch.setenv("WORKBENCH_FAKE_NVML", str(scenario))


def test_a_command_job_that_is_not_checkpointable_is_not_preempted(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_gpus(tmp_path, monkeypatch, 1)
    home.config.write_text("[groups.vision]\nquota = 1\n\n[groups.sweep]\nquota = 0\n")
    kept = _submit("--group", "sweep", "--gpus", "1", "--", "sleep", "600")
    wait_state(client, kept, "running")
    vision = _submit("--group", "vision", "--gpus", "1", "--", "true")
    client.nudge()
    expected = (
        "waiting for 1 GPU (0 of 1 free); within its group's quota of 1, but nothing can be"
        f" reclaimed: job {kept} (group sweep) borrows beyond its group's quota and is not"
        " checkpointable, so it is not preempted"
    )
    wait_for(lambda: client.store.get(vision).reason == expected, what="the wait reason")
    assert json.loads(workbench("show", str(kept), "--json").stdout)["preemptible"] is False
    client.control(vision, "cancel")
    client.control(kept, "cancel")
    wait_state(client, kept, "cancelled", timeout=30)


# A seeded torch loop on the CPU that saves its state on SIGTERM (and each epoch) into
# WORKBENCH_CHECKPOINT_DIR, resumes from it, and writes its final weights to `out`.
TRAIN = textwrap.dedent(
    """
    import os, signal, sys, time
    import torch
    out = sys.argv[1]
    ckpt_dir = os.environ.get("WORKBENCH_CHECKPOINT_DIR", os.path.dirname(out))
    ckpt = os.path.join(ckpt_dir, "state.pt")
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.arange(8.0) + 0.5
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    step = 0
    if os.path.exists(ckpt):
        state = torch.load(ckpt)
        model.load_state_dict(state["model"]); opt.load_state_dict(state["opt"])
        step = state["step"]
        torch.set_rng_state(state["rng"])
        print(f"resumed at step {step} (restart {os.environ.get('WORKBENCH_RESTARTS')})", flush=True)
    stop = []
    print("training", flush=True)
    signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
    def save():
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                 "rng": torch.get_rng_state()}
        torch.save(state, ckpt + ".tmp"); os.replace(ckpt + ".tmp", ckpt)
    while step < 60:
        batch = torch.randint(0, 256, (32,))
        loss = ((model(x[batch]).squeeze(1) - y[batch]) ** 2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        step += 1
        if os.environ.get("SLOW"):
            time.sleep(0.1)
        if stop:
            save()
            print(f"saved at step {step}", flush=True)
            sys.exit(1)
    torch.save(model.state_dict(), out)
    print("done", flush=True)
    """
)


@pytest.mark.slow
def test_a_checkpointable_command_job_preempted_by_a_quota_resumes_to_the_same_weights(
    client: Client, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    _fake_gpus(tmp_path, monkeypatch, 2)
    home.config.write_text("[groups.vision]\nquota = 1\n\n[groups.sweep]\nquota = 1\n")
    script = _script(tmp_path, "train.py", TRAIN)
    whole_out, resumed_out = tmp_path / "whole.pt", tmp_path / "resumed.pt"
    whole = _submit("--", sys.executable, str(script), str(whole_out))
    assert wait_state(client, whole, {"succeeded", "failed"}, timeout=120).state == "succeeded"

    # sweep holds its guaranteed GPU, then borrows the second for the checkpointable job.
    held = _submit("--group", "sweep", "--gpus", "1", "--", "sleep", "600")
    wait_state(client, held, "running")
    borrower = _submit(
        "--group", "sweep", "--gpus", "1", "--checkpointable", "--env", "SLOW=1",
        "--", sys.executable, str(script), str(resumed_out),
    )  # fmt: skip
    wait_state(client, borrower, "running")
    log_file = home.run_dir(borrower) / "log"
    wait_for(lambda: log_file.exists() and "training" in log_file.read_text(), 60, what="training")
    time.sleep(1.5)  # some steps done (0.1 s each), far from all 60
    vision = _submit("--group", "vision", "--gpus", "1", "--", "sleep", "1")
    wait_state(client, vision, "succeeded", timeout=60)
    resumed = wait_state(client, borrower, {"succeeded", "failed"}, timeout=120)
    assert resumed.state == "succeeded", resumed.reason
    client.control(held, "cancel")

    events = client.store.events(borrower)
    assert [e.event for e in events].count("preempt") == 1
    log = _log(home, borrower)
    assert "saved at step" in log and "resumed at step" in log and "(restart 1)" in log
    marker = (
        f"restart 1: the same run, resuming from its checkpoint folder {home.run_dir(borrower)}"
    )
    assert marker in log
    first, second = torch.load(whole_out), torch.load(resumed_out)
    assert all(torch.equal(first[k], second[k]) for k in first)
    wait_state(client, held, "cancelled", timeout=30)
