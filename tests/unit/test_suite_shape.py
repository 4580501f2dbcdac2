"""The test suite's own shape: every integration module carries the ``integration`` marker (so ``make test-unit``,
``-m "not integration"``, leaves them out), and test modules share code only through ``tests/helpers`` and the
conftest fixtures, never by importing one another."""

from __future__ import annotations

import ast

from tests.helpers.workspace import REPO

TESTS = REPO / "tests"
SHARED_MODULES = ("tests.helpers", "tests.tiny_clip")  # importable by any test; tests/tiny_clip.py: a README example


def imported_modules(tree: ast.AST) -> list[str]:
    """Every module an ``import`` or ``from ... import`` names (relative ones as ``.`` + their module)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
    return names


def marks(tree: ast.Module) -> list[str]:
    """The dotted names in the module's ``pytestmark = ...`` (one mark or a list of them)."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            found += [ast.unparse(n) for n in ast.walk(node.value) if isinstance(n, ast.Attribute)]
    return found


def test_every_integration_module_is_marked_integration() -> None:
    modules = sorted((TESTS / "integration").glob("test_*.py"))
    unmarked = [p.name for p in modules if "pytest.mark.integration" not in marks(ast.parse(p.read_text()))]
    assert len(modules) > 20 and unmarked == []


def test_no_test_module_imports_another_test_module_or_a_conftest() -> None:
    offenders = [f"{p.relative_to(REPO)}: {name}" for p in sorted(TESTS.rglob("*.py"))
                 for name in imported_modules(ast.parse(p.read_text(encoding="utf-8")))
                 if (name.startswith(".") or name == "tests" or name.startswith("tests."))
                 and not name.startswith(SHARED_MODULES)]
    assert offenders == []
