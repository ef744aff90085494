"""The package itself: console script, version, cheap import."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import lambdapool


def test_version_and_help_from_the_console_script():
    out = subprocess.run([sys.executable, "-m", "lambdapool", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.strip() == f"lambdapool {lambdapool.__version__}"
    helped = subprocess.run([sys.executable, "-m", "lambdapool", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "usage: lambdapool" in helped.stdout


def test_import_pulls_in_no_driver_and_no_aws_sdk():
    code = (
        "import sys, json, lambdapool; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('boto3','botocore','aiobotocore','asyncpg','psycopg','psycopg_pool'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def _modules_loaded_by(statement: str, prefix: str) -> list[str]:
    code = (
        f"import sys, json; {statement}; print(json.dumps(sorted(m for m in sys.modules if m.startswith({prefix!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_the_proxy_and_the_emulator_load_no_test_helpers():
    """Running `lambdapool proxy` or `emulate` must not drag in the test-only launchers."""
    for statement in ("import lambdapool.tools.proxy.server", "import lambdapool.tools.emulator.fanout"):
        loaded = _modules_loaded_by(statement, "lambdapool.")
        assert [m for m in loaded if m.startswith(("lambdapool.testing", "lambdapool.tools.testing"))] == []


def test_the_test_postgres_launcher_does_not_load_the_emulator():
    """A test that only needs a throwaway Postgres does not pay for the fleets' imports."""
    assert _modules_loaded_by("import lambdapool.tools.testing.postgres", "lambdapool.tools.emulator") == []


# -- the tree: the runtime SDK apart from the developer tools (docs/architecture.md) ---------------------
PACKAGE = Path(lambdapool.__file__).parent
TOOLS = ("lambdapool.tools", "lambdapool.testing")


def _runtime_modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(("lambdapool", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        if not name.startswith(TOOLS) and name != "lambdapool.__main__":  # (`python -m lambdapool` is the CLI)
            out[name] = path
    return out


def _imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_the_runtime_never_imports_the_developer_tools():
    offences = {
        name: sorted(i for i in _imported(ast.parse(path.read_text())) if i.startswith(TOOLS))
        for name, path in _runtime_modules().items()
    }
    assert {k: v for k, v in offences.items() if v} == {}
    assert len(offences) > 30  # (the scan saw the runtime)


def test_the_runtime_top_level_is_its_public_api():
    """Every top-level module of the runtime is public API or marked private; the tools live in
    lambdapool/tools (lambdapool.testing is their public face for tests)."""
    public = {"__init__", "__main__", "errors", "stats", "sqlalchemy", "web", "testing", "py"}
    packages = {"adapters", "credentials", "django", "tools", "_drivers"}
    top = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert not [m for m in sorted(top) if not m.startswith("_") and m not in public | packages]
    assert not (PACKAGE.parent / "adapters" / "__init__.py").exists()  # (adapters/ at the top is for yours)


def test_the_pytest_plugin_is_opt_in(tmp_path):
    """A project that installs lambdapool and pytest gets no fixture, and nothing runs at its session
    start, unless it asks with -p lambdapool.testing (or pytest_plugins = ["lambdapool.testing"])."""
    from lambdapool.tools.cli.packaging import build_wheel

    # (from a clean copy, as `lambdapool package` builds it: setuptools writes build/ beside the sources)
    wheel = build_wheel(Path(__file__).resolve().parents[1], tmp_path)
    # A fresh environment that sees this one's packages (pytest, psycopg) and has its own lambdapool
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True, timeout=300
    )
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_app.py").write_text("def test_app():\n    pass\n")

    def fixtures(*args: str) -> str:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
        out = subprocess.run([python, "-m", "pytest", "--fixtures", *args], cwd=project, capture_output=True,
                             text=True, env=env, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    where = subprocess.run([python, "-c", "import lambdapool; print(lambdapool.__file__)"], capture_output=True,
                           text=True, check=True, cwd=project).stdout  # fmt: skip
    assert where.startswith(str(venv)), where  # (the installed wheel, not this checkout)
    assert "pg_server" not in fixtures() and "lambdapool" not in fixtures()
    asked = fixtures("-p", "lambdapool.testing")
    assert "pg_server" in asked and "pg_replication" in asked and "local_proxy" in asked
