"""``Authorization: Bearer <token>`` for the API: per-user tokens, stored as SHA-256 only."""

import logging

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from drpanel.models import ApiToken, hash_token

log = logging.getLogger(__name__)


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """Looks the token up by its hash; revoked tokens and inactive users are refused."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        keyword, _, raw = header.partition(" ")
        if keyword != self.keyword:
            return None
        raw = raw.strip()
        if not raw or " " in raw:
            raise exceptions.AuthenticationFailed("Malformed Authorization header.")
        token = (
            ApiToken.objects.active().select_related("user").filter(token_hash=hash_token(raw)).first()
        )
        if token is None or not token.user.is_active:
            # Tokens carry 256 random bits: guessing one is hopeless, so a refusal is not audited (that
            # would let anyone grow the audit chain at will); it is logged, without the token, for
            # whoever watches the logs (fail2ban, a SIEM) to act on a flood of them.
            log.warning("API token refused (unknown, revoked or inactive user) from %s for %s %s",
                        request.META.get("REMOTE_ADDR", "?"), request.method, request.path[:200])
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        # At most one write a minute per token: last use is informative, not a hot path.
        now = timezone.now()
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request):
        return self.keyword


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Describes the bearer tokens in the OpenAPI schema."""

    target_class = "drpanel.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A personal API token (drp_…)."}
