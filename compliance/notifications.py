"""Notifications: channels per contact and per roster level, and deliveries through apprise.

The public service other code calls (alerts, approvals, certification, incidents):

- ``notify(*, event, contacts, subject, body, details=None, actor=None) -> list[Delivery]``
  creates one ``Delivery`` per channel of each contact (its own email address, its channels,
  and the channels of its roster level, each level channel once per call) and queues each on
  commit (``compliance.jobs.delivery_send_job``, by dotted path).

A delivery is one apprise send in a child process killed after ``NOTIFY_TIMEOUT_SECONDS``
(``compliance.notify_transport``): a hanging mail server or webhook costs a worker that long,
never the queue's timeout. A failed send is retried after ``NOTIFY_RETRY_SECONDS``, doubling
(at most an hour), ``NOTIFY_MAX_ATTEMPTS`` times in all; the minute job
``deliveries_retry_due`` queues what is due (and what a lost enqueue left pending).

Credentials: an email channel is an address (the SMTP server and its password are the
deployment's ``EMAIL_*`` settings); every other channel names its apprise URL by a secret
reference (``drpanel.secrets``: ``env:DRPANEL_SECRET_...`` or ``file:/...``), resolved by the
worker at send time. The URL (a webhook token, a routing key) is never in the database, so no
page, API answer, audit event, log or database backup can show it; errors are scrubbed of it.

Channels are changed by managers and admins (``Cap.EDIT_CONTACTS``), each change audited.
"""

import logging
import uuid
from datetime import timedelta
from urllib.parse import quote, urlencode

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import F, Q

from compliance import notify_transport
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from compliance.models import AlertNotification, Contact, Delivery, NotificationChannel
from drpanel import clock, queues, secrets
from drpanel.permissions import Cap, require_cap
from drpanel.scrub import scrub

log = logging.getLogger(__name__)

# Every event a notification can be about; a channel may subscribe to some of them.
EVENTS = {
    "alert.opened": "An alert opened (its first level is called).",
    "alert.escalated": "Nobody acknowledged an alert in time: the next level is called.",
    "alert.resolved": "An alert's condition is healthy again.",
    "approval.waiting": "A production restore or a four-eyes change waits for someone who may approve it.",
    "certification.due": "The monthly DR certification is due and not signed.",
    "incident.declared": "An incident was declared on a system.",
    "incident.escalated": "An incident's level did not acknowledge in time.",
    "channel.test": "A manager or admin sent a test through one channel.",
}

# What the URL a reference names must start with, per kind: a reference meant for Slack cannot
# make the panel post to some other service.
URL_SCHEMES = {
    NotificationChannel.Kind.SLACK: ("slack://", "https://hooks.slack.com/"),
    NotificationChannel.Kind.TEAMS: ("msteams://", "workflow://", "workflows://", "https://"),
    NotificationChannel.Kind.PAGERDUTY: ("pagerduty://",),
    NotificationChannel.Kind.WEBHOOK: ("json://", "jsons://"),
}
RETRY_CAP_SECONDS = 3600


def job_timeout() -> int:
    """The queue's limit for one delivery job: the child's start, the send's own timeout, and a margin."""
    return notify_transport.START_SECONDS + settings.NOTIFY_TIMEOUT_SECONDS + 30
SEND_JOB = "compliance.jobs.delivery_send_job"


class DeliveryError(Exception):
    """A delivery that cannot even be attempted (its reference cannot be resolved, a wrong URL kind)."""


# --- channels ---------------------------------------------------------------------------------

def _clean_channel(channel: NotificationChannel) -> None:
    errors = {}
    if bool(channel.contact_id) == bool(channel.level):
        errors["level"] = "A channel belongs to one contact or to one roster level."
    if channel.kind not in NotificationChannel.Kind.values:
        errors["kind"] = f"Choose one of {', '.join(NotificationChannel.Kind.values)}."
    elif channel.kind == NotificationChannel.Kind.EMAIL:
        try:
            validate_email(channel.address)
        except ValidationError:
            errors["address"] = "An email channel needs a valid address."
        if channel.url_ref:
            errors["url_ref"] = "An email channel is an address; the mail server is the deployment's."
    else:
        if channel.address:
            errors["address"] = "Only email channels have an address."
        try:
            channel.url_ref = secrets.validate(channel.url_ref)
        except secrets.SecretReferenceError as exc:
            errors["url_ref"] = f"{exc}. Put the channel's URL in the deployment and name it here."
    unknown = set(channel.events) - set(EVENTS)
    if not isinstance(channel.events, list) or unknown:
        errors["events"] = f"Unknown events: {', '.join(sorted(map(str, unknown)))}."
    if errors:
        raise ValidationError(errors)


def _channel_facts(channel: NotificationChannel) -> dict:
    """What the audit log keeps of a channel: never a URL, only the reference's name."""
    return {"kind": channel.kind, "label": channel.label, "level": channel.level or None,
            "contact": channel.contact.name if channel.contact_id else None,
            "target": channel.shown_target, "events": channel.events, "active": channel.active}


def channel_create(*, actor, kind: str, contact: Contact | None = None, level: str = "", label: str = "",
                   address: str = "", url_ref: str = "", events: list | None = None) -> NotificationChannel:
    """Add a channel to a contact or a roster level. ``ValidationError`` names the bad field."""
    require_cap(actor, Cap.EDIT_CONTACTS, action="notification_channel.create")
    now = clock.now()
    channel = NotificationChannel(kind=kind, contact=contact, level=level or "", label=label[:100],
                                  address=(address or "").strip(), url_ref=(url_ref or "").strip(),
                                  events=list(events or []), created_at=now, updated_at=now)
    _clean_channel(channel)
    with transaction.atomic():
        channel.save(force_insert=True)
        audit_record(actor=actor, action=AuditAction.NOTIFICATION_CHANNEL_CREATED, obj=channel,
                     details=_channel_facts(channel))
    return channel


def channel_set_active(*, actor, channel: NotificationChannel, active: bool) -> NotificationChannel:
    """Switch a channel off (nothing more is sent through it) or on again; its deliveries stay."""
    require_cap(actor, Cap.EDIT_CONTACTS, obj=channel, action="notification_channel.update")
    with transaction.atomic():
        current = NotificationChannel.objects.select_for_update().get(pk=channel.pk)
        if current.active == active:
            return current
        current.active = active
        current.updated_at = clock.now()
        current.save(update_fields=["active", "updated_at"])
        audit_record(actor=actor, action=AuditAction.NOTIFICATION_CHANNEL_UPDATED, obj=current,
                     details={**_channel_facts(current), "changed": {"active": [not active, active]}})
    return current


def channel_test(*, actor, channel: NotificationChannel) -> Delivery:
    """Send a test message through one channel now (queued like any delivery)."""
    require_cap(actor, Cap.EDIT_CONTACTS, obj=channel, action="notification_channel.test")
    with transaction.atomic():
        delivery = _create(event="channel.test", channel=channel, kind=channel.kind, contact=channel.contact,
                           subject="[DR Panel] Test notification",
                           body=f"A test of the {channel.get_kind_display()} channel {channel.label or channel.pk}, "
                                f"sent by {actor.get_username()}.", details={}, now=clock.now())
        audit_record(actor=actor, action=AuditAction.NOTIFICATION_QUEUED, obj=channel, details={
            "event": "channel.test", "deliveries": [str(delivery.pk)]})
    return delivery


# --- notify -----------------------------------------------------------------------------------

def _create(*, event, channel, kind, contact, subject, body, details, now, alert_notification=None) -> Delivery:
    delivery = Delivery.objects.create(
        id=uuid.uuid4(), event=event, channel=channel, kind=kind, contact=contact, subject=subject[:200],
        body=body[:8000], details=details, created_at=now, next_attempt_at=now, queued_at=now,
        alert_notification=alert_notification)
    queues.enqueue_on_commit(SEND_JOB, str(delivery.pk), queue="default",
                             timeout=job_timeout())
    return delivery


def _channels_for(contact: Contact, event: str):
    wanted = (Q(contact=contact) | Q(level=contact.level, contact__isnull=True)) & Q(active=True)
    return [c for c in NotificationChannel.objects.filter(wanted).order_by("pk") if not c.events or event in c.events]


def notify(*, event: str, contacts, subject: str, body: str, details: dict | None = None,
           actor=None) -> list[Delivery]:
    """Queue ``event`` to every channel of ``contacts``; one ``Delivery`` per channel, sent after commit."""
    return notify_contacts(event=event, contacts=contacts, subject=subject, body=body, details=details, actor=actor)


def notify_contacts(*, event: str, contacts, subject: str, body: str, details: dict | None = None, actor=None,
                    alert_notifications: dict | None = None) -> list[Delivery]:
    """``notify``, plus (for alerts) the ``AlertNotification`` each contact's own mail carries the link of."""
    if event not in EVENTS:
        raise ValueError(f"unknown notification event {event!r}: declare it in compliance.notifications.EVENTS")
    details = dict(details or {})
    now = clock.now()
    deliveries: list[Delivery] = []
    seen: set[int] = set()
    with transaction.atomic():
        for contact in contacts:
            if not contact.active:
                continue
            if contact.email and contact.escalates:
                deliveries.append(_create(
                    event=event, channel=None, kind=NotificationChannel.Kind.EMAIL, contact=contact,
                    subject=subject, body=body, details=details, now=now,
                    alert_notification=(alert_notifications or {}).get(contact.pk)))
            for channel in _channels_for(contact, event):
                if channel.pk in seen:
                    continue
                seen.add(channel.pk)
                deliveries.append(_create(event=event, channel=channel, kind=channel.kind, contact=contact,
                                          subject=subject, body=body, details=details, now=now))
        if deliveries:
            audit_record(actor=actor, action=AuditAction.NOTIFICATION_QUEUED, object_type="compliance.delivery",
                         details={"event": event, "subject": subject[:200],
                                  "deliveries": [{"id": str(d.pk), "kind": d.kind, "contact": d.contact.name
                                                  if d.contact_id else None} for d in deliveries]})
    return deliveries


# --- sending ----------------------------------------------------------------------------------

def _email_url(address: str) -> str:
    """An apprise ``mailto://`` URL for one address through the deployment's SMTP server (``EMAIL_*``)."""
    auth = ""
    if settings.EMAIL_HOST_USER:
        auth = quote(settings.EMAIL_HOST_USER, safe="")
        if settings.EMAIL_HOST_PASSWORD:
            auth += ":" + quote(settings.EMAIL_HOST_PASSWORD, safe="")
        auth += "@"
    query = {"smtp": settings.EMAIL_HOST, "from": settings.DEFAULT_FROM_EMAIL, "to": address, "format": "text",
             "mode": "starttls" if settings.EMAIL_USE_TLS else "insecure"}
    return f"mailto://{auth}{settings.EMAIL_HOST}:{settings.EMAIL_PORT}?{urlencode(query)}"


def _url_for(delivery: Delivery) -> str:
    channel = delivery.channel
    if delivery.kind == NotificationChannel.Kind.EMAIL:
        address = channel.address if channel is not None else delivery.contact.email
        return _email_url(address)
    try:
        url = secrets.resolve(channel.url_ref)
    except secrets.SecretReferenceError as exc:
        raise DeliveryError(str(exc)) from None
    if not url.startswith(URL_SCHEMES[channel.kind]):
        raise DeliveryError(f"{channel.url_ref} does not name a {channel.get_kind_display()} URL "
                            f"(it must start with {' or '.join(URL_SCHEMES[channel.kind])})")
    return url


def retry_delay(attempts: int) -> timedelta:
    """The wait before attempt ``attempts + 1``: the base, doubled per failed attempt, at most an hour."""
    return timedelta(seconds=min(settings.NOTIFY_RETRY_SECONDS * 2 ** max(attempts - 1, 0), RETRY_CAP_SECONDS))


def delivery_send(delivery_id) -> str | None:
    """Attempt one delivery if it is due and nobody else holds it; return its new status (None: not ours)."""
    now = clock.now()
    lease = now + timedelta(seconds=2 * (settings.NOTIFY_TIMEOUT_SECONDS + notify_transport.START_SECONDS))
    # The claim is a conditional update: two workers (a queued job and the retry sweep) cannot both send.
    claimed = (Delivery.objects.filter(pk=delivery_id, next_attempt_at__lte=now,
                                       status__in=[Delivery.Status.PENDING, Delivery.Status.RETRYING])
               .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
               .update(claimed_until=lease, attempts=F("attempts") + 1))
    if not claimed:
        if not Delivery.objects.filter(pk=delivery_id).exists():
            # Loudly: a job without its row is another installation's or a lost transaction's.
            raise Delivery.DoesNotExist(f"no delivery {delivery_id}")
        return None
    delivery = Delivery.objects.select_related("channel", "contact").get(pk=delivery_id)
    url = ""
    try:
        url = _url_for(delivery)
        ok, detail = notify_transport.send(url, title=delivery.subject, body=delivery.body,
                                           timeout=settings.NOTIFY_TIMEOUT_SECONDS)
    except DeliveryError as exc:
        ok, detail = False, str(exc)
    error = "" if ok else _scrubbed(detail, url)
    if not ok:
        log.warning("delivery %s (%s) failed: %s", delivery.pk, delivery.kind, error)
    return _finish(delivery, ok=ok, error=error)


def _scrubbed(text: str, url: str) -> str:
    text = text or "the channel refused the notification"
    if url:
        text = text.replace(url, "***")
    lines = [line for line in scrub(text).splitlines() if line.strip()]
    return (" | ".join(lines[-3:]) or "failed")[:500]


def _finish(delivery: Delivery, *, ok: bool, error: str) -> str:
    now = clock.now()
    with transaction.atomic():
        if ok:
            delivery.status, delivery.sent_at, delivery.next_attempt_at = Delivery.Status.SENT, now, None
            action, outcome = AuditAction.NOTIFICATION_SENT, "success"
        elif delivery.attempts >= settings.NOTIFY_MAX_ATTEMPTS:
            delivery.status, delivery.next_attempt_at = Delivery.Status.FAILED, None
            action, outcome = AuditAction.NOTIFICATION_FAILED, "failure"
        else:
            delivery.status, delivery.next_attempt_at = Delivery.Status.RETRYING, now + retry_delay(delivery.attempts)
            action, outcome = AuditAction.NOTIFICATION_RETRYING, "failure"
        delivery.last_error = error
        delivery.claimed_until = None
        delivery.save(update_fields=["status", "sent_at", "next_attempt_at", "last_error", "claimed_until"])
        audit_record(actor=None, action=action, outcome=outcome, object_type="compliance.delivery",
                     object_id=str(delivery.pk), object_repr=str(delivery)[:200], details={
                         "event": delivery.event, "kind": delivery.kind, "channel_id": delivery.channel_id,
                         "contact": delivery.contact.name if delivery.contact_id else None,
                         "attempts": delivery.attempts, "status": delivery.status, "error": error,
                         "next_attempt_at": delivery.next_attempt_at})
        if delivery.alert_notification_id:
            _alert_mail_done(delivery)
    return delivery.status


def _alert_mail_done(delivery: Delivery) -> None:
    """An attempt of an alert's mail to a contact ended: the alert's notification row says how (audited)."""
    notification = AlertNotification.objects.select_for_update().get(pk=delivery.alert_notification_id)
    notification.outcome = (AlertNotification.Outcome.SENT if delivery.status == Delivery.Status.SENT
                            else AlertNotification.Outcome.FAILED)
    notification.error = delivery.last_error[:300]
    notification.sent_at = delivery.sent_at or clock.now()
    notification.save(update_fields=["outcome", "error", "sent_at"])
    alert_notification_audit(notification)


def deliveries_retry_due(now=None) -> int:
    """Every minute: queue each delivery that is due (a retry, or a pending one whose job was lost).

    A due delivery is queued once (``queued_at`` moves past its ``next_attempt_at``); it is queued again
    only when that job has not run within twice a job's time limit (lost with a Redis restart), so a
    backlog while no worker runs does not grow the queue every minute.
    """
    now = now or clock.now()
    lost = now - timedelta(seconds=2 * job_timeout())
    due = list(Delivery.objects.filter(status__in=[Delivery.Status.PENDING, Delivery.Status.RETRYING],
                                       next_attempt_at__lte=now)
               .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
               .filter(Q(queued_at__isnull=True) | Q(queued_at__lt=F("next_attempt_at")) | Q(queued_at__lt=lost))
               .order_by("next_attempt_at").values_list("pk", flat=True)[:500])
    Delivery.objects.filter(pk__in=due).update(queued_at=now)
    for pk in due:
        queues.enqueue(SEND_JOB, str(pk), queue="default", timeout=job_timeout())
    return len(due)


def deliveries_recent(limit: int = 100):
    """The newest deliveries, for the page (never the URL: a channel shows its reference's name)."""
    return Delivery.objects.select_related("channel", "contact").order_by("-created_at", "id")[:limit]


def alert_notification_audit(notification: AlertNotification) -> None:
    """The ``alert.notified`` event of one message to one contact about an alert (sent, failed or skipped)."""
    audit_record(actor=None, action=AuditAction.ALERT_NOTIFIED, obj=notification.alert,
                 outcome="success" if notification.outcome == AlertNotification.Outcome.SENT else "failure",
                 details={"contact": notification.contact.name, "contact_id": notification.contact_id,
                          "level": Contact.Level(notification.level).label, "step": notification.step,
                          "channel": notification.channel, "purpose": notification.purpose,
                          "outcome": notification.outcome, "error": notification.error})
