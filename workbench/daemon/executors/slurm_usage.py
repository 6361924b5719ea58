"""What a Slurm job used, from Slurm's accounting (`sacct`, where the cluster has slurmdbd): CPU
time, peak memory (MaxRSS), elapsed time and GPUs, stored as a local job's usage is (source
"sacct"). Accounting lags the job's end by a few seconds, so an ended job's usage is read later,
batched, at growing intervals, never holding up the poll; without slurmdbd it stays null."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from workbench.daemon.executors.slurm_map import ACTIVE_SLURM_STATES
from workbench.db import executors as placement_db
from workbench.db.store import Store

USAGE_SOURCE = "sacct"  # the cpu_source / peak_mem_source of a figure read from sacct
SACCT_USAGE_FIELDS = "JobID,State,ExitCode,Elapsed,TotalCPU,MaxRSS,AllocTRES"
USAGE_WAIT_S = 120.0  # an ended job's usage is asked for this long, then kept as it stands
FIRST_TRY_S = 1.0  # the first question waits this long after the job ended; then doubling
TRY_MAX_S = 15.0  # the wait between two questions about one job stops growing here

# sacct's size suffixes (`convert_num_unit` in Slurm's src/common/xstring.c: powers of 1024).
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)([KMGTP]?)")
# [DD-[HH:]]MM:SS[.mmm] (sacct's Elapsed, TotalCPU; `secs2time_str`/`mins2time_str` in Slurm).
_DURATION = re.compile(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)")
_JOB_ID = re.compile(r"(\d+(?:_\d+)?)(?:\.(.+))?")


def parse_duration(text: str) -> float | None:
    """sacct's `[DD-[HH:]]MM:SS[.mmm]` (`1-02:03:04`, `02:03:04`, `03:04.500`) in seconds; None
    for an empty, `INVALID` or otherwise malformed cell. A `DD-HH` form always has HH."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        return None
    days, hours, minutes, seconds = match.groups()
    if days is not None and hours is None:
        return None
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


def parse_size(text: str) -> int | None:
    """sacct's sizes (`0`, `1234K`, `12.50M`, `2G`) in bytes (a bare number is bytes, as with
    `--noconvert`; suffixes are powers of 1024); None for an empty or malformed cell."""
    match = _SIZE.fullmatch(text.strip().upper())
    if match is None:
        return None
    return round(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def tres_gpus(text: str) -> int | None:
    """GPUs in an AllocTRES cell (`billing=1,cpu=1,gres/gpu=1,mem=500M,node=1`; typed ones such
    as `gres/gpu:a100=2` are part of the untyped count, which Slurm also lists); 0 when the
    allocation has none, None for an empty cell (never allocated)."""
    if not text.strip():
        return None
    typed = 0
    for item in text.split(","):
        key, _, value = item.partition("=")
        if not value.isdigit():
            continue
        if key == "gres/gpu":
            return int(value)
        if key.startswith("gres/gpu:"):
            typed += int(value)
    return typed


@dataclass(frozen=True)
class SlurmUsage:
    """What one Slurm job (or array task) used, as its accounting says: `elapsed_s` wall
    seconds, `cpu_s` CPU seconds (user + system, all steps), `peak_mem_bytes` the largest
    MaxRSS of its steps (the batch step holds the batch script's), `gpus` GPUs allocated.
    `complete`: the job has ended and each step it ran has its record (else ask again)."""

    elapsed_s: float | None
    cpu_s: float | None
    peak_mem_bytes: int | None
    gpus: int | None
    complete: bool

    def columns(self) -> dict[str, object]:
        """The store's usage columns (`workbench.db.store.Job`) for this usage."""
        return {
            "cpu_s": self.cpu_s,
            "cpu_source": USAGE_SOURCE if self.cpu_s is not None else None,
            "peak_mem_bytes": self.peak_mem_bytes,
            "peak_mem_source": USAGE_SOURCE if self.peak_mem_bytes is not None else None,
            "elapsed_s": self.elapsed_s,
            "alloc_gpus": self.gpus,
        }


def parse_usage(text: str) -> dict[str, SlurmUsage]:
    """`sacct -n -P -o SACCT_USAGE_FIELDS` (steps included: `123`, `123.batch`, `123.extern`,
    `123.0`; array tasks `120_3`, `120_3.batch`) -> usage per Slurm job id. Lines that are not
    in that format are skipped. CPU time is the job line's TotalCPU (Slurm sums its steps),
    else the steps' sum; peak memory the largest step MaxRSS."""
    jobs: dict[str, list[str]] = {}
    steps: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        cells = line.split("|")
        if len(cells) < 7:
            continue
        match = _JOB_ID.fullmatch(cells[0])
        if match is None:
            continue
        if match.group(2) is None:
            jobs[match.group(1)] = cells
        else:
            steps.setdefault(match.group(1), []).append(cells)
    out: dict[str, SlurmUsage] = {}
    for slurm_id, cells in jobs.items():
        own = steps.get(slurm_id, [])
        elapsed = parse_duration(cells[3])
        cpu = parse_duration(cells[4])
        if cpu is None and own:
            step_cpu = [parse_duration(s[4]) for s in own]
            cpu = sum(c for c in step_cpu if c is not None) if any(step_cpu) else None
        sizes = [size for s in own if (size := parse_size(s[5])) is not None]
        ended = _state(cells[1]) not in ACTIVE_SLURM_STATES
        ran = bool(elapsed)
        complete = ended and all(_state(s[1]) not in ACTIVE_SLURM_STATES for s in own)
        if ran and not any(s[0].endswith(".batch") for s in own):
            complete = False  # its batch step's record (MaxRSS) has not arrived yet
        out[slurm_id] = SlurmUsage(
            elapsed_s=elapsed,
            cpu_s=cpu,
            peak_mem_bytes=max(sizes) if sizes else None,
            gpus=tres_gpus(cells[6]),
            complete=complete,
        )
    return out


def _state(cell: str) -> str:
    return cell.split()[0] if cell.strip() else "UNKNOWN"


class Unanswered(Exception):
    """sacct did not answer (slurmdbd or the controller down, a timeout): ask again later."""


@dataclass
class UsageReader:
    """Reads the usage of settled Slurm jobs, batched into one sacct call per round. A job is
    asked for FIRST_TRY_S after it was settled, then at doubling intervals (at most TRY_MAX_S),
    until its record is complete or USAGE_WAIT_S has passed (then what sacct had is kept).
    The jobs waiting are kept in the store (`usage_due`), so a daemon restart loses none.

    `ask(slurm_ids)` is `SlurmClient.sacct_usage`: usage per id, None when the cluster keeps no
    accounting; it raises Unanswered when sacct does not answer (asked again later)."""

    store: Store
    ask: Callable[[list[str]], dict[str, SlurmUsage] | None]
    clock: Callable[[], float] = time.time
    _next: dict[int, tuple[float, float]] = field(default_factory=dict)  # id: (at, wait)

    def expect(self, job_id: int) -> None:
        """The job was settled: read its usage from sacct once accounting has it."""
        now = self.clock()
        placement_db.set_usage_due(self.store, job_id, now + USAGE_WAIT_S)
        self._next[job_id] = (now + FIRST_TRY_S, FIRST_TRY_S)

    def tick(self) -> bool:
        """Ask sacct about the jobs whose turn it is (one call); True while any job waits."""
        waiting = placement_db.usage_waiting(self.store)
        if not waiting:
            self._next.clear()
            return False
        now = self.clock()
        due = [(j, sid, until) for j, sid, until in waiting if self._turn(j, now)]
        if not due:
            return True
        try:
            answer = self.ask([sid for _, sid, _ in due])
        except Unanswered:
            for job_id, _, _ in due:
                self._later(job_id, now)
            return True
        for job_id, slurm_id, until in due:
            usage = None if answer is None else answer.get(slurm_id)
            if answer is None:  # no accounting on this cluster: usage stays unavailable
                placement_db.set_usage(self.store, job_id, None)
            elif usage is not None and (usage.complete or now >= until):
                placement_db.set_usage(self.store, job_id, usage.columns())
            elif now >= until:
                placement_db.set_usage(self.store, job_id, None)
            else:
                self._later(job_id, now)
                continue
            self._next.pop(job_id, None)
        return bool(placement_db.usage_waiting(self.store))

    def _turn(self, job_id: int, now: float) -> bool:
        at, _ = self._next.setdefault(job_id, (now, FIRST_TRY_S))
        return now >= at

    def _later(self, job_id: int, now: float) -> None:
        _, wait = self._next.get(job_id, (now, FIRST_TRY_S))
        wait = min(TRY_MAX_S, wait * 2)
        self._next[job_id] = (now + wait, wait)
