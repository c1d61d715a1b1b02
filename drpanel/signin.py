"""Failed sign-ins with usernames that do not exist: counted per time window, one audit event per window.

A failed sign-in with a known username is one audit event (``drpanel.signals``): someone tried
that account. One with an unknown username says only that someone is guessing, and anyone on
the network could send millions of them; one event each would let anonymous traffic grow the
append-only chain (and the database) at will. So each adds one to the row of its window
(``SignInFailureWindow``, ``DRPANEL_UNKNOWN_SIGNIN_WINDOW_MINUTES`` long, aligned on the epoch),
and once the window has ended one ``auth.unknown_user_failures`` event records its counts:
failures, lockouts and the failures per client address (the first 20 addresses).

Ended windows are recorded by the next such failure and by a job every minute (``drpanel.cron``),
whichever comes first; the row lock makes sure a window is recorded once. Windows follow the
panel's clock (``drpanel.clock``), so tests can end one without waiting.
"""

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel import clock
from drpanel.models import SignInFailureWindow

MAX_ADDRESSES = 20
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def window_of(at: datetime) -> tuple[datetime, datetime]:
    """The start and end of the window holding ``at``."""
    length = timedelta(minutes=settings.UNKNOWN_SIGNIN_WINDOW_MINUTES)
    start = EPOCH + ((at - EPOCH) // length) * length
    return start, start + length


def unknown_signin_failure_count(*, address: str | None, lockout: bool = False) -> SignInFailureWindow:
    """Count one failed sign-in (or, with ``lockout``, one refused by the lockout) with an unknown username.

    Writes no audit event for it; records the windows that have ended before it
    (``unknown_signin_failures_record``).
    """
    now = clock.now()
    start, end = window_of(now)
    with transaction.atomic():
        while True:
            SignInFailureWindow.objects.bulk_create([SignInFailureWindow(window_start=start, window_end=end)],
                                                    ignore_conflicts=True)
            # Row lock: concurrent failures add up instead of overwriting each other's counts.
            row = SignInFailureWindow.objects.select_for_update().get(window_start=start)
            if row.recorded_at is None:
                break
            # The window was recorded while this request was on its boundary: count it in the next one.
            start, end = end, end + (end - start)
        if lockout:
            row.lockouts += 1
        else:
            row.failures += 1
            key = address or "unknown"
            if key in row.addresses or len(row.addresses) < MAX_ADDRESSES:
                row.addresses[key] = row.addresses.get(key, 0) + 1
        row.save(update_fields=["lockouts", "failures", "addresses"])
    unknown_signin_failures_record(now=now)
    return row


def unknown_signin_failures_record(*, now: datetime | None = None) -> int:
    """Write one ``auth.unknown_user_failures`` event per ended, unrecorded window; return how many."""
    now = now or clock.now()
    written = 0
    with transaction.atomic():
        # skip_locked: a window another process is recording (or still counting into) is left to it.
        rows = (SignInFailureWindow.objects.select_for_update(skip_locked=True)
                .filter(recorded_at__isnull=True, window_end__lte=now).order_by("window_start"))
        for row in rows:
            top = sorted(row.addresses.items(), key=lambda item: (-item[1], item[0]))
            audit_record(actor=None, action=AuditAction.AUTH_UNKNOWN_USER_FAILURES, outcome="failure",
                         object_type="auth.user", object_repr="(usernames that do not exist)",
                         details={"window_start": row.window_start.isoformat(),
                                  "window_end": row.window_end.isoformat(),
                                  "failures": row.failures, "lockouts": row.lockouts,
                                  "addresses": dict(top)})
            row.recorded_at = now
            row.save(update_fields=["recorded_at"])
            written += 1
    return written
