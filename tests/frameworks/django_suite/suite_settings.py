"""Settings for Django's own test suite (its ``tests/runtests.py --settings suite_settings``),
after Django's ``tests/test_sqlite.py``: a ``default`` and an ``other`` database on one server.

Environment: DJ_ENGINE, DJ_HOST, DJ_PORT, DJ_USER, DJ_PASSWORD, DJ_PREFIX (database names, so
two runs can share a server), DJ_RESULTS (where ``recording.RecordingRunner`` writes outcomes).
"""

import os

_ENGINE = os.environ["DJ_ENGINE"]


def _database(name: str) -> dict:
    database = {
        "ENGINE": _ENGINE,
        "NAME": f"{os.environ['DJ_PREFIX']}_{name}",
        "USER": os.environ["DJ_USER"],
        "PASSWORD": os.environ["DJ_PASSWORD"],
        "HOST": os.environ["DJ_HOST"],
        "PORT": os.environ["DJ_PORT"],
    }
    if _ENGINE == "lambdapool.django":
        database["OPTIONS"] = {"lambdapool": {"pooler": "direct"}}
    return database


DATABASES = {"default": _database("default"), "other": _database("other")}
SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
TEST_RUNNER = "recording.RecordingRunner"
