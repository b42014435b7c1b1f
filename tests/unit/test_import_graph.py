"""No import circle among the relay's modules, counting every import: at module level,
inside functions, and under TYPE_CHECKING (a circle of type-only imports is still a circle
of knowledge). The wiring object lives in a leaf module (relay/wiring.py); the parts it
wires are handed what they use."""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "relay"


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SOURCE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    target = target if target in modules else node.module
                    if target in modules and target != name:
                        graph[name].add(target)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in modules)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each circle once, starting from its smallest module name."""
    found: set[tuple[str, ...]] = set()

    def walk(path: list[str]) -> None:
        for target in sorted(graph[path[-1]]):
            if target in path:
                circle = path[path.index(target) :]
                start = circle.index(min(circle))
                found.add(tuple(circle[start:] + circle[:start]))
            elif target > path[0]:  # explore each circle from its smallest member only
                walk([*path, target])

    for name in sorted(graph):
        walk([name])
    return [list(c) for c in sorted(found)]


def test_the_import_graph_is_read() -> None:
    graph = import_graph()
    assert "relay.wiring" in graph["relay.app"]
    assert "relay.store.db" in graph["relay.store.events"]


def test_no_import_circle() -> None:
    found = circles(import_graph())
    assert found == [], "import circles: " + "; ".join(" -> ".join(c) for c in found)


def test_a_circle_is_found_and_named() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
