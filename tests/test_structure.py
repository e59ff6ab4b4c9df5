"""The shape ARCHITECTURE.md promises, checked on the source: who executes which table's SQL,
no SQL text in Python, no upward import, and the size guides."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from worker import db

PACKAGE = Path(__file__).resolve().parent.parent / "worker"
# The named-query namespaces of the worker's own tables, each owned by one store module.
STORE_NAMESPACES = {
    "ledger",
    "processes",
    "alerts",
    "reads",
    "definitions",
    "watchdog",
    "history",
    "charts",
}
SQL_TEXT = re.compile(
    r"^\s*(SELECT\s|INSERT\s+INTO\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s|WITH\s+\w+\s+AS\s*\(|"
    r"CREATE\s+(TABLE|INDEX|FUNCTION)|ALTER\s+TABLE)"
)
MODULE_MAX_LINES = 450
FUNCTION_MAX_LINES = 60


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def named_queries(path: Path) -> list[str]:
    """Every `db.query("NAMESPACE.NAME")` (or `query(...)` inside db.py) in the module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name == "query" and isinstance(node.args[0].value, str):
                found.append(node.args[0].value)
    return found


def test_each_store_namespace_is_executed_by_its_own_store_module_only() -> None:
    for path in modules():
        for name in named_queries(path):
            namespace = name.split(".", 1)[0]
            if namespace in STORE_NAMESPACES:
                assert path == PACKAGE / "store" / f"{namespace}.py", (path, name)


def test_every_named_query_used_exists_and_every_one_defined_is_used() -> None:
    used = {name for path in modules() for name in named_queries(path)}
    for name in used:
        db.query(name)  # raises KeyError for a name no .sql file defines
    # cleanup.sql's statements are looked up by a rule's walk, not by literal name.
    defined = {name for name in db._queries() if not name.startswith("cleanup.")}
    assert defined <= used, sorted(defined - used)


def test_no_python_module_holds_sql_text() -> None:
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not SQL_TEXT.match(node.value), (path, node.lineno, node.value[:60])


def test_the_store_and_the_vocabulary_import_nothing_above_them() -> None:
    allowed = {
        "vocab": set(),
        "store": {"db", "vocab", "settings", "store"},
    }
    for room, may_import in allowed.items():
        paths = [PACKAGE / "vocab.py"] if room == "vocab" else list((PACKAGE / room).glob("*.py"))
        for path in paths:
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.ImportFrom) or node.level == 0:
                    continue
                if node.level == 1 and room == "store":
                    continue  # a sibling store module
                targets = [node.module.split(".")[0]] if node.module else []
                targets = targets or [alias.name for alias in node.names]
                assert set(targets) <= may_import, (path, node.module, targets)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_size_guides(path: Path) -> None:
    source = path.read_text()
    assert len(source.splitlines()) <= MODULE_MAX_LINES, path
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            assert length <= FUNCTION_MAX_LINES, (path, node.name, length)
