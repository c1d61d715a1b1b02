"""What an off-site location holds of a system's continuous protection: its packages, where they live, the
WAL it covers per timeline and the first segment it lacks (``backups.offsite`` writes them)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from backups import barman
from backups.models import OffsitePackage, OffsiteRun, StorageLocation, System
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction

PREFIX_ROOT = "drpanel/continuous/"


def prefix(system: System) -> str:
    """Where a system's packages live in every off-site location (internal ids only)."""
    return f"{PREFIX_ROOT}system-{int(system.pk)}/"


def package_key(system: System, package_id: uuid.UUID, *, kind: str, name: str) -> str:
    return f"{prefix(system)}{kind}/{name}-{package_id}.drp"


def segments_covered(system: System, location: StorageLocation, statuses) -> dict[int, set[int]]:
    """Segment positions per timeline held by the location's WAL packages in ``statuses``."""
    covered: dict[int, set[int]] = {}
    for first, last in OffsitePackage.objects.filter(system=system, location=location, kind=OffsitePackage.Kind.WAL,
                                                     status__in=statuses).values_list("first_segment",
                                                                                      "last_segment"):
        timeline, start = barman.segment_number(first)
        _, end = barman.segment_number(last)
        covered.setdefault(timeline, set()).update(range(start, end + 1))
    return covered


def describe(package: OffsitePackage) -> dict:
    return {"package": str(package.pk), "kind": package.kind, "what": package.label,
            "location": package.location.name, "key": package.key, "size": package.size,
            "sha256": package.sha256, "key_id": package.key_id, "status": package.status}


def offsite_check(system: System, location: StorageLocation) -> list[OffsitePackage]:
    """Packages counted ``ok`` whose object the location no longer lists become ``missing`` (audited); those."""
    listed = {o.key: o.size for o in location.backend().list(prefix(system))}
    lost = []
    for package in OffsitePackage.objects.filter(system=system, location=location, status=OffsitePackage.Status.OK):
        if listed.get(package.key) == package.size:
            continue
        with transaction.atomic():
            OffsitePackage.objects.filter(pk=package.pk, status=OffsitePackage.Status.OK).update(
                status=OffsitePackage.Status.MISSING, checked_at=timezone.now(),
                error=f"not found in {location.name}" if package.key not in listed else
                f"{location.name} holds {listed[package.key]} bytes, not {package.size}")
            package.refresh_from_db()
            audit_record(actor=None, action=AuditAction.OFFSITE_PACKAGE_MISSING, obj=system, outcome="failure",
                         details={**describe(package), "first_segment": package.first_segment,
                                  "last_segment": package.last_segment})
        lost.append(package)
    OffsitePackage.objects.filter(system=system, location=location, status=OffsitePackage.Status.OK,
                                  key__in=list(listed)).update(checked_at=timezone.now())
    return lost


@dataclass(frozen=True)
class Coverage:
    """What a location holds of one timeline's WAL: first and last segment, the first one missing between."""

    timeline: int
    first: str
    last: str
    first_missing: str
    missing: int
    missing_batches: list[str]


def wal_coverage(system: System, location: StorageLocation) -> list[Coverage]:
    """Per timeline, the WAL the location holds (``ok`` packages) and its first gap, with the batches gone."""
    covered = segments_covered(system, location, [OffsitePackage.Status.OK])
    gone = OffsitePackage.objects.filter(system=system, location=location, kind=OffsitePackage.Kind.WAL,
                                         status__in=[OffsitePackage.Status.MISSING, OffsitePackage.Status.FAILED])
    result = []
    for timeline in sorted(covered):
        numbers = sorted(covered[timeline])
        first_missing, missing = "", 0
        for before, after in zip(numbers, numbers[1:], strict=False):
            if after - before > 1:
                missing += after - before - 1
                first_missing = first_missing or barman.segment_name(timeline, before + 1)
        lost = [f"{p.first_segment}–{p.last_segment}" for p in gone if p.timeline == timeline
                and not set(range(barman.segment_number(p.first_segment)[1],
                                  barman.segment_number(p.last_segment)[1] + 1)) <= covered[timeline]]
        result.append(Coverage(timeline, barman.segment_name(timeline, numbers[0]),
                               barman.segment_name(timeline, numbers[-1]), first_missing, missing, lost))
    return result


def offsite_summary(system: System) -> list[dict]:
    """Per off-site location, for the system's page: base backups there, WAL coverage, packages gone, last run."""
    last_run = OffsiteRun.objects.filter(system=system).first()
    summary = []
    for location in StorageLocation.objects.filter(enabled=True, role=StorageLocation.Role.OFFSITE):
        packages = OffsitePackage.objects.filter(system=system, location=location)
        summary.append({
            "location": location,
            "bases": packages.filter(kind=OffsitePackage.Kind.BASE, status=OffsitePackage.Status.OK).count(),
            "coverage": wal_coverage(system, location),
            "gone": [p for p in packages.filter(status=OffsitePackage.Status.MISSING)],
            "last_run": last_run,
        })
    return summary
