"""Class 10: what the package claims is what is tested.

``pyproject.toml``'s ``requires-python`` floor must be a version the tests run
on: this interpreter, or the floor interpreter that ``scripts/test.sh`` runs
``scripts/test-python-floor.sh`` with. And code that catches asyncio's timeout
must name ``asyncio.TimeoutError``: on Python 3.10 the builtin ``TimeoutError``
is a different class, so ``except TimeoutError`` around ``asyncio.wait_for``
lets the timeout escape (the batcher's wait and its drain at shutdown broke
that way).
"""

from __future__ import annotations

import ast
import re
import sys

import tomllib

from tests.conftest import ROOT


def _caught_names(tree: ast.AST) -> list[tuple[int, str]]:
    """Every exception class named in an ``except`` clause or a ``contextlib.suppress(...)``."""
    found: list[tuple[int, str]] = []

    def names(node: ast.expr | None) -> list[ast.expr]:
        if node is None:
            return []
        return list(node.elts) if isinstance(node, ast.Tuple) else [node]

    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler):
            found.extend((node.lineno, ast.unparse(n)) for n in names(node.type))
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("suppress"):
            found.extend((node.lineno, ast.unparse(n)) for n in node.args)
    return found


def test_asyncio_timeouts_are_caught_by_their_asyncio_name() -> None:
    offenders = []
    for path in sorted((ROOT / "service").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        uses_asyncio = "asyncio" in path.read_text()
        for line, name in _caught_names(tree):
            if uses_asyncio and name == "TimeoutError":
                offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert not offenders, f"catch asyncio.TimeoutError (3.10 differs from TimeoutError): {offenders}"


def test_the_claimed_python_floor_is_tested() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    match = re.fullmatch(r">=\s*3\.(\d+)", project["requires-python"])
    assert match, project["requires-python"]
    floor = (3, int(match.group(1)))
    classifiers = {
        c.rsplit(" :: ", 1)[1]
        for c in project.get("classifiers", [])
        if "Programming Language :: Python :: 3." in c
    }
    assert f"3.{floor[1]}" in classifiers, "the floor is listed among the classifiers"
    if sys.version_info[:2] == floor:
        return  # this very run tests the floor
    floor_script = ROOT / "scripts" / "test-python-floor.sh"
    test_sh = (ROOT / "scripts" / "test.sh").read_text()
    assert floor_script.exists() and "test-python-floor.sh" in test_sh, (
        f"requires-python claims 3.{floor[1]} but the tests run on "
        f"{sys.version_info[0]}.{sys.version_info[1]} only"
    )
    assert f"3.{floor[1]}" in floor_script.read_text()
