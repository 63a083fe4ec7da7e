"""The package's dependencies point one way: util <- data/providers/store/losses/retrieval <-
training <- methods <- pipelines <- commands/cli, with no import cycle. Imports inside functions
count as much as those at the top of a module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "madapt_cli"

#: the first matching prefix decides a module's layer; a module may import its own layer or
#: any lower one, never a higher one
LAYERS: list[tuple[str, int]] = [
    ("madapt_cli.errors", 0),
    ("madapt_cli.util", 0),
    ("madapt_cli.data", 1),
    ("madapt_cli.providers", 1),
    ("madapt_cli.store", 1),
    ("madapt_cli.losses", 1),
    ("madapt_cli.retrieval", 1),
    ("madapt_cli.vector_sources", 1),
    ("madapt_cli.training", 2),
    ("madapt_cli.methods", 3),
    ("madapt_cli.pipelines", 4),
    ("madapt_cli.reports", 4),
    ("madapt_cli.console", 5),
    # application-facing adapters over the pipelines: the HTTP server, third-party registries
    ("madapt_cli.serve", 5),
    ("madapt_cli.integrations", 5),
    ("madapt_cli.commands", 5),
    ("madapt_cli.cli", 5),
    ("madapt_cli.__main__", 5),
]
#: the package root: it defines ``__version__`` (imported everywhere) and re-exports the public
#: API lazily, so its own imports are not checked
ROOT = "madapt_cli"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int:
    if module == ROOT:
        return 0
    for prefix, level in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return level
    raise AssertionError(f"{module} has no layer: add it to LAYERS")


def imports() -> dict[str, set[str]]:
    """module -> the madapt modules it imports (top level and inside functions)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith(ROOT):
                    found.add(target)
        graph[name] = found
    return graph


def test_every_module_has_a_layer() -> None:
    for module in imports():
        layer(module)


def test_no_upward_import() -> None:
    upward = [
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module, targets in imports().items()
        if module != ROOT
        for target in sorted(targets)
        if target != ROOT and layer(target) > layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle() -> None:
    graph = {m: {t for t in ts if t != ROOT} for m, ts in imports().items() if m != ROOT}
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_cli_starts_without_torch() -> None:
    # `madapt --help` and every one-line input error stay fast: torch loads only for work
    code = "import sys, madapt_cli.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
