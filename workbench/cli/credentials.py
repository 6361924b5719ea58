"""`workbench credentials ID...`: hand a queued job's credentials to the daemon again (after a
daemon restart lost them: they are held in its memory only), from this shell's environment, and
a URL's password from the terminal (or a line of stdin)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from workbench.queue import argtypes as checked


def register(sub: Any) -> None:
    p = sub.add_parser(
        "credentials",
        help="hand a job's credentials (S3 keys, PGPASSWORD, a URL's password) to the daemon"
        " again, from this shell's environment",
    )
    p.add_argument("ids", type=checked.job_id, nargs="+", metavar="ID")
    p.set_defaults(handler=cmd_credentials)


def _password(url: str) -> str | None:
    """A URL's password: asked on the terminal, else read as one line of stdin."""
    if sys.stdin is not None and sys.stdin.isatty():
        import getpass

        return getpass.getpass(f"password of {url}: ")
    line = sys.stdin.readline() if sys.stdin is not None else ""
    return line.rstrip("\n") if line else None


def cmd_credentials(args: argparse.Namespace) -> int:
    """Exit 0 when every job's credentials were handed over, 2 when a job holds none or this
    shell lacks some (naming them), 3 when the daemon cannot take them."""
    from workbench.cli.main import EXIT_DAEMON, EXIT_OK, EXIT_USAGE, _client
    from workbench.daemon.client import ensure_daemon
    from workbench.daemon.credentials import hand_over
    from workbench.db.credentials import held_records
    from workbench.jobmodel.secrets import needed_label

    client = _client()
    records = held_records(client.store, args.ids)
    code = EXIT_OK
    for job_id in args.ids:
        record = records.get(job_id)
        if record is None:
            known = client.store.find(job_id) is not None
            why = "it has no credentials held for it" if known else "no such job"
            print(f"job {job_id}: {why}", file=sys.stderr)
            code = max(code, EXIT_USAGE)
            continue
        values: dict[str, str] = {}
        missing: list[str] = []
        for name in record.names:
            if name in record.urls:
                password = _password(record.urls[name])
                if password is None:
                    missing.append(name)
                else:
                    values[name] = password
            elif name in os.environ:
                values[name] = os.environ[name]
            else:
                missing.append(name)
        if missing:
            labels = ", ".join(needed_label(n, record.urls) for n in missing)
            print(
                f"job {job_id}: this shell does not have {labels}; run it again from a shell"
                " that has them (export NAME=...)",
                file=sys.stderr,
            )
            code = max(code, EXIT_USAGE)
            continue
        try:
            ensure_daemon(client.home)
            hand_over(client.home, record.token, values)
        except (OSError, ValueError, RuntimeError) as error:
            print(f"job {job_id}: the daemon could not take them ({error})", file=sys.stderr)
            code = max(code, EXIT_DAEMON)
            continue
        print(f"job {job_id}: handed {', '.join(needed_label(n, record.urls) for n in values)}")
    client.nudge()
    return code
