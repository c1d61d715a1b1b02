"""Project-level pages: sign-in, re-authentication, API tokens, the dashboard, ``/health``."""

import redis
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout as auth_logout
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from drpanel import cron_heartbeat, queues
from drpanel.dashboard import dashboard_context, running_jobs
from drpanel.models import ApiToken
from drpanel.passwords import PasswordError, PasswordLocked, password_attempts_exhausted, retry_after_seconds
from drpanel.permissions import Cap, capability_required, record_denial
from drpanel.services import api_token_create, api_token_revoke, reauthenticate


class LoginView(auth_views.LoginView):
    template_name = "drpanel/login.html"
    redirect_authenticated_user = True


class LogoutView(auth_views.LogoutView):
    pass


def lockout(request, credentials=None, *args, **kwargs):
    """django-axes' answer to a locked-out sign-in: 429 with ``Retry-After``, the same for every username."""
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    response = render(request, "drpanel/lockout.html", {"minutes": minutes}, status=429)
    response["Retry-After"] = str(retry_after_seconds())
    return response


@login_required
@require_http_methods(["GET", "POST"])
def reauth(request):
    """Ask for the password again before an approval or a sign-off."""
    next_url = request.POST.get("next") or request.GET.get("next") or reverse("drpanel:dashboard")
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        next_url = reverse("drpanel:dashboard")
    error = None
    if request.method == "POST":
        try:
            reauthenticate(request=request, password=request.POST.get("password", ""))
            return redirect(next_url)
        except PasswordError as exc:
            if isinstance(exc, PasswordLocked) or password_attempts_exhausted(request.user):
                # Too many wrong passwords inside one session: end the session, as a lockout would.
                auth_logout(request)
                return lockout(request)
            error = str(exc)
    return render(request, "drpanel/reauth.html", {"next": next_url, "error": error},
                  status=400 if error else 200)


# The token page's choice → (kind, read_only).
TOKEN_ACCESS = {
    "read-write": (ApiToken.Kind.API, False),
    "read-only": (ApiToken.Kind.API, True),
    "metrics": (ApiToken.Kind.METRICS, False),
}


@login_required
@require_GET
def token_list(request):
    tokens = ApiToken.objects.filter(user=request.user)
    return render(request, "drpanel/token_list.html", {"tokens": tokens, "token_days": settings.TOKEN_DAYS})


@login_required
@require_POST
def token_create(request):
    """Create a token for the signed-in user, with their password re-entered; shown once."""
    tokens = ApiToken.objects.filter(user=request.user)
    access = request.POST.get("access", "read-write")
    if access not in TOKEN_ACCESS:
        return render(request, "drpanel/token_list.html", {"tokens": tokens, "error": "Choose what the token may do.",
                                                           "token_days": settings.TOKEN_DAYS}, status=400)
    kind, read_only = TOKEN_ACCESS[access]
    try:
        token, raw = api_token_create(actor=request.user, user=request.user, name=request.POST.get("name", ""),
                                      password=request.POST.get("password", ""), request=request,
                                      kind=kind, read_only=read_only)
    except PasswordError as exc:
        status = 429 if isinstance(exc, PasswordLocked) else 403
        response = render(request, "drpanel/token_list.html", {"tokens": tokens, "error": str(exc),
                                                               "token_days": settings.TOKEN_DAYS}, status=status)
        if status == 429:
            response["Retry-After"] = str(retry_after_seconds())
        return response
    # The plaintext is rendered once, into this response only; it is never stored or logged.
    return render(request, "drpanel/token_list.html", {"tokens": tokens, "new_token": raw, "new": token,
                                                       "token_days": settings.TOKEN_DAYS})


@login_required
@require_POST
def token_revoke(request, pk: int):
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)
    api_token_revoke(actor=request.user, token=token)
    messages.success(request, f"Token “{token.name}” revoked; it no longer works.")
    return redirect("drpanel:token-list")


@capability_required(Cap.VIEW_PANEL)
@require_GET
def dashboard(request):
    """The worst health score, RPO and RTO against their targets, charts, jobs, approvals, checklists, on-call."""
    return render(request, "drpanel/dashboard.html", dashboard_context(request.user))


@capability_required(Cap.VIEW_PANEL)
@require_GET
def dashboard_jobs(request):
    """The dashboard's running-jobs fragment, polled while jobs run."""
    return render(request, "drpanel/_dashboard_jobs.html", {"jobs": running_jobs()})


def _check_database() -> tuple[bool, str]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True, "ok"
    except Exception as exc:  # any failure means "down"; the reason is kept short and secret-free
        return False, type(exc).__name__


def _check_redis() -> tuple[bool, str, int | None, dict | None]:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
        workers = len(queues.our_workers(client))
        return True, "ok", workers, _check_cron(client)
    except redis.RedisError as exc:
        return False, type(exc).__name__, None, None
    finally:
        client.close()


def _check_cron(client) -> dict:
    """The cron scheduler's heartbeat; a gap also queues the alert check (at most once a minute), because
    the scheduler that would run it is the one missing."""
    heartbeat = cron_heartbeat.read(client)
    if heartbeat.state != "ok" and client.set(f"{cron_heartbeat.key()}:checked", 1, nx=True, ex=60):
        queues.enqueue("compliance.jobs.scheduler_check_job", queue="default", timeout=60)
    return {"status": heartbeat.state, "schedulers": len(heartbeat.live),
            "age_seconds": None if heartbeat.age_seconds is None else round(heartbeat.age_seconds)}


@never_cache
@require_GET
def health(request):
    """Database, Redis, live workers and the cron scheduler's heartbeat; no sign-in, no secrets.

    503 when the database, Redis or every worker is missing. A missing or doubled scheduler is
    shown (``cron``) and alerted on, without failing the probe: the panel still serves.
    """
    db_ok, db_state = _check_database()
    redis_ok, redis_state, workers, cron = _check_redis()
    ok = db_ok and redis_ok and bool(workers)
    body = {
        "status": "ok" if ok else "degraded",
        "database": db_state,
        "redis": redis_state,
        "workers": workers or 0,
        "cron": cron or {"status": "unknown", "schedulers": 0, "age_seconds": None},
    }
    return JsonResponse(body, status=200 if ok else 503)


# --- error pages ----------------------------------------------------------------------------

def permission_denied(request, exception=None):
    """403 page; the denial is audited by ``DenialAuditMiddleware`` before we get here."""
    reason = getattr(exception, "message", None) or "You do not have permission to do this."
    if _is_api(request):
        return JsonResponse({"detail": str(reason), "errors": {}}, status=403)
    return render(request, "403.html", {"reason": reason}, status=403)


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


def page_not_found(request, exception=None):
    # The API answers in its own error body, even for a path no API view matches (a malformed id).
    if _is_api(request):
        return JsonResponse({"detail": "Not found.", "errors": {}}, status=404)
    return render(request, "404.html", status=404)


def server_error(request):
    """500: a fixed page (or body) that shows nothing of the error; the traceback goes to the log only."""
    if _is_api(request):
        return JsonResponse({"detail": "Internal error; it has been logged.", "errors": {}}, status=500)
    return render(request, "500.html", status=500)


def csrf_failure(request, reason=""):
    """A refused form post (stale page or forged request): 403, audited."""
    if getattr(request, "user", None) is not None and request.user.is_authenticated:
        record_denial(request, PermissionDenied("CSRF check failed"))
    if _is_api(request):
        return JsonResponse({"detail": "CSRF check failed: send a bearer token, or the session's CSRF token.",
                             "errors": {}}, status=403)
    return render(request, "403.html", {
        "reason": "This form has expired or did not come from this panel. Reload the page and try again."
    }, status=403)
