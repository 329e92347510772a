"""Every command line of the project (``safe-encoders``, ``python -m eval``, ``python -m train``), walked option by
option: each option says what it does, and each number is validated where it is parsed."""

from __future__ import annotations

import argparse

import pytest

from eval.__main__ import build_parser as eval_parser
from safe_encoders.cli import build_parser as safe_encoders_parser
from safe_encoders.cli.types import NUMERIC_TYPES
from train.__main__ import build_parser as train_parser

PROGRAMS = {"safe-encoders": safe_encoders_parser, "eval": eval_parser, "train": train_parser}


def options(parser: argparse.ArgumentParser, path: str):
    """(``program command``, action) for every option of every (sub)command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from options(sub, f"{path} {name}")
        else:
            yield path, action


def all_options():
    return [(path, action) for program, build in PROGRAMS.items() for path, action in options(build(), program)]


def _refuses(parse, text: str) -> bool:
    try:
        parse(text)
    except (argparse.ArgumentTypeError, ValueError):
        return True
    return False


def test_every_option_of_every_command_has_a_help_text():
    undescribed = [
        f"{path} {'/'.join(action.option_strings) or action.dest}"
        for path, action in all_options()
        if not isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction))
        and not (action.help or "").strip()
    ]
    assert undescribed == []


def test_every_numeric_option_refuses_nan_infinity_and_what_its_range_excludes():
    bare, wrong = [], []
    for path, action in all_options():
        name = f"{path} {'/'.join(action.option_strings)}"
        if action.type in (int, float):
            bare.append(name)  # a plain int / float takes 0, -1 (and float: nan) without a word
        sign = NUMERIC_TYPES.get(action.type)
        if sign is None:
            continue
        if not all(_refuses(action.type, text) for text in ("nan", "inf", "-inf", "x")):
            wrong.append(f"{name}: takes nan / inf")
        if sign == "positive" and not (_refuses(action.type, "0") and _refuses(action.type, "-1")):
            wrong.append(f"{name}: takes 0 or -1")
        if sign == "nonnegative" and not (_refuses(action.type, "-1") and not _refuses(action.type, "0")):
            wrong.append(f"{name}: takes -1 or refuses 0")
    assert bare == [] and wrong == []
    assert len([a for _, a in all_options() if a.type in NUMERIC_TYPES]) > 40  # the walk reaches the commands


@pytest.mark.parametrize(
    "extra",
    [
        ["--batch-size", "0"],
        ["--steps", "0"],
        ["--guidance", "nan"],
        ["--guidance", "-1"],
        ["--images-per-prompt", "-1"],
        ["--nudenet-threshold", "1.5"],
        ["--lease", "inf"],
        ["--shard", "2/2"],
    ],
)
def test_eval_t2i_refuses_bad_numbers_before_running(tmp_path, capsys, extra):
    from eval.__main__ import main

    args = ["t2i", "--model", "m", "--prompts", "p.csv", "--out", str(tmp_path / "out"), *extra]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert f"argument {extra[0]}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("program", "argv"),
    [
        ("train", ["demo", "--out", "o", "--threads", "0"]),
        ("train", ["visu-images", "--out", "o", "--steps", "nan"]),
        ("safe-encoders", ["scan", "data", "--out", "o", "--batch-size", "-1"]),
        ("safe-encoders", ["search", "s", "--text", "a", "--k", "0"]),
        ("eval", ["i2t", "--model", "m", "--images", "a=b", "--out", "o", "--temperature", "nan"]),
        ("eval", ["nsfw-retrieval", "--unsafe-images", "a=b", "--distractor-images", "d", "--distractor-texts", "t",
                  "--out", "o", "--strength", "-1"]),
    ],
)  # fmt: skip
def test_other_programs_refuse_bad_numbers_at_parse_time(program, argv):
    with pytest.raises(SystemExit) as exit_:
        PROGRAMS[program]().parse_args(argv)
    assert exit_.value.code == 2


@pytest.mark.parametrize(
    ("program", "argv", "message"),
    [
        ("safe-encoders", ["search", "{tmp}/absent", "--text", "a"], "no .scan.json"),
        ("eval", ["report", "--out", "{tmp}/absent"], "holds no run"),
        ("train", ["export", "--run", "{tmp}/absent", "--out", "{tmp}/o"], "not a finished training run"),
    ],
)
def test_every_program_prints_a_user_error_in_one_line_and_shows_the_traceback_with_debug(
    tmp_path, capsys, program, argv, message
):
    from eval.__main__ import main as eval_main
    from safe_encoders.cli import main as safe_encoders_main
    from train.__main__ import main as train_main

    main = {"safe-encoders": safe_encoders_main, "eval": eval_main, "train": train_main}[program]
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    if program == "train":
        return  # train export reports this one itself (no exception to show)
    with pytest.raises(Exception, match=message):
        main(["--debug", *argv])
