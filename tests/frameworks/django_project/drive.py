"""Drive the project over ASGI in-process (Django's get_asgi_application, httpx's ASGITransport).

``python drive.py PLAN`` with PLAN a JSON object: ``paths`` (requests in order), ``kill_before``
(indices of requests before which the parent terminates the server's backends: this prints
``KILL`` and waits for a line on stdin). Prints one JSON line: each response's status and body,
the server's client backends at the end (other than the admin's), and lambdapool's stats when the
engine is lambdapool.django.
"""

import asyncio
import json
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

import django
import httpx
import psycopg

django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402

OTHERS = "backend_type = 'client backend' AND pid <> pg_backend_pid() AND datname = %s"


def kill_all() -> None:
    print("KILL", flush=True)
    sys.stdin.readline()


async def main(plan: dict) -> dict:
    app = get_asgi_application()
    dbname = os.environ["DJ_NAME"]
    out: list[dict] = []
    db = None
    if os.environ.get("DJ_ENGINE", "lambdapool.django") == "lambdapool.django":
        import lambdapool.django

        db = lambdapool.django.database()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for i, path in enumerate(plan["paths"]):
            if i in plan.get("kill_before", ()):
                await asyncio.to_thread(kill_all)
            r = await client.get("/" + path)
            body = r.json() if r.headers.get("content-type") == "application/json" else None
            out.append({"status": r.status_code, "body": body, "connects": db.stats()["connects"] if db else None})
    admin = psycopg.connect(plan["admin_dsn"], autocommit=True)  # (after the kills, which it would not survive)
    rows = admin.execute(f"SELECT state FROM pg_stat_activity WHERE {OTHERS}", (dbname,)).fetchall()
    result = {"responses": out, "backends": len(rows), "idle_in_transaction": sum(s[0] != "idle" for s in rows)}
    if db is not None:
        result["stats"] = dict(db.stats())
    admin.close()
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
