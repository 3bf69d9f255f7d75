"""CLI conventions: one exit-code table in every --help, lazy commands that say what
their modules say, and shell completion generated from the real parser."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from controller.cli import _LAZY_COMMANDS, build_parser, main, walk_parsers
from controller.cli.completion import completion_script
from controller.exitcodes import EXIT_CODE_MEANINGS, ExitCode, help_epilog
from controller.service import EXIT_LEDGER, EXIT_PORT
from controller.service._service import EXIT_PRESCRIPTION


def test_exit_codes_are_one_table_with_serves_historic_numbers() -> None:
    assert set(EXIT_CODE_MEANINGS) == set(ExitCode)
    assert len({int(code) for code in ExitCode}) == len(ExitCode)
    # serve's codes keep their numbers (systemd units and scripts rely on them).
    assert (EXIT_PORT, EXIT_LEDGER, EXIT_PRESCRIPTION) == (3, 4, 5)
    assert EXIT_PORT is ExitCode.PORT
    assert EXIT_LEDGER is ExitCode.LEDGER
    assert EXIT_PRESCRIPTION is ExitCode.PRESCRIPTION


def test_every_help_ends_with_the_exit_code_table() -> None:
    parser = build_parser()
    parsers = list(walk_parsers(parser))
    assert len(parsers) > 30
    for each in parsers:
        assert help_epilog() in each.format_help(), each.prog


def test_the_lazy_command_table_says_what_the_modules_register() -> None:
    full = build_parser()
    action = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in action._choices_actions}
    lazy = {name: text for commands in _LAZY_COMMANDS.values() for name, text in commands.items()}
    assert lazy == helps


def test_only_the_chosen_commands_module_is_imported() -> None:
    code = (
        "import sys\n"
        "from controller.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('controller.cli.'))\n"
        "heavy = [m for m in ('pydantic_settings', 'rich', 'aiomqtt', 'cryptography') "
        "if m in sys.modules]\n"
        "print(loaded, heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[-1] == "[] []"


def test_help_lists_every_command_and_an_unknown_one_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for commands in _LAZY_COMMANDS.values():
        for name in commands:
            assert name in out
    with pytest.raises(SystemExit) as done:
        main(["sesion", "status"])
    assert done.value.code == ExitCode.USAGE


def _complete(script: Path, words: list[str]) -> list[str]:
    line = " ".join(f"'{w}'" for w in words)
    program = (
        f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
        '_nebuliser; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    assert done.stderr == ""
    return done.stdout.split()


def test_bash_completion_completes_commands_actions_options_and_choices(tmp_path: Path) -> None:
    script = tmp_path / "nebuliser.bash"
    script.write_text(completion_script("bash"), encoding="utf-8")
    assert _complete(script, ["nebuliser", "se"]) == ["serve", "session"]
    assert _complete(script, ["nebuliser", "session", "st"]) == ["start", "stop", "status"]
    assert "--json" in _complete(script, ["nebuliser", "session", "status", "--"])
    assert _complete(script, ["nebuliser", "completion", ""]) == ["bash", "zsh", "--help"]
    # Global options before the command do not confuse it.
    assert _complete(script, ["nebuliser", "--log-level", "debug", "config", "ch"]) == ["check"]


_ZSH_STUBS = 'compdef() { :; }; compadd() { print -r -- "$@"; }; _files() { print FILES; }; '


def _zsh_complete(setup: str, words: list[str]) -> str:
    line = " ".join(f"'{w}'" for w in words)
    program = f"{_ZSH_STUBS}{setup}; words=({line}); CURRENT={len(words)}; _nebuliser"
    done = subprocess.run(["zsh", "-c", program], capture_output=True, text=True, check=True)
    assert done.stderr == ""
    return done.stdout.strip()


@pytest.mark.skipif(
    shutil.which("zsh") is None, reason="zsh is not installed (apt-get install zsh)"
)
def test_zsh_completion_sourced_or_autoloaded(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    functions.mkdir()
    script = functions / "_nebuliser"
    script.write_text(completion_script("zsh"), encoding="utf-8")
    subprocess.run(["zsh", "-n", str(script)], check=True)
    sourced = f"source {script}"
    assert _zsh_complete(sourced, ["nebuliser", "session", "st"]) == (
        "-- start sign-override stop status --help"
    )
    assert _zsh_complete(sourced, ["nebuliser", "--log-level", "debug", "config", ""]) == (
        "-- check show example --help"
    )
    assert _zsh_complete(sourced, ["nebuliser", "report", "sessions", "--config", "./x"]) == (
        "FILES"
    )
    # From $fpath, the first completion already answers (the file is the function body).
    autoloaded = f"fpath=({functions} $fpath); autoload -U _nebuliser"
    assert _zsh_complete(autoloaded, ["nebuliser", "comp"]).split()[1:3] == ["demo", "serve"]


def test_zsh_completion_lists_the_same_commands() -> None:
    script = completion_script("zsh")
    assert script.startswith("#compdef nebuliser")
    assert '"nebuliser session" "start sign-override stop status --help' in script


def test_session_status_loads_no_pydantic_rich_or_mqtt(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path}"\n', encoding="utf-8")
    code = (
        "import sys\n"
        "from controller.cli import main\n"
        f"code = main(['session', 'status', '--config', {str(config)!r}])\n"
        "heavy = [m for m in ('pydantic', 'pydantic_settings', 'rich', 'aiomqtt', "
        "'cryptography', 'controller.config') if m in sys.modules]\n"
        "print(int(code), heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == f"{int(ExitCode.NO_SERVICE)} []"
    assert f"no controller is running at {tmp_path}/control.sock" in done.stderr
