"""Services of the project package: API tokens and re-authentication (each one audited)."""

from django.db import transaction
from django.utils import timezone

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel.models import ApiToken, hash_token
from drpanel.passwords import password_confirm
from drpanel.permissions import Denied, mark_reauthenticated


def api_token_create(*, actor, user, name: str, password: str | None = None, request=None) -> tuple[ApiToken, str]:
    """Create a token for ``user`` and return it with its only plaintext copy.

    Users create their own tokens, with their password re-entered (``password_confirm``: a
    stolen session or token cannot mint more); the ``api_token`` management command (run by
    whoever operates the server) creates them for anyone, with ``actor=None`` ("system").
    Raises ``Denied``, ``PasswordRefused`` or ``PasswordLocked``.
    """
    if actor is not None:
        if actor.pk != user.pk:
            raise Denied("You can only create tokens for yourself.", action="api_token.create")
        password_confirm(actor=actor, password=password, purpose="api_token.create", request=request)
    name = (name or "").strip()[:100] or "API token"
    raw = ApiToken.generate()
    with transaction.atomic():
        token = ApiToken.objects.create(user=user, name=name, prefix=raw[:10], token_hash=hash_token(raw))
        audit_record(actor=actor, action=AuditAction.API_TOKEN_CREATED, obj=token, request=request,
                     details={"owner": user.get_username(), "name": name, "prefix": token.prefix})
    return token, raw


def api_token_revoke(*, actor, token: ApiToken) -> ApiToken:
    """Revoke a token (final). Only its owner may; revoking twice changes nothing."""
    if actor.pk != token.user_id:
        raise Denied("You can only revoke your own tokens.", obj=token, action="api_token.revoke")
    with transaction.atomic():
        # Conditional update: two concurrent revocations write one event, not two.
        changed = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        if changed:
            audit_record(actor=actor, action=AuditAction.API_TOKEN_REVOKED, obj=token,
                         details={"owner": token.user.get_username(), "prefix": token.prefix})
    token.refresh_from_db(fields=["revoked_at"])
    return token


def reauthenticate(*, request, password: str, purpose: str = "auth.reauthenticate") -> None:
    """Check the signed-in user's password again (``password_confirm``); on success approvals and
    sign-offs are open for a few minutes (``DRPANEL_REAUTH_MINUTES``).

    Raises ``PasswordRefused`` or ``PasswordLocked`` (after too many wrong passwords the password
    is not even checked)."""
    user = request.user
    password_confirm(actor=user, password=password, purpose=purpose, request=request)
    with transaction.atomic():
        audit_record(actor=user, action=AuditAction.AUTH_REAUTHENTICATED, obj=user, request=request,
                     details={"purpose": purpose})
    mark_reauthenticated(request)
