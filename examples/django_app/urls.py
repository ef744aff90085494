"""One view: POST /notes adds a note, GET /notes counts them."""

from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.urls import path

from notes.models import Note


def notes(request: HttpRequest) -> JsonResponse:
    if request.method == "POST":
        body = json.loads(request.body or b"{}")
        note = Note.objects.create(text=str(body.get("text", "")), meta={"source": "api"})
        return JsonResponse({"id": note.pk, "created_at": note.created_at.isoformat(), "count": Note.objects.count()})
    return JsonResponse({"count": Note.objects.count()})


urlpatterns = [path("notes", notes)]
