"""What one test leaves in the process must not change the next (loaded with ``-p``, pyproject).

functions-framework's ``create_app`` writes FUNCTION_SIGNATURE_TYPE, FUNCTION_TARGET and their
kin into ``os.environ`` and never takes them back: a CloudEvent app made in one test turned every
later app into a CloudEvent one (GET answered 405, a served one never came up), and
FUNCTION_TARGET makes every later Database believe it runs on Cloud Functions.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

LEAKED_BY_FUNCTIONS_FRAMEWORK = ("FUNCTION_SIGNATURE_TYPE", "FUNCTION_TARGET", "FUNCTION_TRIGGER_TYPE", "FUNCTION_NAME")


@pytest.fixture(autouse=True)
def _functions_framework_environment() -> Iterator[None]:
    before = {name: os.environ.get(name) for name in LEAKED_BY_FUNCTIONS_FRAMEWORK}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
