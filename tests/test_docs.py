"""The docs say what the code has: every setting, pooler setting and stats key (docs/reference.md),
the test command, the Python versions, the demo's figures, the extras they name, links that lead
somewhere. (The code blocks themselves are run by tests/test_snippets.py.)"""

import re
from pathlib import Path

from lambdapool._config import SETTINGS
from lambdapool.stats import KEYS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
REFERENCE = (ROOT / "docs" / "reference.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

PYPROJECT = (ROOT / "pyproject.toml").read_text()  # read by pattern: tomllib is 3.11+, we support 3.10
REQUIRES_PYTHON = re.search(r'^requires-python = "(.+)"$', PYPROJECT, re.M).group(1)
LICENSE = re.search(r'^license = "(.+)"$', PYPROJECT, re.M).group(1)
EXTRAS = set(
    re.findall(r"^([a-z0-9-]+) = \[", PYPROJECT.split("[project.optional-dependencies]")[1].split("\n[")[0], re.M)
)


def test_every_setting_is_in_the_reference_table():
    missing = [s.name for s in SETTINGS if f"| `{s.name}` |" not in REFERENCE]
    assert not missing


def test_every_stats_key_is_documented():
    assert not [key for key in (*KEYS, "open_connections") if f"`{key}`" not in REFERENCE]


def test_ci_runs_the_readme_test_command():
    command = "python3 -m pip install -q -e '.[dev]' && python3 -m pytest -n auto"
    assert command in README
    assert command in (ROOT / ".ci" / "run").read_text()


def test_every_pooler_setting_is_in_the_reference():
    from lambdapool import adapters

    names = {o.name for name in adapters.BUILTIN for o in adapters.load(name).OPTIONS}
    assert not [n for n in sorted(names) if f"`{n}`" not in REFERENCE]


def test_the_readme_links_the_reference():
    assert "](docs/reference.md)" in README and "](docs/README.md)" in README


def test_the_python_versions_are_the_packages():
    oldest = re.fullmatch(r">=(\d+\.\d+)", REQUIRES_PYTHON).group(1)
    assert f"**Python {oldest} or newer**" in README


def test_the_license_file_is_the_one_pyproject_names():
    assert LICENSE == "Apache-2.0"
    text = " ".join((ROOT / "LICENSE").read_text().split())
    assert text.startswith("Apache License Version 2.0, January 2004 http://www.apache.org/licenses/")
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10_000  # the full text, not a notice


def test_the_demo_figures_are_the_demos_defaults():
    import argparse

    from lambdapool.tools.cli import demo

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args([])
    said = " ".join(README.split())
    assert f"throwaway Postgres with `max_connections={args.max_connections}` ({args.max_connections - 1} for" in said
    assert f"{args.invocations} invocations over {args.concurrency} real Lambda execution environments" in said
    assert f"capped at {args.max_connections // 2} backends" in said
    for name in (demo.NO_GUARD, demo.DEFAULTS, demo.PROXIED):
        assert f"**{name}**" in said, name


def test_every_extra_the_docs_name_exists():
    assert {"psycopg", "testing", "demo", "dev"} <= EXTRAS
    named = {
        (page.name, extra.strip())
        for page in PAGES
        for group in re.findall(r"(?:lambdapool|\.|\.whl)\[([a-z0-9,-]+)\]", page.read_text())
        for extra in group.split(",")
    }
    assert not [(page, extra) for page, extra in sorted(named) if extra not in EXTRAS]


def test_users_are_pointed_at_the_testing_extra_not_dev():
    """`[dev]` is the project's own toolchain: only the test command and the contributing page name it."""
    for page in PAGES:
        for line in page.read_text().splitlines():
            if "[dev]" in line:
                assert "python3 -m pip install -q -e '.[dev]' && python3 -m pytest -n auto" in line, (page.name, line)
    for module in ROOT.glob("lambdapool/**/*.py"):
        assert "lambdapool[dev]" not in module.read_text(), module


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_leads_somewhere():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken


def test_every_file_the_docs_name_exists():
    """A path in backticks (`docs/x.md`, `tests/infra/test_check.py`) names a file of this repository."""
    pattern = r"`((?:docs|examples|infra|benchmarks|tests|lambdapool|adapters)/[\w./-]+\.(?:md|py|yaml|tf|ini|png))`"
    missing = [
        f"{page.relative_to(ROOT)}: {path}"
        for page in PAGES
        for path in re.findall(pattern, page.read_text())
        if not (ROOT / path).exists()
    ]
    assert not missing
