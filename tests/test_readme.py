"""README's promises point at real tests: each test its recovery table names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"


def recovery_table() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("**Recovery under faults")
    return text[start : text.index("\n\n", text.index("| fault |", start))]


def test_every_test_the_recovery_table_names_exists() -> None:
    named = re.findall(r"`(test_\w+\.py)(?:::(\w+))?`", recovery_table())
    assert len(named) >= 12
    for module, function in named:
        path = TESTS / module
        assert path.is_file(), f"README names {module}, which does not exist"
        if function:
            tree = ast.parse(path.read_text(encoding="utf-8"))
            defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
            assert function in defined, f"README names {module}::{function}, which does not exist"
