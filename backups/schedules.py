"""Schedules: which backups each system's policy says are due (run every minute from ``drpanel/cron.py``).

A kind is due when its newest good artifact is older than the policy interval (or there is
none), no run of it is queued or running, and the last attempt did not fail within the retry
delay (``DRPANEL_BACKUP_RETRY_MINUTES``), so a broken system is retried, not hammered.
Incrementals are produced by an external tool; the policy only checks them (``policy_status``).
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from backups.errors import BackupError
from backups.models import Artifact, BackupRun, System
from backups.runs import backup_request

SCHEDULED_KINDS = (Artifact.Kind.FULL, Artifact.Kind.CONFIG, Artifact.Kind.BASE)


def last_good(system: System, kind: str) -> Artifact | None:
    return (Artifact.objects.filter(system=system, kind=kind, status=Artifact.Status.AVAILABLE)
            .order_by("-created_at").first())


def policy_status(system: System, now=None) -> list[dict]:
    """Per kind: the interval, the newest artifact and whether it is within the policy."""
    now = now or timezone.now()
    rows = []
    for kind in Artifact.Kind.values:
        interval = system.interval(kind)
        if interval is None:
            continue
        newest = last_good(system, kind)
        age = now - newest.created_at if newest else None
        hours = int(interval.total_seconds() // 3600)
        rows.append({"kind": kind, "interval": interval, "every": f"{hours} h", "newest": newest, "age": age,
                     "within_policy": age is not None and age <= interval})
    return rows


def due_backups(now=None) -> list[tuple[System, str]]:
    now = now or timezone.now()
    retry = timedelta(minutes=settings.BACKUP_RETRY_MINUTES)
    due = []
    for system in System.objects.filter(schedule_enabled=True):
        for kind in SCHEDULED_KINDS:
            interval = system.interval(kind)
            if interval is None:
                continue
            newest = last_good(system, kind)
            if newest is not None and now - newest.created_at < interval:
                continue
            last = BackupRun.objects.filter(system=system, kind=kind).order_by("-created_at").first()
            if last is not None and (not last.is_done or (last.state == BackupRun.State.FAILED
                                                          and now - last.created_at < retry)):
                continue
            due.append((system, kind))
    return due


def enqueue_due_backups(now=None) -> list[BackupRun]:
    """Request every backup ``due_backups`` lists (as the scheduler); a refused one is skipped."""
    runs = []
    for system, kind in due_backups(now):
        try:
            runs.append(backup_request(actor=None, system=system, kind=kind, trigger=BackupRun.Trigger.SCHEDULE))
        except BackupError:
            continue
    return runs
