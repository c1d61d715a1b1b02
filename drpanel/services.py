"""Services of the project package: API tokens and re-authentication (each one audited)."""

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from compliance.audit.models import AuditEvent
from drpanel.models import ApiToken, hash_token
from drpanel.permissions import Denied, mark_reauthenticated


def api_token_create(*, actor, user, name: str) -> tuple[ApiToken, str]:
    """Create a token for ``user`` and return it with its only plaintext copy.

    Users create their own tokens; the ``api_token`` management command (run by whoever
    operates the server) creates them for anyone, with ``actor=None`` ("system").
    """
    if actor is not None and actor.pk != user.pk:
        raise Denied("You can only create tokens for yourself.", action="api_token.create")
    name = (name or "").strip()[:100] or "API token"
    raw = ApiToken.generate()
    with transaction.atomic():
        token = ApiToken.objects.create(user=user, name=name, prefix=raw[:10], token_hash=hash_token(raw))
        audit_record(actor=actor, action=AuditAction.API_TOKEN_CREATED, obj=token,
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


# Wrong passwords re-entered by a signed-in user (re-authentication, approvals). Sign-in itself is
# limited by django-axes; these checks happen inside a session, so a stolen session must not be
# a way to guess the password without limit either.
PASSWORD_FAILURES = (AuditAction.AUTH_REAUTHENTICATED, AuditAction.APPROVAL_PASSWORD_REFUSED)


def password_attempts_exhausted(user) -> bool:
    """True when ``user`` re-entered a wrong password ``AXES_FAILURE_LIMIT`` times within the cool-off.

    The audit log is the counter: every wrong password is already an event there, in every
    process and on every host.
    """
    since = timezone.now() - settings.AXES_COOLOFF_TIME
    failures = AuditEvent.objects.filter(actor=user, action__in=PASSWORD_FAILURES, outcome="failure",
                                         occurred_at__gte=since).count()
    return failures >= settings.AXES_FAILURE_LIMIT


def reauthenticate(*, request, password: str) -> bool:
    """Check the signed-in user's password again; on success approvals are open for a few minutes.

    After too many wrong passwords the password is not even checked (``password_attempts_exhausted``)."""
    user = request.user
    if password_attempts_exhausted(user):
        with transaction.atomic():
            audit_record(actor=user, action=AuditAction.AUTH_REAUTH_LOCKED, obj=user, outcome="denied", request=request)
        return False
    ok = bool(password) and user.check_password(password)
    with transaction.atomic():
        audit_record(actor=user, action=AuditAction.AUTH_REAUTHENTICATED, obj=user,
                     outcome="success" if ok else "failure", request=request)
    if ok:
        mark_reauthenticated(request)
    return ok
