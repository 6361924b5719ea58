"""The usage ledger, a collaborator of the daemon: keeps the ledger table up to date from the
job events (workbench.db.usage.sync) and gives the scheduler each account's decayed GPU-hours
(fair share: workbench.queue.scheduler.effective_weights)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from workbench.config import Config
from workbench.db import usage as db
from workbench.db.store import Store
from workbench.queue.accounts import account_of
from workbench.queue.usage import decayed_hours

REFRESH_S = 30.0  # decayed usage is read again at most this often (it moves slowly)


class UsageLedger:
    """`sync()` reads new job events into the ledger (call it each telemetry tick);
    `decayed()` is {account: decayed GPU-hours} as `config()` says accounts are named and
    how fast usage decays, cached for `REFRESH_S` unless the ledger changed. `card_bytes()`
    gives one GPU's memory (for grants without `gpu_mem`); `clock` is unix time."""

    def __init__(
        self,
        store: Store,
        config: Callable[[], Config],
        card_bytes: Callable[[], int],
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.config = config
        self.card_bytes = card_bytes
        self.clock = clock
        self._cache: dict[str, float] = {}
        self._cached_at = -1e18

    def sync(self) -> int:
        """Bring the ledger up to the newest job event; the events read."""
        read = 0
        while True:
            got = db.sync(self.store, self.card_bytes())
            read += got
            if got < 5000:
                break
        if read:
            self._cached_at = -1e18
        return read

    def decayed(self) -> Mapping[str, float]:
        """{account: GPU-hours, each hour weighted by 2 ** (-age / half_life)}: only the
        intervals that ended within 20 half-lives count (the rest weigh under one millionth)."""
        now = self.clock()
        if now - self._cached_at < REFRESH_S:
            return self._cache
        shares = self.config().shares
        half_life = shares.half_life_s
        rows = db.intervals(self.store, since=now - 20 * half_life)
        by = shares.by
        self._cache = decayed_hours(rows, now, half_life, lambda r: account_of(by, r.group, r.uid))
        self._cached_at = now
        return self._cache
