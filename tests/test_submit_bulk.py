"""`workbench submit --bulk FILE|-`: many jobs in one call, one per line (split as a shell
would), the other options applied to each, all queued in one transaction or none; a bad line
is named by its number (exit 2)."""

from __future__ import annotations

from pathlib import Path

from conftest import workbench

from workbench.daemon.client import Client


def test_bulk_from_stdin_queues_one_job_per_line_with_the_options(client: Client) -> None:
    lines = "echo one\n\n# a comment\necho 'two words' three\n  printf '%s\\n' x  \n"
    done = workbench("submit", "--bulk", "-", "--paused", "--group", "bulk", input=lines)
    assert done.returncode == 0, done.stderr
    ids = [int(word) for word in done.stdout.split()]
    assert len(ids) == 3
    jobs = [client.store.get(i) for i in ids]
    assert [j.argv for j in jobs] == [
        ["echo", "one"],
        ["echo", "two words", "three"],
        ["printf", "%s\\n", "x"],
    ]
    assert {j.state for j in jobs} == {"paused"} and {j.group for j in jobs} == {"bulk"}


def test_a_bad_line_is_named_and_nothing_is_queued(client: Client, tmp_path: Path) -> None:
    listing = tmp_path / "jobs.txt"
    listing.write_text("echo ok\necho fine\necho 'unclosed\n")
    done = workbench("submit", "--bulk", str(listing), "--paused")
    assert done.returncode == 2
    assert f"{listing} line 3" in done.stderr and "Traceback" not in done.stderr
    assert client.store.list_jobs() == []
    listing.write_text("echo ok\n")
    bad_option = workbench("submit", "--bulk", str(listing), "--cwd", str(tmp_path / "gone"))
    assert bad_option.returncode == 2 and "--cwd" in bad_option.stderr
    both = workbench("submit", "--bulk", str(listing), "--", "true")
    assert both.returncode == 2 and "--bulk" in both.stderr
    empty = workbench("submit", "--bulk", "-", input="\n# nothing\n")
    assert empty.returncode == 2 and "no command" in empty.stderr
    assert client.store.list_jobs() == []


def test_bulk_jobs_run(client: Client) -> None:
    done = workbench("submit", "--bulk", "-", "--wait", input="true\nsh -c 'exit 0'\n")
    assert done.returncode == 0, done.stderr
