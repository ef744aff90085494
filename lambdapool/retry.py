"""Backoff and error text for connect retries (shared by the sync and async warm modules)."""

from __future__ import annotations

import random

BACKOFF_FIRST = 0.05  # seconds; doubles per attempt, full jitter (spreads a thundering herd)
BACKOFF_CAP = 2.0


def backoff_delay(attempt: int) -> float:
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (attempt - 1)))


def describe_error(exc: BaseException, secrets: tuple[str | None, ...]) -> str:
    """``Type: message`` on one line, with any secret we know of blotted out."""
    text = " ".join(str(exc).split()) or "(no message)"
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}"
