"""Where the screens get their data: the live store (one SQLite connection shared by the
worker threads), or fixed data and a fixed clock for snapshot tests."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.db.store import Job, JobEvent, Store
from workbench.paths import Home


@dataclass
class Snapshot:
    """What the Queue and Dashboard need in one read."""

    version: int
    jobs: list[Job]
    telemetry: dict[str, Any] | None
    history: list[dict[str, Any]]


class Source:
    """The live source: reads the store of `home`; actions go through a Client.

    The store gives each worker thread its own SQLite connection; `data_version` readings
    come from one connection of their own, so they are comparable from one poll to the next."""

    def __init__(self, home: Home):
        self.home = home
        self._lock = threading.Lock()
        self._store: Store | None = None
        self._client: Any = None

    def now(self) -> float:
        return time.time()

    def store(self) -> Store:
        with self._lock:
            if self._store is None:
                self._store = Store.open(self.home.state_db)
            return self._store

    def client(self) -> Any:
        """The client for actions (starts the daemon when needed)."""
        if self._client is None:
            from workbench.daemon.client import Client

            self._client = Client(self.home)
        return self._client

    def data_version(self) -> int:
        return self.store().data_version()

    def jobs(self) -> list[Job]:
        store = self.store()
        active = store.active_jobs(light=True)  # the captured environments are not shown
        ended = store.list_jobs(states=["succeeded", "failed", "cancelled"], limit=200)
        return sorted([*active, *ended], key=lambda j: j.id)

    def telemetry(self) -> dict[str, Any] | None:
        from workbench.telemetry import sampler as telemetry

        return telemetry.latest(self.store())

    def history(self, seconds: float) -> list[dict[str, Any]]:
        from workbench.telemetry import sampler as telemetry

        return telemetry.history(self.store(), self.now() - seconds)

    def job(self, job_id: int) -> Job | None:
        return self.store().find(job_id)

    def events(self, job_id: int) -> list[JobEvent]:
        return self.store().events(job_id)

    def last_metrics(self, job_id: int) -> dict[str, float | None]:
        return self.store().last_metrics(job_id)

    def log_path(self, job_id: int) -> Path:
        return self.home.run_dir(job_id) / "log"

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
    home: Home = field(default_factory=lambda: Home(Path("/nonexistent")))

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._store = None
        self._client = None

    def now(self) -> float:
        return self.fixed_now

    def data_version(self) -> int:
        return 1

    def jobs(self) -> list[Job]:
        return list(self.fixed_jobs)

    def telemetry(self) -> dict[str, Any] | None:
        return self.fixed_telemetry

    def history(self, seconds: float) -> list[dict[str, Any]]:
        return list(self.fixed_history)

    def job(self, job_id: int) -> Job | None:
        return next((j for j in self.fixed_jobs if j.id == job_id), None)

    def events(self, job_id: int) -> list[JobEvent]:
        return self.fixed_events.get(job_id, [])

    def last_metrics(self, job_id: int) -> dict[str, float | None]:
        return self.fixed_metrics.get(job_id, {})

    def daemon_running(self) -> bool:
        return True
