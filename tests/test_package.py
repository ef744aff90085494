"""The package itself: console script, version, cheap import."""

import json
import subprocess
import sys

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
    code = f"import sys, json; {statement}; print(json.dumps(sorted(m for m in sys.modules if m.startswith({prefix!r}))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_the_proxy_and_the_emulator_are_product_code_outside_testing():
    """Running `lambdapool proxy` or `emulate` must not drag in the test-only launchers."""
    assert _modules_loaded_by("import lambdapool.proxy, lambdapool.proxy.server", "lambdapool.testing") == []
    assert _modules_loaded_by("import lambdapool.emulator, lambdapool.emulator.fanout", "lambdapool.testing") == []


def test_the_test_postgres_launcher_does_not_load_the_emulator():
    """A test that only needs a throwaway Postgres does not pay for the fleets' imports."""
    assert _modules_loaded_by("import lambdapool.testing.postgres", "lambdapool.emulator") == []


def test_names_from_before_the_move_still_work():
    import lambdapool.emulator as emulator
    import lambdapool.emulator.fanout as fanout
    import lambdapool.proxy as proxy
    import lambdapool.testing as testing
    import lambdapool.testing.emulator as old_emulator
    import lambdapool.testing.fanout as old_fanout
    import lambdapool.testing.proxy as old_proxy

    assert testing.LocalProxy is old_proxy.LocalProxy is proxy.LocalProxy
    assert old_emulator.__all__ == emulator.__all__
    assert all(getattr(old_emulator, name) is getattr(emulator, name) for name in emulator.__all__)
    assert all(getattr(old_fanout, name) is getattr(fanout, name) for name in fanout.__all__)
