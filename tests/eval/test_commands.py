"""``python -m eval`` is the list of evaluation folders: each holds its commands (``command.py``: ``COMMANDS``)."""

from __future__ import annotations

from pathlib import Path

import pytest

import eval.__main__ as eval_main

EVAL = Path(eval_main.__file__).parent

NEW_EVALUATION = """
from safe_encoders.cli import Command
from safe_encoders.cli.types import positive_int
from eval.errors import EvalError


def add_arguments(p):
    p.add_argument("--n", type=positive_int, required=True, help="how many")


def run(args):
    if args.n > 5:
        raise EvalError(f"--n {args.n}: at most 5")
    print(f"counted {args.n}")
    return 0


COMMANDS = (Command("count", "count to N", "Count to N.", add_arguments, run),)
"""


def test_a_new_evaluation_is_one_folder_and_one_registration_line(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "count_eval"
    folder.mkdir()
    (folder / "__init__.py").write_text('"""A new evaluation."""\n')
    (folder / "command.py").write_text(NEW_EVALUATION)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(eval_main, "EVALUATIONS", [*eval_main.EVALUATIONS, "count_eval"])  # the one line

    assert eval_main.main(["count", "--n", "3"]) == 0
    assert capsys.readouterr().out == "counted 3\n"
    assert eval_main.main(["count", "--n", "6"]) == 2  # its user errors: one line, exit 2
    assert capsys.readouterr().err == "error: --n 6: at most 5\n"
    with pytest.raises(SystemExit):
        eval_main.main(["count", "--n", "0"])  # its options validated like every other command's
    assert "count to N" in eval_main.build_parser().format_help()


def test_every_evaluation_folder_is_registered_and_every_command_named_once():
    folders = {f"eval.{p.parent.name}" for p in EVAL.glob("*/command.py")}
    assert folders == set(eval_main.EVALUATIONS)
    names = [c.name for c in eval_main.commands()]
    assert len(names) == len(set(names))
    assert {"t2i", "classify", "report", "retrieval", "hysac", "nsfw-retrieval", "i2t", "i2t-judge", "quality",
            "attack"} <= set(names)  # fmt: skip


def test_classifiers_import_no_command_line_module():
    """The classifiers are a room the commands use; they never import a command or the eval option helpers."""
    import ast

    for path in (EVAL / "classifiers").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = node.module
                assert module != "eval.options" and not module.endswith(".command"), (path.name, module)
                assert module != "eval.__main__", (path.name, module)
