"""The one parser and formatter for sizes, durations, counts and ages.

Every number a user gives (a CLI flag, a spec or config key) is checked here: NaN, infinity,
overflow and negative values raise ValueError with a message that the caller prefixes with the
flag or key name.
"""

from __future__ import annotations

import math
import re

INT64_MAX = 2**63 - 1  # SQLite's INTEGER range
MAX_DURATION_S = 100 * 365 * 86400.0  # a century: beyond this a limit is a mistake

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def check_number(
    value: float,
    *,
    minimum: float | None = 0.0,
    maximum: float | None = None,
    above: float | None = None,
) -> float:
    """`value` if it is a finite number within the bounds, else ValueError saying why.

    minimum/maximum are inclusive; `above` is an exclusive lower bound."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, float) and math.isnan(value):
        raise ValueError("must be a number, got NaN")
    if isinstance(value, float) and math.isinf(value):
        raise ValueError(f"must be finite, got {value}")
    if minimum is not None and value < minimum:
        bound = "must not be negative" if minimum == 0 else f"must be at least {minimum:g}"
        raise ValueError(f"{bound}, got {value:g}")
    if above is not None and value <= above:
        raise ValueError(f"must be above {above:g}, got {value:g}")
    if maximum is not None and value > maximum:
        raise ValueError(f"must be at most {maximum:g}, got {value:g}")
    return value


def check_int(value: int, *, minimum: int | None = 0, maximum: int = INT64_MAX) -> int:
    """`value` if it is an integer within the bounds (SQLite's 64-bit range at most)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"not an integer: {value!r}")
    low = -INT64_MAX - 1 if minimum is None else minimum
    if value < low:
        raise ValueError(
            ("must not be negative" if low == 0 else f"must be at least {low}") + f", got {value}"
        )
    if value > maximum:
        raise ValueError(f"must be at most {maximum}, got {value}")
    return value


def parse_number(
    text: str | int | float,
    *,
    minimum: float | None = 0.0,
    maximum: float | None = None,
    above: float | None = None,
) -> float:
    """A decimal number (`0.5`, `2`) that is finite and within the bounds -> float."""
    if isinstance(text, str):
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"not a number: {text!r}") from None
    else:
        value = text
    return float(check_number(value, minimum=minimum, maximum=maximum, above=above))


def parse_int(text: str | int, *, minimum: int | None = 0, maximum: int = INT64_MAX) -> int:
    """A whole number within the bounds (64-bit at most) -> int."""
    if isinstance(text, str):
        if not re.fullmatch(r"\s*[+-]?[0-9]+\s*", text):
            raise ValueError(f"not a whole number: {text!r}")
        if len(text.strip()) > 40:
            raise ValueError(f"must be at most {maximum}, got {text.strip()[:20]}...")
        value = int(text)
    else:
        value = text
    return check_int(value, minimum=minimum, maximum=maximum)


def parse_size(text: str | int | float) -> int:
    """`8GiB`, `500MB`, `1.5g` or a plain number of bytes -> bytes (at most 2^63 - 1)."""
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, int | float):
        try:
            check_number(text, maximum=INT64_MAX)
        except ValueError as error:
            raise ValueError(f"size {error}") from None
        return int(text)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (use e.g. 512MiB, 8GiB, 2GB)")
    value = float(match.group(1)) * _SIZE_UNITS[unit]
    if not math.isfinite(value) or value > INT64_MAX:
        raise ValueError(f"size too large: {text.strip()!r} (at most 8 EiB)")
    return int(value)


def parse_duration(text: str | int | float) -> float:
    """`90`, `90s`, `15m`, `2h`, `1d`, `1h30m` -> seconds."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        try:
            check_number(text, above=0.0, maximum=MAX_DURATION_S)
        except ValueError as error:
            raise ValueError(f"duration {error}") from None
        return float(text)
    if text.strip().startswith("-"):
        raise ValueError(f"duration must be positive, got {text.strip()!r}")
    parts = re.findall(r"([0-9]*\.?[0-9]+)\s*([a-z]*)", text.strip().lower())
    rebuilt = "".join(f"{n}{u}" for n, u in parts)
    if not parts or rebuilt != re.sub(r"\s+", "", text.strip().lower()):
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 2h)")
    total = 0.0
    for number, unit in parts:
        if unit not in _DURATION_UNITS:
            raise ValueError(f"not a duration: {text!r} (unknown unit {unit!r})")
        total += float(number) * _DURATION_UNITS[unit]
    if total <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    if not math.isfinite(total) or total > MAX_DURATION_S:
        raise ValueError(f"duration too long: {text!r} (at most 100 years)")
    return total


def format_size(num_bytes: float | None) -> str:
    """Bytes -> `1.5 GiB` (binary units, as nvidia-smi and free do)."""
    if num_bytes is None:
        return "n/a"
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_duration(seconds: float | None) -> str:
    """Seconds -> `850ms`, `42s`, `3m05s`, `2h10m`, `3d4h`."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h"


def format_rate(bytes_per_second: float | None) -> str:
    """Bytes per second -> `12.3 MiB/s`."""
    if bytes_per_second is None:
        return "n/a"
    return f"{format_size(bytes_per_second)}/s"
