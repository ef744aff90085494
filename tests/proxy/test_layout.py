"""The proxy's module layout: no import cycle, no reaching into another object's privates, no test code loaded.

Static checks over the source (``ast``), so they hold for code paths no other test runs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import lambdapool

ROOT = Path(lambdapool.__file__).parent / "tools"
PACKAGES = ("proxy", "proto")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            name = (
                f"lambdapool.tools.{package}" if path.stem == "__init__" else f"lambdapool.tools.{package}.{path.stem}"
            )
            found[name] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Every module ``tree`` imports at run time, at any depth (functions too), but not under TYPE_CHECKING.

    ``from pkg import name`` is an edge to ``pkg.name`` when that is a module (``known``), else to
    ``pkg``. The import of a parent package that Python makes first is not an edge: a package
    ``__init__`` importing its own submodules is how packages are built, not a cycle.
    """
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        imported = _imports(ast.parse(path.read_text()), name, path.stem == "__init__", set(modules))
        graph[name] = {t for t in imported if t in modules and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := walk(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := walk(node)) is not None:
            return found
    return None


def test_the_import_graph_is_what_the_modules_import() -> None:
    graph = _graph()
    assert "lambdapool.tools.proxy.session" in graph["lambdapool.tools.proxy.client"]
    assert "lambdapool.tools.proto.framing" in graph["lambdapool.tools.proto"]
    # TYPE_CHECKING imports are not edges: the pool sees clients only through interfaces
    assert "lambdapool.tools.proxy.client" not in graph["lambdapool.tools.proxy.pool"]
    assert "lambdapool.tools.proxy.server" not in graph["lambdapool.tools.proxy.pool"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_proxy_and_proto_modules() -> None:
    # The package __init__ re-exports LocalProxy, so it sits above everything; a submodule
    # importing its own package (lambdapool.tools.proxy) would be a cycle, and is reported as one.
    assert _cycle(_graph()) is None


def _private_reaches(tree: ast.AST) -> list[tuple[int, str]]:
    """``x._name`` where ``x`` is not ``self``/``cls`` (dunders like ``__class__`` allowed)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_private_access_check_sees_other_objects_privates() -> None:
    source = "class A:\n    def f(self, other):\n        return self._a, other._b, self.x._c, type(self).__name__\n"
    tree = ast.parse(source)
    assert [text for _, text in _private_reaches(tree)] == ["other._b", "self.x._c"]


def test_no_module_reaches_into_another_objects_private_state() -> None:
    # Strict: not even a module's own underscore names through another object (``self.x._y``);
    # private module functions are called by plain name within their module, which is allowed.
    offences = {}
    for name, path in _modules().items():
        if reaches := _private_reaches(ast.parse(path.read_text())):
            offences[name] = reaches
    assert offences == {}


def test_importing_the_proxy_loads_no_test_helpers() -> None:
    code = (
        "import sys, lambdapool.tools.proxy, lambdapool.tools.proxy.server\n"
        "from lambdapool.tools.proxy.local import LocalProxy\n"
        "LocalProxy(backend='postgresql://u:secret@127.0.0.1:1/db', max_backends=2)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('lambdapool.testing', 'lambdapool.tools.testing'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# The protocol logic (h11's shape): bytes in, actions out, no sockets, TLS or event loop.
SANS_IO = [
    "lambdapool.tools.proxy.session",
    "lambdapool.tools.proxy.backend_state",
    "lambdapool.tools.proxy.handshake",
    "lambdapool.tools.proxy.backend_login",
    "lambdapool.tools.proxy.shared",
    "lambdapool.tools.proxy.admin",
    "lambdapool.tools.proxy.auth",
    "lambdapool.tools.proxy.interfaces",
]
IO_MODULES = {"asyncio", "socket", "ssl", "selectors"}


def test_the_protocol_modules_import_no_io_at_any_depth() -> None:
    modules, graph = _modules(), _graph()
    offences = {}
    for start in SANS_IO:
        reached, todo = set(), [start]
        while todo:
            name = todo.pop()
            if name not in reached:
                reached.add(name)
                todo += graph[name]
        for name in sorted(reached):
            path = modules[name]
            raw = _imports(ast.parse(path.read_text()), name, path.stem == "__init__", set(modules))
            if io := sorted(i for i in raw if i.split(".")[0] in IO_MODULES):
                offences[f"{start} -> {name}"] = io
    assert offences == {}


def _every_import(tree: ast.AST) -> set[str]:
    """Modules named by any import statement, TYPE_CHECKING ones included."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_drivers_see_the_proxy_only_through_their_context() -> None:
    # client.py, backend.py and pool.py are typed against interfaces.ClientContext,
    # BackendContext and PoolContext, not ProxyServer: not even for type checking do they
    # import the server.
    modules = _modules()
    for driver in ("lambdapool.tools.proxy.client", "lambdapool.tools.proxy.backend", "lambdapool.tools.proxy.pool"):
        assert "lambdapool.tools.proxy.server" not in _every_import(ast.parse(modules[driver].read_text())), driver
