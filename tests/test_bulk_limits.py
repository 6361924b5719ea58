"""`submit --bulk` input past its size cap is refused at once, before a line is split."""

from __future__ import annotations

from pathlib import Path

from conftest import workbench

from workbench.paths import Home


def test_a_bulk_file_over_the_cap_is_refused_unread(home: Home, tmp_path: Path) -> None:
    """Before: 200 MB of 100 KB lines took 8 minutes of shell-style splitting and queued 2,000
    jobs; now anything over 16 MiB is exit 2 naming the file, with nothing queued."""
    bulk = tmp_path / "jobs.txt"
    bulk.write_text(("echo " + "x" * 100_000 + "\n") * 170)
    done = workbench("submit", "--paused", "--bulk", str(bulk), timeout=30)
    assert done.returncode == 2, done.stderr
    assert f"--bulk {bulk}: over 16 MiB" in done.stderr and "Traceback" not in done.stderr
    assert workbench("ls", "--json").stdout.strip() in ("", "[]")


def test_a_crlf_bulk_file_queues_its_commands_without_the_cr(home: Home, tmp_path: Path) -> None:
    bulk = tmp_path / "jobs.txt"
    bulk.write_bytes(b"echo a\r\n\r\necho b\r\n")
    done = workbench("submit", "--paused", "--bulk", str(bulk), "--json")
    assert done.returncode == 0, done.stderr
    assert "\\r" not in done.stdout and done.stdout.count('"id"') == 2
    workbench("daemon", "stop")
