"""Apps the framework tests serve: built around a given Database (in-process tests) or from
``LAMBDAPOOL_*`` variables (the modules uvicorn, gunicorn and functions-framework import)."""
