"""The CLI's queue commands against the system daemon (team mode): submit, ls, show, logs,
cancel/pause/resume/retry/rm, priority, wait and audit, each one request on the system socket
(`workbench.daemon.wire`). The client builds a submission itself, as its user (it reads the
spec file and the environment); the daemon decides who asks from the kernel and what they may
see and do (`workbench.daemon.rights`). Used when a system daemon is installed and WORKBENCH_HOME
is not set (`workbench.system.system_socket`)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from workbench.daemon.wire import ask
from workbench.jobmodel.states import SETTLED, JobState
from workbench.jsonout import dumps
from workbench.safetext import display_text

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DAEMON = 0, 1, 2, 3
_ENDED = frozenset(state.value for state in SETTLED)  # what `wait` waits for, as per user
_SUCCEEDED = JobState.SUCCEEDED.value


class Refused(Exception):
    """The daemon answered with a failure: its message and exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class Unreachable(OSError):
    """The system daemon's socket is there but nobody answers on it."""


def request_to_wire(request: Any) -> dict[str, Any]:
    """A JobRequest as the daemon's `request_from_wire` reads it (JSON values only). Its
    `uid` is not sent: the daemon takes the caller's from the kernel."""
    data = dataclasses.asdict(request)
    for key in ("uid", "repro", "pipeline_id", "stage", "credentials"):
        data.pop(key, None)
    data["after"] = [list(pair) for pair in request.after]
    if request.credentials is not None:  # `--secret-env`: held in the daemon's memory only
        data["secret_env"] = dict(request.credentials.values)
    return data


class TeamClient:
    """Requests to the system daemon at socket `path`."""

    def __init__(self, path: str):
        self.path = path
        self.used = False  # whether one request got through (later failures are not a fallback)

    def ask(self, op: str, **fields: Any) -> dict[str, Any]:
        """The daemon's reply to `op`. Raises Refused (its failure), Unreachable (no answer
        to the first request: the caller may fall back) or OSError."""
        try:
            reply = ask(self.path, {"op": op, **fields})
        except (ConnectionRefusedError, FileNotFoundError) as error:
            if not self.used:
                raise Unreachable(str(error)) from None
            raise
        self.used = True
        if not reply.get("ok"):
            code = reply.get("exit")
            raise Refused(str(reply.get("error")), code if type(code) is int else EXIT_FAILED)
        return reply

    def wait(self, ids: list[int], timeout_s: float | None = None) -> dict[int, str]:
        """Poll until every job in `ids` ended (or the timeout); their states."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            states = {int(k): v for k, v in self.ask("states", ids=ids)["states"].items()}
            if all(states.get(i, _SUCCEEDED) in _ENDED for i in ids):
                return states
            if deadline is not None and time.monotonic() >= deadline:
                return states
            time.sleep(0.2)


def run(
    args: argparse.Namespace,
    path: str,
    handler: Callable[[TeamClient, argparse.Namespace], int] | None = None,
) -> int | None:
    """Run a queue command (`handler`, else the one `args.command_name` names) against the
    system daemon; None when it cannot be reached before anything was done (the caller then
    uses the per-user daemon, as without a system one)."""
    client = TeamClient(path)
    handler = handler or _HANDLERS[args.command_name]
    try:
        return handler(client, args)
    except Unreachable:
        print(
            f"workbench: the system daemon ({path}) is not answering; using your own",
            file=sys.stderr,
        )
        return None
    except Refused as error:
        print(f"workbench: {display_text(str(error))}", file=sys.stderr)
        return error.code
    except OSError as error:
        print(f"workbench: the system daemon ({path}): {error}", file=sys.stderr)
        return EXIT_DAEMON


def _print_json(value: Any) -> None:
    print(dumps(value))


def _submit(client: TeamClient, args: argparse.Namespace) -> int:
    from workbench.queue import submission

    if args.bulk:
        source = "stdin" if args.bulk == "-" else args.bulk
        if args.bulk == "-":
            text = sys.stdin.read()
        else:
            with open(args.bulk, encoding="utf-8") as handle:
                text = handle.read()
        requests = submission.bulk_requests(args, dict(os.environ), text, source)
    else:
        request, _ = submission.request_from_args(args, dict(os.environ), capture=False)
        requests = [request]
    own = queue_built_in(requests)
    wired = [request_to_wire(own.get(i, (r, 0))[0]) for i, r in enumerate(requests)]
    try:
        reply = client.ask("submit", jobs=wired)
    except BaseException:
        withdraw(own, "the system daemon did not take it")
        raise
    ids: list[int] = reply["ids"]
    tell_built_in(own, ids)
    if args.json:
        _print_json(reply["jobs"] if args.bulk else reply["jobs"][0])
    else:
        sys.stdout.write("".join(f"{i}\n" for i in ids))
    if args.wait:
        return _wait_exit(client, ids, None, quiet=args.json)
    return EXIT_OK


def queue_built_in(requests: list[Any]) -> dict[int, tuple[Any, int]]:
    """For each built-in kind among `requests` (index -> (the command job for the system
    daemon, the job's id in the user's own home)): the job is queued in the user's own home,
    bound to executor `team` (no per-user daemon starts it; its data, runs and lineage stay
    there), and the team queue gets a command job that runs it there as the user
    (`workbench.daemon.teamrun`), with its resources, limits and priority."""
    from workbench.daemon.teamrun import EXECUTOR, HOME_ENV, JOB_ENV
    from workbench.db.store import Store
    from workbench.paths import Home, home_dir

    built_in = [(i, r) for i, r in enumerate(requests) if r.kind != "command"]
    if not built_in:
        return {}
    home = Home(home_dir()).ensure()
    store = Store.open(home.state_db)
    out: dict[int, tuple[Any, int]] = {}
    try:
        # Never held here: a hold (`--paused`) is the team job's, whose resume starts it;
        # teamrun starts only a queued job.
        ids = store.submit_many(
            [dataclasses.replace(r, executor=EXECUTOR, paused=False) for _, r in built_in]
        )
        for (index, request), job_id in zip(built_in, ids, strict=True):
            env = {**request.env, HOME_ENV: str(home.root), JOB_ENV: str(job_id)}
            command = dataclasses.replace(
                request,
                kind="command",
                spec={
                    "team_of": {"kind": request.kind, "home": str(home.root), "job": job_id},
                    # As the kind's own policy (stopping.policy_for): train resumes from
                    # its checkpoint in the user's home after a preemption.
                    "checkpointable": request.kind == "train",
                },
                argv=[sys.executable, "-P", "-m", "workbench.daemon.teamrun"],
                env=env,
                retries=0,
            )
            out[index] = (command, job_id)
    finally:
        store.close()
    return out


def withdraw(own: dict[int, tuple[Any, int]], why: str) -> None:
    """Cancel the jobs `queue_built_in` queued in the user's own home (the team queue did not
    take them)."""
    if not own:
        return
    from workbench.db.store import Event, JobState, Store
    from workbench.paths import Home, home_dir

    store = Store.open(Home(home_dir()).state_db)
    try:
        for _, job_id in own.values():
            store.transition(job_id, Event.CANCEL, why, only_from=[JobState.QUEUED])
    finally:
        store.close()


def tell_built_in(own: dict[int, tuple[Any, int]], team_ids: list[int]) -> None:
    """Say, in each own-home job's reason and on stderr, which team job runs it."""
    if not own:
        return
    from workbench.db.store import Store
    from workbench.paths import Home, home_dir

    home = Home(home_dir())
    store = Store.open(home.state_db)
    try:
        for index, (_, job_id) in own.items():
            team = team_ids[index]
            store.set_reason(job_id, f"waits in the team queue as its job {team}")
            print(
                f"workbench: team job {team} runs it as job {job_id} of your own home"
                f" ({home.root}): its data, runs and lineage are there",
                file=sys.stderr,
            )
    finally:
        store.close()


def _wait_exit(client: TeamClient, ids: list[int], timeout: float | None, quiet: bool) -> int:
    states = client.wait(ids, timeout)
    ended = [i for i in ids if states.get(i) in _ENDED]
    if ended:
        settle_ended(client.ask("jobs", ids=ended)["jobs"])
    unfinished = [i for i in ids if i in states and states[i] not in _ENDED]
    if unfinished:
        print("timed out waiting for " + ", ".join(f"job {i}" for i in unfinished), file=sys.stderr)
        return EXIT_FAILED
    bad = [i for i in ids if states.get(i) != _SUCCEEDED]
    if not quiet:
        for i in bad:
            print(f"job {i} {states.get(i, 'removed')}", file=sys.stderr)
    return EXIT_FAILED if bad else EXIT_OK


def _wait(client: TeamClient, args: argparse.Namespace) -> int:
    return _wait_exit(client, list(args.ids), args.timeout, quiet=False)


LS_HEADERS = ("ID", "OWNER", "NAME", "STATE", "GPUS", "AGE", "REASON")


def _age(job: dict[str, Any], now: float) -> str:
    from workbench.units import format_duration

    since = job.get("started_at") or job.get("created_at") or now
    return format_duration(max(0.0, now - float(since)))


def _ls(client: TeamClient, args: argparse.Namespace) -> int:
    reply = client.ask("list", all=bool(args.all), states=args.state, recent=args.recent)
    jobs: list[dict[str, Any]] = reply["jobs"]
    settle_ended(jobs)
    if args.json:
        _print_json(jobs)
        return EXIT_OK
    if not jobs:
        print("no jobs")
        return EXIT_OK
    now = time.time()
    rows = [
        (
            str(j["id"]),
            display_text(str(j.get("owner", ""))),
            display_text(str(j.get("name", ""))),
            str(j.get("state", "")),
            f"{(j.get('resources') or {}).get('gpus', 0):g}",
            _age(j, now),
            display_text(str(j.get("reason") or "")),
        )
        for j in jobs
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(LS_HEADERS)]
    for row in (LS_HEADERS, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def _show(client: TeamClient, args: argparse.Namespace) -> int:
    job: dict[str, Any] = client.ask("show", id=args.id, env=bool(args.env))["job"]
    if args.json:
        _print_json(job)
        return EXIT_OK
    print(f"job {job['id']} {display_text(str(job.get('name')))}  {job.get('state')}")
    print(f"  owner:     {job.get('owner')} (uid {job.get('uid')})")
    for key in ("kind", "group", "priority", "reason", "argv", "cwd", "exit_code"):
        if key in job and job[key] not in (None, ""):
            print(f"  {key + ':':<11}{display_text(str(job[key]))}")
    resources = job.get("resources") or {}
    print(f"  resources: {', '.join(f'{k} {v}' for k, v in resources.items() if v)}")
    if "paths" in job:
        print(f"  run dir:   {job['paths']['run_dir']}")
    print("  history:")
    for event in job.get("events", []):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["t"]))
        reason = f"  {display_text(event['reason'])}" if event.get("reason") else ""
        print(f"    {stamp}  {event['state']:<10}{reason}")
    return EXIT_OK


def _logs(client: TeamClient, args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    reply = client.ask("log", id=args.id, lines=args.lines)
    out.write(reply["data"].encode("utf-8", "surrogateescape"))
    out.flush()
    while args.follow and not reply["ended"]:
        time.sleep(0.2)
        reply = client.ask("log", id=args.id, offset=reply["offset"])
        out.write(reply["data"].encode("utf-8", "surrogateescape"))
        out.flush()
    return EXIT_OK


def _control(action: str) -> Callable[[TeamClient, argparse.Namespace], int]:
    def handler(client: TeamClient, args: argparse.Namespace) -> int:
        code = EXIT_OK
        for job_id in args.ids:
            try:
                own = _own_job_of(client, job_id) if action in ("cancel", "rm") else None
                result = client.ask("control", id=job_id, action=action)["result"]
                print(f"job {job_id}: {result}")
                if own is not None:
                    settle_own({own: (job_id, "cancelled" if action == "cancel" else "removed")})
            except Refused as error:
                if not client.used:
                    client.used = True
                print(f"workbench: {display_text(str(error))}", file=sys.stderr)
                code = max(code, error.code)
        return code

    return handler


def _own_job_of(client: TeamClient, job_id: int) -> int | None:
    """The id, in the caller's own home, of the built-in kind's job that team job `job_id`
    runs (its `spec.team_of`, see `queue_built_in`); None for any other job, or another
    user's (an admin cancelling it cannot write its owner's home)."""
    from workbench.paths import home_dir

    try:
        job = client.ask("show", id=job_id)["job"]
    except Refused:
        return None  # the control request says why
    return own_job_of(job, str(home_dir()))


def own_job_of(view: dict[str, Any], home: str) -> int | None:
    """The id of the job a team job runs in the own home `home` (its view's `spec.team_of`,
    see `queue_built_in`), or None (another kind, or another home)."""
    from workbench.db.team_ends import team_of_spec  # the one reading of `team_of`

    team_of = team_of_spec(view.get("spec"))
    return int(team_of["job"]) if team_of is not None and team_of["home"] == home else None


def settle_own(waiting: dict[int, tuple[int, str]]) -> None:
    """Cancel the jobs of the caller's own home (id -> (team job id, what became of it)) that
    still wait for their team job, which ended without running them (cancelled, removed,
    blocked by a failed dependency, refused): `teamrun.settle_unstarted`, whose reason begins
    like a stop by the system daemon's, so a retried team job runs them again. The system
    daemon settles them itself within a second or two (`workbench.daemon.teamsettle`); this
    is the fallback for a daemon that could not (or an older one), done where the owner's
    client sees such a team job. A job that started is settled by its team job."""
    if not waiting:
        return
    from workbench.daemon.teamrun import settle_unstarted
    from workbench.db.store import Store
    from workbench.paths import Home, home_dir

    store = Store.open(Home(home_dir()).state_db)
    try:
        for own_id, (team_id, what) in waiting.items():
            settle_unstarted(store, own_id, team_id, what)
    finally:
        store.close()


def settle_ended(views: list[dict[str, Any]]) -> None:
    """`settle_own` (the fallback of the system daemon's own settling) for the team jobs
    among `views` (the daemon's views of jobs) that ended without ever starting and run a
    job of the caller's own home (so a long `ls` opens the own home only when one needs it)."""
    from workbench.paths import home_dir

    home = str(home_dir())
    waiting = {}
    for view in views:
        never_ran = view.get("state") in _ENDED and not view.get("started_at")
        own = own_job_of(view, home) if never_ran else None  # one that ran: settled by teamrun
        if own is not None:
            waiting[own] = (int(view["id"]), str(view["state"]))
    settle_own(waiting)


def _priority(client: TeamClient, args: argparse.Namespace) -> int:
    client.ask("priority", id=args.id, priority=args.priority)
    print(f"job {args.id}: priority {args.priority}")
    return EXIT_OK


def _audit(client: TeamClient, args: argparse.Namespace) -> int:
    entries: list[dict[str, Any]] = client.ask("audit", job=args.job, limit=args.limit)["entries"]
    if args.json:
        _print_json(entries)
        return EXIT_OK
    for entry in entries:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["t"]))
        job = f"job {entry['job_id']}" if entry.get("job_id") is not None else "-"
        who = f"{entry['user']} ({entry['uid']})"
        detail = f"  ({display_text(str(entry['detail']))})" if entry.get("detail") else ""
        print(f"{stamp}  {who:<18} {entry['action']:<9} {job}{detail}")
    if not entries:
        print("no audit entries")
    return EXIT_OK


def _credentials(client: TeamClient, args: argparse.Namespace) -> int:
    """`workbench credentials ID...`: give the system daemon a job's `--secret-env` values
    again, from this shell's environment (exit 2 naming what this shell lacks)."""
    code = EXIT_OK
    for job_id in args.ids:
        needed: list[str] = client.ask("credentials", id=job_id)["needed"]
        missing = [name for name in needed if name not in os.environ]
        if missing:
            print(
                f"job {job_id}: this shell does not have {', '.join(missing)}; run it again"
                " from a shell that has them (export NAME=...)",
                file=sys.stderr,
            )
            code = max(code, EXIT_USAGE)
            continue
        values = {name: os.environ[name] for name in needed}
        handed = client.ask("credentials", id=job_id, values=values)["handed"]
        print(f"job {job_id}: handed {', '.join(handed)}")
    return code


_HANDLERS: dict[str, Callable[[TeamClient, argparse.Namespace], int]] = {
    "credentials": _credentials,
    "submit": _submit,
    "ls": _ls,
    "show": _show,
    "logs": _logs,
    "priority": _priority,
    "wait": _wait,
    "audit": _audit,
    **{a: _control(a) for a in ("cancel", "pause", "resume", "retry", "rm")},
}
