"""Load-balancer probes: ``GET /health/live`` (the process answers) and ``GET /health/ready`` (it can serve).

``/health`` keeps the full picture (workers, the scheduler) for people and monitoring; a load
balancer needs less and needs it fast. Liveness touches nothing outside the process, so a
database outage never makes an orchestrator restart healthy web processes; readiness asks the
database and Redis (one second each at most) and answers 503 when either is missing, so traffic
goes elsewhere. Neither needs a sign-in, and neither says more than "ok" or an exception's class
name: no host, no URL, no secret.
"""

import redis
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

PROBE_TIMEOUT_SECONDS = 1


def _database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; only the class name is shown
        return type(exc).__name__


def _redis() -> str:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=PROBE_TIMEOUT_SECONDS,
                                  socket_timeout=PROBE_TIMEOUT_SECONDS)
    try:
        client.ping()
        return "ok"
    except redis.RedisError as exc:
        return type(exc).__name__
    finally:
        client.close()


@never_cache
@require_GET
def live(request):
    """200 whenever the process answers; nothing else is asked."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def ready(request):
    """200 when the database and Redis answer, else 503 naming which one did not."""
    body = {"database": _database(), "redis": _redis()}
    ok = body["database"] == "ok" and body["redis"] == "ok"
    return JsonResponse({"status": "ok" if ok else "unavailable", **body}, status=200 if ok else 503)
