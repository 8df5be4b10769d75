"""The package's import structure: pathwatch.edge runs without torch and without the export
toolchain, and no module imports another that (directly or lazily) imports it back."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"edge": "pathwatch.edge", "export": "pathwatch.export", "cli": "pathwatch.cli"}
# The torch backend is the one place edge/ reaches into the export toolchain (guarded: it
# imports it only when that backend is chosen).
EDGE_MAY_IMPORT_EXPORT = {"pathwatch.edge.backends.torch_backend"}


def test_edge_modules_do_not_import_torch():
    code = ("import sys, pkgutil, importlib, pathwatch.edge as edge\n"
            "for m in pkgutil.walk_packages(edge.__path__, 'pathwatch.edge.'):\n"
            "    importlib.import_module(m.name)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every project module `name` imports, at the top or inside a function."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join(parent + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in modules and t != name)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_cycles_including_lazy_imports():
    graph = _graph()
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_edge_imports_nothing_from_export_or_cli_but_the_torch_backend():
    bad = {(name, target) for name, targets in _graph().items() if name.startswith("pathwatch.edge")
           and name not in EDGE_MAY_IMPORT_EXPORT for target in targets
           if target.startswith(("pathwatch.export", "pathwatch.cli"))}
    assert not bad, sorted(bad)
