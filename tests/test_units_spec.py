"""Pure helpers: size and duration parsing/formatting, and the spec validator's messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from workbench.queue.spec import SpecError, from_table
from workbench.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8GiB", 8 * 1024**3),
        ("512MiB", 512 * 1024**2),
        ("2GB", 2 * 1000**3),
        ("1.5g", 1_500_000_000),
        ("100", 100),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "8 parsecs", "", "-1GiB", True])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("15m", 900.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | float, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["soon", "2 fortnights", "0", "h", "1h x", 0])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.25, "250ms"),
        (4.2, "4.2s"),
        (42, "42s"),
        (185, "3m05s"),
        (7800, "2h10m"),
        (3 * 86400 + 4 * 3600, "3d4h"),
        (None, "-"),
    ],
)
def test_format_duration(seconds: float | None, expected: str) -> None:
    assert format_duration(seconds) == expected


@pytest.mark.parametrize(
    ("size", "expected"),
    [(512, "512 B"), (1536, "1.5 KiB"), (80 * 1024**3, "80.0 GiB"), (None, "n/a")],
)
def test_format_size(size: int | None, expected: str) -> None:
    assert format_size(size) == expected


@dataclass(frozen=True)
class Inner:
    size: int


@dataclass(frozen=True)
class Example:
    dataset: str
    epochs: int = 10
    lr: float = 1e-3
    model: Literal["mlp", "linear"] = "mlp"
    hidden: list[int] = field(default_factory=list)
    gate: dict[str, float] = field(default_factory=dict)
    inner: Inner | None = None


def test_from_table_builds_and_widens_ints_to_floats() -> None:
    spec = from_table(
        Example,
        {
            "dataset": "d",
            "lr": 1,
            "hidden": [8, 4],
            "gate": {"min_accuracy": 1},
            "inner": {"size": 3},
        },
        "s",
    )
    assert spec == Example("d", 10, 1.0, "mlp", [8, 4], {"min_accuracy": 1.0}, Inner(3))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, "s: missing key 'dataset'"),
        ({"dataset": "d", "epoch": 3}, "s: unknown key 'epoch' (did you mean 'epochs'?)"),
        ({"dataset": "d", "epochs": "3"}, "s: key 'epochs': expected integer, got string '3'"),
        ({"dataset": "d", "epochs": True}, "s: key 'epochs': expected integer, got boolean True"),
        ({"dataset": "d", "model": "cnn"}, "s: key 'model': expected 'mlp' or 'linear', got 'cnn'"),
        (
            {"dataset": "d", "hidden": [8, "x"]},
            "s: key 'hidden'[1]: expected integer, got string 'x'",
        ),
        (
            {"dataset": "d", "gate": {"min_accuracy": "high"}},
            "s: key 'gate'.min_accuracy: expected number",
        ),
        ({"dataset": "d", "inner": {"sise": 1}}, "unknown key 'sise' (did you mean 'size'?)"),
    ],
)
def test_from_table_messages_name_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError) as caught:
        from_table(Example, table, "s")
    assert message in str(caught.value)


# ---- every number a user gives is checked at the parsing layer ---------------------------

from workbench.units import parse_int, parse_number  # noqa: E402


@pytest.mark.parametrize(
    "text", ["99999999999999999999999TiB", "1e999", float("nan"), float("inf"), -1, 2**64]
)
def test_parse_size_refuses_nan_infinity_overflow(text: str | float) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("text", ["-5", "99999999999d", float("nan"), float("inf"), -5.0])
def test_parse_duration_refuses_nan_infinity_overflow_negative(text: str | float) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nan", "NaN"),
        ("inf", "finite"),
        ("-inf", "finite"),
        ("-1", "negative"),
        ("x", "not a number"),
    ],
)
def test_parse_number_messages(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_number(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("99999999999999999999", "at most"),
        ("-3", "negative"),
        ("1.5", "whole"),
        ("9" * 100, "at most"),
    ],
)
def test_parse_int_messages(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_int(text)


@pytest.mark.parametrize(
    ("value", "message"),
    [(float("nan"), "NaN"), (float("inf"), "finite"), (2**70, "at most"), (-(2**70), "at least")],
)
def test_spec_numbers_are_finite_and_64_bit(value: float, message: str) -> None:
    @dataclass
    class Spec:
        rate: float = 0.0
        count: int = 0

    key = "count" if isinstance(value, int) else "rate"
    with pytest.raises(SpecError, match=f"key '{key}': .*{message}"):
        from_table(Spec, {key: value}, "job.toml")
