"""How a job reads in a listing, shared by the CLI and the TUI: resources, progress, state colour."""

from __future__ import annotations

from workbench.store import Job
from workbench.units import format_size

STATE_STYLES = {
    "queued": "cyan",
    "running": "bold yellow",
    "paused": "magenta",
    "blocked": "red",
    "succeeded": "green",
    "failed": "bold red",
    "cancelled": "dim",
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
