"""In the browser (Chromium), with real workers: an incident's escalation through the roster (issue 14, item 10).

An operator declares an incident; a JSON webhook on loopback receives L1's message; L1 does not acknowledge, the
sweep (run here with the time moved past L1's 5 minutes) calls L2, whose message the receiver gets too; the
incident page shows both calls without a reload, and the operator's Acknowledge button stops the escalation.
"""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from backups.models import System
from compliance import escalation
from compliance.models import Contact, IncidentEscalation, NotificationChannel
from restores.incidents import incident_declare
from restores.targets import target_create
from tests.support import rq_workers

pytest_plugins = ["tests.notify_support"]
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

HOOK_ENV = "DRPANEL_SECRET_TEST_BROWSER_INCIDENT_HOOK"


def received(receiver, count: int) -> list[str]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(receiver.posts) < count:
        time.sleep(0.2)
    return [p["title"] for p in receiver.posts]


def test_escalation_reaches_the_webhook_and_the_page_acknowledges_it(
        page, live_server, sign_in, operator, redis_conn, webhook_receiver, smtp_receiver, monkeypatch):
    monkeypatch.setenv(HOOK_ENV, webhook_receiver.url)
    for level, name, minutes in (("l1", "Lena One", 5), ("l2", "Leo Two", 15), ("l3", "Lara Three", 30)):
        Contact.objects.create(level=level, name=name, email=f"{level}@example.com", response_minutes=minutes)
        NotificationChannel.objects.create(kind="webhook", level=level, url_ref=f"env:{HOOK_ENV}")
    system = System.objects.create(name="chatbotdysa", database_ref="env:DRPANEL_SECRET_ESCALATION_NOWHERE_URL")
    staging = target_create(actor=None, name="chatbotdysa-staging", environment="staging", system=system,
                            database_ref="env:DRPANEL_SECRET_ESCALATION_STAGING_URL", config_dir="")
    env = {"EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": smtp_receiver.port, HOOK_ENV: webhook_receiver.url}
    with rq_workers(["default"], env=env):
        incident = incident_declare(actor=operator, system=system, scenario="database", severity="major",
                                    target=staging)
        titles = received(webhook_receiver, 1)
        assert len(titles) == 1 and "MAJOR Incident declared" in titles[0]

        sign_in(page, "operator")
        page.goto(f"{live_server.url}/incidents/{incident.pk}/")
        calls = page.get_by_test_id("escalation-call")
        calls.first.wait_for()
        assert calls.count() == 1 and "Lena One" in calls.first.inner_text()

        assert escalation.escalate_due(timezone.now() + timedelta(minutes=5, seconds=1)) == 1
        titles = received(webhook_receiver, 2)
        assert len(titles) == 2 and "escalated to L2" in titles[1]
        page.locator("[data-testid=escalation-call]", has_text="Leo Two").wait_for(timeout=30_000)

        page.get_by_test_id("incident-acknowledge").click()
        page.wait_for_load_state()
        assert "Acknowledged by operator" in page.get_by_test_id("escalation-state").inner_text()
        assert escalation.escalate_due(timezone.now() + timedelta(hours=2)) == 0
        page.goto("about:blank")
    assert len(webhook_receiver.posts) == 2
    row = IncidentEscalation.objects.get(incident=incident)
    assert (row.acknowledged_by, row.acknowledged_via, row.step) == (operator, "panel", 2)
