"""How the modules may depend on each other: no cycles, a socket-free core, config as a leaf.

Read from the source with ``ast``: every import counts, those under
``TYPE_CHECKING`` and inside functions included, since a cycle there is a
cycle in the design even when Python tolerates it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fastrelay"

# The sans-I/O core: protocol rules, routing, memory, decisions. None of it may
# reach a socket or an event loop, so all of it is tested and benchmarked alone.
PURE = (
    "fastrelay.backoff",
    "fastrelay.cache",
    "fastrelay.closes",
    "fastrelay.config",
    "fastrelay.conflation",
    "fastrelay.deflate",
    "fastrelay.events",
    "fastrelay.feed",
    "fastrelay.framing",
    "fastrelay.histogram",
    "fastrelay.hub",
    "fastrelay.interest",
    "fastrelay.markets",
    "fastrelay.member",
    "fastrelay.outbox",
    "fastrelay.protocol",
    "fastrelay.ratelimit",
    "fastrelay.session",
    "fastrelay.upstream_core",
    "fastrelay.scaleout.messages",
    "fastrelay.scaleout.registry",
    "fastrelay.scaleout.subjects",
    "fastrelay.workers.plan",
    "fastrelay.workers.policy",
)
# Libraries that mean I/O, a loop or a metrics registry.
IMPURE_LIBRARIES = {"asyncio", "picows", "nats", "uvloop", "prometheus_client", "socket", "ssl"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module this file imports (absolute names), wherever the import statement stands."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path).rpartition(".")[0] if path.name != "__init__.py" else module_name(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from fastrelay import markets` imports the module fastrelay.markets.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {i for i in imports_of(path) if i in modules and i != name} for name, path in modules.items()
    }


def test_no_import_cycles_not_even_under_type_checking() -> None:
    """The modules form a DAG: every dependency runs one way."""
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def closure(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        todo.extend(edges.get(node, ()))
    return seen


def test_the_core_reaches_no_socket_loop_or_metrics_library() -> None:
    """Nothing a pure module imports, directly or through others, is I/O."""
    edges = graph()
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    for name in PURE:
        assert name in modules, f"{name} is listed as pure but does not exist"
        reached = closure(name, edges)
        impure = {
            lib
            for module in reached
            for lib in imports_of(modules[module])
            if lib.split(".")[0] in IMPURE_LIBRARIES
        }
        assert not impure, f"{name} reaches {sorted(impure)} through {sorted(reached - {name})}"


def test_config_is_a_leaf() -> None:
    """Settings import only pure data and rules (markets, protocol): no role, feed or server code."""
    edges = graph()
    assert closure("fastrelay.config", edges) <= {
        "fastrelay",
        "fastrelay.config",
        "fastrelay.markets",
        "fastrelay.protocol",
    }


def test_the_sockets_side_depends_on_the_core_never_the_reverse() -> None:
    """No pure module imports a shell (server, upstream, relay, app, roles, scale-out roles)."""
    edges = graph()
    shells = {
        "fastrelay.server",
        "fastrelay.upstream",
        "fastrelay.relay",
        "fastrelay.app",
        "fastrelay.roles",
        "fastrelay.metrics",
        "fastrelay.scaleout.edge",
        "fastrelay.scaleout.ingest",
        "fastrelay.scaleout.link",
    }
    for name in PURE:
        assert not closure(name, edges) & shells, name
