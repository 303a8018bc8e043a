"""The shape of notify/: imports point one way, and only the store speaks SQLAlchemy."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "notify"

# The only modules that may import SQLAlchemy: the store's.
STORE = "notify.store"


def within(module: str, package: str) -> bool:
    """Whether `module` is `package` or one of its submodules."""
    return module == package or module.startswith(package + ".")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(tree: ast.AST, module: str = "") -> list[str]:
    """Every module named by an import in `tree`, at any depth, except under `if TYPE_CHECKING:`.

    `from a import b` names a.b where that is a notify module, else a; `module` resolves relative imports.
    """
    names: list[str] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module)
            for alias in node.names:
                names.append(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        pending.extend(ast.iter_child_nodes(node))
    return names


def _absolute(node: ast.ImportFrom, module: str) -> str:
    if not node.level:
        return node.module or ""
    package = (
        module.split(".") if MODULES.get(module, Path()).name == "__init__.py" else module.split(".")[:-1]
    )
    parts = package[: len(package) - node.level + 1]
    return ".".join([*parts, node.module] if node.module else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def notify_imports(name: str) -> set[str]:
    """The notify modules `name` imports (`from notify.x import y` names notify.x.y if that is a module)."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    return {i for i in imported(tree, name) if i in MODULES and i != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle in `graph`, as the modules along it (first repeated at the end); None if acyclic."""
    done: set[str] = set()
    for root in sorted(graph):
        if root in done:
            continue
        path: list[str] = [root]
        stack = [iter(sorted(graph[root]))]
        while stack:
            step = next(stack[-1], None)
            if step is None:
                done.add(path.pop())
                stack.pop()
            elif step in path:
                return [*path[path.index(step) :], step]
            elif step not in done:
                path.append(step)
                stack.append(iter(sorted(graph[step])))
    return None


def test_find_cycle_finds_one_and_passes_a_tree() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_are_collected_inside_functions_but_not_for_type_checking_only() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import notify.a\n"
        "if TYPE_CHECKING:\n    from notify.b import B\n"
        "def f():\n    from notify.c import d\n"
    )
    assert set(imported(ast.parse(source))) >= {"notify.a", "notify.c"}
    assert "notify.b" not in imported(ast.parse(source))


def test_from_a_package_import_a_module_names_the_module_not_the_package() -> None:
    source = "from notify import dlq\nfrom notify import send\nfrom notify.models import Status\n"
    assert sorted(imported(ast.parse(source))) == ["notify", "notify.dlq", "notify.models"]


def test_notify_has_no_import_cycle() -> None:
    graph = {name: notify_imports(name) for name in MODULES}

    cycle = find_cycle(graph)

    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_only_the_store_imports_sqlalchemy() -> None:
    importers = {
        name
        for name, path in MODULES.items()
        if any(
            i == "sqlalchemy" or i.startswith("sqlalchemy.") for i in imported(ast.parse(path.read_text()))
        )
    }

    assert importers, "no module imports SQLAlchemy: the check looks at the wrong files"
    assert {name for name in importers if not within(name, STORE)} == set()
