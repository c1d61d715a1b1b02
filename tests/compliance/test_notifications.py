"""Notifications: real apprise sends to a JSON webhook and an SMTP server on loopback, a hard timeout
against a server that never answers, retries with backoff, and channel credentials never shown."""

import secrets
import time
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from compliance.alerts import alert_raise
from compliance.models import AlertNotification, AuditEvent, Contact, Delivery, NotificationChannel
from compliance.notifications import channel_create, delivery_send, notify
from drpanel import queues
from drpanel.permissions import Denied
from tests.notify_helpers import free_port

pytestmark = pytest.mark.django_db
pytest_plugins = ["tests.compliance_fixtures", "tests.notify_support"]

HOOK_ENV = "DRPANEL_SECRET_TEST_HOOK"


@pytest.fixture
def hook_channel(roster, manager, webhook_receiver, monkeypatch):
    """A JSON webhook for everyone at L1, its URL in the deployment's environment."""
    monkeypatch.setenv(HOOK_ENV, webhook_receiver.url)
    return channel_create(actor=manager, kind="webhook", level="l1", label="ops hook", url_ref=f"env:{HOOK_ENV}")


def test_an_alert_reaches_a_webhook_receiver_and_the_l1_mailbox(roster, hook_channel, webhook_receiver, outbox,
                                                                 django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        alert_raise(kind="health.critical", severity="critical", subject="Backups are late", message="30 h old",
                    dedup_key="k")
    assert [m.to for m in outbox] == [["l1@example.com"]]
    assert [(p["title"], "30 h old" in p["message"]) for p in webhook_receiver.posts] == [
        ("[DR Panel] CRITICAL: Backups are late", True)]
    assert sorted(Delivery.objects.values_list("kind", "status", "event")) == [
        ("email", "sent", "alert.opened"), ("webhook", "sent", "alert.opened")]
    assert AlertNotification.objects.get().outcome == "sent"
    assert AuditEvent.objects.filter(action="notification.sent").count() == 2


def test_notify_makes_one_delivery_per_channel_and_a_level_channel_once(roster, hook_channel, manager,
                                                                       webhook_receiver, outbox):
    second = Contact.objects.create(level="l1", name="Lisa Also", email="l1b@example.com", response_minutes=5)
    deliveries = notify(event="approval.waiting", contacts=[roster["l1"], second], subject="Approve restore #7",
                        body="A production restore waits.", details={"run": 7}, actor=manager)
    assert sorted((d.kind, d.contact.name) for d in deliveries) == [
        ("email", "Lena One"), ("email", "Lisa Also"), ("webhook", "Lena One")]
    assert all(d.status == "pending" for d in deliveries)
    assert sorted(m.to[0] for m in outbox) == ["l1@example.com", "l1b@example.com"]
    assert len(webhook_receiver.posts) == 1
    queued = AuditEvent.objects.get(action="notification.queued")
    assert queued.actor_username == "manager" and len(queued.details["deliveries"]) == 3


def test_an_unknown_event_is_refused(roster):
    with pytest.raises(ValueError, match="unknown notification event"):
        notify(event="alert.oppened", contacts=[roster["l1"]], subject="x", body="y")


def test_a_channel_subscribed_to_some_events_gets_only_those(roster, manager, webhook_receiver, monkeypatch):
    monkeypatch.setenv(HOOK_ENV, webhook_receiver.url)
    channel_create(actor=manager, kind="webhook", contact=roster["l2"], url_ref=f"env:{HOOK_ENV}",
                   events=["certification.due"])
    assert [d.kind for d in notify(event="alert.opened", contacts=[roster["l2"]], subject="s", body="b")] == ["email"]
    assert sorted(d.kind for d in notify(event="certification.due", contacts=[roster["l2"]], subject="s",
                                         body="b")) == ["email", "webhook"]


def test_a_server_that_accepts_and_never_answers_costs_one_timeout(roster, settings, silent_server,
                                                                   panel_clock):
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.NOTIFY_TIMEOUT_SECONDS = "127.0.0.1", silent_server.port, 2
    [delivery] = notify(event="alert.opened", contacts=[roster["l1"]], subject="s", body="b")
    started = time.monotonic()
    assert delivery_send(delivery.pk) == "retrying"
    # The send was stopped by the panel, not by the mail library's own (15 s) timeout nor the queue's (6 h).
    assert time.monotonic() - started < 60
    assert silent_server.accepted >= 1
    delivery.refresh_from_db()
    assert delivery.last_error == "no answer within 2 s: the send was stopped"
    assert delivery.attempts == 1 and delivery.claimed_until is None


def test_a_hanging_webhook_is_stopped_too(roster, manager, settings, silent_server, monkeypatch, panel_clock):
    settings.NOTIFY_TIMEOUT_SECONDS = 2
    monkeypatch.setenv(HOOK_ENV, f"json://127.0.0.1:{silent_server.port}/hook")
    channel_create(actor=manager, kind="webhook", contact=roster["l1"], url_ref=f"env:{HOOK_ENV}")
    webhook = [d for d in notify(event="alert.opened", contacts=[roster["l1"]], subject="s", body="b")
               if d.kind == "webhook"][0]
    assert delivery_send(webhook.pk) == "retrying"
    assert silent_server.accepted >= 1


def test_failures_are_retried_with_a_doubling_wait_then_given_up(roster, hook_channel, webhook_receiver, settings,
                                                                 panel_clock):
    settings.NOTIFY_MAX_ATTEMPTS, settings.NOTIFY_RETRY_SECONDS = 3, 60
    webhook_receiver.status = 500
    [delivery] = [d for d in notify(event="alert.opened", contacts=[roster["l1"]], subject="s", body="b")
                  if d.kind == "webhook"]
    start = panel_clock.now()
    assert delivery_send(delivery.pk) == "retrying"
    delivery.refresh_from_db()
    assert delivery.next_attempt_at == start + timedelta(seconds=60) and delivery.last_error
    assert delivery_send(delivery.pk) is None, "not due yet"
    panel_clock.advance(timedelta(seconds=60))
    assert delivery_send(delivery.pk) == "retrying"
    delivery.refresh_from_db()
    assert delivery.next_attempt_at == panel_clock.now() + timedelta(seconds=120)
    panel_clock.advance(timedelta(seconds=120))
    assert delivery_send(delivery.pk) == "failed"
    panel_clock.advance(timedelta(hours=2))
    assert delivery_send(delivery.pk) is None, "a failed delivery is never tried again"
    assert len(webhook_receiver.posts) == 3
    assert AuditEvent.objects.filter(action="notification.retrying").count() == 2
    assert AuditEvent.objects.get(action="notification.failed").details["attempts"] == 3


def test_a_recovering_receiver_gets_the_retry(roster, hook_channel, webhook_receiver, panel_clock):
    webhook_receiver.status = 503
    [delivery] = [d for d in notify(event="alert.opened", contacts=[roster["l1"]], subject="s", body="b")
                  if d.kind == "webhook"]
    assert delivery_send(delivery.pk) == "retrying"
    webhook_receiver.status = 200
    panel_clock.advance(timedelta(minutes=5))
    assert delivery_send(delivery.pk) == "sent"
    delivery.refresh_from_db()
    assert delivery.attempts == 2 and delivery.sent_at == panel_clock.now()


def test_the_sweep_queues_a_due_delivery_once_and_again_only_when_its_job_was_lost(roster, hook_channel,
                                                                                   webhook_receiver, redis_conn,
                                                                                   panel_clock,
                                                                                   django_capture_on_commit_callbacks):
    from compliance.notifications import deliveries_retry_due as sweep
    from compliance.notifications import job_timeout

    def deliveries_retry_due() -> int:
        # django-rq queues on commit inside a transaction, as this test runs; the minute job runs outside one.
        with django_capture_on_commit_callbacks(execute=True):
            return sweep()

    queue = queues.get_queue("default")
    webhook_receiver.status = 500
    deliveries = notify(event="alert.opened", contacts=[roster["l1"]], subject="s", body="b")
    assert deliveries_retry_due() == 0, "just queued (on commit) by notify"
    [webhook] = [d for d in deliveries if d.kind == "webhook"]
    assert delivery_send(webhook.pk) == "retrying"
    panel_clock.advance(timedelta(seconds=59))
    assert deliveries_retry_due() == 0, "the retry is not due yet"
    panel_clock.advance(timedelta(seconds=1))
    assert deliveries_retry_due() == 1 and deliveries_retry_due() == 0, "queued once, not every minute"
    assert [job.args for job in queue.jobs] == [(str(webhook.pk),)]
    panel_clock.advance(timedelta(seconds=2 * job_timeout() + 1))
    # Nobody ran either job (no worker): both are lost, and queued again.
    assert deliveries_retry_due() == 2


def test_a_job_whose_delivery_row_is_missing_fails_loudly():
    with pytest.raises(Delivery.DoesNotExist):
        delivery_send("00000000-0000-0000-0000-000000000000")


# --- credentials ------------------------------------------------------------------------------

def test_the_channel_url_and_its_token_are_never_shown(roster, manager, clients, monkeypatch, panel_clock):
    token = f"tok-{secrets.token_hex(12)}"
    port = free_port()  # nothing listens: the delivery fails, and its error is stored
    monkeypatch.setenv(HOOK_ENV, f"json://hook:{token}@127.0.0.1:{port}/{token}/path")
    channel = channel_create(actor=manager, kind="webhook", level="l1", url_ref=f"env:{HOOK_ENV}")
    [delivery] = [d for d in notify(event="alert.opened", contacts=[roster["l1"]], subject="s", body="b")
                  if d.kind == "webhook"]
    assert delivery_send(delivery.pk) == "retrying"
    delivery.refresh_from_db()
    assert delivery.last_error
    page = clients["auditor"].get(reverse("compliance:notification-list")).content.decode()
    assert f"env:{HOOK_ENV}" in page and "retrying" in page
    audit = "".join(str(e.details) for e in AuditEvent.objects.all())
    for text in (page, audit, delivery.last_error, str(NotificationChannel.objects.values().get(pk=channel.pk))):
        assert token not in text


def test_a_reference_the_deployment_does_not_allow_is_refused(roster, manager):
    for ref in ("env:DATABASE_URL", "env:SECRET_KEY", "json://127.0.0.1/hook", "env:HOME"):
        with pytest.raises(ValidationError) as caught:
            channel_create(actor=manager, kind="webhook", level="l1", url_ref=ref)
        assert "url_ref" in caught.value.message_dict
    assert not NotificationChannel.objects.exists()


def test_a_reference_naming_another_kind_of_url_fails_without_sending(roster, manager, monkeypatch, webhook_receiver,
                                                                      panel_clock):
    monkeypatch.setenv(HOOK_ENV, webhook_receiver.url)
    channel_create(actor=manager, kind="slack", level="l1", url_ref=f"env:{HOOK_ENV}")
    [delivery] = [d for d in notify(event="alert.opened", contacts=[roster["l1"]], subject="s", body="b")
                  if d.kind == "slack"]
    assert delivery_send(delivery.pk) == "retrying"
    delivery.refresh_from_db()
    assert "does not name a Slack URL" in delivery.last_error
    assert webhook_receiver.posts == []


def test_a_channel_needs_one_owner_and_a_valid_target(roster, manager):
    with pytest.raises(ValidationError) as caught:
        channel_create(actor=manager, kind="email", contact=roster["l1"], level="l1", address="x@example.com")
    assert "level" in caught.value.message_dict
    with pytest.raises(ValidationError) as caught:
        channel_create(actor=manager, kind="email", level="l2", address="not-an-address")
    assert "address" in caught.value.message_dict


# --- who may change channels -------------------------------------------------------------------

def test_only_managers_and_admins_change_channels(roster, operator, auditor, admin):
    for user in (operator, auditor):
        with pytest.raises(Denied):
            channel_create(actor=user, kind="email", level="l1", address="x@example.com")
    channel_create(actor=admin, kind="email", level="l1", address="x@example.com")
    event = AuditEvent.objects.get(action="notification_channel.created")
    assert event.actor_username == "admin" and event.details["target"] == "x@example.com"


def test_the_page_is_for_every_role_and_its_form_for_editors(clients, roster):
    url = reverse("compliance:notification-list")
    for role in ("operator", "manager", "auditor", "admin"):
        assert clients[role].get(url).status_code == 200
    assert clients["outsider"].get(url).status_code == 403
    form = {"kind": "email", "level": "l2", "address": "pager@example.com"}
    assert clients["operator"].post(url, form).status_code == 403
    assert AuditEvent.objects.filter(action="access.denied", actor_username="operator").exists()
    assert not NotificationChannel.objects.exists()
    assert clients["manager"].post(url, form).status_code == 302
    bad = clients["manager"].post(url, {"kind": "webhook", "level": "l2", "url_ref": "env:DATABASE_URL"})
    assert bad.status_code == 400 and b"DRPANEL_SECRET_ENV_PREFIXES" in bad.content
    channel = NotificationChannel.objects.get()
    assert clients["operator"].post(reverse("compliance:channel-active", args=[channel.pk]),
                                    {"active": "0"}).status_code == 403
    assert clients["manager"].post(reverse("compliance:channel-active", args=[channel.pk]),
                                   {"active": "0"}).status_code == 302
    channel.refresh_from_db()
    assert not channel.active
    assert AuditEvent.objects.get(action="notification_channel.updated").details["changed"] == {"active": [True, False]}


def test_a_test_message_goes_through_the_channel(clients, roster, outbox, django_capture_on_commit_callbacks):
    clients["manager"].post(reverse("compliance:notification-list"),
                            {"kind": "email", "level": "l3", "address": "pager@example.com"})
    channel = NotificationChannel.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        assert clients["manager"].post(reverse("compliance:channel-test", args=[channel.pk])).status_code == 302
    assert [(m.to, m.subject) for m in outbox] == [(["pager@example.com"], "[DR Panel] Test notification")]


# --- in a real worker -------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_hanging_server_does_not_hold_the_worker(redis_conn, webhook_receiver, silent_server, monkeypatch):
    """One worker: a delivery to a server that never answers, then one to a live webhook; both end."""
    from tests.support import rq_workers

    monkeypatch.setenv(HOOK_ENV, webhook_receiver.url)
    contact = Contact.objects.create(level="l1", name="Lena One", email="l1@example.com", response_minutes=5)
    NotificationChannel.objects.create(kind="webhook", contact=contact, url_ref=f"env:{HOOK_ENV}")
    env = {"EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": silent_server.port, "DRPANEL_NOTIFY_TIMEOUT_SECONDS": 2,
           HOOK_ENV: webhook_receiver.url}
    notify(event="alert.opened", contacts=[contact], subject="Late", body="b")
    with rq_workers(["default"], env=env):
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and Delivery.objects.filter(status="pending").exists():
            time.sleep(0.2)
    assert dict(Delivery.objects.values_list("kind", "status")) == {"email": "retrying", "webhook": "sent"}
    assert len(webhook_receiver.posts) == 1
    assert queues.get_queue("default").count == 0
