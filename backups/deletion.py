"""Deleting an artifact: asked for by an operator, approved by a manager (or decided by retention), audited."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from backups import hooks
from backups.errors import BackupError
from backups.models import Artifact, ArtifactCopy
from backups.storage import StorageError, manifest_key
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel.approvals import approval_approve, approval_consume, approval_request, open_approvals
from drpanel.models import Approval
from drpanel.permissions import Cap, Denied, Role, require_cap
from drpanel.scrub import scrub

DELETE_APPROVAL = "artifact.delete"


def _delete_params(artifact: Artifact) -> dict:
    return {"artifact": str(artifact.id), "sha256": artifact.sha256, "storage_key": artifact.storage_key}


def may_approve_deletion(user) -> bool:
    """Managers approve artifact deletions (never their own request: ``approval_approve`` checks that)."""
    return bool(user.is_active and user.groups.filter(name=Role.MANAGER.value).exists())


def artifact_delete_request(*, actor, artifact: Artifact, reason: str, request=None) -> Approval:
    """Ask for a manual deletion; it happens only when a manager approves it."""
    require_cap(actor, Cap.START_JOBS, action="artifact.delete", obj=artifact)
    if not artifact.is_live:
        raise BackupError("this artifact is already deleted")
    if not (reason or "").strip():
        raise BackupError("say why this artifact should be deleted")
    existing = open_approvals(artifact, DELETE_APPROVAL).first()
    if existing is not None:
        raise BackupError(f"a deletion of this artifact is already {existing.state} (approval #{existing.pk})")
    return approval_request(actor=actor, kind=DELETE_APPROVAL, subject=artifact, params=_delete_params(artifact),
                            reason=reason, request=request)


def artifact_delete_approve(*, actor, approval: Approval, password: str, request=None) -> Artifact:
    """A manager (not the requester) approves with their password; the deletion runs at once."""
    artifact = approval.subject
    approval = approval_approve(actor=actor, approval=approval, password=password, params=_delete_params(artifact),
                                may_approve=may_approve_deletion, request=request)
    return artifact_delete(actor=actor, artifact=artifact, approval=approval, request=request)


def artifact_delete(*, actor, artifact: Artifact, approval: Approval | None = None, retention: dict | None = None,
                    request=None) -> Artifact:
    """Delete an artifact from every location. Needs an approved approval, or a retention decision
    (system actor). Refused while a restore of its system runs."""
    if approval is None and retention is None:
        raise Denied("Deleting an artifact needs a manager's approval.", obj=artifact, action="artifact.delete")
    if hooks.restore_running(artifact.system):
        raise BackupError(f"a restore of {artifact.system.name} is running; artifacts are not deleted meanwhile")
    with transaction.atomic():
        locked = Artifact.objects.select_for_update().get(pk=artifact.pk)
        if not locked.is_live:
            raise BackupError("this artifact is already deleted")
        if approval is not None:
            approval_consume(approval=approval, params=_delete_params(locked), actor=actor)
        Artifact.objects.filter(pk=locked.pk).update(status=Artifact.Status.DELETED, deleted_at=timezone.now())
        audit_record(actor=actor, action=AuditAction.ARTIFACT_DELETED, obj=locked, request=request, details={
            "why": "retention" if retention is not None else "approved deletion",
            "approval": approval.pk if approval else None,
            "approved_by": approval.decided_by.get_username() if approval and approval.decided_by else None,
            "requested_by": approval.requested_by.get_username() if approval else None,
            "retention": retention, "sha256": locked.sha256, "kind": locked.kind,
            "created_at": locked.created_at})
    failures = []
    for copy in artifact.copies.select_related("location").exclude(status=ArtifactCopy.Status.DELETED):
        try:
            backend = copy.location.backend()
            backend.delete(copy.key)
            backend.delete(manifest_key(copy.key))
        except StorageError as exc:
            failures.append(scrub(f"{copy.location.name}: {exc}"))
            continue
        ArtifactCopy.objects.filter(pk=copy.pk).update(status=ArtifactCopy.Status.DELETED)
    if failures:
        with transaction.atomic():
            audit_record(actor=None, action=AuditAction.ARTIFACT_DELETE_INCOMPLETE, obj=artifact, outcome="failure",
                         details={"failures": failures})
    artifact.refresh_from_db()
    return artifact
