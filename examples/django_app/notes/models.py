from __future__ import annotations

from django.db import models


class Note(models.Model):  # type: ignore[misc]  # (Django ships no type stubs)
    text = models.CharField(max_length=200)
    meta = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
