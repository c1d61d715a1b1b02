"""Who is told when something waits for a person: approvals waiting, and the certification due.

The notification goes to the roster entries (``Contact``, matched by email address) of the users who
may act: for an approval, those its kind's rule lets decide (``compliance.approval_kinds``: holders of
``approve_restore`` on a production target, any other Manager or Admin for a protection change), never
its requester; for the certification, the managers who may sign the month. A user without a roster
entry sees the request on the dashboard only (the panel has no other address for them).
"""

from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from compliance.alerts import panel_url
from compliance.approval_kinds import APPROVAL_KINDS
from compliance.certification_record import period_label
from compliance.certifications import current_certification, may_sign
from compliance.models import Contact
from compliance.notifications import notify
from drpanel import clock
from drpanel.models import Approval


def contacts_of(users) -> list[Contact]:
    """The active roster entries whose address is one of ``users``' addresses (case-insensitive)."""
    emails = {u.email.strip().lower() for u in users if u.email}
    return [c for c in Contact.objects.active().in_roster_order() if c.email.lower() in emails]


def approval_waiting_notify(approval_id: int) -> int:
    """Tell whoever may decide a just-requested approval that it waits; returns the deliveries queued."""
    approval = Approval.objects.select_related("requested_by").filter(
        pk=approval_id, state=Approval.State.PENDING, expires_at__gt=timezone.now()).first()
    kind = APPROVAL_KINDS.get(approval.kind) if approval is not None else None
    if kind is None:
        return 0
    users = get_user_model().objects.filter(is_active=True).exclude(pk=approval.requested_by_id)
    deciders = [user for user in users if kind.may_decide(user, approval)]
    contacts = contacts_of(deciders)
    if not contacts:
        return 0
    body = "\n".join([
        f"{kind.label}: requested by {approval.requested_by.get_username()}, waiting for your approval.",
        *([f"Reason: {approval.reason}"] if approval.reason else []),
        f"It expires at {approval.expires_at:%Y-%m-%d %H:%M} UTC.",
        "",
        f"Decide in the panel (your password is asked again): {panel_url(kind.url(approval))}",
    ])
    return len(notify(event="approval.waiting", contacts=contacts, body=body,
                      subject=f"[DR Panel] Approval waiting: {kind.label}",
                      details={"approval": approval.pk, "kind": approval.kind}))


def certification_due_notify() -> int:
    """When last month is not signed: tell the managers who may sign it; returns the deliveries queued."""
    today = clock.today()
    year, month = today.year - (today.month == 1), (today.month - 2) % 12 + 1
    if current_certification(year, month) is not None:
        return 0
    label = period_label(year, month)
    signers = [user for user in get_user_model().objects.filter(is_active=True) if may_sign(user, year, month)[0]]
    contacts = contacts_of(signers)
    if not contacts:
        return 0
    return len(notify(event="certification.due", contacts=contacts,
                      subject=f"[DR Panel] The DR certification of {label} is due",
                      body=f"The monthly DR certification of {label} is not signed yet. Review the measured RTO and "
                           f"RPO and sign it: {panel_url(reverse('compliance:certification-detail', args=[label]))}",
                      details={"period": label}))
