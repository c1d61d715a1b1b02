"""``Authorization: Bearer <token>`` for the API: per-user tokens, stored as SHA-256 only.

A token authenticates while it is neither revoked nor expired and its user is active. What it
may do then depends on its kind: an ``api`` token calls the API as its user (a read-only one
only with GET, HEAD and OPTIONS); a ``metrics`` token is for ``GET /metrics`` only
(``drpanel.metrics`` reads it with ``token_for``) and is refused by every API endpoint. A token
used beyond its scope is a 403 and an ``api_token.scope_refused`` audit event: its holder is
known, so the event cannot be sent by anonymous traffic.
"""

import logging

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.permissions import SAFE_METHODS

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel.client_ip import client_address
from drpanel.models import ApiToken, hash_token

log = logging.getLogger(__name__)


def bearer_value(request) -> str | None:
    """The token of a ``Bearer`` Authorization header, None without one; a malformed one is refused."""
    header = authentication.get_authorization_header(request).decode("latin-1")
    if not header:
        return None
    keyword, _, raw = header.partition(" ")
    if keyword != BearerTokenAuthentication.keyword:
        return None
    raw = raw.strip()
    if not raw or " " in raw:
        raise exceptions.AuthenticationFailed("Malformed Authorization header.")
    return raw


def token_for(request, raw: str) -> ApiToken:
    """The active token ``raw`` names, with its active user; ``AuthenticationFailed`` otherwise."""
    token = ApiToken.objects.active().select_related("user").filter(token_hash=hash_token(raw)).first()
    if token is None or not token.user.is_active:
        # Tokens carry 256 random bits: guessing one is hopeless, so a refusal is not audited (that
        # would let anyone grow the audit chain at will); it is logged, without the token, for
        # whoever watches the logs (fail2ban, a SIEM) to act on a flood of them.
        log.warning("API token refused (unknown, revoked, expired or inactive user) from %s for %s %s",
                    client_address(request) or "?", request.method, request.path[:200])
        raise exceptions.AuthenticationFailed("Invalid, expired or revoked token.")
    # At most one write a minute per token: last use is informative, not a hot path.
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


def token_scope_refused(request, token: ApiToken, reason: str) -> exceptions.PermissionDenied:
    """Audit a token used beyond its scope and return the 403 to raise."""
    audit_record(actor=token.user, action=AuditAction.API_TOKEN_SCOPE_REFUSED, obj=token, outcome="denied",
                 request=request, details={"method": request.method, "path": request.path[:200],
                                           "kind": token.kind, "read_only": token.read_only,
                                           "prefix": token.prefix, "reason": reason})
    return exceptions.PermissionDenied(reason)


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """Looks the token up by its hash; revoked or expired tokens and inactive users are refused, and a
    token is refused beyond its scope (a metrics token anywhere, a read-only token on a write)."""

    keyword = "Bearer"

    def authenticate(self, request):
        raw = bearer_value(request)
        if raw is None:
            return None
        token = token_for(request, raw)
        if token.kind == ApiToken.Kind.METRICS:
            raise token_scope_refused(request, token, "A metrics token can only scrape /metrics.")
        if token.read_only and request.method not in SAFE_METHODS:
            raise token_scope_refused(request, token, "This token is read-only: it cannot change anything.")
        return token.user, token

    def authenticate_header(self, request):
        return self.keyword


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Describes the bearer tokens in the OpenAPI schema."""

    target_class = "drpanel.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A personal API token (drp_…)."}
