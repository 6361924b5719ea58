"""The screens' data in team mode: the team queue and the machine's telemetry from the system
daemon, one request on its socket per read (`workbench.daemon.wire`), as the kernel says who
asks; the lake, runs and models stay in the user's own home (the per-user store, as `Source`).

Every read runs in the screen's worker thread, never on the event loop. A read the daemon does
not answer leaves the last answer on screen and says so (`daemon_running`, `down_text`); a
refusal (another user's log) is shown as a message; neither raises into a screen."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from screens.source import JobPage, LogPiece, Source
from workbench.paths import Home

if TYPE_CHECKING:
    from workbench.db.job_pages import JobFilter
    from workbench.db.store import Job, JobEvent

REQUEST_TIMEOUT_S = 10.0  # one read: the daemon answers in ms; a stuck one is "not answering"
LOG_TAIL_LINES = 2000  # lines of a log the job screen starts from


class TeamRefused(Exception):
    """The system daemon refused a request: its message (naming whose job it is, for a
    request the rights refuse) and exit code (4: not permitted)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class TeamUnreachable(OSError):
    """The system daemon did not answer (not running, or its socket gone)."""


class TeamActions:
    """What the screens' actions call (as `workbench.daemon.client.Client` offers them),
    as requests to the system daemon: the peer's own jobs only, unless an admin."""

    def __init__(self, source: TeamSource):
        self.source = source

    def control(self, job_id: int, action: str) -> str:
        """cancel / pause / resume / retry / rm; what happened. Raises TeamRefused (another
        user's job: the message says whose) or TeamUnreachable."""
        from workbench.cli.team import own_job_of, settle_own
        from workbench.paths import home_dir

        own = None
        if action in ("cancel", "rm"):  # a built-in kind's job at home waits for this one
            own = own_job_of(self.source.ask("show", id=job_id)["job"], str(home_dir()))
        result = str(self.source.ask("control", id=job_id, action=action)["result"])
        if own is not None:
            settle_own({own: (job_id, "cancelled" if action == "cancel" else "removed")})
        return result

    def set_priority(self, job_id: int, priority: int) -> None:
        self.source.ask("priority", id=job_id, priority=priority)

    def submit(self, request: Any) -> int:
        """Queue one job in the team queue (a built-in kind runs in the user's own home, as
        `workbench submit` does in team mode); its team job id."""
        from workbench.cli.team import queue_built_in, request_to_wire, tell_built_in, withdraw

        own = queue_built_in([request])
        try:
            reply = self.source.ask("submit", jobs=[request_to_wire(own.get(0, (request, 0))[0])])
        except BaseException:
            withdraw(own, "the system daemon did not take it")
            raise
        ids = [int(i) for i in reply["ids"]]
        tell_built_in(own, ids)
        return ids[0]

    def submit_pipeline(self, pipeline: Any) -> tuple[int, list[int]]:
        """Queue a pipeline file's stages in the team queue (as `--batch` does in team mode,
        which refuses Slurm options: SpecError)."""
        from workbench.cli.team import TeamClient
        from workbench.cli.teambatch import check_team_stage, submit_pipeline
        from workbench.queue.pipeline import load_pipeline

        checked = load_pipeline(pipeline.path, check_stage=check_team_stage, capture=False)
        source = self.source

        class Client(TeamClient):
            def ask(self, op: str, **fields: Any) -> dict[str, Any]:
                return source.ask(op, **fields)

        return submit_pipeline(Client(source.socket_path), checked)


class TeamSource(Source):
    """The live source in team mode: `socket_path` is the system daemon's
    (`workbench.system.system_socket`), `home` the user's own (Data, Runs and Models)."""

    def __init__(self, home: Home, socket_path: str):
        super().__init__(home)
        self.socket_path = socket_path
        self.queue_label = "team queue"
        self.answering = True
        self.trouble: str | None = None  # why the last read got no answer
        self._version = 0
        self._pages: dict[JobFilter, JobPage] = {}
        self._jobs: dict[int, tuple[Job, list[JobEvent]]] = {}

    # ---- requests ------------------------------------------------------------------------

    def ask(self, op: str, **fields: Any) -> dict[str, Any]:
        """The daemon's reply to `op` (run in the caller's thread: a worker). Raises
        TeamUnreachable or TeamRefused."""
        from workbench.daemon.wire import ask

        try:
            reply = ask(self.socket_path, {"op": op, **fields}, timeout_s=REQUEST_TIMEOUT_S)
        except OSError as error:  # refused, gone, timed out, or a broken reply (WireError)
            self.answering = False
            self.trouble = f"the system daemon is not answering ({error.strerror or error})"
            raise TeamUnreachable(self.trouble) from None
        self.answering, self.trouble = True, None
        if not reply.get("ok"):
            code = reply.get("exit")
            raise TeamRefused(str(reply.get("error")), code if type(code) is int else 1)
        return reply

    def act(self, fn: Any) -> Any:
        """`fn(actions)` run on the actions thread, `actions` a TeamActions."""
        return self._actor.submit(lambda: fn(TeamActions(self))).result()

    def down_text(self) -> str:
        return f"{self.trouble or 'the system daemon is not answering'}: its last answer shows"

    def daemon_running(self) -> bool:
        """Whether the last request got an answer."""
        return self.answering

    def data_version(self) -> int:
        """A new number for every poll: the daemon's store is not ours to watch, so each poll
        reads its page again (one request a second)."""
        self._version += 1
        return self._version

    # ---- the queue -----------------------------------------------------------------------

    def job_page(self, where: JobFilter, offset: int, limit: int) -> JobPage:
        """The window of the team queue (the `page` request); the last one read for `where`
        (or none) when the daemon does not answer or refuses."""
        from workbench.cli.teambatch import job_from_view

        try:
            reply = self.ask(
                "page",
                state=where.state,
                text=where.text,
                owner=where.owner,
                offset=max(0, offset),
                limit=max(0, min(limit, 1000)),
            )
        except (TeamUnreachable, TeamRefused) as error:
            if isinstance(error, TeamRefused):
                self.answering, self.trouble = False, str(error)
            return self._pages.get(where) or JobPage(0, 0, [], {})
        page = JobPage(
            int(reply["total"]),
            int(reply["offset"]),
            [job_from_view(view) for view in reply["jobs"]],
            {str(k): int(v) for k, v in reply["counts"].items()},
            {int(k): float(v) for k, v in (reply.get("idle") or {}).items()},
        )
        if limit:
            self._pages = {where: page}
        return page

    def job_position(self, where: JobFilter, job_id: int) -> int:
        try:
            reply = self.ask(
                "page",
                state=where.state,
                text=where.text,
                owner=where.owner,
                limit=0,
                position_of=job_id,
            )
        except (TeamUnreachable, TeamRefused):
            return 0
        return int(reply.get("position") or 0)

    def job(self, job_id: int) -> Job | None:
        """The job as the user may see it, with its history (one `show` request; `events`
        then gives the history it brought). None when it is gone; the last one read when the
        daemon does not answer."""
        from workbench.cli.teambatch import job_from_view
        from workbench.db.store import JobEvent

        try:
            shown = self.ask("show", id=job_id)["job"]
        except TeamUnreachable:
            known = self._jobs.get(job_id)
            return known[0] if known else None
        except TeamRefused:
            self._jobs.pop(job_id, None)
            return None
        events = [
            JobEvent(job_id, float(e["t"]), str(e["state"]), e.get("reason"), e.get("event"))
            for e in shown.get("events") or []
        ]
        job = job_from_view(shown)
        self._jobs = {job_id: (job, events)}
        return job

    def events(self, job_id: int) -> list[JobEvent]:
        known = self._jobs.get(job_id)
        if known is None and self.job(job_id) is not None:
            known = self._jobs.get(job_id)
        return list(known[1]) if known else []

    def last_metrics(self, job_id: int) -> dict[str, float | None]:
        """The last metrics of a built-in kind's run, which lives in the user's own home (the
        team job names it: `spec.team_of`); none for other jobs."""
        known = self._jobs.get(job_id)
        team_of = (known[0].spec.get("team_of") if known else None) or {}
        own = team_of.get("job")
        if type(own) is not int or team_of.get("home") != str(self.home.root):
            return {}
        try:
            return self.read(lambda store: store.last_metrics(own))
        except Exception:  # the user's home without that job (removed): nothing to show
            return {}

    def run_dir(self, job: Job) -> None:
        """Not read here: the run folder is in the system home (what it recorded comes with
        the job)."""
        return None

    def log_piece(self, job_id: int, offset: int | None) -> LogPiece | None:
        """The job's log from byte `offset` (None: its last LOG_TAIL_LINES lines), one `log`
        request; another user's log comes back as `refused`, the daemon's words."""
        try:
            if offset is None:
                reply = self.ask("log", id=job_id, lines=LOG_TAIL_LINES)
            else:
                reply = self.ask("log", id=job_id, offset=offset)
        except TeamRefused as error:
            return LogPiece("", offset, refused=str(error))
        except TeamUnreachable:
            return LogPiece("", None)
        data = str(reply.get("data") or "")
        end = int(reply.get("offset") or 0)
        start = end - len(data.encode("utf-8", "surrogateescape"))
        return LogPiece(data, end, reset=offset is not None and start != offset)

    # ---- the machine ---------------------------------------------------------------------

    def telemetry(self) -> dict[str, Any] | None:
        """The system daemon's latest sample (None when it does not answer: the Dashboard then
        samples once by itself)."""
        try:
            latest = self.ask("telemetry")["latest"]
        except (TeamUnreachable, TeamRefused):
            return None
        return dict(latest) if isinstance(latest, dict) else None

    def history(self, seconds: float, bucket_s: float | None = None) -> list[dict[str, Any]]:
        try:
            rows = self.ask("telemetry", history=seconds, bucket_s=bucket_s)["history"]
        except (TeamUnreachable, TeamRefused):
            return []
        return list(rows or [])
