"""The training methods are data (train.methods.METHODS); the loop and the commands never ask which one runs."""

import ast
from pathlib import Path

import pytest

from train.methods import METHODS

TRAIN = Path(__file__).resolve().parents[2] / "train"


@pytest.mark.parametrize(
    "module", ["loop.py", "validation.py", "metrics_log.py", "resume_config.py", "optim.py", "__main__.py"]
)
def test_the_loop_and_the_commands_name_no_method(module):
    """No method name as a string and no method's model class in the code that must stay method-agnostic."""
    tree = ast.parse((TRAIN / module).read_text())
    names = {m.name for m in METHODS.values()} | {m.model_class.__name__ for m in METHODS.values()} - {"SafeClipModel"}
    found = [
        (getattr(node, "lineno", 0), text)
        for node in ast.walk(tree)
        for text in [node.value if isinstance(node, ast.Constant) else getattr(node, "id", None)]
        if isinstance(text, str) and text in names
    ]
    # the commands are named for the method they train (their one difference); no code branches on a method
    allowed = {"safe-clip", "hysac"} if module == "__main__.py" else set()
    assert [t for t in found if t[1] not in allowed] == []
    if module == "__main__.py":
        branches = [n for n in ast.walk(tree) if isinstance(n, ast.Compare) and "method" in ast.unparse(n.left)]
        assert [ast.unparse(n) for n in branches] == ["cfg.method != method_name"]


def test_each_method_is_complete_and_only_safe_clip_needs_the_references():
    assert set(METHODS) == {"safe-clip", "hysac", "clip"}
    assert {name for name, m in METHODS.items() if m.needs_references} == {"safe-clip"}
    assert {name for name, m in METHODS.items() if m.export_needs_validation} == {"hysac"}
    assert {name for name, m in METHODS.items() if m.hub_upload} == {"safe-clip"}
