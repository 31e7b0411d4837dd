"""The package's shape: no module of helpers imports, directly or through others, a module that imports it back,
lazy imports inside functions included (they hide a circle; they do not remove it)."""
import ast
from pathlib import Path

import helpers

PACKAGE = Path(helpers.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str], lazy: bool = True) -> set[str]:
    """The modules of helpers that ``path`` imports; with ``lazy``, those imported inside functions too."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree) if lazy else tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("helpers"):
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found & known


def import_graph(lazy: bool = True) -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    known = set(files)
    # A package's __init__ re-exporting its modules is not a circle: only edges between modules count.
    return {name: imports_of(path, known, lazy) - {name} - {p for p in known if name.startswith(p + ".")}
            for name, path in files.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each group of modules that reach one another (Tarjan's strongly connected components, size > 1)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_of_helpers_imports_itself_back():
    graph = import_graph()
    assert {"helpers.monitoring.monitor", "helpers.monitoring.retrain", "helpers.ingestion.ingest",
            "helpers.local.services"} <= set(graph)
    assert circles(graph) == []


# The pure logic both backends share (and the Flink job, the Lambdas and the processing scripts will), and the
# stages' interfaces: none of it may reach SQLite, HTTP, AWS, a local store or a server, even through another module.
PURE = [*(f"helpers.core.{path.stem}" for path in (PACKAGE / "core").glob("[a-z]*.py")),
        "helpers.ingestion.interface", "helpers.feature_store.interface", "helpers.training.interface",
        "helpers.registry.interface", "helpers.endpoints.interface", "helpers.monitoring.interface"]
MACHINERY = {"sqlite3", "httpx", "boto3", "botocore", "duckdb", "mlflow", "fastapi", "uvicorn", "torch"}


def third_party_imports(path: Path) -> set[str]:
    """The top-level packages ``path`` imports when it is imported (not those imported inside its functions)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module importing ``start`` runs: what it imports, and the packages above each (their __init__)."""
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
            todo.extend(".".join(node.split(".")[:i]) for i in range(2, node.count(".") + 1))
    return seen


def test_the_pure_core_and_the_interfaces_reach_no_local_machinery():
    graph = import_graph(lazy=False)  # what importing them runs
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    for module in PURE:
        used = {name: third_party_imports(files[name]) & MACHINERY for name in reachable(graph, module)}
        assert {name: found for name, found in used.items() if found} == {}, module


def test_the_machinery_check_sees_an_import_of_sqlite(tmp_path):
    (tmp_path / "m.py").write_text("import sqlite3\nfrom httpx import get\nfrom .x import y\n")
    assert third_party_imports(tmp_path / "m.py") & MACHINERY == {"sqlite3", "httpx"}


def test_the_core_imports_only_the_core():
    graph = import_graph()
    outside = {module: sorted(m for m in imported if not m.startswith("helpers.core"))
               for module, imported in graph.items() if module.startswith("helpers.core.")}
    assert {module: found for module, found in outside.items() if found} == {}


def test_importing_the_pure_core_and_the_interfaces_loads_no_machinery():
    import subprocess
    import sys

    code = (f"import sys\nfor m in {PURE!r}: __import__(m)\n"
            f"print(sorted(m for m in {sorted(MACHINERY)!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
