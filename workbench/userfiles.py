"""The one reader of the user's TOML files (pipelines, specs, config.toml): errors name the file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


class UserFileError(ValueError):
    """A user's file that cannot be read or parsed; the message names the file (exit code 2)."""


def read_toml(path: Path) -> dict[str, Any]:
    """Parse the TOML file at `path` into a dict.

    Raises UserFileError naming `path` when it is missing, unreadable (a folder, no permission),
    not UTF-8 (TOML files are UTF-8 by definition) or not valid TOML (nesting too deep for the
    parser's recursion included)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserFileError(f"{path}: no such file") from None
    except OSError as error:
        raise UserFileError(f"{path}: cannot read ({error.strerror or error})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserFileError(
            f"{path}: not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start});"
            " TOML files must be UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserFileError(f"{path}: not valid TOML: {error}") from None
    except RecursionError:
        raise UserFileError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None
