"""The `simcore` command line. Each subcommand is a function registered with `@command`; bad input
ends in one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from simcore.errors import ConfigError, SimError

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


def build_parser() -> argparse.ArgumentParser:
    _load_commands()
    parser = _Parser(prog="simcore", description="Discrete-event simulator of ML hardware.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (setup, fn) in COMMANDS.items():
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        p = sub.add_parser(name, help=doc, description=doc)
        setup(p)
        p.set_defaults(_run=fn)
    return parser


def _load_commands() -> None:
    import importlib

    for module in ("simcore.commands",):
        importlib.import_module(module)
    for optional in ("simcore.validate", "simcore.sweep"):
        try:
            importlib.import_module(optional)
        except ModuleNotFoundError as e:
            if e.name != optional:
                raise


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
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
