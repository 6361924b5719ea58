"""Shares (KAI-Scheduler's model on one box) as inputs and rules of the pure `plan`: deserved
quota, over-quota weight, limit, fair share reduced by decayed usage, reclaim from accounts
above their share, min runtime, priority only within an account, caps on running jobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.config import load_config
from workbench.queue.scheduler import (
    GpuSlot,
    Holding,
    Preempt,
    Resources,
    Settings,
    Share,
    Start,
    Wait,
    Want,
    effective_weights,
    fair_order,
    fair_shares,
    plan,
)
from workbench.queue.spec import SpecError

GiB = 1024**3


def box(n: int) -> Resources:
    return Resources(gpus=tuple(GpuSlot(i, 80 * GiB) for i in range(n)), cpus=64, mem_bytes=0)


def by_user(**shares: Share) -> Settings:
    return Settings(shares=shares, default_share=Share(), accounts="user")


def run(account: str, job: int, gpu: int, started: float = 0.0) -> Holding:
    return Holding(job, gpu_indices=(gpu,), gpus=1, started_at=started, account=account)


def want(account: str, job: int, priority: int = 0, gpus: float = 1) -> Want:
    return Want(job, priority, gpus=gpus, account=account)


def decide(queued, running, res, settings, now=1000.0):  # type: ignore[no-untyped-def]
    return {d.job_id: d for d in plan(list(queued), list(running), {}, res, settings, now)}


TWO = by_user(alice=Share(2), bob=Share(2))


def test_the_account_below_its_share_goes_first_whatever_the_priority_elsewhere() -> None:
    # alice holds 3 of her 2; one GPU is free; her job has the higher priority and is older.
    running = [run("alice", 1, 0), run("alice", 2, 1), run("alice", 3, 2)]
    out = decide([want("alice", 10, priority=9), want("bob", 11)], running, box(4), TWO)
    assert out[11] == Start(11, (3,))
    assert isinstance(out[10], Wait)


def test_priority_orders_an_accounts_own_jobs() -> None:
    out = decide([want("bob", 10), want("bob", 11, priority=5)], [], box(1), TWO)
    assert out[11] == Start(11, (0,))
    assert isinstance(out[10], Wait)


def test_a_waiting_job_names_the_rule_and_everyones_standing() -> None:
    running = [run("alice", 1, 0), run("alice", 2, 1), run("bob", 3, 2)]
    out = decide([want("alice", 10)], running, box(3), TWO)
    reason = out[10].reason  # type: ignore[union-attr]
    assert reason.startswith("alice is above their share: 3 of 2 GPUs; bob is within theirs")
    assert "waiting for idle GPUs" in reason


def test_within_its_share_reclaims_from_the_account_above_its_own() -> None:
    # alice holds both GPUs (her share: 1); bob (share 1) arrives: alice's youngest is preempted.
    settings = by_user(alice=Share(1), bob=Share(1))
    running = [run("alice", 1, 0, started=10), run("alice", 2, 1, started=20)]
    out = decide([want("bob", 10)], running, box(2), settings)
    assert isinstance(out[2], Preempt) and out[2].for_job == 10
    assert "alice is above their share: 2 of 1 GPUs; bob is within theirs" in out[2].reason
    assert out[10].reason.startswith("bob is within their share: 0 of 1 GPUs; reclaiming GPU 1")  # type: ignore[union-attr]
    assert 1 not in out


def test_no_preemption_before_the_min_runtime() -> None:
    settings = by_user(alice=Share(1), bob=Share(1))
    settings = Settings(**{**settings.__dict__, "min_runtime_s": 600.0})
    running = [run("alice", 1, 0, started=900), run("alice", 2, 1, started=940)]
    out = decide([want("bob", 10)], running, box(2), settings, now=1000.0)
    assert not any(isinstance(d, Preempt) for d in out.values())
    reason = out[10].reason  # type: ignore[union-attr]
    assert "bob is within their share: 0 of 1 GPUs, but nothing can be reclaimed" in reason
    assert "job 2, which borrows, ran 60 s of the 10 min minimum" in reason
    # Past the minimum, the same jobs are reclaimed.
    out = decide([want("bob", 10)], running, box(2), settings, now=1600.0)
    assert isinstance(out[2], Preempt)


def test_a_limit_caps_an_accounts_gpus_even_with_gpus_idle() -> None:
    settings = by_user(alice=Share(1, limit=2))
    running = [run("alice", 1, 0), run("alice", 2, 1)]
    out = decide([want("alice", 10)], running, box(4), settings)
    assert out[10] == Wait(10, "alice is at their limit of 2 GPUs: holds 2")


def test_max_running_caps_an_accounts_jobs() -> None:
    settings = by_user(alice=Share(4, max_running=1))
    out = decide([want("alice", 10, gpus=0), want("alice", 11, gpus=0)], [], box(2), settings)
    assert isinstance(out[10], Start)
    assert out[11] == Wait(11, "alice is at their cap of 1 running jobs (1 running)")


def test_group_quotas_do_not_count_as_users_when_shares_are_by_user() -> None:
    settings = Settings(
        quotas={"vision": 2.0}, shares={"alice": Share(1)}, default_share=Share(), accounts="user"
    )
    running = [run("alice", 1, 0), run("alice", 2, 1)]
    out = decide([want("bob", 10)], running, box(2), settings)
    reason = out[10].reason  # type: ignore[union-attr]
    assert "vision" not in reason and "alice is above theirs (2 of 1 GPUs)" in reason


def test_users_not_named_get_the_default_share() -> None:
    settings = Settings(shares={"alice": Share(1)}, default_share=Share(1), accounts="user")
    running = [run("alice", 1, 0), run("alice", 2, 1)]
    out = decide([want("carol", 10)], running, box(2), settings)
    assert isinstance(out[2], Preempt)  # carol (default share 1) reclaims alice's second GPU


def test_deserved_gpu_memory_decides_who_is_within() -> None:
    # bob's 1-GPU job of 60 GiB is past his deserved 40 GiB: it borrows, after alice's.
    settings = by_user(alice=Share(1), bob=Share(1, deserved_gpu_mem=40 * GiB))
    queued = [Want(10, gpus=1, gpu_mem=60 * GiB, account="bob"), want("alice", 11)]
    out = decide(queued, [], box(1), settings)
    assert out[11] == Start(11, (0,))
    assert isinstance(out[10], Wait)


def test_group_shares_keep_the_group_words() -> None:
    settings = Settings(shares={"a": Share(1), "b": Share(1)}, default_share=Share())
    running = [Holding(1, "a", (0,), 1, started_at=1), Holding(2, "a", (1,), 1, started_at=2)]
    out = decide([Want(10, group="b", gpus=1)], running, box(2), settings)
    assert isinstance(out[2], Preempt)
    assert "group a is above their share: 2 of 1 GPUs" in out[2].reason


def test_fair_shares_divide_the_surplus_by_weight_up_to_demand() -> None:
    settings = by_user(alice=Share(1, weight=3), bob=Share(1, weight=1), carol=Share(1))
    fair = fair_shares({"alice": 8, "bob": 8, "carol": 1}, 8, settings)
    # carol wants only her 1; the surplus 5 goes 3:1 to alice and bob.
    assert fair == pytest.approx({"alice": 1 + 3.75, "bob": 1 + 1.25, "carol": 1})
    limited = by_user(alice=Share(1, weight=3, limit=2), bob=Share(1))
    assert fair_shares({"alice": 8, "bob": 8}, 8, limited) == pytest.approx({"alice": 2, "bob": 6})


def test_past_usage_lowers_an_over_quota_weight() -> None:
    base = by_user(alice=Share(0), bob=Share(0))
    used = Settings(**{**base.__dict__, "usage": {"alice": 30.0, "bob": 10.0}})
    weights = effective_weights(["alice", "bob"], used)
    assert weights["alice"] == pytest.approx(1 + 0.5 - 0.75)
    assert weights["bob"] == pytest.approx(1 + 0.5 - 0.25)
    fair = fair_shares({"alice": 8, "bob": 8}, 8, used)
    assert fair["bob"] > fair["alice"]
    # The heavier past user's job waits behind the lighter one's on the last GPU.
    out = decide([want("alice", 10), want("bob", 11)], [], box(1), used)
    assert out[11] == Start(11, (0,))


def test_departments_divide_first_among_themselves_then_among_their_members() -> None:
    """Two departments of equal weight, one with two members: flat, three users get 8/3 GPUs
    each; in departments, vision gets 4 (2 each) and nlp's one member 4. A department's
    deserved quota and limit apply to its members together; an account in none stands at the
    top level beside the departments."""
    flat = by_user(alice=Share(), bob=Share(), carol=Share())
    demand = {"alice": 8.0, "bob": 8.0, "carol": 8.0}
    assert fair_shares(demand, 8, flat) == pytest.approx(dict.fromkeys(demand, 8 / 3))
    tree = Settings(
        **{
            **flat.__dict__,
            "departments": {"vision": Share(), "nlp": Share()},
            "department_of": {"alice": "vision", "bob": "vision", "carol": "nlp"},
        }
    )
    assert fair_shares(demand, 8, tree) == pytest.approx({"alice": 2, "bob": 2, "carol": 4})
    deserving = Settings(
        **{**tree.__dict__, "departments": {"vision": Share(6, limit=7), "nlp": Share()}}
    )
    fair = fair_shares({**demand, "dave": 8.0}, 10, deserving)
    # vision: 6 deserved + its weight's third of the 4 left = 7.33, capped by its limit at 7;
    # nlp and dave (in no department) share the rest by weight.
    assert fair["alice"] + fair["bob"] == pytest.approx(7)
    assert fair["carol"] == pytest.approx(1.5) and fair["dave"] == pytest.approx(1.5)
    # Members' own shares divide their department's part.
    weighted = Settings(
        **{**tree.__dict__, "shares": {"alice": Share(weight=3), "bob": Share(), "carol": Share()}}
    )
    assert fair_shares(demand, 8, weighted) == pytest.approx({"alice": 3, "bob": 1, "carol": 4})


def test_the_department_below_its_part_starts_first() -> None:
    """alice (vision) holds two of three GPUs; bob (vision) and carol (nlp) each want the last
    one. Flat, bob's older job goes first (both users are below their share); by department,
    vision already holds more than its half, so carol's job starts and bob's waits."""
    running = [run("alice", 1, 0), run("alice", 2, 1)]
    queued = [want("bob", 10), want("carol", 11)]
    flat = by_user(alice=Share(), bob=Share(), carol=Share())
    assert isinstance(decide(queued, running, box(3), flat)[10], Start)
    tree = Settings(
        **{
            **flat.__dict__,
            "departments": {"vision": Share(), "nlp": Share()},
            "department_of": {"alice": "vision", "bob": "vision", "carol": "nlp"},
        }
    )
    out = decide(queued, running, box(3), tree)
    assert out[11] == Start(11, (2,)) and isinstance(out[10], Wait)


def test_config_reads_departments(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        "[users.alice]\ndeserved_gpus = 1\n"
        "[departments.vision]\nmembers = ['alice', 'bob']\ndeserved_gpus = 4\nweight = 2\n"
        "limit = 6\n[departments.nlp]\nmembers = ['carol']\n"
    )
    shares = load_config(path).shares
    assert shares.departments == {"vision": Share(4, 2, 6), "nlp": Share()}
    assert shares.department_of == {"alice": "vision", "bob": "vision", "carol": "nlp"}


def test_config_reads_users_and_shares(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        "[shares]\nhalf_life = '2d'\nmin_runtime = '10m'\n"
        "[users.alice]\ndeserved_gpus = 2\ndeserved_gpu_mem = '40GiB'\nweight = 1\n"
        "limit = 4\nmax_running = 3\n[users.default]\ndeserved_gpus = 1\n"
    )
    shares = load_config(path).shares
    assert shares.by == "user"
    assert shares.shares["alice"] == Share(2, 1, 4, 3, 40 * GiB)
    assert shares.default == Share(1)
    assert shares.half_life_s == 2 * 86400 and shares.min_runtime_s == 600


def test_a_departments_limit_caps_its_members_together() -> None:
    """`[departments.NAME] limit` was only an input to the fair shares: a department of limit 1
    (or 0) still had its members start jobs on every free GPU. It caps them together now, as a
    user's `limit` caps the user."""
    flat = by_user(alice=Share(), bob=Share(), carol=Share())
    for limit in (0, 1, 2):
        capped = Settings(
            **{
                **flat.__dict__,
                "departments": {"vision": Share(limit=limit)},
                "department_of": {"alice": "vision", "bob": "vision"},
            }
        )
        queued = [want("alice", 1), want("bob", 2), want("alice", 3), want("carol", 4)]
        out = decide(queued, [], box(4), capped)
        started = {i for i, d in out.items() if isinstance(d, Start)}
        assert len(started - {4}) == limit and 4 in started, out
        held = [run("alice", 9, 3)] if limit else []
        waiting = decide([want("bob", 2)], held, box(4), capped)[2]
        if limit <= 1:
            assert "department vision is at its limit" in getattr(waiting, "reason", ""), waiting


def test_an_account_named_like_a_department_is_not_counted_in_it() -> None:
    """A group (or user) in no department, named like a department (which config.toml cannot
    see coming: accounts are the system's), had its demand and usage folded into that
    department's, so the department's members shared their part with it."""
    flat = by_user(alice=Share(), bob=Share())
    tree = Settings(
        **{**flat.__dict__, "departments": {"nlp": Share()}, "department_of": {"bob": "nlp"}}
    )
    demand = {"alice": 9.0, "bob": 9.0, "nlp": 9.0}
    assert fair_shares(demand, 9, tree) == pytest.approx(dict.fromkeys(demand, 3))
    # Nor in the order: the department's held GPUs are its members' only.
    keys = fair_order([want("bob", 1)], [run("nlp", 5, 0), run("nlp", 6, 1)], tree, 2)
    alone = fair_order([want("bob", 1)], [], tree, 2)
    assert keys[1] == alone[1]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[users.alice]\ndeserved_gpus = -1\n", "[users.alice]: key 'deserved_gpus'"),
        ("[users.alice]\nweight = -2\n", "[users.alice]: key 'weight'"),
        ("[users.alice]\ndeserved_gpu_mem = 'lots'\n", "key 'deserved_gpu_mem'"),
        ("[users.alice]\nmax_running = -1\n", "key 'max_running'"),
        ("[users.alice]\nspeed = 1\n", "[users.alice]"),
        ("[shares]\nhalf_life = '0s'\n", "[shares]: key 'half_life'"),
        ("[shares]\nby = 'planet'\n", "[shares]: key 'by'"),
        (
            "[users.a]\n[departments.d]\nmembers = ['a']\n[departments.e]\nmembers = ['a']\n",
            "[departments.e]: key 'members': 'a' is in [departments.d] already",
        ),
        ("[users.a]\n[departments.d]\nmembers = []\n", "[departments.d]: key 'members'"),
        (
            "[users.a]\n[departments.d]\nmembers = ['a', 'a']\n",
            "[departments.d]: key 'members': 'a' is listed twice",
        ),
        ("[users.a]\n[departments.a]\nmembers = ['b']\n", "[departments.a]: 'a' is also"),
        ("[departments.d]\nmembers = ['a']\n", "[departments]: departments divide shares"),
        ("[users.a]\n[departments.d]\nmembers = ['a']\nweight = -1\n", "key 'weight'"),
        (
            "[users.a]\n[departments.\"x\\u001b[31m\"]\nmembers = ['a']\n",
            "[departments]: department name 'x\\x1b[31m'",
        ),
        ("[users.a]\n[departments.\"\\u0000d\"]\nmembers = ['a']\n", "department name"),
    ],
)
def test_bad_share_settings_name_the_file_table_and_key(
    tmp_path: Path, text: str, names: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as error:
        load_config(path)
    assert str(path) in str(error.value) and names in str(error.value)


# ---- end to end: a real daemon, the fake NVML, two owners in one home ---------------------


def test_the_daemon_reclaims_for_a_user_within_their_share(
    client, home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Two users deserve one GPU each; the home owner's two jobs hold both GPUs; the other
    user's job (its uid set in the request, as the system daemon sets it) reclaims one: the
    youngest of the owner's jobs is preempted naming the rule, the other user's job runs, the
    preempted one waits saying whose share is where, and `usage` names both users."""
    import dataclasses
    import json
    import os
    import pwd

    from conftest import wait_for, wait_state, workbench
    from test_scheduler import fake_machine, submit_command

    from workbench.queue.requests import build_request

    me = pwd.getpwuid(os.getuid()).pw_name
    other_uid = 65534 if os.getuid() != 65534 else 0
    other = pwd.getpwuid(other_uid).pw_name
    fake_machine(tmp_path, monkeypatch, [{}, {}])
    home.config.write_text(
        f'[daemon]\nkill_grace = "1s"\nsample_interval = "0.2s"\n\n'
        f"[users.{me}]\ndeserved_gpus = 1\n\n[users.{other}]\ndeserved_gpus = 1\n"
    )
    first = submit_command(client, tmp_path, ["sleep", "600"], gpus=1)
    wait_state(client, first, "running")
    second = submit_command(client, tmp_path, ["sleep", "600"], gpus=1)
    wait_state(client, second, "running")
    table = {"kind": "command", "argv": ["sleep", "1"], "gpus": 1}
    request = dataclasses.replace(build_request(table, tmp_path, "test"), uid=other_uid)
    theirs = client.submit(request)
    assert wait_state(client, theirs, "succeeded", timeout=60).state == "succeeded"
    shown = json.loads(workbench("show", str(second), "--json").stdout)
    events = " ".join(str(e.get("reason")) for e in shown.get("events", shown.get("history", [])))
    assert f"{me} is above their share: 2 of 1 GPUs; {other} is within theirs" in events
    assert client.store.get(first).state == "running"  # the older job kept its GPU
    wait_for(
        lambda: client.store.get(second).state == "running",
        timeout=30,
        what="the preempted job back once the other user's job ended",
    )
    wait_for(
        lambda: (
            {
                (r["kind"], r["name"])
                for r in json.loads(workbench("usage", "--json").stdout)["rows"]
            }
            >= {("user", me), ("user", other)}
        ),
        timeout=30,
        what="usage naming both users",
    )
    for job_id in (first, second):
        client.control(job_id, "cancel")
    for job_id in (first, second):
        wait_state(client, job_id, "cancelled", timeout=30)


@pytest.mark.slow
def test_a_train_job_preempted_for_another_users_deserved_quota_resumes_to_the_same_weights(
    client, home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The home owner (alice here) holds her deserved GPU with a long job and borrows the second
    for training; the other user (bob: his uid in the request, as the system daemon sets it)
    asks for his deserved GPU: the training job is preempted, checkpoints, and resumes to the
    same metrics as an uninterrupted run of the same spec."""
    import dataclasses
    import os
    import pwd

    from conftest import wait_for, wait_state
    from test_scheduler import fake_machine, submit_command
    from test_train import digits_table

    from workbench.catalog import lake, tracking
    from workbench.queue.requests import build_request

    me = pwd.getpwuid(os.getuid()).pw_name
    other_uid = 65534 if os.getuid() != 65534 else 0
    other = pwd.getpwuid(other_uid).pw_name
    fake_machine(tmp_path, monkeypatch, [{}, {}])
    home.config.write_text(
        '[daemon]\nkill_grace = "30s"\n\n'
        f"[users.{me}]\ndeserved_gpus = 1\n\n[users.{other}]\ndeserved_gpus = 1\n"
    )
    lake.publish_arrow(home, client.store, "digits", digits_table())
    spec = {
        "kind": "train",
        "dataset": "digits",
        "target": "digit",
        "model": "mlp",
        "hidden": [128, 128],
        "epochs": 12,
        "batch_size": 8,
        "seed": 3,
        "cpus": 1,
        "dropout": 0.1,
        "gpus": 1,
    }
    whole_id = client.submit(build_request(spec, tmp_path, "test"))
    assert wait_state(client, whole_id, {"succeeded", "failed"}, timeout=240).state == "succeeded"
    held = submit_command(client, tmp_path, ["sleep", "600"], gpus=1)
    wait_state(client, held, "running")
    borrower = client.submit(build_request(spec, tmp_path, "test"))
    wait_for(lambda: (client.store.get(borrower).progress or 0) >= 0.3, timeout=120, what="epochs")
    table = {"kind": "command", "argv": ["sleep", "1"], "gpus": 1}
    bob = client.submit(dataclasses.replace(build_request(table, tmp_path, "test"), uid=other_uid))
    assert wait_state(client, bob, "succeeded", timeout=60).state == "succeeded"
    resumed = wait_state(client, borrower, {"succeeded", "failed"}, timeout=240)
    assert resumed.state == "succeeded", resumed.reason
    client.control(held, "cancel")
    preempted = [e for e in client.store.events(borrower) if e.event == "preempt"]
    assert len(preempted) == 1
    assert f"{me} is above their share: 2 of 1 GPUs; {other} is within theirs" in (
        preempted[0].reason or ""
    )
    assert "resumed from" in (home.run_dir(borrower) / "log").read_text()
    first = tracking.get_run(client.store, whole_id)
    second = tracking.get_run(client.store, borrower)
    assert first is not None and second is not None and first.metrics == second.metrics


def test_group_shares_take_the_quota_set_from_the_command_line(home, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With `[shares] by = "group"`, `workbench group vision --quota 2` is vision's deserved
    quota (its weight and limit stay config.toml's)."""
    from workbench.config import set_stored_quota
    from workbench.daemon.planning import settings_of
    from workbench.db.store import Store

    path = tmp_path / "config.toml"
    path.write_text('[shares]\nby = "group"\n\n[groups.vision]\nquota = 1\nweight = 3\nlimit = 4\n')
    store = Store.open(home.state_db)
    set_stored_quota(store, "vision", 2)
    settings = settings_of(load_config(path), store)
    store.close()
    assert settings.by_share and settings.accounts == "group"
    assert settings.shares["vision"] == Share(2, 3, 4)


def test_show_names_the_owner_of_a_job_that_carries_one(home) -> None:  # type: ignore[no-untyped-def]
    import dataclasses
    import os
    import pwd

    from conftest import workbench

    from workbench.db.store import Store
    from workbench.queue.requests import build_request

    other_uid = 65534 if os.getuid() != 65534 else 0
    store = Store.open(home.state_db)
    table = {"kind": "command", "argv": ["true"]}
    request = build_request(table, Path.cwd(), "test", paused=True)
    theirs = store.submit(dataclasses.replace(request, uid=other_uid))
    mine = store.submit(request)
    store.close()
    shown = workbench("show", str(theirs)).stdout
    assert "owner:" in shown and f"{pwd.getpwuid(other_uid).pw_name} (uid {other_uid})" in shown
    assert "owner:" not in workbench("show", str(mine)).stdout  # a per-user home's own job
