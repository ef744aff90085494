"""Type checkers see the public API as documented: ``mypy --strict`` passes on the examples and
on a file using every public name, and catches a typo'd name or a wrong connection type."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from lambdapool.tools.testing.pytest_plugin import missing

ROOT = Path(__file__).resolve().parents[1]
CHECKED = [ROOT / "tests" / "typing" / "public_api.py", *sorted((ROOT / "examples").rglob("*.py"))]


def mypy(files: list[Path], cache: Path) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("mypy") is None:
        missing("mypy", "pip install mypy (in the dev extra)")
    cmd = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--cache-dir", str(cache),
           "--config-file", str(ROOT / "pyproject.toml"), *map(str, files)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


def batches(files: list[Path]) -> list[list[Path]]:
    """Files in groups with distinct module names (examples are all handler.py, app.py...)."""
    groups: list[list[Path]] = []
    for file in files:
        group = next((g for g in groups if file.name not in {f.name for f in g}), None)
        if group is None:
            groups.append(group := [])
        group.append(file)
    return groups


@pytest.mark.slow
def test_mypy_strict_passes_on_the_examples_and_the_public_api(tmp_path):
    failures = [r.stdout for group in batches(CHECKED) if (r := mypy(group, tmp_path / "cache")).returncode]
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_mypy_catches_a_misspelt_name_and_a_wrong_connection_type(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import lambdapool\n"
        "db = lambdapool.Databse('postgresql://u@h/db')\n"  # the typo the module __getattr__ used to hide
        "good = lambdapool.Database('postgresql://u@h/db')\n"
        "with good.connection() as conn:\n"
        "    n: int = conn\n"  # a psycopg.Connection, not an int
        "count: str = good.stats()['connects']\n"
    )
    out = mypy([bad], tmp_path / "cache").stdout
    assert 'Module has no attribute "Databse"' in out
    assert 'Incompatible types in assignment (expression has type "Connection[' in out
    assert out.count("error:") == 3, out
