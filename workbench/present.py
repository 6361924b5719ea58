"""How a job reads in a listing, shared by the CLI and the TUI: resources, progress, state colour,
secrets masked, text that is not UTF-8 shown escaped."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from workbench.db.store import Job
from workbench.jobmodel.resources import OVER_MEM, OVER_RESERVATION
from workbench.jobmodel.secrets import mask_env
from workbench.jobmodel.states import ENDED, JobState
from workbench.safetext import display_text as display_text
from workbench.units import format_duration, format_size

STATE_STYLES: dict[str, str] = {
    JobState.QUEUED: "cyan",
    JobState.STARTING: "yellow",
    JobState.RUNNING: "bold yellow",
    JobState.PAUSED: "magenta",
    JobState.BLOCKED: "red",
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "bold red",
    JobState.CANCELLED: "dim",
}


def job_resources(job: Job) -> str:
    """`gpu 1[0] vram 8.0 GiB cpu 2 mem 4.0 GiB`: asked, with the GPUs granted in brackets."""
    parts = []
    if job.resources.mig_profile:
        granted = f"[{','.join(map(str, job.granted_gpus))}]" if job.granted_gpus else ""
        parts.append(f"mig {job.resources.mig_profile}{granted}")
    if job.gpus:
        granted = f"[{','.join(map(str, job.granted_gpus))}]" if job.granted_gpus else ""
        parts.append(f"gpu {job.gpus:g}{granted}")
    if job.gpu_mem:
        parts.append(f"vram {format_size(job.gpu_mem)}")
    if job.cpus:
        parts.append(f"cpu {job.cpus:g}")
    if job.mem:
        parts.append(f"mem {format_size(job.mem)}")
    return " ".join(parts) or "-"


def shown_reason(job: Job, idle_since: float | None = None, now: float | None = None) -> str:
    """The reason a listing shows: why a job waits or ended; for a running job only a problem
    it has now (using more GPU memory than it reserved, its GPUs idle since `idle_since`, unix
    s, as the daemon's idle watch flagged it) or why the daemon is stopping it
    (`stopping: preempted for job 7: ...`, during the kill grace), not how it started."""
    from workbench.db.scheduling import PREEMPT_INTENT  # ~2.5 ms: only where a job is shown

    reason = job.reason or ""
    if job.state == JobState.SUCCEEDED:  # only what went wrong: its memory over its --mem
        return next((p for p in reason.split("; ") if p.startswith(OVER_MEM)), "")
    if job.state in (JobState.RUNNING, JobState.STARTING):
        if job.intent == PREEMPT_INTENT and reason:
            return f"stopping: {reason}"
        shown = reason if OVER_RESERVATION in reason else ""
        if idle_since is not None:
            note = idle_note(idle_since, time.time() if now is None else now)
            shown = f"{note}; {shown}" if shown else note
        return shown
    return reason


def idle_note(since: float, now: float) -> str:
    """ "idle GPU: ~0% for 35m0s": a running job whose GPUs sit unused (see workbench.daemon.idle)."""
    return f"idle GPU: ~0% for {format_duration(max(0.0, now - since))}"


def granted_text(job: Job) -> str:
    """What the scheduler granted, in words: `GPU 0`, `GPUs 0, 1`, `no GPU (CPU only)`, `not yet`
    (a job that has not started), or for a MIG job its instance: `MIG 1g.10gb instance
    MIG-5e1f... on GPU 0`, the UUID being the `CUDA_VISIBLE_DEVICES` this attempt was launched
    with (`Job.granted_devices`; a job started before that was recorded: `MIG 1g.10gb instance
    on GPU 0`)."""
    if job.granted_gpus is None:
        return "not yet"
    if not job.granted_gpus and not job.resources.mig_profile:
        return "no GPU (CPU only)"
    label = "GPU" if len(job.granted_gpus) == 1 else "GPUs"
    where = f"{label} {', '.join(map(str, job.granted_gpus))}"
    profile = job.resources.mig_profile
    if not profile:
        return where
    devices = display_text(",".join(job.granted_devices)) if job.granted_devices else ""
    return f"MIG {profile} instance{f' {devices}' if devices else ''} on {where}"


def job_progress(job: Job) -> str:
    """`40% epoch 12/30`, or empty when the job reports none."""
    if job.progress is None and not job.progress_msg:
        return ""
    pct = f"{job.progress * 100:.0f}%" if job.progress is not None else ""
    return f"{pct} {job.progress_msg or ''}".strip()


def _configured_secret_words(home_env: str | None, xdg_env: str | None) -> tuple[str, ...]:
    from workbench.config import load_config
    from workbench.paths import Home

    return load_config(Home.current().config).secret_words


def secret_words() -> tuple[str, ...]:
    """The extra secret-name words from `[security] secret_names` in config.toml (read once
    per home). Raises SpecError for a config file that cannot be read."""
    return _configured_secret_words(
        os.environ.get("WORKBENCH_HOME"), os.environ.get("XDG_DATA_HOME")
    )


def job_json(job: Job, with_env: bool = False) -> dict[str, Any]:
    """A job as every `--json` output prints it: secrets masked with the configured words."""
    return job.to_json(with_env=with_env, secret_words=secret_words())


def recorded_usage(job: Job, run_dir: Path | None) -> dict[str, float | int | None]:
    """What an ended job used: `{"cpu_s": CPU seconds (user + system, all its processes),
    "peak_mem_bytes": peak memory in bytes (the cgroup's `memory.peak`, else the largest child's
    peak RSS)}`, as the store kept them when the job was settled (so a pruned run folder loses
    nothing). A job settled by a version without those columns falls back to its run folder's
    `exit.json`. A value is None when the job has not ended (an earlier attempt's record would
    mislead) or it was not measured."""
    if job.state not in ENDED:
        return {"cpu_s": None, "peak_mem_bytes": None}
    if job.cpu_s is not None or job.peak_mem_bytes is not None or run_dir is None:
        return {"cpu_s": job.cpu_s, "peak_mem_bytes": job.peak_mem_bytes}
    from workbench.daemon.runner import read_usage

    cpu_s, peak = read_usage(run_dir)
    return {"cpu_s": cpu_s, "peak_mem_bytes": peak}


def used_parts(
    job: Job,
    recorded: dict[str, float | int | None] | None = None,
    live: dict[str, float] | None = None,
    peak_rss: float | None = None,
) -> list[str]:
    """What a job used, as phrases (`peak GPU memory 1.0 GiB`, `mean GPU util 40%`, `CPU time
    2.5s`, `peak memory 52.0 MiB`), for the `used` line of `show` and the job screen.

    `recorded` is `recorded_usage` (an ended job); `live` the running process tree's
    `{"cpu_s", "rss_bytes"}` and `peak_rss` the most RSS seen so far (the TUI samples them).
    A Slurm job adds its elapsed time and allocated GPUs as Slurm's accounting has them."""
    parts = []
    if job.peak_gpu_mem is not None:
        parts.append(f"peak GPU memory {format_size(job.peak_gpu_mem)}")
    if job.mean_gpu_util is not None:
        parts.append(f"mean GPU util {job.mean_gpu_util:.0f}%")
    cpu_s = recorded.get("cpu_s") if recorded else None
    peak_mem = recorded.get("peak_mem_bytes") if recorded else None
    if cpu_s is not None:
        parts.append(f"CPU time {format_duration(cpu_s)}")
    if peak_mem is not None:
        parts.append(f"peak memory {format_size(peak_mem)}")
    if job.elapsed_s is not None:  # a Slurm job's, from sacct
        parts.append(f"elapsed {format_duration(job.elapsed_s)} on Slurm")
    if job.alloc_gpus:
        parts.append(f"{job.alloc_gpus} GPU{'s' if job.alloc_gpus != 1 else ''} allocated")
    if live is not None:
        parts.append(f"CPU time {format_duration(live['cpu_s'])}")
        parts.append(f"RSS {format_size(live['rss_bytes'])}")
        if peak_rss is not None:
            parts.append(f"peak RSS seen {format_size(peak_rss)}")
    return parts


def job_details(
    job: Job, metrics: dict[str, float | None], run_dir: Path | None = None
) -> list[tuple[str, str]]:
    """The facts of one job as (label, value) lines, for `workbench show`. With `run_dir`, an
    ended job's recorded CPU time and peak memory join the `used` line (see `used_parts`).

    Values of secret-looking variables in the spec's `env` are masked."""
    import shlex

    from workbench.db.scheduling import PREEMPT_INTENT

    lines: list[tuple[str, str]] = []
    if job.uid is not None:  # a system daemon's job: whose it is (a per-user home's are yours)
        from workbench.queue.accounts import user_name

        lines.append(("owner", f"{display_text(user_name(job.uid))} (uid {job.uid})"))
    if job.reason:
        stopping = job.intent == PREEMPT_INTENT and job.state in (
            JobState.RUNNING,
            JobState.STARTING,
            JobState.PAUSED,
        )
        reason = f"stopping: {job.reason}" if stopping else job.reason
        lines.append(("reason", display_text(reason)))
    if job.argv:
        lines.append(("command", display_text(shlex.join(job.argv))))
    else:
        lines.append(
            ("spec", ", ".join(f"{k}={v}" for k, v in job.spec.items() if v not in (None, [], {})))
        )
    spec_env = job.spec.get("env")
    if isinstance(spec_env, dict) and spec_env:
        masked = mask_env(spec_env, secret_words())
        lines.append(("env", display_text(" ".join(f"{k}={v}" for k, v in masked.items()))))
    lines.append(("cwd", display_text(job.cwd)))
    if job.executor != "local":
        where = (
            f"{job.executor} job {job.slurm_id}"
            if job.slurm_id
            else f"{job.executor} (not handed over yet)"
        )
        lines.append(("runs on", where + (f" on {job.node}" if job.node else "")))
    lines.append(("resources", f"asked {job_resources(job)}; granted {granted_text(job)}"))
    used = used_parts(job, recorded_usage(job, run_dir))
    if used:
        lines.append(("used", ", ".join(used)))
    lines.append(
        (
            "queue",
            f"group {job.group}, priority {job.priority}, attempt {job.attempt} of {job.retries + 1}",
        )
    )
    unsaid = job.kind == "command" and not job.spec.get("checkpointable")
    if not job.preemptible and unsaid and (job.gpus or job.resources.mig_profile):
        lines.append(("preempt", "no: not checkpointable (--checkpointable), so never preempted"))
    elif not job.preemptible and not unsaid:
        lines.append(("preempt", "no: never preempted to give borrowed GPUs back"))
    stop = _stop_text(job)
    if stop:
        lines.append(("stop", stop))
    if job.deps:
        lines.append(("after", ", ".join(f"{d} ({c})" for d, c in job.deps)))
    if job.time_limit:
        lines.append(("limit", format_duration(job.time_limit)))
    if job.exit_code is not None:
        lines.append(("exit code", str(job.exit_code)))
    if job.progress is not None or job.progress_msg:
        lines.append(("progress", display_text(job_progress(job))))
    if metrics:
        shown = (
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in sorted(metrics.items())
        )
        lines.append(("metrics", ", ".join(shown)))
    return lines


_ANSI = {
    "cyan": "36",
    "yellow": "33",
    "bold yellow": "1;33",
    "magenta": "35",
    "red": "31",
    "green": "32",
    "bold red": "1;31",
    "dim": "2",
}


def paint_state(state: str, padded: str) -> str:
    """A state cell (already padded) in its colour, as ANSI escapes."""
    code = _ANSI.get(STATE_STYLES.get(state, ""), "")
    return f"\x1b[{code}m{padded}\x1b[0m" if code else padded


def column_widths(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[int]:
    """The widest cell of each column (header included)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            if len(cell) > widths[i]:
                widths[i] = len(cell)
    return widths


def table_line(cells: Sequence[str], widths: Sequence[int], colour_state: int | None = None) -> str:
    """One aligned line (two spaces between columns; the last column is not padded). With
    `colour_state`, that column is painted as a job state."""
    out = []
    last = len(cells) - 1
    for i, cell in enumerate(cells):
        padded = cell if i == last else cell.ljust(widths[i])
        out.append(paint_state(cell, padded) if i == colour_state else padded)
    return "  ".join(out).rstrip()


def job_row(job: Job, now: float, idle_since: float | None = None) -> list[str]:
    """One `ls` row: id, name, kind, state, resources, progress, age, reason (with the idle
    flag of a job whose GPUs sit unused since `idle_since`)."""
    reason = shown_reason(job, idle_since, now)
    return [
        str(job.id),
        display_text(job.name)[:40],
        job.kind,
        str(job.state),
        job_resources(job),
        display_text(job_progress(job)),
        format_duration(now - job.created_at),
        display_text(reason or ""),
    ]


LS_HEADERS = ("id", "name", "kind", "state", "resources", "progress", "age", "reason")


def state_counts_line(counts: dict[JobState, int]) -> str:
    """`queued 19,990 · running 8 · failed 2`: states in lifecycle order, empty ones left out."""
    return " · ".join(f"{state} {counts[state]:,}" for state in JobState if counts.get(state))


def use_colour(stream: Any) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set."""
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR")


def _stop_text(job: Job) -> str | None:
    """A command job's stop protocol where it is not the default (SIGTERM, the configured
    grace, no warning, not checkpointable), e.g. `SIGUSR1, 30s grace, warned 1m00s before its
    time limit, checkpointable`; None when all is default."""
    if job.kind != "command":
        return None
    spec = job.spec
    parts = []
    if spec.get("stop_signal") not in (None, "TERM"):
        parts.append(f"SIG{spec['stop_signal']}")
    if isinstance(spec.get("kill_grace"), int | float):
        parts.append(f"{format_duration(spec['kill_grace'])} grace")
    if isinstance(spec.get("signal_before"), int | float):
        parts.append(f"warned {format_duration(spec['signal_before'])} before its time limit")
    if spec.get("checkpointable"):
        parts.append("checkpointable")
    return ", ".join(parts) or None


def repro_lines(record: dict[str, Any] | None) -> list[tuple[str, str]]:
    """`show`'s lines for what reproduces a job (`workbench.db.repro.repro_of`): its code
    state, snapshot, Python environment and what it started with; none when nothing was
    recorded."""
    if not record:
        return []
    lines: list[tuple[str, str]] = []
    code = record.get("code") or {}
    if code:
        lines.append(("code", code_text(code)))
    snap = record.get("snapshot")
    if snap:
        lines.append(
            (
                "snapshot",
                f"{snap.get('path')} ({snap.get('files')} files, {format_size(snap.get('bytes'))}"
                f" frozen from {snap.get('source')}; {snap.get('rule')})",
            )
        )
    env = record.get("environment") or {}
    if env:
        python = env.get("python") or {}
        dists = env.get("distributions") or {}
        lines.append(
            (
                "python",
                f"{python.get('version') or '?'} ({python.get('executable')}), torch"
                f" {env.get('torch') or '-'}, CUDA build {env.get('cuda') or '-'},"
                f" {len(dists)} distributions, submitted on {env.get('host')}",
            )
        )
    started = record.get("started") or {}
    if started:
        gpus = ", ".join(started.get("gpus") or []) or "no GPU"
        driver = started.get("driver")
        driven = f"driver {driver} (CUDA {started.get('driver_cuda')})" if driver else "no driver"
        lines.append(("started", f"on {started.get('host')}: {gpus}; {driven}"))
    return lines


def code_text(code: dict[str, Any]) -> str:
    """A code state in one line: `git 3f2a9c1e0b7d on main, dirty (1.2 KiB diff, 2 untracked)`,
    or `not a git work tree: PATH`."""
    if not code.get("git"):
        return f"not a git work tree: {code.get('path')}"
    commit = (code.get("commit") or "no commit yet")[:12]
    branch = f" on {code['branch']}" if code.get("branch") else ""
    if not code.get("dirty"):
        return f"git {commit}{branch}, clean ({code.get('root')})"
    parts = []
    if code.get("diff_bytes"):
        parts.append(f"{format_size(code['diff_bytes'])} diff")
    if code.get("diff_note"):
        parts.append(f"diff kept {code['diff_note']}")
    if code.get("untracked"):
        parts.append(f"{len(code['untracked'])} untracked")
    return f"git {commit}{branch}, dirty ({', '.join(parts)}) ({code.get('root')})"
