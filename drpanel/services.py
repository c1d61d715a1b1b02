"""Services of the project package: API tokens and re-authentication (each one audited)."""

from django.db import transaction
from django.utils import timezone

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel.models import ApiToken, hash_token, token_expiry
from drpanel.passwords import password_confirm
from drpanel.permissions import Denied, mark_reauthenticated


def api_token_create(*, actor, user, name: str, password: str | None = None, request=None,
                     kind: str = ApiToken.Kind.API, read_only: bool = False) -> tuple[ApiToken, str]:
    """Create a token for ``user`` and return it with its only plaintext copy.

    Users create their own tokens, with their password re-entered (``password_confirm``: a
    stolen session or token cannot mint more); the ``api_token`` management command (run by
    whoever operates the server) creates them for anyone, with ``actor=None`` ("system").
    ``kind`` is ``api`` (optionally ``read_only``) or ``metrics`` (scrape-only). The token
    expires ``DRPANEL_TOKEN_DAYS`` after its creation. Raises ``Denied``, ``PasswordRefused``,
    ``PasswordLocked`` or ``ValueError`` (an unknown kind).
    """
    if kind not in ApiToken.Kind.values:
        raise ValueError(f"unknown token kind {kind!r}")
    if actor is not None:
        if actor.pk != user.pk:
            raise Denied("You can only create tokens for yourself.", action="api_token.create")
        password_confirm(actor=actor, password=password, purpose="api_token.create", request=request)
    name = (name or "").strip()[:100] or "API token"
    read_only = bool(read_only) and kind == ApiToken.Kind.API
    raw = ApiToken.generate()
    with transaction.atomic():
        now = timezone.now()
        token = ApiToken.objects.create(user=user, name=name, prefix=raw[:10], token_hash=hash_token(raw),
                                        kind=kind, read_only=read_only, created_at=now, expires_at=token_expiry(now))
        audit_record(actor=actor, action=AuditAction.API_TOKEN_CREATED, obj=token, request=request,
                     details={"owner": user.get_username(), "name": name, "prefix": token.prefix,
                              "kind": kind, "read_only": read_only, "expires_at": token.expires_at.isoformat()})
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

    The session gets a new id. Raises ``PasswordRefused`` or ``PasswordLocked`` (after too many
    wrong passwords the password is not even checked)."""
    user = request.user
    password_confirm(actor=user, password=password, purpose=purpose, request=request)
    with transaction.atomic():
        audit_record(actor=user, action=AuditAction.AUTH_REAUTHENTICATED, obj=user, request=request,
                     details={"purpose": purpose})
    # A new session id, as at sign-in: a session id stolen before the password was re-entered does not
    # carry the re-authentication (the data moves to the new id; the old one stops working).
    request.session.cycle_key()
    mark_reauthenticated(request)
