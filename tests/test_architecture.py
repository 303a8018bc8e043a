"""The shape of notify/: each part on its layer, imports pointing one way, and the rules the layout promises.

The graph counts every import, lazy ones inside functions too, but not those
under `if TYPE_CHECKING:`. `python -m tests.test_architecture` prints its size.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

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


# -- the layout's rules -------------------------------------------------------------------
#
# Each part of notify sits on a layer; a module imports only from its own part and from
# lower layers, so every dependency points one way: down this list.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("notify.errors", "notify.text"),
    ("notify.models",),
    ("notify.constants",),
    ("notify.policy",),
    ("notify.settings",),
    ("notify.channels",),
    ("notify.rendering", "notify.providers", "notify.store", "notify.unsubscribe"),
    ("notify.observability",),  # over the store it reads gauges from, under what it logs and measures
    ("notify.receipts",),
    ("notify.delivery", "notify.broker"),
    ("notify.api",),
    ("notify.dlq", "notify.testing", "notify.worker", "notify.web"),
    ("notify", "notify.cli"),
)
CELERY = ("celery", "kombu", "billiard", "redis", "amqp")
PROVIDER_SDKS = ("aiosmtplib", "twilio", "pyfcm", "google", "requests", "urllib3", "certifi")


def part_of(module: str) -> str:
    """The part of notify `module` belongs to: the longest entry of LAYERS it is within."""
    parts = [part for layer in LAYERS for part in layer if within(module, part)]
    return max(parts, key=len)


def layer_of(module: str) -> int:
    part = part_of(module)
    return next(i for i, layer in enumerate(LAYERS) if part in layer)


def graph() -> dict[str, set[str]]:
    return {name: notify_imports(name) for name in MODULES}


def external_imports(name: str) -> set[str]:
    """The top-level packages outside notify that module `name` imports (lazily too)."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    return {i.split(".")[0] for i in imported(tree, name) if i.split(".")[0] != "notify"}


def reachable(roots: list[str], edges: dict[str, set[str]]) -> set[str]:
    """Every notify module `roots` import, directly or through others (lazy imports too)."""
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        module = pending.pop()
        if module not in seen:
            seen.add(module)
            pending.extend(edges[module])
    return seen


def upward_edges(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from a module to one of a higher layer, or of a sibling part on its layer."""
    return sorted(
        (a, b)
        for a, targets in edges.items()
        for b in targets
        if layer_of(b) > layer_of(a) or (layer_of(b) == layer_of(a) and part_of(b) != part_of(a))
    )


def test_imports_point_down_the_layers() -> None:
    assert upward_edges(graph()) == []


def test_channels_never_import_providers_and_providers_may_import_their_channel() -> None:
    edges = graph()
    reached = reachable([m for m in MODULES if within(m, "notify.channels")], edges)
    assert not any(within(m, "notify.providers") for m in reached), sorted(reached)
    assert "notify.channels.webhook" in edges["notify.providers.webhook"], (
        "the check looks at the wrong files"
    )


def test_the_store_names_no_channel_and_never_publishes() -> None:
    from notify.channels import names

    store = [name for name in MODULES if within(name, "notify.store")]
    for name in store:
        tree = ast.parse(MODULES[name].read_text())
        literals = {
            n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        }
        assert literals.isdisjoint(names()), f"{name} names a channel"
        assert not any(within(m, "notify.broker") for m in notify_imports(name)), name
    reached = reachable(store, graph())
    assert not any(within(m, p) for m in reached for p in ("notify.broker", "notify.channels")), reached
    assert not {pkg for m in reached for pkg in external_imports(m)} & set(CELERY)


def test_one_attempt_is_celery_free() -> None:
    """notify.delivery runs an attempt for whatever consumes messages: the Celery task, a lane, a test."""
    reached = reachable([m for m in MODULES if within(m, "notify.delivery")], graph())
    assert not any(within(m, "notify.worker") or within(m, "notify.broker") for m in reached), reached
    assert not {pkg for m in reached for pkg in external_imports(m)} & set(CELERY)


def test_producers_load_no_provider_sdk() -> None:
    """What `import notify` and `notify.send()` can reach, lazily too: no provider, no provider's client."""
    reached = reachable(["notify", "notify.api", "notify.dlq"], graph())
    assert not any(within(m, "notify.providers") or within(m, "notify.delivery") for m in reached), sorted(
        m for m in reached if within(m, "notify.providers")
    )
    assert not {pkg for m in reached for pkg in external_imports(m)} & set(PROVIDER_SDKS)


def test_celery_is_imported_by_the_broker_and_worker_parts_only() -> None:
    importers = {name for name in MODULES if external_imports(name) & {"celery", "kombu"}}
    assert importers, "no module imports Celery: the check looks at the wrong files"
    assert {m for m in importers if not (within(m, "notify.broker") or within(m, "notify.worker"))} == set()


def test_notify_never_imports_the_operator_package() -> None:
    assert not any("workers" in external_imports(name) for name in MODULES)


def loaded_by(module: str) -> set[str]:
    """The top-level packages a fresh interpreter holds after `import module` (its parents' too)."""
    code = f"import {module}, sys; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    return set(completed.stdout.split())


@pytest.mark.parametrize("module", ["notify.delivery.attempt", "notify.store", "notify"])
def test_importing_an_attempt_or_the_store_loads_no_celery(module: str) -> None:
    """Beyond the import statements: importing notify.delivery imports the notify package first."""
    assert not loaded_by(module) & set(CELERY)


@pytest.mark.parametrize("module", ["notify.channels.email", "notify.channels.webhook", "notify.api"])
def test_importing_a_channel_or_the_api_loads_no_provider_sdk(module: str) -> None:
    assert not loaded_by(module) & set(PROVIDER_SDKS)


def summary() -> str:
    """The import graph's size: modules, edges between them, edges that point back up."""
    edges = graph()
    count = sum(len(targets) for targets in edges.values())
    return f"{len(edges)} modules, {count} edges, {len(upward_edges(edges))} pointing back up"


if __name__ == "__main__":
    print(summary())
