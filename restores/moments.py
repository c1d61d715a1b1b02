"""A moment as a 3 a.m. operator types it: "10 minutes ago", or a date and time with its offset or zone.

Used by the point-in-time restore form and by the incident step that chooses the recovery
point. A time ago is counted back from the moment it is read (the request then fixes that exact
moment); a date and time without an offset or a zone is read in the panel's zone (``TIME_ZONE``).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.utils import timezone

RELATIVE = re.compile(r"^(\d{1,6})\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?|d|days?)\s+ago$", re.I)
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
RELATIVE_CHOICES = ("5 minutes ago", "10 minutes ago", "30 minutes ago", "1 hour ago")


def relative_moment(text: str, now: datetime) -> datetime | None:
    """``"10 minutes ago"`` (also ``10 min ago``, ``90 s ago``, ``2 hours ago``, ``1 day ago``) as a moment before
    ``now``; None when the text is not of that form."""
    match = RELATIVE.match(text.strip())
    if not match:
        return None
    try:
        return now - timedelta(**{UNITS[match[2][0].lower()]: int(match[1])})
    except OverflowError:
        raise ValueError(f"{text.strip()!r} is before any date this panel can show") from None


def _iso(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date and time (YYYY-MM-DD HH:MM[:SS], then optionally an offset such "
                         "as +01:00 or a zone such as UTC or Europe/Madrid) nor a time ago (such as 10 minutes "
                         "ago)") from None


def _iso_or_none(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _with_zone(text: str) -> datetime:
    """A date and time, with an offset (``+01:00``, ``Z``), a zone name after it (``UTC``, ``Europe/Madrid``), or
    neither (naive: the caller reads it in the panel's zone)."""
    head, _, last = text.rpartition(" ")
    if head and last[:1] in "+-" and ":" in last:
        return _iso(head.strip() + last)  # "17:05 +01:00" as ISO 8601 writes it: "17:05+01:00"
    named = head and ("/" in last or last.isalpha()) and last.upper() != "Z"
    parsed = _iso_or_none(head.strip()) if named else None
    if parsed is not None:
        try:
            zone = ZoneInfo("UTC" if last.upper() == "UTC" else last)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {last!r} (a name such as UTC or Europe/Madrid)") from None
        if parsed.tzinfo is not None:
            raise ValueError(f"{text!r} has an offset and a zone name: give one")
        return parsed.replace(tzinfo=zone)
    return _iso(text)


def parse_moment(text: str, *, now: datetime | None = None) -> datetime:
    """An aware moment from ``text`` (a time ago, or a date and time with an optional offset or zone name);
    ``ValueError`` saying what to type otherwise."""
    parsed = relative_moment(text, now or timezone.now()) or _with_zone(text.strip())
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, timezone.get_current_timezone())
    return parsed
