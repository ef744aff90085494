"""The ASGI app (uvicorn asgi:application, or Lambda through handler.py)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
