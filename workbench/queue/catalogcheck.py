"""Submit-time checks of the datasets and columns a job names against the lake's catalog: a
dataset that exists must have the version and the columns (target, features) the job names; a
name that does not exist is refused when the catalog holds a close match (`Vote` for `vote`)
and nothing about to run will write it (a queued ingest, an ingest stage of the same
pipeline). One read of the catalog's tables in the state file; no data file is opened."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workbench.queue.spec import SpecError

if TYPE_CHECKING:
    from workbench.catalog.lake import VersionInfo
    from workbench.paths import Home

ACTIVE_STATES = ("queued", "starting", "running", "paused")


@dataclass(frozen=True)
class DatasetRef:
    """A dataset a job's spec names under `key` (at `version`, None for the latest), and the
    columns it needs from it: (spec key, column name), e.g. ("target", "species")."""

    key: str
    name: str
    version: int | None = None
    columns: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    version_key: str = "version"


def suggest(name: str, known: list[str]) -> list[str]:
    """Close matches of `name` among `known`: case-insensitive equals first, then difflib's
    (ratio at least 0.6, as difflib.get_close_matches), at most three."""
    folded = [k for k in known if k.casefold() == name.casefold() and k != name]
    close = difflib.get_close_matches(name, known, n=3)
    return list(dict.fromkeys([*folded, *close]))[:3]


def _hint(matches: list[str]) -> str:
    return f" (did you mean {' or '.join(map(repr, matches))}?)" if matches else ""


def refs_of(kind: str, spec: dict[str, Any]) -> list[DatasetRef]:
    """The datasets a kind's spec names (its module's `dataset_refs`, if any)."""
    from workbench.queue.kinds import load_kind

    refs = getattr(load_kind(kind), "dataset_refs", None)
    return list(refs(spec)) if refs is not None else []


def check_refs(
    home: Home, refs: list[DatasetRef], where: str, produced: frozenset[str] = frozenset()
) -> None:
    """Raise SpecError naming the key for a dataset, version or column the catalog says is
    wrong (module docstring). `produced`: datasets other stages of the same pipeline write.
    Nothing is checked when the state file does not exist yet."""
    if not refs or not home.state_db.exists():
        return
    from workbench.catalog import lake
    from workbench.db import catalog as db_catalog
    from workbench.db.store import Store

    store = Store.open(home.state_db, check=False)
    try:
        names = db_catalog.dataset_names(store)
        pending: set[str] | None = None
        for ref in refs:
            if "." in ref.name:
                continue  # another user's shared dataset (team mode): the job finds it, or says
            if ref.name not in names:
                if ref.name in produced:
                    continue
                matches = suggest(ref.name, names)
                if not matches:
                    continue  # may be ingested later; the job says so if it is not
                if pending is None:
                    pending = {
                        str(j.spec.get("dataset"))
                        for j in store.list_jobs(states=ACTIVE_STATES, light="no-env")
                        if j.kind == "ingest"
                    }
                if ref.name in pending:
                    continue
                raise SpecError(
                    f"{where}: key '{ref.key}': no dataset named {ref.name!r}{_hint(matches)}"
                )
            try:
                info = lake.version_info(store, ref.name, ref.version)
            except lake.LakeError as error:
                raise SpecError(f"{where}: key '{ref.version_key}': {error}") from None
            _check_columns(info, ref, where)
    finally:
        store.close()


def _check_columns(info: VersionInfo, ref: DatasetRef, where: str) -> None:
    columns = [name for name, _ in info.schema]
    for key, column in ref.columns:
        if column in columns:
            continue
        raise SpecError(
            f"{where}: key '{key}': dataset {info.dataset} v{info.version} has no column"
            f" {column!r}{_hint(suggest(column, columns))}; its columns: {', '.join(columns)}"
        )
