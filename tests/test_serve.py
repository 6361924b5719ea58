"""The `serve` kind with a real HTTP client against the running job: predictions equal the test
job's, bad requests get a 4xx naming the input, counts and latency reach the progress line,
in-flight requests are answered when the job is cancelled, and a model whose test failed its
gates is not served."""

from __future__ import annotations

import json
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from conftest import stop_daemon, wait_for, wait_state

from workbench.catalog import lake, registry
from workbench.daemon.client import Client
from workbench.db.store import Job, JobError
from workbench.paths import Home
from workbench.queue.requests import build_request


def run(client: Client, base: Path, **table: object) -> Job:
    job_id = client.submit(build_request(dict(table), base, "test"))
    return wait_state(client, job_id, {"succeeded", "failed", "cancelled"}, timeout=240)


def shops(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    shop = rng.choice(["north", "south", "east"], rows)
    big = 1_500_000_000 + rng.integers(0, 5000, rows)
    score = x + np.where(shop == "north", 1.0, -0.5) + (big - 1_500_002_500) / 3000
    return pa.table(
        {
            "x": x,
            "shop": shop.tolist(),
            "big": pa.array(big, pa.int64()),
            "bought": np.where(score > 0, "yes", "no").tolist(),
        }
    )


@pytest.fixture(scope="module")
def exported() -> Iterator[tuple[Client, Home, int, int]]:
    """(client, home, train job, catalog model id) of an exported classifier."""
    root = Path(tempfile.mkdtemp(prefix="wb-", dir="/tmp"))
    base = Path(tempfile.mkdtemp(prefix="wb-serve-"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_HOME", str(root))
        home = Home(root).ensure()
        client = Client(home)
        lake.publish_arrow(home, client.store, "shops", shops(400, 0))
        lake.publish_arrow(home, client.store, "shops_test", shops(150, 1))
        trained = run(client, base, kind="train", dataset="shops", target="bought", epochs=10)
        assert trained.state == "succeeded", trained.reason
        export = run(client, base, kind="export", model=str(trained.id))
        assert export.state == "succeeded", export.reason
        model_id = next(
            m["id"] for m in registry.list_models(client.store) if m["export_job_id"] == export.id
        )
        yield client, home, trained.id, model_id
        cancel_leftovers(client)
        client.close()
        stop_daemon(home)


def cancel_leftovers(client: Client) -> None:
    """Cancel every job still live and wait for each to settle. A job that settles between the
    listing and its cancel (it answers "already succeeded") is not an error of the test."""
    for job in client.store.list_jobs(states=["running", "queued", "starting", "paused"]):
        try:
            client.control(job.id, "cancel")
        except JobError:
            continue
        wait_state(client, job.id, {"cancelled", "failed", "succeeded"}, timeout=60)


def post(url: str, body: Any, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + "/predict", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def start_server(client: Client, home: Home, base: Path, **extra: object) -> tuple[int, str]:
    job_id = client.submit(build_request({"kind": "serve", **extra}, base, "test"))
    wait_state(client, job_id, {"running", "failed"}, timeout=60)
    path = home.run_dir(job_id) / "serve.json"
    wait_for(
        lambda: path.exists() or client.store.get(job_id).state == "failed", 60, what="serve.json"
    )
    job = client.store.get(job_id)
    assert job.state == "running", job.reason
    return job_id, json.loads(path.read_text())["url"]


def rows_of(table: pa.Table) -> list[dict[str, Any]]:
    return [{k: r[k] for k in ("x", "shop", "big")} for r in table.to_pylist()]


def test_served_predictions_equal_the_test_jobs_and_bad_requests_get_4xx(
    exported: tuple[Client, Home, int, int], tmp_path: Path
) -> None:
    client, home, train_id, model_id = exported
    tested = run(client, tmp_path, kind="test", model=str(train_id), dataset="shops_test")
    assert tested.state == "succeeded", tested.reason
    job_id, url = start_server(client, home, tmp_path, model=str(model_id))
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url + "/health", timeout=10) as response:
        health = json.loads(response.read())
    assert health["status"] == "ok" and [i["name"] for i in health["inputs"]] == [
        "x",
        "shop",
        "big",
    ]
    table, _ = lake.read_arrow(home, "shops_test")
    status, got = post(url, {"rows": rows_of(table)})
    assert status == 200, got
    predictions, _ = lake.read_arrow(home, f"run{train_id}_predictions")
    assert got["predictions"] == predictions.column("prediction").to_pylist()
    ours = np.stack([predictions.column(f"p_{c}").to_numpy() for c in got["classes"]], axis=1)
    np.testing.assert_allclose(np.array(got["probabilities"]), ours, rtol=1e-6, atol=1e-7)
    one = rows_of(table)[:1]
    assert post(url, {"rows": one})[1]["predictions"] == got["predictions"][:1]
    bad = [
        ({"rows": [{**one[0], "colour": "red"}]}, 400, "unknown input 'colour'"),
        ({"rows": [{"x": 1.0, "shop": "north"}]}, 400, "missing input 'big'"),
        ({"rows": [{**one[0], "x": "1.5"}]}, 422, "input 'x' takes a number"),
        ({"rows": [{**one[0], "shop": 3}]}, 422, "input 'shop' takes text"),
        ({"rows": []}, 400, "non-empty list"),
        ({"rows": one * 10_001}, 413, "at most 10000"),
        ({"inputs": one}, 400, 'expected {"rows"'),
    ]
    for body, code, message in bad:
        status, answer = post(url, body)
        assert status == code and message in answer["error"], (body, status, answer)
    assert post(url, None, raw=b"{not json")[0] == 400
    wait_for(
        lambda: (
            "requests" in (client.store.get(job_id).progress_msg or "")
            and " 2 requests" in (client.store.get(job_id).progress_msg or "")
        ),
        10,
        what="the progress line to count the requests",
    )
    line = client.store.get(job_id).progress_msg or ""
    assert "p50" in line and "p99" in line and "8 refused" in line, line
    client.control(job_id, "cancel")
    assert wait_state(client, job_id, {"cancelled", "failed"}, timeout=60).state == "cancelled"


def test_cancel_answers_the_requests_in_flight(
    exported: tuple[Client, Home, int, int], tmp_path: Path
) -> None:
    """Eight requests whose bodies are half sent when the job is cancelled are answered (200)
    once their bodies arrive, and the job ends cancelled."""
    import http.client

    client, home, _, model_id = exported
    job_id, url = start_server(client, home, tmp_path, model=str(model_id))
    table, _ = lake.read_arrow(home, "shops_test")
    body = json.dumps({"rows": rows_of(table)[:3]}).encode()
    port = int(url.rsplit(":", 1)[1])
    connections = []
    for _ in range(8):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.putrequest("POST", "/predict")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body[:10])
        connections.append(connection)
    time.sleep(0.3)  # the server has their headers; their bodies are on their way
    client.control(job_id, "cancel")
    time.sleep(0.5)
    results = []
    for connection in connections:
        connection.send(body[10:])
        response = connection.getresponse()
        results.append((response.status, len(json.loads(response.read())["predictions"])))
        connection.close()
    assert results == [(200, 3)] * 8
    job = wait_state(client, job_id, {"cancelled", "failed"}, timeout=60)
    assert job.state == "cancelled", job.reason
    assert not job.preemptible
    assert "8 requests answered" in (home.run_dir(job_id) / "log").read_text()


def test_a_lone_request_is_not_held_for_max_wait(
    exported: tuple[Client, Home, int, int], tmp_path: Path
) -> None:
    """With nothing else on its way a request runs at once: max_wait_ms (here 1 s) bounds the
    wait for company, it is no delay every request pays."""
    client, home, _, model_id = exported
    job_id, url = start_server(client, home, tmp_path, model=str(model_id), max_wait_ms=1000.0)
    table, _ = lake.read_arrow(home, "shops_test")
    post(url, {"rows": rows_of(table)[:1]})
    took = []
    for row in rows_of(table)[:3]:
        started = time.monotonic()
        assert post(url, {"rows": [row]})[0] == 200
        took.append(time.monotonic() - started)
    assert min(took) < 0.5, took
    client.control(job_id, "cancel")
    wait_state(client, job_id, {"cancelled", "failed"}, timeout=60)


def test_rows_become_arrays_in_one_step_and_bad_values_are_named() -> None:
    """feed_from_rows: null -> NaN or "", the columns in the model's order, and a bool, a
    string, or an integer past float64 refused with 422 naming the row and input."""
    from jobs.bundle import Preprocessor
    from jobs.serve import BadRequest, feed_from_rows

    frame = shops(60, 2)
    pre = Preprocessor.fit(frame, ["x", "shop", "big"], "bought", "classification")
    feed = feed_from_rows(
        [{"big": 5, "x": None, "shop": "north"}, {"shop": None, "x": 2.5, "big": 7}], pre
    )
    assert list(feed) == ["x", "shop", "big"]
    assert feed["x"].shape == (2, 1) and np.isnan(feed["x"][0, 0]) and feed["x"][1, 0] == 2.5
    assert feed["big"].dtype == np.float64 and feed["big"][:, 0].tolist() == [5.0, 7.0]
    assert feed["shop"][:, 0].tolist() == ["north", ""]
    good = {"x": 1.0, "shop": "east", "big": 3}
    for value, message in [
        (True, "row 1: input 'x' takes a number"),
        ("1.5", "row 1: input 'x' takes a number"),
        (10**400, "beyond float64's range"),
    ]:
        with pytest.raises(BadRequest, match=message) as caught:
            feed_from_rows([good, {**good, "x": value}], pre)
        assert caught.value.status == 422
    with pytest.raises(BadRequest, match="row 1: input 'shop' takes text"):
        feed_from_rows([good, {**good, "shop": 3}], pre)


def test_a_model_whose_test_failed_its_gates_is_not_served(
    exported: tuple[Client, Home, int, int], tmp_path: Path
) -> None:
    client, _, train_id, _ = exported
    gated = run(
        client,
        tmp_path,
        kind="test",
        model=str(train_id),
        dataset="shops_test",
        gate={"min_accuracy": 1.01},
    )
    assert gated.state == "failed"
    export = run(client, tmp_path, kind="export", model=str(train_id))
    assert export.state == "succeeded", export.reason
    model = next(m for m in registry.list_models(client.store) if m["export_job_id"] == export.id)
    job = run(client, tmp_path, kind="serve", model=str(model["id"]))
    assert job.state == "failed" and "failed its gates" in (job.reason or ""), job.reason


def test_serve_cli_refuses_bad_arguments_with_exit_2(home: Home) -> None:
    from conftest import workbench

    result = workbench("serve", "3", "--port", "70000")
    assert result.returncode == 2 and "key 'port'" in result.stderr, result.stderr
    result = workbench("serve", "model.pt")
    assert result.returncode == 2 and "serve takes an exported .onnx model" in result.stderr
    result = workbench("serve", "3", "--max-batch", "0")
    assert result.returncode == 2 and "key 'max_batch'" in result.stderr


def test_a_restarted_daemon_adopts_the_running_server(
    exported: tuple[Client, Home, int, int], tmp_path: Path
) -> None:
    """kill -9 of the daemon while the server answers: requests keep being answered throughout,
    the next daemon adopts the job (not re-run: same pid, attempt 1; its cancel reaches the
    server and settles the job), and its counters keep reaching the progress line that `show`
    prints."""
    import os
    import signal

    from conftest import workbench

    from workbench.daemon.client import ensure_daemon
    from workbench.daemon.link import lock_holder

    client, home, _, model_id = exported
    job_id, url = start_server(client, home, tmp_path, model=str(model_id))
    pid = client.store.get(job_id).pid
    table, _ = lake.read_arrow(home, "shops_test")
    body = {"rows": rows_of(table)[:5]}
    statuses: list[int] = []
    done = threading.Event()

    def load() -> None:
        while not done.is_set():
            statuses.append(post(url, body)[0])
            time.sleep(0.01)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        wait_for(lambda: len(statuses) >= 5, 20, what="requests before the kill")
        daemon_pid = lock_holder(home)
        assert daemon_pid and daemon_pid > 0
        os.kill(daemon_pid, signal.SIGKILL)
        wait_for(lambda: not lock_holder(home), what="the daemon to be gone")
        answered_while_down = len(statuses)
        wait_for(lambda: len(statuses) >= answered_while_down + 5, 20, what="requests, no daemon")
        new_daemon = ensure_daemon(home)
        assert new_daemon != daemon_pid
        before = len(statuses)
        wait_for(lambda: len(statuses) >= before + 20, 20, what="requests after the adoption")

        def counted() -> int:
            line = client.store.get(job_id).progress_msg or ""
            return int(line.split(": ")[1].split(" requests")[0]) if " requests" in line else 0

        wait_for(lambda: counted() >= before + 20, 20, what="the counters after the adoption")
        shown = workbench("show", str(job_id))
        assert shown.returncode == 0 and " requests" in shown.stdout and "p50" in shown.stdout
    finally:
        done.set()
        thread.join(30)
    assert statuses and set(statuses) == {200}, set(statuses)
    job = client.store.get(job_id)
    assert job.state == "running" and job.pid == pid and job.attempt == 1
    client.control(job_id, "cancel")
    assert wait_state(client, job_id, {"cancelled", "failed"}, timeout=60).state == "cancelled"


GiB = 1024**3


@pytest.fixture
def one_fake_gpu(
    exported: tuple[Client, Home, int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Client, Home, int]]:
    """The module's home with its daemon restarted on a simulated 80 GiB GPU and two groups:
    `vision` (quota 1) and `sweep` (quota 0, so whatever it holds is borrowed). Afterwards the
    jobs are cancelled and the daemon restarted without the fake GPU."""
    from workbench.telemetry import fakenvml

    client, home, _, model_id = exported
    stop_daemon(home)
    scenario = fakenvml.write_scenario(tmp_path / "gpus.json", [{"memory_total": 80 * GiB}])
    monkeypatch.setenv("WORKBENCH_FAKE_NVML", str(scenario))
    home.config.write_text("[groups.vision]\nquota = 1\n\n[groups.sweep]\nquota = 0\n")
    try:
        yield client, home, model_id
    finally:
        cancel_leftovers(client)
        stop_daemon(home)
        home.config.unlink()


def vision_job(client: Client, base: Path) -> int:
    """A job of group `vision` (within its quota) wanting the whole GPU."""
    request = build_request(
        {"kind": "command", "argv": ["true"], "gpus": 1, "group": "vision"}, base, "test"
    )
    return client.submit(request)


def test_serve_holds_a_memory_fitted_gpu_share_and_a_quota_does_not_preempt_it(
    one_fake_gpu: tuple[Client, Home, int], tmp_path: Path
) -> None:
    client, home, model_id = one_fake_gpu
    job_id, url = start_server(
        client, home, tmp_path, model=str(model_id), gpus=0.25, group="sweep"
    )
    job = client.store.get(job_id)
    assert job.granted_gpus == [0] and not job.preemptible
    with urllib.request.urlopen(url + "/health", timeout=10) as response:
        health = json.loads(response.read())
    assert health["gpu"] == {"visible": "0", "mem_cap_bytes": 20 * GiB}, health
    log = (home.run_dir(job_id) / "log").read_text()
    assert "holding GPU 0 (CUDA_VISIBLE_DEVICES), a share of 20.0 GiB" in log, log
    vision = vision_job(client, tmp_path)
    expected = (
        f"reclaimed: job {job_id} (group sweep) borrows beyond its group's quota and opted out"
        " of preemption"
    )
    wait_for(
        lambda: expected in (client.store.get(vision).reason or ""), 30, what="the wait reason"
    )
    table, _ = lake.read_arrow(home, "shops_test")
    assert post(url, {"rows": rows_of(table)[:2]})[0] == 200
    assert client.store.get(job_id).state == "running"
    assert "preempt" not in [e.event for e in client.store.events(job_id)]


def test_a_serve_job_that_says_preemptible_gives_its_borrowed_share_back(
    one_fake_gpu: tuple[Client, Home, int], tmp_path: Path
) -> None:
    client, home, model_id = one_fake_gpu
    job_id, _ = start_server(
        client, home, tmp_path, model=str(model_id), gpus=0.25, group="sweep", preemptible=True
    )
    assert client.store.get(job_id).preemptible
    vision = vision_job(client, tmp_path)
    assert wait_state(client, vision, {"succeeded", "failed"}, timeout=60).state == "succeeded"
    events = client.store.events(job_id)
    assert [e.event for e in events].count("preempt") == 1, [(e.event, e.reason) for e in events]
