"""The client's address, the one every sign-in lockout, audit event and ``/metrics`` network check uses.

With ``DRPANEL_PROXY_COUNT`` = 0 (the default) it is the socket's address, ``REMOTE_ADDR``, and
``X-Forwarded-For`` is never read: anyone can send that header. Behind N reverse proxies that each
append the address they saw to ``X-Forwarded-For`` (nginx's ``$proxy_add_x_forwarded_for``), the
client is the N-th entry from the right: entries further left were written by the client and cannot
choose the answer. django-ipware reads it so (the header holds the client and the N - 1 proxies
before the last one, which is ``REMOTE_ADDR``). A request without the header, or with fewer entries
than the proxies would have written, falls back to ``REMOTE_ADDR``.
"""

from django.conf import settings
from ipware.ip import get_client_ip


def client_address(request) -> str | None:
    """The client's IP address as text (``AXES_CLIENT_IP_CALLABLE``), or None when there is none."""
    remote = request.META.get("REMOTE_ADDR") or None
    if settings.PROXY_COUNT <= 0:
        return remote
    # ipware counts the proxies written into the header (all but the last one): N - 1 of them, and
    # the client is then picked from the right; strict=False tolerates the client's own prefix.
    address, _routable = get_client_ip(request, proxy_order="left-most", proxy_count=settings.PROXY_COUNT - 1,
                                       request_header_order=["HTTP_X_FORWARDED_FOR"], strict=False)
    return address or remote
