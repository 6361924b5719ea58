"""How a job reads in a listing, shared by the CLI and the TUI: resources, progress, state colour."""

from __future__ import annotations

from workbench.db.store import Job
from workbench.jobmodel.states import JobState
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


def job_progress(job: Job) -> str:
    """`40% epoch 12/30`, or empty when the job reports none."""
    if job.progress is None and not job.progress_msg:
        return ""
    pct = f"{job.progress * 100:.0f}%" if job.progress is not None else ""
    return f"{pct} {job.progress_msg or ''}".strip()


def job_details(job: Job, metrics: dict[str, float | None]) -> list[tuple[str, str]]:
    """The facts of one job as (label, value) lines, for `workbench show` and the job screen."""
    import shlex

    lines: list[tuple[str, str]] = []
    if job.reason:
        lines.append(("reason", job.reason))
    if job.argv:
        lines.append(("command", shlex.join(job.argv)))
    else:
        lines.append(
            ("spec", ", ".join(f"{k}={v}" for k, v in job.spec.items() if v not in (None, [], {})))
        )
    lines.append(("cwd", job.cwd))
    granted = job.granted_gpus if job.granted_gpus is not None else "-"
    lines.append(("resources", f"asked {job_resources(job)}; granted GPUs {granted}"))
    if job.peak_gpu_mem is not None or job.mean_gpu_util is not None:
        util = f"{job.mean_gpu_util:.0f}%" if job.mean_gpu_util is not None else "n/a"
        lines.append(("gpu use", f"peak memory {format_size(job.peak_gpu_mem)}, mean util {util}"))
    lines.append(
        (
            "queue",
            f"group {job.group}, priority {job.priority}, attempt {job.attempt} of {job.retries + 1}",
        )
    )
    if job.deps:
        lines.append(("after", ", ".join(f"{d} ({c})" for d, c in job.deps)))
    if job.time_limit:
        lines.append(("limit", format_duration(job.time_limit)))
    if job.exit_code is not None:
        lines.append(("exit code", str(job.exit_code)))
    if job.progress is not None or job.progress_msg:
        lines.append(("progress", job_progress(job)))
    if metrics:
        shown = (
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in sorted(metrics.items())
        )
        lines.append(("metrics", ", ".join(shown)))
    return lines
