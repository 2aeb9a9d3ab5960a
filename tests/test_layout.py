"""The import graph: models and data meet only in the configs, the CLI and the callbacks (what both use lives in
``dl4/errors.py``, ``dl4/data_root.py``, ``dl4/warps.py`` and ``dl4/text.py``), and no module imports itself back
through another, at load time or inside a function."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dl4", "lightning_models", "datamodules", "callbacks")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every project module -> the project modules it imports (anywhere in the file)."""
    modules = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module, *(f"{node.module}.{a.name}" for a in node.names)] \
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def test_models_and_data_do_not_import_each_other():
    graph = imports()
    crossing = [f"{a} -> {b}" for a, targets in graph.items() for b in targets
                if {a.split(".")[0], b.split(".")[0]} == {"lightning_models", "datamodules"}]
    assert not crossing, crossing


def test_no_module_imports_itself_back():
    graph = imports()
    # a package's __init__ imports its modules, which import their siblings by full name: not a circle of code
    graph = {a: {b for b in targets if not (b == a.rpartition(".")[0] or a == b.rpartition(".")[0])}
             for a, targets in graph.items()}
    circles, state = [], {}

    def visit(node: str, path: list[str]):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, circles
