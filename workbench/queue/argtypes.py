"""Checked argparse types: every number a flag takes is parsed by `workbench.units`, so NaN,
infinity, 64-bit overflow and negative values exit 2 with argparse naming the flag."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from workbench.jobmodel.resources import parse_gpus
from workbench.units import parse_duration, parse_int, parse_number, parse_size


def _checked(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = name  # argparse shows it in its fallback message
    return convert


amount = _checked(lambda t: parse_number(t, minimum=0.0), "number")  # >= 0, e.g. --gpus 0.5
count = _checked(lambda t: parse_int(t, minimum=0), "count")  # a whole number >= 0
signed = _checked(lambda t: parse_int(t, minimum=None), "integer")  # e.g. --priority -3
job_id = _checked(lambda t: parse_int(t, minimum=1), "job id")
version = _checked(lambda t: parse_int(t, minimum=1), "version")  # a dataset version, 1 up
size = _checked(parse_size, "size")  # bytes, e.g. 8GiB
duration = _checked(parse_duration, "duration")  # seconds, e.g. 2h
# GPUs as the spec key takes them: a count, a fraction, or a MIG profile (`--gpus 1g.10gb`)
gpus = _checked(lambda t: t if parse_gpus(t)[1] else parse_gpus(t)[0], "GPUs")


def _since(text: str) -> float:
    """A point in time: a duration ago ("24h", "7d") or an ISO date or date-time in local time
    ("2026-12-01", "2026-12-01T09:00"); unix seconds."""
    import datetime
    import time

    try:
        return time.time() - parse_duration(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(
            f"expected a duration ago (24h, 7d) or a date (2026-12-01[T09:00]), got {text!r}"
        ) from None


since = _checked(_since, "time")  # --since 24h, --since 2026-12-01
