"""A request token is an idempotency key: the same intake datagram sent twice (a client that
resent it, a duplicated packet, a replay by the same user) queues one job and both answers
name it."""

from __future__ import annotations

import pytest
from test_intake import _datagram, _jobs, _request

from workbench.daemon.client import ensure_daemon
from workbench.paths import Home


@pytest.fixture
def daemon(home: Home) -> Home:
    ensure_daemon(home)
    assert home.intake_socket.exists()
    return home


def test_the_same_datagram_sent_twice_queues_one_job(daemon: Home) -> None:
    request = _request(daemon, ["--paused", "--", "true"])
    first = _datagram(daemon, request)
    again = _datagram(daemon, request)
    assert isinstance(first, dict) and isinstance(again, dict), (first, again)
    assert first.get("job_id") is not None, first
    assert again.get("job_id") == first["job_id"], again
    assert _jobs(daemon) == [first["job_id"]]
    other = _datagram(daemon, _request(daemon, ["--paused", "--", "true"]))  # a new token
    assert isinstance(other, dict) and other.get("job_id") not in (None, first["job_id"])
    assert len(_jobs(daemon)) == 2
