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


# ----------------------------------------------------------------------------- block types are plug-ins

BLOCKS = PKG / "model" / "blocks"


def _block_spec_classes() -> set:
    """Every dataclass a block module defines (its Spec and the settings it shares, e.g. AttentionSpec)."""
    import dataclasses
    import importlib

    out = set()
    for path in BLOCKS.glob("*.py"):
        module = importlib.import_module(f"slm_blocks.model.blocks.{path.stem}".removesuffix(".__init__"))
        out |= {v for v in vars(module).values()
                if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__module__ == module.__name__}
    return out


def _names(node: ast.AST, mod: str, is_package: bool) -> dict[str, tuple[str, str | None]]:
    """Local name -> (absolute module, attribute or None for the module itself) for every import in a file."""
    package = mod.split(".") if is_package else mod.split(".")[:-1]
    out = {}
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom):
            base = ".".join(["slm_blocks"] + package[: len(package) - n.level + 1]) if n.level else ""
            module = ".".join(x for x in (base, n.module or "") if x)
            for a in n.names:
                out[a.asname or a.name] = (module, a.name)
        elif isinstance(n, ast.Import):
            for a in n.names:
                out[a.asname or a.name.split(".")[0]] = (a.name if a.asname else a.name.split(".")[0], None)
    return out


def _resolve(expr: ast.AST, names: dict):
    """The object an isinstance target names (a Name or a dotted Attribute of an import), or None."""
    import importlib

    parts = []
    while isinstance(expr, ast.Attribute):
        parts.insert(0, expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name) or expr.id not in names:
        return None
    module, attr = names[expr.id]
    try:
        obj = importlib.import_module(module)
        if attr is not None:
            obj = getattr(obj, attr) if hasattr(obj, attr) else importlib.import_module(f"{module}.{attr}")
        for p in parts:
            obj = getattr(obj, p)
    except (ImportError, AttributeError):
        return None
    return obj


def test_only_block_modules_ask_what_class_a_block_is():
    """Nothing outside model/blocks/ dispatches with isinstance on a block's spec class: it calls the block
    module's hooks instead (so a new block type touches only its module and the registry)."""
    specs = _block_spec_classes()
    assert specs, "no block spec classes found"
    offenders = []
    for path in PKG.rglob("*.py"):
        if BLOCKS in path.parents:
            continue
        tree = ast.parse(path.read_text())
        names = _names(tree, _module_name(path), path.name == "__init__.py")
        for n in ast.walk(tree):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("isinstance", "issubclass") \
                    and len(n.args) == 2:
                targets = n.args[1].elts if isinstance(n.args[1], ast.Tuple) else [n.args[1]]
                if any(_resolve(t, names) in specs for t in targets):
                    offenders.append(f"{path.relative_to(PKG)}:{n.lineno}")
    assert not offenders, f"isinstance on a block spec class outside model/blocks/: {offenders}"


def test_every_block_module_has_every_hook():
    """Each module in model/blocks/ is a registered block type with every hook the registry names."""
    import importlib

    from slm_blocks.model.blocks import HOOKS, REGISTRY

    files = sorted(p.stem for p in BLOCKS.glob("*.py") if p.name != "__init__.py")
    assert files
    for stem in files:
        module = importlib.import_module(f"slm_blocks.model.blocks.{stem}")
        missing = [h for h in HOOKS if not hasattr(module, h)]
        assert not missing, f"blocks/{stem}.py lacks {missing}"
        assert REGISTRY.get(module.TYPE) is module, f"blocks/{stem}.py is not registered"
