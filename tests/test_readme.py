"""README's promises point at real tests (each test its recovery table names exists) and at the store
(its status table names every status)."""

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


def test_the_status_table_names_every_status_the_store_keeps_once() -> None:
    from notify.models import Status

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("| status | moved on by | bound |")
    table = text[start : text.index("\n\n", start)]
    first_cells = [line.split("|")[1] for line in table.splitlines()[2:]]
    named = [name for cell in first_cells for name in re.findall(r"`(\w+)`", cell)]

    assert sorted(named) == sorted(Status)
