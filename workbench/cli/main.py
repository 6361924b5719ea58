"""`workbench`: the TUI with no arguments, `--batch PIPELINE.toml`, and the queue commands.

Exit codes: 0 success, 1 a job or stage failed, 2 bad usage or a bad spec, 3 the daemon could
not be reached or started."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from workbench import __version__
from workbench.daemon.client import DaemonUnavailable
from workbench.db.connection import translate
from workbench.db.idle import idle_since
from workbench.db.repro import repro_of
from workbench.db.store import (
    ACTIVE,
    BLOCKED,
    ENDED,
    PAUSED,
    QUEUED,
    RUNNING,
    SETTLED,
    STARTING,
    SUCCEEDED,
    Job,
    JobError,
    JobState,
    NoSuchJob,
    NotWhereItRuns,
    Store,
    StoreError,
)
from workbench.jsonout import dumps
from workbench.paths import Home, make_files_private
from workbench.present import (
    LS_HEADERS,
    STATE_STYLES,
    column_widths,
    display_text,
    idle_note,
    job_details,
    job_json,
    job_row,
    recorded_usage,
    repro_lines,
    secret_words,
    state_counts_line,
    table_line,
    use_colour,
)
from workbench.queue import argtypes as checked
from workbench.queue import submission
from workbench.queue.spec import SpecError
from workbench.safetext import fallback_streams
from workbench.trust import UntrustedHome, check_home
from workbench.units import format_duration

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DAEMON = 0, 1, 2, 3
EXIT_NOT_PERMITTED = 4  # team mode: the rights refuse it (README: Team mode)
TEAM_COMMANDS = frozenset(
    {"submit", "ls", "show", "logs", "cancel", "pause", "resume", "retry", "rm", "priority",
     "wait", "audit", "credentials"}
)  # fmt: skip
DEFAULT_PRUNE_AGE_S = 30 * 86400.0

# Modules that add subcommands: each has `register(subparsers)`; handlers import what they need.
EXTENSIONS: list[str] = [
    "workbench.cli.data",
    "workbench.cli.tracking",
    "workbench.cli.registry",
    "workbench.cli.compare",
    "workbench.cli.completion",
    "workbench.cli.credentials",
    "workbench.cli.share",
]

Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """Bad arguments discovered after parsing (exit code 2)."""


def _client(start_daemon: bool = True) -> Any:
    from workbench.daemon.client import Client

    return Client(start_daemon=start_daemon)


def _print_json(value: Any) -> None:
    print(dumps(value))


def _console() -> Any:
    from rich.console import Console

    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "160"))
    return Console(highlight=False, soft_wrap=False, width=width)


# ---- submit -------------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    from workbench.daemon.executors.slurm import bind_executor

    if args.bulk:
        return _submit_bulk(args)
    request, where = submission.request_from_args(args, dict(os.environ))
    (request,) = bind_executor([request], args.executor, Home.current(), [where])
    client = _client()
    job_id = client.submit(request)
    if args.json:
        _print_json(job_json(client.store.get(job_id)))
    else:
        print(job_id)
    if args.wait:
        return _wait_exit(client.wait([job_id]), [job_id], quiet=args.json)
    return EXIT_OK


MAX_BULK_BYTES = 16 << 20  # a --bulk input past this is refused unread (10,000 lines: ~1 MB)


def _submit_bulk(args: argparse.Namespace) -> int:
    """`submit --bulk FILE|-`: every line's job in one transaction (all or none); prints the ids,
    one per line (`--json`: the jobs as a list)."""
    from workbench.daemon.executors.slurm import bind_executor

    source = "stdin" if args.bulk == "-" else args.bulk
    try:
        if args.bulk == "-":
            data = sys.stdin.buffer.read(MAX_BULK_BYTES + 1)
        else:
            with open(args.bulk, "rb") as handle:
                data = handle.read(MAX_BULK_BYTES + 1)
        if len(data) > MAX_BULK_BYTES:  # each line is split as a shell would, some 1 MB/s
            raise SpecError(
                f"--bulk {source}: over {MAX_BULK_BYTES // (1 << 20)} MiB of commands;"
                " split it into several submits"
            )
        text = data.decode()
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"--bulk {source}: cannot read it ({error})") from None
    requests = submission.bulk_requests(args, dict(os.environ), text, source)
    requests = bind_executor(requests, args.executor, Home.current(), [source] * len(requests))
    client = _client()
    ids = client.submit_many(requests)
    if args.json:
        _print_json([job_json(client.store.get(i)) for i in ids])
    else:
        sys.stdout.write("".join(f"{i}\n" for i in ids))
    if args.wait:
        return _wait_exit(client.wait(ids), ids, quiet=args.json)
    return EXIT_OK


def print_job_json(job_id: int) -> None:
    """One job as `submit --json` prints it."""
    _print_json(job_json(_client(start_daemon=False).store.get(job_id)))


def wait_submitted(job_id: int, quiet: bool) -> int:
    """`submit --wait` after the daemon took the submission (`workbench.cli.entry`): wait for
    the job; exit 0 iff it succeeded."""
    return _wait_exit(_client().wait([job_id]), [job_id], quiet=quiet)


# ---- listing ------------------------------------------------------------------------------


def _age(job: Job, now: float) -> str:
    return format_duration(now - job.created_at)


WAITING_SHOWN = 50  # waiting jobs `ls` lists by default (oldest first); the rest are counted
WAITING = (QUEUED, PAUSED, BLOCKED)  # with no process yet: paused here means held


def _states_arg(values: list[str] | None) -> list[JobState] | None:
    if not values:
        return None
    states = []
    for value in values:
        for part in value.split(","):
            try:
                states.append(JobState(part.strip()))
            except ValueError:
                known = ", ".join(s.value for s in JobState)
                raise UsageError(f"--state: unknown state {part!r} (one of {known})") from None
    return states


def _write(line: str) -> None:
    """One line of output; its cells were made printable by `display_text` already."""
    sys.stdout.write(line + "\n")


def _daemon_running() -> bool:
    """Whether a daemon holds this home's lock (True when that cannot be told)."""
    from workbench.daemon.link import lock_holder

    try:
        return lock_holder(Home.current()) is not None
    except OSError:
        return True


def cmd_ls(args: argparse.Namespace) -> int:
    """Active jobs and the latest ended ones, grouped counts on top (as `pueue status` does);
    `--all` streams every job a page at a time. Environments are never read. `--json` lists every
    active job and the latest ended ones (scripts read the whole queue), a page at a time."""
    from workbench.db.job_pages import job_json_pages

    client = _client(start_daemon=False)
    store = client.store
    states = _states_arg(args.state)
    if args.json and not (args.all or states):
        recent = [j.id for j in store.list_jobs(states=ENDED, limit=args.recent, light=True)]
        return _ls_json(job_json_pages(store, ACTIVE, secret_words(), also=recent))
    if args.all or states:
        if args.json:
            return _ls_json(job_json_pages(store, states, secret_words()))
        return _ls_stream(store, store.iter_jobs(True, states=states), store.draining)
    counts = store.counts_by_state()
    jobs = [
        *store.list_jobs(states=ENDED, limit=args.recent, light=True),
        # Jobs with processes are all listed; those still waiting (queued, held, blocked) from
        # the oldest, up to WAITING_SHOWN: at 20,000 queued a full list helps nobody.
        *store.list_jobs(states=[STARTING, RUNNING], light=True),
        *store.list_jobs(states=[PAUSED], started=True, light=True),
        *store.list_jobs(
            states=WAITING, started=False, limit=WAITING_SHOWN, oldest_first=True, light=True
        ),
    ]
    jobs.sort(key=lambda j: j.id)
    notes = []
    hidden_waiting = store.count_jobs(WAITING, started=False) - WAITING_SHOWN
    if hidden_waiting > 0:
        notes.append(
            f"... and {hidden_waiting:,} more waiting (ls --state queued|paused|blocked,"
            " or ls --all)"
        )
    hidden_ended = sum(counts.get(s, 0) for s in ENDED) - args.recent
    if hidden_ended > 0:
        notes.append(
            f"... and {hidden_ended:,} older ended jobs (ls --all; workbench prune removes them)"
        )
    if store.draining:
        notes.append("drain mode: nothing new starts (workbench daemon undrain)")
    if counts.get(QUEUED) and not _daemon_running():  # a warning: stdout stays the table
        print(
            "workbench: no daemon is running: queued jobs wait until one starts"
            " (workbench daemon start)",
            file=sys.stderr,
        )
    colour = use_colour(sys.stdout)
    if counts:
        _write("jobs: " + state_counts_line(counts))
    if jobs:
        now = time.time()
        idle = idle_since(store)
        rows = [job_row(j, now, idle.get(j.id, (None,))[0]) for j in jobs]
        widths = column_widths(LS_HEADERS, rows)
        _write(table_line(LS_HEADERS, widths))
        for row in rows:
            _write(table_line(row, widths, colour_state=3 if colour else None))
    else:
        _write("no jobs")
    for note in notes:
        _write(note)
    return EXIT_OK


def _ls_json(pages: Iterable[list[str]]) -> int:
    """A JSON array of the jobs' objects (`Job.to_json`), written a page at a time as the
    pages are read: memory stays flat and the cost is linear in the jobs printed."""
    out = sys.stdout
    out.write("[")
    first = True
    for page in pages:
        out.write(("" if first else ",\n") + ",\n".join(page))
        first = False
    out.write("]\n")
    return EXIT_OK


def _ls_stream(store: Store, jobs: Iterable[Job], draining: bool) -> int:
    """Every job given as table rows, written as they are read (memory stays flat at any
    queue length)."""
    out = sys.stdout
    now = time.time()
    colour = use_colour(out)
    widths: list[int] | None = None
    batch: list[list[str]] = []
    count = 0

    def flush() -> None:
        nonlocal widths
        if widths is None:
            widths = column_widths(LS_HEADERS, batch)
            _write(table_line(LS_HEADERS, widths))
        for row in batch:
            _write(table_line(row, widths, colour_state=3 if colour else None))
        batch.clear()

    idle = idle_since(store)
    for job in jobs:
        batch.append(job_row(job, now, idle.get(job.id, (None,))[0]))
        count += 1
        if len(batch) >= 1000:
            flush()
    if batch:
        flush()
    if not count:
        _write("no jobs")
    if draining:
        _write("drain mode: nothing new starts (workbench daemon undrain)")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    client = _client(start_daemon=False)
    job = client.store.get(args.id)
    events = client.store.events(job.id)
    metrics = client.store.last_metrics(job.id)
    audit = client.store.audit_log(job_id=job.id)
    run_dir = client.home.run_dir(job.id)
    if args.json:
        out = job_json(job, with_env=args.env)
        out["events"] = [
            {"t": e.t, "state": e.state, "reason": e.reason, "event": e.event} for e in events
        ]
        out["audit"] = [a.to_json() for a in audit]
        out["metrics"] = metrics
        out.update(recorded_usage(job, run_dir))  # cpu_s, peak_mem_bytes (None until it ends)
        idle = idle_since(client.store).get(job.id)
        out["idle_since"] = idle[0] if idle else None  # its GPUs at ~0% since (unix s)
        out["paths"] = {"run_dir": str(run_dir), "log": str(run_dir / "log")}
        out["repro"] = repro_of(client.store, job.id)
        _print_json(out)
        return EXIT_OK
    console = _console()
    style = STATE_STYLES.get(job.state, "")
    from rich.markup import escape

    name = escape(display_text(job.name))  # a name is the user's text, never markup
    console.print(f"[bold]job {job.id}[/] {name}  [{style}]{job.state}[/]  ({job.kind})")
    idle = idle_since(client.store).get(job.id)
    idle_lines = (
        [("idle", f"GPU {', '.join(map(str, idle[1]))}: {idle_note(idle[0], time.time())}")]
        if idle
        else []
    )
    for label, value in [
        *idle_lines,
        *job_details(job, metrics, run_dir),
        *repro_lines(repro_of(client.store, job.id)),
    ]:
        console.print(hanging(f"  {label + ':':<11}", display_text(value), console.width))
    console.print(hanging("  run dir:   ", str(run_dir), console.width))
    console.print("  history:")
    for event in events:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.t))
        reason = f"  {display_text(event.reason)}" if event.reason else ""
        console.print(hanging(f"    {stamp}  ", f"{event.state:<10}{reason}", console.width))
    if audit:
        console.print("  audit:")
        for entry in audit:
            console.print(f"    {_audit_line(entry)}", markup=False)
    return EXIT_OK


def _audit_line(entry: Any) -> str:
    import pwd

    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.t))
    try:
        who = pwd.getpwuid(entry.uid).pw_name
    except KeyError:
        who = str(entry.uid)
    job = f"job {entry.job_id}" if entry.job_id is not None else "-"
    detail = f"  ({entry.detail})" if entry.detail else ""
    return f"{stamp}  {who:<10} {entry.action:<9} {job}{detail}"


def cmd_audit(args: argparse.Namespace) -> int:
    """Who (uid) asked what of which job, when: oldest first, the last N with --limit."""
    client = _client(start_daemon=False)
    entries = client.store.audit_log(job_id=args.job, limit=args.limit)
    if args.json:
        _print_json([e.to_json() for e in entries])
        return EXIT_OK
    for entry in entries:
        _write(_audit_line(entry))
    if not entries:
        _write("no audit entries")
    return EXIT_OK


def cmd_usage(args: argparse.Namespace) -> int:
    """GPU-hours, GPU-memory GiB-hours, jobs, mean and p95 wait per user, then per group, from
    the usage ledger (as of the daemon's last telemetry tick), `--since` a time to now."""
    from workbench.db.usage import intervals
    from workbench.queue.usage import report

    client = _client(start_daemon=False)
    now = time.time()
    rows = report(intervals(client.store, since=args.since), args.since, now, args.user)
    if args.json:
        _print_json(
            {
                "since": args.since,
                "until": now,
                "rows": [dataclasses.asdict(r) for r in rows],
            }
        )
        return EXIT_OK
    if not rows:
        _write("no GPU usage recorded" + (f" for {display_text(args.user)}" if args.user else ""))
        return EXIT_OK
    for kind in ("user", "group"):
        mine = [r for r in rows if r.kind == kind]
        if not mine:
            continue
        _write(
            f"{kind.upper():<18} {'GPU-h':>9} {'GPU-mem GiB-h':>14} {'JOBS':>6}"
            f" {'MEAN WAIT':>10} {'P95 WAIT':>10}"
        )
        for r in mine:
            name = display_text(r.name)
            name = name if len(name) <= 18 else name[:17] + "…"
            _write(
                f"{name:<18} {r.gpu_hours:>9.2f} {r.gpu_mem_gib_hours:>14.1f} {r.jobs:>6}"
                f" {_wait_cell(r.wait_mean_s):>10} {_wait_cell(r.wait_p95_s):>10}"
            )
    return EXIT_OK


def _wait_cell(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(seconds)


def cmd_prune(args: argparse.Namespace) -> int:
    """Remove ended jobs older than the age given (or `[retention] jobs`), with their runs."""
    from workbench.config import load_config
    from workbench.queue.retention import prune_ended

    client = _client(start_daemon=False)
    older_than = args.older_than
    if older_than is None:
        older_than = load_config(client.home.config).retention_jobs_s
    if older_than is None:
        older_than = DEFAULT_PRUNE_AGE_S
    removed = prune_ended(client.store, client.home, older_than)
    if args.json:
        _print_json({"removed": removed, "older_than_s": older_than})
    else:
        print(f"removed {len(removed)} ended job(s) older than {format_duration(older_than)}")
    return EXIT_OK


# ---- logs ---------------------------------------------------------------------------------


def cmd_logs(args: argparse.Namespace) -> int:
    from workbench.daemon.logs import LogFollower, rotated

    client = _client(start_daemon=False)
    job = client.store.get(args.id)
    path = client.home.run_dir(job.id) / "log"
    out = sys.stdout.buffer
    if not path.exists() and not rotated(path).exists() and not args.follow:
        print(f"job {job.id} has no log yet ({job.state})", file=sys.stderr)
        return EXIT_OK
    # One open file, followed by inode: the snapshot and the stream after it meet exactly,
    # and a rotation (log -> log.1) is read to its end before the new log begins.
    follower = LogFollower(path)
    try:
        out.write(follower.snapshot(args.lines))
        out.flush()
        if not args.follow:
            return EXIT_OK
        while True:
            ended = client.store.states_of([job.id]).get(job.id, SUCCEEDED) in ENDED
            chunk = follower.read()
            if chunk:
                out.write(chunk)
                out.flush()
                continue
            if ended:
                out.write(follower.flush())  # an unfinished last line
                out.flush()
                return EXIT_OK
            time.sleep(0.1)
    finally:
        follower.close()


# ---- control ------------------------------------------------------------------------------


def _control(action: str) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        client = _client()
        code = EXIT_OK
        for job_id in args.ids:
            try:
                result = client.control(job_id, action)
                print(f"job {job_id}: {result}")
            except JobError as error:
                # The error names the job itself (`job 8 already cancelled`): said once.
                message = str(error).removeprefix(f"job {job_id} ").removeprefix(f"job {job_id}: ")
                print(f"job {job_id}: {message}", file=sys.stderr)
                usage = isinstance(error, (NoSuchJob, NotWhereItRuns))
                code = max(code, EXIT_USAGE if usage else EXIT_FAILED)
        return code

    return handler


def cmd_priority(args: argparse.Namespace) -> int:
    client = _client()
    client.set_priority(args.id, args.priority)
    print(f"job {args.id}: priority {args.priority}")
    return EXIT_OK


def hanging(head: str, value: str, width: int) -> Any:
    """`head` then `value`, a long value continuing under itself (not at column 0): broken
    at spaces, a word wider than the room cut. Plain text (no markup)."""
    import textwrap

    from rich.text import Text

    room = max(10, width - len(head))
    lines = textwrap.wrap(value, room, break_on_hyphens=False) or [""]
    return Text(head + ("\n" + " " * len(head)).join(lines), no_wrap=True, overflow="crop")


def _wait_exit(jobs: list[Job], ids: Sequence[int], quiet: bool = False) -> int:
    """The exit code of waiting for `ids` (`jobs`: their rows at the end): 0 iff every one
    succeeded. A job removed while waited on has no row: it did not succeed (a script doing
    `wait && deploy` must not deploy), and is named on stderr even with --json."""
    bad = [j for j in jobs if j.state != SUCCEEDED]
    if not quiet:
        for job in bad:
            reason = display_text(job.reason or "")
            print(f"job {job.id} {job.state}: {reason}".rstrip(": "), file=sys.stderr)
    found = {j.id for j in jobs}
    removed = [i for i in dict.fromkeys(ids) if i not in found]
    for job_id in removed:
        print(f"job {job_id} was removed before it ended", file=sys.stderr)
    return EXIT_FAILED if bad or removed else EXIT_OK


def cmd_wait(args: argparse.Namespace) -> int:
    client = _client()
    for job_id in args.ids:
        client.store.get(job_id)
    timeout: float | None = args.timeout
    jobs = client.wait(args.ids, timeout)
    unfinished = [j for j in jobs if j.state not in SETTLED]
    if unfinished:
        print(
            "timed out waiting for " + ", ".join(f"job {j.id} ({j.state})" for j in unfinished),
            file=sys.stderr,
        )
        return EXIT_FAILED
    if args.json:
        _print_json([job_json(j) for j in jobs])
    return _wait_exit(jobs, args.ids, quiet=args.json)


# ---- daemon and groups --------------------------------------------------------------------


def cmd_daemon(args: argparse.Namespace) -> int:
    from workbench.daemon.link import lock_holder, wake

    home = Home.current()
    # A lock planted by another user names any pid: `stop` would signal it, `status` report it.
    check_home(home.root)
    if args.action == "run":
        from workbench.daemon.supervisor import serve

        return serve(home)
    if args.action == "start":
        from workbench.daemon.client import ensure_daemon

        started_pid = ensure_daemon(home.ensure())
        print(f"daemon running (pid {started_pid})")
        return EXIT_OK
    pid = lock_holder(home)
    if args.action == "status":
        info: dict[str, Any] = {
            "running": bool(pid and pid > 0),
            "pid": pid if pid and pid > 0 else None,
        }
        if home.state_db.exists():
            client = _client(start_daemon=False)
            info["drain"] = client.store.draining
            info["jobs"] = client.store.counts_by_state()
        info["home"] = str(home.root)
        if args.json:
            _print_json(info)
        else:
            status = f"running (pid {info['pid']})" if info["running"] else "not running"
            print(f"daemon {status}; home {home.root}")
            if info.get("drain"):
                print("drain mode: nothing new starts")
            if info.get("jobs"):
                print("jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(info["jobs"].items())))
        return EXIT_OK
    if args.action == "stop":
        if not pid or pid < 0:
            print("daemon not running")
            return EXIT_OK
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and lock_holder(home):
            time.sleep(0.02)
        if lock_holder(home):
            print(f"daemon (pid {pid}) did not stop within 15s", file=sys.stderr)
            return EXIT_DAEMON
        print(f"daemon stopped (pid {pid}); running jobs keep running and are re-adopted on start")
        return EXIT_OK
    if args.action in ("drain", "undrain"):
        client = _client()
        client.store.set_draining(args.action == "drain")
        wake(home)
        print(
            "drain mode on: running jobs finish, nothing new starts"
            if args.action == "drain"
            else "drain mode off"
        )
        return EXIT_OK
    raise UsageError(f"unknown daemon action {args.action}")


def cmd_group(args: argparse.Namespace) -> int:
    from workbench.config import check_quota, group_quotas, load_config, set_stored_quota
    from workbench.queue.requests import check_group

    changing = args.parallel is not None or args.quota is not None
    if changing and not args.name:
        raise UsageError("name the group: workbench group NAME --parallel N --quota G")
    if args.name is not None:
        check_group(args.name, "group")
    if args.parallel is not None and args.parallel < 0:
        raise UsageError("--parallel must be 0 (unlimited) or more")
    if args.quota is not None:
        check_quota(args.quota, "--quota")
    client = _client(start_daemon=changing)
    if args.name and args.parallel is not None:
        client.store.set_group(args.name, args.parallel)
    if args.name and args.quota is not None:
        set_stored_quota(client.store, args.name, args.quota)
    if changing:
        client.nudge()
    config = load_config(Home.current().config)
    limits = {**config.group_parallel, **client.store.group_limits()}
    quotas = {k: v for k, v in group_quotas(config, client.store).items() if v}
    if args.json:
        if args.name:
            _print_json(
                {
                    "name": args.name,
                    "parallel": limits.get(args.name, 0),
                    "quota": quotas.get(args.name, 0.0),
                }
            )
        else:
            _print_json(limits)
        return EXIT_OK
    if args.quota is not None:
        _warn_quotas_beyond_the_machine(quotas)
    names = sorted(({args.name} if args.name else set()) | set(limits) | set(quotas))
    for name in names:
        parallel = limits.get(name, 0)
        quota = quotas.get(name)
        guarantee = f", {quota:g} GPU{'' if quota == 1 else 's'} guaranteed" if quota else ""
        print(f"{name}: {parallel if parallel else 'unlimited'} in parallel{guarantee}")
    if not names:
        print("no group limits or quotas set (groups are limited only by resources)")
    return EXIT_OK


def _warn_quotas_beyond_the_machine(quotas: dict[str, float]) -> None:
    """A warning on stderr when the guarantees add up to more GPUs than NVML shows here: they
    cannot all be met at once (a waiting job within its quota then says so in its reason)."""
    from workbench.telemetry.gpu import Gpus

    gpus = Gpus.open()
    try:
        count = len(gpus.sample())
    finally:
        gpus.close()
    total = sum(quotas.values())
    if total > count:
        listed = ", ".join(f"{name} {quota:g}" for name, quota in sorted(quotas.items()))
        have = f"{count} GPU{'' if count == 1 else 's'}" if count else "no GPU"
        print(
            f"workbench: warning: the group quotas ({listed}) add up to {total:g} GPUs and this"
            f" machine has {have}: not every guarantee can be met at once",
            file=sys.stderr,
        )


# ---- telemetry ----------------------------------------------------------------------------


def cmd_top(args: argparse.Namespace) -> int:
    from workbench.telemetry import sampler as telemetry

    home = Home.current()
    if args.once:
        snap = telemetry.snapshot(home)
        if args.json:
            _print_json(snap)
        else:
            _console().print(telemetry.render_text(snap))
        return EXIT_OK
    from rich.live import Live

    # One NVML session for the whole loop: initialising it per sample burns a core.
    with (
        telemetry.Snapshots(home) as snapshots,
        Live(console=_console(), auto_refresh=False) as live,
    ):
        try:
            while True:
                live.update(telemetry.render_text(snapshots.take()), refresh=True)
                time.sleep(1.0)
        except KeyboardInterrupt:
            return EXIT_OK


# ---- batch and TUI ------------------------------------------------------------------------


def run_batch(path: str, json_mode: bool, executor: str | None = None) -> int:
    from workbench.daemon.executors.slurm import bind_executor
    from workbench.queue.pipeline import load_pipeline, run_pipeline

    pipeline = load_pipeline(Path(path))
    requests = [r for stage in pipeline.stages for r in stage.requests]
    labels = [f"{pipeline.path}: stage '{s.name}'" for s in pipeline.stages for _ in s.requests]
    caps = dict(s.group_limit for s in pipeline.stages if s.group_limit is not None)
    bound = iter(bind_executor(requests, executor, Home.current(), labels, group_caps=caps))
    stages = [
        dataclasses.replace(s, requests=tuple(next(bound) for _ in s.requests))
        for s in pipeline.stages
    ]
    pipeline = dataclasses.replace(pipeline, stages=tuple(stages))
    from workbench.daemon.link import lock_holder

    home = Home.current()
    holder = lock_holder(home)
    if not (holder and holder > 0) and not json_mode:
        print(
            f"starting a daemon for {home.root}; it keeps running after this pipeline"
            " (jobs queued by others keep draining; workbench daemon stop ends it)",
            file=sys.stderr,
            flush=True,
        )
    client = _client()

    def poll(ids: list[int]) -> list[Job]:
        return [client.store.get(i) for i in ids]

    def cancel(job_id: int) -> None:
        client.control(job_id, "cancel")

    return run_pipeline(
        pipeline, client.submit_pipeline, poll, cancel, json_mode=json_mode, store=client.store
    )


def open_tui() -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        which = "stdout" if sys.stdin.isatty() else "stdin"
        raise UsageError(
            f"the TUI needs a terminal, but {which} is not one; use a command instead"
            " (workbench --help), e.g. `workbench ls` or `workbench --batch FILE`"
        )
    from workbench.safetext import warn_if_not_utf8

    warn_if_not_utf8()
    app_module = importlib.import_module("screens.app")
    return int(app_module.run_app() or 0)


# ---- the parser ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench",
        description=(
            "A terminal workbench for one GPU machine: a job queue with a supervisor daemon, live"
            " GPU and host panels, SQL over ingested data, and ingest/train/test/export jobs."
            " With no command it opens the TUI."
        ),
        epilog=(
            "Job states: queued, starting, running, paused, blocked, succeeded, failed, cancelled."
            " Environment variables whose names contain TOKEN, KEY, SECRET, PASSWORD or CREDENTIAL"
            " (and [security] secret_names in config.toml) are shown as ***. Exit codes:"
            " 0 success, 1 a job or stage failed, 2 bad usage or spec, 3 daemon unavailable,"
            " 4 not permitted (team mode: another user's job)."
            " State lives in $WORKBENCH_HOME (default $XDG_DATA_HOME/workbench or"
            " ~/.local/share/workbench)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"workbench {__version__}")
    parser.add_argument(
        "--batch",
        metavar="PIPELINE.toml",
        help="run a pipeline headless and exit (through the system daemon where one is installed)",
    )
    parser.add_argument(
        "--json", action="store_true", help="with --batch: one JSON object per event"
    )
    parser.add_argument(
        "--executor",
        choices=["local", "slurm"],
        help="with --batch: where the stages run (default: [executor] in config.toml)",
    )
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND")

    p = sub.add_parser("submit", help=submission.HELP)
    submission.add_arguments(p)
    p.set_defaults(handler=cmd_submit)

    p = sub.add_parser(
        "ls",
        help="list jobs: counts per state, running and the 50 oldest waiting jobs, recent ended ones",
    )
    p.add_argument("--all", action="store_true", help="every job, streamed oldest first")
    p.add_argument(
        "--recent", type=checked.count, default=20, help="ended jobs to show (default 20)"
    )
    p.add_argument("--state", action="append", help="only jobs in this state (repeatable)")
    p.add_argument(
        "--json",
        action="store_true",
        help="the same jobs as a JSON array of job objects (what was left out: on stderr)",
    )
    p.set_defaults(handler=cmd_ls)

    p = sub.add_parser("show", help="one job: spec, history, resources, metrics, paths")
    p.add_argument("id", type=checked.job_id)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--env",
        action="store_true",
        help="with --json: include the captured environment (secret-looking values masked)",
    )
    p.set_defaults(handler=cmd_show)

    p = sub.add_parser("audit", help="who (uid) asked what of which job, when")
    p.add_argument("--job", type=checked.job_id, help="only this job's entries")
    p.add_argument("--limit", type=checked.count, help="only the last N entries")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_audit)

    p = sub.add_parser(
        "usage", help="GPU-hours, GPU-memory-hours, jobs and waits per user and group"
    )
    p.add_argument("--user", help="only this user's jobs")
    p.add_argument("--since", type=checked.since, help="from when: 24h, 7d or 2026-12-01")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_usage)

    p = sub.add_parser(
        "prune", help="remove ended jobs and their run folders past the retention age"
    )
    p.add_argument(
        "--older-than",
        type=checked.duration,
        help="age, e.g. 30d, 12h (default: [retention] jobs in config.toml, else 30d)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_prune)

    p = sub.add_parser("logs", help="a job's log")
    p.add_argument("id", type=checked.job_id)
    p.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    p.add_argument("-n", "--lines", type=checked.count, help="only the last N lines")
    p.set_defaults(handler=cmd_logs)

    for action, text in (
        ("cancel", "stop jobs (SIGTERM to the process group, SIGKILL after a grace period)"),
        ("pause", "hold queued jobs, stop running ones (SIGSTOP)"),
        ("resume", "release held jobs, continue stopped ones (SIGCONT)"),
        ("retry", "queue failed, cancelled or blocked jobs again"),
        ("rm", "remove ended or queued jobs from the store"),
    ):
        p = sub.add_parser(action, help=text)
        p.add_argument("ids", type=checked.job_id, nargs="+", metavar="ID")
        p.set_defaults(handler=_control(action))

    p = sub.add_parser("system", help="team mode: one daemon for every user of this machine")
    p.add_argument("action", choices=["install", "uninstall", "status"])
    p.add_argument("--admin-group", help="install: members see and act on all jobs")
    p.add_argument("--no-start", action="store_true", help="install: do not start the daemon")
    p.add_argument("--purge", action="store_true", help="uninstall: remove its jobs and logs too")
    p.add_argument("--json", action="store_true", help="status as JSON")
    p.set_defaults(handler=cmd_system)

    p = sub.add_parser("priority", help="set a job's priority (higher starts first)")
    p.add_argument("id", type=checked.job_id)
    p.add_argument("priority", type=checked.signed)
    p.set_defaults(handler=cmd_priority)

    p = sub.add_parser("wait", help="block until jobs end; exit 0 iff all succeeded")
    p.add_argument("ids", type=checked.job_id, nargs="+", metavar="ID")
    p.add_argument(
        "--timeout", type=checked.duration, help="give up after this long (e.g. 30s, 2h); exit 1"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_wait)

    p = sub.add_parser("daemon", help="the supervisor: start, stop, status, drain, undrain")
    p.add_argument("action", choices=["start", "stop", "status", "drain", "undrain", "run"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_daemon)

    p = sub.add_parser(
        "group", help="list groups, or set a group's cap on running jobs and its guaranteed GPUs"
    )
    p.add_argument("name", nargs="?")
    p.add_argument(
        "--parallel", type=checked.count, help="jobs of this group running at once (0: no limit)"
    )
    p.add_argument(
        "--quota",
        type=checked.amount,
        help="GPUs guaranteed to this group; others borrow them while idle and are preempted"
        " to give them back (0: no guarantee)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_group)

    p = sub.add_parser("top", help="telemetry: GPUs, CPU per core, memory, network, disks")
    p.add_argument("--once", action="store_true", help="one snapshot, then exit")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_top)

    for name in EXTENSIONS:
        importlib.import_module(name).register(sub)
    return parser


def command_names(parser: argparse.ArgumentParser) -> list[str]:
    """The parser's commands (`submit`, `ls`, ...), in the order `--help` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def unknown_command(parser: argparse.ArgumentParser, words: list[str]) -> str | None:
    """For a first word that is no command: `no command 'sumbit'; did you mean 'submit'?`
    (difflib's closest), else the list of commands; None when the word is a command or an
    option (argparse handles those)."""
    if not words or words[0].startswith("-"):
        return None
    names = command_names(parser)
    if words[0] in names:
        return None
    import difflib

    close = difflib.get_close_matches(words[0], names, n=3)
    if close:
        return f"no command {words[0]!r}; did you mean {' or '.join(map(repr, close))}?"
    return f"no command {words[0]!r}; the commands: {', '.join(names)} (workbench --help)"


def _in_team_mode(args: argparse.Namespace) -> int | None:
    """A queue command's exit code when a system daemon is installed (and WORKBENCH_HOME not
    set): it goes to that daemon (`workbench.cli.team`). None: run it here, per user."""
    from workbench.system import system_socket

    if args.command_name not in TEAM_COMMANDS:
        return None
    path = system_socket()
    if path is None:
        return None
    from workbench.cli import team

    return team.run(args, path)


def _batch_in_team_mode(args: argparse.Namespace) -> int | None:
    """`--batch`'s exit code when a system daemon is installed (and WORKBENCH_HOME not set):
    the pipeline runs there (`workbench.cli.teambatch`). None: run it here, per user."""
    from workbench.system import system_socket

    path = system_socket()
    if path is None:
        return None
    from workbench.cli import teambatch

    return teambatch.run(args.batch, args.json, args.executor, path)


def cmd_system(args: argparse.Namespace) -> int:
    """`workbench system install | uninstall | status` (README: Team mode)."""
    from workbench import system

    if args.action == "status":
        state = system.status()
        if args.json:
            _print_json(state)
        else:
            running = f"running (pid {state['pid']})" if state["pid"] else "not running"
            installed = "installed" if state["installed"] else "not installed"
            print(f"system home {state['home']}: {installed}; daemon {running}")
            if state["unit"]:
                print(f"systemd unit: {state['unit']}")
        return EXIT_OK
    try:
        if args.action == "install":
            lines = system.install(args.admin_group, start=not args.no_start)
        else:
            lines = system.uninstall(purge=args.purge)
    except (system.SystemError_, OSError) as error:
        print(f"workbench: {display_text(str(error))}", file=sys.stderr)
        if isinstance(error, system.PythonNotShared):
            return EXIT_USAGE
        return EXIT_NOT_PERMITTED if os.geteuid() != 0 else EXIT_DAEMON
    for line in lines:
        print(line)
    return EXIT_OK


def _home_fault(error: BaseException) -> str | None:
    """A message for an OSError about WORKBENCH_HOME (a file, a folder that cannot be made or
    written), naming the path; None for any other error (which must not be hidden)."""
    if not isinstance(error, OSError) or error.errno is None:
        return None
    home = Home.current()
    paths = [p for p in (error.filename, error.filename2) if p is not None]
    if not any(home.owns(p) for p in paths):
        return None
    named = os.fsdecode(paths[0])
    problem = error.strerror or str(error)
    if named == str(home.root):
        return f"WORKBENCH_HOME {home.root}: {problem}; set WORKBENCH_HOME to a folder you own"
    return f"WORKBENCH_HOME {home.root}: {named}: {problem}; set WORKBENCH_HOME to a folder you own"


def main(argv: Sequence[str] | None = None) -> int:
    make_files_private()  # our state files and folders: owner only, even in a shared home
    fallback_streams()  # a latin-1 terminal gets escapes, never a UnicodeEncodeError
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    unknown = unknown_command(parser, words)
    if unknown is not None:
        print(f"workbench: {unknown}", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(words)
    try:
        if args.batch:
            if args.command_name:
                raise UsageError("--batch runs a pipeline; give no other command")
            team_code = _batch_in_team_mode(args)
            if team_code is not None:
                return team_code
            return run_batch(args.batch, args.json, args.executor)
        if not args.command_name:
            return open_tui()
        handler: Handler = args.handler
        if getattr(args, "command", None) and args.command[:1] == ["--"]:
            args.command = args.command[1:]
        team_code = _in_team_mode(args)
        if team_code is not None:
            return team_code
        return handler(args)
    except (SpecError, UsageError) as error:
        print(f"workbench: {display_text(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except JobError as error:
        print(f"workbench: {display_text(str(error))}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, (NoSuchJob, NotWhereItRuns)) else EXIT_FAILED
    except StoreError as error:
        print(f"workbench: {display_text(str(error))}", file=sys.stderr)
        return EXIT_DAEMON
    except (DaemonUnavailable, UntrustedHome) as error:
        print(f"workbench: {display_text(str(error))}", file=sys.stderr)
        return EXIT_DAEMON
    except KeyboardInterrupt as error:
        return int(getattr(error, "exit_code", 130))  # 143 for a batch's SIGTERM
    except BrokenPipeError:
        # The reader left (`workbench ls | head`): stop quietly, as other Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as error:
        # The lake is imported only by the commands that use it, so only they can raise its
        # error: a bad dataset name or version is a usage error.
        lake = sys.modules.get("workbench.catalog.lake")
        if lake is not None and isinstance(error, lake.LakeError):
            print(f"workbench: {display_text(str(error))}", file=sys.stderr)
            return EXIT_USAGE
        # A damaged state file or a full disk can surface from any read or write: one message
        # with what to do, never a traceback.
        fault = translate(error, Home.current().state_db)
        if fault is None:
            home_fault = _home_fault(error)
            if home_fault is None:
                raise
            print(f"workbench: {display_text(str(home_fault))}", file=sys.stderr)
            return EXIT_DAEMON
        print(f"workbench: {fault}", file=sys.stderr)
        return EXIT_DAEMON


if __name__ == "__main__":
    raise SystemExit(main())
