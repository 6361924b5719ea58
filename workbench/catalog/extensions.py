"""DuckDB's extensions (httpfs, aws, postgres, sqlite) loaded offline from the wheels on PyPI.

DuckDB downloads an extension the first time `LOAD` names it; a machine without internet cannot.
For the 1.4 (LTS) line, the `duckdb-ext-<name>` packages on PyPI (github.com/jtanx/duckdb-ext)
ship DuckDB's own signed builds under the namespace package `duckdb_ext`, laid out as an
extension directory (`extensions/v1.4.4/linux_amd64/httpfs.duckdb_extension`): pointing
`extension_directory` there and turning auto-install off makes `LOAD` read them, signature
checked, with no download. They exist only for the 1.4 line, hence the `duckdb==1.4.4` pin."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

# DuckDB's names for what `LOAD` takes; the wheel of each is duckdb-ext-<package>.
PACKAGES = {"httpfs": "httpfs", "aws": "aws", "postgres": "postgres", "sqlite": "sqlite"}


class ExtensionMissing(RuntimeError):
    """An extension's wheel is not installed (or not for this DuckDB): says which to install."""


def extension_directory() -> Path | None:
    """The folder the `duckdb-ext-*` wheels install into, or None when none is installed."""
    try:
        import duckdb_ext  # type: ignore[import-not-found]  # a namespace package: data only
    except ImportError:
        return None
    for folder in getattr(duckdb_ext, "__path__", []):
        candidate = Path(folder) / "extensions"
        if candidate.is_dir():
            return candidate
    return None


def load(con: duckdb.DuckDBPyConnection, *names: str) -> None:
    """LOAD each extension from the installed wheels, never from the network.

    Raises ExtensionMissing naming the package to install when a wheel is absent or built for
    another DuckDB version (DuckDB's own error says which file it looked for)."""
    import duckdb

    folder = extension_directory()
    if folder is None:
        raise ExtensionMissing(
            f"DuckDB's {', '.join(names)} extension is not installed: pip install "
            + " ".join(f"duckdb-ext-{PACKAGES.get(n, n)}=={duckdb.__version__}.*" for n in names)
        )
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute(f"SET extension_directory = '{str(folder).replace(chr(39), chr(39) * 2)}'")
    for name in names:
        try:
            con.execute(f"LOAD {name}")
        except duckdb.Error as error:
            raise ExtensionMissing(
                f"DuckDB {duckdb.__version__} cannot load its {name} extension"
                f" ({str(error).splitlines()[0]}): pip install"
                f" duckdb-ext-{PACKAGES.get(name, name)}=={duckdb.__version__}.*"
            ) from None
