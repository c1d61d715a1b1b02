"""Password re-entry: the one check behind every action that asks a signed-in person for their password again.

Approving a restore or a deletion, rolling a restore back, signing the monthly certification,
creating an API token and the re-authentication page all call ``password_confirm``. So every
wrong password, whichever page or endpoint it came through, counts toward one limit per user
(django-axes' ``AXES_FAILURE_LIMIT`` within ``AXES_COOLOFF_TIME``, the same numbers as sign-in),
is audited, and once the limit is reached the password is not even checked: a stolen session
cannot guess without limit through any of them.

Failures raise typed exceptions, so callers decide by type, never by message text:
``PasswordRefused`` (wrong or empty) and ``PasswordLocked`` (too many wrong ones), both
``PasswordError``.
"""

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from compliance.audit.models import AuditEvent

# Why a password is asked for → the audit action a wrong one is recorded under. The actions are
# the ones each path wrote before they shared this check, so the audit trail reads as it did.
PURPOSES = {
    "auth.reauthenticate": AuditAction.AUTH_REAUTHENTICATED,
    "certification.sign": AuditAction.AUTH_REAUTHENTICATED,
    "approval.approve": AuditAction.APPROVAL_PASSWORD_REFUSED,
    "restore.rollback": AuditAction.RESTORE_ROLLBACK_PASSWORD_REFUSED,
    "api_token.create": AuditAction.API_TOKEN_PASSWORD_REFUSED,
}

# Every wrong password re-entered by a signed-in user, whatever it was for: the lockout counts these.
PASSWORD_FAILURES = tuple(sorted(set(PURPOSES.values())))

LOCKED_ACTION = AuditAction.AUTH_REAUTH_LOCKED

# First key of the per-user advisory lock that serialises password checks (two-key form: its own space).
LOCK_NAMESPACE = 0x50415353


class PasswordError(Exception):
    """A re-entered password did not confirm the person (the message is for them; HTTP 403)."""


class PasswordRefused(PasswordError):
    """The password was wrong or empty; the failure is audited and counts toward the lockout."""


class PasswordLocked(PasswordError):
    """Too many wrong passwords within the cool-off: this one was not checked."""


def password_attempts_exhausted(user) -> bool:
    """True when ``user`` re-entered a wrong password ``AXES_FAILURE_LIMIT`` times within the cool-off.

    The audit log is the counter: every wrong password is already an event there, in every
    process and on every host.
    """
    since = timezone.now() - settings.AXES_COOLOFF_TIME
    failures = AuditEvent.objects.filter(actor=user, action__in=PASSWORD_FAILURES, outcome="failure",
                                         occurred_at__gte=since).count()
    return failures >= settings.AXES_FAILURE_LIMIT


def retry_after_seconds() -> int:
    """The ``Retry-After`` of a 429 for a lockout: the whole cool-off, the longest a lockout can still last."""
    return int(settings.AXES_COOLOFF_TIME.total_seconds())


def password_confirm(*, actor, password, purpose: str, obj=None, request=None, details: dict | None = None) -> None:
    """Confirm that ``actor`` knows their password, for ``purpose`` (a key of ``PURPOSES``).

    Returns nothing when it matches. Raises ``PasswordLocked`` without checking it once the
    actor reached the limit (audited as ``auth.reauth_locked``), or ``PasswordRefused`` when it
    is wrong, empty or not text (audited under the purpose's action, outcome failure, on ``obj``
    or else the actor). The check runs in its own transaction (so it is never called inside
    another): a caller that rolls back cannot undo the count, and one user's checks are
    serialised, so parallel guesses cannot slip past the limit together.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"unknown password purpose {purpose!r}")
    details = {"purpose": purpose, **(details or {})}
    obj = obj if obj is not None else actor
    with transaction.atomic(durable=True):
        # One check at a time per user, from the count to the recorded failure: otherwise a burst of
        # parallel requests would all pass the count before any of their failures is written.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [LOCK_NAMESPACE, actor.pk])
        if password_attempts_exhausted(actor):
            audit_record(actor=actor, action=LOCKED_ACTION, obj=obj, outcome="denied", request=request,
                         details=details)
            locked = True
        else:
            locked = False
            if isinstance(password, str) and password and actor.check_password(password):
                return
            audit_record(actor=actor, action=PURPOSES[purpose], obj=obj, outcome="failure", request=request,
                         details=details)
    if locked:
        minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
        raise PasswordLocked(f"Too many wrong passwords: your password is refused for up to {minutes} minutes.")
    raise PasswordRefused("That password is not correct.")
