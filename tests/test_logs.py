"""Job logs: rotation under the cap, a follower that never repeats or skips across rotations,
bounded tails whatever the line endings, and `workbench logs -f/-n` end to end."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_state, workbench

from workbench.daemon.client import Client
from workbench.daemon.logs import LogFollower, RotatingLog, rotated, tail_bytes, tail_lines
from workbench.paths import Home
from workbench.queue.requests import build_request


@pytest.mark.parametrize("most_lines_between_reads", [40, 150])
def test_follower_streams_every_byte_once_across_rotations(
    tmp_path: Path, most_lines_between_reads: int
) -> None:
    """Reads interleaved with writes at random points; with 150 lines (more than one 4 KiB
    generation) between two reads, the follower also has to pick up a generation it never had
    open."""
    path = tmp_path / "log"
    log = RotatingLog(path, 8192)
    follower = LogFollower(path, start=0)
    lines = [f"line {i:05d} {'x' * (i % 70)}\n".encode() for i in range(5000)]
    chooser = random.Random(7)
    received = bytearray()
    position = 0
    while position < len(lines):
        batch = chooser.randint(1, most_lines_between_reads)
        for line in lines[position : position + batch]:
            log.write(line)
        position += batch
        received += follower.read()
    log.close()
    received += follower.read()
    follower.close()
    assert rotated(path).exists()  # it did rotate, many times
    assert bytes(received) == b"".join(lines)


LINE = re.compile(r"line (\d{7})")


def assert_faithful(text: str, total: int) -> int:
    """Every line is a whole `line NNNNNNN` or a skip marker; numbers strictly increase and
    jump only right after a marker. Returns the number of markers."""
    previous, markers, after_marker = -1, 0, True
    for row in text.split("\n")[:-1]:
        if row.startswith("[workbench]") and "skipped: the log rotated faster" in row:
            markers += 1
            after_marker = True
            continue
        match = LINE.fullmatch(row)
        assert match, f"not a whole line: {row!r}"
        number = int(match.group(1))
        assert number > previous, f"{number} after {previous}"
        assert number == previous + 1 or after_marker, f"gap {previous} -> {number} unmarked"
        previous, after_marker = number, False
    assert text.endswith("\n") and previous == total - 1
    return markers


@pytest.mark.parametrize("offsets_record", [True, False])
def test_follower_that_falls_generations_behind_marks_the_skip_and_keeps_whole_lines(
    tmp_path: Path, offsets_record: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a 64 KiB cap and bursts of 5,000 lines between reads, `logs -f` used to glue lines
    (`line 0005026line 0017371`), print fragments and skip without a word. Without the
    writer's offsets record (a full disk), the marker cannot give a count but must still be
    there."""
    if not offsets_record:
        monkeypatch.setattr(RotatingLog, "_record_offsets", lambda self, starts: None)
    path = tmp_path / "log"
    log = RotatingLog(path, 64 * 1024)
    follower = LogFollower(path, start=0)
    chooser = random.Random(3)
    received = bytearray()
    number = 0
    for _ in range(40):
        burst = b"".join(f"line {number + i:07d}\n".encode() for i in range(5000))
        number += 5000
        for start in range(0, len(burst), 4096):  # pipe-sized pieces, cut mid-line
            log.write(burst[start : start + 4096])
            if chooser.random() < 0.05:
                received += follower.read()
    log.close()
    received += follower.read() + follower.flush()
    follower.close()
    text = received.decode()
    assert assert_faithful(text, number) > 0
    counts = re.findall(r"\[workbench\] (\d+) bytes skipped", text)
    assert bool(counts) == offsets_record
    if offsets_record:  # the count is exact: whole lines lost + the torn ones
        shown = len(LINE.findall(text)) * 13
        assert sum(map(int, counts)) <= number * 13 - shown


def test_follower_holds_an_unfinished_line_until_it_ends(tmp_path: Path) -> None:
    path = tmp_path / "log"
    log = RotatingLog(path, 8192)
    follower = LogFollower(path, start=0)
    log.write(b"one\ntw")
    assert follower.read() == b"one\n"
    log.write(b"o\nthr")
    assert follower.read() == b"two\n"
    log.close()
    assert follower.read() == b""
    assert follower.flush() == b"thr"
    follower.close()


def test_snapshot_and_stream_meet_exactly(tmp_path: Path) -> None:
    path = tmp_path / "log"
    log = RotatingLog(path, 8192)
    for i in range(300):
        log.write(f"old {i}\n".encode())
    follower = LogFollower(path)
    log.write(b"new 1\n")
    before = follower.snapshot(None)
    last_two = follower.snapshot(2)
    log.write(b"new 2\n")
    after = follower.read()
    assert before.endswith(b"old 299\n") and b"new" not in before
    assert last_two == b"old 298\nold 299\n"
    assert after == b"new 1\nnew 2\n"
    follower.close()


def test_tail_of_carriage_return_progress_reads_a_bounded_part(tmp_path: Path) -> None:
    """`logs -n 3` on a 12 MB log of carriage-return progress used to take seconds: a line
    search by `\\n` read the whole file."""
    path = tmp_path / "log"
    with open(path, "wb") as out:
        for i in range(800_000):
            out.write(f"\rstep {i:07d} {'#' * 2}".encode())
    assert path.stat().st_size > 12_000_000
    expected = b"step 0799997 ##\nstep 0799998 ##\nstep 0799999 ##\n"
    assert tail_lines(path, 3) == expected
    assert tail_lines(path, 3, limit_bytes=4096) == expected  # 4 KiB of 12 MB suffice
    path.unlink()  # not left in pytest's folder


def test_tail_lines_handles_every_line_ending_and_continues_into_the_older_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log"
    rotated(path).write_bytes(b"a\r\nb\n")
    path.write_bytes(b"c\rd\n")
    assert tail_lines(path, 3) == b"b\nc\nd\n"
    assert tail_lines(path, 10) == b"a\nb\nc\nd\n"
    assert tail_bytes(path, 6) == b"b\nc\rd\n"
    assert tail_bytes(tmp_path / "missing", 6) == b""


def test_logs_follow_across_the_cap_prints_each_line_once(client: Client, home: Home) -> None:
    """`logs -f` across the log cap used to print lines twice and jump back."""
    home.config.write_text('[daemon]\nlog_cap = "16KiB"\n')
    script = (
        "import time\n"
        "for i in range(4000):\n"
        "    print(f'line {i:05d}', flush=True)\n"
        "    if i % 50 == 0: time.sleep(0.01)\n"
    )
    table = {"kind": "command", "argv": [sys.executable, "-c", script]}
    job_id = client.submit(build_request(table, Path.cwd(), "test"))
    follow = subprocess.run(
        [sys.executable, "-m", "workbench", "logs", "-f", str(job_id)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert follow.returncode == 0, follow.stderr
    wait_state(client, job_id, "succeeded")
    numbers = [int(line.split()[1]) for line in follow.stdout.splitlines()[1:]]
    assert numbers == list(range(numbers[0], 4000))


def test_logs_follow_faster_rotation_than_reading_stays_faithful(
    client: Client, home: Home
) -> None:
    """200,000 lines in bursts of 5,000 under a 64 KiB cap: `logs -f` used to print 107,580
    lines with 20 silent gaps, glued lines, fragments and blank lines."""
    home.config.write_text('[daemon]\nlog_cap = "64KiB"\n')
    script = (
        "import sys, time\n"
        "for b in range(40):\n"
        "    sys.stdout.write(''.join(f'line {b*5000+i:07d}\\n' for i in range(5000)))\n"
        "    sys.stdout.flush(); time.sleep(0.01)\n"
    )
    table = {"kind": "command", "argv": [sys.executable, "-c", script]}
    job_id = client.submit(build_request(table, Path.cwd(), "test"))
    follow = subprocess.run(
        [sys.executable, "-m", "workbench", "logs", "-f", str(job_id)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert follow.returncode == 0, follow.stderr
    wait_state(client, job_id, "succeeded")
    rows = follow.stdout.split("\n")
    if rows and rows[0].startswith("[workbench]") and "skipped" not in rows[0]:
        rows = rows[1:]  # the job's header line
    if rows and not LINE.fullmatch(rows[0]) and not rows[0].startswith("[workbench]"):
        rows = rows[1:]  # the snapshot may begin mid-line
    assert_faithful("\n".join(rows), 200_000)


def test_logs_n_on_progress_output(client: Client, home: Home) -> None:
    script = "import sys\nfor i in range(2000): sys.stdout.write(f'\\r{i}%')\n"
    table = {"kind": "command", "argv": [sys.executable, "-c", script]}
    job_id = client.submit(build_request(table, Path.cwd(), "test"))
    wait_state(client, job_id, "succeeded")
    shown = workbench("logs", "-n", "2", str(job_id))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "1998%\n1999%\n"


def test_terminal_lines_apply_redraws_and_hold_the_unfinished_line() -> None:
    """900 `\\r` redraws of a progress bar are one line, as a terminal shows it; a line torn
    between two reads (even between `\\r` and `\\n`) is joined with the next read."""
    from workbench.daemon.logs import overwrite_redraws, terminal_lines

    bar = "".join(f"\rprogress {p:4d}/900" for p in range(1, 901))
    lines, rest = terminal_lines("start\n" + bar + "\r")
    assert lines == ["start"] and rest.endswith("\r")
    lines, rest = terminal_lines(rest + "\nnext\n")
    assert lines == ["progress  900/900", "next"] and rest == ""
    assert overwrite_redraws("loading...\rdone") == "doneing..."
