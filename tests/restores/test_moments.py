"""What a recovery moment may be typed as: a time ago, or a date and time with its offset or zone (restores.moments)."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from restores.forms import recovery_point_from
from restores.moments import parse_moment

NOW = datetime(2026, 12, 3, 3, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "back"), [
    ("10 minutes ago", timedelta(minutes=10)), ("10 min ago", timedelta(minutes=10)),
    ("1 minute ago", timedelta(minutes=1)), ("90 s ago", timedelta(seconds=90)),
    ("45 seconds ago", timedelta(seconds=45)), ("2 hours ago", timedelta(hours=2)), ("3h ago", timedelta(hours=3)),
    ("1 day ago", timedelta(days=1)), ("  10 Minutes AGO ", timedelta(minutes=10)),
])
def test_a_time_ago_counts_back_from_the_moment_it_is_read(text, back):
    assert parse_moment(text, now=NOW) == NOW - back


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-03 03:00:00+01:00", datetime(2026, 12, 3, 2, 0, tzinfo=UTC)),
    ("2026-12-03 03:00 +01:00", datetime(2026, 12, 3, 2, 0, tzinfo=UTC)),
    ("2026-12-03T03:00:00Z", datetime(2026, 12, 3, 3, 0, tzinfo=UTC)),
    ("2026-12-03 03:00 UTC", datetime(2026, 12, 3, 3, 0, tzinfo=UTC)),
    ("2026-12-03 03:00 utc", datetime(2026, 12, 3, 3, 0, tzinfo=UTC)),
    ("2026-07-03 03:00 Europe/Madrid", datetime(2026, 7, 3, 1, 0, tzinfo=UTC)),
    ("2026-12-03 03:00 America/Santiago", datetime(2026, 12, 3, 6, 0, tzinfo=UTC)),
])
def test_a_date_and_time_keeps_its_offset_or_zone(text, expected):
    assert parse_moment(text, now=NOW) == expected


def test_a_date_and_time_alone_is_read_in_the_panels_zone(settings):
    settings.TIME_ZONE = "Europe/Madrid"
    from django.utils import timezone

    with timezone.override(ZoneInfo("Europe/Madrid")):
        assert parse_moment("2026-12-03 04:00", now=NOW) == datetime(2026, 12, 3, 3, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "says"), [
    ("ten minutes ago", "nor a time ago"), ("10 fortnights ago", "nor a time ago"), ("", "not a date and time"),
    ("2026-12-03 03:00 Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
    ("2026-12-03 03:00+01:00 UTC", "an offset and a zone name"), ("999999 days ago", "before any date"),
    ("yesterday at 3", "not a date and time"),
])
def test_anything_else_says_what_to_type(text, says):
    with pytest.raises(ValueError, match=says):
        parse_moment(text, now=NOW)


def test_the_restore_forms_point_is_the_moment_in_utc():
    point = recovery_point_from("time", "10 minutes ago", "", now=NOW)
    assert point.kind == "time" and point.time == NOW - timedelta(minutes=10) and point.time.tzinfo == UTC
    assert str(point) == "2026-12-03 02:50:00 UTC"
