"""The layers of docs/architecture.md hold: no import circle between advmem's modules, and a part
imports only parts at its layer or below, except the two entry points that run the CLI in-process
(a Slurm job of `advmem sweep`, the DDP worker of the bench). Imports under TYPE_CHECKING never
run and do not count; function-body imports do."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import SRC

ROOT = Path(SRC) / "advmem"
LAYERS = [  # low to high, as in docs/architecture.md's table of parts
    {"version", "errors", "strict", "limits", "io", "device", "plugins", "registry", "commands", "progress"},
    {"attacks", "models"},
    {"data"},
    {"recipe"},
    {"methods"},
    {"engine"},
    {"track"},
    {"evaluation"},
    {"analysis", "report"},
    {"studies", "sweep", "export", "bench", "training"},
    {"cli", "api", "__init__", "__main__"},
]
ALLOWED_UPWARD = {("sweep", "cli"), ("bench", "cli")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    bits = module.split(".")
    return bits[1] if len(bits) > 1 else "__init__"


def import_arrows() -> set[tuple[str, str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    arrows = set()
    for mod, path in modules.items():
        tree = ast.parse(path.read_text())
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        skipped = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test) for s in block.body for n in ast.walk(s)}
        for node in ast.walk(tree):
            if id(node) in skipped or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + [base] * bool(base))
                # `from advmem.x import y`: y if it is a module, else advmem.x
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for name in names:
                while name and name not in modules:
                    name = name.rsplit(".", 1)[0] if "." in name else ""
                if name.startswith("advmem") and name != mod:
                    arrows.add((mod, name))
    return arrows


def circles(arrows: set[tuple[str, str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, list[str]] = {}
    for a, b in arrows:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert circles(import_arrows()) == []


def test_circles_are_found_when_there_are_some():
    assert circles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [{"a", "b", "c"}]


def test_every_part_has_a_layer_and_imports_only_downward():
    layer = {p: i for i, parts in enumerate(LAYERS) for p in parts}
    arrows = import_arrows()
    parts = {part_of(m) for arrow in arrows for m in arrow}
    assert parts <= set(layer), f"parts without a layer (add them here and to docs/architecture.md): {parts - set(layer)}"
    upward = {(part_of(a), part_of(b)) for a, b in arrows
              if part_of(a) != part_of(b) and layer[part_of(b)] > layer[part_of(a)]}
    assert upward <= ALLOWED_UPWARD, sorted(upward - ALLOWED_UPWARD)
