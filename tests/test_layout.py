"""The size limits the code keeps to, so that a newcomer can read each
piece whole: no module over 600 lines and no function over 80 lines in
the two packages."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("keras_kfac", "agents")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

MODULES = sorted(
    p for package in PACKAGES for p in (ROOT / package).rglob("*.py")
)


def _functions(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def test_the_packages_have_modules():
    # Guards the globs below: an empty list would pass every check.
    assert {p.relative_to(ROOT).parts[0] for p in MODULES} == set(PACKAGES)


@pytest.mark.parametrize(
    "path", MODULES, ids=lambda p: str(p.relative_to(ROOT))
)
def test_modules_and_functions_stay_readable(path):
    source = path.read_text()
    lines = source.count("\n")
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in _functions(ast.parse(source))
        if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.name}: {', '.join(long)}"
