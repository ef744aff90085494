"""Settings of the tiny Django project the Django tests run in subprocesses (one case each).

Environment: DJ_ENGINE, DJ_NAME, DJ_USER, DJ_PASSWORD, DJ_HOST, DJ_PORT, DJ_POOLER,
DJ_ATOMIC (ATOMIC_REQUESTS), DJ_CONN_MAX_AGE ("none" for persistent).
"""

import os

SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["app"]
ROOT_URLCONF = "urls"
MIDDLEWARE: list[str] = []
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_engine = os.environ.get("DJ_ENGINE", "lambdapool.django")
_max_age = os.environ.get("DJ_CONN_MAX_AGE", "0")
DATABASES = {
    "default": {
        "ENGINE": _engine,
        "NAME": os.environ["DJ_NAME"],
        "USER": os.environ["DJ_USER"],
        "PASSWORD": os.environ["DJ_PASSWORD"],
        "HOST": os.environ["DJ_HOST"],
        "PORT": os.environ["DJ_PORT"],
        "ATOMIC_REQUESTS": os.environ.get("DJ_ATOMIC") == "1",
        "CONN_MAX_AGE": None if _max_age == "none" else int(_max_age),
        "OPTIONS": {"lambdapool": {"pooler": os.environ.get("DJ_POOLER", "direct")}}
        if _engine == "lambdapool.django"
        else {},
    }
}
