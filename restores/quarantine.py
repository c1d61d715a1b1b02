"""Quarantine of artifacts found in storage: refusing to use them, and settling their adoption.

The inventory sync (``backups.inventory``) catalogues what it finds in storage as
``Artifact.Status.QUARANTINED``. Restore requests and verifications (other than the adoption's
own) refuse such an artifact with its reason, audited (``refuse_quarantined``); the adoption
verification settles it (``adoption_settle``): quarantined → available when it passed, or still
quarantined with the failure as its reason. Adopting is ``restores.adoption.artifact_adopt``.
"""

from django.db import transaction
from django.utils import timezone

from backups.models import Artifact
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from restores.models import VerificationRun


def quarantine_message(artifact: Artifact) -> str:
    """Why a quarantined artifact cannot be used, for the person who asked."""
    return (f"this artifact is quarantined: {artifact.quarantine_reason or 'it was found in storage'}. "
            "An admin must adopt it (artifact page, or POST /api/v1/artifacts/{id}/adopt) and it must pass "
            "its verification first")


def refuse_quarantined(*, actor, artifact: Artifact, what: str, error: type[Exception], request=None) -> None:
    """Raise ``error`` with the quarantine's reason when ``artifact`` is quarantined; audit the refusal first.

    The audit event is committed on its own (the refused request changes nothing else).
    """
    if artifact.status != Artifact.Status.QUARANTINED:
        return
    message = quarantine_message(artifact)
    with transaction.atomic():
        audit_record(actor=actor, action=AuditAction.ARTIFACT_QUARANTINE_REFUSED, obj=artifact, request=request,
                     outcome="denied", details={"refused": what, "reason": artifact.quarantine_reason[:500]})
    raise error(message)


def adoption_settle(run: VerificationRun, *, error: str) -> None:
    """An adoption verification finished: release the artifact, or keep it quarantined with the reason.

    Called inside the transaction that finishes the run. Conditional on the artifact still being
    quarantined, so a run delivered twice settles once.
    """
    if run.trigger != VerificationRun.Trigger.ADOPTION:
        return
    details = {"run": str(run.pk), "level": run.level,
               "adopted_by": run.requested_by.get_username() if run.requested_by else None}
    if not error:
        released = Artifact.objects.filter(pk=run.artifact_id, status=Artifact.Status.QUARANTINED).update(
            status=Artifact.Status.AVAILABLE, quarantine_reason="", adopted_by=run.requested_by,
            adopted_at=timezone.now())
        if released:
            audit_record(actor=None, action=AuditAction.ARTIFACT_RELEASED, obj=run.artifact, details=details)
        return
    reason = f"its adoption verification (up to {run.level}) failed: {error}"[:2000]
    kept = Artifact.objects.filter(pk=run.artifact_id, status=Artifact.Status.QUARANTINED).update(
        quarantine_reason=reason)
    if kept:
        audit_record(actor=None, action=AuditAction.ARTIFACT_ADOPTION_FAILED, obj=run.artifact, outcome="failure",
                     details={**details, "error": error[:500]})
