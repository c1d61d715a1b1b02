"""Evidence the restores app gives the checklists: the weekly "Test database restore on staging" item.

Accepted evidence (``weekly.staging_restore``): a **succeeded restore run into a staging or
scratch target**, or a **succeeded restore-test verification**, finished within the week
being ticked.
"""

from datetime import UTC, datetime, time

from drpanel.evidence import Evidence, EvidenceRejected, register_validator
from restores.models import RestoreRun, Target, VerificationRun

RESTORE_TYPE = "restores.restorerun"
VERIFICATION_TYPE = "restores.verificationrun"


def _bounds(start, end) -> tuple[datetime, datetime]:
    return datetime.combine(start, time.min, tzinfo=UTC), datetime.combine(end, time.max, tzinfo=UTC)


def _restore_evidence(run: RestoreRun) -> Evidence:
    rto = f", RTO {run.rto_seconds:.0f} s" if run.rto_seconds is not None else ""
    return Evidence(label=f"{run.get_mode_display()} restore into {run.target.name} ({run.target.environment}) "
                          f"succeeded {run.finished_at:%Y-%m-%d %H:%M}{rto}",
                    url=f"/restores/runs/{run.pk}/", object_type=RESTORE_TYPE, object_id=str(run.pk))


def _verification_evidence(run: VerificationRun) -> Evidence:
    return Evidence(label=f"restore-test of {run.artifact.system.name} artifact {run.artifact.short_id} succeeded "
                          f"{run.finished_at:%Y-%m-%d %H:%M}",
                    url=f"/restores/verifications/{run.pk}/", object_type=VERIFICATION_TYPE, object_id=str(run.pk))


def _restores(start, end):
    low, high = _bounds(start, end)
    return RestoreRun.objects.filter(
        state=RestoreRun.State.SUCCEEDED, finished_at__range=(low, high),
        target__environment__in=[Target.Environment.STAGING, Target.Environment.SCRATCH]).select_related("target")


def _verifications(start, end):
    low, high = _bounds(start, end)
    return VerificationRun.objects.filter(
        state=VerificationRun.State.SUCCEEDED, level=VerificationRun.Level.RESTORE_TEST,
        finished_at__range=(low, high)).select_related("artifact__system")


@register_validator("weekly.staging_restore")
class StagingRestoreEvidence:
    """A successful staging/scratch restore, or a successful restore-test, of the week."""

    def candidates(self, start, end) -> list[Evidence]:
        found = [_restore_evidence(r) for r in _restores(start, end).order_by("-finished_at")[:20]]
        found += [_verification_evidence(v) for v in _verifications(start, end).order_by("-finished_at")[:20]]
        return found

    def validate(self, start, end, object_type: str, object_id: str) -> Evidence:
        try:
            if object_type == RESTORE_TYPE:
                return _restore_evidence(_restores(start, end).get(pk=object_id))
            if object_type == VERIFICATION_TYPE:
                return _verification_evidence(_verifications(start, end).get(pk=object_id))
        except (RestoreRun.DoesNotExist, VerificationRun.DoesNotExist, ValueError):
            pass
        raise EvidenceRejected(
            f"That is not a successful staging or scratch restore, nor a successful restore-test, of "
            f"{start:%Y-%m-%d}–{end:%Y-%m-%d}.")
