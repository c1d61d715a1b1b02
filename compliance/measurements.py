"""RPO and RTO as measured: WAL last received or the age of the newest verified full, and the timed restores.

Read-only selectors shared by the dashboard, the health page, the certification, the API and
the metrics. ``rpo_for()`` measures a system's RPO from the WAL last received (continuous protection)
or else from its newest full verified at decrypt
level or better; ``last_rto()`` and ``drill_rtos()`` read the restore runs' measured RTOs
(request → healthy), each linked to its run. Nothing measured yet gives ``None`` or an empty
list, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.urls import reverse

from backups.continuous import seconds_since
from backups.hooks import levels_at_least
from backups.models import Artifact, ContinuousState, System
from compliance.health import DATABASE_KINDS, VERIFIED_LEVEL, artifact_evidence, format_age
from drpanel import clock
from drpanel.evidence import Evidence
from restores.models import Incident, RestoreRun, Target
from restores.models_incidents import OPEN_STATES


@dataclass(frozen=True)
class Rpo:
    """RPO now, against the target: now − last WAL received under continuous protection, else the age of the newest
    full verified at decrypt level or better."""

    system: System
    artifact: Artifact | None
    seconds: int | None
    target_seconds: int
    wal_received_at: datetime | None = None

    @property
    def measured(self) -> bool:
        return self.seconds is not None

    @property
    def met(self) -> bool | None:
        return None if self.seconds is None else self.seconds <= self.target_seconds

    @property
    def continuous(self) -> bool:
        """Measured from the WAL stream (seconds), not from the age of a verified full."""
        return self.wal_received_at is not None

    @property
    def age(self) -> str:
        return format_age(timedelta(seconds=self.seconds)) if self.seconds is not None else ""

    @property
    def evidence(self) -> Evidence | None:
        if self.wal_received_at is not None:
            # The system page's continuous protection section: its WAL per timeline, receiver and Barman's check.
            return Evidence(f"{self.system.name}: WAL streamed by Barman, last received "
                            f"{self.wal_received_at:%Y-%m-%d %H:%M:%S} UTC",
                            reverse("backups:system-detail", args=[self.system.pk]) + "#continuous",
                            "backups.system", str(self.system.pk))
        if self.artifact is None:
            return None
        return artifact_evidence(self.artifact, f"{self.artifact.kind} {self.artifact.short_id} of "
                                                f"{self.artifact.created_at:%Y-%m-%d %H:%M} UTC, verified "
                                                f"{self.artifact.last_verified_level}")

    def as_dict(self) -> dict:
        return {"system": self.system.name, "seconds": self.seconds, "target_seconds": self.target_seconds,
                "met": self.met, "artifact": str(self.artifact.pk) if self.artifact else None,
                "evidence": self.evidence.as_dict() if self.evidence else None}


def rpo_target_seconds() -> int:
    return settings.RPO_TARGET_MINUTES * 60


def rto_target_seconds() -> int:
    return settings.RTO_TARGET_MINUTES * 60


def verified_levels() -> list[str]:
    """``decrypt`` and every level above it."""
    return levels_at_least(VERIFIED_LEVEL)


def rpo_for(system: System, now: datetime | None = None) -> Rpo:
    """RPO now of ``system``: now − last WAL received (continuous protection, against the system's own target), else
    the age of its newest available full (or base backup) verified at decrypt level or better (None: none is)."""
    now = now or clock.now()
    if system.continuous_enabled:
        state = ContinuousState.objects.filter(system=system).only("last_wal_at").first()
        if state is not None and state.last_wal_at is not None:
            return rpo_from(system, now, last_wal_at=state.last_wal_at, artifact=None)
    artifact = (Artifact.objects.filter(system=system, kind__in=DATABASE_KINDS, status=Artifact.Status.AVAILABLE,
                                        created_at__lte=now, last_verified_level__in=verified_levels())
                .defer("manifest").order_by("-created_at").first())
    return rpo_from(system, now, last_wal_at=None, artifact=artifact)


def rpo_from(system: System, now: datetime, *, last_wal_at: datetime | None, artifact: Artifact | None) -> Rpo:
    """``rpo_for`` from what it reads: when the last WAL arrived (continuous protection) and the newest
    available full or base backup verified at decrypt level or better (for callers that load both for
    many systems at once)."""
    if system.continuous_enabled and last_wal_at is not None:
        return Rpo(system=system, artifact=None, seconds=seconds_since(last_wal_at, now),
                   target_seconds=system.rpo_target_minutes * 60, wal_received_at=last_wal_at)
    seconds = int((now - artifact.created_at).total_seconds()) if artifact else None
    return Rpo(system=system, artifact=artifact, seconds=seconds, target_seconds=rpo_target_seconds())


def worst_rpo(rpos: list[Rpo]) -> Rpo | None:
    """The RPO to show: an unmeasured system first (its data is not known to be recoverable), else the oldest."""
    if not rpos:
        return None
    unmeasured = [r for r in rpos if not r.measured]
    if unmeasured:
        return unmeasured[0]
    return max(rpos, key=lambda r: r.seconds)


@dataclass(frozen=True)
class Drill:
    """One timed restore (a drill): when, its measured RTO, and where its evidence is."""

    at: datetime
    seconds: int
    label: str
    url: str


def _timed_runs():
    """Restore runs whose RTO was measured (request → healthy): succeeded, or rolled back after going live."""
    return (RestoreRun.objects.filter(rto_seconds__isnull=False, healthy_at__isnull=False)
            .filter(Q(state=RestoreRun.State.SUCCEEDED) | Q(state=RestoreRun.State.ROLLED_BACK))
            .select_related("target", "artifact__system", "recovery_system"))


def drill_filter():
    """Which restore runs are drills: marked as one, or into a staging or scratch target."""
    return Q(is_drill=True) | Q(target__environment__in=[Target.Environment.STAGING, Target.Environment.SCRATCH])


def _as_drill(run) -> Drill:
    kind = "drill" if run.is_drill or not run.target.is_production else "restore"
    return Drill(at=run.healthy_at, seconds=round(run.rto_seconds),
                 label=f"{kind} {run.short_id} of {run.source_system.name} into {run.target.name} "
                       f"({run.target.environment})",
                 url=reverse("restores:run-detail", args=[run.pk]))


def last_rto() -> Drill | None:
    """The newest measured RTO: the restore run (drill or production restore) that went live last."""
    run = _timed_runs().order_by("-healthy_at").first()
    return _as_drill(run) if run else None


def drill_rtos(since: datetime) -> list[Drill]:
    """Measured RTOs of the drills that went live since ``since``, oldest first."""
    runs = _timed_runs().filter(drill_filter(), healthy_at__gte=since).order_by("healthy_at")
    return [_as_drill(run) for run in runs]


# --- incidents and drills (disaster mode) ---------------------------------------------------------------


@dataclass(frozen=True)
class IncidentMeasure:
    """RTO and RPO measured by the last recovered incident (or drill), against its system's targets."""

    incident: Incident

    @property
    def url(self) -> str:
        return reverse("restores:incident-report", args=[self.incident.pk])

    def as_dict(self) -> dict:
        i = self.incident
        return {"incident": str(i.pk), "system": i.system.name, "scenario": i.scenario, "drill": i.is_drill,
                "recovered_at": i.recovered_at.isoformat(), "url": self.url,
                "rto_seconds": i.rto_seconds, "rto_target_seconds": i.rto_target_seconds,
                "rto_met": i.rto_seconds <= i.rto_target_seconds,
                "rpo_seconds": i.rpo_seconds, "rpo_target_seconds": i.rpo_target_seconds,
                "rpo_met": None if i.rpo_seconds is None else i.rpo_seconds <= i.rpo_target_seconds}


def last_incident_measure(*, drills: bool, system: System | None = None, since: datetime | None = None,
                          until: datetime | None = None) -> IncidentMeasure | None:
    """The incident (``drills=False``) or drill recovered last (of ``system``, within ``since``–``until``)."""
    rows = Incident.objects.filter(is_drill=drills, recovered_at__isnull=False).select_related("system")
    if system is not None:
        rows = rows.filter(system=system)
    if since is not None:
        rows = rows.filter(recovered_at__gte=since)
    if until is not None:
        rows = rows.filter(recovered_at__lt=until)
    incident = rows.order_by("-recovered_at").first()
    return IncidentMeasure(incident) if incident else None


def open_incidents() -> list[Incident]:
    """Incidents (not drills) not closed yet, oldest first."""
    return list(Incident.objects.filter(state__in=OPEN_STATES, is_drill=False).select_related("system")
                .order_by("declared_at"))
