"""The import graph of the product code, read from the source with `ast`: nothing is imported, so an import inside a
function counts as much as one at the top of a module."""

import ast
from collections import deque
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

PRODUCT_PACKAGES = ("core", "tenants", "routing", "billing", "llmops")

# Each package and the packages it may import: dependencies run one way, llmops → billing → routing → tenants → core.
MAY_IMPORT = {
    "core": set(),
    "tenants": {"core"},
    "routing": {"tenants", "core"},
    "billing": {"routing", "tenants", "core"},
    "llmops": {"billing", "routing", "tenants", "core"},
}


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source} imports {self.target}"


def product_modules(root: Path, packages=PRODUCT_PACKAGES) -> dict[str, Path]:
    """Dotted module name → source file, for every module of the packages but their migrations."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if "migrations" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path.relative_to(root)
    return modules


def _dotted_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """What an import statement names: `from pkg import name` gives `pkg.name`, which is a module or a name in pkg."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".")
        package = package[: len(package) - node.level + (1 if is_package else 0)]
        base = ".".join([*package, base] if base else package)
    return [base if alias.name == "*" else f"{base}.{alias.name}" for alias in node.names]


def _executed_modules(name: str, modules: dict[str, Path]) -> list[str]:
    """The product modules that importing `name` runs: each prefix of it that is a module (packages first)."""
    parts = name.split(".")
    prefixes = (".".join(parts[:length]) for length in range(1, len(parts) + 1))
    return [prefix for prefix in prefixes if prefix in modules]


def product_imports(root: Path, packages=PRODUCT_PACKAGES) -> list[Import]:
    """Every import of one product module by another, wherever it stands in the file."""
    modules = product_modules(root, packages)
    imports = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        own_packages = {".".join(module.split(".")[:length]) for length in range(1, module.count(".") + 1)}
        for node in ast.walk(ast.parse((root / path).read_text(), filename=str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            targets = {
                target
                for name in _dotted_names(node, module, is_package)
                for target in _executed_modules(name, modules)
            }
            # A module's own packages are imported before it runs, so naming them adds no edge.
            for target in sorted(targets - own_packages - {module}):
                imports.append(Import(module, target, path, node.lineno))
    return imports


@dataclass(frozen=True)
class Cycle:
    modules: list[str]  # every module of a group that import each other, directly or not
    imports: list[Import]  # one shortest cycle through the first of them

    def __str__(self) -> str:
        steps = "\n".join(f"  {edge}" for edge in self.imports)
        return f"{len(self.modules)} modules import each other ({', '.join(self.modules)}), e.g.\n{steps}"


def import_cycles(imports: list[Import]) -> list[Cycle]:
    """Each group of modules that import each other, with one shortest cycle through it."""
    first_import = {}
    for edge in imports:
        first_import.setdefault((edge.source, edge.target), edge)
    graph: dict[str, set[str]] = {}
    for source, target in first_import:
        graph.setdefault(source, set()).add(target)
    reachable = {module: _reachable(graph, module) for module in graph}
    cycles, seen = [], set()
    for module in sorted(graph):
        if module in seen or module not in reachable[module]:
            continue
        group = {other for other in reachable[module] if module in reachable.get(other, ())}
        seen |= group
        path = _shortest_path_back(graph, module, group)
        cycles.append(Cycle(sorted(group), [first_import[pair] for pair in pairwise(path)]))
    return cycles


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    found, queue = set(), deque([start])
    while queue:
        for target in graph.get(queue.popleft(), ()):
            if target not in found:
                found.add(target)
                queue.append(target)
    return found


def _shortest_path_back(graph: dict[str, set[str]], start: str, group: set[str]) -> list[str]:
    """start → … → start through the modules of its group, fewest imports first."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        for target in sorted(graph[module] & group):
            if target == start:
                path = [module, start]
                while path[0] != start:
                    path.insert(0, came_from[path[0]])
                return path
            if target not in came_from:
                came_from[target] = module
                queue.append(target)
    raise AssertionError(f"{start} is in a cycle but no path leads back to it")


def layering_violations(imports: list[Import]) -> list[Import]:
    """Imports of a package that the importing package may not depend on, the module each statement names."""
    violations: dict[tuple[Path, int, str], Import] = {}
    for edge in imports:
        source_package, target_package = edge.source.split(".")[0], edge.target.split(".")[0]
        if source_package != target_package and target_package not in MAY_IMPORT[source_package]:
            # `import tenants.models` runs tenants/__init__.py too: name only the deepest module.
            statement = (edge.path, edge.line, target_package)
            if statement not in violations or len(edge.target) > len(violations[statement].target):
                violations[statement] = edge
    return list(violations.values())
