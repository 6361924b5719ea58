"""Encryption at rest: the lake's key, read from a key file only the user can read, and the
DuckDB options that write and read Parquet encrypted with it (Parquet modular encryption,
AES-GCM, footer and columns; see duckdb.org/docs/stable/data/parquet/encryption).

The key lives only in the key file and in the memory of the process reading or writing: it is
never put in state.db, a job's spec or environment, a log line or a command line. DuckDB holds it
in its own key registry (`PRAGMA add_parquet_key`), which no setting or table function lists."""

from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.catalog import extensions

if TYPE_CHECKING:
    import duckdb

# The name DuckDB's key registry knows the lake's key by, in every connection.
KEY_NAME = "workbench_lake"
# An encrypted Parquet footer ends with this magic instead of `PAR1` (Parquet format spec,
# "Encrypted footer mode").
ENCRYPTED_MAGIC = b"PARE"
KEY_BYTES = (16, 24, 32)  # AES-128, -192, -256


class EncryptionError(ValueError):
    """A key file that cannot be used (missing, readable by others, not a key), or an encrypted
    file read without the key or with another one. The message names the file, never the key."""


@dataclass(frozen=True)
class LakeKey:
    """The lake's AES key (16, 24 or 32 bytes) and the file it came from. `fingerprint` is a
    one-way BLAKE2b digest naming the key in messages; the key itself is never shown (repr hides
    it)."""

    path: Path
    secret: bytes = field(repr=False)

    @property
    def fingerprint(self) -> str:
        import hashlib

        return hashlib.blake2b(self.secret, digest_size=6, person=b"wb-lake-key").hexdigest()


def read_key(path: Path) -> LakeKey:
    """The key in `path`: 16, 24 or 32 bytes written as base64 or hex text (one line; e.g.
    `head -c 32 /dev/urandom | base64 > lake.key; chmod 600 lake.key`). The file must be a
    regular file owned by this user with no group or other permission bits (like ssh's keys).
    Raises EncryptionError naming the file and what is wrong."""
    try:
        info = os.stat(path, follow_symlinks=True)
    except OSError as error:
        raise EncryptionError(f"key file {path}: {error.strerror or error}") from None
    if not stat.S_ISREG(info.st_mode):
        raise EncryptionError(f"key file {path}: not a regular file")
    if info.st_uid != os.geteuid():
        raise EncryptionError(f"key file {path}: owned by uid {info.st_uid}, not by you")
    if info.st_mode & 0o077:
        raise EncryptionError(
            f"key file {path}: mode {stat.S_IMODE(info.st_mode):04o} lets others read it;"
            f" chmod 600 {path}"
        )
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise EncryptionError(f"key file {path}: not base64 or hex text ({error})") from None
    secret: bytes | None = None
    if len(text) in (2 * n for n in KEY_BYTES):
        try:
            secret = bytes.fromhex(text)
        except ValueError:
            secret = None
    if secret is None:
        try:
            secret = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            secret = b""
    if len(secret) not in KEY_BYTES:
        raise EncryptionError(
            f"key file {path}: holds {len(secret)} bytes; a key is 16, 24 or 32 random bytes"
            " as base64 or hex (head -c 32 /dev/urandom | base64)"
        )
    return LakeKey(path, secret)


def is_encrypted(path: Path | str) -> bool:
    """Whether a Parquet file's footer is encrypted (it ends with PARE, not PAR1)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            return handle.read(4) == ENCRYPTED_MAGIC
    except OSError:
        return False


def register(con: duckdb.DuckDBPyConnection, key: LakeKey) -> None:
    """Make `key` known to `con` as KEY_NAME, with httpfs loaded (DuckDB writes encrypted
    Parquet only with httpfs's OpenSSL cipher, and refuses its built-in one for writing)."""
    extensions.load(con, "httpfs")
    encoded = base64.b64encode(key.secret).decode("ascii")
    con.execute(f"PRAGMA add_parquet_key('{KEY_NAME}', '{encoded}')")


def write_option() -> str:
    """The COPY option writing a file encrypted with the registered key."""
    return f"ENCRYPTION_CONFIG {{footer_key: '{KEY_NAME}'}}"


def read_option() -> str:
    """The `read_parquet` argument reading a file encrypted with the registered key."""
    return f"encryption_config = {{footer_key: '{KEY_NAME}'}}"


def explain(error: BaseException, what: str, key: LakeKey | None) -> EncryptionError | None:
    """A DuckDB error reading an encrypted `what` in words (no key, or another key), or None
    when the error is about something else."""
    text = str(error)
    if "is encrypted, but 'encryption_config' was not set" in text or key is None:
        if "encrypt" not in text:
            return None
        return EncryptionError(
            f"{what} is encrypted: name its key file in config.toml ([lake] key_file)"
        )
    if "AES tag" in text or "right key" in text:
        return EncryptionError(
            f"{what} does not decrypt with the key in {key.path} (key {key.fingerprint}):"
            " it was written with another key"
        )
    return None
