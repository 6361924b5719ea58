"""The one JSON writer: valid JSON for every command that prints JSON."""

from __future__ import annotations

import datetime
import decimal
import json
import math

import pytest

from workbench.jsonout import dumps


def strict_loads(text: str) -> object:
    def refuse(name: str) -> object:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_nan_and_infinities_become_null_anywhere() -> None:
    value = {
        "a": math.nan,
        "b": [1.0, math.inf, {"c": -math.inf}],
        "d": (math.nan, 2),
        "e": "NaN",
    }
    text = dumps(value)
    assert strict_loads(text) == {
        "a": None,
        "b": [1.0, None, {"c": None}],
        "d": [None, 2],
        "e": "NaN",
    }


def test_other_values_keep_their_text_and_options_pass_through() -> None:
    day = datetime.date(2024, 1, 2)
    assert strict_loads(dumps({"d": day, "x": decimal.Decimal("1.50")})) == {
        "d": "2024-01-02",
        "x": "1.50",
    }
    assert dumps({"b": 1, "a": math.nan}, sort_keys=True) == '{"a": null, "b": 1}'


def test_cli_json_printers_use_it(capsys: pytest.CaptureFixture[str]) -> None:
    """`ls/show/top --json` print through `_print_json`; `--batch --json` through the pipeline
    reporter's events: both write null for NaN (a diverged loss, a GPU reading)."""
    import io

    from workbench.cli.main import _print_json
    from workbench.queue.pipeline import _Reporter

    _print_json({"loss": math.nan, "peak": math.inf})
    assert strict_loads(capsys.readouterr().out) == {"loss": None, "peak": None}
    out = io.StringIO()
    _Reporter(True, out, io.StringIO()).emit({"type": "metric", "val_loss": math.nan})
    assert strict_loads(out.getvalue()) == {"type": "metric", "val_loss": None}
