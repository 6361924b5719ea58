"""`workbench`: the TUI with no arguments, `--batch PIPELINE.toml`, and the queue commands.

Exit codes: 0 success, 1 a job or stage failed, 2 bad usage or a bad spec, 3 the daemon could
not be reached or started."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from workbench import __version__
from workbench.catalog.lake import LakeError
from workbench.daemon.client import DaemonUnavailable
from workbench.db.store import (
    ENDED,
    RUNNING,
    SETTLED,
    SUCCEEDED,
    Job,
    JobError,
    NoSuchJob,
    StoreError,
)
from workbench.paths import Home
from workbench.present import STATE_STYLES, job_details, job_progress, job_resources
from workbench.queue.spec import SpecError
from workbench.units import format_duration, parse_duration

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DAEMON = 0, 1, 2, 3

# Modules that add subcommands: each has `register(subparsers)`; handlers import what they need.
EXTENSIONS: list[str] = ["workbench.cli.data", "workbench.cli.tracking", "workbench.cli.registry"]

Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """Bad arguments discovered after parsing (exit code 2)."""


def _client(start_daemon: bool = True) -> Any:
    from workbench.daemon.client import Client

    return Client(start_daemon=start_daemon)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=None, default=str))


def _console() -> Any:
    from rich.console import Console

    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "160"))
    return Console(highlight=False, soft_wrap=False, width=width)


# ---- submit -------------------------------------------------------------------------------


def _parse_after(values: list[str], flag: str) -> list[int]:
    ids = []
    for value in values:
        for part in value.split(","):
            if not part.strip().isdigit():
                raise UsageError(f"{flag}: not a job id: {part!r}")
            ids.append(int(part))
    return ids


def cmd_submit(args: argparse.Namespace) -> int:
    from workbench.queue.requests import build_request

    if args.spec:
        if args.command:
            raise UsageError("give either --spec FILE or -- CMD ARG..., not both")
        from workbench.queue.pipeline import _read_toml

        spec_path = Path(args.spec).resolve()
        table = _read_toml(spec_path)
        base_dir = spec_path.parent
        where = str(spec_path)
        after_from_file = table.pop("after", [])
        if not isinstance(after_from_file, list) or not all(
            isinstance(a, int) for a in after_from_file
        ):
            raise SpecError(f"{where}: key 'after': expected a list of job ids")
    else:
        if not args.command:
            raise UsageError("nothing to run: give -- CMD ARG... or --spec FILE.toml")
        table = {"kind": "command", "argv": args.command}
        base_dir = Path(args.cwd).resolve() if args.cwd else Path.cwd()
        where = "submit"
        after_from_file = []
    overrides = {
        "name": args.name,
        "gpus": args.gpus,
        "gpu_mem": args.gpu_mem,
        "cpus": args.cpus,
        "mem": args.mem,
        "priority": args.priority,
        "group": args.group,
        "retries": args.retries,
        "time_limit": args.time_limit,
    }
    table.update({k: v for k, v in overrides.items() if v is not None})
    env = dict(os.environ)
    for pair in args.env or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--env: expected KEY=VALUE, got {pair!r}")
        env[key] = value
    after = [(i, "ok") for i in [*after_from_file, *_parse_after(args.after or [], "--after")]]
    after += [(i, "any") for i in _parse_after(args.after_any or [], "--after-any")]
    after += [(i, "fail") for i in _parse_after(args.after_fail or [], "--after-fail")]
    request = build_request(table, base_dir, where, env, after=tuple(after), paused=args.paused)
    client = _client()
    job_id = client.submit(request)
    if args.json:
        _print_json(client.store.get(job_id).to_json())
    else:
        print(job_id)
    if args.wait:
        return _wait_exit(client.wait([job_id]), quiet=args.json)
    return EXIT_OK


# ---- listing ------------------------------------------------------------------------------


def _age(job: Job, now: float) -> str:
    return format_duration(now - job.created_at)


def cmd_ls(args: argparse.Namespace) -> int:
    client = _client(start_daemon=False)
    store = client.store
    if args.all:
        jobs = store.list_jobs()
    else:
        active = store.active_jobs()
        ended = store.list_jobs(states=ENDED, limit=args.recent)
        jobs = sorted([*active, *ended], key=lambda j: j.id)
    if args.state:
        jobs = [j for j in jobs if j.state in args.state]
    if args.json:
        _print_json([j.to_json() for j in jobs])
        return EXIT_OK
    from rich.table import Table

    now = time.time()
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("id", "name", "kind", "state", "resources", "progress", "age", "reason"):
        table.add_column(
            column,
            overflow="fold" if column == "reason" else "ellipsis",
            no_wrap=column != "reason",
        )
    for job in jobs:
        style = STATE_STYLES.get(job.state, "")
        reason = job.reason if job.state not in (RUNNING, SUCCEEDED) else ""
        table.add_row(
            str(job.id),
            job.name[:40],
            job.kind,
            f"[{style}]{job.state}[/]",
            job_resources(job),
            job_progress(job),
            _age(job, now),
            reason or "",
        )
    console = _console()
    if jobs:
        console.print(table)
    else:
        console.print("no jobs" if args.all else "no jobs (ls --all shows every job)")
    drain = store.draining
    if drain:
        console.print("[magenta]drain mode: nothing new starts (workbench daemon undrain)[/]")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    client = _client(start_daemon=False)
    job = client.store.get(args.id)
    events = client.store.events(job.id)
    metrics = client.store.last_metrics(job.id)
    run_dir = client.home.run_dir(job.id)
    if args.json:
        out = job.to_json(with_env=args.env)
        out["events"] = [{"t": e.t, "state": e.state, "reason": e.reason} for e in events]
        out["metrics"] = metrics
        out["paths"] = {"run_dir": str(run_dir), "log": str(run_dir / "log")}
        _print_json(out)
        return EXIT_OK
    console = _console()
    style = STATE_STYLES.get(job.state, "")
    console.print(f"[bold]job {job.id}[/] {job.name}  [{style}]{job.state}[/]  ({job.kind})")
    for label, value in job_details(job, metrics):
        console.print(f"  {label + ':':<11}{value}", markup=False)
    console.print(f"  run dir:   {run_dir}")
    console.print("  history:")
    for event in events:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.t))
        reason = f"  {event.reason}" if event.reason else ""
        console.print(f"    {stamp}  {event.state:<10}{reason}")
    return EXIT_OK


# ---- logs ---------------------------------------------------------------------------------


def _tail_lines(path: Path, count: int) -> bytes:
    with open(path, "rb") as log:
        log.seek(0, os.SEEK_END)
        size = log.tell()
        block = 65536
        data = b""
        while size > 0 and data.count(b"\n") <= count:
            step = min(block, size)
            size -= step
            log.seek(size)
            data = log.read(step) + data
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-count:]) if count else b""


def cmd_logs(args: argparse.Namespace) -> int:
    client = _client(start_daemon=False)
    job = client.store.get(args.id)
    path = client.home.run_dir(job.id) / "log"
    out = sys.stdout.buffer
    if not path.exists() and not args.follow:
        print(f"job {job.id} has no log yet ({job.state})", file=sys.stderr)
        return EXIT_OK
    position = 0
    inode = None
    if path.exists():
        data = _tail_lines(path, args.lines) if args.lines is not None else path.read_bytes()
        out.write(data)
        out.flush()
        position = path.stat().st_size
        inode = path.stat().st_ino
    if not args.follow:
        return EXIT_OK
    while True:
        ended = client.store.get(job.id).state in ENDED
        try:
            stat = path.stat()
        except FileNotFoundError:
            stat = None
        if stat is not None:
            if stat.st_ino != inode or stat.st_size < position:
                inode, position = stat.st_ino, 0  # the log was capped and rewritten
            if stat.st_size > position:
                with open(path, "rb") as log:
                    log.seek(position)
                    chunk = log.read()
                position += len(chunk)
                out.write(chunk)
                out.flush()
                continue
        if ended:
            return EXIT_OK
        time.sleep(0.1)


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
                print(f"job {job_id}: {error}", file=sys.stderr)
                code = max(code, EXIT_USAGE if isinstance(error, NoSuchJob) else EXIT_FAILED)
        return code

    return handler


def cmd_priority(args: argparse.Namespace) -> int:
    client = _client()
    client.set_priority(args.id, args.priority)
    print(f"job {args.id}: priority {args.priority}")
    return EXIT_OK


def _wait_exit(jobs: list[Job], quiet: bool = False) -> int:
    bad = [j for j in jobs if j.state != SUCCEEDED]
    if not quiet:
        for job in bad:
            print(f"job {job.id} {job.state}: {job.reason or ''}".rstrip(": "), file=sys.stderr)
    return EXIT_FAILED if bad else EXIT_OK


def cmd_wait(args: argparse.Namespace) -> int:
    client = _client()
    for job_id in args.ids:
        client.store.get(job_id)
    timeout = parse_duration(args.timeout) if args.timeout else None
    jobs = client.wait(args.ids, timeout)
    unfinished = [j for j in jobs if j.state not in SETTLED]
    if unfinished:
        print(
            "timed out waiting for " + ", ".join(f"job {j.id} ({j.state})" for j in unfinished),
            file=sys.stderr,
        )
        return EXIT_FAILED
    if args.json:
        _print_json([j.to_json() for j in jobs])
    return _wait_exit(jobs, quiet=args.json)


# ---- daemon and groups --------------------------------------------------------------------


def cmd_daemon(args: argparse.Namespace) -> int:
    from workbench.daemon.link import lock_holder, wake

    home = Home.current()
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
    client = _client(start_daemon=args.parallel is not None)
    if args.name and args.parallel is not None:
        if args.parallel < 0:
            raise UsageError("--parallel must be 0 (unlimited) or more")
        client.store.set_group(args.name, args.parallel)
        client.nudge()
    limits = client.store.group_limits()
    if args.json:
        _print_json(limits)
    else:
        for name, parallel in sorted(limits.items()):
            print(f"{name}: {parallel if parallel else 'unlimited'} in parallel")
        if not limits:
            print("no group limits set (groups are limited only by resources)")
    return EXIT_OK


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


def run_batch(path: str, json_mode: bool) -> int:
    from workbench.queue.pipeline import load_pipeline, run_pipeline

    pipeline = load_pipeline(Path(path))
    client = _client()

    def poll(ids: list[int]) -> list[Job]:
        return [client.store.get(i) for i in ids]

    def cancel(job_id: int) -> None:
        client.control(job_id, "cancel")

    return run_pipeline(
        pipeline, client.submit_pipeline, poll, cancel, json_mode=json_mode, store=client.store
    )


def open_tui() -> int:
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
            "Job states: queued, running, paused, blocked, succeeded, failed, cancelled. Exit codes:"
            " 0 success, 1 a job or stage failed, 2 bad usage or spec, 3 daemon unavailable."
            " State lives in $WORKBENCH_HOME (default $XDG_DATA_HOME/workbench or"
            " ~/.local/share/workbench)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"workbench {__version__}")
    parser.add_argument("--batch", metavar="PIPELINE.toml", help="run a pipeline headless and exit")
    parser.add_argument(
        "--json", action="store_true", help="with --batch: one JSON object per event"
    )
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND")

    p = sub.add_parser("submit", help="queue a job: -- CMD ARG... or --spec FILE.toml")
    p.add_argument("--spec", metavar="FILE.toml", help="a job of any kind from a spec file")
    p.add_argument("--name")
    p.add_argument("--gpus", type=float, help="GPUs (fractions like 0.5 share one GPU)")
    p.add_argument("--gpu-mem", help="GPU memory needed, e.g. 8GiB")
    p.add_argument("--cpus", type=float)
    p.add_argument("--mem", help="host memory, e.g. 4GiB")
    p.add_argument("--after", action="append", metavar="ID", help="start after job ID succeeded")
    p.add_argument("--after-any", action="append", metavar="ID", help="start after job ID ended")
    p.add_argument(
        "--after-fail", action="append", metavar="ID", help="start only if job ID failed"
    )
    p.add_argument("--priority", type=int, help="higher starts first (default 0)")
    p.add_argument("--group")
    p.add_argument("--retries", type=int, help="automatic retries after a failure")
    p.add_argument("--time-limit", help="e.g. 90s, 30m, 2h; the job fails when it runs longer")
    p.add_argument("--cwd", help="working directory (default: the current one)")
    p.add_argument("--env", action="append", metavar="K=V", help="set an environment variable")
    p.add_argument("--paused", action="store_true", help="queue it held; `resume` releases it")
    p.add_argument("--wait", action="store_true", help="wait for it; exit 0 iff it succeeded")
    p.add_argument("--json", action="store_true")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARG...")
    p.set_defaults(handler=cmd_submit)

    p = sub.add_parser("ls", help="list jobs")
    p.add_argument("--all", action="store_true", help="every job, not only active and recent")
    p.add_argument("--recent", type=int, default=20, help="ended jobs to show (default 20)")
    p.add_argument("--state", action="append", help="only jobs in this state (repeatable)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_ls)

    p = sub.add_parser("show", help="one job: spec, history, resources, metrics, paths")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--env", action="store_true", help="with --json: include the captured environment"
    )
    p.set_defaults(handler=cmd_show)

    p = sub.add_parser("logs", help="a job's log")
    p.add_argument("id", type=int)
    p.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    p.add_argument("-n", "--lines", type=int, help="only the last N lines")
    p.set_defaults(handler=cmd_logs)

    for action, text in (
        ("cancel", "stop jobs (SIGTERM to the process group, SIGKILL after a grace period)"),
        ("pause", "hold queued jobs, stop running ones (SIGSTOP)"),
        ("resume", "release held jobs, continue stopped ones (SIGCONT)"),
        ("retry", "queue failed, cancelled or blocked jobs again"),
        ("rm", "remove ended or queued jobs from the store"),
    ):
        p = sub.add_parser(action, help=text)
        p.add_argument("ids", type=int, nargs="+", metavar="ID")
        p.set_defaults(handler=_control(action))

    p = sub.add_parser("priority", help="set a job's priority (higher starts first)")
    p.add_argument("id", type=int)
    p.add_argument("priority", type=int)
    p.set_defaults(handler=cmd_priority)

    p = sub.add_parser("wait", help="block until jobs end; exit 0 iff all succeeded")
    p.add_argument("ids", type=int, nargs="+", metavar="ID")
    p.add_argument("--timeout", help="give up after this long (e.g. 30s, 2h); exit 1")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_wait)

    p = sub.add_parser("daemon", help="the supervisor: start, stop, status, drain, undrain")
    p.add_argument("action", choices=["start", "stop", "status", "drain", "undrain", "run"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_daemon)

    p = sub.add_parser("group", help="list groups, or set a group's parallelism limit")
    p.add_argument("name", nargs="?")
    p.add_argument("--parallel", type=int, help="jobs of this group running at once (0: no limit)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_group)

    p = sub.add_parser("top", help="telemetry: GPUs, CPU per core, memory, network, disks")
    p.add_argument("--once", action="store_true", help="one snapshot, then exit")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_top)

    for name in EXTENSIONS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.batch:
            if args.command_name:
                raise UsageError("--batch runs a pipeline; give no other command")
            return run_batch(args.batch, args.json)
        if not args.command_name:
            return open_tui()
        handler: Handler = args.handler
        if getattr(args, "command", None) and args.command[:1] == ["--"]:
            args.command = args.command[1:]
        return handler(args)
    except (SpecError, UsageError, LakeError) as error:
        print(f"workbench: {error}", file=sys.stderr)
        return EXIT_USAGE
    except JobError as error:
        print(f"workbench: {error}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, NoSuchJob) else EXIT_FAILED
    except StoreError as error:
        print(f"workbench: {error}", file=sys.stderr)
        return EXIT_DAEMON
    except DaemonUnavailable as error:
        print(f"workbench: {error}", file=sys.stderr)
        return EXIT_DAEMON
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
