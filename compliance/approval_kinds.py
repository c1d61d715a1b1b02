"""The kinds of approval the panel asks for, who may decide each, and what waits for a person.

``APPROVAL_KINDS`` names artifact deletions and production restores; the dashboard lists
``approvals_waiting_for(user)`` and the certification links each approval to its page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.urls import reverse
from django.utils import timezone

from backups.deletion import may_approve_deletion
from drpanel.models import Approval
from drpanel.permissions import has_object_right
from restores.models import APPROVE_RESTORE, RestoreRun


def _may_delete(user, approval: Approval) -> bool:
    return may_approve_deletion(user)


@dataclass(frozen=True)
class ApprovalKind:
    """Who may decide an approval of a kind, where it is decided, and how to name it."""

    may_decide: Callable
    url: Callable
    label: str


def _may_approve_restore(user, approval: Approval) -> bool:
    """A production restore: ``approve_restore`` on the run's target (own requests are excluded already)."""
    run = RestoreRun.objects.filter(pk=approval.object_id).select_related("target").first()
    return run is not None and run.requested_by_id != user.pk and has_object_right(user, APPROVE_RESTORE, run.target)


APPROVAL_KINDS: dict[str, ApprovalKind] = {
    "artifact.delete": ApprovalKind(
        may_decide=_may_delete, label="Delete artifact",
        url=lambda approval: reverse("backups:artifact-detail", args=[approval.object_id])),
    "restore.production": ApprovalKind(
        may_decide=_may_approve_restore, label="Restore into production",
        url=lambda approval: reverse("restores:run-detail", args=[approval.object_id])),
}


def approvals_waiting_for(user) -> list[dict]:
    """Pending, unexpired approvals that ``user`` may decide (never their own requests)."""
    pending = (Approval.objects.filter(state=Approval.State.PENDING, expires_at__gt=timezone.now(),
                                       kind__in=list(APPROVAL_KINDS))
               .exclude(requested_by=user).select_related("requested_by").order_by("expires_at"))
    waiting = []
    for approval in pending:
        kind = APPROVAL_KINDS[approval.kind]
        if kind.may_decide(user, approval):
            waiting.append({"approval": approval, "label": kind.label, "url": kind.url(approval),
                            "requested_by": approval.requested_by.get_username()})
    return waiting
