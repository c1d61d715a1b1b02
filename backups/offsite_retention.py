"""Off-site retention: a location's packages follow the system's recovery window as Barman's own retention does.

Any point in the last ``recovery_window_days`` must stay recoverable from each off-site location.
The oldest point of the window needs the newest base backup that ended before it (and the WAL
from that base's first segment on), so per location:

- a base package is removed only when a **newer** ``ok`` base package of the same location ended
  at or before the window's start (the newer one recovers every point the older one could, inside
  the window);
- a WAL package is removed only when it ends before the first segment of the oldest base package
  kept there (no kept base backup replays it).

A removal deletes the object first, then marks the row ``removed`` and audits it in one
transaction; a location that refuses the delete keeps the row ``ok`` (tried again next time).
Packages already ``missing`` there are marked ``removed`` the same way when retention would have
removed them, so a lost batch nobody needs stops showing as a gap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from backups import barman
from backups.models import OffsitePackage, StorageLocation, System
from backups.offsite_catalog import describe
from backups.storage import StorageError
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction

log = logging.getLogger(__name__)

RETAINED = (OffsitePackage.Status.OK, OffsitePackage.Status.MISSING)


def base_ended(package: OffsitePackage) -> datetime | None:
    ended = (package.manifest.get("base_backup_information") or {}).get("end_time")
    return datetime.fromisoformat(ended) if ended else None


@dataclass(frozen=True)
class RetentionPlan:
    """What retention would remove from one location now, and the oldest base package it keeps."""

    location: StorageLocation
    window_start: datetime
    oldest_kept: OffsitePackage | None
    bases: list[OffsitePackage]
    wal: list[OffsitePackage]

    @property
    def packages(self) -> list[OffsitePackage]:
        return [*self.bases, *self.wal]


def retention_plan(system: System, location: StorageLocation, *, now: datetime | None = None) -> RetentionPlan:
    """The packages of ``system`` in ``location`` outside its recovery window that no kept base backup needs."""
    window_start = (now or timezone.now()) - timedelta(days=system.recovery_window_days)
    packages = OffsitePackage.objects.filter(system=system, location=location, status__in=RETAINED)
    bases = sorted((p for p in packages.filter(kind=OffsitePackage.Kind.BASE) if base_ended(p)), key=base_ended)
    ok_bases = [p for p in bases if p.status == OffsitePackage.Status.OK]
    # The newest ok base that ended before the window starts recovers its oldest point: older ones are not needed.
    anchor = max((p for p in ok_bases if base_ended(p) <= window_start), key=base_ended, default=None)
    if anchor is None:
        return RetentionPlan(location, window_start, ok_bases[0] if ok_bases else None, [], [])
    old_bases = [p for p in bases if base_ended(p) < base_ended(anchor) and p.pk != anchor.pk]
    kept = [p for p in ok_bases if p not in old_bases]
    oldest = min(kept, key=lambda p: barman.segment_number(p.first_segment))
    begin = barman.segment_number(oldest.first_segment)
    wal = [p for p in packages.filter(kind=OffsitePackage.Kind.WAL)
           if barman.segment_number(p.last_segment)[0] <= begin[0]
           and barman.segment_number(p.last_segment)[1] < begin[1]]
    return RetentionPlan(location, window_start, oldest, old_bases, sorted(wal, key=lambda p: p.first_segment))


def offsite_retention(system: System, location: StorageLocation, *, now: datetime | None = None
                      ) -> list[OffsitePackage]:
    """Remove what ``retention_plan`` names from ``location`` (each removal audited); the packages removed."""
    plan = retention_plan(system, location, now=now)
    removed = []
    backend = location.backend()
    for package in plan.packages:
        try:
            backend.delete(package.key)
        except StorageError as exc:
            log.warning("%s: off-site retention could not delete %s from %s: %s", system.name, package.label,
                        location.name, exc)
            continue
        with transaction.atomic():
            # Conditional on the status read: a package a concurrent check marked otherwise is left to it.
            changed = OffsitePackage.objects.filter(pk=package.pk, status=package.status).update(
                status=OffsitePackage.Status.REMOVED, removed_at=timezone.now())
            if not changed:
                continue
            package.refresh_from_db()
            audit_record(actor=None, action=AuditAction.OFFSITE_PACKAGE_REMOVED, obj=system,
                         details={**describe(package), "first_segment": package.first_segment,
                                  "last_segment": package.last_segment,
                                  "recovery_window_days": system.recovery_window_days,
                                  "window_start": plan.window_start.isoformat(),
                                  "oldest_kept_base": plan.oldest_kept.backup_id if plan.oldest_kept else None})
        removed.append(package)
    return removed
