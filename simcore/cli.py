"""The `simcore` command line. Each subcommand is a function registered with `@command`; bad input
ends in one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from simcore import __version__
from simcore.errors import ConfigError, SimError

#: the module whose import registers each command (`@command`): a command line that names one of these
#: imports only that module, so `simcore op` or `simcore hw` never pays for the sweep or validation stack
COMMAND_MODULES: dict[str, str] = {
    "run": "simcore.commands",
    "op": "simcore.commands",
    "hw": "simcore.commands",
    "models": "simcore.commands",
    "plan": "simcore.plan",
    "validate": "simcore.validate",
    "sweep": "simcore.sweep",
}
#: modules that may be missing from a trimmed install; their commands are then simply not offered
_OPTIONAL = ("simcore.validate", "simcore.sweep")

COMMANDS: dict[
    str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {}


def command(name: str, setup: Callable[[argparse.ArgumentParser], None]) -> Callable:
    """Register `simcore NAME`: `setup` adds its arguments, the decorated function runs it."""

    def deco(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = (setup, fn)
        return fn

    return deco


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise ConfigError(message, key=self.prog)


def positive_int(flag: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects a positive integer, got {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{flag} expects a positive integer, got {text!r}")
        return v

    return parse


def emit(data: dict[str, Any], as_json: bool, title: str | None = None) -> None:
    from simcore.results import summary_table

    if as_json:
        print(json.dumps(data, sort_keys=True, default=float))
    else:
        print(summary_table(data, title))


def summary(fn: Callable) -> str:
    """A command's one-line help: the first paragraph of its docstring, whole (argparse wraps it)."""
    paragraph = (fn.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(paragraph.split())


def build_parser(command_name: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or, given a known command's name, of the commands its module registers
    (what `main` uses: the others' modules are not imported)."""
    _load_commands(command_name)
    parser = _Parser(prog="simcore", description="Discrete-event simulator of ML hardware.")
    parser.add_argument("--version", action="version", version=f"simcore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (setup, fn) in COMMANDS.items():
        doc = summary(fn)
        p = sub.add_parser(name, help=doc, description=doc)
        if command_name in (None, name) or command_name not in COMMANDS:
            setup(p)  # only the command that runs needs its arguments (setups may import their modules)
        p.set_defaults(_run=fn)
    return parser


def _load_commands(command_name: str | None = None) -> None:
    """Import the module that registers `command_name`, or every command module (help, unknown names)."""
    import importlib

    wanted = (
        [COMMAND_MODULES[command_name]] if command_name in COMMAND_MODULES else list(COMMAND_MODULES.values())
    )
    for module in dict.fromkeys(wanted):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if module not in _OPTIONAL or e.name != module:
                raise


def main(argv: Sequence[str] | None = None) -> int:
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        if argv == ["--version"]:  # without loading any command
            print(f"simcore {__version__}")
            return 0
        parser = build_parser(argv[0] if argv and not argv[0].startswith("-") else None)
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            parser.print_help()
            return 2
        return int(args._run(args) or 0)
    except SimError as e:
        print(f"simcore: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("simcore: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # run the registry of the imported module, not this __main__ copy
    from simcore.cli import main as _main

    sys.exit(_main())
