"""Evaluators of the daily checklist (the old guide's "Daily" items), registered by code.

Each looks at every system, at the moment of evaluation (the panel clock, at most the end of
the day evaluated), and returns ``passed`` only when every system passes, with a link to the
evidence of each. Decisions written down:

- **No system catalogued** → ``no_data``: there is nothing to evaluate.
- **Not part of a system's policy** (incrementals disabled, no config paths) → that system is
  *not applicable* and does not fail the item; when no system has the policy at all, the item
  is ``passed`` with a summary that says "Not applicable", linking to the policies. A policy
  that asks for nothing cannot be missed, and the monthly record must not count it as missed.
- **Full backup completed**: a full finished today with its SHA-256 recorded; a system whose
  policy asks for fulls less often than daily passes while its newest full is within policy.
- **Incremental / config every N hours**: from the newest backup before today (or the moment
  the system was added) through the evaluation moment, no gap between consecutive backups of
  that kind is longer than the policy's interval.
- **Health score 100**: every recorded score of the day (and the one in force at midnight)
  is 100; a system with no recorded score is ``no_data``.
- **Cloud sync verified** and **encryption integrity** use the health checks of the same
  names on the newest full (``compliance.health``).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

from django.urls import reverse
from django.utils import timezone

from backups.continuous import wal_stream_status
from backups.hooks import verified_at_least
from backups.models import Artifact, BackupRun, System
from compliance.health import (
    VERIFIED_LEVEL,
    artifact_evidence,
    format_age,
    health_evidence,
    newest_artifact,
    offsite_copy_check,
    system_evidence,
    verification_evidence,
)
from compliance.models import HealthSnapshot
from drpanel import clock
from drpanel.evidence import FAILED, NO_DATA, PASSED, Evidence, Result, register

MAX_EVIDENCE = 20


def _window(day: date) -> tuple[datetime, datetime]:
    """The start of the day and the moment evaluated: now, or the day's end for a day that is over."""
    start = datetime.combine(day, time.min, tzinfo=timezone.get_current_timezone())
    return start, min(clock.now(), start + timedelta(days=1))


def _systems() -> list[System]:
    return list(System.objects.order_by("name"))


def _no_systems() -> Result:
    return Result(NO_DATA, "No system is catalogued: there is nothing to evaluate.")


def _completed(system: System, kind: str):
    """Backups of a kind that finished (with their checksum), whatever happened to them since.

    Quarantined artifacts were found in storage, not made by a backup: they are no evidence.
    """
    return (Artifact.objects.filter(system=system, kind=kind)
            .exclude(status__in=[Artifact.Status.WRITING, Artifact.Status.FAILED, Artifact.Status.QUARANTINED])
            .exclude(sha256="").defer("manifest"))


def _result(statuses: list[str], lines: list[str], evidence: list[Evidence]) -> Result:
    if FAILED in statuses:
        status = FAILED
    elif NO_DATA in statuses:
        status = NO_DATA
    else:
        status = PASSED
    passed = statuses.count(PASSED)
    summary = f"{passed} of {len(statuses)} system(s) pass. " + " ".join(lines)
    return Result(status, summary[:500], tuple(evidence[:MAX_EVIDENCE]))


@register("daily.full_backup")
def full_backup_completed(day: date) -> Result:
    """A full backup of every system finished today, with its checksum recorded."""
    systems = _systems()
    if not systems:
        return _no_systems()
    start, at = _window(day)
    statuses, lines, evidence = [], [], []
    for system in systems:
        done = _completed(system, Artifact.Kind.FULL).filter(created_at__gte=start, created_at__lte=at)
        newest = done.order_by("-created_at").first()
        interval = system.interval(Artifact.Kind.FULL)
        if newest is not None:
            statuses.append(PASSED)
            lines.append(f"{system.name}: full {newest.short_id} finished {newest.created_at:%H:%M} UTC "
                         f"({done.count()} today).")
            evidence.append(artifact_evidence(newest))
            continue
        latest = newest_artifact(system, Artifact.Kind.FULL, at)
        if interval > timedelta(days=1) and latest is not None and at - latest.created_at <= interval:
            statuses.append(PASSED)
            lines.append(f"{system.name}: not due today (newest full is {format_age(at - latest.created_at)} old, "
                         f"policy every {interval.total_seconds() / 3600:g} h).")
            evidence.append(artifact_evidence(latest))
            continue
        statuses.append(FAILED)
        failed = (BackupRun.objects.filter(system=system, kind=Artifact.Kind.FULL, state=BackupRun.State.FAILED,
                                           created_at__gte=start, created_at__lte=at).order_by("-created_at").first())
        if failed is not None:
            lines.append(f"{system.name}: no full backup completed today; the last attempt failed "
                         f"({failed.error[:80]}).")
            evidence.append(Evidence(f"failed full backup run {str(failed.pk)[:8]} of {system.name}",
                                     reverse("backups:run-detail", args=[failed.pk]), "backups.backuprun",
                                     str(failed.pk)))
        else:
            lines.append(f"{system.name}: no full backup completed today.")
            evidence.append(system_evidence(system))
    return _result(statuses, lines, evidence)


def _gaps(system: System, kind: str, interval: timedelta, start: datetime, at: datetime):
    """Stretches longer than ``interval`` without a backup of ``kind`` between the day's start and ``at``."""
    done = _completed(system, kind)
    before = done.filter(created_at__lt=start).order_by("-created_at").first()
    today = list(done.filter(created_at__gte=start, created_at__lte=at).order_by("created_at"))
    anchor = before.created_at if before is not None else max(start, system.created_at)
    points = [anchor] + [a.created_at for a in today if a.created_at >= anchor] + [at]
    gaps = [(a, b) for a, b in zip(points, points[1:], strict=False) if b - a > interval]
    return gaps, today


def _every_n_hours(day: date, kind: str, not_applicable: str) -> Result:
    systems = _systems()
    if not systems:
        return _no_systems()
    start, at = _window(day)
    statuses, lines, evidence = [], [], []
    for system in systems:
        if kind == Artifact.Kind.INCREMENTAL and system.continuous_enabled:
            # Continuous protection replaces incrementals: the evidence is the WAL stream.
            ok, reason = wal_stream_status(system, at)
            statuses.append(PASSED if ok else FAILED)
            lines.append(f"{system.name}: {reason}")
            evidence.append(system_evidence(system, f"{system.name}: Barman checks and WAL catalog"))
            continue
        interval = system.interval(kind)
        if interval is None:
            lines.append(f"{system.name}: not applicable ({not_applicable}).")
            continue
        every = f"every {interval.total_seconds() / 3600:g} h"
        gaps, today = _gaps(system, kind, interval, start, at)
        evidence += [artifact_evidence(a) for a in reversed(today)][:6]
        if not gaps:
            statuses.append(PASSED)
            lines.append(f"{system.name}: {len(today)} {kind} backup(s) today, never more than {every} apart.")
            continue
        statuses.append(FAILED)
        first_gap = gaps[0]
        lines.append(f"{system.name}: no {kind} backup from {first_gap[0]:%m-%d %H:%M} to {first_gap[1]:%m-%d %H:%M} "
                     f"UTC ({format_age(first_gap[1] - first_gap[0])}; policy {every})"
                     + (f" and {len(gaps) - 1} more gap(s)." if len(gaps) > 1 else "."))
        if not today:
            evidence.append(system_evidence(system))
    if not statuses:
        return Result(PASSED, f"Not applicable: no system's policy asks for {kind} backups. " + " ".join(lines),
                      tuple(system_evidence(s, f"{s.name}: policy") for s in systems[:MAX_EVIDENCE]))
    return _result(statuses, lines, evidence)


@register("daily.incremental_backup")
def incremental_per_policy(day: date) -> Result:
    """Incremental backups at least every N hours, for the systems whose policy enables them; under continuous
    protection, the WAL stream (RPO within its target, no gap) instead."""
    return _every_n_hours(day, Artifact.Kind.INCREMENTAL, "incrementals are disabled in its policy")


@register("daily.config_backup")
def config_every_n_hours(day: date) -> Result:
    """Config backups at least every N hours (4 by default), for the systems with config paths."""
    return _every_n_hours(day, Artifact.Kind.CONFIG, "it has no config paths")


@register("daily.health_score")
def health_score_100(day: date) -> Result:
    """Every system's health score stayed at 100 all day (from the recorded history)."""
    systems = _systems()
    if not systems:
        return _no_systems()
    start, at = _window(day)
    statuses, lines, evidence = [], [], []
    for system in systems:
        history = HealthSnapshot.objects.filter(system=system)
        at_midnight = history.filter(at__lt=start).order_by("-at", "-pk").first()
        rows = list(history.filter(at__gte=start, at__lte=at).order_by("at", "pk"))
        if at_midnight is not None:
            rows.insert(0, at_midnight)
        evidence.append(health_evidence(system))
        if not rows:
            statuses.append(NO_DATA)
            lines.append(f"{system.name}: no health score recorded today.")
            continue
        below = [r for r in rows if r.score < 100]
        if not below:
            statuses.append(PASSED)
            lines.append(f"{system.name}: 100 all day ({len(rows)} recorded score(s)).")
            continue
        statuses.append(FAILED)
        lowest = min(below, key=lambda r: (r.score, r.at))
        first = below[0]
        since = "since before midnight" if first.at < start else f"from {first.at:%H:%M} UTC"
        lines.append(f"{system.name}: below 100 {since}; lowest {lowest.score} ({lowest.status}).")
    return _result(statuses, lines, evidence)


@register("daily.offsite_copy")
def cloud_sync_verified(day: date) -> Result:
    """The newest full backup of every system has an off-site copy whose checksum matches."""
    systems = _systems()
    if not systems:
        return _no_systems()
    _, at = _window(day)
    statuses, lines, evidence = [], [], []
    for system in systems:
        check = offsite_copy_check(system, newest_artifact(system, Artifact.Kind.FULL, at))
        statuses.append(PASSED if check.passed else FAILED)
        lines.append(f"{system.name}: {check.reason}")
        evidence += list(check.evidence)
    return _result(statuses, lines, evidence)


@register("daily.encryption_integrity")
def encryption_integrity(day: date) -> Result:
    """The newest full backup of every system was verified at decrypt level or better."""
    systems = _systems()
    if not systems:
        return _no_systems()
    _, at = _window(day)
    statuses, lines, evidence = [], [], []
    for system in systems:
        full = newest_artifact(system, Artifact.Kind.FULL, at)
        if full is None:
            statuses.append(FAILED)
            lines.append(f"{system.name}: no full backup to verify.")
            evidence.append(system_evidence(system))
            continue
        evidence.append(verification_evidence(full))
        verified = (verified_at_least(full, VERIFIED_LEVEL) and full.last_verified_at is not None
                    and full.last_verified_at <= at)
        if verified:
            statuses.append(PASSED)
            lines.append(f"{system.name}: full {full.short_id} verified at {full.last_verified_level} level "
                         f"({full.last_verified_at:%Y-%m-%d %H:%M} UTC).")
        else:
            statuses.append(FAILED)
            level = full.last_verified_level
            lines.append(f"{system.name}: newest full {full.short_id} "
                         + (f"verified only at {level} level." if level else "not verified yet."))
    return _result(statuses, lines, evidence)
