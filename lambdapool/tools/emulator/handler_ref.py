"""Which function ``lambdapool emulate`` runs, and on which platform, found without importing it
(importing runs its init).

A handler is named ``path/to/app.py:handler`` or as Lambda's ``Handler`` setting names it,
``app.handler`` (``pkg.app.handler``, ``src/app.handler``: the module is imported from the current
directory, the task root, as Lambda imports it from ``/var/task``). A name that resolves to
nothing is refused with the closest file or function that does ("did you mean").

What the function is comes from its ``def``: a Lambda handler takes ``(event, context)``; a Cloud
Function takes one parameter, ``(request)`` (HTTP) or ``(cloud_event)`` (CloudEvent), or says so
with ``@functions_framework.http`` / ``@functions_framework.cloud_event``. A name bound some other
way (``handler = Mangum(app)``) is taken for a Lambda handler.
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass
from pathlib import Path

from lambdapool.errors import ConfigError

PLATFORMS = ("aws", "gcp")
FORMS = "path/to/app.py:handler or Lambda's app.handler"
_CLOUD_EVENT_NAMES = ("cloud_event", "cloudevent", "event")


@dataclass(frozen=True)
class Shape:
    """What the handler's ``def`` says it is: ``platform`` (aws, gcp), the Cloud Function's
    ``signature`` (http, cloudevent; None on aws), ``why`` (for messages) and whether the
    ``def`` was there to read (``known``)."""

    platform: str
    signature: str | None
    why: str
    known: bool = True


@dataclass(frozen=True)
class HandlerRef:
    """A handler file and function; ``module`` is Lambda's dotted module name when it was given
    as ``app.handler`` (the task root is then where that name starts)."""

    path: Path
    function: str
    module: str | None = None

    @classmethod
    def parse(cls, spec: str, cwd: Path | None = None) -> HandlerRef:
        cwd = cwd or Path.cwd()
        text = spec.strip()
        if ":" in text:
            file, _, function = text.rpartition(":")
            if not file or not function:
                raise ConfigError(f"handler {spec!r}: expected {FORMS}")
            path = cwd / file
            if path.suffix != ".py":
                with_py = path.with_name(path.name + ".py")
                hint = f"; did you mean {file}.py:{function}?" if with_py.is_file() else ""
                raise ConfigError(f"handler {spec!r}: {file!r} is not a .py file (expected {FORMS}){hint}")
            ref = cls(path.resolve(), function)
        elif text.endswith(".py"):  # a file, and no function
            raise ConfigError(
                f"handler {spec!r}: name the function too (expected {FORMS}){_did_you_mean_in(cwd / text, text)}"
            )
        else:
            module, dot, function = text.rpartition(".")
            if not dot or not module or not function:
                raise ConfigError(f"handler {spec!r}: expected {FORMS}")
            file = module + ".py"
            if module.startswith("/"):  # an absolute path: its directory is the task root
                ref = cls(Path(file).resolve(), function)
            else:
                dotted = module.replace("/", ".")
                file = str(Path(*dotted.split("."))) + ".py"
                ref = cls((cwd / file).resolve(), function, dotted)
        ref._check(spec, file)
        return ref

    def _check(self, spec: str, file: str) -> None:
        """The file exists and binds the function at its top level (read, not imported)."""
        if not self.path.is_file():
            raise ConfigError(f"handler {spec!r}: no such file {file!r}{_did_you_mean_file(self)}")
        tree = self._tree(spec)
        if self.function not in _top_level_names(tree):
            raise ConfigError(
                f"handler {spec!r}: {file} defines no top-level {self.function!r}{_did_you_mean_function(self, tree)}"
            )

    def _tree(self, spec: str = "") -> ast.Module:
        try:
            return ast.parse(self.path.read_text(), str(self.path))
        except SyntaxError as exc:
            raise ConfigError(
                f"handler {spec or self.handler!r}: {self.path.name} does not parse (line {exc.lineno}: {exc.msg})"
            ) from None

    @property
    def task_root(self) -> Path:
        if self.module is None:
            return self.path.parent
        return self.path.parents[self.module.count(".")]

    @property
    def handler(self) -> str:
        """As Lambda's handler setting: ``module.function``."""
        return f"{self.module or self.path.stem}.{self.function}"

    def shape(self) -> Shape:
        """What the function's ``def`` says it is (see the module docstring)."""
        return _shape(_definition(self._tree(), self.function))

    def platform(self, asked: str | None) -> Shape:
        """The platform to run on: ``asked`` (``--platform``) or, if None, the one the ``def``
        says; a ConfigError when the two disagree (a Cloud Function run as a Lambda handler would
        fail on every invocation with a TypeError)."""
        shape = self.shape()
        if asked is not None and asked not in PLATFORMS:
            raise ConfigError(f"--platform {asked!r}: one of {', '.join(PLATFORMS)}")
        if asked is None or asked == shape.platform:
            return shape
        name = f"{self.path.name}:{self.function}"
        if not shape.known:
            return Shape(asked, "http" if asked == "gcp" else None, f"--platform {asked}", known=False)
        if asked == "aws":
            raise ConfigError(
                f"--platform aws: {name} is a Cloud Function ({shape.why}), and Lambda would call it with "
                f"(event, context) and fail every time; run it with --platform gcp (or leave --platform out: "
                f"it is told from the signature), or give it a Lambda handler's (event, context)"
            )
        raise ConfigError(
            f"--platform gcp: {name} is a Lambda handler ({shape.why}), and functions-framework would call it "
            f"with (request) and fail every time; run it with --platform aws (or leave --platform out), or give "
            f"it a Cloud Function's (request) or (cloud_event)"
        )


def _definition(tree: ast.Module, function: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The last top-level statement binding ``function``, if it is a ``def`` (the last wins,
    as at import)."""
    found: ast.FunctionDef | ast.AsyncFunctionDef | None = None
    for node in tree.body:
        if function in _names_bound(node):
            found = node if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
    return found


def _shape(node: ast.FunctionDef | ast.AsyncFunctionDef | None) -> Shape:
    if node is None:
        return Shape("aws", None, "not a def: taken for a Lambda handler", known=False)
    decorators = [_dotted(d.func if isinstance(d, ast.Call) else d) for d in node.decorator_list]
    if any(d.endswith("cloud_event") for d in decorators):
        return Shape("gcp", "cloudevent", "@functions_framework.cloud_event")
    if any(d in ("http", "functions_framework.http") for d in decorators):
        return Shape("gcp", "http", "@functions_framework.http")
    params = [a.arg for a in (*node.args.posonlyargs, *node.args.args)]
    shown = f"{node.name}({', '.join(params)})"
    if len(params) == 1 and node.args.vararg is None:
        kind = "cloudevent" if params[0] in _CLOUD_EVENT_NAMES else "http"
        return Shape("gcp", kind, f"{shown} takes one parameter")
    return Shape("aws", None, f"{shown} takes {len(params)} parameters")


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _names_bound(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    return set()


def _top_level_names(tree: ast.Module) -> set[str]:
    return {name for node in tree.body for name in _names_bound(node)}


def _functions(tree: ast.Module) -> list[str]:
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _did_you_mean_file(ref: HandlerRef) -> str:
    folder = ref.path.parent
    if not folder.is_dir():
        return ""
    stems = sorted(p.stem for p in folder.glob("*.py"))
    close = difflib.get_close_matches(ref.path.stem, stems, n=1, cutoff=0.6)
    if not close:
        return ""
    if ref.module is not None:
        package = ref.module.rpartition(".")[0]
        return f"; did you mean {package + '.' if package else ''}{close[0]}.{ref.function}?"
    return f"; did you mean {folder / close[0]}.py:{ref.function}?"


def _did_you_mean_in(path: Path, file: str) -> str:
    """For a file named without its function: the likeliest handler in it."""
    try:
        functions = _functions(ast.parse(path.read_text(), str(path)))
    except (OSError, SyntaxError, ValueError):
        return ""
    likely = [f for f in functions if f in ("handler", "lambda_handler", "main")] or functions
    return f"; did you mean {file}:{likely[0]}?" if likely else ""


def _did_you_mean_function(ref: HandlerRef, tree: ast.Module) -> str:
    functions = _functions(tree)
    close = difflib.get_close_matches(ref.function, functions, n=1, cutoff=0.6)
    if close:
        form = f"{ref.module}.{close[0]}" if ref.module is not None else f"{ref.path.name}:{close[0]}"
        return f"; did you mean {form}?"
    return f" (its functions: {', '.join(functions)})" if functions else ""
