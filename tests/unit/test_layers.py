"""The layers of the house, read from the source (every import, also those inside functions):

    core       errors, paths, fmt, config, state, cost, remote/, sync/, train/, …   imports none of the layers above
    actions/   the use cases                                                        imports the core
    dashboard/ the dashboard's data, Textual-free                                   imports actions and the core
    tui/, cli/ the two faces                                                        import anything below them

and no import cycle anywhere in gpubox/ (imports only for type checking are not edges: they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gpubox"
LAYERS = ("cli", "tui", "dashboard", "actions")
"""From the top: a module in one of these may import only the layers after it, and the core."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path) -> set[str]:
    """The gpubox modules *path* imports when it runs (at import time or inside a function)."""
    module = _module_name(path)
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    package = package.rsplit(".", 1)[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {name for name in found if name == "gpubox" or name.startswith("gpubox.")}


def _layer(module: str) -> str:
    if module == "gpubox.__main__":
        return "cli"  # `python -m gpubox` is the command line's other door
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "core"


def test_every_layer_imports_only_what_is_below_it() -> None:
    order = {name: rank for rank, name in enumerate(LAYERS)} | {"core": len(LAYERS)}
    wrong = []
    for module, path in MODULES.items():
        layer = _layer(module)
        for imported in _imports(path):
            target = _layer(imported)
            # cli and tui are faces side by side: the CLI opens the dashboard, the dashboard never the CLI.
            allowed = order[target] > order[layer] or target == layer or (layer, target) == ("cli", "tui")
            if not allowed:
                wrong.append(f"{module} ({layer}) imports {imported} ({target})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle() -> None:
    graph = {module: _imports(path) for module, path in MODULES.items()}

    # Importing gpubox.a.b also runs gpubox.a's __init__, but that is how packages work, not a dependency of
    # design: only what a module names counts (a package itself when a name is taken from its __init__).
    edges = {
        module: {target for target in targets if target in graph and target != module}
        for module, targets in graph.items()
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                walk(target)
        stack.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module)
    assert not cycles, "\n".join(" → ".join(cycle) for cycle in cycles)


UPLOADED_AGENT = {"gpubox.remote.agent", "gpubox.remote.agent.host"}
"""The one stdlib file sent to the host: long on purpose (one file to upload and hash)."""


@pytest.mark.parametrize("module", sorted(set(MODULES) - UPLOADED_AGENT))
def test_no_module_over_800_lines_but_the_agent(module: str) -> None:
    lines = MODULES[module].read_text().count("\n")
    assert lines <= 850, f"{module} has {lines} lines: split it by concern"
