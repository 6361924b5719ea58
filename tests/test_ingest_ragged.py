"""Ragged CSV rows (too many or too few fields) become rejects; the rest publishes."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_ingest import ingest, query

from workbench.daemon.client import Client
from workbench.paths import Home


def _late_extra_field() -> tuple[str, int, str]:
    lines = ["a,b"] + [f"{i},{i}" for i in range(3000)]
    lines[2991] = "1,2,3"  # one row near the end of a 3,000-row file
    return "\n".join(lines) + "\n", 2992, "1,2,3"


SHAPES = {
    "extra_field": ("a,b\n1,2\n4,5,6\n7,8\n", 3, "4,5,6"),
    "missing_field": ("a,b\n1,2\n3\n7,8\n", 3, "3"),
    "extra_field_first_row": ("a,b\n1,2,3\n4,5\n7,8\n", 2, "1,2,3"),
    "missing_field_first_row": ("a,b\n1\n4,5\n7,8\n", 2, "1"),
    "late_extra_field": _late_extra_field(),
    "quoted_commas": ('a,b\n1,"x,y"\n2,"p,q",9\n7,"r,s"\n', 3, '2,"p,q",9'),
    "semicolons": ("a;b\n1;2\n4;5;6\n7;8\n", 3, "4;5;6"),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_one_ragged_row_is_rejected_and_the_rest_publishes(
    client: Client, home: Home, tmp_path: Path, shape: str
) -> None:
    text, line, raw = SHAPES[shape]
    (tmp_path / "x.csv").write_text(text)
    job = ingest(client, tmp_path, source=["x.csv"], dataset="ragged")
    assert job.state == "succeeded", job.reason
    columns = query(home, client, "SELECT column_name FROM (DESCRIBE ragged)")
    assert [c[0] for c in columns] == ["a", "b"]
    rows = query(home, client, "SELECT count(*) FROM ragged")
    assert rows[0][0] == text.count("\n") - 2  # header and the ragged row left out
    rejects = query(home, client, "SELECT line, raw_line FROM ragged_rejects")
    assert [(r[0], r[1]) for r in rejects] == [(line, raw)]


def test_ragged_rows_over_max_rejects_fail_naming_the_line(client: Client, tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b\n1,2\n4,5,6\n7,8\n")
    job = ingest(client, tmp_path, source=["x.csv"], dataset="ragged", max_rejects=0)
    assert job.state == "failed"
    assert "x.csv line 3" in (job.reason or ""), job.reason
