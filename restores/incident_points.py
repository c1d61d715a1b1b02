"""The recovery point of an incident: the newest verified full, or a point in time of a continuously protected system.

The runbook step "choose the recovery point" (``restores.incident_steps``) calls
``choose_recovery_point`` with what the operator chose: the newest verified full, the latest WAL
Barman received, or a moment typed as the point-in-time restore form takes it ("10 minutes ago",
a date and time with its offset or zone). A point in time is restored by
``restores.requests.restore_request_point`` (database-only; four eyes for production unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from django.utils import timezone

from backups.hooks import VERIFICATION_LEVELS
from backups.models import Artifact
from drpanel.templatetags.panel_time import format_at
from restores.models import Incident
from restores.moments import parse_moment
from restores.pitr import RecoveryPoint as PitrPoint
from restores.requests import DATABASE_FORMATS, first_base_backup
from restores.runstate import RestoreError

# The least a full must be verified at to be a recovery point (as the dashboard's RPO counts it).
VERIFIED_LEVEL = "decrypt"


@dataclass(frozen=True)
class RecoveryPoint:
    """What a restore brings back: the newest verified full (``kind="artifact"``), or a point in time of a
    continuously protected system: ``"latest"`` (its moment known once replayed) or ``"time"``."""

    kind: str
    at: datetime | None
    artifact: Artifact | None
    label: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, "at": self.at.isoformat() if self.at else None, "label": self.label,
                "artifact": str(self.artifact.pk) if self.artifact else None}


SECONDS = "Y-m-d H:i:s"


def choose_recovery_point(incident: Incident, choice: str = "") -> RecoveryPoint:
    """The recovery point of the incident, as chosen: ``"full"`` (the newest available full in a restorable format,
    verified at decrypt or better), ``"latest"`` (everything Barman received), or a moment (``restores.moments``:
    "10 minutes ago", a date and time with its offset or zone). Nothing chosen: the latest WAL for a
    continuously protected system, else the newest verified full."""
    system = incident.system
    choice = (choice or "").strip()
    if not choice:
        choice = "latest" if system.continuous_enabled else "full"
    if choice == "full":
        return _newest_verified_full(incident)
    if not system.continuous_enabled:
        raise RestoreError(f"{system.name} is not continuously protected: its recovery point is a verified full")
    first = first_base_backup(system)
    if first is None:
        raise RestoreError(f"{system.name} has no base backup yet: no point in time can be recovered")
    if choice == "latest":
        return RecoveryPoint(kind="latest", at=None, artifact=None, label="the latest WAL received (point in time)")
    if choice == "time":
        raise RestoreError("recovery point: type the moment (10 minutes ago, or a date and time with its zone)")
    try:
        moment = parse_moment(choice)
    except ValueError as exc:
        raise RestoreError(f"recovery point: {exc}") from None
    shown = format_at(moment, SECONDS)
    if moment > timezone.now():
        raise RestoreError(f"{shown} is in the future")
    if moment < first.created_at:
        raise RestoreError(f"{shown} is before the first base backup of {system.name} (it ended "
                           f"{format_at(first.created_at, SECONDS)})")
    return RecoveryPoint(kind="time", at=moment, artifact=None,
                         label=f"{shown} (point in time, {moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC)")


def _newest_verified_full(incident: Incident) -> RecoveryPoint:
    levels = list(VERIFICATION_LEVELS[VERIFICATION_LEVELS.index(VERIFIED_LEVEL):])
    artifact = (Artifact.objects.filter(system=incident.system, kind=Artifact.Kind.FULL,
                                        status=Artifact.Status.AVAILABLE, format__in=DATABASE_FORMATS,
                                        last_verified_level__in=levels)
                .defer("manifest").order_by("-created_at").first())
    if artifact is None:
        raise RestoreError(f"{incident.system.name} has no available full backup verified at {VERIFIED_LEVEL} level "
                           "or better: verify one, or restore one by hand from its page")
    return RecoveryPoint(kind="artifact", at=artifact.created_at, artifact=artifact,
                         label=f"full {artifact.short_id} of {artifact.created_at:%Y-%m-%d %H:%M:%S} UTC, verified "
                               f"{artifact.last_verified_level}")


def incident_point(incident: Incident):
    """The ``restores.pitr.RecoveryPoint`` the incident chose, None when it chose an artifact (or nothing yet)."""
    if incident.recovery_kind == "time" and incident.recovery_point_at is not None:
        return PitrPoint.at(incident.recovery_point_at)
    return PitrPoint.latest() if incident.recovery_kind == "latest" else None
