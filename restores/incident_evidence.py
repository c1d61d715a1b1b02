"""Evidence drills give the checklists: the weekly "Validate disaster recovery runbook" and the monthly
"Complete disaster recovery drill" and "Document RTO/RPO measurements".

A drill counts when it **completed its runbook without skipping a required step** (recovered,
so its RTO and RPO were measured) within the period. Registered from ``RestoresConfig.ready``.
"""

from datetime import UTC, datetime, time

from drpanel.evidence import Evidence, EvidenceRejected, register_validator
from restores.models import Incident, IncidentStep

INCIDENT_TYPE = "restores.incident"


def _bounds(start, end) -> tuple[datetime, datetime]:
    return datetime.combine(start, time.min, tzinfo=UTC), datetime.combine(end, time.max, tzinfo=UTC)


def counting_drills(start, end):
    """Drills recovered within ``start``–``end`` with no required step skipped (or left undone)."""
    low, high = _bounds(start, end)
    skipped = IncidentStep.objects.filter(required=True).exclude(state=IncidentStep.State.DONE).values("incident_id")
    return (Incident.objects.filter(is_drill=True, recovered_at__range=(low, high))
            .exclude(pk__in=skipped).select_related("system", "target", "runbook"))


def drill_evidence(drill: Incident) -> Evidence:
    rpo = (f", RPO {drill.rpo_seconds:.0f} s (target {drill.rpo_target_seconds} s)"
           if drill.rpo_seconds is not None else "")
    return Evidence(label=f"drill of the {drill.get_scenario_display()} runbook v{drill.runbook.version} on "
                          f"{drill.system.name} into {drill.target.name}, "
                          f"recovered {drill.recovered_at:%Y-%m-%d %H:%M}: "
                          f"RTO {drill.rto_seconds:.0f} s (target {drill.rto_target_seconds} s){rpo}",
                    url=f"/incidents/{drill.pk}/report", object_type=INCIDENT_TYPE, object_id=str(drill.pk))


class _DrillEvidence:
    def candidates(self, start, end) -> list[Evidence]:
        return [drill_evidence(d) for d in counting_drills(start, end).order_by("-recovered_at")[:20]]

    def validate(self, start, end, object_type: str, object_id: str) -> Evidence:
        if object_type == INCIDENT_TYPE:
            try:
                return drill_evidence(counting_drills(start, end).get(pk=object_id))
            except (Incident.DoesNotExist, ValueError):
                pass
        raise EvidenceRejected(f"That is not a drill of {start:%Y-%m-%d}–{end:%Y-%m-%d} that completed its runbook "
                               "without skipping a required step.")


@register_validator("weekly.runbook")
class RunbookValidatedByDrill(_DrillEvidence):
    """Validate disaster recovery runbook: a drill that followed a runbook to the end this week."""


@register_validator("monthly.drill")
class MonthlyDrill(_DrillEvidence):
    """Complete disaster recovery drill: a drill of the month that completed its runbook."""


@register_validator("monthly.rto_rpo")
class MonthlyMeasurements(_DrillEvidence):
    """Document RTO/RPO measurements: a drill of the month, whose report holds its measured RTO and RPO."""
