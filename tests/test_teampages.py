"""The system daemon's reads for the TUI (`workbench.daemon.teampages`): a page of the team
queue and the machine's telemetry, as a plain user and as an admin may see them. In-process
against a real store (the socket, the kernel's peer credentials and real users are in
tests/test_tui_team.py)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workbench.daemon.identity import Peer, user_name
from workbench.daemon.rights import PUBLIC_FIELDS, Rights
from workbench.daemon.teampages import PageError, page, telemetry
from workbench.db.store import Job, Store
from workbench.paths import Home
from workbench.queue.requests import build_request

ALICE, BOB = 5001, 5002


def peer(uid: int, name: str) -> Peer:
    return Peer(pid=1, uid=uid, gid=uid, name=name, groups=frozenset({uid}))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    home = Home(tmp_path / "system").ensure()
    opened = Store.open(home.state_db)
    try:
        yield opened
    finally:
        opened.close()


def submit(store: Store, uid: int, argv: list[str], **extra: Any) -> int:
    request = build_request({"kind": "command", "argv": argv, **extra}, Path("/"), "test")
    return store.submit(dataclasses.replace(request, uid=uid))


def ask(store: Store, who: Peer, **request: Any) -> dict[str, Any]:
    rights = Rights()

    def view(job: Job) -> dict[str, Any]:
        return rights.view(who, job, job.to_json())

    return page(store, rights, who, request, view)


def test_a_page_shows_others_public_fields_and_searches_only_them(store: Store) -> None:
    """bob's page has alice's job with its public fields only; a search for a word of her
    command line finds nothing for him (it does for root); her job's public name, state and
    id do; `owner` keeps his own; counts and positions cover the filter."""
    secret = submit(store, ALICE, ["sh", "-c", "echo alice-secret"])
    named = submit(store, ALICE, ["sh", "-c", "echo other-secret"], name="nightly-report")
    own = submit(store, BOB, ["sh", "-c", "echo bob-word"])
    bob, root = peer(BOB, "bob"), peer(0, "root")
    got = ask(store, bob, limit=10)
    views = {v["id"]: v for v in got["jobs"]}
    assert got["total"] == 3 and sorted(views) == [secret, named, own]
    for job_id in (secret, named):
        assert set(views[job_id]) <= {*PUBLIC_FIELDS, "owner"}, views[job_id]
    assert views[secret]["name"] == "sh" and views[named]["name"] == "nightly-report"
    assert views[own]["argv"] == ["sh", "-c", "echo bob-word"]  # his own: whole
    assert got["counts"] == {"queued": 3}
    assert ask(store, bob, text="alice-secret", limit=10)["total"] == 0
    assert ask(store, bob, text="other-secret", limit=10)["total"] == 0
    assert [v["id"] for v in ask(store, root, text="alice-secret", limit=10)["jobs"]] == [secret]
    assert [v["id"] for v in ask(store, bob, text="bob-word", limit=10)["jobs"]] == [own]
    assert [v["id"] for v in ask(store, bob, text="NIGHTLY", limit=10)["jobs"]] == [named]
    assert [v["id"] for v in ask(store, bob, text="sh", limit=10)["jobs"]] == [secret, own]
    assert [v["id"] for v in ask(store, bob, owner=BOB, limit=10)["jobs"]] == [own]
    assert ask(store, bob, limit=0, position_of=own)["position"] == 2
    assert ask(store, bob, text="sh", limit=0, position_of=own)["position"] == 1
    last = ask(store, bob, offset=99, limit=1)  # past the end: the last row
    assert last["offset"] == 2 and [v["id"] for v in last["jobs"]] == [own]


@pytest.mark.parametrize(
    "request_",
    [
        {"state": "sleeping"},
        {"text": 3},
        {"owner": "bob"},
        {"limit": 5000},
        {"offset": -1},
        {"position_of": 1.5},
    ],
)
def test_a_malformed_page_request_is_refused_naming_its_field(
    store: Store, request_: dict[str, Any]
) -> None:
    with pytest.raises(PageError, match=f"'{next(iter(request_))}'"):
        ask(store, peer(BOB, "bob"), **request_)


def test_telemetry_names_a_gpu_process_job_as_the_asker_may_see_it(store: Store) -> None:
    """The latest sample's GPU process of alice's job carries its public name for bob, its
    name for alice, and its owner for both; history rows come back; bad fields refused."""
    job_id = submit(store, ALICE, ["python", "secret_train.py", "--key", "k"])
    now = time.time()
    snapshot = {
        "time": now,
        "gpus": [{"index": 0, "processes": [{"pid": 7, "job_id": job_id, "job_name": "x"}]}],
    }
    store.telemetry.record(
        int(now * 1000), 1.0, [1.0, 0.1, 1, 0, 0, 0, 0, 0, None], json.dumps(snapshot), now
    )
    for who, name in ((peer(BOB, "bob"), "python"), (peer(ALICE, "alice"), None)):
        got = telemetry(store, Rights(), who, {"history": 60})
        process = got["latest"]["gpus"][0]["processes"][0]
        assert process["job_name"] == (name or "python secret_train.py --key k")
        assert process["owner"] == user_name(ALICE)
        assert len(got["history"]) == 1
    for bad in ({"history": -1}, {"history": "60"}, {"bucket_s": float("nan")}):
        with pytest.raises(PageError):
            telemetry(store, Rights(), peer(BOB, "bob"), bad)
