"""The db layer: the only SQLite SQL, schema migrations, telemetry in its own file."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import pytest

from workbench.db.migrations import MIGRATIONS, SCHEMA_VERSION, statements
from workbench.db.store import JobRequest, Store, StoreError
from workbench.db.telemetry import TELEMETRY_MIGRATIONS, VACUUM_PAGES

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("workbench", "jobs", "screens", "bench")


def _tables() -> set[str]:
    text = " ".join([*MIGRATIONS.values(), *TELEMETRY_MIGRATIONS.values()])
    return set(re.findall(r"CREATE TABLE (\w+)", text))


# A user's own SQLite database read as an ingest source (`workbench ingest app.db --table t`):
# SQL on the user's data, read-only, never on state.db or telemetry.db.
SOURCE_DATABASE_READERS = {Path("jobs/ingest_sources.py")}


def test_no_sqlite_sql_outside_the_db_layer() -> None:
    """SQL on state.db or telemetry.db is written only in workbench/db (DuckDB SQL over the
    lake is elsewhere by design, and mentions no store table as a write target, nor any PRAGMA
    but DuckDB's `add_parquet_key`; the ingest source reader opens only the user's database,
    read-only)."""
    tables = "|".join(sorted(_tables()))
    statement = re.compile(
        rf"\b(INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE|DELETE\s+FROM|CREATE\s+TABLE|DROP\s+TABLE)\s+({tables})\b"
        rf"|\bFROM\s+({tables})\s+(WHERE|ORDER|GROUP|LIMIT)\b|sqlite_master|PRAGMA\s+(?!add_parquet_key\b)\w+",
        re.IGNORECASE,
    )
    offenders = []
    for package in SOURCES:
        for path in (ROOT / package).rglob("*.py"):
            relative = path.relative_to(ROOT)
            if relative.parts[:2] == ("workbench", "db") or relative in SOURCE_DATABASE_READERS:
                continue
            text = path.read_text()
            for number, line in enumerate(text.splitlines(), 1):
                if (
                    statement.search(line)
                    or re.search(r"\bimport sqlite3\b|\.conn\.execute", line)
                    or re.search(r"\bstore\.conn\b", line)
                ):
                    offenders.append(f"{relative}:{number}: {line.strip()}")
    assert offenders == []


def test_the_grep_catches_sql_outside_the_layer(tmp_path: Path) -> None:
    """The pattern above is not vacuous: it flags the statements it is meant to."""
    tables = "|".join(sorted(_tables()))
    statement = re.compile(rf"\b(UPDATE|DELETE\s+FROM)\s+({tables})\b", re.IGNORECASE)
    assert statement.search('conn.execute("UPDATE jobs SET priority=1")')
    assert statement.search("DELETE FROM metrics WHERE job_id=?")
    assert not statement.search("SELECT * FROM read_parquet('x')")


def _request() -> JobRequest:
    return JobRequest("j", "command", {"argv": ["true"]}, "/", {"A": "1"}, argv=["true"])


def _previous_schema_file(path: Path) -> None:
    """A state file as the workbench before queue core v2 wrote it: migrations 1-5, with a
    queued and a finished job, their events, and telemetry in state.db."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN")
    for version in range(1, 6):
        for sql in statements(MIGRATIONS[version]):
            conn.execute(sql)
    conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', '5')")
    for state in ("queued", "succeeded"):
        conn.execute(
            "INSERT INTO jobs(name, kind, state, spec, argv, cwd, env, created_at)"
            " VALUES (?, 'command', ?, '{}', '[\"true\"]', '/', '{\"A\": \"1\"}', ?)",
            (f"old {state}", state, time.time()),
        )
        conn.execute(
            "INSERT INTO job_events(job_id, t, state, reason) VALUES (last_insert_rowid(), ?, ?, 'x')",
            (time.time(), state),
        )
    conn.execute("INSERT INTO telemetry(t_ms, span_s) VALUES (1, 1.0)")
    conn.execute("COMMIT")
    conn.close()


def test_migrates_a_state_file_of_the_previous_schema(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _previous_schema_file(path)
    store = Store.open(path)
    try:
        jobs = store.list_jobs()
        assert [(j.name, j.state) for j in jobs] == [
            ("old queued", "queued"),
            ("old succeeded", "succeeded"),
        ]
        assert jobs[0].env == {"A": "1"} and jobs[0].launch_token is None
        assert store.events(jobs[0].id)[0].event is None  # older events have no event name
        new = store.submit(_request())  # the new columns and the audit table work
        assert [e.action for e in store.audit_log()] == ["submit"]
        assert store.events(new)[0].event == "submit"
        assert store.get_setting("schema_version") == str(SCHEMA_VERSION)
        tables = {
            r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        assert "telemetry" not in tables and "audit" in tables
        indexes = store.conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE state IN ('queued') ORDER BY id"
        ).fetchall()
        assert "jobs_state" in str(indexes)
    finally:
        store.close()


# The scheduling indexes; the usage columns; group heads; the granted MIG instances.
ADDED_BY_THIS_VERSION = (15, 16, 17, 18)


def test_a_state_file_of_the_previous_version_gains_indexes_and_usage_columns(
    tmp_path: Path,
) -> None:
    """A file written by the version before migrations 15 and 16 (every other migration applied,
    an ended job in it) gains the daemon's scheduling indexes when any client opens it (they
    were created only by a daemon at start) and the usage columns, which a settle then fills."""
    path = tmp_path / "state.db"
    previous = sorted(v for v in MIGRATIONS if v not in ADDED_BY_THIS_VERSION)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN")
    for version in previous:
        for sql in statements(MIGRATIONS[version]):
            conn.execute(sql)
    conn.executemany(
        "INSERT INTO meta(key, value) VALUES (?, ?)",
        [("schema_version", str(max(previous))), ("migrations", ",".join(map(str, previous)))],
    )
    conn.execute(
        "INSERT INTO jobs(name, kind, state, spec, argv, cwd, env, created_at, ended_at,"
        " exit_code) VALUES ('old', 'command', 'succeeded', '{}', '[\"true\"]', '/', '{}', 1, 2, 0)"
    )
    # That version's daemon created one of the indexes at start: the migration still applies.
    conn.execute("CREATE INDEX jobs_queue_order ON jobs(state, priority DESC, id)")
    conn.execute("COMMIT")
    conn.close()

    def indexes(store: Store) -> set[str]:
        rows = store.conn.execute("SELECT name FROM sqlite_master WHERE type='index'")
        return {r[0] for r in rows}

    store = Store.open(path)  # a client (no daemon has run)
    try:
        assert {"jobs_queue_order", "jobs_intent", "jobs_group_queue"} <= indexes(store)
        assert store.get_setting("migrations") == ",".join(map(str, sorted(MIGRATIONS)))
        old = store.list_jobs()[0]
        assert (old.cpu_s, old.peak_mem_bytes, old.peak_mem_source) == (None, None, None)
        assert old.granted_devices is None
        new = store.submit(_request())
        from workbench.db.store import Event

        store.transition(new, Event.START, "starting", granted_devices=["MIG-5e1f"])
        assert store.get(new).granted_devices == ["MIG-5e1f"]
        store.transition(new, Event.LAUNCHED, "started", pid=1)
        store.transition(
            new, Event.EXIT_FAILED, "exited with code 1", exit_code=1, cpu_s=0.5,
            cpu_source="cgroup", peak_mem_bytes=1 << 20, peak_mem_source="cgroup",
        )  # fmt: skip
        shown = store.get(new).to_json()
        assert (shown["cpu_s"], shown["peak_mem_bytes"]) == (0.5, 1 << 20)
        assert (shown["cpu_source"], shown["peak_mem_source"]) == ("cgroup", "cgroup")
        store.transition(new, Event.RETRY, "retried by hand")  # a new attempt: not measured
        assert store.get(new).cpu_s is None and store.get(new).peak_mem_source is None
        assert store.get(new).granted_devices is None  # the next attempt gets its own
        plan = " ".join(
            str(r[-1])
            for r in store.conn.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE intent IS NOT NULL ORDER BY id"
            )
        )
        assert "jobs_intent" in plan, plan
        heads = store.conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE state='queued' AND grp='g'"
            " AND executor='local' ORDER BY priority DESC, id LIMIT 128"
        ).fetchall()
        assert "jobs_group_queue" in str(heads), heads  # db.group_heads: one seek per group
    finally:
        store.close()


def test_refuses_a_state_file_of_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store.open(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    applied = conn.execute("SELECT value FROM meta WHERE key='migrations'").fetchone()[0]
    conn.execute(
        "UPDATE meta SET value=? WHERE key='migrations'", (applied + f",{SCHEMA_VERSION + 1}",)
    )
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"newer than this workbench.*upgrade gpu-workbench"):
        Store.open(path)
    assert path.read_bytes() == before


def test_telemetry_samples_do_not_change_the_jobs_data_version(tmp_path: Path) -> None:
    """A reader polling `data_version` of state.db wakes for jobs, not for 1 Hz samples."""
    writer = Store.open(tmp_path / "state.db")
    reader = Store.open(tmp_path / "state.db")
    try:
        version = reader.data_version()
        for tick in range(5):
            writer.telemetry.record(tick * 1000, 1.0, [None] * 9, "{}", time.time())
        assert reader.data_version() == version
        assert len(reader.telemetry.rows_between(0, 10_000)) == 5
        writer.submit(_request())
        assert reader.data_version() != version
    finally:
        writer.close()
        reader.close()


def test_telemetry_file_gives_space_back_when_thinned(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    try:
        telemetry = store.telemetry
        assert telemetry.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        gpus = "[" + ",".join(["[0, 50, 50, 1000000000, 250.0, 60]"] * 8) + "]"
        for tick in range(3000):
            telemetry.record(tick * 1000, 1.0, [1.0] * 8 + [gpus], "{}", time.time())
        telemetry.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = telemetry.conn.execute("PRAGMA page_count").fetchone()[0]
        telemetry.thin(3_000_000, 60.0, lambda rows: [], 3_000_000)
        telemetry.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        after = telemetry.conn.execute("PRAGMA page_count").fetchone()[0]
        assert after <= pages - min(VACUUM_PAGES, pages // 2)  # a whole batch given back
    finally:
        store.close()


def test_damaged_telemetry_is_set_aside_and_restarted(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    store.close()
    (tmp_path / "telemetry.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 8192)
    store = Store.open(tmp_path / "state.db")
    try:
        assert store.telemetry.latest() is None
        assert list(tmp_path.glob("telemetry.db.broken-*"))
    finally:
        store.close()


def test_job_json_pages_write_what_to_json_writes(tmp_path: Path) -> None:
    """`ls --json` writes jobs from their rows (SQLite's json_object) without parsing specs or
    building Job objects; the text is compact ASCII JSON that reads back as exactly
    `job.to_json(secret_words=...)` (every float equal) for every kind of job: bytes that are
    not UTF-8, a name that starts with a quote, non-ASCII text, quotes, backslashes and control
    characters, a spec's environment with secrets (masked), a non-finite number in a spec,
    dependencies, a granted MIG instance, a settled job with its usage (floats that need 17
    digits, and large and small ones), and a column holding infinity."""
    from workbench.db.job_pages import job_json_pages
    from workbench.db.store import Event, Resources
    from workbench.jsonout import dumps

    store = Store.open(tmp_path / "state.db")
    try:
        odd = b"caf\xe9".decode("utf-8", "surrogateescape")
        first = store.submit(_request())
        requests = [
            JobRequest(odd, "command", {"argv": [odd]}, f"/tmp/{odd}", {}, argv=[odd, "é"]),
            JobRequest('"quoted" ü 🚀', "command", {"argv": ["x"]}, "/", {}, argv=["x"]),
            JobRequest(
                "spec env",
                "command",
                {"argv": ["x"], "env": {"API_TOKEN": "s3cret", "MY_WORD": "w", "A": "1"}},
                "/",
                {"API_TOKEN": "s3cret"},
                argv=["x"],
            ),
            JobRequest("nan", "train", {"lr": float("nan"), "epochs": 3}, "/", {}),
            JobRequest(
                "deps",
                "command",
                {"argv": ["x"]},
                "/",
                {},
                argv=["x"],
                after=((first, "ok"), (first + 1, "any")),
                resources=Resources(gpus=0.5, gpu_mem=2 << 30, cpus=1.5, mem=1 << 30),
                priority=-3,
                time_limit=90.0,
                paused=True,
            ),
        ]
        requests.append(
            JobRequest(
                'plain "q" \\ \t\x01',
                "command",
                {"argv": ["x", "a\\b"]},
                "/",
                {},
                argv=["x", "a\\b"],
                resources=Resources(gpus=0.1, cpus=1 / 3, mem=5 << 30),
                time_limit=1e20,
            )
        )
        ids = [first, *store.submit_many(requests)]
        store.update(ids[-1], progress=2.5e-7, started_at=1765071012.3456789, mean_gpu_util=0.1)
        settled = ids[1]
        store.transition(settled, Event.START, "starting")
        store.transition(
            settled, Event.LAUNCHED, "started", pid=42, granted_gpus=[0], granted_devices=["MIG-a"]
        )
        store.set_progress(settled, 0.25, "step 1 of 4")
        store.transition(
            settled, Event.EXIT_FAILED, "exited with code 3", exit_code=3, cpu_s=1.25,
            cpu_source="rusage", peak_mem_bytes=52 << 20, peak_mem_source="cgroup",
        )  # fmt: skip
        store.update(ids[2], progress=float("inf"))
        words = ("WORD",)
        expected = [dumps(j.to_json(secret_words=words)) for j in store.list_jobs(light="no-env")]
        pages = list(job_json_pages(store, secret_words=words, page=2))
        assert [len(p) for p in pages] == [2, 2, 2, 1]
        texts = [text for page in pages for text in page]
        assert [json.loads(t) for t in texts] == [json.loads(t) for t in expected]
        assert all(t.isascii() and ", " not in t.replace('", "', "") for t in texts)
        others = [j.id for j in store.list_jobs(light=True) if j.state != "queued"]
        assert others and len(others) < len(expected)
        merged = job_json_pages(store, ["queued"], words, page=2, also=others)
        assert [t for p in merged for t in p] == texts  # the others merged in by id
        assert "s3cret" not in "".join(expected) and '"MY_WORD": "***"' in expected[3]
        assert json.loads(expected[4])["spec"]["lr"] is None  # NaN is not JSON
        queued = [t for p in job_json_pages(store, ["queued"], words) for t in p]
        assert queued == [texts[0], *texts[2:5], texts[6]]
        # Several states: each read by its own index range, merged by id, paged as asked.
        waiting = list(job_json_pages(store, ["paused", "queued", "paused"], words, page=3))
        assert waiting == [[texts[0], *texts[2:4]], [*texts[4:7]]]
    finally:
        store.close()
