"""The system daemon's `credentials` request (team mode, `workbench credentials ID`): what it
takes back is held to the same bounds as what `submit --secret-env` hands over."""

from __future__ import annotations

import os

import pytest

from workbench.daemon.credentials import MAX_DATAGRAM_BYTES
from workbench.daemon.identity import Peer
from workbench.daemon.rights import Rights
from workbench.daemon.teamops import RequestError, TeamOps
from workbench.db.store import HeldCredentials, JobRequest, Store
from workbench.paths import Home


def _ops(home: Home, held: dict[str, dict[str, str]]) -> tuple[TeamOps, Store, int]:
    store = Store.open(home.state_db)
    secret = HeldCredentials("t0k", {"A": "s"}, ("A",))
    (job_id,) = store.submit_many(
        [JobRequest("j", "command", {}, "/", {}, argv=["true"], uid=os.getuid(),
                    credentials=secret, paused=True)]
    )  # fmt: skip
    ops = TeamOps(home, store, Rights, lambda: None, lambda: (), lambda t, v: held.update({t: v}))
    return ops, store, job_id


def test_credentials_given_again_are_bounded_as_at_submit(home: Home) -> None:
    """`submit --secret-env` refuses values over MAX_DATAGRAM_BYTES, but `credentials` held a
    value up to the socket's 8 MiB frame, which the job's exec then could not carry: now the
    same bound, exit 2 naming the field; names it does not need are neither checked nor kept."""
    held: dict[str, dict[str, str]] = {}
    ops, store, job_id = _ops(home, held)
    peer = Peer(os.getpid(), os.getuid(), os.getgid(), "me", frozenset({os.getgid()}))
    try:
        with pytest.raises(RequestError, match="field 'values': more than"):
            ops.credentials(peer, {"id": job_id, "values": {"A": "x" * MAX_DATAGRAM_BYTES}})
        assert held == {}
        ops.credentials(peer, {"id": job_id, "values": {"A": "s", "B=": "ignored"}})
        assert held == {"t0k": {"A": "s"}}
    finally:
        store.close()
