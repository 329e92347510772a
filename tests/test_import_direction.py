"""Data flows train -> eval -> safe_encoders: read from the source's import statements (ast, no imports run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What each first-party package may import besides itself. Nothing imports tests, benchmarks or scripts.
ALLOWED = {
    "safe_encoders": {"safe_encoders"},
    "eval": {"eval", "safe_encoders"},
    "train": {"train", "eval", "safe_encoders"},
}
FIRST_PARTY = {*ALLOWED, "tests", "benchmarks", "scripts"}


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[int, str, list[str]]]:
    """Every import of one file, at any depth (functions, TYPE_CHECKING blocks): (line, module, names)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                package = list(path.relative_to(root).parts[:-1])
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append((node.lineno, module, [alias.name for alias in node.names]))
    return found


def violations(root: Path = ROOT) -> list[str]:
    out = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            where = f"{path.relative_to(root)}"
            for line, module, names in imports_of(path, root):
                top = module.split(".")[0]
                if top not in FIRST_PARTY:
                    continue
                if top not in allowed:
                    out.append(f"{where}:{line}: {package} imports {module} (allowed: {sorted(allowed)})")
                if top == package:
                    continue
                private = [p for p in module.split(".")[1:] if p.startswith("_") and not p.startswith("__")]
                private += [n for n in names if n.startswith("_") and not n.startswith("__")]
                if private:
                    out.append(f"{where}:{line}: {package} imports private {', '.join(private)} from {module}")
    return out


def test_imports_flow_train_to_eval_to_safe_encoders_without_private_names():
    assert violations() == []


@pytest.mark.parametrize(
    ("package", "source", "expected"),
    [
        ("safe_encoders", "from eval.store import ResultsStore\n", "safe_encoders imports eval.store"),
        ("safe_encoders", "def f():\n    import train.loop\n", "safe_encoders imports train.loop"),
        ("eval", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from train.data import x\n",
         "eval imports train.data"),
        ("eval", "from safe_encoders.swap import _private\n", "eval imports private _private"),
        ("train", "from eval import _progress\n", "train imports private _progress"),
        ("eval", "from ..train import loop\n", "eval imports train"),
    ],
)  # fmt: skip
def test_the_check_sees_each_kind_of_wrong_import(tmp_path, package, source, expected):
    for name in ALLOWED:
        (tmp_path / name).mkdir()
    (tmp_path / package / "bad.py").write_text(source)
    (found,) = violations(tmp_path)
    assert f"{package}/bad.py" in found and expected in found


def test_imports_inside_the_own_package_and_downstream_are_allowed(tmp_path):
    for name in ALLOWED:
        (tmp_path / name).mkdir()
    (tmp_path / "train" / "ok.py").write_text(
        "from eval.store import ResultsStore\nfrom safe_encoders import make_safe\nfrom train.loop import _x\n"
    )
    (tmp_path / "eval" / "ok.py").write_text("from . import store\nfrom .prompts import _parse_int\n")
    assert violations(tmp_path) == []
