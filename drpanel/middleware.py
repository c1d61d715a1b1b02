"""Cross-cutting middleware: a request id on every request, no caching of signed-in pages, and a
session lifetime that activity does not extend."""

import logging
import re
import time
import uuid

from django.conf import settings
from django.contrib.auth import logout
from django.core.exceptions import PermissionDenied

from drpanel.context import reset_current_request, set_current_request
from drpanel.permissions import record_denial

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
request_log = logging.getLogger("drpanel.request")


class RequestIdMiddleware:
    """Gives every request an id (taken from ``X-Request-ID`` when it is well-formed) for logs and audit."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.META.get("HTTP_X_REQUEST_ID", "")
        request.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = set_current_request(request)
        started = time.monotonic()
        try:
            response = self.get_response(request)
            # One line per request, carrying its id (drpanel.logformat). The URL pattern, not the path: a
            # path can hold a credential (a mailed acknowledgement link's token), a pattern never does.
            match = getattr(request, "resolver_match", None)
            request_log.info("%s /%s %s %.0f ms", request.method, match.route if match else "(no route)",
                             response.status_code, (time.monotonic() - started) * 1000)
        finally:
            reset_current_request(token)
        response["X-Request-ID"] = request.request_id
        return response


class NoStoreMiddleware:
    """Signed-in pages and API answers must not linger in browser or proxy caches."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        user = getattr(request, "user", None)
        if (user is not None and user.is_authenticated) or request.path.startswith("/api/"):
            response["Cache-Control"] = "no-store"
            response["Pragma"] = "no-cache"
        return response


class DenialAuditMiddleware:
    """Every ``PermissionDenied`` a view raises is written to the audit log, then answered 403."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, PermissionDenied):
            record_denial(request, exception)
        return None


SIGNED_IN_AT = "drpanel_signed_in_at"


class SessionLifetimeMiddleware:
    """Sign a session out ``DRPANEL_SESSION_MAX_HOURS`` after sign-in, however active it is.

    The idle timeout (``SESSION_COOKIE_AGE``, renewed by every request) ends forgotten
    sessions; this ends busy ones, so a stolen session cookie is worth a bounded time.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            started = request.session.setdefault(SIGNED_IN_AT, time.time())
            if time.time() - started > settings.SESSION_MAX_HOURS * 3600:
                logout(request)
        return self.get_response(request)
