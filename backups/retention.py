"""Retention: keep the last N plus daily/weekly/monthly, never the newest verified full, never during a restore.

Per system and kind, newest first, an artifact is kept when it is among the last
``keep_last``, or the newest of one of the most recent ``keep_daily`` days, ``keep_weekly``
ISO weeks or ``keep_monthly`` months that hold artifacts. The newest full whose
``last_verified_level`` is set is always kept. Legacy imports are never deleted by retention
(only by an approved deletion). Every deletion is audited with the policy that decided it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from django.db import transaction

from backups import hooks
from backups.deletion import artifact_delete
from backups.errors import BackupError
from backups.models import Artifact, System
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction


@dataclass
class RetentionPlan:
    """What retention would do for one system: reasons to keep, and the artifacts to delete."""

    system: System
    keep: dict = field(default_factory=dict)
    delete: list = field(default_factory=list)


def _bucket_keep(artifacts, count: int, bucket, label: str, keep: dict) -> None:
    newest_per_bucket: OrderedDict = OrderedDict()
    for artifact in artifacts:
        newest_per_bucket.setdefault(bucket(artifact.created_at), artifact)
    for artifact in list(newest_per_bucket.values())[:count]:
        keep.setdefault(artifact.pk, []).append(label)


def retention_plan(system: System) -> RetentionPlan:
    plan = RetentionPlan(system=system)
    live = (Artifact.objects.live().filter(system=system).exclude(source=Artifact.Source.LEGACY)
            .order_by("-created_at", "-id"))
    for kind in Artifact.Kind.values:
        if kind == Artifact.Kind.BASE:
            continue  # Barman's recovery window keeps base backups and the WAL they need (backups.continuous)
        artifacts = [a for a in live if a.kind == kind]
        if not artifacts:
            continue
        keep = plan.keep
        for artifact in artifacts[: max(1, system.keep_last)]:
            keep.setdefault(artifact.pk, []).append(f"one of the last {system.keep_last}")
        _bucket_keep(artifacts, system.keep_daily, lambda t: t.date(), "newest of its day", keep)
        _bucket_keep(artifacts, system.keep_weekly, lambda t: tuple(t.isocalendar())[:2], "newest of its week", keep)
        _bucket_keep(artifacts, system.keep_monthly, lambda t: (t.year, t.month), "newest of its month", keep)
        if kind == Artifact.Kind.FULL:
            verified = next((a for a in artifacts if a.last_verified_level), None)
            if verified is not None:
                keep.setdefault(verified.pk, []).append("newest verified full")
        plan.delete.extend(a for a in artifacts if a.pk not in keep)
    return plan


def retention_apply(system: System) -> int:
    """Delete what the plan says (system actor); nothing while a restore of the system runs."""
    if hooks.restore_running(system):
        with transaction.atomic():
            audit_record(actor=None, action=AuditAction.RETENTION_SKIPPED, obj=system,
                         details={"reason": "a restore of this system is running"})
        return 0
    plan = retention_plan(system)
    deleted = 0
    policy = {"keep_last": system.keep_last, "keep_daily": system.keep_daily, "keep_weekly": system.keep_weekly,
              "keep_monthly": system.keep_monthly}
    for artifact in plan.delete:
        try:
            artifact_delete(actor=None, artifact=artifact, retention={"policy": policy, "reason": "outside the policy"})
            deleted += 1
        except BackupError:
            continue
    return deleted


def retention_apply_all() -> int:
    return sum(retention_apply(system) for system in System.objects.all())
