"""The kinds of approval the panel asks for, who may decide each, and what waits for a person.

``APPROVAL_KINDS`` names artifact deletions, production restores and the changes that weaken
protection (a target's environment or database, ``approve_restore`` grants, retention, schedules and
storage, privileged roles); the dashboard lists ``approvals_waiting_for(user)`` and the certification
links each approval to its page. Protection changes are decided on the approval's own page
(``drpanel:approval-detail``), through their kind's ``approve`` service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.urls import reverse
from django.utils import timezone

from backups import systems
from backups.deletion import may_approve_deletion
from drpanel import roles
from drpanel.approvals import may_approve_protection_change
from drpanel.models import Approval
from drpanel.permissions import has_object_right
from restores import targets
from restores.models import APPROVE_RESTORE, RestoreRun


def _may_delete(user, approval: Approval) -> bool:
    return may_approve_deletion(user)


@dataclass(frozen=True)
class ApprovalKind:
    """Who may decide an approval of a kind, where it is decided, and how to name it."""

    may_decide: Callable
    url: Callable
    label: str
    approve: Callable | None = None


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


def _may_protect(about: Callable | None = None) -> Callable:
    """Any active Manager or Admin decides; never the user the change is about (``about(approval)``'s id)."""
    def may_decide(user, approval: Approval) -> bool:
        if about is not None and str(about(approval)) == str(user.pk):
            return False
        return may_approve_protection_change(user)
    return may_decide


def _approval_page(approval: Approval) -> str:
    return reverse("drpanel:approval-detail", args=[approval.pk])


PROTECTION_KINDS: dict[str, ApprovalKind] = {
    targets.TARGET_CHANGE_APPROVAL: ApprovalKind(
        may_decide=_may_protect(), url=_approval_page, label="Change a target's environment or database",
        approve=targets.target_change_approve),
    targets.RIGHT_GRANT_APPROVAL: ApprovalKind(
        may_decide=_may_protect(lambda approval: approval.params.get("user_id")), url=_approval_page,
        label="Grant approve_restore on a target",
        approve=targets.target_right_grant_approve),
    systems.SYSTEM_CHANGE_APPROVAL: ApprovalKind(
        may_decide=_may_protect(), url=_approval_page, label="Shrink retention or turn schedules off",
        approve=systems.system_change_approve),
    systems.LOCATION_CHANGE_APPROVAL: ApprovalKind(
        may_decide=_may_protect(), url=_approval_page, label="Disable a storage location",
        approve=systems.location_change_approve),
    roles.ROLE_CHANGE_APPROVAL: ApprovalKind(
        may_decide=_may_protect(lambda approval: approval.object_id), url=_approval_page,
        label="Give a user a privileged role",
        approve=roles.role_change_approve),
    roles.GROUP_PERMISSIONS_APPROVAL: ApprovalKind(
        may_decide=_may_protect(), url=_approval_page, label="Give a privileged group more permissions",
        approve=roles.group_permissions_change_approve),
}
APPROVAL_KINDS.update(PROTECTION_KINDS)


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
