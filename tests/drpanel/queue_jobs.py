"""Jobs the queue-isolation tests enqueue by dotted path: each reports which installation ran it."""

from django.conf import settings
from django.db import connection
from rq import get_current_job


def report(key: str, label: str) -> str:
    """Append ``label|installation id|database name`` to the Redis list ``key`` (the test reads it)."""
    line = f"{label}|{settings.INSTALLATION_ID}|{connection.settings_dict['NAME']}"
    get_current_job().connection.rpush(key, line)
    return line
