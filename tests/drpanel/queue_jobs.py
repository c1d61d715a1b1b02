"""Jobs the queue-isolation tests enqueue by dotted path: each reports which installation ran it."""

from django.conf import settings
from django.db import connection
from rq import get_current_job


def report(key: str, label: str) -> str:
    """Append ``label|installation id|database name`` to the Redis list ``key`` (the test reads it)."""
    line = f"{label}|{settings.INSTALLATION_ID}|{connection.settings_dict['NAME']}"
    get_current_job().connection.rpush(key, line)
    return line


def session(key: str) -> str:
    """Append the database session this job runs on (its backend pid and when it started) to ``key``."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid(), extract(epoch FROM backend_start) FROM pg_stat_activity "
                       "WHERE pid = pg_backend_pid()")
        pid, started = cursor.fetchone()
    line = f"{pid}|{started}"
    get_current_job().connection.rpush(key, line)
    return line


def collector(key: str) -> str:
    """Append how many objects this horse holds frozen and how many its collector tracks to ``key``."""
    import gc

    line = f"{gc.get_freeze_count()}|{len(gc.get_objects())}"
    get_current_job().connection.rpush(key, line)
    return line
