"""Who may see and do what in a system home (team mode): one policy the system daemon's gate
consults for every request, instead of checks spread through its handlers.

- Everyone sees every job's id, owner, name, kind, state, group, priority, resources, reason
  and times (what `squeue` shows everyone).
- A job's command, working directory, environment, spec and log: only its owner.
- Acting on a job (cancel, pause, resume, retry, rm, priority): only its owner.
- Root and members of `[team] admin_group` see and act on every job."""

from __future__ import annotations

import grp
import os
from dataclasses import dataclass
from typing import Any

from workbench.daemon.identity import Peer, user_name
from workbench.db.store import Job

#: What everyone may see of any job (keys of `Job.to_json`), besides its owner.
PUBLIC_FIELDS = (
    "id", "name", "kind", "state", "reason", "priority", "group", "resources", "granted_gpus",
    "created_at", "started_at", "ended_at", "exit_code", "attempt", "retries", "executor",
    "pipeline_id", "stage", "uid",
)  # fmt: skip


class NotPermitted(PermissionError):
    """A request the policy refuses; the message names the user, the job and the right."""


@dataclass(frozen=True)
class Rights:
    """The policy. `admin_gid`: the group whose members act on all jobs (None: only root)."""

    admin_gid: int | None = None

    @classmethod
    def from_group(cls, name: str | None) -> Rights:
        """The policy for `[team] admin_group = name`. An unknown group name gives no admin
        but root (never everyone)."""
        if not name:
            return cls(None)
        try:
            return cls(grp.getgrnam(name).gr_gid)
        except KeyError:
            return cls(None)

    def is_admin(self, peer: Peer) -> bool:
        """Root, or a member of the admin group."""
        return peer.uid == 0 or (self.admin_gid is not None and self.admin_gid in peer.groups)

    def owns(self, peer: Peer, job: Job) -> bool:
        """Whether `job` is `peer`'s own (jobs without an owner are root's)."""
        return (job.uid if job.uid is not None else 0) == peer.uid

    def sees_details(self, peer: Peer, job: Job) -> bool:
        """Command, environment, spec and log of `job`: its owner and admins."""
        return self.owns(peer, job) or self.is_admin(peer)

    def may_act(self, peer: Peer, job: Job) -> bool:
        """Cancel, pause, resume, retry, rm, priority on `job`: its owner and admins."""
        return self.owns(peer, job) or self.is_admin(peer)

    def check_details(self, peer: Peer, job: Job, what: str) -> None:
        """Raise NotPermitted unless `peer` may see `what` (log, env, spec) of `job`."""
        if not self.sees_details(peer, job):
            raise NotPermitted(
                f"job {job.id} is {owner_name(job)}'s: {peer.name} may not read its {what}"
                " (only its owner and the admin group may)"
            )

    def check_act(self, peer: Peer, job: Job, action: str) -> None:
        """Raise NotPermitted unless `peer` may `action` `job`."""
        if not self.may_act(peer, job):
            raise NotPermitted(
                f"job {job.id} is {owner_name(job)}'s: {peer.name} may not {action} it"
                " (only its owner and the admin group may)"
            )

    def view(self, peer: Peer, job: Job, full: dict[str, Any]) -> dict[str, Any]:
        """`full` (the job as `Job.to_json` gives it) as `peer` may see it: whole for its owner
        and admins, else only `PUBLIC_FIELDS`; with `owner` (a name) always."""
        if self.sees_details(peer, job):
            shown = dict(full)
        else:
            shown = {key: full[key] for key in PUBLIC_FIELDS if key in full}
            shown["name"] = public_name(job)
        shown["owner"] = owner_name(job)
        return shown


def public_name(job: Job) -> str:
    """A job's name as others see it: the name its owner gave, but for a name made from the
    command line (a command job's default, `queue.requests`), only the program's own name: the
    command and its arguments are the owner's to read."""
    return public_name_of(job.kind, job.name, job.argv or job.spec.get("argv"))


def public_name_of(kind: str, name: str, argv: list[Any] | None) -> str:
    """`public_name` from a job's kind, name and command line (a listing's narrow row)."""
    if kind == "command" and argv and name == " ".join(str(a) for a in argv)[:60]:
        return os.path.basename(str(argv[0])) or "command"
    return name


def owner_name(job: Job) -> str:
    """The user name of a job's owner (root for jobs without one)."""
    return user_name(job.uid if job.uid is not None else 0)
