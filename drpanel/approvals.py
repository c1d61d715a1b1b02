"""Approvals: a second person's consent, bound to exact parameters, with an expiry; every step audited.

Reusable by any action: artifact deletion (``artifact.delete``) now, production restores
(``restore.production``) next. The flow:

1. ``approval_request(actor=, kind=, subject=, params=)`` records what is asked for, with
   ``binding_hash`` = SHA-256 of the canonical JSON of ``{"kind", "subject", "params"}``.
2. ``approval_approve(actor=, approval=, password=, params=, may_approve=)`` — someone other than
   the requester, allowed by the caller's ``may_approve(actor)`` rule, re-enters their password
   (``drpanel.passwords.password_confirm``: counted toward the lockout, typed errors);
   the parameters they saw must hash to the same binding, and the approval must not have expired.
   ``approval_reject`` is final.
3. The action calls ``approval_consume(approval=, params=)`` just before it runs: approved,
   unexpired, same binding, and consumed exactly once.
4. ``approval_expire_due()`` (cron) expires what was left open.

Changes that weaken protection (a target's environment or database, retention, schedules, storage,
``approve_restore``, privileged roles) use ``protection_change_request`` and
``protection_change_approve``: any active Manager or Admin other than the requester decides.

Transitions are conditional updates on the expected state, so two managers approving at once,
or an approve racing an expiry, leave exactly one outcome and one audit event.
"""

import hashlib
import json
from datetime import timedelta

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.utils import timezone

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel import queues
from drpanel.models import Approval
from drpanel.passwords import password_confirm
from drpanel.permissions import Denied, Role


class ApprovalError(Exception):
    """An approval cannot be used as asked (expired, already decided, parameters changed)."""


def canonical_params(params: dict) -> dict:
    """Parameters as they are hashed: JSON-stable (strings for ids, sorted keys)."""
    return json.loads(json.dumps(params or {}, sort_keys=True, default=str))


def binding_hash(*, kind: str, content_type: ContentType, object_id: str, params: dict) -> str:
    payload = {"kind": kind, "subject": f"{content_type.app_label}.{content_type.model}:{object_id}",
               "params": canonical_params(params)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _details(approval: Approval, **extra) -> dict:
    return {"approval": approval.pk, "kind": approval.kind, "subject_type": approval.content_type.model,
            "subject_id": approval.object_id, "requested_by": approval.requested_by.get_username(),
            "binding_hash": approval.binding_hash, **extra}


def approval_request(*, actor, kind: str, subject, params: dict, reason: str = "", ttl: timedelta | None = None,
                     request=None) -> Approval:
    """Ask for an approval of ``kind`` on ``subject`` with these exact parameters."""
    ttl = ttl or timedelta(minutes=settings.APPROVAL_TTL_MINUTES)
    content_type = ContentType.objects.get_for_model(subject)
    object_id = str(subject.pk)
    with transaction.atomic():
        approval = Approval.objects.create(
            kind=kind, content_type=content_type, object_id=object_id, params=canonical_params(params),
            binding_hash=binding_hash(kind=kind, content_type=content_type, object_id=object_id, params=params),
            reason=(reason or "")[:2000], requested_by=actor, expires_at=timezone.now() + ttl)
        audit_record(actor=actor, action=AuditAction.APPROVAL_REQUESTED, obj=subject, request=request,
                     details=_details(approval, reason=approval.reason, expires_at=approval.expires_at))
        # Whoever may decide is told (by dotted path: the notifications sit above the core).
        queues.enqueue_on_commit("compliance.jobs.approval_waiting_job", approval.pk, queue="default", timeout=300)
    return approval


def _lock_open(approval: Approval, expected: str) -> Approval:
    locked = Approval.objects.select_for_update().get(pk=approval.pk)
    if locked.state != expected:
        raise ApprovalError(f"this approval is {locked.state}, not {expected}")
    return locked


def approval_approve(*, actor, approval: Approval, password: str, params: dict, may_approve, note: str = "",
                     request=None) -> Approval:
    """Approve: not the requester, allowed by ``may_approve(actor)``, password re-entered, same parameters.

    Raises ``Denied``, ``PasswordRefused`` / ``PasswordLocked`` (``drpanel.passwords``) or ``ApprovalError``."""
    subject = approval.subject
    if actor.pk == approval.requested_by_id:
        raise Denied("You cannot approve your own request: another person must.", obj=subject,
                     action=f"approve {approval.kind}", need="a different approver")
    if not may_approve(actor):
        raise Denied("You may not approve this request.", obj=subject, action=f"approve {approval.kind}",
                     need=f"approver of {approval.kind}")
    password_confirm(actor=actor, password=password, purpose="approval.approve", obj=subject, request=request,
                     details=_details(approval, approver=actor.get_username()))
    expected = binding_hash(kind=approval.kind, content_type=approval.content_type, object_id=approval.object_id,
                            params=params)
    with transaction.atomic():
        # Row lock: two approvers, or an approval racing the expiry job, must not both win.
        locked = _lock_open(approval, Approval.State.PENDING)
        now = timezone.now()
        if locked.expires_at <= now:
            locked.state = Approval.State.EXPIRED
            locked.save(update_fields=["state"])
            audit_record(actor=None, action=AuditAction.APPROVAL_EXPIRED, obj=subject, request=request,
                         details=_details(locked, at_approval_by=actor.get_username()))
            expired = True
        else:
            expired = False
            if locked.binding_hash != expected:
                audit_record(actor=actor, action=AuditAction.APPROVAL_BINDING_MISMATCH, obj=subject, outcome="failure",
                             request=request, details=_details(locked, approver=actor.get_username(),
                                                               offered_hash=expected))
            else:
                locked.state = Approval.State.APPROVED
                locked.decided_by = actor
                locked.decided_at = now
                locked.decision_note = (note or "")[:2000]
                locked.save(update_fields=["state", "decided_by", "decided_at", "decision_note"])
                audit_record(actor=actor, action=AuditAction.APPROVAL_APPROVED, obj=subject, request=request,
                             details=_details(locked, approver=actor.get_username(), note=locked.decision_note))
                return locked
    if expired:
        raise ApprovalError("This approval expired; ask for a new one.")
    raise ApprovalError("The request changed since it was made; this approval does not cover it.")


def approval_reject(*, actor, approval: Approval, may_approve, note: str = "", request=None) -> Approval:
    """Reject (final). The requester may withdraw their own request; otherwise an approver rejects."""
    subject = approval.subject
    if actor.pk != approval.requested_by_id and not may_approve(actor):
        raise Denied("You may not reject this request.", obj=subject, action=f"reject {approval.kind}",
                     need=f"approver of {approval.kind}")
    with transaction.atomic():
        locked = _lock_open(approval, Approval.State.PENDING)
        locked.state = Approval.State.REJECTED
        locked.decided_by = actor
        locked.decided_at = timezone.now()
        locked.decision_note = (note or "")[:2000]
        locked.save(update_fields=["state", "decided_by", "decided_at", "decision_note"])
        audit_record(actor=actor, action=AuditAction.APPROVAL_REJECTED, obj=subject, request=request,
                     details=_details(locked, decided_by=actor.get_username(), note=locked.decision_note,
                                      withdrawn=actor.pk == approval.requested_by_id))
    return locked


def approval_consume(*, approval: Approval, params: dict, actor=None) -> Approval:
    """Use an approved approval once, for exactly its parameters (inside the action's transaction)."""
    expected = binding_hash(kind=approval.kind, content_type=approval.content_type, object_id=approval.object_id,
                            params=params)
    locked = _lock_open(approval, Approval.State.APPROVED)
    if locked.binding_hash != expected:
        raise ApprovalError("The action's parameters differ from the approved ones.")
    if locked.expires_at <= timezone.now():
        raise ApprovalError("This approval expired before it was used.")
    locked.state = Approval.State.CONSUMED
    locked.consumed_at = timezone.now()
    locked.save(update_fields=["state", "consumed_at"])
    audit_record(actor=actor, action=AuditAction.APPROVAL_CONSUMED, obj=locked.subject,
                 details=_details(locked, approved_by=locked.decided_by.get_username() if locked.decided_by else ""))
    return locked


def approval_expire_due() -> int:
    """Expire pending or unused approved approvals past their time (cron); returns how many."""
    count = 0
    due = Approval.objects.filter(state__in=[Approval.State.PENDING, Approval.State.APPROVED],
                                  expires_at__lte=timezone.now()).values_list("pk", flat=True)
    for pk in due:
        with transaction.atomic():
            # Conditional update: an approval decided a moment ago keeps its decision.
            changed = Approval.objects.filter(pk=pk, state__in=[Approval.State.PENDING, Approval.State.APPROVED],
                                              expires_at__lte=timezone.now()).update(state=Approval.State.EXPIRED)
            if changed:
                approval = Approval.objects.get(pk=pk)
                audit_record(actor=None, action=AuditAction.APPROVAL_EXPIRED, obj=approval.subject,
                             details=_details(approval))
                count += 1
    return count


def open_approvals(subject, kind: str | None = None):
    """Pending or approved-but-unused approvals of a subject."""
    content_type = ContentType.objects.get_for_model(subject)
    qs = Approval.objects.filter(content_type=content_type, object_id=str(subject.pk),
                                 state__in=[Approval.State.PENDING, Approval.State.APPROVED])
    return qs.filter(kind=kind) if kind else qs


PROTECTION_DECIDERS = (Role.MANAGER.value, Role.ADMIN.value)
WAITING = "This change waits for a second person: another Manager or Admin must approve it with their password."


def may_approve_protection_change(user) -> bool:
    """An active Manager or Admin decides a change that weakens protection (never their own request)."""
    return bool(user.is_active and user.groups.filter(name__in=PROTECTION_DECIDERS).exists())


def protection_change_request(*, actor, kind: str, subject, params: dict, reason: str = "", request=None) -> Approval:
    """Ask a second person for a change that weakens protection; the same change asked twice is one request."""
    content_type = ContentType.objects.get_for_model(subject)
    wanted = binding_hash(kind=kind, content_type=content_type, object_id=str(subject.pk), params=params)
    existing = open_approvals(subject, kind).filter(binding_hash=wanted, state=Approval.State.PENDING).first()
    if existing is not None:
        return existing
    return approval_request(actor=actor, kind=kind, subject=subject, params=params, reason=reason, request=request)


def protection_change_approve(*, actor, approval: Approval, password: str, params: dict, apply, extra_rule=None,
                              request=None):
    """A second person approves with their password the change as it stands now (``params``, recomputed by
    the caller from the current rows); ``apply(approval)`` then consumes the approval and makes the change.

    ``extra_rule(actor)`` may refuse more approvers (e.g. the user a role change is about)."""
    def may_approve(user) -> bool:
        return may_approve_protection_change(user) and (extra_rule is None or extra_rule(user))

    approved = approval_approve(actor=actor, approval=approval, password=password, params=params,
                                may_approve=may_approve, request=request)
    return protection_change_apply(actor=actor, approval=approved, apply=apply, request=request)


def protection_change_apply(*, actor, approval: Approval, apply, request=None):
    """Run ``apply(approval)`` (which consumes the approval in its transaction); when the approval no longer
    covers the change (the subject changed after the request, it expired), audit the refusal and re-raise."""
    try:
        return apply(approval)
    except ApprovalError as exc:
        with transaction.atomic():
            audit_record(actor=actor, action=AuditAction.APPROVAL_BINDING_MISMATCH, obj=approval.subject,
                         outcome="failure", request=request,
                         details=_details(approval, at_apply_by=getattr(actor, "username", None), reason=str(exc)))
        raise
