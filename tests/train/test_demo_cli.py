"""``python -m train demo``: every option described in ``--help``, and the options reach the demo."""

import argparse

from train.demo_cli import add_demo_arguments


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train demo")
    add_demo_arguments(parser)
    return parser


def test_every_demo_option_has_a_help_text():
    parser = _parser()
    options = [action for action in parser._actions if not isinstance(action, argparse._HelpAction)]
    assert {o for action in options for o in action.option_strings} >= {"--seed", "--quiet", "--verbose", "--threads"}
    undescribed = [action.option_strings for action in options if not (action.help or "").strip()]
    assert not undescribed
    text = parser.format_help()
    assert "--quiet" in text and "print nothing" in text


def test_options_parse_to_the_demo_settings():
    args = _parser().parse_args(["--out", "o", "--seed", "3", "--threads", "2", "--verbose", "--skip-hysac"])
    assert (args.out, args.seed, args.threads, args.quiet, args.verbose, args.skip_hysac) == (
        "o",
        3,
        2,
        False,
        True,
        True,
    )
