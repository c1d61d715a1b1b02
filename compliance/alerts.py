"""Alerts and their escalation through the contact roster, by email and every channel of the roster.

The public service API (used by the health score, the drill and backup-age checks):

- ``alert_raise(*, kind, severity, subject, message, dedup_key, evidence_url=None)`` opens an
  alert unless one with that ``dedup_key`` is already unresolved (one alert per transition
  into a condition). Critical and warning alerts mail L1 at once; info alerts are shown in
  the panel only.
- ``alert_resolve(*, dedup_key, actor=None, note="")``: the condition is healthy again. The
  alert is resolved and everyone who was mailed about it gets a "resolved" mail.
- ``escalate_due(now=None)``, run every minute by the scheduler: an open alert whose level
  did not acknowledge within that level's response target is mailed to the next level, in
  the order L1 → L2 → L3 → Emergency.
- ``alert_acknowledge(*, actor, alert)`` (the button) and ``alert_acknowledge_by_link(*, token)``
  (the signed, single-use, expiring link in the mail) stop the escalation.

Every alert, notification, escalation, acknowledgement and resolution is an audit event.
The messages go out through ``compliance.notifications`` (events ``alert.opened``,
``alert.escalated``, ``alert.resolved``): the contact's own mail, whose delivery reports back to
its ``AlertNotification`` (the row the acknowledge link names), and the contact's and its level's
other channels (Slack, Teams, PagerDuty, webhooks), each a retried delivery with a hard timeout.
Time is ``drpanel.clock`` time.
"""

from datetime import timedelta

from django.conf import settings
from django.core import signing
from django.db import IntegrityError, transaction
from django.urls import reverse

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from compliance.models import Alert, AlertNotification, Contact
from compliance.notifications import alert_notification_audit as _audit_notification
from compliance.notifications import notify_contacts
from drpanel import clock
from drpanel.permissions import Cap, Denied, has_cap

ESCALATION_LEVELS = (Contact.Level.L1, Contact.Level.L2, Contact.Level.L3, Contact.Level.EMERGENCY)
NOTIFIED_SEVERITIES = (Alert.Severity.CRITICAL, Alert.Severity.WARNING)
ACK_SALT = "compliance.alert-ack"
# Whom a resolution is told to: everyone whose "raised" message went out, is on its way or is being
# retried (deliveries are asynchronous: the resolution is queued after it).
CALLED_OUTCOMES = (AlertNotification.Outcome.SENDING, AlertNotification.Outcome.SENT,
                   AlertNotification.Outcome.FAILED)


class AlertStateError(Exception):
    """The alert is not in a state that allows this (already acknowledged or resolved)."""


class AckLinkError(Exception):
    """An acknowledge link that cannot be used: malformed, expired, already used, or moot."""


def panel_url(path: str) -> str:
    return settings.PANEL_BASE_URL + path


# --- raising and resolving --------------------------------------------------------------------

def alert_raise(*, kind: str, severity: str, subject: str, message: str, dedup_key: str,
                evidence_url: str | None = None) -> Alert:
    """Open an alert for a condition, or return the unresolved one it already has.

    Raised by the system (jobs and checks), so the audit actor is "system". The L1 mails
    go out after the transaction commits.
    """
    if severity not in Alert.Severity.values:
        raise ValueError(f"unknown alert severity {severity!r}")
    if not dedup_key:
        raise ValueError("an alert needs a dedup_key")
    now = clock.now()
    with transaction.atomic():
        existing = Alert.objects.filter(dedup_key=dedup_key).exclude(state=Alert.State.RESOLVED).first()
        if existing is not None:
            return existing
        try:
            # A savepoint: a concurrent raise of the same condition hits the partial unique
            # index instead of opening a second alert.
            with transaction.atomic():
                alert = Alert.objects.create(
                    kind=kind[:64], severity=severity, subject=subject[:200], message=message[:4000],
                    evidence_url=(evidence_url or "")[:500], dedup_key=dedup_key[:200], opened_at=now)
        except IntegrityError:
            return Alert.objects.exclude(state=Alert.State.RESOLVED).get(dedup_key=dedup_key)
        audit_record(actor=None, action=AuditAction.ALERT_RAISED, obj=alert, details={
            "kind": alert.kind, "severity": severity, "dedup_key": alert.dedup_key,
            "evidence_url": alert.evidence_url})
        notification_ids = _escalate(alert, now) if severity in NOTIFIED_SEVERITIES else []
        transaction.on_commit(lambda: deliver(notification_ids))
    return alert


def alert_resolve(*, dedup_key: str, actor=None, note: str = "") -> Alert | None:
    """Resolve the unresolved alert of ``dedup_key`` (None when there is none) and tell whoever was called."""
    now = clock.now()
    with transaction.atomic():
        alert = (Alert.objects.select_for_update()
                 .filter(dedup_key=dedup_key).exclude(state=Alert.State.RESOLVED).first())
        if alert is None:
            return None
        previous = alert.state
        alert.state = Alert.State.RESOLVED
        alert.resolved_at = now
        alert.next_escalation_at = None
        alert.save(update_fields=["state", "resolved_at", "next_escalation_at"])
        audit_record(actor=actor, action=AuditAction.ALERT_RESOLVED, obj=alert, details={
            "kind": alert.kind, "dedup_key": alert.dedup_key, "previous_state": previous, "note": note[:300]})
        notified = (AlertNotification.objects
                    .filter(alert=alert, purpose=AlertNotification.Purpose.RAISED,
                            outcome__in=CALLED_OUTCOMES)
                    .values_list("contact_id", "level").distinct())
        ids = [AlertNotification.objects.create(
            alert=alert, contact_id=contact_id, level=level, step=alert.escalation_step,
            purpose=AlertNotification.Purpose.RESOLVED, created_at=now).pk
            for contact_id, level in sorted(set(notified))]
        transaction.on_commit(lambda: deliver(ids))
    return alert


# --- escalation ----------------------------------------------------------------------------

def _level_contacts(level: str) -> list[Contact]:
    return list(Contact.objects.active().filter(level=level).in_roster_order())


def _escalate(alert: Alert, now) -> list[int]:
    """Call the next level of the chain that has active contacts (the alert row is locked).

    Levels without an active contact are skipped (and named in the audit event). The next
    call is due after this level's response target: the shortest target among its contacts,
    because that is the level's promise. Returns the new notifications' ids.
    """
    skipped = []
    for index in range(alert.escalation_step, len(ESCALATION_LEVELS)):
        level = ESCALATION_LEVELS[index]
        contacts = _level_contacts(level)
        if not contacts:
            skipped.append(Contact.Level(level).label)
            continue
        targets = [c.response_minutes for c in contacts if c.response_minutes is not None]
        last = index == len(ESCALATION_LEVELS) - 1
        # A level without a target has promised no waiting time: the next level is due at once.
        wait_minutes = min(targets) if targets else 0
        alert.escalation_step = index + 1
        alert.next_escalation_at = None if last else now + timedelta(minutes=wait_minutes)
        alert.save(update_fields=["escalation_step", "next_escalation_at"])
        ids = []
        for contact in contacts:
            notification = AlertNotification.objects.create(
                alert=alert, contact=contact, level=level, step=index + 1, created_at=now,
                outcome=AlertNotification.Outcome.PENDING if contact.email else AlertNotification.Outcome.SKIPPED,
                error="" if contact.email else "no email address")
            if contact.email:
                ids.append(notification.pk)
            else:
                _audit_notification(notification)
        audit_record(actor=None, action=AuditAction.ALERT_ESCALATED, obj=alert, details={
            "step": index + 1, "level": Contact.Level(level).label,
            "contacts": [c.name for c in contacts], "skipped_levels": skipped,
            "next_escalation_at": alert.next_escalation_at, "wait_minutes": None if last else wait_minutes})
        return ids
    alert.next_escalation_at = None
    alert.save(update_fields=["next_escalation_at"])
    audit_record(actor=None, action=AuditAction.ALERT_ESCALATION_ENDED, obj=alert, outcome="failure", details={
        "reason": "no active contact at the remaining levels", "skipped_levels": skipped})
    return []


def escalate_due(now=None) -> int:
    """Escalate every open alert whose level's response target has passed; deliver waiting mails.

    Safe to run concurrently: each alert is locked (``skip_locked``) and its due time
    re-checked under the lock, so an acknowledgement or another runner wins cleanly.
    Returns how many alerts were escalated.
    """
    now = now or clock.now()
    escalated = 0
    due = list(Alert.objects.filter(state=Alert.State.OPEN, next_escalation_at__lte=now)
               .order_by("next_escalation_at").values_list("pk", flat=True))
    for pk in due:
        with transaction.atomic():
            alert = (Alert.objects.select_for_update(skip_locked=True)
                     .filter(pk=pk, state=Alert.State.OPEN, next_escalation_at__lte=now).first())
            if alert is None:
                continue
            _escalate(alert, now)
            escalated += 1
    # Also mails whose sender died between commit and delivery.
    deliver(list(AlertNotification.objects.filter(outcome=AlertNotification.Outcome.PENDING)
                 .values_list("pk", flat=True)))
    return escalated


# --- acknowledging -------------------------------------------------------------------------

def can_acknowledge(user) -> bool:
    return has_cap(user, Cap.TICK_CHECKLISTS) or has_cap(user, Cap.EDIT_CONTACTS)


def alert_acknowledge(*, actor, alert: Alert) -> Alert:
    """Someone in the panel takes the alert: the escalation stops. Operators, managers, admins."""
    if not can_acknowledge(actor):
        raise Denied("Acknowledging alerts is for operators, managers and admins.",
                     need=f"{Cap.TICK_CHECKLISTS} or {Cap.EDIT_CONTACTS}", obj=alert, action="alert.acknowledge")
    now = clock.now()
    with transaction.atomic():
        # Conditional update: the escalation job or a mailed link may be acknowledging at the same moment.
        changed = Alert.objects.filter(pk=alert.pk, state=Alert.State.OPEN).update(
            state=Alert.State.ACKNOWLEDGED, acknowledged_at=now, acknowledged_by=actor, next_escalation_at=None)
        alert.refresh_from_db()
        if not changed:
            raise AlertStateError(f"This alert is already {alert.state}.")
        audit_record(actor=actor, action=AuditAction.ALERT_ACKNOWLEDGED, obj=alert, details={
            "via": "panel", "step": alert.escalation_step, "kind": alert.kind})
    return alert


def ack_token(notification: AlertNotification) -> str:
    return signing.dumps({"n": notification.pk}, salt=ACK_SALT)


def ack_link(notification: AlertNotification) -> str:
    return panel_url(reverse("compliance:alert-ack-link", args=[ack_token(notification)]))


def notification_for_token(token: str) -> AlertNotification:
    """The notification an acknowledge link belongs to; ``AckLinkError`` if it cannot be used.

    The signature proves the panel made the link; its age is measured on the panel clock
    from when the mail was queued, like every other deadline.
    """
    try:
        payload = signing.loads(token, salt=ACK_SALT)
    except signing.BadSignature:
        raise AckLinkError("This link is not valid.") from None
    notification = (AlertNotification.objects.select_related("alert", "contact")
                    .filter(pk=payload.get("n") if isinstance(payload, dict) else None,
                            purpose=AlertNotification.Purpose.RAISED).first())
    if notification is None:
        raise AckLinkError("This link is not valid.")
    hours = settings.ALERT_ACK_LINK_HOURS
    if clock.now() - notification.created_at > timedelta(hours=hours):
        raise AckLinkError(f"This link has expired (links work for {hours} hours). "
                           "Sign in to the panel to acknowledge the alert.")
    return notification


def alert_acknowledge_by_link(*, token: str) -> Alert:
    """A contact acknowledges from the mailed link, without signing in. Works once per link."""
    now = clock.now()
    try:
        notification = notification_for_token(token)
        with transaction.atomic():
            alert = Alert.objects.select_for_update().get(pk=notification.alert_id)
            if alert.state != Alert.State.OPEN:
                raise AckLinkError(f"This alert is already {alert.state}; nothing more to do.")
            # Single use: the conditional update lets exactly one request through.
            if not AlertNotification.objects.filter(pk=notification.pk, ack_used_at__isnull=True).update(
                    ack_used_at=now):
                raise AckLinkError("This link was already used.")
            alert.state = Alert.State.ACKNOWLEDGED
            alert.acknowledged_at = now
            alert.acknowledged_by_contact = notification.contact
            alert.next_escalation_at = None
            alert.save(update_fields=["state", "acknowledged_at", "acknowledged_by_contact", "next_escalation_at"])
            audit_record(actor=None, action=AuditAction.ALERT_ACKNOWLEDGED, obj=alert, details={
                "via": "link", "contact": notification.contact.name, "contact_id": notification.contact_id,
                "level": Contact.Level(notification.level).label, "step": alert.escalation_step,
                "kind": alert.kind})
    except AckLinkError as exc:
        with transaction.atomic():
            audit_record(actor=None, action=AuditAction.ALERT_ACK_LINK_REFUSED, outcome="failure",
                         object_type="compliance.alert", details={"reason": str(exc)})
        raise
    return alert


# --- mail ----------------------------------------------------------------------------------

def _raised_mail(notification: AlertNotification) -> tuple[str, str]:
    alert = notification.alert
    expiry = settings.ALERT_ACK_LINK_HOURS
    lines = [
        f"{alert.severity.upper()} alert from DR Panel: {alert.subject}",
        "",
        alert.message,
        "",
        f"Opened:   {alert.opened_at:%Y-%m-%d %H:%M} UTC",
        f"You are:  {Contact.Level(notification.level).label} (escalation step {notification.step})",
    ]
    if alert.evidence_url:
        evidence = alert.evidence_url
        lines.append(f"Evidence: {panel_url(evidence) if evidence.startswith('/') else evidence}")
    lines += [
        "",
        "Acknowledge (stops the escalation to the next level; works once, for "
        f"{expiry} hours, without signing in):",
        ack_link(notification),
        "",
        f"The alert in the panel: {panel_url(reverse('compliance:alert-detail', args=[alert.pk]))}",
    ]
    return f"[DR Panel] {alert.severity.upper()}: {alert.subject}", "\n".join(lines)


def _resolved_mail(notification: AlertNotification) -> tuple[str, str]:
    alert = notification.alert
    body = "\n".join([
        f"Resolved: {alert.subject}",
        "",
        f"The condition that opened this {alert.severity} alert at {alert.opened_at:%Y-%m-%d %H:%M} UTC "
        f"is healthy again ({alert.resolved_at:%Y-%m-%d %H:%M} UTC). No action is needed.",
        "",
        f"The alert in the panel: {panel_url(reverse('compliance:alert-detail', args=[alert.pk]))}",
    ])
    return f"[DR Panel] RESOLVED: {alert.subject}", body


def deliver(notification_ids: list[int]) -> int:
    """Queue the pending messages among ``notification_ids``; each is claimed first, so it goes out once.

    Each becomes deliveries of ``compliance.notifications`` to the contact's channels; the
    delivery of the contact's own mail sets the notification's outcome when it ends.
    """
    queued = 0
    for pk in notification_ids:
        claimed = AlertNotification.objects.filter(pk=pk, outcome=AlertNotification.Outcome.PENDING).update(
            outcome=AlertNotification.Outcome.SENDING)
        if not claimed:
            continue
        notification = AlertNotification.objects.select_related("alert", "contact").get(pk=pk)
        if notification.purpose == AlertNotification.Purpose.RESOLVED:
            subject, body = _resolved_mail(notification)
            event = "alert.resolved"
        else:
            subject, body = _raised_mail(notification)
            event = "alert.opened" if notification.step <= 1 else "alert.escalated"
        alert = notification.alert
        notify_contacts(event=event, contacts=[notification.contact], subject=subject, body=body,
                        details={"alert_id": alert.pk, "severity": alert.severity, "kind": alert.kind,
                                 "level": notification.level, "step": notification.step},
                        alert_notifications={notification.contact_id: notification})
        queued += 1
    return queued


# --- the cron scheduler's own alert --------------------------------------------------------------

SCHEDULER_MISSING_KEY = "cron.scheduler_missing"
SCHEDULER_DUPLICATE_KEY = "cron.scheduler_duplicate"


def scheduler_check(connection) -> str:
    """Open (or resolve) the alerts on the cron scheduler's heartbeat; returns its state.

    Missing: nothing runs the schedules (backups, escalation, reconciliation) — critical.
    Duplicate: two schedulers queue every job twice — warning. Run every minute by the
    scheduler itself (which resolves the alerts once it beats alone) and by ``/health`` when it
    sees a gap (the only caller left when no scheduler runs).
    """
    from drpanel import cron_heartbeat

    heartbeat = cron_heartbeat.read(connection)
    state = heartbeat.state
    if state == "missing":
        age = "never" if heartbeat.age_seconds is None else f"{int(heartbeat.age_seconds)} s ago"
        alert_raise(kind="cron.scheduler", severity=Alert.Severity.CRITICAL, dedup_key=SCHEDULER_MISSING_KEY,
                    subject="No cron scheduler is running",
                    message=f"The last heartbeat of the cron scheduler was {age}: no backup is scheduled, no alert "
                            "escalates, no run is reconciled. Start it: manage.py rqcron drpanel.cron.")
    else:
        alert_resolve(dedup_key=SCHEDULER_MISSING_KEY, note="the scheduler beats again")
    if state == "duplicate":
        names = ", ".join(b["scheduler"] for b in heartbeat.live)
        alert_raise(kind="cron.scheduler", severity=Alert.Severity.WARNING, dedup_key=SCHEDULER_DUPLICATE_KEY,
                    subject=f"{len(heartbeat.live)} cron schedulers are running at once",
                    message=f"Schedulers beating now: {names}. Every scheduled job is queued once per scheduler; "
                            "stop all but one.")
    elif state == "ok":
        alert_resolve(dedup_key=SCHEDULER_DUPLICATE_KEY, note="one scheduler beats")
    return state
