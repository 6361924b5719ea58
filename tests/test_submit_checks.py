"""Checked at submit, not discovered at launch: a string exec or the environment cannot carry
(a NUL in argv, env or cwd, an empty env name, `A=B` as a name) is refused with exit 2 naming
the file, stage, key and index, through every path (the CLI's quick and full paths, spec
files, pipeline files, the daemon's intake); nothing is queued and no traceback is printed.
Also `wait` on a removed job, and pipelines far past Python's recursion limit."""

from __future__ import annotations

import json
import marshal
import os
import socket
import time
from pathlib import Path

import pytest
from conftest import wait_for, workbench

from workbench.daemon.link import INTAKE_VERSION, lock_holder
from workbench.db.store import Store
from workbench.paths import Home
from workbench.queue.pipeline import load_pipeline
from workbench.queue.spec import SpecError

FULL = {"WORKBENCH_NO_INTAKE": "1"}

# (what, the TOML of a command job's keys, the key and index the message must name)
BAD = [
    ("NUL in argv", 'argv = ["echo", "a\\u0000b"]', "key 'argv'[1]: contains a NUL byte"),
    ("NUL in an env value", 'argv = ["true"]\nenv = { K = "a\\u0000b" }', "key 'env'.K: contains"),
    (
        "NUL in an env name",
        'argv = ["true"]\nenv = { "K\\u0000" = "v" }',
        "key 'env': name 'K\\x00'",
    ),
    ("NUL in cwd", 'argv = ["true"]\ncwd = "/tmp\\u0000x"', "key 'cwd': contains a NUL byte"),
    ("empty env name", 'argv = ["true"]\nenv = { "" = "v" }', "key 'env': an environment variable"),
    ("A=B as env name", 'argv = ["true"]\nenv = { "A=B" = "v" }', "key 'env': name 'A=B': an"),
]
IDS = [what for what, _, _ in BAD]


def _no_jobs(home: Home) -> None:
    if home.state_db.exists():
        store = Store.open(home.state_db)
        try:
            assert store.list_jobs() == []
        finally:
            store.close()


def _refused(result: object, *named: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)  # type: ignore[attr-defined]
    for text in named:
        assert text in result.stderr, result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in result.stderr  # type: ignore[attr-defined]


@pytest.mark.parametrize(("what", "keys", "message"), BAD, ids=IDS)
@pytest.mark.parametrize("path", ["quick", "full"])
def test_a_spec_file_that_exec_cannot_carry_is_refused(
    home: Home, tmp_path: Path, what: str, keys: str, message: str, path: str
) -> None:
    spec = tmp_path / "job.toml"
    spec.write_text(f'kind = "command"\n{keys}\n')
    if path == "quick":
        assert workbench("daemon", "start").returncode == 0
        wait_for(home.intake_socket.exists, what="the intake socket")
    result = workbench("submit", "--spec", str(spec), env=FULL if path == "full" else None)
    _refused(result, f"{spec}: {message}")
    _no_jobs(home)


@pytest.mark.parametrize("path", ["quick", "full"])
def test_an_ingest_source_with_a_nul_is_refused(home: Home, tmp_path: Path, path: str) -> None:
    spec = tmp_path / "ingest.toml"
    spec.write_text('kind = "ingest"\nsource = ["a.csv", "b\\u0000.csv"]\ndataset = "d"\n')
    if path == "quick":
        assert workbench("daemon", "start").returncode == 0
        wait_for(home.intake_socket.exists, what="the intake socket")
    result = workbench("submit", "--spec", str(spec), env=FULL if path == "full" else None)
    _refused(result, f"{spec}: key 'source'[1]: contains a NUL byte")
    _no_jobs(home)


@pytest.mark.parametrize(("what", "keys", "message"), BAD, ids=IDS)
def test_a_pipeline_stage_that_exec_cannot_carry_is_refused(
    home: Home, tmp_path: Path, what: str, keys: str, message: str
) -> None:
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        '[pipeline]\nname = "p"\n\n[[stage]]\nname = "ok"\nkind = "command"\nargv = ["true"]\n\n'
        f'[[stage]]\nname = "bad"\nkind = "command"\nafter = ["ok"]\n{keys}\n'
    )
    _refused(workbench("--batch", str(pipeline)), f"{pipeline}: stage 'bad': {message}")
    _no_jobs(home)


def _intake(home: Home, argv: list[str], env: dict[str, str]) -> dict[str, object]:
    request = {
        "v": INTAKE_VERSION,
        "token": os.urandom(8).hex(),
        "daemon": lock_holder(home),
        "argv": argv,
        "cwd": str(home.root),
        "env": env,
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("")
        sock.sendto(marshal.dumps(request), str(home.intake_socket))
        sock.settimeout(10)
        data = b""
        while not data:
            data = sock.recv(1 << 20)
    reply = marshal.loads(data)
    assert isinstance(reply, dict)
    return reply


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--", "echo", "a\0b"], {}, "submit: key 'argv'[1]: contains a NUL byte"),
        (["--env", "K=a\0b", "--", "true"], {}, "--env K: contains a NUL byte"),
        (["--env", "K\0=v", "--", "true"], {}, "--env: name 'K\\x00'"),
        (["--env", "A\0B=v", "--", "true"], {}, "--env: name 'A\\x00B'"),
        (["--cwd", "/tmp\0x", "--", "true"], {}, "--cwd: contains a NUL byte"),
        (["--name", "a\0b", "--", "true"], {}, "--name: contains a NUL byte"),
        (["--", "true"], {"": "v"}, "the environment: an environment variable needs a name"),
        (["--", "true"], {"A=B": "v"}, "the environment: name 'A=B'"),
        (["--", "true"], {"K": "a\0b"}, "the environment: variable 'K': contains a NUL"),
    ],
)
def test_the_intake_refuses_what_exec_cannot_carry(
    home: Home, argv: list[str], env: dict[str, str], message: str
) -> None:
    """A client sends raw words and its environment: they never come from a real argv (which
    cannot hold a NUL), so the daemon checks them with the same code."""
    assert workbench("daemon", "start").returncode == 0
    wait_for(home.intake_socket.exists, what="the intake socket")
    reply = _intake(home, argv, {"PATH": os.environ["PATH"], **env})
    assert reply.get("exit") == 2, reply
    assert message in str(reply.get("stderr")), reply
    assert "Traceback" not in str(reply.get("stderr"))
    _no_jobs(home)
    daemon_log = home.daemon_log.read_text()
    assert "Traceback" not in daemon_log and "not taken" not in daemon_log


def test_env_flags_that_exec_cannot_carry_are_refused_by_the_cli(home: Home) -> None:
    for words, message in (
        (["--env", "=v"], "--env: expected KEY=VALUE"),
        (["--env", "A"], "--env: expected KEY=VALUE"),
    ):
        for env in (None, FULL):
            _refused(workbench("submit", *words, "--", "true", env=env), message)
    _no_jobs(home)


# ---- 4. wait on a removed job ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["wait", "submit --wait"])
def test_wait_exits_non_zero_for_a_job_removed_while_waited_on(home: Home, path: str) -> None:
    import subprocess
    import sys

    held = workbench("submit", "--paused", "--", "true").stdout.strip()
    command = (
        ["wait", held] if path == "wait" else ["submit", "--wait", "--after", held, "--", "true"]
    )
    waiter = subprocess.Popen(
        [sys.executable, "-m", "workbench", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    target = held if path == "wait" else str(int(held) + 1)
    assert workbench("rm", target).returncode == 0
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode not in (0, None), (out, err)
    assert f"job {target} was removed before it ended" in err
    # A job removed before `wait` began is no job at all: exit 2, as for any unknown id.
    late = workbench("wait", target)
    assert late.returncode == 2 and f"no job with id {target}" in late.stderr


# ---- 5. pipelines far past the recursion limit ---------------------------------------------


def _chain(path: Path, stages: int, cycle: bool) -> None:
    lines = ['[pipeline]\nname = "long"\n']
    for index in reversed(range(stages)):  # listed last stage first
        after = f"s{index - 1}" if index else (f"s{stages - 1}" if cycle else None)
        lines.append(f'[[stage]]\nname = "s{index}"\nkind = "command"\nargv = ["true"]')
        if after:
            lines.append(f'after = ["{after}"]')
        lines.append("")
    path.write_text("\n".join(lines))


def test_a_long_chain_listed_in_reverse_is_ordered_and_a_long_cycle_is_named(
    tmp_path: Path,
) -> None:
    chain = tmp_path / "chain.toml"
    _chain(chain, 1200, cycle=False)
    pipeline = load_pipeline(chain, env={"PATH": "/usr/bin"})
    assert [stage.name for stage in pipeline.stages] == [f"s{i}" for i in range(1200)]
    cycle = tmp_path / "cycle.toml"
    _chain(cycle, 2000, cycle=True)
    with pytest.raises(SpecError) as refused:
        load_pipeline(cycle, env={"PATH": "/usr/bin"})
    message = str(refused.value)
    assert "cycle s1999 -> s1998 -> " in message and "s1 -> s0 -> s1999" in message
    assert "(2000 stages)" in message and len(message) < 1000


def test_a_long_cycle_through_the_cli_exits_2_naming_it(home: Home, tmp_path: Path) -> None:
    cycle = tmp_path / "cycle.toml"
    _chain(cycle, 2000, cycle=True)
    result = workbench("--batch", str(cycle), "--json")
    _refused(result, "cycle")
    _no_jobs(home)
    assert json.dumps  # the JSON mode refuses before printing anything
    assert result.stdout == ""
