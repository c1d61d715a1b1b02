"""Adopting an artifact found in storage: the person who vouches for it, and the verification that decides.

Only admins adopt (``Cap.MANAGE_PANEL``): they manage storage locations and the catalog, and an
operator who could write to a bucket must not also be able to make what they put there
restorable. Adoption does not release the artifact by itself: it queues a verification up to
the ``structure`` level (``decrypt`` for incrementals, which have no structure check), and
``restores.quarantine.adoption_settle`` releases it only when that passes.
"""

from django.db import transaction
from django.utils import timezone

from backups.models import Artifact
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel.permissions import Cap, require_cap
from restores.models import VerificationRun
from restores.verifications import VERIFIABLE_KINDS, verification_request


class AdoptionError(Exception):
    """The artifact cannot be adopted as asked (it is not quarantined); the message says why."""


def adoption_level(artifact: Artifact) -> str:
    """The level an adopted artifact must pass: structure, or decrypt for kinds without a structure check."""
    return VerificationRun.Level.STRUCTURE if artifact.kind in VERIFIABLE_KINDS else VerificationRun.Level.DECRYPT


def artifact_adopt(*, actor, artifact: Artifact, request=None) -> VerificationRun:
    """Adopt a quarantined artifact (admins): audited, and its verification queued after commit.

    Returns the verification run (the one already queued when adopted twice). Raises ``Denied``
    (not an admin) or ``AdoptionError`` (the artifact is not quarantined).
    """
    require_cap(actor, Cap.MANAGE_PANEL, action="artifact.adopt", obj=artifact)
    with transaction.atomic():
        # Lock the row: an adoption and the settling of an earlier one serialise here.
        locked = Artifact.objects.select_for_update().get(pk=artifact.pk)
        if locked.status != Artifact.Status.QUARANTINED:
            raise AdoptionError(f"this artifact is {locked.get_status_display()}: only a quarantined artifact "
                                "can be adopted")
        level = adoption_level(locked)
        reason = (f"adopted by {actor.get_username()} on {timezone.now():%Y-%m-%d %H:%M} UTC; usable once its "
                  f"verification up to the {level} level passes")
        Artifact.objects.filter(pk=locked.pk).update(quarantine_reason=reason)
        locked.quarantine_reason = reason
        run = verification_request(actor=actor, artifact=locked, level=level,
                                   trigger=VerificationRun.Trigger.ADOPTION, request=request)
        audit_record(actor=actor, action=AuditAction.ARTIFACT_ADOPTED, obj=locked, request=request,
                     details={"run": str(run.pk), "level": level, "source": locked.source})
    artifact.refresh_from_db()
    return run
