"""One convention for every `blueprint` command, core and plugin: the same flag mistake gets the
same exit status (2) and the same code (`usage-error`, located at the flag) on one line, before
any file is read.

The commands and their flags are read from the parser itself, so a new command or flag is
covered without touching this file.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from blueprint_format.cli import CORE_COMMANDS, PLUGIN_COMMANDS, PLUGINS, build_parser, main

COMMANDS = sorted({*CORE_COMMANDS, *PLUGIN_COMMANDS})
#: The same mistakes, for each command that takes the flag.
SHARED_MISTAKES = {
    "--batch-size": ["0", "-3", "x", "1.5"],
    "--seq-len": ["0", "x"],
    "--seed": ["-1"],
    "--device": ["tpu", ""],
    "--dtype": ["fp8"],
    "--weight": ["a=inf", "a=nan", "a=-1", "a", "a=1e400", "a=0"],
}


def _parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser(PLUGINS)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


PARSERS = _parsers()


def _options(command: str) -> Iterator[argparse.Action]:
    for action in PARSERS[command]._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            yield action


def _dummy(action: argparse.Action, tmp: Path) -> str:
    """A value argparse accepts for `action` (paths do not exist: nothing may be read before
    the flags are checked)."""
    if action.choices:
        return str(next(iter(action.choices)))
    if action.type is float:
        return "0.5"
    if action.type is int:
        return "1"
    return str(tmp / f"absent-{action.dest}")


def _minimal_args(command: str, tmp: Path, skip: str = "") -> list[str]:
    """The command with every required argument given a dummy value (except `skip`)."""
    args = [command]
    for action in PARSERS[command]._actions:
        if isinstance(action, argparse._HelpAction) or skip in action.option_strings:
            continue
        if action.option_strings and action.required:
            args += [action.option_strings[-1], _dummy(action, tmp)]
        elif not action.option_strings and action.nargs not in (0, "?", "*", argparse.REMAINDER):
            args.append(str(tmp / f"absent-{action.dest}"))
    return args


def _expect_usage_error(capsys: pytest.CaptureFixture[str], argv: list[str], flag: str) -> None:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (argv, err)
    assert err.startswith(f"error: usage-error at {flag}: "), (argv, err)
    assert err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert out == ""


def test_every_command_is_covered() -> None:
    assert {"validate", "show", "compute", "finetune", "select-data", "embed"} <= set(PARSERS)
    assert set(COMMANDS) <= set(PARSERS)


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_flag(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _expect_usage_error(capsys, [*_minimal_args(command, tmp_path), "--no-such-flag"], "--no-such-flag")


REQUIRED = [
    (command, action.option_strings[-1])
    for command in COMMANDS
    for action in _options(command)
    if action.required
]


@pytest.mark.parametrize(("command", "flag"), REQUIRED)
def test_missing_required_flag(command: str, flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _expect_usage_error(capsys, _minimal_args(command, tmp_path, skip=flag), flag)


SHARED = [
    (command, flag, value)
    for command in COMMANDS
    for flag, values in SHARED_MISTAKES.items()
    if any(flag in a.option_strings for a in _options(command))
    for value in values
]


@pytest.mark.parametrize(("command", "flag", "value"), SHARED)
def test_shared_flag_mistakes(command: str, flag: str, value: str, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """The same bad value of a shared flag: the same answer from every command that takes it."""
    _expect_usage_error(capsys, [*_minimal_args(command, tmp_path, skip=flag), flag, value], flag)


NUMERIC = [
    (command, action.option_strings[-1], value)
    for command in COMMANDS
    for action in _options(command)
    if action.type in (int, float)
    for value in ("nan", "inf", "-inf", "1e999", "")
]


@pytest.mark.parametrize(("command", "flag", "value"), NUMERIC)
def test_every_numeric_flag_refuses_non_finite_values(command: str, flag: str, value: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """inf, nan, overflow or nothing, in any numeric flag of any command: a usage-error naming
    the flag, before any file is read (the dummy paths do not exist)."""
    _expect_usage_error(capsys, [*_minimal_args(command, tmp_path, skip=flag), flag, value], flag)


def test_shared_flags_are_declared_once() -> None:
    """Each shared flag has the same choices and help text in every command that takes it."""
    from reference_impl.cli_common import OPTIONS

    for option in OPTIONS.values():
        seen = []
        for command in COMMANDS:
            for action in _options(command):
                if option.flags[-1] in action.option_strings:
                    seen.append((command, action.choices and tuple(action.choices)))
        assert len({choices for _, choices in seen}) <= 1, (option.flags, seen)


def test_plugin_help_is_written_once() -> None:
    """`blueprint --help` and each plugin's own parser show the same one-line help."""
    parser = build_parser(PLUGINS)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    listed = {a.dest: a.help for a in sub._choices_actions}
    for command, (_, help_text) in PLUGIN_COMMANDS.items():
        assert listed[command] == help_text


@pytest.mark.parametrize("command", ["compute", "finetune", "select-data"])
def test_task_and_loss_are_one_flag(command: str, tmp_path: Path) -> None:
    """The model's task is `--task` or `--loss` in every command that takes one, with one meaning."""
    base = _minimal_args(command, tmp_path)
    task = PARSERS[command].parse_args([*base[1:], "--task", "causal-lm"])
    loss = PARSERS[command].parse_args([*base[1:], "--loss", "causal-lm"])
    assert vars(task) == vars(loss)
    dest = next(a.dest for a in _options(command) if "--task" in a.option_strings)
    assert getattr(task, dest) == "causal-lm"
