"""The command line as scripts use it: output shapes, exit codes, following logs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import wait_for, workbench

from workbench.db.store import Store
from workbench.paths import Home


def submit(*args: str) -> int:
    result = workbench("submit", *args)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip())


def test_submit_ls_show_json(home: Home) -> None:
    job_id = submit("--name", "hello", "--cpus", "1", "--", "sh", "-c", "echo hi")
    assert workbench("wait", str(job_id)).returncode == 0
    listing = json.loads(workbench("ls", "--json").stdout)
    assert [(j["id"], j["name"], j["state"]) for j in listing] == [(job_id, "hello", "succeeded")]
    assert listing[0]["resources"]["cpus"] == 1
    shown = json.loads(workbench("show", str(job_id), "--json").stdout)
    assert [e["state"] for e in shown["events"]] == ["queued", "starting", "running", "succeeded"]
    assert shown["exit_code"] == 0 and shown["argv"] == ["sh", "-c", "echo hi"]
    assert Path(shown["paths"]["log"]).read_text() == "hi\n"
    assert "env" not in shown
    text = workbench("show", str(job_id)).stdout
    assert "succeeded" in text and "history:" in text


def test_submit_json_prints_the_job(home: Home) -> None:
    result = workbench("submit", "--json", "--paused", "--", "true")
    job = json.loads(result.stdout)
    assert job["state"] == "paused" and job["kind"] == "command"


def test_ls_table_shows_state_and_reason(home: Home) -> None:
    submit("--gpus", "1", "--name", "needs-gpu", "--", "true")
    out = workbench("ls").stdout
    assert "needs-gpu" in out and "queued" in out
    wait_for(lambda: "no GPU on this machine" in workbench("ls").stdout, what="reason in ls")


def test_wait_exit_codes(home: Home) -> None:
    ok = submit("--", "true")
    bad = submit("--", "false")
    assert workbench("wait", str(ok)).returncode == 0
    failed = workbench("wait", str(ok), str(bad))
    assert failed.returncode == 1 and f"job {bad} failed" in failed.stderr
    slow = submit("--", "sleep", "30")
    timed_out = workbench("wait", str(slow), "--timeout", "0.5s")
    assert timed_out.returncode == 1 and "timed out" in timed_out.stderr
    workbench("cancel", str(slow))


def test_logs_follow_streams_until_the_job_ends(home: Home) -> None:
    job_id = submit("--", "sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.2; done")
    result = workbench("logs", str(job_id), "-f", timeout=30)
    assert result.stdout.splitlines() == ["line 1", "line 2", "line 3"]
    assert workbench("logs", str(job_id), "-n", "1").stdout == "line 3\n"


def test_control_commands_and_unknown_ids(home: Home) -> None:
    job_id = submit("--paused", "--", "true")
    assert workbench("cancel", str(job_id)).stdout.strip() == f"job {job_id}: cancelled"
    again = workbench("cancel", str(job_id))
    assert again.returncode == 1 and "already cancelled" in again.stderr
    assert workbench("retry", str(job_id)).returncode == 0
    assert workbench("wait", str(job_id)).returncode == 0
    assert workbench("show", "999").returncode == 2
    assert workbench("cancel", "999").returncode == 2
    assert workbench("priority", str(job_id), "5").returncode == 0
    assert json.loads(workbench("show", str(job_id), "--json").stdout)["priority"] == 5


def test_submit_spec_file(home: Home, tmp_path: Path) -> None:
    spec = tmp_path / "job.toml"
    spec.write_text(
        textwrap.dedent(
            """
            kind = "command"
            name = "from-spec"
            argv = ["sh", "-c", "pwd"]
            retries = 1
            """
        )
    )
    job = json.loads(workbench("submit", "--spec", str(spec), "--json").stdout)
    assert job["name"] == "from-spec" and job["retries"] == 1
    assert workbench("wait", str(job["id"])).returncode == 0
    assert workbench("logs", str(job["id"])).stdout.strip() == str(tmp_path)
    spec.write_text('kind = "command"\nargv = ["true"]\nretrys = 1\n')
    bad = workbench("submit", "--spec", str(spec))
    assert bad.returncode == 2 and "unknown key 'retrys' (did you mean 'retries'?)" in bad.stderr


def test_daemon_status_stop_and_drain(home: Home) -> None:
    assert json.loads(workbench("daemon", "status", "--json").stdout)["running"] is False
    assert workbench("daemon", "start").returncode == 0
    status = json.loads(workbench("daemon", "status", "--json").stdout)
    assert status["running"] is True and status["pid"] > 0
    assert workbench("daemon", "drain").returncode == 0
    job_id = submit("--", "true")
    wait_for(lambda: "drain mode" in workbench("ls").stdout, what="drain note")
    assert json.loads(workbench("show", str(job_id), "--json").stdout)["state"] == "queued"
    workbench("daemon", "undrain")
    assert workbench("wait", str(job_id), "--timeout", "20s").returncode == 0
    assert workbench("daemon", "stop").returncode == 0
    assert json.loads(workbench("daemon", "status", "--json").stdout)["running"] is False


def test_group_limits(home: Home) -> None:
    assert workbench("group", "sweep", "--parallel", "2").returncode == 0
    assert json.loads(workbench("group", "--json").stdout) == {"sweep": 2}


def test_usage_errors_exit_2(home: Home) -> None:
    assert workbench("submit").returncode == 2
    assert workbench("submit", "--env", "NOEQUALS", "--", "true").returncode == 2
    assert workbench("frobnicate").returncode == 2


def test_help_documents_states_and_exit_codes() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "workbench", "--help"], capture_output=True, text=True
    ).stdout
    assert "blocked" in out and "Exit codes" in out


def test_mig_profile_and_no_preempt_are_stored_and_shown(home: Home, tmp_path: Path) -> None:
    done = workbench(
        "submit", "--paused", "--gpus", "1g.10gb", "--no-preempt", "--json", "--", "true"
    )
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["resources"]["mig_profile"] == "1g.10gb" and job["resources"]["gpus"] == 0
    assert job["preemptible"] is False
    text = workbench("show", str(job["id"])).stdout
    assert "mig 1g.10gb" in text and "preempt:   no" in text
    spec = tmp_path / "job.toml"
    spec.write_text('kind = "command"\nargv = ["true"]\ngpus = "3g.40gb"\npreemptible = false\n')
    shown = json.loads(workbench("submit", "--paused", "--spec", str(spec), "--json").stdout)
    assert shown["resources"]["mig_profile"] == "3g.40gb" and shown["preemptible"] is False
    plain = json.loads(
        workbench(
            "submit", "--paused", "--gpus", "0.5", "--checkpointable", "--json", "--", "true"
        ).stdout
    )
    assert plain["resources"]["mig_profile"] is None and plain["preemptible"] is True
    assert "preempt:" not in workbench("show", str(plain["id"])).stdout
    # A command job that does not say it is checkpointable is not preempted, and show says why.
    unsaid = json.loads(
        workbench("submit", "--paused", "--gpus", "1", "--json", "--", "true").stdout
    )
    assert unsaid["preemptible"] is False
    assert "not checkpointable" in workbench("show", str(unsaid["id"])).stdout


def test_an_unknown_gpus_form_exits_2_naming_the_flag_or_key(home: Home, tmp_path: Path) -> None:
    for value in ("2g", "1g.10", "big", "1.5", "-1", "nan"):
        done = workbench("submit", "--gpus", value, "--", "true")
        assert done.returncode == 2, value
        assert "--gpus" in done.stderr and "Traceback" not in done.stderr
    spec = tmp_path / "job.toml"
    spec.write_text('kind = "command"\nargv = ["true"]\ngpus = "8g.1tb"\n')
    done = workbench("submit", "--spec", str(spec))
    assert done.returncode == 2 and f"{spec}: key 'gpus'" in done.stderr
    assert "MIG profile such as 1g.10gb" in done.stderr
    spec.write_text('kind = "command"\nargv = ["true"]\npreemptible = "no"\n')
    done = workbench("submit", "--spec", str(spec))
    assert done.returncode == 2 and "preemptible" in done.stderr
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('[[stage]]\nname = "odd"\nkind = "command"\nargv = ["true"]\ngpus = "x1"\n')
    done = workbench("--batch", str(pipeline))
    assert done.returncode == 2 and "stage 'odd'" in done.stderr and "'gpus'" in done.stderr
    assert "Traceback" not in done.stderr
    assert json.loads(workbench("ls", "--all", "--json").stdout or "[]") == []


# Allocates about 50 MiB (written, so the pages are resident) and burns about 0.3 s of CPU.
USING_SCRIPT = (
    "import time\n"
    "block = b'x' * (50 << 20)\n"
    "start = time.process_time()\n"
    "while time.process_time() - start < 0.3: pass\n"
)


def test_show_reports_cpu_time_and_peak_memory_of_an_ended_job(home: Home) -> None:
    """`show` and `show --json` give the CPU time and peak memory the job's wrapper recorded,
    with where each came from (its cgroup, or getrusage); the store keeps them when the job is
    settled, so `ls --json` has them too and a job whose run folder is gone still reports them."""
    import shutil

    from workbench.units import format_duration, format_size

    job_id = submit("--", sys.executable, "-c", USING_SCRIPT)
    assert workbench("wait", str(job_id)).returncode == 0
    shown = json.loads(workbench("show", str(job_id), "--json").stdout)
    assert 0.25 <= shown["cpu_s"] < 60
    assert 50 << 20 <= shown["peak_mem_bytes"] < 4 << 30
    assert shown["cpu_source"] in ("cgroup", "rusage")
    assert shown["peak_mem_source"] in ("cgroup", "rusage")
    text = workbench("show", str(job_id)).stdout
    used = next(line for line in text.splitlines() if line.strip().startswith("used:"))
    assert f"CPU time {format_duration(shown['cpu_s'])}" in used
    assert f"peak memory {format_size(shown['peak_mem_bytes'])}" in used
    usage = ("cpu_s", "cpu_source", "peak_mem_bytes", "peak_mem_source")
    listed = json.loads(workbench("ls", "--json").stdout)
    assert [{k: j[k] for k in usage} for j in listed] == [{k: shown[k] for k in usage}]
    shutil.rmtree(home.run_dir(job_id))
    again = json.loads(workbench("show", str(job_id), "--json").stdout)
    assert {k: again[k] for k in usage} == {k: shown[k] for k in usage}
    assert used in workbench("show", str(job_id)).stdout


def test_show_tolerates_missing_partial_and_stale_exit_records(home: Home) -> None:
    """A job settled before the store kept its usage reads it from `exit.json`: a missing,
    truncated or partial record, or values that are not finite numbers >= 0, show what is there
    and nothing else; a job not ended ignores an earlier attempt's record."""
    job_id = submit("--", "true")
    assert workbench("wait", str(job_id)).returncode == 0
    store = Store.open(home.state_db)  # as a version without the usage columns left it
    store.update(job_id, cpu_s=None, cpu_source=None, peak_mem_bytes=None, peak_mem_source=None)
    store.close()
    record = home.run_dir(job_id) / "exit.json"
    cases: list[tuple[str | None, float | None, int | None]] = [
        ('{"exit_code": 0, "cpu_s": 1.5}', 1.5, None),
        ('{"exit_code": 0, "peak_mem_bytes": 2097152}', None, 2 << 20),
        ('{"cpu_s": NaN, "peak_mem_bytes": -1}', None, None),
        ('{"cpu_s": "1", "peak_mem_bytes": 1e999}', None, None),
        ('{"cpu_s": 1.', None, None),
        ("[1, 2]", None, None),
        (None, None, None),
    ]
    for content, cpu_s, peak in cases:
        if content is None:
            record.unlink()
        else:
            record.write_text(content)
        shown = workbench("show", str(job_id), "--json")
        assert shown.returncode == 0, (content, shown.stderr)
        assert (json.loads(shown.stdout)["cpu_s"], json.loads(shown.stdout)["peak_mem_bytes"]) == (
            cpu_s,
            peak,
        ), content
        text = workbench("show", str(job_id))
        assert text.returncode == 0 and "Traceback" not in text.stderr, content
        assert ("CPU time" in text.stdout) == (cpu_s is not None), content
        assert ("peak memory" in text.stdout) == (peak is not None), content
    held = submit("--paused", "--", "true")
    home.run_dir(held).mkdir(parents=True, exist_ok=True)
    (home.run_dir(held) / "exit.json").write_text('{"exit_code": 0, "cpu_s": 9.0}')
    shown_held = json.loads(workbench("show", str(held), "--json").stdout)
    assert shown_held["cpu_s"] is None and shown_held["peak_mem_bytes"] is None


@pytest.mark.parametrize(
    ("granted", "text"),
    [(None, "not yet"), ([], "no GPU (CPU only)"), ([0], "GPU 0"), ([1, 3], "GPUs 1, 3")],
)
def test_granted_gpus_are_said_in_words(granted: list[int] | None, text: str) -> None:
    """`show` printed the raw list (`granted GPUs []`); it and the job screen now say it."""
    from types import SimpleNamespace

    from workbench.jobmodel.resources import Resources
    from workbench.present import granted_text

    job = SimpleNamespace(granted_gpus=granted, resources=Resources())
    assert granted_text(job) == text  # type: ignore[arg-type]
