"""The `nebuliser` command. Each subcommand lives in its own module in this package
and exposes `register(subparsers)`; add the module to `_COMMAND_MODULES`.

Start-up is kept short (a nurse types `nebuliser session status`): only the module
of the command being run is imported. The others appear in `nebuliser --help`
through `_LAZY_COMMANDS`, their one-line help; a module missing from that table
still works, it is only imported at every start. `tests/controller/test_cli.py`
checks that the table says what the modules say.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator, Sequence

from controller import __version__
from controller.exitcodes import ExitCode, help_epilog

__all__ = ["build_parser", "main", "walk_parsers"]

# Module names (in this package) that register subcommands, in --help order.
_COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "serve",
    "session",
    "config",
    "simulate",
    "ledger",
    "keys",
    "command",
    "prescription",
    "audit",
    "monitor",
    "station",
    "report",
    "completion",
)

# module → {top-level command it registers: its help line}, so that a command's
# module is imported only when that command runs.
_LAZY_COMMANDS: dict[str, dict[str, str]] = {
    "demo": {
        "demo": "one-command demo: simulated heads + controllers + a private MQTT broker "
        "and ward view + a full pilot session"
    },
    "serve": {"serve": "run the bedside controller (serial link, dose limits, ledger, control)"},
    "session": {
        "session": "start, stop or show the bedside session",
        "alarm": "list or acknowledge alarms",
        "device": "act on the nebuliser head",
    },
    "config": {"config": "check, show or print an example configuration"},
    "simulate": {"simulate": "run a simulated MN-1 nebuliser head on a pty or TCP port"},
    "ledger": {"ledger": "create, show, back up or restore the dose ledger"},
    "keys": {"keys": "create Ed25519 signing keys"},
    "command": {"command": "sign or send remote commands"},
    "prescription": {"prescription": "sign or verify prescription files"},
    "audit": {"audit": "verify the tamper-evident audit log"},
    "monitor": {"monitor": "watch a ward's beds live over MQTT"},
    "station": {"station": "serve the ward station web page (live beds, alarms, acknowledgement)"},
    "report": {"report": "clinical reports from the ledger: session table/CSV, FHIR, plots"},
    "completion": {"completion": "print a bash or zsh completion script"},
}

_GLOBAL_OPTIONS_WITH_VALUE = frozenset({"--log-level"})


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The first positional word of `argv` (the command), skipping global options."""
    skip_next = False
    for word in argv:
        if skip_next:
            skip_next = False
        elif word in _GLOBAL_OPTIONS_WITH_VALUE:
            skip_next = True
        elif not word.startswith("-"):
            return word
    return None


def walk_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """`parser` and every sub-parser below it, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from walk_parsers(child)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every command (for completion, tests and docs).

    With `only` (what `main` does), only that command's module is loaded; the other
    commands are placeholders that carry their help line, enough for `--help`.
    """
    parser = argparse.ArgumentParser(
        prog="nebuliser",
        description="Bedside mesh-nebuliser controller, MN-1 simulator and ward tools.",
    )
    parser.add_argument("--version", action="version", version=f"nebuliser {__version__}")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (logs go to stderr; JSON when not on a terminal)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        lazy = _LAZY_COMMANDS.get(name)
        if only is None or lazy is None or only in lazy:
            importlib.import_module(f"controller.cli.{name}").register(subparsers)
        else:
            for each, help_text in lazy.items():
                subparsers.add_parser(each, help=help_text, add_help=False)
    epilog = help_epilog()
    for sub in walk_parsers(parser):
        if sub.formatter_class is argparse.HelpFormatter:
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
        sub.epilog = epilog if not sub.epilog else f"{sub.epilog}\n\n{epilog}"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `nebuliser` console script; returns the exit code."""
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=_chosen_command(words) or "")
    args = parser.parse_args(words)
    from controller.logging import configure_logging  # noqa: PLC0415 - only once a command runs

    configure_logging(level=args.log_level)
    try:
        code: int = args.handler(args)
    except SystemExit as done:  # a handler's "stop here" (e.g. an invalid --config)
        return done.code if isinstance(done.code, int) else ExitCode.USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
