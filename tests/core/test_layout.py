"""The runtime's layout: no module reaches into another module's privates, and every runtime
module is type-checked strictly (``python3 -m mypy lambdapool``, configured in
pyproject.toml). The runtime is what a function imports: lambdapool/, less the developer tools
(lambdapool/tools and their public face lambdapool/testing.py; tests/proxy/test_layout.py holds
the proxy to the same rule).

Static checks over the source (``ast``), so they hold for code paths no other test runs.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

import lambdapool

PACKAGE = Path(lambdapool.__file__).parent
# The developer tools: not imported by a function, not held to these rules.
TOOLS = {"tools", "testing.py"}

# The private APIs of dependencies relied on deliberately, each with why (module, expression).
ALLOWED = {
    # asyncio's C function behind get_running_loop(), returning None rather than raising: the
    # warm path asks it on every invocation, where an exception would cost more than the rest.
    ("_database.py", "asyncio._get_running_loop"): "no exception when no loop runs",
    ("_loop.py", "asyncio._get_running_loop"): "no exception when no loop runs",
    ("_warm_async.py", "asyncio._get_running_loop"): "no exception when no loop runs",
    # psycopg: its own connect generator, driven with our deadline (libpq's connect_timeout is
    # whole seconds, at least 2); guarded by _can_drive_connect, falling back to connect().
    ("_drivers/psycopg_sync.py", "psycopg.Connection._connect_gen"): "a sub-second connect deadline",
    ("_drivers/psycopg_sync.py", 'hasattr(..., "_connect_gen")'): "the guard of the above",
    ("_drivers/psycopg_sync.py", "errors._WaitTimeout"): "what wait_conn raises at the deadline",
    ("_drivers/psycopg_sync.py", "conn._adapters"): "a context's adapters, as psycopg's connect() copies them",
    # asyncpg: the transport (keepalives, the socket to watch), the Cython protocol (the probes
    # without a Python frame) and the top transaction its own pool release forgets.
    ("_drivers/asyncpg_async.py", 'getattr(..., "_transport")'): "the socket: keepalives and the idle watch",
    ("_drivers/asyncpg_async.py", 'getattr(..., "_protocol")'): "probes with no Python frame",
    ("_drivers/asyncpg_async.py", 'getattr(..., "_top_xact")'): "forgotten as asyncpg.Pool's release does",
    ("_drivers/asyncpg_async.py", "conn._top_xact"): "forgotten as asyncpg.Pool's release does",
    # SQLAlchemy: the pool's record class, and what the dialect would set on a connection it made.
    ("sqlalchemy.py", "rec._soft_invalidate_time"): "a soft invalidation by the user",
    ("sqlalchemy.py", "dialect._native_inet_types"): "the dialect's own connection setup",
    ("sqlalchemy.py", "dialect._json_deserializer"): "the dialect's own connection setup",
    ("sqlalchemy.py", "dialect._json_serializer"): "the dialect's own connection setup",
}


def _runtime_files() -> dict[str, Path]:
    """module name -> path, for every runtime module (the adapters wherever they live)."""
    found: dict[str, Path] = {}
    for path in sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in TOOLS):
        parts = list(path.relative_to(PACKAGE).parts)
        parts[-1] = parts[-1][:-3]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(["lambdapool", *parts])] = path
    return found


def _own_privates(tree: ast.AST) -> set[str]:
    """The underscore names this module gives its own objects (attributes set on self or cls,
    methods, class attributes, __slots__): Python's privacy is the module's."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)  # (class attributes; module globals are not reached through objects)
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__slots__" for t in node.targets):
            names.update(
                c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant) and isinstance(c.value, str)
            )
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _private_reaches(tree: ast.AST) -> list[tuple[int, str]]:
    """``x._name`` (and ``getattr(x, "_name")``) where ``x`` is not ``self``, ``cls`` or
    ``super()`` and ``_name`` is not one of this module's own."""
    own = _own_privates(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name, owner = node.attr, node.value
            if (isinstance(owner, ast.Name) and owner.id in ("self", "cls")) or (
                isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super"
            ):
                continue
            text = ast.unparse(node)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            name = node.args[1].value
            text = f'{node.func.id}(..., "{name}")'
        else:
            continue
        if name.startswith("_") and not name.startswith("__") and name not in own:
            found.append((node.lineno, text))
    return found


def test_the_private_access_check_sees_other_modules_privates() -> None:
    source = (
        "class A:\n"
        "    __slots__ = ('_slot',)\n"
        "    def _mine(self, other):\n"
        "        self._a = 1\n"
        "        return other._b, self.x._c, other._a, other._mine(), other._slot, super()._d, getattr(other, '_e')\n"
    )
    assert [text for _, text in _private_reaches(ast.parse(source))] == ["other._b", "self.x._c", 'getattr(..., "_e")']


def test_no_runtime_module_reaches_into_another_modules_privates() -> None:
    offences = {}
    for name, path in _runtime_files().items():
        where = path.relative_to(path.parent.parent if name.startswith("lambdapool.adapters") else PACKAGE).as_posix()
        reaches = [
            (line, text) for line, text in _private_reaches(ast.parse(path.read_text())) if (where, text) not in ALLOWED
        ]
        if reaches:
            offences[name] = reaches
    assert offences == {}


def test_every_allowed_private_access_is_still_there() -> None:
    seen = set()
    for name, path in _runtime_files().items():
        where = path.relative_to(path.parent.parent if name.startswith("lambdapool.adapters") else PACKAGE).as_posix()
        seen.update((where, text) for _, text in _private_reaches(ast.parse(path.read_text())))
    assert set(ALLOWED) - seen == set()


def _strict_modules() -> list[str]:
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["mypy"]
    strict = [o for o in config["overrides"] if o.get("disallow_untyped_defs") and o.get("warn_return_any")]
    assert len(strict) == 1, "one override holds the runtime's strict flags"
    flags = ("disallow_any_generics", "disallow_untyped_calls", "disallow_incomplete_defs", "extra_checks")
    assert all(strict[0].get(flag) for flag in flags) and strict[0].get("implicit_reexport") is False
    return list(strict[0]["module"])


def _matches(module: str, pattern: str) -> bool:
    # mypy's rule: ``X.*`` matches X and everything under it
    return module == pattern or (pattern.endswith(".*") and fnmatch.fnmatch(module + ".", pattern[:-1] + "*"))


def test_every_runtime_module_is_type_checked_strictly() -> None:
    patterns = _strict_modules()
    unchecked = [m for m in _runtime_files() if not any(_matches(m, p) for p in patterns)]
    assert unchecked == [], "add them to the strict override in pyproject.toml [tool.mypy]"


def test_no_developer_tool_is_in_the_strict_list() -> None:
    tools = [f"lambdapool.{t.removesuffix('.py')}" for t in TOOLS]
    assert [p for p in _strict_modules() if any(_matches(t, p) or _matches(p, t + ".*") for t in tools)] == []
