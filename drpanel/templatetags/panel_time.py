"""Times on pages: in the panel's time zone (``TIME_ZONE``), always followed by that zone's abbreviation.

``{{ run.created_at|at }}`` → ``2026-12-03 16:23 CET``; ``{{ run.created_at|at:"H:i:s" }}`` →
``16:23:07 CET``; an ISO 8601 string from a report's JSON (``"2026-12-03T15:23:07+00:00"``) is read
the same way. The abbreviation is the one in force at that instant (``CEST`` in summer), so a
time read off a page, a screenshot or a printed certification says which clock it was read on.
Loaded for every template (``TEMPLATES`` ``builtins``), so no page has to ``{% load %}`` it.
"""

from datetime import datetime
from functools import lru_cache

from django import template
from django.utils import timezone
from django.utils.dateformat import format as date_format
from django.utils.dateparse import parse_datetime
from django.utils.translation import get_language

register = template.Library()

DEFAULT_FORMAT = "Y-m-d H:i"


def format_at(value, fmt: str = DEFAULT_FORMAT) -> str:
    """``value`` in the current time zone, in Django's ``date`` format ``fmt``, then the zone's abbreviation.

    ``value`` is a datetime or an ISO 8601 string with an offset (what a report's JSON holds); for code
    that writes times outside templates (chart labels) too. "" for anything else.

    Remembered per moment, format and current time zone: a chart of thousands of bars writes each
    time twice (its label and its table row), and the result of a moment never changes.
    """
    if not isinstance(value, str | datetime):
        return ""
    return _format_at(value, fmt or DEFAULT_FORMAT, timezone.get_current_timezone_name(), get_language())


def formatter(fmt: str = DEFAULT_FORMAT):
    """``format_at`` with this request's time zone and language looked up once: for code that writes
    thousands of times (the dashboard's charts)."""
    zone, language, fmt = timezone.get_current_timezone_name(), get_language(), fmt or DEFAULT_FORMAT
    return lambda value: _format_at(value, fmt, zone, language) if isinstance(value, str | datetime) else ""


@lru_cache(maxsize=16384)
def _format_at(value, fmt: str, zone: str, language: str | None) -> str:  # zone and language: the key only
    if isinstance(value, str):
        try:
            value = parse_datetime(value)
        except ValueError:
            return ""
        if value is not None and timezone.is_naive(value):
            return ""
    if not isinstance(value, datetime):
        return ""
    if timezone.is_aware(value):
        value = timezone.localtime(value)
        if fmt == DEFAULT_FORMAT:  # the common case, without the general formatter (same text, a tenth the time)
            return (f"{value.year:04d}-{value.month:02d}-{value.day:02d} {value.hour:02d}:{value.minute:02d} "
                    f"{value.tzname()}")
    return f"{date_format(value, fmt)} {date_format(value, 'T')}"


@register.filter
def at(value, arg: str = DEFAULT_FORMAT) -> str:
    """The template filter: ``{{ when|at }}``, ``{{ when|at:"H:i:s" }}``."""
    return format_at(value, arg)
