"""The package's import graph: no module imports another that (transitively) imports it.

Every ``import`` of a ``captum_clip`` module counts, at module level or inside a function
(lazy imports are circles too, only deferred). ``from captum_clip.pkg import name`` points
at ``pkg.name`` when that is a module, else at ``pkg`` (its ``__init__``). A package's
``__init__`` re-exporting its own submodules is not an edge out of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import captum_clip

ROOT = Path(captum_clip.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``{module: {captum_clip modules it imports}}`` over every file of the package."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names
                ]
            else:
                continue
            for t in targets:
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t and t != name and not (is_pkg and t.startswith(name + ".")):
                    edges.add(t)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_lazy_imports():
    g = import_graph()
    assert "captum_clip.models.loaders" in g["captum_clip.models.spec"]
    assert "captum_clip.testbed.zoo" in g["captum_clip.models.loaders"]  # inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    assert cycles(import_graph()) == []


# The floors of the house, lowest first (docs/layout.md draws them). A module may import
# its own floor and the floors below, never a floor above.
FLOORS: tuple[tuple[str, frozenset[str]], ...] = (
    ("shared helpers", frozenset({"_hooks", "_validate", "_version", "storage"})),
    ("models", frozenset({"models", "testbed"})),
    ("measures", frozenset({"metrics", "viz"})),
    ("attributions", frozenset({"attr", "methods"})),
    (
        "analyses",
        frozenset(
            {"concepts", "diagnosis", "grounding", "masks", "covar", "counteranimals", "datasets"}
        ),
    ),  # fmt: skip
    ("benchmarks", frozenset({"benchmark"})),
    ("interface", frozenset({"commands", "cli", "__main__", ""})),
)


def floor_of(module: str) -> int:
    """Index in :data:`FLOORS` of ``captum_clip.<entry>...`` (``""``: the package root)."""
    entry = module.split(".")[1] if "." in module else ""
    for i, (_, entries) in enumerate(FLOORS):
        if entry in entries:
            return i
    raise AssertionError(f"{module}: {entry!r} is on no floor of FLOORS; add it (docs/layout.md)")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} ({FLOORS[floor_of(a)][0]}) -> {b} ({FLOORS[floor_of(b)][0]})"
        for a, targets in graph.items()
        for b in targets
        if floor_of(b) > floor_of(a)
    )


def test_floors_catch_an_upward_import():
    fake = {"captum_clip.metrics.x": {"captum_clip.attr.y"}, "captum_clip.attr.y": set()}
    assert upward_imports(fake) == [
        "captum_clip.metrics.x (measures) -> captum_clip.attr.y (attributions)"
    ]


def test_no_upward_imports():
    assert upward_imports(import_graph()) == []


def test_the_root_shows_subsystems_and_at_most_four_private_helpers():
    entries = {p.stem for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    private = sorted(e for e in entries if e.startswith("_") and not e.startswith("__"))
    assert len(private) <= 4, private
    on_floors = set().union(*(f for _, f in FLOORS)) - {""}
    assert entries - {"__init__"} == on_floors  # every entry is on a floor, no floor is stale


def _subsystem(module: str) -> str:
    """``captum_clip.<entry>...`` -> ``<entry>`` (``""``: the package root)."""
    return module.split(".")[1] if "." in module else ""


def private_reaches(graph: dict[str, set[str]]) -> list[str]:
    """Imports of another subsystem's private module (``captum_clip.x._y``): what another
    subsystem needs must be public (named in its ``__init__``) or live lower down. The root's
    own private helpers (``_hooks``, ``_validate``, ``_version``) are shared by design."""
    return sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        for b in targets
        if _subsystem(a) != _subsystem(b) and any(part.startswith("_") for part in b.split(".")[2:])
    )


def subsystem_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Circles between subsystems (packages), lazy imports included."""
    packages: dict[str, set[str]] = {}
    for a, targets in graph.items():
        packages.setdefault(_subsystem(a), set()).update(
            _subsystem(b) for b in targets if _subsystem(b) != _subsystem(a)
        )
    return cycles(packages)


def test_checks_catch_a_private_reach_and_a_subsystem_circle():
    fake = {
        "captum_clip.attr.cci": {"captum_clip.metrics._common", "captum_clip.attr._regions"},
        "captum_clip.metrics._common": {"captum_clip._validate"},
        "captum_clip.testbed.zoo": {"captum_clip.models.heads"},
        "captum_clip.models.loaders": {"captum_clip.testbed.zoo"},
    }
    assert private_reaches(fake) == ["captum_clip.attr.cci -> captum_clip.metrics._common"]
    assert subsystem_circles(fake) == [["models", "testbed"]]


def test_no_import_of_another_subsystems_private_module():
    assert private_reaches(import_graph()) == []


def test_no_two_subsystems_import_each_other():
    assert subsystem_circles(import_graph()) == []
