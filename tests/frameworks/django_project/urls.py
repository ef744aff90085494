"""Views the tests drive over ASGI."""

import datetime

from app.models import Item
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path


def state(request: HttpRequest) -> JsonResponse:
    """Backend pid, whether a transaction was already open when the view began, the session TZ."""
    status_before = None if connection.connection is None else connection.connection.info.transaction_status.name
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid(), current_setting('TimeZone'), pg_current_xact_id_if_assigned()::text")
        pid, tz, xid = cur.fetchone()
    return JsonResponse({"pid": pid, "tz": tz, "xid": xid, "before": status_before})


def item(request: HttpRequest) -> JsonResponse:
    """JSONField and DateTimeField (USE_TZ) round-tripped."""
    at = datetime.datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=-7)))
    data = {"n": 1, "list": [1, "two", None], "nested": {"ok": True}}
    made = Item.objects.create(data=data, at=at)
    got = Item.objects.get(pk=made.pk)
    found = Item.objects.filter(data__nested__ok=True, at=at, pk=made.pk).exists()
    return JsonResponse(
        {
            "same": got.data == data and got.at == at,
            "aware": got.at.tzinfo is not None,
            "found": found,
            "at": got.at.isoformat(),
        }
    )


@transaction.non_atomic_requests
def left_open(request: HttpRequest) -> JsonResponse:
    """Leaves a transaction open (autocommit off, an insert never committed)."""
    transaction.set_autocommit(False)
    Item.objects.create(data={"left": "open"}, at=datetime.datetime.now(datetime.timezone.utc))
    return JsonResponse({"ok": True})


def fail(request: HttpRequest) -> HttpResponse:
    """Writes, then raises (a 500): ATOMIC_REQUESTS rolls the write back."""
    Item.objects.create(data={"failed": True}, at=datetime.datetime.now(datetime.timezone.utc))
    raise RuntimeError("boom")


def count(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "left": Item.objects.filter(data__left="open").count(),
            "failed": Item.objects.filter(data__failed=True).count(),
        }
    )


urlpatterns = [
    path("state", state),
    path("item", item),
    path("left_open", left_open),
    path("fail", fail),
    path("count", count),
]
