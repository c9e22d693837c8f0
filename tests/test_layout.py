"""The package's shape: no import cycles, imports point down the layers that
``replverify/__init__.py`` draws, and the pure parts import no I/O.

The import graph is read with :mod:`ast` from the source (module-level and
function-level imports alike, ``TYPE_CHECKING`` blocks excepted: they never run), so a
lazy import inside a function cannot hide a cycle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import replverify

PACKAGE = Path(replverify.__file__).parent

#: Lowest first. A module may import from its own package and from lower layers; packages
#: that share a layer are independent of each other.
LAYERS: list[set[str]] = [
    {"replverify", "errors", "types"},
    {"values"},
    {"db"},
    {"lag"},
    {"diff"},
    {"journal"},
    {"reconcile", "failover"},
    {"api"},
    {"ops"},
    {"reports"},
    {"testing"},
    {"cli"},
    {"__main__"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imported(tree: ast.AST) -> list[str]:
    """Every dotted name an import statement names, outside ``if TYPE_CHECKING:``."""
    names: list[str] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if _type_checking(node):
            todo.extend(getattr(node, "orelse", []))
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [f"{node.module}.{a.name}" for a in node.names]
        todo.extend(ast.iter_child_nodes(node))
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the replverify modules it imports (``from pkg import mod`` names mod)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for target in _imported(ast.parse(path.read_text(), str(path))):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def unit(module: str) -> str:
    """The layer unit of a module: its subpackage, or the top-level module's own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer(module: str) -> int:
    u = unit(module)
    for i, units in enumerate(LAYERS):
        if u in units:
            return i
    raise AssertionError(f"{module}: in no layer of LAYERS (add it, and to the docstrings)")


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_imports_point_down() -> None:
    upward = []
    for module, targets in import_graph().items():
        for target in targets:
            if unit(module) == unit(target):
                continue
            if layer(target) >= layer(module):
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_every_layer_is_documented() -> None:
    """The top docstring draws the layers; each subpackage's says what it owns."""
    doc = replverify.__doc__ or ""
    for units in LAYERS[1:]:
        for u in units - {"__main__"}:
            assert u in doc, u
    for init in PACKAGE.glob("*/__init__.py"):
        text = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "Imports" in text or "imports" in text, init


def _loaded(modules: list[str], depth: int = 1) -> set[str]:
    """Names in ``sys.modules`` after importing ``modules`` in a fresh interpreter, cut to
    their first ``depth`` dotted parts (1: top-level packages)."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted({{'.'.join(n.split('.')[:{depth}]) for n in sys.modules}})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def _package_modules(package: str) -> list[str]:
    return [m for m in _modules() if m == package or m.startswith(package + ".")]


#: the lag model's pure modules: records, arithmetic, relation
LAG_MODEL = ["replverify.lag.model", "replverify.lag.estimate", "replverify.lag.relation"]


def test_rendering_does_not_import_asyncpg() -> None:
    assert "asyncpg" not in _loaded(_package_modules("replverify.reports"))


@pytest.mark.parametrize(
    "modules",
    [
        _package_modules("replverify.values"),
        ["replverify.diff.machine"],
        LAG_MODEL,
        ["replverify.ops.failback_attribution", "replverify.ops.xidhorizon"],
        ["replverify.reconcile.judge", "replverify.reconcile.ledger"],
    ],
    ids=["values", "diff.machine", "lag.model", "failback.attribution", "reconcile.judge"],
)
def test_pure_parts_import_no_io(modules: list[str]) -> None:
    """Neither I/O libraries nor replverify's own I/O layer (``db``) get imported."""
    io = {"asyncpg", "socket", "ssl", "asyncio", "subprocess", "sqlglot"}
    assert _loaded(modules) & io == set()
    assert _loaded(modules, depth=2) & {"replverify.db"} == set()


def test_every_pure_module_is_checked() -> None:
    """A module split off the lag model or added to values is checked above too: the
    pure ones are named here, and every other lag module does I/O."""
    lag = {m for m in _package_modules("replverify.lag") if m != "replverify.lag"}
    assert lag - set(LAG_MODEL) == {
        "replverify.lag.metrics",
        "replverify.lag.probe",
        "replverify.lag.sampler",
    }


def test_the_page_css_is_a_package_resource() -> None:
    """The HTML page's style sheet is ``report.css``, found through importlib.resources
    (so also in an installed wheel: pyproject ships it as package data)."""
    from importlib import resources

    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib

    from replverify.reports import html

    css = resources.files("replverify.reports").joinpath("report.css")
    assert css.is_file()
    assert css.read_text(encoding="utf-8") == html.CSS and ":root {" in html.CSS
    assert 'CSS = """' not in Path(html.__file__).read_text()
    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["replverify.reports"]
    assert "*.css" in data or "report.css" in data
