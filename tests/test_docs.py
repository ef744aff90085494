"""The README documents what the code has: every setting, every stats key, the test command."""

from pathlib import Path

from lambdapool.config import SETTINGS
from lambdapool.stats import KEYS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme_table():
    missing = [s.name for s in SETTINGS if f"| `{s.name}` |" not in README]
    assert not missing


def test_every_stats_key_is_documented():
    assert not [key for key in (*KEYS, "open_connections") if f"`{key}`" not in README]


def test_ci_runs_the_readme_test_command():
    command = "python3 -m pip install -q -e '.[dev]' && python3 -m pytest"
    assert command in README
    assert command in (ROOT / ".ci" / "run").read_text()


def test_every_pooler_setting_is_in_the_readme():
    from lambdapool import adapters

    names = {o.name for name in adapters.BUILTIN for o in adapters.load(name).OPTIONS}
    assert not [n for n in sorted(names) if f"`{n}`" not in README]
