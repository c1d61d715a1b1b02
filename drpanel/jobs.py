"""Jobs of the project package: a round-trip probe used by ``manage.py services check``, session cleanup,
and the audit events of ended windows of unknown-username sign-in failures."""

import os

from django.contrib.sessions.models import Session
from django.db import connection
from django.utils import timezone

from drpanel.signin import unknown_signin_failures_record


def ping(payload: str) -> dict:
    """Answer from a worker process, proving the queue and a worker work end to end."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        database = cursor.fetchone()[0]
    # rq runs each job in a forked "work horse"; its parent is the worker process itself.
    return {"payload": payload, "worker_pid": os.getppid(), "database": database}


def clear_expired_sessions() -> None:
    """Delete expired sessions (the idle timeout makes many)."""
    Session.objects.filter(expire_date__lt=timezone.now()).delete()


def unknown_signin_failures_job() -> int:
    """Record the ended windows of unknown-username sign-in failures, even when no new failure comes."""
    return unknown_signin_failures_record()
