"""Settings of a minimal Django app on lambdapool's warm connection (``ENGINE: "lambdapool.django"``).

The database comes from ``LAMBDAPOOL_DSN`` (a postgresql:// URI) or the libpq variables
(PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE); the pooler and any other lambdapool setting
from ``LAMBDAPOOL_*`` variables (LAMBDAPOOL_POOLER=rds-proxy ...) or ``OPTIONS["lambdapool"]``.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "change-me")
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["notes"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _database() -> dict[str, Any]:
    dsn = os.environ.get("LAMBDAPOOL_DSN", "")
    url = urlsplit(dsn) if dsn else None
    return {
        # Django's postgresql backend, whose connection lambdapool lends: Django's end of
        # request gives it back warm, and the next request reuses it.
        "ENGINE": "lambdapool.django",
        "NAME": unquote(url.path.lstrip("/")) if url else os.environ.get("PGDATABASE", "postgres"),
        "USER": unquote(url.username or "") if url else os.environ.get("PGUSER", ""),
        "PASSWORD": unquote(url.password or "") if url else os.environ.get("PGPASSWORD", ""),
        "HOST": (url.hostname or "") if url else os.environ.get("PGHOST", ""),
        "PORT": str(url.port or "") if url else os.environ.get("PGPORT", ""),
        # lambdapool.Database settings (over the LAMBDAPOOL_* environment); one connection
        # per Lambda instance is the default behaviour, max_per_instance bounds threads.
        "OPTIONS": {"lambdapool": {"max_per_instance": 1}},
    }


DATABASES = {"default": _database()}
