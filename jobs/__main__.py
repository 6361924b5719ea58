"""`python -P -m jobs JOB_ID`: the process of one non-command job, started by the daemon."""

from __future__ import annotations

import sys
import traceback

from jobs.context import Cancelled, JobContext, JobFailed
from workbench.queue.kinds import load_kind


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m jobs JOB_ID", file=sys.stderr)
        return 2
    ctx = JobContext.from_environment(int(argv[0]))
    module = load_kind(ctx.job.kind)
    try:
        module.run(ctx)
    except Cancelled as stop:
        ctx.fail(str(stop))
        return 143
    except JobFailed as failure:
        ctx.fail(str(failure))
        return 1
    except Exception as error:
        traceback.print_exc()
        first_line = (str(error).strip().splitlines() or [""])[0]
        ctx.fail(f"{type(error).__name__}: {first_line}")
        return 1
    ctx.progress(1.0, "done", force=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
