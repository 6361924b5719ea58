"""Whose share a job counts against: its owner's Unix user name (by uid, through `pwd`) when
shares are by user, else its group. A job with no uid (a per-user home) is the home owner's."""

from __future__ import annotations

import functools
import os
import pwd


@functools.lru_cache(maxsize=1024)
def user_name(uid: int | None) -> str:
    """The Unix user name of `uid` (None: this process's user, the home owner); the uid as
    digits when the password database has no entry for it."""
    number = os.getuid() if uid is None else uid
    try:
        return pwd.getpwuid(number).pw_name
    except KeyError:
        return str(number)


def account_of(by: str, group: str, uid: int | None) -> str:
    """The account a job counts against: `user_name(uid)` when `by` is "user", else `group`
    (`by` as `[shares] by`: "user", "group" or "" for shares off)."""
    return user_name(uid) if by == "user" else group
