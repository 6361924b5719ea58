"""The `submit` command's flags and how they, with a spec file, become a JobRequest: one code
path for the CLI and for the daemon, which takes submissions handed to it by `workbench.cli.entry`
(see `workbench.daemon.intake`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from workbench.queue import argtypes as checked
from workbench.queue.spec import SpecError, check_env_name, check_text
from workbench.units import parse_int

if TYPE_CHECKING:
    from workbench.db.store import JobRequest

HELP = "queue a job: -- CMD ARG... or --spec FILE.toml"


class SubmitUsage(SpecError):
    """Bad `submit` arguments found by argparse: `text` is what argparse would print (usage and
    the error line); the exit code is 2, as for any bad spec."""

    def __init__(self, text: str):
        super().__init__(text.rstrip("\n"))
        self.text = text


class SubmitNotHere(Exception):
    """Words that only the full CLI answers exactly: help (`-h`, `--help` or an abbreviation
    such as `--hel`, printed at the terminal's width) and flags `submit` does not know (reported
    by the top-level parser, with its usage). The daemon hands these back to the client."""


class SubmitParser(argparse.ArgumentParser):
    """The submit flags as a parser that raises SubmitUsage instead of exiting, and
    SubmitNotHere instead of printing help, for callers that must neither exit nor print (the
    daemon)."""

    def error(self, message: str) -> NoReturn:
        raise SubmitUsage(f"{self.format_usage()}{self.prog}: error: {message}\n")

    def print_help(self, file: object = None) -> NoReturn:
        raise SubmitNotHere("help")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `workbench submit` (INTERFACE.md); each number is checked by `argtypes`."""
    p.add_argument("--spec", metavar="FILE.toml", help="a job of any kind from a spec file")
    p.add_argument(
        "--bulk",
        metavar="FILE",
        help="one job per line of FILE (- for stdin), each line split as a shell would; the"
        " other options apply to every line; all are queued or none",
    )
    p.add_argument("--name")
    p.add_argument(
        "--gpus",
        type=checked.gpus,
        help="GPUs (fractions like 0.5 share one GPU), or a MIG profile such as 1g.10gb",
    )
    p.add_argument("--gpu-mem", type=checked.size, help="GPU memory needed, e.g. 8GiB")
    p.add_argument("--cpus", type=checked.amount, help="CPU cores to reserve (fractions allowed)")
    p.add_argument("--mem", type=checked.size, help="host memory, e.g. 4GiB")
    p.add_argument("--after", action="append", metavar="ID", help="start after job ID succeeded")
    p.add_argument("--after-any", action="append", metavar="ID", help="start after job ID ended")
    p.add_argument(
        "--after-fail", action="append", metavar="ID", help="start only if job ID failed"
    )
    p.add_argument("--priority", type=checked.signed, help="higher starts first (default 0)")
    p.add_argument("--group")
    p.add_argument("--retries", type=checked.count, help="automatic retries after a failure")
    p.add_argument(
        "--time-limit",
        type=checked.duration,
        help="e.g. 90s, 30m, 2h; the job fails when it runs longer",
    )
    p.add_argument("--cwd", help="working directory (default: the current one)")
    p.add_argument("--env", action="append", metavar="K=V", help="set an environment variable")
    p.add_argument(
        "--secret-env",
        action="append",
        metavar="NAME",
        help="hand this environment variable to the job through the daemon's memory, never"
        " stored or shown (repeatable; spec key: secret_env; see README, Credentials)",
    )
    p.add_argument(
        "--capture",
        action="append",
        metavar="PATH",
        help="a file or folder whose TensorBoard/Lightning/Hugging Face metrics become the run's",
    )
    p.add_argument(
        "--slurm",
        action="append",
        metavar="KEY=VALUE",
        help="a per-job sbatch option for the Slurm executor: partition, qos, account,"
        " constraint, nodelist, exclude, exclusive, nodes, ntasks-per-node, extra (repeatable;"
        " spec key: [slurm])",
    )
    p.add_argument("--paused", action="store_true", help="queue it held; `resume` releases it")
    p.add_argument(
        "--no-preempt",
        action="store_true",
        help="never preempt it to give borrowed GPUs back (spec key: preemptible = false)",
    )
    p.add_argument(
        "--stop-signal",
        metavar="SIG",
        help="signal for cancel, time limit and preemption (default TERM; spec key: stop_signal)",
    )
    p.add_argument(
        "--kill-grace",
        type=checked.duration,
        help="time from the stop signal to SIGKILL (default: [daemon] kill_grace)",
    )
    p.add_argument(
        "--signal-before",
        type=checked.duration,
        metavar="DURATION",
        help="send the stop signal this long before the time limit, as a warning",
    )
    p.add_argument(
        "--checkpointable",
        action="store_true",
        default=None,
        help="it saves on the stop signal and resumes from WORKBENCH_CHECKPOINT_DIR: it may be"
        " preempted, and is restarted in the same run",
    )
    p.add_argument(
        "--snapshot",
        action="store_true",
        default=None,
        help="run a copy of the working directory's files frozen now (default: [submit] snapshot)",
    )
    p.add_argument("--wait", action="store_true", help="wait for it; exit 0 iff it succeeded")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--executor", choices=["local", "slurm"], help="where it runs (default: config.toml)"
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARG...")


def parser(width: int | None = None) -> SubmitParser:
    """A parser of the words after `workbench submit` (raises SubmitUsage on bad ones). `width`:
    the columns its usage text is wrapped to, as argparse takes them (the terminal's width
    less 2; default: this process's terminal)."""
    p = SubmitParser(
        prog="workbench submit",
        description=HELP,
        formatter_class=lambda prog: argparse.HelpFormatter(prog, width=width),
    )
    add_arguments(p)
    return p


def parse_args(p: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`argv` (the words after `submit`) parsed, with a leading `--` dropped from the command.
    Raises SubmitUsage (through `p.error`) on bad words, SubmitNotHere on words `submit` does
    not know (the full CLI reports them with its top-level usage)."""
    args, unknown = p.parse_known_args(argv)
    if unknown:
        raise SubmitNotHere(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    return args


def spec_path(spec: str) -> tuple[Path, Path]:
    """The spec file `--spec SPEC` names, as (path to read, folder its relative paths start
    from). A file is named by its resolved path; a stream such as `/dev/stdin` or a shell's
    `<(...)` (whose resolved name cannot be opened) is read as given, its relative paths taken
    from the current directory. Raises SpecError if the current directory is gone."""
    given = Path(spec) if os.path.isabs(spec) else _current_dir() / spec
    resolved = given.resolve()
    if resolved.exists() or not given.exists():
        return resolved, resolved.parent
    return given, _current_dir()


def _parse_after(values: list[str], flag: str) -> list[int]:
    ids = []
    for value in values:
        for part in value.split(","):
            try:
                ids.append(parse_int(part, minimum=1))
            except ValueError as error:
                raise SpecError(f"{flag}: not a job id: {part!r} ({error})") from None
    return ids


def _current_dir() -> Path:
    try:
        return Path.cwd()
    except FileNotFoundError:
        raise SpecError(
            "the current directory no longer exists; cd somewhere else or give --cwd"
        ) from None


def bulk_lines(text: str, source: str) -> list[tuple[int, list[str]]]:
    """(line number, argv) for each line of a bulk file's `text` that holds a command (blank
    and comment lines are skipped), split as a POSIX shell would (`shlex`). Raises SpecError
    naming `source` and the line for a line that cannot be split (an unclosed quote)."""
    import shlex

    out: list[tuple[int, list[str]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as error:
            raise SpecError(f"{source} line {number}: {error}") from None
        if words:
            out.append((number, words))
    return out


def bulk_requests(
    args: argparse.Namespace, env: dict[str, str], text: str, source: str
) -> list[JobRequest]:
    """Every job of a bulk submit (`--bulk`): each line's argv with the other options, checked
    as a single `submit -- ARGV` would be. Raises SpecError naming `source` and the line at
    fault (the first one), so that none is queued."""
    if args.spec or args.command:
        raise SpecError("give --bulk FILE alone: not with --spec or -- CMD ARG...")
    lines = bulk_lines(text, source)
    if not lines:
        raise SpecError(f"{source}: no command in it (one per line)")
    requests = []
    line_args = argparse.Namespace(**vars(args))
    line_args.bulk = None
    for number, words in lines:
        line_args.command = words
        try:
            requests.append(request_from_args(line_args, env, capture=False)[0])
        except SpecError as error:
            raise SpecError(f"{source} line {number}: {error}") from None
    cache: dict[Any, Any] = {}  # one code state, environment and snapshot for every line
    return [capture_repro(request, cache) for request in requests]


def check_words(args: argparse.Namespace) -> None:
    """Refuse flag values no path or program can take (a NUL in --spec, --cwd, --name): checked
    before any of them is used as a path. Raises SpecError naming the flag."""
    for flag, value in (("--spec", args.spec), ("--cwd", args.cwd), ("--name", args.name)):
        if value is not None:
            check_text(value, flag)


SLURM_COUNTS = ("nodes", "ntasks_per_node")
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "1", ""), ("false", "no", "0")


def slurm_table(pairs: list[str], base: object) -> dict[str, object]:
    """`--slurm KEY=VALUE` flags over a spec's `[slurm]` table: `nodes=2`, `exclusive`,
    `extra=--mail-type=END` (extra adds to the list). Keys may use dashes. Raises SpecError
    naming the flag; the values are checked with the rest of the table (SlurmOptions)."""
    table: dict[str, object] = dict(base) if isinstance(base, dict) else {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not key:
            raise SpecError(f"--slurm: expected KEY=VALUE, got {pair!r}")
        if key in SLURM_COUNTS:
            if not value.strip().isdigit():
                raise SpecError(f"--slurm {key}: expected a whole number, got {value!r}")
            table[key] = int(value)
        elif key == "exclusive":
            if value.lower() not in TRUE_WORDS + FALSE_WORDS:
                raise SpecError(f"--slurm exclusive: expected true or false, got {value!r}")
            table[key] = value.lower() in TRUE_WORDS
        elif key == "extra":
            previous = table.get("extra")
            table[key] = [*(previous if isinstance(previous, list) else []), value]
        else:
            table[key] = value
    return table


def request_from_args(
    args: argparse.Namespace, env: dict[str, str], capture: bool = True, streams: bool = True
) -> tuple[JobRequest, str]:
    """The job `workbench submit` asks for, and where its table came from (`submit`, or the spec
    file's path, for messages). Relative paths are taken from the current directory; `env` is the
    submitter's environment (the job's, before `--env` pairs are applied). With `capture`, the
    request carries what reproduces it (`workbench.queue.repro.capture`: code state,
    environment, and the snapshot it runs from when asked). `streams`: whether a spec file may
    be a stream (a FIFO, `/dev/stdin`) waited on; the daemon, which must never block, passes
    False. Raises SpecError (exit 2) naming the flag, file or key at fault, or a snapshot over
    its cap."""
    from workbench.queue.pipeline import _read_toml
    from workbench.queue.requests import build_request

    check_words(args)
    if args.spec:
        if args.command:
            raise SpecError("give either --spec FILE or -- CMD ARG..., not both")
        path, base_dir = spec_path(args.spec)
        table = _read_toml(path, regular_only=not streams)  # the daemon reads no FIFO
        where = str(path)
        after_from_file = table.pop("after", [])
        if not isinstance(after_from_file, list) or not all(
            isinstance(a, int) for a in after_from_file
        ):
            raise SpecError(f"{where}: key 'after': expected a list of job ids")
    else:
        if not args.command:
            raise SpecError("nothing to run: give -- CMD ARG... or --spec FILE.toml")
        table = {"kind": "command", "argv": args.command}
        if args.cwd and not Path(args.cwd).is_dir():
            problem = "is not a directory" if Path(args.cwd).exists() else "no such directory"
            raise SpecError(f"--cwd {args.cwd}: {problem}")
        base_dir = Path(args.cwd).resolve() if args.cwd else _current_dir()
        where = "submit"
        after_from_file = []
    overrides = {
        "name": args.name,
        "gpus": args.gpus,
        "gpu_mem": args.gpu_mem,
        "cpus": args.cpus,
        "mem": args.mem,
        "priority": args.priority,
        "group": args.group,
        "retries": args.retries,
        "time_limit": args.time_limit,
        "preemptible": False if args.no_preempt else None,
        "stop_signal": args.stop_signal,
        "kill_grace": args.kill_grace,
        "signal_before": args.signal_before,
        "checkpointable": args.checkpointable,
        "snapshot": args.snapshot,
    }
    table.update({k: v for k, v in overrides.items() if v is not None})
    if getattr(args, "slurm", None):
        table["slurm"] = slurm_table(args.slurm, table.get("slurm"))
    if getattr(args, "capture", None):
        table["capture"] = [*table.get("capture", []), *args.capture]
    if getattr(args, "secret_env", None):
        table["secret_env"] = [*table.get("secret_env", []), *args.secret_env]
    env = dict(env)
    for pair in args.env or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SpecError(f"--env: expected KEY=VALUE, got {pair!r}")
        check_env_name(key, "--env")
        check_text(value, f"--env {key}")
        env[key] = value
    after = [(i, "ok") for i in [*after_from_file, *_parse_after(args.after or [], "--after")]]
    after += [(i, "any") for i in _parse_after(args.after_any or [], "--after-any")]
    after += [(i, "fail") for i in _parse_after(args.after_fail or [], "--after-fail")]
    request = build_request(table, base_dir, where, env, after=tuple(after), paused=args.paused)
    if capture:
        request = capture_repro(request)
    return request, where


def capture_repro(request: JobRequest, cache: dict[Any, Any] | None = None) -> JobRequest:
    """`request` with its reproducibility record, with this home's `[submit]` settings; `cache`
    (one dict for a submission of many jobs) keeps each directory's answer once."""
    from workbench.config import load_config
    from workbench.paths import Home
    from workbench.queue import repro

    home = Home.current()
    config = load_config(home.config)
    return repro.capture(request, home.runs, config.snapshot, config.snapshot_cap_bytes, cache)
