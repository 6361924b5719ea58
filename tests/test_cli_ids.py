"""Job ids on the command line: one SQLite cannot hold is refused by argparse with exit 2 by
every command that takes ids, never a traceback (`diff` raised OverflowError)."""

from __future__ import annotations

import pytest
from conftest import workbench

from workbench.paths import Home

HUGE = str(2**80)


@pytest.mark.parametrize(
    "words",
    [["show", HUGE], ["logs", HUGE], ["wait", HUGE], ["rm", HUGE], ["diff", "1", HUGE],
     ["diff", HUGE, "1"], ["diff", "1", "-3"]],
)  # fmt: skip
def test_an_id_past_int64_is_exit_2(home: Home, words: list[str]) -> None:
    done = workbench(*words)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "argument" in done.stderr
