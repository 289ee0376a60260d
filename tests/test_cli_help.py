"""Every command line's --help: each flag, positional argument and subcommand has a description, its default (where
it has one) and its choices.

The parsers are taken from the commands' own entry points (their first parse_args call is intercepted), so a flag
or subcommand added anywhere later is checked too, whoever adds it.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

import pytest


class _Caught(BaseException):  # not Exception: mmer-rt reports any Exception as a crash (status 70)
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def _entry_points() -> dict:
    import export.to_onnx
    import mmer_rt.cli
    import training.evaluate
    import training.import_official
    import training.loso
    import training.train

    return {
        "python -m training.train": training.train.main,
        "python -m training.evaluate": training.evaluate.main,
        "python -m training.loso": training.loso.run_folds,
        "python -m export.to_onnx": export.to_onnx.main,
        "python -m training.import_official": training.import_official.main,
        "mmer-rt": mmer_rt.cli.main,
        # Subcommands that parse their own arguments (mmer_rt.cli.EXTRA_COMMANDS) are reached through mmer-rt too.
        **{f"mmer-rt {name}": (lambda argv, name=name: mmer_rt.cli.main([name, *argv]))
           for name in mmer_rt.cli.EXTRA_COMMANDS},
    }


COMMANDS = ("python -m training.train", "python -m training.evaluate", "python -m training.loso",
            "python -m export.to_onnx", "python -m training.import_official", "mmer-rt", "mmer-rt serve",
            "mmer-rt score")


def parser_of(command: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser that ``command``'s entry point builds, caught at its first parse."""

    def catch(self, *args, **kwargs):
        raise _Caught(self)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", catch)
        patch.setattr(argparse.ArgumentParser, "parse_known_args", catch)
        with pytest.raises(_Caught) as caught:
            _entry_points()[command]([])
    return caught.value.parser


def walk(parser: argparse.ArgumentParser, path: str):
    """(command path, parser, action) for every argument of the parser and of its subcommands, and
    (command path, parser, subcommand's choice action) for every subcommand itself."""
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            listed = {choice.dest: choice for choice in action._choices_actions}
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:  # an alias
                    continue
                seen.add(id(sub))
                yield path, parser, listed.get(name) or argparse.Action([], name, help=None)
                yield from walk(sub, f"{path} {name}")
            continue
        yield path, parser, action


def problems(command: str, parser: argparse.ArgumentParser) -> list[str]:
    found = []
    for path, owner, action in walk(parser, command):
        name = "/".join(action.option_strings) or action.dest
        help_text = action.help
        if not help_text or help_text is argparse.SUPPRESS or not str(help_text).strip():
            found.append(f"{path} {name}: no help text")
            continue
        shown = owner._get_formatter()._expand_help(action)
        default = action.default
        implied = action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction)  # flags, not values
        if (action.option_strings and not action.required and not implied and default is not None
                and default is not argparse.SUPPRESS and default != [] and "default" not in shown.lower()):
            found.append(f"{path} {name}: the help does not show the default {default!r}")
        if action.choices is not None and action.metavar is not None:
            missing = [str(choice) for choice in action.choices if str(choice) not in shown]
            if missing:
                found.append(f"{path} {name}: the metavar hides the choices and the help omits {missing}")
    return found


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_has_help_its_default_and_its_choices(command, monkeypatch):
    parser = parser_of(command, monkeypatch)
    assert parser.prog == command
    assert not problems(command, parser), "\n".join(problems(command, parser))
    parser.format_help()  # every help string expands (a stray % would raise here)


def test_train_flags_show_the_config_defaults(monkeypatch):
    """training.train's flags default to None in argparse (so that --config can fill them): each help names the
    TrainConfig default instead."""
    from training.train import TrainConfig

    parser = parser_of("python -m training.train", monkeypatch)
    actions = {action.dest: action for action in parser._actions}
    for field in fields(TrainConfig):
        assert field.name in actions, f"TrainConfig.{field.name} has no flag"
        if field.default not in (None, "", MISSING):
            shown = str(field.default) if field.type != "bool" else ""
            assert f"(default: {shown}" in actions[field.name].help, field.name


def test_the_check_finds_a_flag_without_help_a_hidden_default_and_hidden_choices():
    parser = argparse.ArgumentParser(prog="probe")
    parser.add_argument("--plain")
    parser.add_argument("--size", type=int, default=3, help="a size")
    parser.add_argument("--mode", choices=("a", "b"), metavar="MODE", help="a mode (default: a)", default="a")
    commands = parser.add_subparsers()
    commands.add_parser("quiet")
    found = problems("probe", parser)
    assert found == ["probe --plain: no help text", "probe --size: the help does not show the default 3",
                     "probe --mode: the metavar hides the choices and the help omits ['b']",
                     "probe quiet: no help text"]
