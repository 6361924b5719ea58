"""Files a job writes into its run folder while it runs are read by others at the same time:
`serve.json` by a client waiting for the server's address, reports by the TUI. A reader must
see no file or the whole file, never the empty or half-written one a plain `write_text` shows
between its truncate and its last write (a CI run read `serve.json` as '' and failed)."""

from __future__ import annotations

import json
import signal
import threading

import pytest

from jobs.context import JobContext
from workbench.db.store import JobRequest, Store
from workbench.paths import Home


@pytest.fixture
def context(home: Home) -> JobContext:
    store = Store.open(home.state_db)
    (job_id,) = store.submit_many(
        [JobRequest("j", "command", {"argv": ["true"]}, "/", {}, argv=["true"])]
    )
    previous = signal.getsignal(signal.SIGTERM)
    try:
        return JobContext(home, store, store.get(job_id))
    finally:
        signal.signal(signal.SIGTERM, previous)  # the context takes SIGTERM: give it back


@pytest.mark.parametrize("write", ["write_json", "write_text"])
def test_a_reader_polling_a_run_file_never_sees_part_of_it(context: JobContext, write: str) -> None:
    """A writer rewrites a 2 MB file 40 times while a reader polls it: every read is either
    'no file yet' or a whole version."""
    name = "serve.json" if write == "write_json" else "report.md"
    path = context.run_dir / name
    versions = [{"url": f"http://127.0.0.1:{8000 + i}", "pad": "x" * 2_000_000} for i in range(40)]
    partial: list[int] = []
    reads = 0
    done = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not done.is_set():
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            reads += 1
            try:
                value = json.loads(text)
            except ValueError:
                partial.append(len(text))
                continue
            if value not in versions:
                partial.append(len(text))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for value in versions:
            if write == "write_json":
                context.write_json(name, value)
            else:
                context.write_text(name, json.dumps(value))
    finally:
        done.set()
        thread.join()
    assert reads > 0
    assert partial == [], f"{len(partial)} of {reads} reads saw part of the file: {partial[:5]}"
    assert sorted(p.name for p in context.run_dir.iterdir()) == [name]  # no temporary left


def test_run_files_written_whole_keep_the_usual_permissions(context: JobContext) -> None:
    """Readable by the owner's other tools as before (0644 under umask 022), not only 0600."""
    path = context.write_text("model_card.md", "# card\n")
    assert path.read_text() == "# card\n"
    assert path.stat().st_mode & 0o777 == 0o644 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
