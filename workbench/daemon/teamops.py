"""What the system daemon does for each request on its socket (team mode): submit, list, show,
log, control, priority, audit, states. Every handler is given the peer (from the kernel,
`workbench.daemon.identity`) and consults one policy (`workbench.daemon.rights`); a request's
own fields never name who asks. Handlers raise NotPermitted, JobError or RequestError; the
gate turns those into replies with exit codes."""

from __future__ import annotations

import dataclasses
import math
import os
import stat
from collections.abc import Callable
from typing import Any

from workbench import safefs
from workbench.daemon import sharing
from workbench.daemon.credentials import MAX_DATAGRAM_BYTES
from workbench.daemon.identity import Peer, user_name
from workbench.daemon.rights import NotPermitted, Rights, owner_name
from workbench.db.credentials import held_records
from workbench.db.store import ENDED, Job, JobRequest, Store
from workbench.jobmodel.resources import Resources
from workbench.jobmodel.secrets import HeldCredentials
from workbench.jobmodel.states import JobState
from workbench.paths import Home
from workbench.queue.requests import check_group
from workbench.queue.spec import SpecError, check_environment

SHARE_OPS = ("share-space", "share", "unshare", "shared")
CONTROL_ACTIONS = ("cancel", "pause", "resume", "retry", "rm")
MAX_JOBS_PER_SUBMIT = 10_000
MAX_LOG_CHUNK = 4 << 20  # bytes of a log sent per request
MAX_LISTED = 5000


class RequestError(ValueError):
    """A request that is malformed (a missing or mistyped field): exit 2."""


def _field(
    data: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None
) -> Any:
    value = data.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise RequestError(f"field {key!r}: expected a number")
    if not isinstance(value, kind):
        raise RequestError(f"field {key!r}: expected {getattr(kind, '__name__', kind)}")
    return value


def _job_id(data: dict[str, Any]) -> int:
    value = data.get("id")
    if type(value) is not int or not 0 < value < 2**63:
        raise RequestError("field 'id': expected a job id")
    return value


def _strings(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
        raise RequestError(f"field {key!r}: expected a list of strings")
    return value


def request_from_wire(data: Any, uid: int) -> JobRequest:
    """A JobRequest from one submitted job (as `request_to_wire` wrote it), owned by `uid`
    (the peer's, whatever the data says). Types and ranges are checked; a pipeline, a
    recorded reproduction and another executor than `local` are not taken over the socket.
    Raises RequestError or SpecError naming the field."""
    if not isinstance(data, dict):
        raise RequestError("a job must be a JSON object")
    resources = _field(data, "resources", dict, {})
    gpus = _field(resources, "gpus", (int, float), 0.0)
    cpus = _field(resources, "cpus", (int, float), 0.0)
    for key, value in (("gpus", gpus), ("cpus", cpus)):
        if not math.isfinite(value) or value < 0:
            raise RequestError(f"field 'resources.{key}': must be a finite number >= 0")
    sizes = {}
    for key in ("gpu_mem", "mem"):
        value = resources.get(key)
        if value is not None and (type(value) is not int or not 0 <= value < 2**63):
            raise RequestError(f"field 'resources.{key}': expected bytes")
        sizes[key] = value
    env = _field(data, "env", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise RequestError("field 'env': expected strings")
    check_environment(env, "the submitted environment")
    argv = data.get("argv")
    if argv is not None:
        argv = _strings(argv, "argv")
        if not argv or any("\0" in w for w in argv):
            raise RequestError("field 'argv': empty, or a NUL in a word")
    cwd = _field(data, "cwd", str, "")
    if not cwd.startswith("/") or "\0" in cwd:
        raise RequestError("field 'cwd': expected an absolute path")
    after = []
    for item in _field(data, "after", list, []):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or type(item[0]) is not int
            or item[1] not in ("ok", "any", "fail")
        ):
            raise RequestError("field 'after': expected [job id, 'ok'|'any'|'fail'] pairs")
        after.append((item[0], item[1]))
    time_limit = data.get("time_limit")
    if time_limit is not None and (
        isinstance(time_limit, bool)
        or not isinstance(time_limit, (int, float))
        or not 0 < time_limit < 1e12
    ):
        raise RequestError("field 'time_limit': expected seconds")
    priority = _field(data, "priority", int, 0)
    retries = _field(data, "retries", int, 0)
    if not -(2**31) < priority < 2**31 or not 0 <= retries < 1000:
        raise RequestError("field 'priority' or 'retries': out of range")
    kind = _field(data, "kind", str, "command")
    if kind != "command":
        raise RequestError(
            f"the system daemon takes command jobs only (got kind {kind!r}): the client queues"
            " a built-in kind in its user's own home and sends the command that runs it there"
            " (workbench.daemon.teamrun)"
        )
    executor = _field(data, "executor", str, "local")
    if executor != "local":
        raise RequestError("team mode runs jobs on this machine only (executor 'local')")
    if data.get("slurm"):
        raise RequestError(
            "field 'slurm': per-job Slurm options, but team mode runs jobs on this machine"
            " only (the home's executor is local), where they would be ignored"
        )
    credentials = _secret_env(data, env)
    if credentials is not None:
        env = {k: v for k, v in env.items() if k not in credentials.values}
    return JobRequest(
        name=_field(data, "name", str, "job")[:1000],
        kind=kind,
        spec=_field(data, "spec", dict, {}),
        cwd=cwd,
        env=env,
        argv=argv,
        priority=priority,
        group=check_group(_field(data, "group", str, "default"), "field 'group'"),
        resources=Resources(
            float(gpus),
            sizes["gpu_mem"],
            float(cpus),
            sizes["mem"],
            _field(resources, "mig_profile", str),
        ),
        retries=retries,
        time_limit=None if time_limit is None else float(time_limit),
        fail_unrunnable=bool(data.get("fail_unrunnable", False)),
        after=tuple(after),
        paused=bool(data.get("paused", False)),
        preemptible=bool(data.get("preemptible", True)),
        uid=uid,
        credentials=credentials,
    )


def _secret_env(data: dict[str, Any], env: dict[str, str]) -> HeldCredentials | None:
    """The job's `secret_env` (name -> value, `submit --secret-env`) as credentials the daemon
    holds in memory only (workbench.daemon.credentials), under a token it makes; None when
    there are none. Raises RequestError or SpecError naming the field."""
    values = _field(data, "secret_env", dict, {})
    if not values:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
        raise RequestError("field 'secret_env': expected strings")
    check_environment(values, "field 'secret_env'")
    if sum(len(k) + len(v) for k, v in values.items()) > MAX_DATAGRAM_BYTES:
        raise RequestError(f"field 'secret_env': more than {MAX_DATAGRAM_BYTES} bytes")
    import secrets

    return HeldCredentials(secrets.token_hex(16), dict(values), tuple(sorted(values)))


MAX_PIPELINE_TEXT = 4096  # characters of a pipeline's name, path or stage name


def pipeline_from_wire(
    request: dict[str, Any], uid: int
) -> tuple[str, str, list[tuple[JobRequest, list[tuple[int, str]]]]]:
    """One pipeline's `submit` (`workbench --batch` in team mode): `pipeline` is `{"name",
    "path"}` (its file), and each of `jobs` is a job as `request_from_wire` reads it with its
    `stage` (a name) and `after_index`, `[[index, 'ok'|'any'|'fail'], ...]` naming earlier jobs
    of the same request by 0-based position. Returns (name, path, [(request, links)]) for
    `Store.submit_linked`, every job owned by `uid` (the peer's). Raises RequestError naming
    the job and field, or SpecError."""
    head = _field(request, "pipeline", dict, {})
    texts = [_field(head, key, str, "") for key in ("name", "path")]
    if not all(0 < len(text) <= MAX_PIPELINE_TEXT and "\0" not in text for text in texts):
        raise RequestError("field 'pipeline': expected its name and path")
    jobs = request.get("jobs")
    if not isinstance(jobs, list) or not 0 < len(jobs) <= MAX_JOBS_PER_SUBMIT:
        raise RequestError(f"field 'jobs': 1 to {MAX_JOBS_PER_SUBMIT} jobs")
    built = []
    for position, data in enumerate(jobs):
        job = request_from_wire(data, uid)
        stage = data.get("stage")
        if not isinstance(stage, str) or not 0 < len(stage) <= MAX_PIPELINE_TEXT:
            raise RequestError(f"job #{position}: field 'stage': expected the stage's name")
        links = []
        for item in _field(data, "after_index", list, []):
            if (
                not isinstance(item, list)
                or len(item) != 2
                or type(item[0]) is not int
                or not 0 <= item[0] < position
                or item[1] not in ("ok", "any", "fail")
            ):
                raise RequestError(
                    f"job #{position}: field 'after_index': expected [index, 'ok'|'any'|'fail']"
                    f" pairs naming earlier jobs of this request (0 to {position - 1})"
                )
            links.append((item[0], item[1]))
        built.append((dataclasses.replace(job, stage=stage), links))
    return texts[0], texts[1], built


class TeamOps:
    """The handlers. `rights()` gives the policy in force (config.toml may change it);
    `changed()` wakes the scheduling loop after a write."""

    def __init__(
        self,
        home: Home,
        store: Store,
        rights: Callable[[], Rights],
        changed: Callable[[], None],
        secret_words: Callable[[], tuple[str, ...]],
        hold: Callable[[str, dict[str, str]], None],
        removing: Callable[[Job], None] | None = None,
    ):
        self.home = home
        self.store = store
        self.rights = rights
        self.changed = changed
        self.secret_words = secret_words
        # Keeps a job's credentials (token, name -> value) in the daemon's memory only:
        # `CredentialVault.put`.
        self.hold = hold
        # Told of each job removed (`rm`), as it was: a team job's own-home job is settled
        # by `workbench.daemon.teamsettle.TeamSettler.removed`.
        self.removing = removing
        self.sharing = sharing.Sharing(home, store, rights)

    def handle(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """The reply to `request` from `peer` (without "ok"). Raises as the module says."""
        op = request.get("op")
        handler = {
            "ping": self.ping,
            "submit": self.submit,
            "list": self.list,
            "show": self.show,
            "log": self.log,
            "control": self.control,
            "priority": self.priority,
            "audit": self.audit,
            "states": self.states,
            "credentials": self.credentials,
            "jobs": self.jobs,
            "page": self.page,
            "telemetry": self.telemetry,
            **{op: self.share_op for op in SHARE_OPS},
        }.get(op if isinstance(op, str) else "")
        if handler is None:
            raise RequestError(f"unknown op {op!r}")
        self.store.act_as(peer.uid)
        try:
            return handler(peer, request)
        finally:
            self.store.act_as(None)

    def share_op(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """A dataset-sharing request (`workbench.daemon.sharing`)."""
        try:
            return self.sharing.handle(str(request["op"]), peer, request)
        except sharing.RequestError as error:
            raise RequestError(str(error)) from None

    def _view(self, peer: Peer, job: Job, with_env: bool = False) -> dict[str, Any]:
        rights = self.rights()
        full = job.to_json(
            with_env=with_env and rights.sees_details(peer, job),
            secret_words=self.secret_words(),
        )
        return rights.view(peer, job, full)

    def ping(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """Who the daemon takes the caller for."""
        return {"uid": peer.uid, "user": peer.name, "admin": self.rights().is_admin(peer)}

    def submit(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """Queue the jobs in `request["jobs"]` (all or none) as the peer's; `{"ids": [...]}`.
        With `pipeline`, they are one pipeline's (`submit_pipeline`)."""
        if request.get("pipeline") is not None:
            return self.submit_pipeline(peer, request)
        jobs = request.get("jobs")
        if not isinstance(jobs, list) or not 0 < len(jobs) <= MAX_JOBS_PER_SUBMIT:
            raise RequestError(f"field 'jobs': 1 to {MAX_JOBS_PER_SUBMIT} jobs")
        built = [request_from_wire(job, peer.uid) for job in jobs]
        for job in built:
            if job.credentials is not None:
                self.hold(job.credentials.token, job.credentials.values)
        ids = self.store.submit_many(built)
        self.changed()
        return {"ids": ids, "jobs": [self._view(peer, self.store.get(i)) for i in ids]}

    def submit_pipeline(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """Queue one pipeline's jobs (`workbench --batch`) as the peer's, all or none, recorded
        as a pipeline with each job's stage (`pipeline_from_wire`); `{"pipeline_id", "ids",
        "jobs"}`."""
        name, path, built = pipeline_from_wire(request, peer.uid)
        for job, _ in built:
            if job.credentials is not None:
                self.hold(job.credentials.token, job.credentials.values)
        pipeline_id, ids = self.store.submit_linked(name, path, built)
        self.changed()
        jobs = [self._view(peer, self.store.get(i)) for i in ids]
        return {"pipeline_id": pipeline_id, "ids": ids, "jobs": jobs}

    def jobs(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """The jobs in `ids` as the peer may see them (as `show` without history), in the order
        asked; removed ones left out: `{"jobs": [...]}` (a `--batch` follows its stages)."""
        ids = request.get("ids")
        if not isinstance(ids, list) or not all(type(i) is int for i in ids) or len(ids) > 10_000:
            raise RequestError("field 'ids': expected job ids")
        found = (self.store.find(i) for i in ids)
        return {"jobs": [self._view(peer, job) for job in found if job is not None]}

    def list(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """Every job's public view (its owner sees the rest): active jobs and the newest
        `recent` ended ones, or every job (`all`), or those in `states`."""
        states = request.get("states")
        if states is not None:
            states = [JobState(s) for s in _strings(states, "states") if s in set(JobState)]
        recent = _field(request, "recent", int, 10)
        if request.get("all") or states:
            jobs = self.store.list_jobs(states=states, limit=MAX_LISTED, light="no-env")
        else:
            active = [s for s in JobState if s not in ENDED]
            jobs = [
                *self.store.list_jobs(states=ENDED, limit=max(0, recent), light="no-env"),
                *self.store.list_jobs(states=active, limit=MAX_LISTED, light="no-env"),
            ]
            jobs.sort(key=lambda j: j.id)
        return {"jobs": [self._view(peer, job) for job in jobs]}

    def show(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """One job as the peer may see it, with its history (and audit, for whom may see its
        details); its environment only when asked and allowed."""
        job = self.store.get(_job_id(request))
        rights = self.rights()
        if request.get("env"):
            rights.check_details(peer, job, "environment")
        out = self._view(peer, job, with_env=bool(request.get("env")))
        out["events"] = [
            {"t": e.t, "state": e.state, "reason": e.reason, "event": e.event}
            for e in self.store.events(job.id)
        ]
        if rights.sees_details(peer, job):
            out["audit"] = [_audit_json(a) for a in self.store.audit_log(job_id=job.id)]
            run_dir = self.home.run_dir(job.id)
            out["paths"] = {"run_dir": str(run_dir), "log": str(run_dir / "log")}
        return {"job": out}

    def log(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """A piece of a job's log: from byte `offset` (default: the last `lines` lines, or all),
        at most MAX_LOG_CHUNK bytes; `{"data", "offset" (where the next piece starts),
        "ended", "state"}`. The file is opened without following links and must be a regular
        file owned by the job's owner (nothing else a user could plant there is read)."""
        job = self.store.get(_job_id(request))
        self.rights().check_details(peer, job, "log")
        path = self.home.run_dir(job.id) / "log"
        offset = request.get("offset")
        lines = request.get("lines")
        owner = job.uid if job.uid is not None else 0
        ended = job.state in ENDED
        try:
            fd = safefs.open_file(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return {"data": "", "offset": 0, "ended": ended, "state": str(job.state)}
        except OSError as error:
            raise RequestError(f"job {job.id}: its log cannot be read ({error.strerror})") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != owner:
                raise RequestError(f"job {job.id}: its log is not a file of its owner's")
            size = info.st_size
            if type(offset) is int and 0 <= offset <= size:
                start = offset
            elif type(lines) is int and lines >= 0:
                start = _tail_start(fd, size, lines)
            else:
                start = max(0, size - MAX_LOG_CHUNK)
            data = os.pread(fd, min(MAX_LOG_CHUNK, size - start), start)
        finally:
            os.close(fd)
        return {
            "data": data.decode("utf-8", "surrogateescape"),
            "offset": start + len(data),
            "ended": ended and start + len(data) >= size,
            "state": str(job.state),
        }

    def control(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """cancel / pause / resume / retry / rm of the peer's own job (any, for admins)."""
        action = request.get("action")
        if action not in CONTROL_ACTIONS:
            raise RequestError(f"field 'action': one of {', '.join(CONTROL_ACTIONS)}")
        job = self.store.get(_job_id(request))
        self.rights().check_act(peer, job, str(action))
        result = self.store.request(job.id, str(action))
        if action == "rm":
            from workbench.queue.retention import remove_run_dir

            remove_run_dir(self.home, job.id)
            if self.removing is not None:
                self.removing(job)
        self.changed()
        return {"result": result}

    def credentials(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """Hand the credentials of the peer's own job again (a restarted daemon lost them):
        without `values`, `{"needed": [names]}`; with `values` (name -> value, every needed
        name), held in memory and `{"handed": [names]}`. Only the owner: a job's credentials
        are its owner's to give."""
        job = self.store.get(_job_id(request))
        if not self.rights().owns(peer, job):
            raise NotPermitted(
                f"job {job.id} is {owner_name(job)}'s: {peer.name} may not give its"
                " credentials (only its owner may)"
            )
        record = held_records(self.store, [job.id]).get(job.id)
        if record is None:
            raise RequestError(f"job {job.id}: it has no credentials held for it")
        values = _field(request, "values", dict, {})
        if not values:
            return {"needed": list(record.names)}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
            raise RequestError("field 'values': expected strings")
        missing = [name for name in record.names if name not in values]
        if missing:
            raise RequestError(f"job {job.id}: missing {', '.join(missing)}")
        kept = {name: values[name] for name in record.names}
        check_environment(kept, "field 'values'")
        if sum(len(k) + len(v) for k, v in kept.items()) > MAX_DATAGRAM_BYTES:
            raise RequestError(f"field 'values': more than {MAX_DATAGRAM_BYTES} bytes")
        self.hold(record.token, kept)
        self.changed()
        return {"handed": list(record.names)}

    def priority(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """Set the priority of the peer's own job (any, for admins)."""
        value = request.get("priority")
        if type(value) is not int or not -(2**31) < value < 2**31:
            raise RequestError("field 'priority': expected an integer")
        job = self.store.get(_job_id(request))
        self.rights().check_act(peer, job, "re-prioritise")
        self.store.set_priority(job.id, value)
        self.changed()
        return {"priority": value}

    def audit(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """Every intent: when, who (name and uid), what, which job; the detail only of jobs
        the peer may see the details of."""
        job_id = request.get("job")
        limit = request.get("limit")
        entries = self.store.audit_log(
            job_id=job_id if type(job_id) is int else None,
            limit=limit if type(limit) is int and limit > 0 else None,
        )
        rights = self.rights()
        owners: dict[int, Job | None] = {}
        out = []
        for entry in entries:
            item = _audit_json(entry)
            if entry.job_id is not None:
                if entry.job_id not in owners:
                    owners[entry.job_id] = self.store.find(entry.job_id)
                job = owners[entry.job_id]
                if job is None or not rights.sees_details(peer, job):
                    item["detail"] = None
            out.append(item)
        return {"entries": out}

    def states(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """The states of the jobs in `ids` (public): `{"states": {id: state}}`."""
        ids = request.get("ids")
        if not isinstance(ids, list) or not all(type(i) is int for i in ids) or len(ids) > 10_000:
            raise RequestError("field 'ids': expected job ids")
        return {"states": {str(k): str(v) for k, v in self.store.states_of(ids).items()}}

    def page(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """A filtered window of the job table, as the peer may see it (the TUI's Queue):
        `workbench.daemon.teampages.page`."""
        from workbench.daemon import teampages

        try:
            return teampages.page(
                self.store, self.rights(), peer, request, lambda job: self._view(peer, job)
            )
        except teampages.PageError as error:
            raise RequestError(str(error)) from None

    def telemetry(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        """The machine's latest telemetry and history (the TUI's Dashboard; machine-level
        facts, everyone's to see): `workbench.daemon.teampages.telemetry`."""
        from workbench.daemon import teampages

        try:
            return teampages.telemetry(self.store, self.rights(), peer, request)
        except teampages.PageError as error:
            raise RequestError(str(error)) from None


def _audit_json(entry: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict(entry.to_json())
    out["user"] = user_name(entry.uid)
    return out


def _tail_start(fd: int, size: int, lines: int) -> int:
    """Where the last `lines` lines of the file at `fd` (of `size` bytes) begin."""
    if lines == 0:
        return size
    start = max(0, size - MAX_LOG_CHUNK)
    data = os.pread(fd, size - start, start)
    cut = len(data)
    if data.endswith(b"\n"):
        cut -= 1
    for _ in range(lines):
        cut = data.rfind(b"\n", 0, cut)
        if cut < 0:
            return start
    return start + cut + 1


__all__ = ["RequestError", "SpecError", "TeamOps", "pipeline_from_wire", "request_from_wire"]
