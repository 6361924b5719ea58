"""Zero-code capture: `python -m workbench.capture --path P ... -- CMD ARG...` runs the command
and turns the metric files it writes into the job's records (the same typed records as
workbench.track's, in the same records file), live, on the job's side and as the job's user.

Which files belong to the job (the rule): only files under the paths the job declared (spec key
`capture = [...]`, or `workbench submit --capture PATH`, relative to the job's directory; a file
or a folder searched recursively), whose name is one of the known formats, and which were
modified after the job started (so an earlier run's files in the same folder are never read):
- TensorBoard event files `events.out.tfevents.*` (scalars; read with the `tensorboard`
  package's event file loader, the `capture` extra),
- Lightning CSVLogger `metrics.csv` (columns `step`, `epoch` and one per metric; blank cells are
  metrics not logged at that row),
- Hugging Face Trainer `trainer_state.json` (its `log_history`; the copies in checkpoint folders
  repeat the same history, so an entry is recorded once per (step, metric names)).
Files are looked at every POLL_S seconds while the command runs and once more after it exits.

This process leads nothing: the command is its child in the same process group, so the
workbench's signals (cancel, time limit, preemption: sent to the group) reach the command
directly; this process ignores SIGTERM, SIGINT and SIGHUP, waits for the command, reads the files
a last time, and exits with the command's status (dying of the same signal when it was killed).
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workbench import track

POLL_S = 0.5
TENSORBOARD_PREFIX = "events.out.tfevents."
LIGHTNING_FILE = "metrics.csv"
HF_FILE = "trainer_state.json"


def _numbers(row: dict[str, Any], skip: set[str]) -> dict[str, float]:
    values: dict[str, float] = {}
    for name, raw in row.items():
        if name in skip or raw is None or raw == "":
            continue
        try:
            values[str(name)] = float(raw)
        except (TypeError, ValueError):
            continue
    return values


class _TensorBoard:
    """Follows one event file: the loader keeps its place, each `read` yields new scalars."""

    def __init__(self, path: Path):
        from tensorboard.backend.event_processing.event_file_loader import (
            LegacyEventFileLoader,
        )

        self.loader = LegacyEventFileLoader(str(path))

    def read(self) -> Iterator[tuple[int, float | None, float, dict[str, float]]]:
        for event in self.loader.Load():
            if not event.HasField("summary"):
                continue
            values: dict[str, float] = {}
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    values[value.tag] = float(value.simple_value)
                elif value.HasField("tensor") and len(value.tensor.float_val) == 1:
                    values[value.tag] = float(value.tensor.float_val[0])
                elif value.HasField("tensor") and len(value.tensor.double_val) == 1:
                    values[value.tag] = float(value.tensor.double_val[0])
            if values:
                yield int(event.step), None, float(event.wall_time), values


class _LightningCsv:
    """Follows a CSVLogger metrics.csv (Lightning rewrites it whole when new columns appear,
    so rows are counted, not bytes)."""

    def __init__(self, path: Path):
        self.path = path
        self.rows_done = 0

    def read(self) -> Iterator[tuple[int, float | None, float, dict[str, float]]]:
        try:
            with open(self.path, newline="") as handle:
                rows = list(csv.DictReader(handle))
        except (OSError, csv.Error):
            return
        if rows and not self.path.read_text().endswith("\n"):
            rows = rows[:-1]  # a row being written
        for number, row in enumerate(rows[self.rows_done :], self.rows_done):
            values = _numbers(row, {"step", "epoch"})
            step = _numbers(row, set()).get("step", float(number))
            epoch = _numbers(row, set()).get("epoch")
            if values:
                yield int(step), epoch, time.time(), values
        self.rows_done = len(rows)


class _TrainerState:
    """Follows a Hugging Face trainer_state.json (rewritten whole at each save)."""

    seen: set[tuple[int, tuple[str, ...]]] = set()  # shared: checkpoint copies repeat entries

    def __init__(self, path: Path):
        self.path = path
        self.stamp: tuple[int, int] | None = None

    def read(self) -> Iterator[tuple[int, float | None, float, dict[str, float]]]:
        try:
            stat = self.path.stat()
            if (stat.st_mtime_ns, stat.st_size) == self.stamp:
                return
            history = json.loads(self.path.read_text()).get("log_history") or []
            self.stamp = (stat.st_mtime_ns, stat.st_size)
        except (OSError, ValueError, AttributeError):
            return  # being rewritten: read on the next look
        for entry in history:
            if not isinstance(entry, dict):
                continue
            values = _numbers(entry, {"step", "epoch"})
            step = int(entry.get("step", 0))
            key = (step, tuple(sorted(values)))
            if values and key not in self.seen:
                self.seen.add(key)
                epoch = entry.get("epoch")
                yield (
                    step,
                    float(epoch) if isinstance(epoch, int | float) else None,
                    time.time(),
                    values,
                )


def reader_for(path: Path) -> Any:
    """The reader of a file of a known format, else None."""
    if path.name.startswith(TENSORBOARD_PREFIX):
        return _TensorBoard(path)
    if path.name == LIGHTNING_FILE:
        return _LightningCsv(path)
    if path.name == HF_FILE:
        return _TrainerState(path)
    return None


class Capture:
    """The files of one job under its declared `paths`, modified at or after `started` (epoch s)."""

    def __init__(self, paths: list[Path], started: float):
        self.paths = paths
        self.started = started
        self.readers: dict[Path, Any] = {}
        self.refused: set[Path] = set()

    def _candidates(self) -> Iterator[Path]:
        for root in self.paths:
            if root.is_file():
                yield root
            elif root.is_dir():
                for folder, _, names in os.walk(root):
                    for name in names:
                        if name.startswith(TENSORBOARD_PREFIX) or name in (LIGHTNING_FILE, HF_FILE):
                            yield Path(folder) / name

    def poll(self) -> int:
        """Read what is new in every file of the job; returns how many points were recorded."""
        points = 0
        for path in self._candidates():
            if path in self.refused:
                continue
            reader = self.readers.get(path)
            if reader is None:
                try:
                    if path.stat().st_mtime < self.started - 1.0:
                        continue  # written before this job started: another run's
                    reader = reader_for(path)
                except ImportError:
                    track._warn(
                        f"cannot read {path}: install the tensorboard package"
                        " (pip install 'gpu-workbench[capture]')"
                    )
                    reader = None
                except OSError:
                    continue
                if reader is None:
                    self.refused.add(path)
                    continue
                self.readers[path] = reader
            try:
                for step, epoch, at, values in reader.read():
                    _record(step, epoch, at, values)
                    points += 1
            except Exception as error:  # a file we cannot parse never stops the job
                track._warn(f"cannot read {path}: {error}")
                self.refused.add(path)
        return points


def _record(step: int, epoch: float | None, at: float, values: dict[str, float]) -> None:
    clean: dict[str, float | str] = {
        k: (v if math.isfinite(v) else track._json_value(v)) for k, v in values.items()
    }
    if epoch is not None and math.isfinite(epoch):
        clean["epoch"] = epoch
    track._tracker().emit({"kind": "metrics", "step": step, "t": at, "values": clean})


def main(argv: list[str]) -> int:
    paths: list[Path] = []
    while argv and argv[0] == "--path":
        paths.append(Path(argv[1]).resolve())
        argv = argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m workbench.capture --path P ... -- CMD ARG...", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    started = time.time()
    try:
        child = subprocess.Popen(
            argv,
            restore_signals=True,
            preexec_fn=lambda: [
                signal.signal(s, signal.SIG_DFL)
                for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
            ],
        )
    except OSError as error:
        print(f"workbench: cannot run {argv[0]}: {error}", file=sys.stderr, flush=True)
        return 127
    capture = Capture(paths, started)
    while True:
        try:
            code = child.wait(timeout=POLL_S)
            break
        except subprocess.TimeoutExpired:
            capture.poll()
    capture.poll()
    track.flush()
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
