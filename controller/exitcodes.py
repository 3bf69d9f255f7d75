"""The exit codes of every `nebuliser` command: one table, one meaning per number.

A script or a systemd unit that reads an exit code must not have to know which
command produced it: 4 means "the dose ledger cannot be used" whether `serve`,
`report` or `ledger` says so, and `config check` exits with the code `serve`
would exit with for the same configuration. The table is printed at the end of
every `--help` (`help_epilog()`) and listed in docs/cli.md.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["EXIT_CODE_MEANINGS", "ExitCode", "help_epilog"]


class ExitCode(IntEnum):
    """Process exit codes of the `nebuliser` command (see `EXIT_CODE_MEANINGS`)."""

    OK = 0
    REFUSED = 1
    USAGE = 2
    PORT = 3
    LEDGER = 4
    PRESCRIPTION = 5
    NO_SERVICE = 6
    BROKER = 7
    MISSING_EXTRA = 8
    STOP_UNCONFIRMED = 9


#: One line per code, as printed by `--help` and docs/cli.md.
EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.REFUSED: "refused, verification failed, or not the expected outcome",
    ExitCode.USAGE: "bad arguments or invalid configuration (every problem printed)",
    ExitCode.PORT: "serial port of the head in use or cannot be opened",
    ExitCode.LEDGER: "dose ledger missing or unusable",
    ExitCode.PRESCRIPTION: "no usable prescription (missing, unsigned, bad signature)",
    ExitCode.NO_SERVICE: "controller not answering on its control socket",
    ExitCode.BROKER: "MQTT broker unreachable, or no reply in time",
    ExitCode.MISSING_EXTRA: "optional part not installed (plots: uv sync --extra plots)",
    ExitCode.STOP_UNCONFIRMED: "serve shut down with a session the head did not confirm "
    "stopped (recorded uncertain, HIGH alarm): go to the bed",
}


def help_epilog() -> str:
    """The exit-code table as the last paragraph of `--help` (preformatted text)."""
    rows = "\n".join(f"  {int(code)}  {EXIT_CODE_MEANINGS[code]}" for code in ExitCode)
    return f"exit codes (the same for every command, docs/cli.md):\n{rows}"
