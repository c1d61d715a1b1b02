"""The panel's clock: every time-dependent rule (escalation timing, reminders, checklist
periods) asks ``clock.now()`` instead of the system clock, so tests and demos can move time.

- Tests freeze it (``with clock.frozen(at):``) and move it (``clock.advance(timedelta(...))``).
- A demo may run ahead with ``DRPANEL_CLOCK_OFFSET_SECONDS`` (refused in production), so the
  web process, the workers and the scheduler all agree on the shifted time.

The audit log keeps the real time of each event (its writer reads the system clock).
"""

import contextlib
import threading
from datetime import date, datetime, timedelta

from django.conf import settings
from django.utils import timezone

_lock = threading.Lock()
# Module-level, not thread-local: a frozen clock must hold in the live server's threads too.
_frozen: datetime | None = None
_extra_offset = timedelta(0)


def now() -> datetime:
    """The current time (aware, UTC) as the panel sees it."""
    if _frozen is not None:
        return _frozen
    return timezone.now() + timedelta(seconds=settings.CLOCK_OFFSET_SECONDS) + _extra_offset


def today() -> date:
    """Today's date in the panel's time zone (``TIME_ZONE``)."""
    return timezone.localdate(now())


@contextlib.contextmanager
def frozen(at: datetime):
    """Stop the clock at ``at`` (aware) for the duration of the block."""
    global _frozen
    if timezone.is_naive(at):
        raise ValueError("clock.frozen needs an aware datetime")
    with _lock:
        previous = _frozen
        _frozen = at
    try:
        yield
    finally:
        with _lock:
            _frozen = previous


def advance(delta: timedelta) -> datetime:
    """Move the clock forward by ``delta`` (frozen or running) and return the new time.

    Outside ``frozen`` the shift lasts until ``reset()``; the ``clock`` test fixture resets.
    """
    global _frozen, _extra_offset
    with _lock:
        if _frozen is not None:
            _frozen = _frozen + delta
        else:
            _extra_offset = _extra_offset + delta
    return now()


def reset() -> None:
    """Back to the configured clock (no freeze, no extra shift)."""
    global _frozen, _extra_offset
    with _lock:
        _frozen = None
        _extra_offset = timedelta(0)
