"""The panel clock: tests freeze and move it, demos shift it, production refuses a shift."""

from datetime import UTC, date, datetime, timedelta

import pytest
from django.utils import timezone

from drpanel import clock
from tests.drpanel.test_settings import manage, production_env


def test_it_freezes_and_moves_and_comes_back():
    at = datetime(2026, 1, 31, 23, 30, tzinfo=UTC)
    with clock.frozen(at):
        assert clock.now() == at and clock.today() == date(2026, 1, 31)
        assert clock.advance(timedelta(hours=1)) == at + timedelta(hours=1)
        assert clock.today() == date(2026, 2, 1)
    assert abs(clock.now() - timezone.now()) < timedelta(seconds=5)


def test_it_refuses_a_naive_time():
    with pytest.raises(ValueError, match="aware"), clock.frozen(datetime(2026, 1, 1)):
        pass


def test_advancing_a_running_clock_lasts_until_reset():
    clock.advance(timedelta(days=2))
    try:
        assert clock.now() - timezone.now() > timedelta(days=1, hours=23)
    finally:
        clock.reset()
    assert abs(clock.now() - timezone.now()) < timedelta(seconds=5)


def test_the_configured_offset_shifts_it(settings):
    settings.CLOCK_OFFSET_SECONDS = 3600
    assert timedelta(minutes=59) < clock.now() - timezone.now() < timedelta(minutes=61)


def test_production_refuses_a_shifted_clock(tmp_path):
    result = manage("check", **production_env(tmp_path), DRPANEL_CLOCK_OFFSET_SECONDS="600")
    assert result.returncode == 2
    assert "DRPANEL_CLOCK_OFFSET_SECONDS is refused when DRPANEL_ENV=production" in result.stderr


def test_the_base_url_for_mail_links_must_be_http():
    result = manage("check", DRPANEL_BASE_URL="ftp://panel.example.com")
    assert result.returncode == 2
    assert "DRPANEL_BASE_URL='ftp://panel.example.com' must start with http:// or https://" in result.stderr
