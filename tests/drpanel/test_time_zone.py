"""Pages show times in the panel's time zone (``TIME_ZONE``), each followed by that zone's abbreviation."""

from datetime import UTC, datetime

import pytest

from drpanel.models import ApiToken
from drpanel.templatetags.panel_time import format_at
from tests.drpanel.test_settings import manage

WINTER = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
SUMMER = datetime(2026, 7, 15, 12, 0, tzinfo=UTC)


def token(user, name, *, created_at, last_used_at):
    return ApiToken.objects.create(user=user, name=name, prefix=name[:8], token_hash=name.ljust(64, "0"),
                                   created_at=created_at, expires_at=datetime(2030, 1, 1, tzinfo=UTC),
                                   last_used_at=last_used_at)


@pytest.mark.django_db
def test_a_page_shows_madrid_times_with_cet_in_winter_and_cest_in_summer(client, operator, settings):
    settings.TIME_ZONE = "Europe/Madrid"
    token(operator, "winter-token", created_at=WINTER, last_used_at=SUMMER)
    client.force_login(operator)
    html = client.get("/tokens/").content.decode()
    assert "2026-01-15 13:00 CET" in html
    assert "2026-07-15 14:00 CEST" in html
    assert "12:00" not in html, "a UTC wall-clock time was shown"


@pytest.mark.django_db
def test_the_default_zone_is_utc_and_says_so(client, operator):
    token(operator, "utc-token", created_at=WINTER, last_used_at=None)
    client.force_login(operator)
    html = client.get("/tokens/").content.decode()
    assert "2026-01-15 12:00 UTC" in html
    assert "never" in html


def test_times_written_by_code_follow_the_zone_too(settings):
    settings.TIME_ZONE = "America/New_York"
    assert format_at(WINTER, "d M H:i") == "15 Jan 07:00 EST"
    assert format_at(SUMMER) == "2026-07-15 08:00 EDT"
    assert format_at(None) == ""


def test_an_unknown_time_zone_stops_start_up_with_one_line():
    result = manage("check", TIME_ZONE="Mars/Olympus_Mons")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "TIME_ZONE='Mars/Olympus_Mons' is not a time zone name" in lines[0]
