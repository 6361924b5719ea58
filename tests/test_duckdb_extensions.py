"""DuckDB's extensions load from the installed wheels with no download (the machine may be
offline), and a missing wheel is named in words."""

from __future__ import annotations

import duckdb
import pytest

from workbench.catalog import extensions


@pytest.mark.parametrize("name", ["httpfs", "aws", "postgres"])
def test_each_extension_loads_from_its_wheel(name: str) -> None:
    con = duckdb.connect()
    try:
        extensions.load(con, name)
        loaded = con.execute(
            "SELECT loaded, install_path FROM duckdb_extensions() WHERE extension_name = ?",
            [name if name != "postgres" else "postgres_scanner"],
        ).fetchone()
        assert loaded is not None and loaded[0], loaded
        folder = extensions.extension_directory()
        assert folder is not None and str(folder) in str(loaded[1])
    finally:
        con.close()


def test_an_unknown_extension_is_named_not_downloaded() -> None:
    con = duckdb.connect()
    try:
        with pytest.raises(extensions.ExtensionMissing, match="duckdb-ext-spatial"):
            extensions.load(con, "spatial")
    finally:
        con.close()
