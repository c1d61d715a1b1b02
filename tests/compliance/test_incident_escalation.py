"""Escalation of incidents through the roster (issue 14, items 4 and 10): real apprise sends to a JSON webhook
and an SMTP server on loopback, the panel clock moved past the response targets (never slept through),
acknowledgements by page, API and one-time link, and the refusals audited."""

import time
from datetime import timedelta

import pytest
from django.core import signing
from django.urls import reverse
from django.utils import timezone

from backups.models import System
from compliance import escalation
from compliance.alerts import ack_token as alert_ack_token
from compliance.alerts import alert_raise
from compliance.models import AuditEvent, Contact, Delivery, IncidentCall, IncidentEscalation, NotificationChannel
from compliance.notifications import channel_create
from drpanel import queues
from restores.incidents import incident_declare, incident_report
from restores.models import Incident
from restores.targets import target_create, target_right_grant
from tests.notify_helpers import send_due

pytestmark = pytest.mark.django_db
pytest_plugins = ["tests.compliance_fixtures", "tests.notify_support"]

HOOK_ENV = "DRPANEL_SECRET_TEST_INCIDENT_HOOK"


@pytest.fixture
def system():
    return System.objects.create(name="chatbotdysa", database_ref="env:DRPANEL_SECRET_ESCALATION_NOWHERE_URL")


@pytest.fixture
def staging(system):
    return target_create(actor=None, name="chatbotdysa-staging", environment="staging", system=system,
                         database_ref="env:DRPANEL_SECRET_ESCALATION_STAGING_URL", config_dir="")


@pytest.fixture
def hooks(roster, manager, webhook_receiver, monkeypatch):
    """One JSON webhook for every escalating level (the receiver tells them apart by the message)."""
    monkeypatch.setenv(HOOK_ENV, webhook_receiver.url)
    return [channel_create(actor=manager, kind="webhook", level=level, label=f"{level} hook",
                           url_ref=f"env:{HOOK_ENV}") for level in ("l1", "l2", "l3", "emergency")]


def declare(actor, system, target, severity="major", **kwargs):
    return incident_declare(actor=actor, system=system, scenario="database", severity=severity, target=target,
                            **kwargs)


def events(action):
    return list(AuditEvent.objects.filter(action=action).order_by("seq"))


def called(incident) -> list[tuple[int, str]]:
    return [(c.step, c.contact.name) for c in IncidentCall.objects.filter(escalation__incident=incident)
            .select_related("contact").order_by("step", "contact__name")]


def later(minutes: float):
    from drpanel import clock

    return clock.now() + timedelta(minutes=minutes)


# --- whom a severity calls -------------------------------------------------------------------------

def test_a_major_incident_calls_l1_with_its_response_target_by_mail_and_webhook(
        operator, system, staging, hooks, webhook_receiver, outbox):
    incident = declare(operator, system, staging)
    escalation.escalation_start(incident.pk)

    assert called(incident) == [(1, "Lena One")]
    assert [(m.to, "response target is 5 min" in m.body) for m in outbox] == [(["l1@example.com"], True)]
    assert [("MAJOR Incident declared" in p["title"], "response target is 5 min" in p["message"])
            for p in webhook_receiver.posts] == [(True, True)]
    assert sorted(Delivery.objects.values_list("kind", "status")) == [("email", "sent"), ("webhook", "sent")]
    started = events("incident.escalation_started")
    assert [(e.details["levels"], e.details["response_minutes"]) for e in started] == [(["L1"], {"L1": 5})]


def test_a_critical_incident_calls_emergency_and_l1_at_once(operator, system, staging, roster, outbox):
    incident = declare(operator, system, staging, severity="critical")
    escalation.escalation_start(incident.pk)

    assert called(incident) == [(1, "Emil Emergency"), (1, "Lena One")]
    bodies = {m.to[0]: m.body for m in outbox}
    assert "response target is 2 min" in bodies["emergency@example.com"]
    assert "response target is 5 min" in bodies["l1@example.com"]
    # Both levels get their own target before L2 is called: the longer of the two.
    assert IncidentEscalation.objects.get(incident=incident).next_escalation_at == later(5)


def test_a_drill_calls_nobody(operator, system, staging, roster, outbox):
    drill = declare(operator, system, staging, is_drill=True)
    assert escalation.escalation_start(drill.pk) is None
    assert escalation.escalate_due(later(60)) == 0
    assert len(outbox) == 0
    assert incident_report(drill)["notifications"]["calls"] == []


def test_the_declaration_queues_the_start_after_it_commits(operator, system, staging, roster, redis_conn,
                                                           django_capture_on_commit_callbacks):
    queue = queues.get_queue("default")
    queue.empty()
    with django_capture_on_commit_callbacks(execute=True):
        incident = declare(operator, system, staging)
    jobs = [job for job in queue.jobs if job.func_name == escalation.START_JOB]
    assert [job.args for job in jobs] == [(str(incident.pk),)]
    queue.empty()


# --- escalating ----------------------------------------------------------------------------------

def test_a_level_that_does_not_acknowledge_escalates_to_the_next_once(
        operator, system, staging, hooks, webhook_receiver, outbox, panel_clock):
    incident = declare(operator, system, staging)
    escalation.escalation_start(incident.pk)
    assert escalation.escalate_due(later(4.9)) == 0

    panel_clock.advance(timedelta(minutes=5))
    assert escalation.escalate_due() == 1
    assert escalation.escalate_due() == 0, "the same step is never called twice"
    send_due()
    assert called(incident) == [(1, "Lena One"), (2, "Leo Two")]
    assert ["escalated to L2" in p["title"] and "response target is 15 min" in p["message"]
            for p in webhook_receiver.posts] == [False, True]
    assert [e.details["levels"] for e in events("incident.escalated")] == [["L2"]]

    panel_clock.advance(timedelta(minutes=15))
    assert escalation.escalate_due() == 1
    assert escalation.escalate_due(later(29)) == 0
    assert escalation.escalate_due(later(30)) == 1
    assert called(incident)[-2:] == [(3, "Lara Three"), (4, "Emil Emergency")]
    assert IncidentEscalation.objects.get(incident=incident).ended_reason == "every level of the chain was called"
    assert escalation.escalate_due(later(600)) == 0


def test_a_lost_start_job_is_made_up_by_the_sweep_and_a_start_is_idempotent(operator, system, staging, roster):
    incident = declare(operator, system, staging)
    escalation.escalate_due()
    escalation.escalation_start(incident.pk)
    assert called(incident) == [(1, "Lena One")]
    assert len(events("incident.escalation_started")) == 1


def test_a_recovered_or_closed_incident_stops_escalating(operator, system, staging, roster, panel_clock):
    incident = declare(operator, system, staging)
    escalation.escalation_start(incident.pk)
    Incident.objects.filter(pk=incident.pk).update(state=Incident.State.RECOVERED, recovered_at=timezone.now())
    panel_clock.advance(timedelta(minutes=6))
    assert escalation.escalate_due() == 0
    assert called(incident) == [(1, "Lena One")]
    assert [e.details["reason"] for e in events("incident.escalation_ended")] == ["the incident is recovered"]


# --- acknowledging -------------------------------------------------------------------------------

def test_an_acknowledgement_on_the_page_stops_the_escalation(clients, operator, system, staging, roster,
                                                               panel_clock):
    incident = declare(operator, system, staging)
    escalation.escalation_start(incident.pk)
    panel_clock.advance(timedelta(minutes=2))
    answer = clients["operator"].post(reverse("compliance:incident-acknowledge", args=[incident.pk]))
    assert answer.status_code == 302

    panel_clock.advance(timedelta(hours=2))
    assert escalation.escalate_due() == 0
    assert called(incident) == [(1, "Lena One")]
    row = IncidentEscalation.objects.get(incident=incident)
    assert (row.acknowledged_by, row.acknowledged_via) == (operator, "panel")
    assert [(e.actor_username, e.details["via"], e.details["seconds_after_start"])
            for e in events("incident.acknowledged")] == [("operator", "panel", 120.0)]
    # The page shows it.
    page = clients["auditor"].get(reverse("restores:incident-detail", args=[incident.pk])).content.decode()
    assert "Acknowledged</strong> by operator" in page and "Lena One" in page


def test_the_api_acknowledges_once_and_answers_409_after(clients, manager, operator, system, staging, roster):
    incident = declare(operator, system, staging)
    escalation.escalation_start(incident.pk)
    url = f"/api/v1/incidents/{incident.pk}/acknowledge"
    first = clients["manager"].post(url)
    assert first.status_code == 200, first.content
    assert first.json()["notifications"]["acknowledged_by"] == "manager"
    assert first.json()["notifications"]["acknowledged_via"] == "api"
    again = clients["operator"].post(url)
    assert again.status_code == 409 and "Already acknowledged by manager" in again.json()["detail"]
    assert clients["operator"].post("/api/v1/incidents/00000000-0000-0000-0000-000000000000/acknowledge"
                                    ).status_code == 404


def test_the_link_acknowledges_once_and_records_when(client, operator, system, staging, roster, outbox,
                                                     panel_clock):
    incident = declare(operator, system, staging)
    escalation.escalation_start(incident.pk)
    link = next(line for line in outbox[0].body.splitlines() if "/incidents/ack/" in line)
    path = link.split("://", 1)[1].split("/", 1)[1]

    assert client.get("/" + path).status_code == 200, "a GET (a mail scanner) changes nothing"
    assert IncidentEscalation.objects.get(incident=incident).acknowledged_at is None
    panel_clock.advance(timedelta(seconds=90))
    assert client.post("/" + path).status_code == 200
    call = IncidentCall.objects.get(escalation__incident=incident)
    assert call.acknowledged_at == later(0)
    row = IncidentEscalation.objects.get(incident=incident)
    assert (row.acknowledged_by_contact.name, row.acknowledged_via, row.next_escalation_at) == (
        "Lena One", "link", None)

    reused = client.post("/" + path)
    assert reused.status_code == 409
    assert [e.details["reason"] for e in events("incident.ack_refused")] == ["This link was already used."]
    report = incident_report(incident)["notifications"]
    assert report["calls"][0]["acknowledged_at"] == call.acknowledged_at.isoformat()
    assert report["calls"][0]["acknowledged_seconds"] == 90.0
    assert {d["channel"]: d["status"] for d in report["calls"][0]["deliveries"]} == {"email": "sent"}


def test_forged_foreign_and_expired_tokens_do_nothing_and_are_audited(client, operator, system, staging, roster,
                                                                      panel_clock):
    incident = declare(operator, system, staging)
    escalation.escalation_start(incident.pk)
    call = IncidentCall.objects.get(escalation__incident=incident)
    before = IncidentEscalation.objects.get(incident=incident).next_escalation_at
    good = escalation.ack_token(call)
    alert = alert_raise(kind="test", severity="critical", subject="s", message="m", dedup_key="k")
    tokens = {
        "forged": signing.dumps({"c": call.pk}, key="not-the-panel-secret", salt=escalation.ACK_SALT),
        "tampered": good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
        "an alert's link": alert_ack_token(alert.notifications.first()),
        "another call": signing.dumps({"c": call.pk + 1000}, salt=escalation.ACK_SALT),
    }
    for name, token in tokens.items():
        assert client.post(reverse("compliance:incident-ack-link", args=[token])).status_code == 409, name
    panel_clock.advance(timedelta(hours=25))
    assert client.post(reverse("compliance:incident-ack-link", args=[good])).status_code == 409

    row = IncidentEscalation.objects.get(incident=incident)
    assert (row.acknowledged_at, row.next_escalation_at) == (None, before)
    assert IncidentCall.objects.get(pk=call.pk).acknowledged_at is None
    reasons = [e.details["reason"] for e in events("incident.ack_refused")]
    assert reasons[:4] == ["This link is not valid."] * 4
    assert reasons[4].startswith("This link has expired")
    assert events("incident.acknowledged") == []


def test_a_link_of_a_closed_incident_is_refused(client, operator, system, staging, roster):
    incident = declare(operator, system, staging)
    escalation.escalation_start(incident.pk)
    token = escalation.ack_token(IncidentCall.objects.get(escalation__incident=incident))
    Incident.objects.filter(pk=incident.pk).update(state=Incident.State.CLOSED)
    assert client.post(reverse("compliance:incident-ack-link", args=[token])).status_code == 409
    assert [e.details["reason"] for e in events("incident.ack_refused")] == [
        "This incident is closed; nothing more to do."]


def test_auditors_and_outsiders_cannot_acknowledge_and_are_audited(clients, operator, system, staging, roster):
    incident = declare(operator, system, staging)
    escalation.escalation_start(incident.pk)
    for role in ("auditor", "outsider"):
        assert clients[role].post(f"/api/v1/incidents/{incident.pk}/acknowledge").status_code == 403, role
        page = clients[role].post(reverse("compliance:incident-acknowledge", args=[incident.pk]))
        assert page.status_code == 403, role
    denied = events("access.denied")
    assert sorted(e.actor_username for e in denied) == ["auditor", "auditor", "outsider", "outsider"]
    # The auditor may read the panel: the service names what was refused.
    assert [e.details.get("attempted") for e in denied if e.actor_username == "auditor"] == [
        "incident.acknowledge"] * 2
    assert IncidentEscalation.objects.get(incident=incident).acknowledged_at is None
    assert events("incident.acknowledged") == []


def test_the_report_json_says_who_was_notified_and_when_they_acknowledged(clients, operator, system, staging,
                                                                         hooks, outbox, panel_clock):
    incident = declare(operator, system, staging)
    escalation.escalation_start(incident.pk)
    panel_clock.advance(timedelta(minutes=5))
    escalation.escalate_due()
    send_due()
    clients["manager"].post(f"/api/v1/incidents/{incident.pk}/acknowledge")
    report = clients["auditor"].get(f"/api/v1/incidents/{incident.pk}/report").json()["report"]["notifications"]
    assert [(c["level"], c["contact"], c["response_minutes"]) for c in report["calls"]] == [
        ("L1", "Lena One", 5), ("L2", "Leo Two", 15)]
    assert [sorted((d["channel"], d["status"]) for d in c["deliveries"]) for c in report["calls"]] == [
        [("email", "sent"), ("webhook", "sent")]] * 2
    assert report["acknowledged_by"] == "manager" and report["steps_called"] == 2
    printable = clients["auditor"].get(reverse("restores:incident-report", args=[incident.pk])).content.decode()
    assert "Notified and acknowledged" in printable and "Leo Two" in printable


# --- in real workers -------------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_webhook_receiver_gets_the_declaration_then_the_escalation_when_l1_does_not_acknowledge(
        client, clients, operator, system, staging, redis_conn, webhook_receiver, smtp_receiver, monkeypatch):
    """Real workers start and send; the panel clock of this process is moved past L1's target for the sweep."""
    from tests.support import rq_workers

    monkeypatch.setenv(HOOK_ENV, webhook_receiver.url)
    for level, name, minutes in (("l1", "Lena One", 5), ("l2", "Leo Two", 15), ("l3", "Lara Three", 30)):
        Contact.objects.create(level=level, name=name, email=f"{level}@example.com", response_minutes=minutes)
        NotificationChannel.objects.create(kind="webhook", level=level, url_ref=f"env:{HOOK_ENV}")
    env = {"EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": smtp_receiver.port, HOOK_ENV: webhook_receiver.url}
    target_right_grant(actor=None, target=staging, user=operator, right="restore_to_target")

    def wait_for(count):
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(webhook_receiver.posts) < count:
            time.sleep(0.2)
        return [p["title"] for p in webhook_receiver.posts]

    with rq_workers(["default"], env=env):
        answer = clients["operator"].post("/api/v1/incidents", {
            "system": system.name, "scenario": "database", "severity": "major", "target": staging.name},
            content_type="application/json")
        assert answer.status_code == 201, answer.content
        incident = Incident.objects.get(pk=answer.json()["id"])
        titles = wait_for(1)
        assert len(titles) == 1 and "MAJOR Incident declared" in titles[0]

        assert escalation.escalate_due(timezone.now() + timedelta(minutes=5, seconds=1)) == 1
        titles = wait_for(2)
        assert len(titles) == 2 and "escalated to L2" in titles[1]
        assert "response target is 15 min" in webhook_receiver.posts[1]["message"]

        l2 = IncidentCall.objects.get(escalation__incident=incident, level="l2")
        assert client.post(
            reverse("compliance:incident-ack-link", args=[escalation.ack_token(l2)])).status_code == 200
        assert escalation.escalate_due(timezone.now() + timedelta(hours=2)) == 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and Delivery.objects.filter(status="pending").exists():
            time.sleep(0.2)
    assert len(webhook_receiver.posts) == 2, "nobody is called after the acknowledgement"
    assert sorted(m.to[0] for m in smtp_receiver.messages) == ["l1@example.com", "l2@example.com"]
    report = incident_report(incident)["notifications"]
    assert [(c["level"], c["acknowledged_at"] is not None) for c in report["calls"]] == [("L1", False), ("L2", True)]
    assert report["acknowledged_by"] == "Leo Two" and report["acknowledged_via"] == "link"
