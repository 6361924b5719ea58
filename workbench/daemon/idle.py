"""Idle GPUs, a collaborator of the daemon: a running job whose GPUs all sit at about 0%
utilisation (`[shares] idle_percent`, NVML's utilization.gpu) for `[shares] idle_after` is
flagged (workbench.db.idle: `ls`, `show`, the TUI), its owner is told in its job log, and the
scheduler sees it as idle (`Holding.idle`: reclaimed, with `[shares] reclaim_idle`, when others
wait and it is over its share)."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Mapping

from workbench import safefs
from workbench.config import ShareConfig
from workbench.db import idle as db
from workbench.db.store import Store
from workbench.paths import Home
from workbench.units import format_duration


class IdleWatch:
    """Watches running jobs' GPU utilisation, one telemetry tick at a time (`observe`)."""

    def __init__(self, store: Store, home: Home, log: Callable[[str], None]):
        self.store = store
        self.home = home
        self.log = log
        self.since: dict[int, float] = {}  # job -> start of its current idle stretch (unix s)
        self.flagged: set[int] = set()
        db.clear(store, db.idle_since(store))  # a new daemon measures afresh

    def observe(
        self,
        shares: ShareConfig,
        now: float,
        util: Mapping[int, int | None],
        grants: Mapping[int, tuple[int, ...]],
    ) -> bool:
        """One tick: `util` is each GPU's utilisation in % (None: not reported), `grants` the
        GPUs of each running job. A job is idle on a tick when every GPU it was granted reports
        at most `idle_percent`; unknown utilisation is never idle. True when a job was flagged
        or cleared (a scheduling pass may decide otherwise now)."""
        changed = False
        for job_id, gpus in grants.items():
            values = [util.get(i) for i in gpus]
            idle = bool(gpus) and all(v is not None and v <= shares.idle_percent for v in values)
            if not idle:
                self.since.pop(job_id, None)
                if job_id in self.flagged:
                    self.flagged.discard(job_id)
                    db.clear(self.store, [job_id])
                    changed = True
                continue
            since = self.since.setdefault(job_id, now)
            if job_id not in self.flagged and now - since >= shares.idle_after_s:
                self.flagged.add(job_id)
                db.flag(self.store, job_id, since, gpus)
                self._tell(job_id, gpus, now - since, shares)
                changed = True
        gone = [j for j in self.since if j not in grants]
        for job_id in gone:
            self.since.pop(job_id, None)
        ended = [j for j in self.flagged if j not in grants]
        if ended:
            self.flagged.difference_update(ended)
            db.clear(self.store, ended)
            changed = True
        return changed

    def _tell(self, job_id: int, gpus: tuple[int, ...], idle_s: float, shares: ShareConfig) -> None:
        """A line in the job's log saying its GPUs sit idle: appended, never through a symbolic
        link, and only to a regular file with one link (not a FIFO, device or planted hard
        link)."""
        which = f"GPU {gpus[0]}" if len(gpus) == 1 else f"GPUs {', '.join(map(str, gpus))}"
        then = (
            "it may be preempted while others wait and it is over its share"
            if shares.reclaim_idle
            else "others may be waiting for it"
        )
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        line = (
            f"\n[workbench] {stamp}: {which} at about 0% utilisation for"
            f" {format_duration(idle_s)}; {then}\n"
        )
        try:
            fd = safefs.open_file(
                self.home.run_dir(job_id) / "log", os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK
            )
        except OSError as error:
            self.log(f"job {job_id}: idle note not written to its log ({error})")
            return
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                # A FIFO, a device or a hard link planted as the log: never written through.
                raise OSError(errno.EINVAL, "not a plain file of its own")
            os.write(fd, line.encode())
        except OSError as error:
            self.log(f"job {job_id}: idle note not written to its log ({error})")
        finally:
            os.close(fd)

    def is_idle(self, job_id: int) -> bool:
        """Whether the job is flagged idle now."""
        return job_id in self.flagged
