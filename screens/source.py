"""Where the screens get their data: the live store, read on one thread of its own (so the TUI
holds one SQLite connection for its reads, however many worker threads it starts), or fixed data
and a fixed clock for snapshot tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from workbench.paths import Home

if TYPE_CHECKING:  # the store's modules load on the first read, after the first frame
    from workbench.db.job_pages import JobFilter
    from workbench.db.store import Job, JobEvent, Store

T = TypeVar("T")


@dataclass
class JobPage:
    """One window of the job table: `jobs` are rows `offset`.. of `total` matching the filter;
    `counts` is jobs per state over the whole table."""

    total: int
    offset: int
    jobs: list[Job]
    counts: dict[str, int]
    idle: dict[int, float] = field(default_factory=dict)  # job id -> idle GPUs since (unix s)


@dataclass
class LogPiece:
    """A piece of a job's log read through a daemon: `data` (text), `offset` (the byte where
    the next piece starts; None: no answer, nothing read), `reset` (the log was rewritten: the piece starts it again) and
    `refused` (the daemon's reason for not sending it: another user's job)."""

    data: str
    offset: int | None
    reset: bool = False
    refused: str | None = None


def process_facts(process: Any) -> dict[str, Any]:
    """{user, cpu_percent, rss_bytes, started, command, ppid} of a psutil.Process, each fact on its
    own: another user's process denies its command line but still gives its name and owner,
    so a row never reads `-` and `?` for all of them. Raises psutil.NoSuchProcess if it ended."""
    import psutil

    def fact(read: Callable[[], Any], default: Any = None) -> Any:
        try:
            return read()
        except psutil.AccessDenied:
            return default

    command = fact(lambda: " ".join(process.cmdline()), "") or fact(
        lambda: f"[{process.name()}]", "?"
    )
    memory = fact(process.memory_info)
    return {
        "user": fact(process.username) or str(fact(lambda: process.uids().real, "-")),
        "cpu_percent": fact(lambda: process.cpu_percent(None)),
        "rss_bytes": memory.rss if memory is not None else None,
        "started": fact(process.create_time),
        "command": command,
        "ppid": fact(process.ppid),
    }


class Source:
    """The live source: reads the store of `home`; actions go through a Client.

    The store keeps one connection per thread, and Textual starts a new thread for every thread
    worker: reads therefore run on one long-lived store thread (`read`), actions on another
    (`act`, so a slow daemon start never holds up the polls). Each thread's connection lives as
    long as the TUI, so polling once a second never piles up connections."""

    # What the Queue's status line calls the queue it shows (None: the home's own).
    queue_label: str | None = None

    def __init__(self, home: Home):
        from concurrent.futures import ThreadPoolExecutor

        self.home = home
        self._store: Store | None = None
        self._client: Any = None
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="workbench-store")
        self._actor = ThreadPoolExecutor(1, thread_name_prefix="workbench-actions")

    def now(self) -> float:
        return time.time()

    def read(self, fn: Callable[[Store], T]) -> T:
        """`fn(store)` run on the store thread; its exceptions are raised here."""
        return self._reader.submit(self._on_store_thread, fn).result()

    def _on_store_thread(self, fn: Callable[[Store], T]) -> T:
        if self._store is None:
            from workbench.db.store import Store

            self._store = Store.open(self.home.state_db)
        return fn(self._store)

    def act(self, fn: Callable[[Any], T]) -> T:
        """`fn(client)` run on the actions thread (the Client starts the daemon when needed)."""

        def run() -> T:
            if self._client is None:
                from workbench.daemon.client import Client

                self._client = Client(self.home)
            return fn(self._client)

        return self._actor.submit(run).result()

    def data_version(self) -> int:
        return self.read(lambda store: store.data_version())

    def job_page(self, where: JobFilter, offset: int, limit: int) -> JobPage:
        """Rows `offset`..`offset + limit` of the jobs matching `where` (by id), their count and
        the count per state: what the Queue screen shows, read without loading every job."""
        from workbench.db import job_pages
        from workbench.db.idle import idle_since

        def page(store: Store) -> JobPage:
            total = job_pages.count_jobs(store, where)
            first = max(0, min(offset, total - 1)) if total else 0
            jobs = job_pages.page_of_jobs(store, where, first, limit)
            counts = {str(state): n for state, n in store.counts_by_state().items()}
            idle = {j: since for j, (since, _) in idle_since(store).items()}
            return JobPage(total, first, jobs, counts, idle)

        return self.read(page)

    def job_position(self, where: JobFilter, job_id: int) -> int:
        """Where `job_id` sits among the jobs matching `where` (0-based)."""
        from workbench.db import job_pages

        return self.read(lambda store: job_pages.position_of_job(store, where, job_id))

    def telemetry(self) -> dict[str, Any] | None:
        from workbench.telemetry import history as telemetry

        return self.read(telemetry.latest)

    def history(self, seconds: float, bucket_s: float | None = None) -> list[dict[str, Any]]:
        """The stored telemetry of the last `seconds`, averaged into `bucket_s` buckets."""
        from workbench.telemetry import history as telemetry

        since = self.now() - seconds
        return self.read(lambda store: telemetry.history(store, since, bucket_s=bucket_s))

    def process_details(self, pids: list[int]) -> dict[int, dict[str, Any]]:
        """For the GPU process table: {pid: {user, cpu_percent, rss_bytes, started, command}}
        of the local processes among `pids` (CPU % since the previous call for that pid)."""
        import psutil

        cache: dict[int, Any] = self.__dict__.setdefault("_processes", {})
        out: dict[int, dict[str, Any]] = {}
        for pid in pids:
            try:
                process = cache.get(pid) or psutil.Process(pid)
                cache[pid] = process
                with process.oneshot():
                    out[pid] = process_facts(process)
            except (psutil.NoSuchProcess, OSError):
                cache.pop(pid, None)
        for gone in set(cache) - set(pids):
            cache.pop(gone, None)
        return out

    def machine_processes(self, limit: int = 200) -> dict[int, dict[str, Any]]:
        """Every process of the machine (as `process_details` gives them), the `limit` busiest
        by CPU % and their parents up to the root: the Dashboard's whole-machine view."""
        import psutil

        cache: dict[int, Any] = self.__dict__.setdefault("_machine", {})
        seen: dict[int, dict[str, Any]] = {}
        for process in psutil.process_iter():
            process = cache.setdefault(process.pid, process)
            try:
                with process.oneshot():
                    seen[process.pid] = process_facts(process)
            except (psutil.NoSuchProcess, OSError):
                continue
        for gone in set(cache) - set(seen):
            cache.pop(gone, None)
        busiest = sorted(seen, key=lambda pid: seen[pid]["cpu_percent"] or 0.0, reverse=True)
        shown = {pid: seen[pid] for pid in busiest[:limit]}
        for pid in list(shown):  # each one's parents too, so the tree view has its branches
            parent = shown[pid].get("ppid")
            while parent in seen and parent not in shown:
                shown[parent] = seen[parent]
                parent = seen[parent].get("ppid")
        return shown

    def job(self, job_id: int) -> Job | None:
        return self.read(lambda store: store.find(job_id))

    def events(self, job_id: int) -> list[JobEvent]:
        return self.read(lambda store: store.events(job_id))

    def last_metrics(self, job_id: int) -> dict[str, float | None]:
        return self.read(lambda store: store.last_metrics(job_id))

    def log_path(self, job_id: int) -> Path:
        return self.home.run_dir(job_id) / "log"

    def log_piece(self, job_id: int, offset: int | None) -> LogPiece | None:
        """A piece of the job's log from a daemon (TeamSource), or None: the screen reads the
        file at `log_path` itself."""
        return None

    def run_dir(self, job: Job) -> Path | None:
        """The job's run folder, where its recorded usage may be read (None: not readable)."""
        return self.home.run_dir(job.id)

    def down_text(self) -> str:
        """What the Queue's status says while `daemon_running` is false."""
        return "daemon not running: the next action starts it"

    def process_usage(self, pid: int) -> dict[str, float] | None:
        """CPU seconds and resident memory (bytes) of a running job's process tree, or None
        when it is not running here."""
        import psutil

        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        cpu_s, rss = 0.0, 0
        for member in members:
            try:
                times = member.cpu_times()
                cpu_s += times.user + times.system + times.children_user + times.children_system
                rss += member.memory_info().rss
            except psutil.Error:
                continue
        return {"cpu_s": cpu_s, "rss_bytes": float(rss)}

    def daemon_running(self) -> bool:
        from workbench.daemon.link import lock_holder

        pid = lock_holder(self.home)
        return bool(pid and pid > 0)


@dataclass
class FixedSource(Source):
    """Canned data for snapshot tests: no daemon, no clock, nothing changes."""

    fixed_jobs: list[Job] = field(default_factory=list)
    fixed_telemetry: dict[str, Any] | None = None
    fixed_history: list[dict[str, Any]] = field(default_factory=list)
    fixed_events: dict[int, list[JobEvent]] = field(default_factory=dict)
    fixed_logs: dict[int, str] = field(default_factory=dict)
    fixed_now: float = 1_800_000_000.0
    fixed_metrics: dict[int, dict[str, float | None]] = field(default_factory=dict)
    fixed_processes: dict[int, dict[str, Any]] = field(default_factory=dict)
    fixed_usage: dict[int, dict[str, float]] = field(default_factory=dict)
    fixed_idle: dict[int, float] = field(default_factory=dict)
    home: Home = field(default_factory=lambda: Home(Path("/nonexistent")))

    def __post_init__(self) -> None:
        self._store = None
        self._client = None

    def read(self, fn: Callable[[Store], T]) -> T:
        raise LookupError("canned data has no store: give the read it needs a fixed_* field")

    def now(self) -> float:
        return self.fixed_now

    def data_version(self) -> int:
        return 1

    def job_page(self, where: JobFilter, offset: int, limit: int) -> JobPage:
        matching = sorted((j for j in self.fixed_jobs if where.matches(j)), key=lambda j: j.id)
        offset = max(0, min(offset, len(matching) - 1)) if matching else 0
        counts: dict[str, int] = {}
        for job in self.fixed_jobs:
            counts[job.state] = counts.get(job.state, 0) + 1
        page = matching[offset : offset + limit]
        return JobPage(len(matching), offset, page, counts, dict(self.fixed_idle))

    def job_position(self, where: JobFilter, job_id: int) -> int:
        return sum(1 for j in self.fixed_jobs if where.matches(j) and j.id < job_id)

    def telemetry(self) -> dict[str, Any] | None:
        return self.fixed_telemetry

    def history(self, seconds: float, bucket_s: float | None = None) -> list[dict[str, Any]]:
        return list(self.fixed_history)

    def process_details(self, pids: list[int]) -> dict[int, dict[str, Any]]:
        return {pid: self.fixed_processes[pid] for pid in pids if pid in self.fixed_processes}

    def machine_processes(self, limit: int = 200) -> dict[int, dict[str, Any]]:
        return dict(list(self.fixed_processes.items())[:limit])

    def job(self, job_id: int) -> Job | None:
        return next((j for j in self.fixed_jobs if j.id == job_id), None)

    def events(self, job_id: int) -> list[JobEvent]:
        return self.fixed_events.get(job_id, [])

    def last_metrics(self, job_id: int) -> dict[str, float | None]:
        return self.fixed_metrics.get(job_id, {})

    def daemon_running(self) -> bool:
        return True

    def process_usage(self, pid: int) -> dict[str, float] | None:
        return self.fixed_usage.get(pid)
