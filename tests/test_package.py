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
