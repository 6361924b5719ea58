"""The one reader of the user's TOML files (pipelines, specs, config.toml): errors name the file."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any


class UserFileError(ValueError):
    """A user's file that cannot be read or parsed; the message names the file (exit code 2)."""


def _read_bytes(path: Path, regular_only: bool) -> bytes:
    """The bytes of `path`, opened with O_NONBLOCK (see `read_toml`); raises UserFileError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserFileError(f"{path}: no such file") from None
    except OSError as error:
        raise UserFileError(f"{path}: cannot read ({error.strerror or error})") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise UserFileError(f"{path}: cannot read (Is a directory)")
        if not stat.S_ISREG(mode):
            if regular_only:
                raise UserFileError(
                    f"{path}: not a regular file (a FIFO, device or socket); replace it with a"
                    " file or remove it"
                )
            os.set_blocking(fd, True)  # a stream the caller named: wait for its writer
        with os.fdopen(fd, "rb", closefd=False) as stream:
            return stream.read()
    except OSError as error:
        raise UserFileError(f"{path}: cannot read ({error.strerror or error})") from None
    finally:
        os.close(fd)


def read_toml(path: Path, regular_only: bool = False) -> dict[str, Any]:
    """Parse the TOML file at `path` into a dict.

    The file is opened non-blocking, so a FIFO never holds the reader: with `regular_only`
    (config.toml, and whatever the daemon reads) anything but a regular file is refused; else
    a stream (`/dev/stdin`, a shell's `<(...)`) is then read as usual. Raises UserFileError
    naming `path` when it is missing, unreadable (a folder, no permission), not a regular file
    where one is needed, not UTF-8 (TOML files are UTF-8 by definition) or not valid TOML
    (nesting too deep for the parser's recursion included)."""
    raw = _read_bytes(path, regular_only)
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
