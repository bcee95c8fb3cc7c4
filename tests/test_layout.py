"""The layout shows the architecture: every import inside slm_blocks points down (model ← training ←
sharing ← compress / grow ← ui / cli) and there is no import cycle, not even through an import inside a function."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "slm_blocks"
LEVEL = {"model": 0, "training": 1, "sharing": 2, "compress": 3, "grow": 3, "ui": 4, "cli": 4, "__main__": 5}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)  # "" = the package itself


def _graph() -> dict[str, set[str]]:
    """module -> the slm_blocks modules it imports (top level or inside functions), "" = slm_blocks itself."""
    files = {_module_name(p): p for p in PKG.rglob("*.py")}

    def resolve(name: str) -> str:
        while name not in files:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for mod, path in files.items():
        package = mod.split(".") if path.name == "__init__.py" and mod else mod.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package[: len(package) - node.level + 1]
            elif (node.module or "").split(".")[0] == "slm_blocks":
                base = []
            else:
                continue
            module = (node.module or "").removeprefix("slm_blocks").lstrip(".") if not node.level else node.module
            target = ".".join(base + ([module] if module else []))
            for alias in node.names:  # `from . import x` may name a module
                deps.add(resolve(f"{target}.{alias.name}".strip(".")))
        graph[mod] = deps - {mod}
    return graph


def test_imports_point_down():
    for mod, deps in _graph().items():
        for dep in deps:
            a, b = mod.split(".")[0], dep.split(".")[0]
            if a in LEVEL and b in LEVEL:
                assert LEVEL[b] <= LEVEL[a], f"{mod} imports {dep}: imports must point down"


def test_no_import_cycles():
    graph = _graph()
    done, path = set(), []

    def visit(mod):
        if mod in path:
            cycle = path[path.index(mod):] + [mod]
            raise AssertionError("import cycle: " + " -> ".join(m or "slm_blocks" for m in cycle))
        if mod in done:
            return
        path.append(mod)
        for dep in graph.get(mod, ()):
            visit(dep)
        path.pop()
        done.add(mod)

    for mod in graph:
        visit(mod)
