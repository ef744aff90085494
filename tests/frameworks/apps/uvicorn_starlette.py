"""``uvicorn tests.frameworks.apps.uvicorn_starlette:app``: Starlette under db.asgi, settings from env."""

import lambdapool
from tests.frameworks.apps.asgi_apps import starlette_app

db = lambdapool.Database.from_env()
app = db.asgi(starlette_app(db))
