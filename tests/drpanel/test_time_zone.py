"""Pages show times in the panel's time zone (``TIME_ZONE``), each followed by that zone's abbreviation."""

import re
from datetime import UTC, datetime

import pytest

from drpanel.models import ApiToken
from drpanel.templatetags.panel_time import format_at
from tests.drpanel.test_settings import manage
from tests.support import ROOT

pytest_plugins = ["tests.compliance_fixtures"]

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


def test_an_iso_string_from_a_report_is_shown_in_the_zone_too(settings):
    settings.TIME_ZONE = "Europe/Madrid"
    assert format_at("2026-01-15T12:00:00+00:00", "H:i:s") == "13:00:00 CET"
    assert format_at("2026-07-15T12:00:00.123456+00:00") == "2026-07-15 14:00 CEST"
    # Without an offset there is no instant to convert: nothing is shown rather than a guess.
    for value in ("2026-01-15T12:00:00", "not a time", "2026-02-30T12:00:00+00:00", ""):
        assert format_at(value) == "", value


# The only places a template may name UTC itself: statements that are true in every zone (rq's cron
# runs its schedules in UTC; the audit filter and a certification's month are defined in UTC; the
# point-in-time form shows an example of a zone a user may type).
UTC_ALLOWED = {
    "compliance/checklist_today.html": {"each day at 23:45 UTC"},
    "drpanel/dashboard.html": {"it opens at 00:05 UTC"},
    "compliance/audit_list.html": {"From (UTC)", "To (UTC, excluded)"},
    "compliance/_certification_record.html": {", UTC)"},
    "restores/point_create.html": {"<code>UTC</code>"},
}
TEMPLATES = ROOT / "templates"
# A time of day written by hand: Django's date filter with hours or minutes, or an ISO string cut short.
HAND_MADE_TIME = re.compile(r"\|date:[\"'][^\"']*[HGhgiPA][^\"']*[\"']|_at\|(?:default:\"\"\|)?slice:|\.at\|slice:")


def test_no_template_writes_a_time_by_hand_or_labels_one_utc():
    found = []
    for path in sorted(TEMPLATES.rglob("*.html")):
        name = str(path.relative_to(TEMPLATES))
        text = path.read_text()
        found += [f"{name}: {m[0]}" for m in HAND_MADE_TIME.finditer(text)]
        allowed = UTC_ALLOWED.get(name, set())
        for line in text.splitlines():
            if "UTC" in line and not any(phrase in line for phrase in allowed):
                found.append(f"{name}: a time labelled UTC: {line.strip()[:160]}")
    assert not found, "times on pages go through |at (the panel's zone, with its name):\n" + "\n".join(found)


@pytest.mark.django_db
def test_the_notifications_incident_and_report_pages_show_madrid_times(clients, roster, operator, manager,
                                                                      settings, panel_clock):
    from backups.models import System
    from compliance.escalation import escalation_start
    from compliance.models import Delivery, IncidentCall
    from restores.incidents import incident_declare
    from restores.models import Target

    settings.TIME_ZONE = "Europe/Madrid"
    system = System.objects.create(name="shop", database_ref="env:DRPANEL_TZ_UNSET")
    target = Target.objects.create(name="shop-production", environment="production", system=system,
                                   database_ref="env:DRPANEL_TZ_UNSET")
    incident = incident_declare(actor=operator, system=system, scenario="database", severity="critical",
                                target=target)
    escalation_start(incident.pk)
    call = IncidentCall.objects.filter(escalation__incident=incident, step=1).earliest("created_at")
    delivery = Delivery.objects.filter(contact=call.contact).latest("created_at")

    def shown(moment, fmt):
        return format_at(moment, fmt), f"{moment:%H:%M:%S}"

    pages = {
        f"/incidents/{incident.pk}/": [shown(call.created_at, "H:i:s")],
        f"/incidents/{incident.pk}/report": [shown(incident.declared_at, "Y-m-d H:i:s")],
        "/contacts/notifications/": [shown(delivery.created_at, "Y-m-d H:i:s")],
    }
    for url, expected in pages.items():
        html = clients["manager"].get(url).content.decode()
        for local, utc_clock in expected:
            assert local.endswith(" CET") and local in html, (url, local)
            assert utc_clock not in html, f"{url} shows the UTC wall-clock time {utc_clock}"


@pytest.mark.parametrize("zone", ["UTC", "Europe/Madrid", "America/New_York", "Asia/Kolkata"])
def test_the_common_format_writes_what_djangos_formatter_writes(settings, zone):
    from django.utils import timezone
    from django.utils.dateformat import format as date_format

    settings.TIME_ZONE = zone
    for moment in (WINTER, SUMMER, datetime(2026, 3, 29, 0, 59, 59, tzinfo=UTC), datetime(999, 5, 1, tzinfo=UTC)):
        local = timezone.localtime(moment)
        assert format_at(moment) == f"{date_format(local, 'Y-m-d H:i')} {date_format(local, 'T')}", moment
        assert format_at(moment) == format_at(moment), "remembered, the same text"
