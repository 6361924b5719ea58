"""The one spec validator: TOML tables -> typed dataclasses, with errors that name the key."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from workbench.units import INT64_MAX, check_int, check_number

T = TypeVar("T")


class SpecError(ValueError):
    """A spec or pipeline file that cannot be run; the message names the place and the key."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        (item,) = typing.get_args(tp)
        return f"list of {_type_name(item)}"
    if origin is dict:
        return "table"
    names = {str: "string", int: "integer", float: "number", bool: "true/false"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _describe(value: Any) -> str:
    names = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list"}
    return f"{names.get(type(value), type(value).__name__)} {value!r}"


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widened to float)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        if len(options) == 1:  # Optional[X]: X's own message is the precise one
            return coerce(value, options[0], where)
        for option in options:
            try:
                return coerce(value, option, where)
            except SpecError:
                continue
        raise SpecError(f"{where}: expected {_type_name(tp)}, got {_describe(value)}")
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise SpecError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise SpecError(f"{where}: expected {_type_name(tp)}, got {_describe(value)}")
        return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise SpecError(f"{where}: expected a table, got {_describe(value)}")
        return {str(k): coerce(v, value_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:  # NaN, infinity and numbers past 64 bits are never meant
                check_number(value, minimum=None, maximum=float(INT64_MAX))
                check_number(value, minimum=-float(INT64_MAX))
            except ValueError as error:
                raise SpecError(f"{where}: {error}") from None
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                check_int(value, minimum=None)
            except ValueError as error:
                raise SpecError(f"{where}: {error}") from None
            return value
    elif tp in (str, bool):
        if isinstance(value, tp):
            return value
    elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise SpecError(f"{where}: expected a table, got {_describe(value)}")
        return from_table(tp, value, where)
    else:
        raise TypeError(f"unsupported annotation {tp!r}")
    raise SpecError(f"{where}: expected {_type_name(tp)}, got {_describe(value)}")


def check_keys(table: Mapping[str, Any], known: typing.Iterable[str], where: str) -> None:
    """Refuse keys not in `known`, suggesting the closest known one."""
    known = list(known)
    for key in table:
        if key not in known:
            import difflib  # only for the message

            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SpecError(f"{where}: unknown key '{key}'{hint}")


@functools.cache
def _shape_of(cls: type) -> tuple[dict[str, Any], list[dataclasses.Field[Any]]]:
    """A spec dataclass's resolved type hints and init fields, worked out once per class
    (`typing.get_type_hints` compiles every annotation again: most of a bulk submit's time)."""
    return typing.get_type_hints(cls), [f for f in dataclasses.fields(cls) if f.init]


def from_table(
    cls: type[T], table: Mapping[str, Any], where: str, ignore: tuple[str, ...] = ()
) -> T:
    """Build dataclass `cls` from `table`: unknown keys, missing keys and wrong types are refused."""
    assert dataclasses.is_dataclass(cls)
    hints, fields = _shape_of(cls)
    check_keys({k: v for k, v in table.items() if k not in ignore}, [f.name for f in fields], where)
    kwargs: dict[str, Any] = {}
    for field in fields:
        if field.name in table:
            kwargs[field.name] = coerce(
                table[field.name], hints[field.name], f"{where}: key '{field.name}'"
            )
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise SpecError(f"{where}: missing key '{field.name}'")
    return cls(**kwargs)


def to_table(obj: Any) -> dict[str, Any]:
    """A spec dataclass -> a plain dict (for JSON in the store)."""
    return dataclasses.asdict(obj)


def check_exec_strings(table: Mapping[str, Any], where: str) -> None:
    """Refuse a job table whose strings cannot reach exec(2) or an environment: any string
    (argv words, cwd, sources, every value at any depth) holding a NUL byte, and an `env` table
    whose names are empty or hold `=` or a NUL (execve takes NUL-terminated `NAME=value`
    strings, so these would fail at launch, or set another variable). The one check for the
    CLI, spec files, pipeline stages and the daemon's intake (all go through `build_request`).
    Walks the table without recursion. Raises SpecError naming `where`, the key and the index,
    e.g. `job.toml: key 'argv'[2]: contains a NUL byte`."""
    stack: list[tuple[str, Any, bool]] = [
        (f"{where}: key '{key}'", value, key == "env") for key, value in table.items()
    ]
    for key in table:
        check_text(str(key), f"{where}: key {key!r}")
    while stack:
        place, value, is_env = stack.pop()
        if isinstance(value, str):
            check_text(value, place)
        elif isinstance(value, list):
            stack.extend((f"{place}[{i}]", item, False) for i, item in enumerate(value))
        elif isinstance(value, dict):
            for name, item in value.items():
                if is_env:
                    check_env_name(str(name), place)
                else:
                    check_text(str(name), f"{place}: name {name!r}")
                stack.append((f"{place}.{name}", item, False))


def check_environment(env: Mapping[str, str], where: str) -> None:
    """Refuse an environment (names to values) that execve cannot carry: see
    `check_exec_strings`. Raises SpecError naming `where` and the variable."""
    for name, value in env.items():
        check_env_name(name, where)
        check_text(value, f"{where}: variable {name!r}")


def check_env_name(name: str, where: str) -> None:
    """An environment variable's name: not empty, no `=`, no NUL (raises SpecError)."""
    if not name:
        raise SpecError(f"{where}: an environment variable needs a name, got ''")
    if "=" in name:
        raise SpecError(f"{where}: name {name!r}: an environment variable's name cannot hold '='")
    check_text(name, f"{where}: name {name!r}")


def check_text(text: str, where: str) -> None:
    """Refuse a string holding a NUL byte (no C string, so no path, argument or variable, can
    carry one): raises SpecError naming `where` and the offset."""
    if "\0" in text:
        raise SpecError(f"{where}: contains a NUL byte (at offset {text.index(chr(0))})")
