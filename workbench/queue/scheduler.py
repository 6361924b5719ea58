"""Scheduling decisions as a pure function of (queue, inventory, usage, time)."""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from workbench.jobmodel.resources import OVER_RESERVATION
from workbench.jobmodel.states import SETTLED
from workbench.jobmodel.states import JobState as S
from workbench.units import format_size

NO_GPU = "no GPU on this machine"
MIG_SLICES = 7  # compute slices of an A100/H100: a `3g.40gb` instance counts as 3/7 of a GPU
_EPS = 1e-9


# ---- inputs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Want:
    """A queued job as the scheduler sees it.

    `gpus` is a count (whole GPUs) or a fraction below 1 (a share of one GPU); `mig_profile`
    (e.g. "1g.10gb") asks for one MIG instance of that profile instead. `gpu_mem` and `mem` are
    bytes (gpu_mem per GPU), `time_limit` seconds (also the backfill estimate of its run time).
    `reason` is why it waits as last recorded: `plan` returns a Wait only when that changes.
    """

    id: int
    priority: int = 0
    group: str = "default"
    gpus: float = 0.0
    gpu_mem: int | None = None
    cpus: float = 0.0
    mem: int | None = None
    deps: tuple[tuple[int, str], ...] = ()
    fail_unrunnable: bool = False
    mig_profile: str | None = None
    preemptible: bool = True
    time_limit: float | None = None
    # Whose share it counts against: a user's name with shares by user, else its group
    # ("" is taken as `group`).
    account: str = ""
    reason: str | None = field(default=None, compare=False)
    shape: int = field(init=False, repr=False, compare=False)
    units: float = field(init=False, repr=False, compare=False)
    # Scheduling order as one int (higher priority first, then lower id; ids are SQLite rowids,
    # below 2**63): sorting by it compares ints, not tuples.
    rank: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rank", (-self.priority << 63) + self.id)
        if not self.account:
            object.__setattr__(self, "account", self.group)
        units = gpu_units(self.gpus, self.mig_profile)
        needs = (
            self.account,
            self.gpus,
            self.gpu_mem,
            self.mig_profile,
            self.group,
            self.time_limit,
            self.cpus,
            self.mem,
            self.fail_unrunnable,
        )
        object.__setattr__(self, "units", units)
        object.__setattr__(self, "shape", _SHAPES.setdefault(needs, len(_SHAPES)))


# Every distinct shape (what a job asks for, and of which group) gets a small number, so a
# scheduling pass compares jobs by an int instead of hashing their fields again.
_SHAPES: dict[tuple[object, ...], int] = {}


@dataclass(frozen=True)
class Holding:
    """A running (or paused-while-running) job, what it was granted and what it uses.

    `started_at` is unix seconds; `gpu_mem_seen` the most GPU memory (bytes) NVML has shown
    its processes holding on one of its GPUs (None: not seen yet, or NVML cannot tell);
    `stopping` is true once it was sent SIGTERM (cancel, time limit or preemption).
    """

    id: int
    group: str = "default"
    gpu_indices: tuple[int, ...] = ()
    gpus: float = 0.0
    gpu_mem: int | None = None
    cpus: float = 0.0
    mem: int | None = None
    started_at: float = 0.0
    gpu_mem_seen: int | None = None
    mig_uuids: tuple[str, ...] = ()
    mig_profile: str | None = None
    preemptible: bool = True
    time_limit: float | None = None
    stopping: bool = False
    # Why it may not be preempted, where that is not an opt-out (a command job that is not
    # checkpointable: "is not checkpointable, so it is not preempted"); None: it opted out.
    kept_because: str | None = None
    account: str = ""  # whose share it counts against ("": its group), as `Want.account`
    idle: bool = False  # its GPUs sat at about 0% utilisation past `[shares] idle_after`

    def __post_init__(self) -> None:
        if not self.account:
            object.__setattr__(self, "account", self.group)


@dataclass(frozen=True)
class OtherProcess:
    """A process on a GPU holding memory (bytes) that is in no reservation there: it belongs to
    no queue job, or (`job_id`) to a job that was not granted this GPU."""

    pid: int
    used_memory_bytes: int
    job_id: int | None = None
    # The Unix user the process runs as, where it could be told: derived from the pid, so not
    # compared (an inventory that differs only in it is the same inventory).
    user: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class MigSlot:
    """One MIG instance: allocatable on its own, named by its UUID in CUDA_VISIBLE_DEVICES."""

    uuid: str
    profile: str  # "1g.10gb", "3g.40gb", ...
    memory_total_bytes: int


@dataclass(frozen=True)
class GpuSlot:
    """One GPU: index (PCI bus order), memory in bytes, memory held by processes that are not
    queue jobs (`others` names them where NVML lists them), and where it sits: `numa_node` and
    `switch` (an id shared by the GPUs under one PCIe switch, from NVML's common ancestor) when
    known. With MIG on, only its `mig` instances are allocatable."""

    index: int
    memory_total_bytes: int
    memory_used_other_bytes: int = 0
    healthy: bool = True
    others: tuple[OtherProcess, ...] = ()
    numa_node: int | None = None
    switch: int | None = None
    uuid: str | None = None
    mig: tuple[MigSlot, ...] = ()


@dataclass(frozen=True)
class Resources:
    """The machine: GPUs, CPU count, memory in bytes (0: not counted)."""

    gpus: tuple[GpuSlot, ...] = ()
    cpus: int = 1
    mem_bytes: int = 0


@dataclass(frozen=True)
class Settings:
    """Policy: drain mode, per-group running caps and GPU quotas, and the time constants.

    `quotas` maps a group to its guaranteed GPUs (fractions and MIG slices count by share);
    `start_grace_s` is how long after a job starts memory in use that NVML has not attributed
    to any job may be that job's own (so it is not counted twice, as its reservation and as
    someone else's); `default_runtime_s` is the run time assumed for backfill when a job has no
    time limit; `backfill_depth` caps how many waiting jobs get a reservation per pass (as
    Slurm's bf_max_job_test); `strict` stops jobs that exceed their GPU memory reservation.
    """

    drain: bool = False
    group_limits: Mapping[str, int] = field(default_factory=dict)
    default_parallel: int = 0  # for groups without a limit; 0 = only resources limit
    quotas: Mapping[str, float] = field(default_factory=dict)
    start_grace_s: float = 60.0
    default_runtime_s: float = 3600.0
    backfill_depth: int = 32
    strict: bool = False
    # Shares (KAI-Scheduler's model on one box): when `shares` or `default_share` is set, each
    # job counts against its `account` (a user, with `accounts` "user"; else a group) and
    # `quotas` is replaced by each account's deserved GPUs. `usage` is each account's decayed
    # GPU-hours (the usage ledger), `usage_k` how strongly it lowers an over-quota weight;
    # `min_runtime_s` is how long a job runs before it may be preempted.
    shares: Mapping[str, Share] = field(default_factory=dict)
    default_share: Share | None = None
    accounts: str = "group"
    usage: Mapping[str, float] = field(default_factory=dict)
    usage_k: float = 1.0
    min_runtime_s: float = 0.0
    # Preempt an idle job (`Holding.idle`) of an account above its share while another
    # account's GPU job waits (`[shares] reclaim_idle`; off by default).
    reclaim_idle: bool = False
    # A hierarchy (KAI-Scheduler's parent queues; Run:ai's departments): `departments` gives
    # each department's own share at the top level and `department_of` each member account's
    # department. The GPUs are divided among departments (and accounts in none) first, then
    # each department's part among its members (`fair_shares`).
    departments: Mapping[str, Share] = field(default_factory=dict)
    department_of: Mapping[str, str] = field(default_factory=dict)

    @property
    def by_share(self) -> bool:
        """True when shares decide the order and reclaims (`shares` or `default_share` set)."""
        return bool(self.shares) or self.default_share is not None

    def share_of(self, account: str) -> Share:
        """An account's share: its own, else the default, else nothing deserved, weight 1."""
        return self.shares.get(account) or self.default_share or Share()


@dataclass(frozen=True)
class Share:
    """One account's share (KAI-Scheduler's queue fields, on one box): `deserved` GPUs it is
    guaranteed (reclaimed for it from accounts above theirs); `deserved_gpu_mem` bytes of GPU
    memory within which it counts as inside its share (None: GPUs alone decide); `weight`, its
    part of the surplus beyond everyone's deserved quota; `limit`, the most GPUs it may hold
    (None: no cap); `max_running`, the most jobs it may run at once (0: no cap)."""

    deserved: float = 0.0
    weight: float = 1.0
    limit: float | None = None
    max_running: int = 0
    deserved_gpu_mem: int | None = None


# ---- decisions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Start the job on these GPUs. `devices` is CUDA_VISIBLE_DEVICES when it is not the
    indices (MIG instance UUIDs); `gpu_mem_cap` the bytes per GPU it may use (None: the card)."""

    job_id: int
    gpu_indices: tuple[int, ...]
    devices: tuple[str, ...] = ()
    gpu_mem_cap: int | None = None


@dataclass(frozen=True)
class Wait:
    """The job stays queued; `reason` says why, in words (shown by `ls`, `show`, the TUI)."""

    job_id: int
    reason: str


@dataclass(frozen=True)
class Block:
    """A dependency can never be satisfied."""

    job_id: int
    reason: str


@dataclass(frozen=True)
class Fail:
    """The job can never run on this machine and its submitter asked to fail rather than wait."""

    job_id: int
    reason: str


@dataclass(frozen=True)
class Preempt:
    """Stop a running job (SIGTERM; it checkpoints) and queue it again, for `for_job`."""

    job_id: int
    reason: str
    for_job: int


@dataclass(frozen=True)
class Exceeds:
    """A running job uses more GPU memory than it reserved; `stop` when the policy is strict."""

    job_id: int
    reason: str
    stop: bool


Decision = Start | Wait | Block | Fail | Preempt | Exceeds


# ---- helpers -----------------------------------------------------------------------------


def mig_share(profile: str) -> float:
    """A MIG profile's share of a GPU for quotas: "3g.40gb" -> 3/7."""
    head = profile.split("g.", 1)[0]
    return int(head) / MIG_SLICES if head.isdigit() else 1.0 / MIG_SLICES


def gpu_units(gpus: float, mig_profile: str | None) -> float:
    """GPUs a request counts for against a quota: a count, a fraction, or a MIG share."""
    return mig_share(mig_profile) if mig_profile else gpus


def _declared_bytes(gpus: float, gpu_mem: int | None, slot: GpuSlot) -> int:
    """Memory a job reserves by what it asked: `gpu_mem`, else its share of the card."""
    if gpu_mem:
        return gpu_mem
    return slot.memory_total_bytes if gpus >= 1 else int(gpus * slot.memory_total_bytes)


def _need_bytes(want: Want, slot: GpuSlot) -> int:
    """Free memory a GPU must have for `want`: its `gpu_mem`, or for a fraction its share of
    the card; a whole GPU without `gpu_mem` needs none in particular (it gets the GPU alone)."""
    if want.gpu_mem:
        return want.gpu_mem
    return 0 if want.gpus >= 1 else int(want.gpus * slot.memory_total_bytes)


def reservation_bytes(held: Holding, slot: GpuSlot) -> int:
    """GPU memory (bytes) a running job holds on one GPU: the larger of what it declared (a
    whole GPU without `gpu_mem`: the card) and the most NVML has shown it using."""
    return max(_declared_bytes(held.gpus, held.gpu_mem, slot), held.gpu_mem_seen or 0)


def _unattributed_bytes(held: Holding, slot: GpuSlot, now: float, grace_s: float) -> int:
    """Memory on a GPU that may be this job's although NVML does not show it as the job's yet:
    its whole reservation while it is in its start-up grace and NVML has shown it using nothing
    (a job allocates seconds after it starts, and until its process is listed its memory is
    only "in use"), else nothing. Up to this much of the memory in use that no listed process
    accounts for is taken to be the starting job's, not counted twice."""
    if held.gpu_mem_seen is None and now - held.started_at < grace_s:
        return reservation_bytes(held, slot)
    return 0


def _gib(num_bytes: int) -> str:
    return format_size(max(num_bytes, 0))


def _plural(count: float, word: str) -> str:
    """`1 GPU`, `4 GPUs`, `1.5 CPUs`: a count and its noun, singular only for exactly one."""
    return f"{count:g} {word}" if count == 1 else f"{count:g} {word}s"


def _listing(ids: Iterable[int]) -> str:
    return ", ".join(str(i) for i in ids)


def _dependency_verdict(want: Want, dep_states: Mapping[int, str]) -> tuple[str, str | None]:
    """('ready' | 'wait' | 'block', reason)."""
    waiting: list[int] = []
    for dep_id, cond in want.deps:
        state = dep_states.get(dep_id)
        if state is None:
            return "block", f"dependency {dep_id} was removed"
        if cond == "ok":
            if state == S.SUCCEEDED:
                continue
            if state in (S.FAILED, S.CANCELLED, S.BLOCKED):
                return "block", f"dependency {dep_id} {state}"
        elif cond == "any":
            if state in SETTLED:
                continue
        elif cond == "fail":
            if state == S.FAILED:
                continue
            if state in (S.SUCCEEDED, S.CANCELLED, S.BLOCKED):
                return "block", f"dependency {dep_id} {state}; this job runs only after a failure"
        waiting.append(dep_id)
    if waiting:
        listed = ", ".join(str(d) for d in waiting)
        return (
            "wait",
            f"waiting for {'dependency' if len(waiting) == 1 else 'dependencies'} {listed}",
        )
    return "ready", None


def waits_on_dependencies(want: Want, dep_states: Mapping[int, str]) -> bool:
    """True when `want` waits for a dependency to end (one is live or queued, and none rules
    the job out); `dep_states` maps job id -> state name, a removed dependency absent."""
    return bool(want.deps) and _dependency_verdict(want, dep_states)[0] == "wait"


def _never_fits(want: Want, res: Resources) -> str | None:
    """Why this job can never run here, whatever else finishes; None if it could. Judged on
    every GPU the machine has: one that reports an error may come back (NVML errors can pass),
    so a job that needs it waits, saying so (`_Ledger.wait_reason`), rather than failing."""
    gpus = res.gpus
    wants_gpu = want.gpus > 0 or want.mig_profile is not None
    if wants_gpu and not gpus:
        return NO_GPU
    if want.mig_profile is not None:
        instances = [m for g in gpus for m in g.mig if m.profile == want.mig_profile]
        if not instances:
            known = sorted({f"{m.profile} on GPU {g.index}" for g in gpus for m in g.mig})
            have = f" (MIG instances: {', '.join(known)})" if known else ""
            return f"needs a MIG {want.mig_profile} instance; this machine has none{have}"
        if want.gpu_mem and all(m.memory_total_bytes < want.gpu_mem for m in instances):
            return (
                f"needs {_gib(want.gpu_mem)} of GPU memory, a MIG {want.mig_profile} instance"
                f" has {_gib(instances[0].memory_total_bytes)}"
            )
    elif want.gpus > 0:
        whole = [g for g in gpus if not g.mig]
        split = len(gpus) - len(whole)
        note = f" ({_plural(split, 'GPU')} split into MIG instances)" if split else ""
        if not whole:
            return f"every GPU is split into MIG instances; ask for one (e.g. --gpus {_any_profile(gpus)})"
        if want.gpus > len(whole):
            return f"needs {_plural(want.gpus, 'GPU')}, this machine has {len(whole)}{note}"
        if want.gpu_mem and not any(g.memory_total_bytes >= want.gpu_mem for g in whole):
            largest = max(g.memory_total_bytes for g in whole)
            return f"needs {_gib(want.gpu_mem)} of GPU memory, the largest GPU has {_gib(largest)}"
    if want.cpus > res.cpus:
        return f"needs {_plural(want.cpus, 'CPU')}, this machine has {res.cpus}"
    if want.mem and res.mem_bytes and want.mem > res.mem_bytes:
        return f"needs {_gib(want.mem)} of memory, this machine has {_gib(res.mem_bytes)}"
    return None


def _any_profile(gpus: Sequence[GpuSlot]) -> str:
    return next((m.profile for g in gpus for m in g.mig), "1g.10gb")


# ---- the ledger of one pass --------------------------------------------------------------


class _Ledger:
    """What is in use (and reserved for waiting jobs) while one pass hands things out."""

    def __init__(self, held: Sequence[Holding], res: Resources, now: float, settings: Settings):
        self.res = res
        self.now = now
        self.settings = settings
        self.slots = {g.index: g for g in res.gpus}
        self.whole = [g for g in res.gpus if g.healthy and not g.mig]
        self.held: list[Holding] = []
        self.share = {g.index: 0.0 for g in res.gpus}
        self.reserved = {g.index: 0 for g in res.gpus}
        self.starting = {g.index: 0 for g in res.gpus}  # see _unattributed_bytes
        self.free_at = {g.index: now for g in res.gpus}
        self.mig_used: dict[str, int] = {}
        self.cpus = 0.0
        self.mem = 0
        self.groups: dict[str, int] = {}
        # Per account (its group, or with shares by user its user): GPUs' worth held, jobs
        # running, GPU memory reserved (bytes).
        self.group_units: dict[str, float] = {}
        self.account_jobs: dict[str, int] = {}
        self.account_mem: dict[str, int] = {}
        # The guaranteed GPUs per account: the group quotas, or with shares each account's
        # deserved quota (`plan` fills it for every account it sees).
        self.quotas: dict[str, float] = dict(settings.quotas)
        # GPU index -> (time the waiting job may start, its id): backfill may use the GPU only
        # for a job expected to end by then.
        self.held_for: dict[int, tuple[float, int]] = {}
        # GPU index -> (share, bytes) left beside a waiting fraction once it starts there (see
        # hold_share): a later job that would outlast the hold may use that room and no more.
        # A GPU kept for a whole-GPU job has no entry: nothing is left beside it.
        self.held_room: dict[int, tuple[float, int]] = {}
        self.holds = 0  # waiting jobs given GPUs to keep this pass
        # The job just decided waits on a reclaim (its GPUs held now): its decision is its own,
        # not one the next job of its shape may reuse.
        self.reclaiming = False
        # Reclaims decided in this pass: GPUs promised to the jobs that wait for them, running
        # jobs chosen to be preempted, and stopping jobs whose GPUs are promised already.
        self.promised: set[int] = set()
        self.preempting: set[int] = set()
        self.claimed: set[int] = set()
        self.version = 0
        self._never: dict[int, str | None] = {}
        for holding in held:
            self.take(holding)
        self.started_now: set[int] = set()  # jobs this pass starts: never preempted in it

    def never_fits(self, want: Want) -> str | None:
        """`_never_fits`, once per shape."""
        key = want.shape
        if key not in self._never:
            self._never[key] = _never_fits(want, self.res)
        return self._never[key]

    def take(self, held: Holding) -> None:
        """Count a running (or just started) job: its GPU shares, memory, CPUs, group use."""
        self.held.append(held)
        per_gpu = held.gpus if held.gpus < 1 else 1.0
        ends = self.ends(held)
        for index in held.gpu_indices:
            slot = self.slots.get(index)
            if slot is None:
                continue
            self.free_at[index] = max(self.free_at[index], ends)
            if held.mig_uuids:
                continue
            self.share[index] += per_gpu
            self.reserved[index] += reservation_bytes(held, slot)
            room = self.held_room.get(index)
            if room is not None and self.held_for[index][1] != held.id:
                # It starts beside a waiting fraction's hold: it takes part of the room left.
                share_left, bytes_left = room
                self.held_room[index] = (
                    share_left - per_gpu,
                    bytes_left - reservation_bytes(held, slot),
                )
            self.starting[index] += _unattributed_bytes(
                held, slot, self.now, self.settings.start_grace_s
            )
        for uuid in held.mig_uuids:
            self.mig_used[uuid] = held.id
        self.cpus += held.cpus
        self.mem += held.mem or 0
        self.groups[held.group] = self.groups.get(held.group, 0) + 1
        units = gpu_units(held.gpus, held.mig_profile)
        account = held.account
        self.group_units[account] = self.group_units.get(account, 0.0) + units
        self.account_jobs[account] = self.account_jobs.get(account, 0) + 1
        if held.gpu_mem and held.gpu_indices:
            count = len(held.gpu_indices)
            self.account_mem[account] = self.account_mem.get(account, 0) + held.gpu_mem * count
        self.version += 1

    def without(self, removed: set[int]) -> _Ledger:
        """What is in use less the jobs in `removed` (by id), as a new ledger with no GPUs kept
        and no reclaims: a trial for a reclaim, without counting every running job again."""
        trial = _Ledger((), self.res, self.now, self.settings)
        trial.held = [h for h in self.held if h.id not in removed]
        trial.share = dict(self.share)
        trial.reserved = dict(self.reserved)
        trial.starting = dict(self.starting)
        trial.free_at = dict(self.free_at)
        trial.mig_used = {u: j for u, j in self.mig_used.items() if j not in removed}
        trial.cpus, trial.mem = self.cpus, self.mem
        trial.groups = dict(self.groups)
        trial.group_units = dict(self.group_units)
        trial.account_jobs = dict(self.account_jobs)
        trial.account_mem = dict(self.account_mem)
        trial.quotas = self.quotas
        for held in self.held:
            if held.id not in removed:
                continue
            per_gpu = held.gpus if held.gpus < 1 else 1.0
            for index in held.gpu_indices:
                slot = self.slots.get(index)
                if slot is None or held.mig_uuids:
                    continue
                share = trial.share[index] - per_gpu
                trial.share[index] = share if share > _EPS else 0.0  # exact 0: a whole GPU free
                trial.reserved[index] -= reservation_bytes(held, slot)
                trial.starting[index] -= _unattributed_bytes(
                    held, slot, self.now, self.settings.start_grace_s
                )
            trial.cpus -= held.cpus
            trial.mem -= held.mem or 0
            trial.groups[held.group] -= 1
            trial.group_units[held.account] -= gpu_units(held.gpus, held.mig_profile)
            trial.account_jobs[held.account] -= 1
        return trial

    def free_gpu_mem_bytes(self, slot: GpuSlot) -> int:
        """Total, less our jobs' reservations, less what others hold: processes NVML lists that
        are not ours, and memory in use no process accounts for, except up to the reservations
        of jobs in their start-up grace that NVML has not shown using anything yet (that is
        likely theirs, and is not counted twice)."""
        named = min(sum(p.used_memory_bytes for p in slot.others), slot.memory_used_other_bytes)
        unnamed = max(0, slot.memory_used_other_bytes - named - self.starting[slot.index])
        return slot.memory_total_bytes - named - unnamed - self.reserved[slot.index]

    def _usable(self, index: int, want: Want) -> bool:
        """False if a waiting job (another than `want`) holds this GPU against `want` and `want`
        would not end before that job starts."""
        hold = self.held_for.get(index)
        if hold is None or hold[1] == want.id:
            return True
        runtime = want.time_limit or self.settings.default_runtime_s
        if self.now + runtime <= hold[0] + _EPS:
            return True
        room = self.held_room.get(index)
        if room is None or want.gpus >= 1 or want.mig_profile is not None:
            return False
        # It would outlast the hold: only in the room the waiting fraction leaves beside it.
        need = _need_bytes(want, self.slots[index])
        return want.gpus <= room[0] + _EPS and need <= room[1]

    def pick(self, want: Want) -> tuple[tuple[int, ...], tuple[str, ...]] | None:
        """(GPU indices, MIG UUIDs) for `want`, or None if it does not fit now."""
        if want.mig_profile is not None:
            for slot in self.res.gpus:
                if not slot.healthy or not self._usable(slot.index, want):
                    continue
                for inst in slot.mig:
                    if inst.profile == want.mig_profile and inst.uuid not in self.mig_used:
                        if want.gpu_mem and inst.memory_total_bytes < want.gpu_mem:
                            continue
                        return (slot.index,), (inst.uuid,)
            return None
        if want.gpus >= 1:
            count = math.ceil(want.gpus)
            free = [
                g
                for g in self.whole
                if self.share[g.index] == 0
                and self._usable(g.index, want)
                and self.free_gpu_mem_bytes(g) >= _need_bytes(want, g)
            ]
            if len(free) < count:
                return None
            return _place(free, count), ()
        fits = [
            g
            for g in self.whole
            if self.share[g.index] + want.gpus <= 1.0 + _EPS
            and self._usable(g.index, want)
            and self.free_gpu_mem_bytes(g) >= _need_bytes(want, g)
        ]
        if not fits:
            return None
        # The fullest GPU it still fits on, so whole GPUs stay free for others.
        best = max(fits, key=lambda g: (self.share[g.index], -g.index))
        return (best.index,), ()

    def hold_for(self, want: Want) -> None:
        """Reserve for a waiting whole-GPU job the GPUs that free up first (Slurm's backfill):
        later jobs may use them only if they are expected to end before it can start."""
        count = math.ceil(want.gpus)
        open_gpus = [
            g
            for g in self.whole
            if g.index not in self.held_for
            and g.memory_total_bytes - g.memory_used_other_bytes >= _need_bytes(want, g)
        ]
        if len(open_gpus) < count:
            return
        open_gpus.sort(key=lambda g: (self.free_at[g.index], g.index))
        chosen = open_gpus[:count]
        start = max(self.free_at[g.index] for g in chosen)
        for g in chosen:
            self.held_for[g.index] = (start, want.id)
        self.holds += 1
        self.version += 1

    def hold_share(self, want: Want) -> None:
        """Reserve for a waiting fraction the GPU it could start on soonest (as `hold_for` does
        for whole GPUs): by running jobs' expected ends, when enough of the GPU's share and
        memory is free for it. Later jobs may use that GPU only if they end before then, or
        within the room the fraction leaves beside it (`held_room`), so small fractions
        arriving all the time never keep a larger one off its GPU."""
        best: tuple[tuple[float, float, int], float, int, int] | None = None
        for g in self.whole:
            if g.index in self.held_for:
                continue
            need = _need_bytes(want, g)
            if g.memory_total_bytes - g.memory_used_other_bytes < need:
                continue
            share = self.share[g.index]
            free_mem = self.free_gpu_mem_bytes(g)
            start = self.now
            if share + want.gpus > 1.0 + _EPS or free_mem < need:
                here = [h for h in self.held if g.index in h.gpu_indices and not h.mig_uuids]
                found = None
                for h in sorted(here, key=lambda h: (self.ends(h), h.id)):
                    share -= h.gpus if h.gpus < 1 else 1.0
                    free_mem += reservation_bytes(h, g)
                    if share + want.gpus <= 1.0 + _EPS and free_mem >= need:
                        found = self.ends(h)
                        break
                if found is None:
                    continue
                start = found
            key = (start, -self.share[g.index], g.index)
            room_share = max(0.0, 1.0 - share - want.gpus)
            room_bytes = max(0, free_mem - need)
            if best is None or key < best[0]:
                best = (key, room_share, room_bytes, g.index)
        if best is None:
            return
        (start, _fullness, index), room_share, room_bytes, _index = best
        self.held_for[index] = (start, want.id)
        self.held_room[index] = (room_share, room_bytes)
        self.holds += 1
        self.version += 1

    def ends(self, held: Holding) -> float:
        """When a running job is expected to end: its start plus its time limit (else
        `default_runtime_s`), and not before now."""
        return max(held.started_at + (held.time_limit or self.settings.default_runtime_s), self.now)

    def hold_now(self, indices: Iterable[int], job_id: int) -> None:
        """Keep GPUs for a job that waits on a preemption: no backfill onto them at all, and
        no other reclaim in this pass counts on them."""
        for index in indices:
            self.held_for[index] = (self.now, job_id)
            self.held_room.pop(index, None)
            self.promised.add(index)
        self.version += 1

    # ---- reasons ---------------------------------------------------------------------

    def wait_reason(self, want: Want) -> str:
        """Why `want` does not fit on the GPUs now, in words (naming GPUs that report errors:
        they are left out until they answer again)."""
        broken = self.broken_note()
        if want.mig_profile is not None:
            same = [
                m
                for g in self.res.gpus
                if g.healthy
                for m in g.mig
                if m.profile == want.mig_profile
            ]
            if not same:
                return f"needs a MIG {want.mig_profile} instance; {broken}"
            busy = sorted({self.mig_used[m.uuid] for m in same if m.uuid in self.mig_used})
            total = len(same)
            in_use = "the only one is in use" if total == 1 else f"all {total} are in use"
            return f"needs a MIG {want.mig_profile} instance; {in_use}" + (
                f" ({'job' if len(busy) == 1 else 'jobs'} {_listing(busy)})" if busy else ""
            )
        held_note = self.held_note(want)
        if (want.gpus >= 1 and not want.gpu_mem) or not self.whole:
            free = sum(1 for g in self.whole if self.share[g.index] == 0)
            of = f"{free} of {len(self.whole)} free" + (f"; {broken}" if broken else "")
            return f"waiting for {_plural(want.gpus, 'GPU')} ({of}){held_note}"
        broken = f"; {broken}" if broken else ""
        need = _need_bytes(want, self.whole[0])
        if want.gpus < 1 and not want.gpu_mem:
            most = max(self.whole, key=lambda g: (1.0 - self.share[g.index], -g.index))
            room = max(1.0 - self.share[most.index], 0.0)
            return (
                f"needs {want.gpus:g} of a GPU; the most free is {room:g} of GPU {most.index}"
                f"{self._others_note()}{broken}{held_note}"
            )
        candidates = [g for g in self.whole if want.gpus < 1 or self.share[g.index] == 0]
        where = "on one GPU" if want.gpus <= 1 else f"on each of {want.gpus:g} GPUs"
        if not candidates:
            free = sum(1 for g in self.whole if self.share[g.index] == 0)
            return (
                f"needs {_gib(need)} {where}; {free} of {len(self.whole)} GPUs free{broken}"
                f"{held_note}"
            )
        best = max(candidates, key=lambda g: (self.free_gpu_mem_bytes(g), -g.index))
        return (
            f"needs {_gib(need)} {where}; the largest free is"
            f" {_gib(self.free_gpu_mem_bytes(best))} on GPU {best.index}"
            f"{self._others_note()}{broken}{held_note}"
        )

    def broken_note(self) -> str:
        """ "GPU 1 reports an error" / "GPUs 1, 3 report errors", or "" when all answer."""
        broken = [g.index for g in self.res.gpus if not g.healthy]
        if not broken:
            return ""
        if len(broken) == 1:
            return f"GPU {broken[0]} reports an error"
        return f"GPUs {_listing(broken)} report errors"

    def held_note(self, want: Want) -> str:
        """ "; kept for jobs ahead of it: GPUs 0, 1 (job 5)", or "" when nothing is kept."""
        held = sorted(
            {
                (i, j)
                for i, (_, j) in self.held_for.items()
                if self.slots[i].healthy and j != want.id
            }
        )
        if not held:
            return ""
        by_job: dict[int, list[int]] = {}
        for index, job in held:
            by_job.setdefault(job, []).append(index)
        parts = [
            f"{'GPU' if len(ix) == 1 else 'GPUs'} {_listing(ix)} (job {job})"
            for job, ix in sorted(by_job.items())
        ]
        return "; kept for jobs ahead of it: " + ", ".join(parts)

    def _others_note(self) -> str:
        """ "(GPU 1: 30.0 GiB held by alice's pid 812, not a queue job)" for memory outside the
        queue (its owner named where the process's Unix user could be told)."""
        parts = []
        for g in self.whole:
            if g.memory_used_other_bytes <= 0:
                continue
            listed = sorted(g.others, key=lambda p: -p.used_memory_bytes)
            strays = [p for p in listed if p.job_id is not None]
            outside = [p for p in listed if p.job_id is None]
            held = []
            if outside and any(p.user for p in outside):
                named = ", ".join(
                    f"{p.user}'s pid {p.pid}" if p.user else f"pid {p.pid}" for p in outside
                )
                held.append(
                    f"{named}, not a queue job" if len(outside) == 1 else f"{named}, not queue jobs"
                )
            elif outside:
                pids = ", ".join(str(p.pid) for p in outside)
                held.append(
                    f"pid {pids}, not a queue job"
                    if len(outside) == 1
                    else f"pids {pids}, not queue jobs"
                )
            held.extend(f"pid {p.pid} of job {p.job_id}, not granted it" for p in strays)
            who = f"held by {'; '.join(held)}" if held else "in use outside the queue"
            parts.append(f"GPU {g.index}: {_gib(g.memory_used_other_bytes)} {who}")
        return f" ({'; '.join(parts)})" if parts else ""


def _place(free: Sequence[GpuSlot], count: int) -> tuple[int, ...]:
    """`count` GPUs from `free` (in ascending index order), on one PCIe switch if possible,
    else one NUMA node, else any. Among the islands that fit, the one with the fewest free GPUs
    (so large islands stay whole for larger jobs), then the least memory held outside the queue
    on the GPUs it would give, then the lowest indices; within it, the GPUs with the least
    memory held outside the queue (a whole GPU is not given with 30 GiB of it taken while a
    clean one is free), then the lowest indices."""
    cleanest = sorted(free, key=lambda g: (g.memory_used_other_bytes, g.index))

    def taken(members: Sequence[GpuSlot]) -> int:
        return sum(g.memory_used_other_bytes for g in members[:count])

    for key in ("switch", "numa_node"):
        islands: dict[int, list[GpuSlot]] = {}
        for g in cleanest:
            value = getattr(g, key)
            if value is not None:
                islands.setdefault(value, []).append(g)
        fitting = [members for members in islands.values() if len(members) >= count]
        if fitting:
            best = min(fitting, key=lambda m: (len(m), taken(m), min(g.index for g in m)))
            return tuple(sorted(g.index for g in best[:count]))
    return tuple(sorted(g.index for g in cleanest[:count]))


def _spare_units(
    held: Sequence[Holding], quotas: Mapping[str, float], leaving: set[int]
) -> dict[str, float]:
    """GPUs each group holds beyond its quota (jobs already stopping, and those in `leaving`,
    left out): how much of it may be reclaimed without taking the group below its guarantee."""
    used: dict[str, float] = {}
    for h in held:
        if not h.stopping and h.id not in leaving:
            used[h.account] = used.get(h.account, 0.0) + gpu_units(h.gpus, h.mig_profile)
    return {g: u - quotas.get(g, 0.0) for g, u in used.items() if u > quotas.get(g, 0.0) + _EPS}


def _fits_without(
    ledger: _Ledger, want: Want, removed: set[int], res: Resources, now: float, settings: Settings
) -> bool:
    return _pick_without(ledger, want, removed, res, now, settings) is not None


def _pick_without(
    ledger: _Ledger, want: Want, removed: set[int], res: Resources, now: float, settings: Settings
) -> tuple[int, ...] | None:
    """The GPUs `want` would get if the jobs in `removed` were gone (GPUs promised to other
    jobs in this pass stay out of reach)."""
    picked = _trial(ledger, removed, res, now, settings).pick(want)
    return None if picked is None else picked[0]


def _trial(
    ledger: _Ledger, removed: set[int], res: Resources, now: float, settings: Settings
) -> _Ledger:
    """A ledger of the running jobs less `removed`, with the GPUs promised in this pass full."""
    trial = ledger.without(removed)
    for index in ledger.promised:
        trial.share[index] = max(trial.share[index], 1.0)
    return trial


def _restartable(
    ledger: _Ledger,
    want: Want,
    placement: tuple[int, ...],
    victims: Sequence[Holding],
    removed: set[int],
    res: Resources,
    now: float,
    settings: Settings,
) -> tuple[dict[str, float], set[int]]:
    """(GPUs' worth per group, ids) of `victims` that could start again at once in the room
    left once `want` runs on `placement` (the smallest first): preempted there, they come back
    within their group's quota, so the group is not left below it."""
    trial = _trial(ledger, removed, res, now, settings)
    trial.take(
        Holding(
            want.id,
            want.group,
            placement,
            want.gpus,
            want.gpu_mem,
            started_at=now,
            account=want.account,
        )
    )
    back: dict[str, float] = {}
    ids: set[int] = set()
    for victim in sorted(victims, key=lambda h: (gpu_units(h.gpus, h.mig_profile), -h.id)):
        if victim.mig_uuids:
            continue
        again = Want(
            victim.id,
            0,
            victim.group,
            victim.gpus,
            victim.gpu_mem,
            time_limit=victim.time_limit,
            account=victim.account,
        )
        picked = trial.pick(again)
        if picked is None:
            continue
        trial.take(
            Holding(
                victim.id,
                victim.group,
                picked[0],
                victim.gpus,
                victim.gpu_mem,
                started_at=now,
                account=victim.account,
            )
        )
        back[victim.account] = back.get(victim.account, 0.0) + again.units
        ids.add(victim.id)
    return back, ids


def _reclaim(
    ledger: _Ledger, want: Want, res: Resources, now: float, settings: Settings
) -> tuple[list[Holding], list[Holding], tuple[int, ...], set[int]] | None:
    """For a job within its group's quota that does not fit: (the stopping jobs it waits for,
    the jobs to preempt, the GPUs it will get, the ids of victims moved rather than reclaimed:
    they can start again at once elsewhere), or None if nothing can be freed for it.

    It waits for stopping jobs whose GPUs no earlier job of this pass was promised; else it
    preempts jobs of other groups whose GPUs make it fit, never taking a group below its own
    quota: first only jobs of groups over their quota, within what they hold beyond it; else
    (fractions spread so that no GPU frees within that) also jobs past it, of any other group,
    when those past it can start again at once in the room left (the group keeps its quota
    overall: the fraction moves). For whole GPUs it frees GPUs one at a time (the cheapest to
    free first, then the one whose oldest job is youngest), so fractions spread over several
    GPUs are not preempted without freeing one; then it keeps only the victims it needs."""
    leaving = ledger.preempting | ledger.claimed
    stopping = {h.id for h in ledger.held if h.stopping or h.id in ledger.preempting}
    waitable = stopping - ledger.claimed  # stopping jobs whose GPUs nobody was promised yet
    if waitable and _fits_without(ledger, want, stopping, res, now, settings):
        gpus = _pick_without(ledger, want, stopping, res, now, settings) or ()
        # The stopping jobs on the GPUs it will get (others may be promised to later jobs).
        waited = [h for h in ledger.held if h.id in waitable and set(h.gpu_indices) & set(gpus)]
        if waited:
            return waited, [], gpus, set()
    spare = _spare_units(ledger.held, ledger.quotas, leaving)

    def allowed(h: Holding) -> bool:
        return (
            h.preemptible
            and not h.stopping
            and h.id not in leaving
            and h.id not in ledger.started_now
            and h.account != want.account
            and now - h.started_at >= settings.min_runtime_s
            and bool(h.gpu_indices or h.mig_uuids)
        )

    # Candidate sets, each freeing something: whole GPUs for a whole-GPU job, else single jobs.
    steps: list[list[Holding]] = []
    if want.gpus >= 1 and not want.mig_profile:
        on_gpu: dict[int, list[Holding]] = {}
        for h in ledger.held:
            if not h.mig_uuids and h.id not in stopping:
                for index in h.gpu_indices:
                    on_gpu.setdefault(index, []).append(h)
        for index, jobs in on_gpu.items():
            if (
                all(allowed(h) for h in jobs)
                and not ledger.slots[index].mig
                and index not in ledger.promised
            ):
                steps.append(jobs)
        # The GPU that costs least to free (fewest GPUs' worth of jobs), then the one whose
        # oldest job is youngest.
        steps.sort(
            key=lambda jobs: (
                sum(gpu_units(h.gpus, h.mig_profile) for h in jobs),
                -min(h.started_at for h in jobs),
                -max(h.id for h in jobs),
            )
        )
    else:
        steps = [[h] for h in sorted(ledger.held, key=lambda h: (-h.started_at, -h.id))]
        steps = [step for step in steps if allowed(step[0])]
    # First only borrowers' jobs, within each one's spare. Then, where fractions are spread
    # over GPUs so that no GPU frees within the spare (a borrower's share beyond its quota
    # shares GPUs with its guaranteed jobs, or a group within its quota is spread thin), also
    # past the spare, if the victims past it can start again at once in the room left: each
    # group then keeps its quota overall (a preempted fraction moves to another GPU). Last,
    # a job that started beyond its group's quota although part of it lies within (a 4-GPU job
    # that took a group with a quota of 5 from 4 GPUs to 8): it borrows, so it is reclaimed,
    # even though its group is then left below its quota by the part that lay within.
    over = _over_quota_jobs(ledger.held, ledger.quotas, leaving)
    for mode in ("spare", "moved", "over"):
        if mode == "spare":
            usable = [step for step in steps if all(h.account in spare for h in step)]
        elif mode == "over":
            usable = [step for step in steps if all(h.id in over for h in step)]
        else:
            usable = steps
        strict = mode == "spare"
        found = _choose_victims(ledger, want, usable, spare, stopping, strict, res, now, settings)
        if found is None or not found[0]:
            continue
        chosen, removed = found
        placement = _pick_without(ledger, want, removed, res, now, settings) or ()
        moved: set[int] = set()
        if mode == "moved":
            taken: dict[str, float] = {}
            for h in chosen:
                taken[h.account] = taken.get(h.account, 0.0) + gpu_units(h.gpus, h.mig_profile)
            back, moved = _restartable(ledger, want, placement, chosen, removed, res, now, settings)
            if any(c - back.get(g, 0.0) > spare.get(g, 0.0) + _EPS for g, c in taken.items()):
                continue
        return [], chosen, placement, moved
    return None


def _over_quota_jobs(
    held: Sequence[Holding], quotas: Mapping[str, float], leaving: set[int]
) -> set[int]:
    """Ids of the jobs that took their group beyond its quota: within each group, by start
    (oldest first), those at which the running total passes the quota. Jobs already stopping,
    and those in `leaving`, do not count."""
    running = sorted(
        (h for h in held if not h.stopping and h.id not in leaving),
        key=lambda h: (h.started_at, h.id),
    )
    total: dict[str, float] = {}
    over: set[int] = set()
    for h in running:
        total[h.account] = total.get(h.account, 0.0) + gpu_units(h.gpus, h.mig_profile)
        if total[h.account] > quotas.get(h.account, 0.0) + _EPS:
            over.add(h.id)
    return over


def _choose_victims(
    ledger: _Ledger,
    want: Want,
    steps: Sequence[Sequence[Holding]],
    spare: Mapping[str, float],
    stopping: set[int],
    strict: bool,
    res: Resources,
    now: float,
    settings: Settings,
) -> tuple[list[Holding], set[int]] | None:
    """Steps in order until `want` fits (with `strict`, only those within each group's spare),
    then the victims it needs (releasing the oldest chosen first): (victims, removed ids)."""
    chosen: list[Holding] = []
    removed = set(stopping)
    taken: dict[str, float] = {}
    fits = False
    for step in steps:
        fresh = [h for h in step if h.id not in removed]
        cost: dict[str, float] = {}
        for h in fresh:
            cost[h.account] = cost.get(h.account, 0.0) + gpu_units(h.gpus, h.mig_profile)
        if strict and any(
            taken.get(g, 0.0) + c > spare.get(g, 0.0) + _EPS for g, c in cost.items()
        ):
            continue  # it would take that group below its quota
        for g, c in cost.items():
            taken[g] = taken.get(g, 0.0) + c
        chosen.extend(fresh)
        removed.update(h.id for h in fresh)
        if _fits_without(ledger, want, removed, res, now, settings):
            fits = True
            break
    if not fits:
        return None
    for victim in sorted(chosen, key=lambda h: (h.started_at, h.id)):
        if _fits_without(ledger, want, removed - {victim.id}, res, now, settings):
            removed.discard(victim.id)
            chosen.remove(victim)
    return chosen, removed


def _exceeding(running: Sequence[Holding], res: Resources, settings: Settings) -> list[Decision]:
    """Running jobs that NVML shows above the GPU memory they declared."""
    slots = {g.index: g for g in res.gpus}
    found: list[Decision] = []
    for h in running:
        if h.gpu_mem_seen is None or not h.gpu_indices or h.mig_uuids:
            continue
        slot = slots.get(h.gpu_indices[0])
        if slot is None or (h.gpus >= 1 and not h.gpu_mem):
            continue
        declared = _declared_bytes(h.gpus, h.gpu_mem, slot)
        if h.gpu_mem_seen > declared:
            reason = (
                f"uses {_gib(h.gpu_mem_seen)} of GPU memory, {OVER_RESERVATION} of {_gib(declared)}"
            )
            found.append(Exceeds(h.id, reason, settings.strict))
    return found


# ---- the pass ----------------------------------------------------------------------------


def plan(
    queued: Sequence[Want],
    running: Sequence[Holding],
    dep_states: Mapping[int, str],
    res: Resources,
    settings: Settings,
    now: float = 0.0,
) -> list[Decision]:
    """Decide, for every queued job, whether it starts now, waits (with a reason in words), is
    blocked, or fails; and which running jobs to preempt or report for their GPU memory. A job
    that still waits for the reason in its `Want.reason` gets no decision (nothing to record).

    Order: jobs within their group's GPU quota first, then jobs that would borrow beyond it;
    within each, higher priority, then older (lower id). A job that does not fit keeps (for up
    to `backfill_depth` jobs) the GPUs that free up first, and a later job may start on them
    only if its time limit (else `default_runtime_s`) ends before then, so backfill never
    delays it (Slurm's backfill). A job within its quota that does not fit reclaims GPUs by
    preempting the youngest preemptible jobs of groups over their quota.

    With shares (`Settings.by_share`) the quota is each account's deserved quota, and across
    accounts jobs go in fair-share order (`fair_order`): priority orders only an account's own
    jobs. An account at its `limit` of GPUs or `max_running` jobs waits, saying so; a job
    younger than `min_runtime_s` is never preempted.
    """
    ledger = _Ledger(running, res, now, settings)
    decisions: list[Decision] = list(_exceeding(running, res, settings))
    # A job's shape decides everything but its place in the order, so while nothing was
    # handed out since a job of the same shape had to wait (or was deferred to borrow), the
    # next one waits for the same reason (or is deferred too): one dict look-up per job keeps
    # a pass fast with thousands queued.
    keys: dict[int, tuple[float, int]] | None = None
    if settings.by_share:  # the accounts' deserved quotas replace the group quotas
        ledger.quotas = {
            account: settings.share_of(account).deserved
            for account in {w.account for w in queued} | {h.account for h in running}
        }
        keys = fair_order(queued, running, settings, len(res.gpus))
    quotas = ledger.quotas
    within, borrowing = _order(queued, ledger, keys)
    deferred: list[Want] = []
    for phase in (within, None):
        if phase is None:  # borrowers, with the jobs that came to borrow while phase 1 ran
            if deferred:  # both in the same order: the sort merges two runs
                phase = deferred + borrowing
                if keys is None:
                    phase.sort(key=_BY_RANK)
                else:
                    phase.sort(key=lambda w: keys[w.id])
            else:
                phase = borrowing
            checking = False
        else:
            checking = bool(quotas)
        unfit: dict[int, tuple[int, str | None]] = {}  # shape -> (version, reason; None: defer)
        version = ledger.version
        for want in phase:
            if not want.deps:
                known = unfit.get(want.shape)
                if known is not None and known[0] == version:
                    if known[1] is None:
                        deferred.append(want)
                    elif known[1] != want.reason:
                        decisions.append(Wait(want.id, known[1]))
                    continue
            if checking and want.units > 0 and not _inside(want, ledger):
                deferred.append(want)  # its account filled its quota in this pass: it borrows
                if not want.deps:
                    unfit[want.shape] = (version, None)
                continue
            decision = _decide(want, ledger, dep_states, res, settings, now, decisions)
            version = ledger.version
            if isinstance(decision, Wait):
                if ledger.reclaiming:
                    ledger.reclaiming = False
                    unfit.pop(want.shape, None)
                elif not want.deps:
                    unfit[want.shape] = (version, decision.reason)
                if decision.reason == want.reason:
                    continue
            decisions.append(decision)
    if settings.reclaim_idle:
        decisions.extend(_reclaim_idle(queued, ledger, decisions))
    return decisions


def _reclaim_idle(
    queued: Sequence[Want], ledger: _Ledger, decisions: Sequence[Decision]
) -> list[Decision]:
    """Preemptions of idle jobs (`Holding.idle`) that took their account beyond its share,
    while a GPU job of another account waits (one not started in this pass), the oldest
    waiting job named as the one they are preempted for. A job already stopping or chosen in
    this pass is left alone."""
    started = {d.job_id for d in decisions if isinstance(d, Start)}
    chosen = {d.job_id for d in decisions if isinstance(d, Preempt)}
    waiting = [w for w in queued if w.units > 0 and w.id not in started]
    if not waiting:
        return []
    leaving = ledger.preempting | ledger.claimed | chosen
    over = _over_quota_jobs(ledger.held, ledger.quotas, leaving)
    out: list[Decision] = []
    for held in sorted(ledger.held, key=lambda h: h.id):
        if not held.idle or held.stopping or not held.preemptible or held.id not in over:
            continue
        if held.id in leaving or held.id in ledger.started_now:
            continue
        other = next((w for w in waiting if w.account != held.account), None)
        if other is None:
            continue
        who = _who(ledger.settings, other.account)
        standing = (
            _standing(ledger, held.account)
            if ledger.settings.by_share
            else f"{_who(ledger.settings, held.account)} holds more than its quota"
        )
        reason = (
            f"preempted for job {other.id}: its GPUs sat at about 0% utilisation while"
            f" {who} waited; {standing}"
        )
        out.append(Preempt(held.id, reason, other.id))
    return out


def _want_mem(want: Want) -> int:
    """GPU memory (bytes) a job reserves in all, for a deserved GPU memory quota: `gpu_mem`
    on each of its GPUs (0 when it names none: its GPUs count alone)."""
    return (want.gpu_mem or 0) * max(1, math.ceil(want.gpus)) if want.units > 0 else 0


def _inside(want: Want, ledger: _Ledger) -> bool:
    """True when `want` would keep its account within its guaranteed GPUs (and, with shares,
    within its deserved GPU memory, when one is set)."""
    account = want.account
    units = ledger.group_units.get(account, 0.0) + want.units
    if units > ledger.quotas.get(account, 0.0) + _EPS:
        return False
    if ledger.settings.by_share:
        mem = ledger.settings.share_of(account).deserved_gpu_mem
        if mem is not None and ledger.account_mem.get(account, 0) + _want_mem(want) > mem:
            return False
    return True


def _order(
    queued: Sequence[Want], ledger: _Ledger, keys: Mapping[int, tuple[float, int]] | None
) -> tuple[list[Want], list[Want]]:
    """(jobs within their account's quota, jobs that would borrow beyond it), each by higher
    priority first, then lower id; with `keys` (shares: `fair_order`) by those keys instead.
    Buckets, then a sort by id that is linear when the queue comes in id order (as the store
    lists it)."""
    inside_buckets: dict[int, list[Want]] = {}
    beyond_buckets: dict[int, list[Want]] = {}
    route: dict[int, dict[int, list[Want]]] = {}  # shape -> the buckets its jobs go to
    quotas = bool(ledger.quotas)
    for want in queued:
        buckets = route.get(want.shape)
        if buckets is None:
            over = quotas and not (want.units > 0 and _inside(want, ledger))
            buckets = route[want.shape] = beyond_buckets if over else inside_buckets
        bucket = buckets.get(want.priority)
        if bucket is None:
            buckets[want.priority] = [want]
        else:
            bucket.append(want)
    within: list[Want] = []
    beyond: list[Want] = []
    for buckets, out in ((inside_buckets, within), (beyond_buckets, beyond)):
        for priority in sorted(buckets, reverse=True):
            bucket = buckets[priority]
            bucket.sort(key=_BY_ID)
            out.extend(bucket)
        if keys is not None:
            out.sort(key=lambda w: keys[w.id])
    return within, beyond


def effective_weights(accounts: Iterable[str], settings: Settings) -> dict[str, float]:
    """Each account's over-quota weight lowered by its past usage (time-based fair share, as
    KAI-Scheduler's: a queue that used more than its weight's part of the past gets less of
    the surplus now). weight * max(0.05, 1 + usage_k * (weight share - usage share)), where
    the shares are of these accounts' weights and of their decayed GPU-hours
    (`Settings.usage`); with no usage recorded, the weights as configured."""
    names = sorted(set(accounts))
    weights = {a: max(settings.share_of(a).weight, 0.0) for a in names}
    total_w = sum(weights.values())
    total_u = sum(max(settings.usage.get(a, 0.0), 0.0) for a in names)
    if total_w <= 0 or total_u <= 0:
        return weights
    return {
        a: w
        * max(0.05, 1.0 + settings.usage_k * (w / total_w - settings.usage.get(a, 0.0) / total_u))
        for a, w in weights.items()
    }


def fair_shares(demand: Mapping[str, float], total: float, settings: Settings) -> dict[str, float]:
    """Each account's fair share of `total` GPUs, given what it wants (`demand`: GPUs' worth
    held plus queued): its deserved quota (up to what it wants and its limit), then the
    surplus divided by effective over-quota weight (`effective_weights`), water-filling: an
    account that wants less than its part gives the rest to the others (KAI-Scheduler's
    division of a queue's over-quota resources).

    With departments (`Settings.departments`), the same division is done twice, as
    KAI-Scheduler does down its queue tree: among the departments (each with its own share,
    wanting what its members want, its past usage theirs together) and the accounts in none;
    then each department's part among its members, by their own shares."""
    if settings.department_of:
        return _fair_shares_by_department(demand, total, settings)[0]
    caps: dict[str, float] = {}
    for account, wanted in demand.items():
        limit = settings.share_of(account).limit
        caps[account] = min(wanted, limit) if limit is not None else wanted
    fair = {a: min(settings.share_of(a).deserved, caps[a]) for a in demand}
    left = total - sum(fair.values())
    weights = effective_weights(demand, settings)
    open_ = {a for a in demand if fair[a] < caps[a] - _EPS and weights[a] > 0}
    while left > _EPS and open_:
        total_w = sum(weights[a] for a in open_)
        given = 0.0
        for account in sorted(open_):
            room = caps[account] - fair[account]
            part = min(left * weights[account] / total_w, room)
            fair[account] += part
            given += part
            if part >= room - _EPS:
                open_.discard(account)
        left -= given
        if given <= _EPS:
            break
    return fair


def _fair_shares_by_department(
    demand: Mapping[str, float], total: float, settings: Settings
) -> tuple[dict[str, float], dict[str, float]]:
    """`fair_shares` over a two-level hierarchy (see there): (each account's fair share, each
    top-level unit's: a department's, or an account's in none, by its own name)."""
    top_of = {a: _top_of(a, settings) for a in demand}
    top_demand: dict[str, float] = {}
    top_usage: dict[str, float] = {}
    for account, wanted in demand.items():
        top = top_of[account]
        top_demand[top] = top_demand.get(top, 0.0) + wanted
        top_usage[top] = top_usage.get(top, 0.0) + settings.usage.get(account, 0.0)
    top_shares = {
        top_of[a]: settings.departments.get(top_of[a]) or settings.share_of(a) for a in demand
    }
    flat = replace(settings, department_of={}, departments={})
    top_fair = fair_shares(top_demand, total, replace(flat, shares=top_shares, usage=top_usage))
    fair: dict[str, float] = {}
    for top, part in top_fair.items():
        members = {a: demand[a] for a in demand if top_of[a] == top}
        if top in settings.departments:
            fair.update(fair_shares(members, part, flat))
        else:
            fair.update({a: part for a in members})
    return fair, top_fair


def _top_of(account: str, settings: Settings) -> str:
    """The top-level unit of `account` in the department tree: its department, or itself when
    in none. An account in none that is named like a department (a group or user the config
    cannot know of) is kept apart from it: its key begins with a NUL, which no department's
    name holds (`workbench.config` checks them)."""
    department = settings.department_of.get(account)
    if department is not None:
        return department
    return "\0" + account if account in settings.departments else account


def _department_cap(want: Want, ledger: _Ledger, settings: Settings) -> str | None:
    """Why the `limit` of `want`'s account's department holds it (its members together hold
    that many GPUs already), or None."""
    department = settings.department_of.get(want.account)
    share = settings.departments.get(department) if department is not None else None
    if share is None or share.limit is None or want.units <= 0:
        return None
    held = sum(
        ledger.group_units.get(member, 0.0)
        for member, theirs in settings.department_of.items()
        if theirs == department
    )
    if held + want.units > share.limit + _EPS:
        return f"department {department} is at its limit of {share.limit:g} GPUs: holds {held:g}"
    return None


def fair_order(
    queued: Sequence[Want], running: Sequence[Holding], settings: Settings, total: float
) -> dict[int, tuple[float, int]]:
    """A sort key per queued job id: (the fraction of its account's fair share the account
    would hold once this job and its account's jobs before it run, rank). Each account's jobs
    go by priority, then age, among themselves only; across accounts, the job that leaves its
    account furthest below its fair share goes first (virtual finish order, as in fair
    queueing), so a user's high priority never jumps another user's jobs. With departments,
    the fraction is the larger of its account's and its department's (the department's jobs
    before it counted), so the department furthest below its part goes first."""
    held: dict[str, float] = {}
    for h in running:
        if not h.stopping:
            held[h.account] = held.get(h.account, 0.0) + gpu_units(h.gpus, h.mig_profile)
    mine: dict[str, list[Want]] = {}
    for want in queued:
        mine.setdefault(want.account, []).append(want)
    demand = {a: held.get(a, 0.0) for a in held}
    for account, wants in mine.items():
        demand[account] = held.get(account, 0.0) + sum(w.units for w in wants)
    if settings.department_of:
        fair, top_fair = _fair_shares_by_department(demand, total, settings)
    else:
        fair, top_fair = fair_shares(demand, total, settings), {}
    top_held: dict[str, float] = {}
    for account, level in held.items():
        above = _top_of(account, settings)
        top_held[above] = top_held.get(above, 0.0) + level
    keys: dict[int, tuple[float, int]] = {}
    for account, wants in mine.items():
        wants.sort(key=_BY_RANK)
        level = held.get(account, 0.0)
        base = max(fair.get(account, 0.0), _EPS)
        top = settings.department_of.get(account)
        for want in wants:
            level += want.units
            share = level / base if want.units > 0 else 0.0
            if top is not None and want.units > 0:
                # Departments first: a job that would take its department further past the
                # department's fair share waits behind one that would not (KAI's queue order).
                top_held[top] = top_held.get(top, 0.0) + want.units
                share = max(share, top_held[top] / max(top_fair.get(top, 0.0), _EPS))
            keys[want.id] = (share, want.rank)
    return keys


_BY_RANK = operator.attrgetter("rank")
_BY_ID = operator.attrgetter("id")


def _decide(
    want: Want,
    ledger: _Ledger,
    dep_states: Mapping[int, str],
    res: Resources,
    settings: Settings,
    now: float,
    decisions: list[Decision],
) -> Decision:
    """One job's decision against the ledger (which it updates when the job starts)."""
    verdict, reason = "ready", None
    if want.deps:
        verdict, reason = _dependency_verdict(want, dep_states)
        if verdict == "block":
            return Block(want.id, reason or "a dependency can never be satisfied")
    never = ledger.never_fits(want)
    if never is not None:
        return Fail(want.id, never) if want.fail_unrunnable else Wait(want.id, never)
    if verdict == "wait":
        return Wait(want.id, reason or "waiting for dependencies")
    if settings.drain:
        return Wait(want.id, "drain mode: nothing new starts")
    limit = settings.group_limits.get(want.group, settings.default_parallel)
    if limit and ledger.groups.get(want.group, 0) >= limit:
        return Wait(want.id, f"group '{want.group}' is at its limit of {limit} running")
    if settings.by_share:
        capped = _share_cap(want, ledger, settings)
        if capped is not None:
            return Wait(want.id, capped)
    if want.cpus and ledger.cpus + want.cpus > res.cpus + _EPS:
        free = max(res.cpus - ledger.cpus, 0)
        return Wait(want.id, f"waiting for {_plural(want.cpus, 'CPU')} ({free:g} free)")
    if want.mem and res.mem_bytes and ledger.mem + want.mem > res.mem_bytes:
        free_mem = max(res.mem_bytes - ledger.mem, 0)
        return Wait(want.id, f"waiting for {_gib(want.mem)} of memory ({_gib(free_mem)} free)")
    indices: tuple[int, ...] = ()
    devices: tuple[str, ...] = ()
    if want.units > 0:
        picked = ledger.pick(want)
        if picked is None:
            holds = not want.mig_profile
            quota_reason = _wait_with_quota(
                ledger, want, want.units, ledger.quotas, decisions, res, now, settings
            )
            if quota_reason is not None:
                if not ledger.reclaiming:
                    quota_reason += ledger.held_note(want)
                return Wait(want.id, quota_reason)
            reason = ledger.wait_reason(want) + _unreclaimable_note(ledger, want, settings)
            if holds and ledger.holds < settings.backfill_depth:
                if want.gpus >= 1:
                    ledger.hold_for(want)
                else:
                    ledger.hold_share(want)
            return Wait(want.id, reason)
        indices, devices = picked
    cap = None
    if indices and not devices and (want.gpus < 1 or want.gpu_mem):
        cap = _declared_bytes(want.gpus, want.gpu_mem, ledger.slots[indices[0]])
    ledger.started_now.add(want.id)
    ledger.take(
        Holding(
            want.id,
            want.group,
            indices,
            want.gpus,
            want.gpu_mem,
            want.cpus,
            want.mem,
            started_at=now,
            mig_uuids=devices,
            mig_profile=want.mig_profile,
            preemptible=want.preemptible,
            time_limit=want.time_limit,
            account=want.account,
        )
    )
    return Start(want.id, indices, devices, cap)


def _who(settings: Settings, account: str) -> str:
    """An account in words: a user's name with shares by user, else "group NAME"."""
    return account if settings.by_share and settings.accounts == "user" else f"group {account}"


def _standing(ledger: _Ledger, account: str, extra: float = 0.0) -> str:
    """ "alice is above their share: 3 of 2 GPUs" / "bob is within their share: 1 of 2 GPUs"
    (holding `extra` GPUs more than now)."""
    held = ledger.group_units.get(account, 0.0) + extra
    deserved = ledger.quotas.get(account, 0.0)
    where = "above" if held > deserved + _EPS else "within"
    return f"{_who(ledger.settings, account)} is {where} their share: {held:g} of {deserved:g} GPUs"


def _others_standing(ledger: _Ledger, account: str) -> str:
    """ "; bob is within theirs; carol is above theirs (4 of 2 GPUs)": the other accounts
    that hold GPUs or wait, up to four, so a waiting job's reason says who is where."""
    parts = []
    for other in sorted(a for a in ledger.quotas if a != account)[:4]:
        held = ledger.group_units.get(other, 0.0)
        deserved = ledger.quotas.get(other, 0.0)
        who = _who(ledger.settings, other)
        if held > deserved + _EPS:
            parts.append(f"{who} is above theirs ({held:g} of {deserved:g} GPUs)")
        else:
            parts.append(f"{who} is within theirs")
    return "".join(f"; {p}" for p in parts)


def _share_cap(want: Want, ledger: _Ledger, settings: Settings) -> str | None:
    """Why an account's own caps hold `want` (its `max_running` jobs, its `limit` of GPUs, its
    department's `limit`), or None."""
    share = settings.share_of(want.account)
    who = _who(settings, want.account)
    running = ledger.account_jobs.get(want.account, 0)
    if share.max_running and running >= share.max_running:
        return f"{who} is at their cap of {share.max_running} running jobs ({running} running)"
    held = ledger.group_units.get(want.account, 0.0)
    if share.limit is not None and want.units > 0 and held + want.units > share.limit + _EPS:
        return f"{who} is at their limit of {share.limit:g} GPUs: holds {held:g}"
    return _department_cap(want, ledger, settings)


def _unreclaimable_note(ledger: _Ledger, want: Want, settings: Settings) -> str:
    """For a job within its group's quota that waits although nothing could be reclaimed for
    it, why its guarantee does not help now (else ""): the jobs borrowing beyond their group's
    quota opted out of preemption, have not run their minimum run time, or would not free room
    for it, or no group borrows at all (with the quotas adding up to more GPUs than the machine
    has, when they do). With shares, the same of users (or groups) and their deserved quotas."""
    quotas = ledger.quotas
    quota = quotas.get(want.account, 0.0)
    used = ledger.group_units.get(want.account, 0.0)
    if not quota or want.units <= 0 or used + want.units > quota + _EPS:
        return ""
    leaving = ledger.preempting | ledger.claimed
    over = _over_quota_jobs(ledger.held, quotas, leaving)
    borrowers = sorted(
        (h for h in ledger.held if h.id in over and h.account != want.account and not h.stopping),
        key=lambda h: h.id,
    )
    if settings.by_share:
        head = f"; {_standing(ledger, want.account)}, but nothing can be reclaimed: "
    else:
        head = f"; within its group's quota of {quota:g}, but nothing can be reclaimed: "
    if borrowers and all(not h.preemptible for h in borrowers):
        if len(borrowers) == 1:
            (only,) = borrowers
            why = only.kept_because or "opted out of preemption"
            its = "its share" if settings.by_share else "its group's quota"
            who = _who(settings, only.account)
            return head + f"job {only.id} ({who}) borrows beyond {its} and {why}"
        named = ", ".join(f"{h.id} ({_who(settings, h.account)})" for h in borrowers)
        kept = {h.kept_because for h in borrowers}
        why = (
            "opted out of preemption"
            if kept == {None}
            else "are not checkpointable, so they are not preempted"
            if None not in kept
            else "opted out of preemption or are not checkpointable"
        )
        beyond = "their shares" if settings.by_share else "their groups' quotas"
        return head + f"jobs {named} borrow beyond {beyond} and {why}"
    young = [
        h for h in borrowers if h.preemptible and ledger.now - h.started_at < settings.min_runtime_s
    ]
    if young:
        ids = _listing(h.id for h in young)
        ran = min(ledger.now - h.started_at for h in young)
        which = "job {}, which borrows," if len(young) == 1 else "jobs {}, which borrow, have"
        return (
            head + f"{which.format(ids)} ran {_duration(ran)} of the"
            f" {_duration(settings.min_runtime_s)} minimum before a job may be preempted"
        )
    if borrowers:
        ids = _listing(h.id for h in borrowers)
        if len(borrowers) == 1:
            return head + f"stopping job {ids}, which borrows, would not make room for it"
        return head + f"stopping jobs {ids}, which borrow, would not make room for it"
    if settings.by_share:
        note = head + "nobody else holds more than their share"
    else:
        note = head + "no other group holds more than its own quota"
    total = sum(quotas.values())
    if total > len(ledger.res.gpus) + _EPS:
        note += f" (the quotas add up to {total:g} GPUs, this machine has {len(ledger.res.gpus)})"
    return note


def _duration(seconds: float) -> str:
    """ "45 s", "12 min", "2.5 h": a short duration in words."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _wait_with_quota(
    ledger: _Ledger,
    want: Want,
    units: float,
    quotas: Mapping[str, float],
    decisions: list[Decision],
    res: Resources,
    now: float,
    settings: Settings,
) -> str | None:
    """The reason (and any preemption) for a GPU job that does not fit, where quotas decide
    it: a job within its quota reclaims borrowed GPUs; one beyond it is told its group is at
    its quota. None: quotas play no part, the plain fit reason applies."""
    if not quotas:
        return None
    quota = quotas.get(want.account, 0.0)
    used = ledger.group_units.get(want.account, 0.0)
    shares = settings.by_share
    if used + units > quota + _EPS or (shares and not _inside(want, ledger)):
        if want.account not in quotas:
            return None
        if shares:
            return (
                f"{_standing(ledger, want.account, units)}{_others_standing(ledger, want.account)};"
                f" waiting for idle GPUs: {ledger.wait_reason(want)}"
            )
        return f"group {want.group} is at its quota of {quota:g} and nothing is idle to borrow"
    reclaim = _reclaim(ledger, want, res, now, settings)
    if reclaim is None:
        return None
    waited, victims, placement, moved = reclaim
    freed = sorted({i for h in (*waited, *victims) for i in h.gpu_indices})
    ledger.hold_now(placement, want.id)  # the GPUs it will get, freed or already free
    ledger.reclaiming = True
    ledger.claimed.update(h.id for h in waited)
    ledger.preempting.update(h.id for h in victims)
    ledger.group_units[want.account] = used + units
    gpus = f"{'GPU' if len(freed) == 1 else 'GPUs'} {_listing(freed)}"
    if waited:
        ids = _listing(sorted(h.id for h in waited))
        jobs = "job" if len(waited) == 1 else "jobs"
        within = _standing(ledger, want.account, -units) if shares else "within its group's quota"
        return f"{within}; waiting for {jobs} {ids} to stop and free {gpus}"
    for victim in victims:
        vquota = quotas.get(victim.account, 0.0)
        if shares:
            mover = f"{_who(settings, want.account)} is under their share and needs whole GPUs"
            over = (
                f"{_standing(ledger, victim.account)}; {_who(settings, want.account)} is"
                " within theirs"
            )
        else:
            mover = f"group {want.group} is under its quota and needs whole GPUs"
            over = (
                f"group {victim.group} is over its quota of {vquota:g} and group {want.group}"
                " is under its own"
            )
        why = (
            f"{mover}; this job can start again at once on room left on another GPU"
            if victim.id in moved
            else over
        )
        decisions.append(Preempt(victim.id, f"preempted for job {want.id}: {why}", want.id))
    parts = []
    for label, group in (
        ("over-quota", [h.id for h in victims if h.id not in moved]),
        ("to move to room on other GPUs", [h.id for h in victims if h.id in moved]),
    ):
        if group:
            jobs = "job" if len(group) == 1 else "jobs"
            parts.append(f"{jobs} {_listing(sorted(group))} ({label})")
    within = (
        _standing(ledger, want.account, -units)
        if shares
        else f"within its group's quota of {quota:g}"
    )
    return f"{within}; reclaiming {gpus} by preempting {' and '.join(parts)}"
