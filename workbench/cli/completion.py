"""`workbench completion bash|zsh|fish`: a shell completion script for the commands and their
options, made from the CLI's own parser (so it never lists a command that does not exist).

Install: `workbench completion bash > ~/.local/share/bash-completion/completions/workbench`,
`workbench completion zsh > ~/.zfunc/_workbench` (with `fpath+=~/.zfunc` before `compinit`),
`workbench completion fish > ~/.config/fish/completions/workbench.fish`."""

from __future__ import annotations

import argparse
from typing import Any

SHELLS = ("bash", "zsh", "fish")


def register(sub: Any) -> None:
    p = sub.add_parser("completion", help="print a shell completion script: bash, zsh or fish")
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(handler=cmd_completion)


def commands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, list[str]]]:
    """{command: (its help, its long options)} in the order `--help` lists them."""
    out: dict[str, tuple[str, list[str]]] = {}
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        for name, command in action.choices.items():
            options = sorted(
                option
                for item in command._actions
                for option in item.option_strings
                if option.startswith("--")
            )
            out[name] = (helps.get(name, ""), options)
    return out


def top_options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(o for a in parser._actions for o in a.option_strings if o.startswith("--"))


def bash(parser: argparse.ArgumentParser) -> str:
    table = commands(parser)
    cases = "\n".join(
        f"        {name}) opts='{' '.join(options)}' ;;" for name, (_, options) in table.items()
    )
    return f"""# workbench completion for bash (workbench completion bash)
_workbench() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} command=${{COMP_WORDS[1]}} opts
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W '{" ".join(table)} {" ".join(top_options(parser))}' -- "$cur"))
        return
    fi
    case "$command" in
{cases}
        *) opts='' ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -F _workbench workbench
"""


def zsh(parser: argparse.ArgumentParser) -> str:
    table = commands(parser)

    def quoted(text: str) -> str:
        return text.replace("'", "'\\''").replace(":", "\\:")

    described = "\n".join(f"        '{name}:{quoted(h)}'" for name, (h, _) in table.items())
    cases = "\n".join(
        f"        {name}) _arguments {' '.join(repr(o) for o in options)} '*:file:_files' ;;"
        for name, (_, options) in table.items()
    )
    return f"""#compdef workbench
# workbench completion for zsh (workbench completion zsh)
_workbench() {{
    local -a commands
    commands=(
{described}
    )
    if (( CURRENT == 2 )); then
        _describe 'command' commands
        return
    fi
    case "$words[2]" in
{cases}
    esac
}}
_workbench "$@"
"""


def fish(parser: argparse.ArgumentParser) -> str:
    table = commands(parser)
    lines = ["# workbench completion for fish (workbench completion fish)"]
    lines.append("complete -c workbench -f")
    for name, (text, options) in table.items():
        description = text.replace("'", "\\'")
        lines.append(
            f"complete -c workbench -n '__fish_use_subcommand' -a {name} -d '{description}'"
        )
        for option in options:
            lines.append(
                f"complete -c workbench -n '__fish_seen_subcommand_from {name}' -l {option[2:]}"
            )
    return "\n".join(lines) + "\n"


def cmd_completion(args: argparse.Namespace) -> int:
    from workbench.cli.main import build_parser

    parser = build_parser()
    print({"bash": bash, "zsh": zsh, "fish": fish}[args.shell](parser), end="")
    return 0
