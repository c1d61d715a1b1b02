"""Alerts: one per condition, mailed up the roster on the panel clock, stopped by an acknowledgement."""

import re
import time
from datetime import timedelta

import pytest
from django.urls import reverse

from compliance.alerts import alert_acknowledge, alert_raise, alert_resolve, escalate_due
from compliance.models import Alert, AlertNotification, AuditEvent, Contact, Delivery
from drpanel import clock, queues
from tests.notify_helpers import free_port, send_due
from tests.support import assert_only_roles

pytestmark = pytest.mark.django_db
pytest_plugins = ["tests.compliance_fixtures", "tests.notify_support"]

L1, L2, L3, EMERGENCY = "l1@example.com", "l2@example.com", "l3@example.com", "emergency@example.com"


@pytest.fixture
def raise_alert(django_capture_on_commit_callbacks):
    """``alert_raise`` as the later phase calls it, with its after-commit mails actually sent."""

    def _raise(key="health.backups", severity="critical", **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return alert_raise(kind=kwargs.pop("kind", "health.critical"), severity=severity,
                               subject=kwargs.pop("subject", "Backup health is critical (40%)"),
                               message=kwargs.pop("message", "The newest full backup is 30 hours old."),
                               dedup_key=key, **kwargs)

    return _raise


def recipients(outbox) -> list[str]:
    return [address for message in outbox for address in message.to]


def ack_path(message) -> str:
    return re.search(r"https?://[^/\s]+(/alerts/ack/\S+)", message.body).group(1)


def test_a_critical_alert_mails_l1_at_once_with_an_acknowledge_link(roster, raise_alert, outbox):
    alert = raise_alert(evidence_url="/artifacts/42/")
    assert recipients(outbox) == [L1]
    message = outbox[0]
    assert message.subject == "[DR Panel] CRITICAL: Backup health is critical (40%)"
    assert "The newest full backup is 30 hours old." in message.body
    assert "/artifacts/42/" in message.body
    assert "/alerts/ack/" in message.body
    alert.refresh_from_db()
    assert alert.state == "open" and alert.escalation_step == 1
    assert alert.next_escalation_at == clock.now() + timedelta(minutes=5)
    notification = AlertNotification.objects.get()
    assert (notification.contact, notification.outcome, notification.channel) == (roster["l1"], "sent", "email")


def test_the_same_condition_opens_one_alert_until_it_is_resolved(roster, raise_alert, outbox):
    first = raise_alert()
    assert raise_alert().pk == first.pk
    assert recipients(outbox) == [L1]
    alert_resolve(dedup_key="health.backups")
    second = raise_alert()
    assert second.pk != first.pk
    assert Alert.objects.filter(dedup_key="health.backups").count() == 2


def test_l2_is_mailed_only_after_l1s_response_target(roster, raise_alert, panel_clock, outbox):
    raise_alert()
    panel_clock.advance(timedelta(minutes=4, seconds=59))
    assert escalate_due() == 0
    assert recipients(outbox) == [L1]
    panel_clock.advance(timedelta(seconds=1))
    assert escalate_due() == 1
    assert recipients(outbox) == [L1, L2]
    assert escalate_due() == 0, "a second run at the same time calls nobody new"
    assert recipients(outbox) == [L1, L2]


def test_the_chain_goes_on_to_l3_then_emergency_then_stops(roster, raise_alert, panel_clock, outbox):
    alert = raise_alert()
    panel_clock.advance(timedelta(minutes=5))
    escalate_due()
    panel_clock.advance(timedelta(minutes=14))
    escalate_due()
    assert recipients(outbox) == [L1, L2], "L2's target is 15 minutes"
    panel_clock.advance(timedelta(minutes=1))
    escalate_due()
    panel_clock.advance(timedelta(minutes=30))
    escalate_due()
    assert recipients(outbox) == [L1, L2, L3, EMERGENCY]
    alert.refresh_from_db()
    assert alert.escalation_step == 4 and alert.next_escalation_at is None
    panel_clock.advance(timedelta(hours=5))
    assert escalate_due() == 0
    assert "vendor@example.com" not in recipients(outbox)
    steps = [e.details["level"] for e in AuditEvent.objects.filter(action="alert.escalated").order_by("seq")]
    assert steps == ["L1", "L2", "L3", "Emergency"]


def test_acknowledging_in_the_panel_stops_the_escalation(roster, raise_alert, panel_clock, operator, outbox):
    alert = raise_alert()
    panel_clock.advance(timedelta(minutes=2))
    alert_acknowledge(actor=operator, alert=alert)
    panel_clock.advance(timedelta(hours=1))
    assert escalate_due() == 0
    assert recipients(outbox) == [L1]
    alert.refresh_from_db()
    assert (alert.state, alert.acknowledged_by, alert.acknowledged_at) == ("acknowledged", operator, clock.now()
                                                                          - timedelta(hours=1))
    event = AuditEvent.objects.get(action="alert.acknowledged")
    assert event.actor_username == "operator" and event.details["via"] == "panel"


def test_the_mailed_link_acknowledges_once_without_signing_in(roster, raise_alert, client, panel_clock, outbox):
    alert = raise_alert()
    path = ack_path(outbox[0])
    page = client.get(path)
    assert page.status_code == 200
    assert b"Acknowledge as Lena One" in page.content
    assert Alert.objects.get(pk=alert.pk).state == "open", "opening the link (a mail scanner) changes nothing"
    done = client.post(path)
    assert done.status_code == 200 and b"escalation has stopped" in done.content
    alert.refresh_from_db()
    assert alert.state == "acknowledged" and alert.acknowledged_by_contact == roster["l1"]
    event = AuditEvent.objects.get(action="alert.acknowledged")
    assert event.details["contact"] == "Lena One" and event.details["via"] == "link"
    assert client.post(path).status_code == 409
    panel_clock.advance(timedelta(hours=1))
    assert escalate_due() == 0 and recipients(outbox) == [L1]


def test_a_link_cannot_be_reused_after_a_later_alert_reopens(roster, raise_alert, client, panel_clock, outbox):
    raise_alert()
    path = ack_path(outbox[0])
    client.post(path)
    alert_resolve(dedup_key="health.backups")
    raise_alert()
    assert client.post(path).status_code == 409
    assert Alert.objects.get(state="open").acknowledged_at is None


def test_an_expired_or_forged_link_is_refused_and_audited(roster, raise_alert, client, panel_clock, settings, outbox):
    alert = raise_alert()
    path = ack_path(outbox[0])
    panel_clock.advance(timedelta(hours=settings.ALERT_ACK_LINK_HOURS, seconds=1))
    response = client.post(path)
    assert response.status_code == 409 and b"expired" in response.content
    forged = client.post(path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB"))
    assert forged.status_code == 409 and b"not valid" in forged.content
    assert Alert.objects.get(pk=alert.pk).state == "open"
    assert AuditEvent.objects.filter(action="alert.ack_link_refused", outcome="failure").count() == 2


def test_resolving_mails_everyone_who_was_notified(roster, raise_alert, panel_clock,
                                                   django_capture_on_commit_callbacks, outbox):
    alert = raise_alert()
    panel_clock.advance(timedelta(minutes=5))
    escalate_due()
    outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        alert_resolve(dedup_key="health.backups")
    assert sorted(recipients(outbox)) == [L1, L2]
    assert all(m.subject == "[DR Panel] RESOLVED: Backup health is critical (40%)" for m in outbox)
    alert.refresh_from_db()
    assert alert.state == "resolved" and alert.next_escalation_at is None
    panel_clock.advance(timedelta(hours=1))
    assert escalate_due() == 0
    assert alert_resolve(dedup_key="health.backups") is None, "nothing left to resolve"


def test_info_alerts_are_shown_but_not_mailed(roster, raise_alert, panel_clock, outbox):
    alert = raise_alert(key="contact.unverified:1", severity="info")
    panel_clock.advance(timedelta(days=1))
    escalate_due()
    assert outbox == []
    assert Alert.objects.get(pk=alert.pk).state == "open"


def test_levels_without_active_contacts_are_skipped(roster, raise_alert, panel_clock, outbox):
    Contact.objects.filter(level__in=["l1", "l2"]).update(active=False)
    raise_alert()
    assert recipients(outbox) == [L3]
    event = AuditEvent.objects.get(action="alert.escalated")
    assert event.details["skipped_levels"] == ["L1", "L2"] and event.details["level"] == "L3"


def test_with_nobody_on_the_roster_the_alert_still_shows_and_says_so(db, panel_clock, raise_alert, clients, outbox):
    alert = raise_alert()
    assert outbox == []
    assert AuditEvent.objects.filter(action="alert.escalation_ended").exists()
    page = clients["auditor"].get(reverse("compliance:alert-detail", args=[alert.pk]))
    assert b"nobody could be called" in page.content


def test_a_mail_that_cannot_be_sent_is_recorded_as_failed(roster, raise_alert, settings):
    # A real SMTP connection to a port where nothing listens.
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()
    raise_alert()
    assert send_due() == 1
    notification = AlertNotification.objects.get()
    assert notification.outcome == "failed" and notification.error
    event = AuditEvent.objects.get(action="alert.notified")
    assert event.outcome == "failure" and event.details["outcome"] == "failed"
    assert Delivery.objects.get().status == "retrying", "the mail is tried again after a backoff"


def test_every_alert_notification_acknowledgement_and_resolution_is_audited(roster, raise_alert, panel_clock,
                                                                             manager, smtp_receiver):
    alert = raise_alert()
    send_due()
    panel_clock.advance(timedelta(minutes=5))
    escalate_due()
    send_due()
    alert_acknowledge(actor=manager, alert=alert)
    alert_resolve(dedup_key="health.backups", actor=manager)
    actions = list(AuditEvent.objects.filter(object_type="compliance.alert").order_by("seq")
                   .values_list("action", flat=True))
    assert actions == ["alert.raised", "alert.escalated", "alert.notified", "alert.escalated", "alert.notified",
                       "alert.acknowledged", "alert.resolved"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_the_escalation_job_runs_in_a_real_worker_on_the_shifted_clock(redis_conn, smtp_receiver):
    """The worker's clock runs 10 minutes ahead, so L1's 5-minute target has passed there; the same
    worker sends both mails (the deliveries' jobs) to a real SMTP receiver."""
    from compliance.jobs import alerts_escalate_job
    from tests.support import rq_workers

    for level, name, email, minutes in [("l1", "Lena One", L1, 5), ("l2", "Leo Two", L2, 15)]:
        Contact.objects.create(level=level, name=name, email=email, response_minutes=minutes)
    alert_raise(kind="health.critical", severity="critical", subject="Backups are late", message="",
                dedup_key="health.backups")
    env = {"DRPANEL_CLOCK_OFFSET_SECONDS": 600, "EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": smtp_receiver.port}
    with rq_workers(["default"], env=env):
        job = queues.get_queue("default").enqueue(alerts_escalate_job)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
                job.get_status(refresh=True) not in ("finished", "failed")
                or AlertNotification.objects.filter(outcome__in=["pending", "sending"]).exists()):
            time.sleep(0.2)
    assert job.get_status() == "finished", job.latest_result()
    assert job.return_value() == 1
    sent = dict(AlertNotification.objects.values_list("contact__email", "outcome"))
    assert sent == {L1: "sent", L2: "sent"}
    assert sorted(m.to[0] for m in smtp_receiver.messages) == [L1, L2]


# --- pages and API ---------------------------------------------------------------------------

ALL_ROLES = {"operator", "manager", "auditor", "admin"}


def test_the_alert_pages_are_for_every_panel_role(clients, roster, raise_alert):
    alert = raise_alert()
    assert_only_roles(clients, "get", reverse("compliance:alert-list"), allowed=ALL_ROLES)
    assert_only_roles(clients, "get", reverse("compliance:alert-list") + "?state=resolved", allowed=ALL_ROLES)
    assert_only_roles(clients, "get", reverse("compliance:alert-detail", args=[alert.pk]), allowed=ALL_ROLES)
    assert_only_roles(clients, "get", "/api/v1/alerts", allowed=ALL_ROLES)


def test_acknowledging_is_for_operators_managers_and_admins(clients, roster, raise_alert):
    alert = raise_alert()
    url = reverse("compliance:alert-acknowledge", args=[alert.pk])
    assert_only_roles(clients, "post", url, allowed={"operator", "manager", "admin"})
    alert.refresh_from_db()
    assert alert.acknowledged_by.username == "operator", "the first allowed role acknowledged it"


def test_the_acknowledge_button_on_the_list_stops_the_escalation(clients, roster, raise_alert, panel_clock):
    alert = raise_alert()
    page = clients["manager"].get(reverse("compliance:alert-list")).content.decode()
    assert f'action="/alerts/{alert.pk}/acknowledge"' in page
    assert 'action="/alerts/' not in clients["auditor"].get(reverse("compliance:alert-list")).content.decode()
    response = clients["manager"].post(reverse("compliance:alert-acknowledge", args=[alert.pk]), follow=True)
    assert b"escalation has stopped" in response.content
    again = clients["manager"].post(reverse("compliance:alert-acknowledge", args=[alert.pk]), follow=True)
    assert b"already acknowledged" in again.content
    panel_clock.advance(timedelta(hours=1))
    assert escalate_due() == 0


def test_the_alert_list_filters_by_state(clients, roster, raise_alert):
    raise_alert(key="a", subject="Alpha is late")
    raise_alert(key="b", subject="Bravo is late")
    alert_resolve(dedup_key="b")
    open_page = clients["auditor"].get(reverse("compliance:alert-list")).content
    resolved_page = clients["auditor"].get(reverse("compliance:alert-list") + "?state=resolved").content
    assert b"Alpha is late" in open_page and b"Bravo is late" not in open_page
    assert b"Bravo is late" in resolved_page and b"Alpha is late" not in resolved_page


def test_the_api_lists_alerts_by_state(clients, roster, raise_alert):
    raise_alert()
    body = clients["auditor"].get("/api/v1/alerts?state=open").json()
    assert [a["subject"] for a in body["results"]] == ["Backup health is critical (40%)"]
    assert body["results"][0]["escalation_step"] == 1
    assert clients["auditor"].get("/api/v1/alerts?state=resolved").json() == {"results": [], "next": None}
    assert clients["auditor"].get("/api/v1/alerts?state=bogus").status_code == 400


def _in_threads(func, count: int) -> list:
    """Run ``func`` in ``count`` threads released at the same moment; each gets its own connection."""
    import threading

    from django.db import connection

    barrier, results = threading.Barrier(count), []

    def run():
        try:
            barrier.wait()
            results.append(("ok", func()))
        except Exception as exc:
            results.append(("error", exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


@pytest.mark.django_db(transaction=True)
def test_concurrent_link_clicks_acknowledge_once(panel_clock):
    from compliance.alerts import ack_token, alert_acknowledge_by_link

    Contact.objects.create(level="l1", name="Lena One", email=L1, response_minutes=5)
    alert_raise(kind="health.critical", severity="critical", subject="Late", message="", dedup_key="k")
    token = ack_token(AlertNotification.objects.get())
    results = _in_threads(lambda: alert_acknowledge_by_link(token=token), 6)
    assert [kind for kind, _ in results].count("ok") == 1, results
    assert AuditEvent.objects.filter(action="alert.acknowledged").count() == 1
    assert AuditEvent.objects.filter(action="alert.ack_link_refused").count() == 5


@pytest.mark.django_db(transaction=True)
def test_concurrent_escalation_runs_call_each_level_once(panel_clock, outbox):
    for level, name, email, minutes in [("l1", "Lena One", L1, 5), ("l2", "Leo Two", L2, 15)]:
        Contact.objects.create(level=level, name=name, email=email, response_minutes=minutes)
    alert_raise(kind="health.critical", severity="critical", subject="Late", message="", dedup_key="k")
    panel_clock.advance(timedelta(minutes=5))
    results = _in_threads(escalate_due, 4)
    assert sorted(value for _, value in results) == [0, 0, 0, 1], results
    assert sorted(AlertNotification.objects.values_list("contact__email", flat=True)) == [L1, L2]
    assert sorted(m.to[0] for m in outbox) == [L1, L2]
