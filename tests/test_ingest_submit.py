"""What `workbench ingest` refuses at submit (exit 2, nothing queued): dataset names that
shadow the SQL layer's views, are too long or not ASCII, and types DuckDB does not know."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import workbench

from workbench.catalog import lake
from workbench.paths import Home
from workbench.queue.requests import build_request
from workbench.queue.spec import SpecError


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("jobs", "the store's 'jobs' view"),
        ("JOBS", "the store's 'jobs' view"),
        ("runs", "the store's 'runs' view"),
        ("metrics", "the store's 'metrics' view"),
        ("x_rejects", "names ending in '_rejects' are reserved"),
        ("run3_predictions", "names ending in '_predictions' are reserved"),
        ("mine_Predictions", "names ending in '_predictions' are reserved"),
    ],
)
def test_reserved_dataset_names_are_refused_at_submit(
    home: Home, tmp_path: Path, name: str, why: str
) -> None:
    (tmp_path / "code.csv").write_text("a\n1\n")
    done = workbench("ingest", str(tmp_path / "code.csv"), "--dataset", name)
    assert done.returncode == 2, done.stderr
    assert "--dataset: " in done.stderr and why in done.stderr
    assert "reserved: jobs, job_events, metrics, runs" in done.stderr
    assert "Traceback" not in done.stderr
    assert not home.lake.exists() or not any(home.lake.iterdir())
    # A spec file goes through the same check (key 'dataset').
    with pytest.raises(SpecError, match=r"key 'dataset'.*reserved"):
        build_request(
            {"kind": "ingest", "source": ["code.csv"], "dataset": name}, tmp_path, "spec.toml"
        )


def test_jobs_own_outputs_may_use_reserved_suffixes() -> None:
    assert lake.check_dataset_name("run3_predictions", internal=True) == "run3_predictions"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("d" * 300, "at most 64 characters, got 300"),
        ("d" * 65, "at most 64 characters, got 65"),
        ("café", "not a usable dataset name"),
        ("a b", "not a usable dataset name"),
        ("a/b", "not a usable dataset name"),
    ],
)
def test_dataset_name_length_and_charset_are_checked_at_submit(
    home: Home, tmp_path: Path, name: str, message: str
) -> None:
    (tmp_path / "code.csv").write_text("a\n1\n")
    done = workbench("ingest", str(tmp_path / "code.csv"), "--dataset", name)
    assert done.returncode == 2, done.stderr
    assert "--dataset" in done.stderr and message in done.stderr
    assert "Traceback" not in done.stderr and "Errno" not in done.stderr
    assert lake.check_dataset_name("d" * 64) == "d" * 64


@pytest.mark.parametrize("kind", ["NOTATYPE", "INTEGER); SELECT 1; --", "DECIMAL(50,2)"])
def test_unknown_types_are_refused_at_submit_naming_the_flag(
    home: Home, tmp_path: Path, kind: str
) -> None:
    (tmp_path / "code.csv").write_text("code\n1\n")
    done = workbench(
        "ingest", str(tmp_path / "code.csv"), "--dataset", "d", "--type", f"code={kind}"
    )
    assert done.returncode == 2, done.stderr
    assert f"--type code={kind}: {kind!r} is not a DuckDB type" in done.stderr
    assert "Traceback" not in done.stderr
    with pytest.raises(SpecError, match=r"key 'types': column 'code'.* is not a DuckDB type"):
        build_request(
            {"kind": "ingest", "source": ["code.csv"], "dataset": "d", "types": {"code": kind}},
            tmp_path,
            "spec.toml",
        )


@pytest.mark.parametrize(
    "kind", ["BIGINT", "decimal(10, 2)", "VARCHAR(5)", "INT[]", "TIMESTAMP WITH TIME ZONE"]
)
def test_duckdb_type_forms_are_accepted(kind: str) -> None:
    assert lake.check_type_name(kind) is None
