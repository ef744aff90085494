"""``uvicorn tests.frameworks.apps.uvicorn_fastapi:app``: FastAPI under db.asgi, settings from env."""

import lambdapool
from tests.frameworks.apps.asgi_apps import fastapi_app

db = lambdapool.Database.from_env()
app = db.asgi(fastapi_app(db))
