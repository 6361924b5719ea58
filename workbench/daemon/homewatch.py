"""A daemon never recreates a home that is gone: it serves the WORKBENCH_HOME folder it started
in, and exits when that folder is removed or replaced (a test's temporary home deleted under
it, a user's `rm -rf`). Only a client's explicit start creates a home."""

from __future__ import annotations

import os
from pathlib import Path


class HomeGone(RuntimeError):
    """The daemon's home does not exist (or was replaced by another folder); the message says
    which."""


def identity(root: Path) -> tuple[int, int] | None:
    """(device, inode) of the folder `root`, None if it is not a folder now."""
    try:
        info = os.stat(root)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if os.path.isdir(root) else None


class HomeWatch:
    """Remembers the home folder's identity when the daemon starts; `gone()` says (one stat)
    whether it has been removed or replaced since. Raises HomeGone at creation for a missing
    folder."""

    def __init__(self, root: Path):
        self.root = root
        found = identity(root)
        if found is None:
            raise HomeGone(
                f"WORKBENCH_HOME {root} does not exist; the daemon does not create it"
                " (`workbench daemon start` or any submit does)"
            )
        self._identity = found

    def gone(self) -> bool:
        """True once the folder is missing or is another folder than at the start."""
        return identity(self.root) != self._identity
