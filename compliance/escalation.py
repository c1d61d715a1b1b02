"""Escalation of a declared incident through the contact roster (issue 14, item 4).

When an incident is declared (the ``incident.declared`` audit event, written by
``restores.incidents.incident_declare``), ``escalation_start`` is queued after the declaration
commits: the first step of the incident's severity chain is called, every contact of those levels
through the notification service (their own email and every channel of the contact and its level),
each message carrying the level's response target and a one-time acknowledge link.

- ``SEVERITY_CHAIN``: critical → Emergency and L1 at once, then L2, then L3; major → L1, L2, L3,
  Emergency; minor → L1, then L2. Drills call nobody.
- ``escalate_due`` (every minute, ``drpanel.cron``): a step whose every called level let its
  response target pass without an acknowledgement calls the next step (``incident.escalated``).
  It also starts the escalation of a declared incident whose start job was lost.
- ``incident_acknowledge`` (the incident page and ``POST /api/v1/incidents/{id}/acknowledge``) and
  ``incident_acknowledge_by_link`` (the link, without signing in) stop the escalation. A contact's
  link also records that contact's acknowledgement after someone else stopped the escalation.

Race-safe: the escalation row is locked (``skip_locked`` for the job) and its due time re-checked
under the lock; an acknowledgement is a conditional update. Time is ``drpanel.clock`` time.
"""

from datetime import timedelta

from django.conf import settings
from django.core import signing
from django.db import IntegrityError, transaction
from django.urls import reverse

from compliance.alerts import panel_url
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from compliance.models import Contact, Delivery, IncidentCall, IncidentEscalation
from compliance.notifications import notify
from drpanel import clock, queues
from drpanel.permissions import Cap, Denied, has_cap
from restores.models import Incident

L = Contact.Level
SEVERITY_CHAIN = {
    Incident.Severity.CRITICAL: [[L.EMERGENCY, L.L1], [L.L2], [L.L3]],
    Incident.Severity.MAJOR: [[L.L1], [L.L2], [L.L3], [L.EMERGENCY]],
    Incident.Severity.MINOR: [[L.L1], [L.L2]],
}
CALLING_STATES = (Incident.State.DECLARED, Incident.State.RECOVERING)
ACK_SALT = "compliance.incident-ack"
START_JOB = "compliance.jobs.incident_escalation_start_job"


class EscalationError(Exception):
    """The escalation is not in a state that allows this (409): nothing to acknowledge, already acknowledged."""


class AckLinkError(Exception):
    """An incident acknowledge link that cannot be used: forged, expired, already used, or moot."""


def can_acknowledge(user) -> bool:
    """Operators and managers (who run the recovery) and admins and managers (who keep the roster)."""
    return has_cap(user, Cap.TICK_CHECKLISTS) or has_cap(user, Cap.EDIT_CONTACTS)


# --- starting and escalating --------------------------------------------------------------------

def escalation_start_soon(incident_id: str) -> None:
    """Queue ``escalation_start`` once the declaring transaction commits (called from the audit signal)."""
    queues.enqueue_on_commit(START_JOB, str(incident_id), queue="default", timeout=120)


def escalation_start(incident_id, now=None) -> IncidentEscalation | None:
    """Call the first step of a declared incident's chain; idempotent (one escalation per incident).

    None for a drill, an unknown incident, or one no longer being recovered.
    """
    now = now or clock.now()
    incident = Incident.objects.select_related("system").filter(pk=incident_id).first()
    if incident is None or incident.is_drill or incident.state not in CALLING_STATES:
        return None
    with transaction.atomic():
        try:
            # A savepoint: the one-to-one index decides between the start job and the sweep.
            with transaction.atomic():
                escalation = IncidentEscalation.objects.create(
                    incident=incident, severity=incident.severity, chain=SEVERITY_CHAIN[incident.severity],
                    started_at=now)
        except IntegrityError:
            return IncidentEscalation.objects.get(incident=incident)
        escalation = IncidentEscalation.objects.select_for_update().get(pk=escalation.pk)
        _call_next(escalation, incident, now, actor=incident.declared_by)
    return escalation


def _level_contacts(level: str) -> list[Contact]:
    return list(Contact.objects.active().filter(level=level).in_roster_order())


def _call_next(escalation: IncidentEscalation, incident: Incident, now, *, actor=None) -> bool:
    """Call the next step of the chain that has an active contact (the row is locked); False when none is left.

    A step waits for the longest response target among the levels it called, so each called level
    has had its own target before the next is called (a contact without a target counts as none).
    """
    chain = escalation.chain
    skipped = []
    for index in range(escalation.step, len(chain)):
        levels = chain[index]
        called = [(level, contact) for level in levels for contact in _level_contacts(level)]
        if not called:
            skipped += [L(level).label for level in levels]
            continue
        targets = {}
        for level, contact in called:
            if contact.response_minutes is not None:
                targets[level] = min(targets.get(level, contact.response_minutes), contact.response_minutes)
        wait = max(targets.values(), default=0)
        last = index == len(chain) - 1
        escalation.step = index + 1
        escalation.next_escalation_at = None if last else now + timedelta(minutes=wait)
        if last:
            escalation.ended_reason = "every level of the chain was called"
        escalation.save(update_fields=["step", "next_escalation_at", "ended_reason"])
        calls = [IncidentCall.objects.create(escalation=escalation, contact=contact, level=level, step=index + 1,
                                             response_minutes=targets.get(level), created_at=now)
                 for level, contact in called]
        action = AuditAction.INCIDENT_ESCALATION_STARTED if index == 0 else AuditAction.INCIDENT_ESCALATED
        audit_record(actor=actor, action=action, obj=incident, details={
            "incident": str(incident.pk), "severity": incident.severity, "step": index + 1,
            "levels": [L(level).label for level in levels], "contacts": [c.name for _, c in called],
            "response_minutes": {L(k).label: v for k, v in targets.items()}, "skipped_levels": skipped,
            "next_escalation_at": escalation.next_escalation_at})
        for call in calls:
            _send(call, incident)
        return True
    escalation.next_escalation_at = None
    escalation.ended_reason = "no active contact at the remaining levels"
    escalation.save(update_fields=["next_escalation_at", "ended_reason"])
    audit_record(actor=None, action=AuditAction.INCIDENT_ESCALATION_ENDED, obj=incident, outcome="failure",
                 details={"incident": str(incident.pk), "reason": escalation.ended_reason,
                          "skipped_levels": skipped})
    return False


def escalate_due(now=None) -> int:
    """Every minute: call the next step of each escalation whose wait passed unacknowledged; returns how many.

    Also starts the escalation of an open incident declared without one (its start job was lost),
    and ends the escalation of an incident that is recovered or closed.
    """
    now = now or clock.now()
    for incident_id in (Incident.objects.filter(state__in=CALLING_STATES, is_drill=False, escalation__isnull=True)
                        .values_list("pk", flat=True)):
        escalation_start(incident_id, now=now)
    escalated = 0
    due = list(IncidentEscalation.objects.filter(next_escalation_at__lte=now, acknowledged_at__isnull=True)
               .order_by("next_escalation_at").values_list("pk", flat=True))
    for pk in due:
        with transaction.atomic():
            # skip_locked: a concurrent run (or an acknowledgement holding the row) wins; the due time is
            # checked again under the lock.
            escalation = (IncidentEscalation.objects.select_for_update(skip_locked=True)
                          .filter(pk=pk, next_escalation_at__lte=now, acknowledged_at__isnull=True).first())
            if escalation is None:
                continue
            incident = Incident.objects.select_related("system").get(pk=escalation.incident_id)
            if incident.state not in CALLING_STATES:
                escalation.next_escalation_at = None
                escalation.ended_reason = f"the incident is {incident.state}"
                escalation.save(update_fields=["next_escalation_at", "ended_reason"])
                audit_record(actor=None, action=AuditAction.INCIDENT_ESCALATION_ENDED, obj=incident, details={
                    "incident": str(incident.pk), "reason": escalation.ended_reason})
                continue
            if _call_next(escalation, incident, now):
                escalated += 1
    return escalated


# --- messages ------------------------------------------------------------------------------------

def ack_token(call: IncidentCall) -> str:
    return signing.dumps({"c": call.pk}, salt=ACK_SALT)


def ack_link(call: IncidentCall) -> str:
    return panel_url(reverse("compliance:incident-ack-link", args=[ack_token(call)]))


def _send(call: IncidentCall, incident: Incident) -> list[Delivery]:
    level = L(call.level).label
    target = f"{call.response_minutes} min" if call.response_minutes is not None else "no target"
    first = call.step == 1
    what = "Incident declared" if first else f"Incident escalated to {level}"
    subject = (f"[DR Panel] {incident.severity.upper()} {what}: {incident.get_scenario_display()} "
               f"on {incident.system.name}")
    hours = settings.ALERT_ACK_LINK_HOURS
    body = "\n".join([
        f"{incident.severity.upper()} incident on {incident.system.name}: {incident.get_scenario_display()}.",
        *([incident.summary] if incident.summary else []),
        "",
        f"Declared: {incident.declared_at:%Y-%m-%d %H:%M} UTC by {incident.declared_by.get_username()}",
        f"You are:  {level} (escalation step {call.step}); your response target is {target}.",
        *([] if first else ["Nobody acknowledged within the previous level's response target."]),
        "",
        f"Acknowledge (stops the escalation; works once, for {hours} hours, without signing in):",
        ack_link(call),
        "",
        f"The incident in the panel: {panel_url(reverse('restores:incident-detail', args=[incident.pk]))}",
    ])
    return notify(event="incident.declared" if first else "incident.escalated", contacts=[call.contact],
                  subject=subject, body=body, details={
                      "incident": str(incident.pk), "call": call.pk, "level": call.level, "step": call.step,
                      "response_minutes": call.response_minutes})


# --- acknowledging -------------------------------------------------------------------------------

def incident_acknowledge(*, actor, incident: Incident, via: str = IncidentEscalation.Via.PANEL,
                         request=None) -> IncidentEscalation:
    """Someone signed in takes the incident: the escalation stops. Operators, managers, admins.

    ``EscalationError`` when there is nothing to acknowledge (a drill, not yet called) or it already was.
    """
    if not can_acknowledge(actor):
        raise Denied("Acknowledging incidents is for operators, managers and admins.",
                     need=f"{Cap.TICK_CHECKLISTS} or {Cap.EDIT_CONTACTS}", obj=incident, action="incident.acknowledge")
    now = clock.now()
    with transaction.atomic():
        escalation = IncidentEscalation.objects.select_for_update().filter(incident=incident).first()
        if escalation is None:
            raise EscalationError("Nobody was called about this incident: there is nothing to acknowledge.")
        if escalation.acknowledged_at is not None:
            who = escalation.acknowledged_by or escalation.acknowledged_by_contact
            raise EscalationError(f"Already acknowledged by {who} at {escalation.acknowledged_at:%H:%M:%S} UTC.")
        escalation.acknowledged_at, escalation.acknowledged_by, escalation.acknowledged_via = now, actor, via
        escalation.next_escalation_at = None
        escalation.save(update_fields=["acknowledged_at", "acknowledged_by", "acknowledged_via",
                                       "next_escalation_at"])
        audit_record(actor=actor, action=AuditAction.INCIDENT_ACKNOWLEDGED, obj=incident, request=request, details={
            "incident": str(incident.pk), "via": via, "step": escalation.step,
            "seconds_after_start": round((now - escalation.started_at).total_seconds(), 1)})
    return escalation


def call_for_token(token: str) -> IncidentCall:
    """The call an acknowledge link belongs to; ``AckLinkError`` when it cannot be used (forged, expired, used)."""
    try:
        payload = signing.loads(token, salt=ACK_SALT)
    except signing.BadSignature:
        raise AckLinkError("This link is not valid.") from None
    call = (IncidentCall.objects.select_related("contact", "escalation__incident__system")
            .filter(pk=payload.get("c") if isinstance(payload, dict) else None).first())
    if call is None:
        raise AckLinkError("This link is not valid.")
    hours = settings.ALERT_ACK_LINK_HOURS
    if clock.now() - call.created_at > timedelta(hours=hours):
        raise AckLinkError(f"This link has expired (links work for {hours} hours). Sign in to acknowledge.")
    if call.acknowledged_at is not None:
        raise AckLinkError("This link was already used.")
    if not call.escalation.incident.is_open:
        raise AckLinkError("This incident is closed; nothing more to do.")
    return call


def incident_acknowledge_by_link(*, token: str, request=None) -> IncidentCall:
    """A called contact acknowledges from the link in their message, without signing in. Works once per link.

    Stops the escalation if it still runs; after someone else stopped it, it still records that this
    contact acknowledged, and when. A refused link is audited (``incident.ack_refused``) and changes nothing.
    """
    now = clock.now()
    try:
        call = call_for_token(token)
        with transaction.atomic():
            escalation = IncidentEscalation.objects.select_for_update().get(pk=call.escalation_id)
            # Single use: the conditional update lets exactly one request through.
            if not IncidentCall.objects.filter(pk=call.pk, acknowledged_at__isnull=True).update(acknowledged_at=now):
                raise AckLinkError("This link was already used.")
            call.acknowledged_at = now
            stopped = escalation.acknowledged_at is None
            if stopped:
                escalation.acknowledged_at, escalation.acknowledged_by_contact = now, call.contact
                escalation.acknowledged_via, escalation.next_escalation_at = IncidentEscalation.Via.LINK, None
                escalation.save(update_fields=["acknowledged_at", "acknowledged_by_contact", "acknowledged_via",
                                               "next_escalation_at"])
            audit_record(actor=None, action=AuditAction.INCIDENT_ACKNOWLEDGED, obj=call.escalation.incident,
                         request=request, details={
                             "incident": str(call.escalation.incident_id), "via": "link",
                             "contact": call.contact.name, "contact_id": call.contact_id,
                             "level": L(call.level).label, "step": call.step, "stopped_escalation": stopped,
                             "seconds_after_call": round((now - call.created_at).total_seconds(), 1)})
    except AckLinkError as exc:
        with transaction.atomic():
            audit_record(actor=None, action=AuditAction.INCIDENT_ACK_REFUSED, outcome="failure", request=request,
                         object_type="restores.incident", details={"reason": str(exc)})
        raise
    return call


# --- what the incident page and its report show ---------------------------------------------------

def _iso(value):
    return value.isoformat() if value else None


def escalation_report(incident: Incident) -> dict:
    """Who was notified, at which level and step, through which channel, its delivery status, and when they
    acknowledged (a section of the incident's report and of its JSON)."""
    escalation = (IncidentEscalation.objects.select_related("acknowledged_by", "acknowledged_by_contact")
                  .filter(incident_id=incident.pk).first())
    if escalation is None:
        return {"started_at": None, "calls": [],
                "note": "a drill calls nobody" if incident.is_drill else "nobody called yet"}
    calls = list(escalation.calls.select_related("contact"))
    deliveries: dict[int, list[dict]] = {}
    for d in (Delivery.objects.select_related("channel").filter(details__incident=str(incident.pk))
              .order_by("created_at", "id")):
        deliveries.setdefault(d.details.get("call"), []).append({
            "channel": d.kind, "to": d.channel.shown_target if d.channel_id else d.contact.email if d.contact_id
            else None, "status": d.status, "attempts": d.attempts, "sent_at": _iso(d.sent_at),
            "error": d.last_error or None})
    who = escalation.acknowledged_by.get_username() if escalation.acknowledged_by_id else (
        escalation.acknowledged_by_contact.name if escalation.acknowledged_by_contact_id else None)
    return {
        "severity": escalation.severity, "chain": [[L(x).label for x in step] for step in escalation.chain],
        "started_at": _iso(escalation.started_at), "steps_called": escalation.step,
        "next_escalation_at": _iso(escalation.next_escalation_at),
        "acknowledged_at": _iso(escalation.acknowledged_at), "acknowledged_by": who,
        "acknowledged_via": escalation.acknowledged_via or None, "ended": escalation.ended_reason or None,
        "calls": [{"contact": c.contact.name, "level": L(c.level).label, "step": c.step,
                   "response_minutes": c.response_minutes, "notified_at": _iso(c.created_at),
                   "acknowledged_at": _iso(c.acknowledged_at),
                   "acknowledged_seconds": round((c.acknowledged_at - c.created_at).total_seconds(), 1)
                   if c.acknowledged_at else None, "deliveries": deliveries.get(c.pk, [])} for c in calls],
    }


# --- wiring (compliance.apps) ---------------------------------------------------------------------

def _audited(sender, instance, created=False, raw=False, **kwargs):
    # The declaration's audit event is written in the declaring transaction: the start is queued for
    # after it commits, so a failing notification can never undo a declaration.
    if raw or not created or instance.action != AuditAction.INCIDENT_DECLARED:
        return
    details = instance.details or {}
    if details.get("drill") or not details.get("incident"):
        return
    escalation_start_soon(details["incident"])


def connect() -> None:
    from django.db.models.signals import post_save

    from compliance.models import AuditEvent
    from restores.incidents import report_section_register

    post_save.connect(_audited, sender=AuditEvent, dispatch_uid="escalation.declared")
    report_section_register("notifications", escalation_report)
