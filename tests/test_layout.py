"""The package's shape, checked from its source: one folder per stage, Ray only where the topology
is wired, Atari branching only in envs/, no import loops, short modules (issue 13)."""
from __future__ import annotations

import ast
import statistics
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kd_system"
RAY_ALLOWED = ("launch", "teachers", "experiments", "bench")  # RLlib training and baselines, the run's wiring
MAX_LINES, MAX_MEDIAN = 300, 120


def _modules() -> dict[str, Path]:
    """Dotted name -> file for every module (a package by its __init__.py)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _import_nodes(tree: ast.AST):
    """Every import that can run, function-level ones included; ``if TYPE_CHECKING:`` bodies never do."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: resolve against the importing module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]  # `from pkg import submodule`


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        edges = set()
        for node in _import_nodes(ast.parse(path.read_text(), str(path))):
            for name in _imported_names(node, module, path.name == "__init__.py"):
                parts = name.split(".")
                while parts and ".".join(parts) not in modules:  # `import a.b.attr`: the nearest module
                    parts.pop()
                if parts:
                    edges.add(".".join(parts))
        edges.discard(module)
        graph[module] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as a path, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, iters = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while path:
            child = next(iters[-1], None)
            if child is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = 1
                path.append(child)
                iters.append(iter(sorted(graph[child])))
    return None


def _top_folder(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0]


def test_ray_is_imported_only_where_the_topology_and_rllib_live():
    offenders = []
    for module, path in _modules().items():
        tree = ast.parse(path.read_text())
        names = [name for node in _import_nodes(tree) for name in _imported_names(node, module, path.name == "__init__.py")]
        if any(name.split(".")[0] == "ray" for name in names) and _top_folder(path) not in RAY_ALLOWED:
            offenders.append(str(path.relative_to(PACKAGE)))
    assert offenders == []


def test_atari_branching_lives_in_envs():
    users = [path.relative_to(PACKAGE) for path in PACKAGE.rglob("*.py") if "is_atari_id" in path.read_text()]
    assert users and all(path.parts[0] == "envs" for path in users), users


def test_no_import_loops():
    assert _cycle(_graph()) is None


def test_modules_are_short():
    counts = {module: len(path.read_text().splitlines()) for module, path in _modules().items()
              if path.name != "__init__.py"}  # packages' docstrings are not modules to read
    assert {m: n for m, n in counts.items() if n > MAX_LINES} == {}
    assert statistics.median(counts.values()) <= MAX_MEDIAN


def test_every_stage_folder_is_there_and_says_what_it_holds():
    for stage in ("envs", "policies", "replay", "actors", "learner", "evaluation", "checkpoints", "launch", "teachers"):
        init = PACKAGE / stage / "__init__.py"
        assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), stage
