"""Recomputing the health score: its history (``HealthSnapshot``), its audit events and its alerts.

``health_recompute(system)`` evaluates the checks, stores a ``HealthSnapshot`` when anything
changed (or when the newest is ``SNAPSHOT_EVERY`` old, so there is at least one row an hour),
audits score changes (``health.changed``) and raises or resolves the system's alerts:

- ``health:<system>:warning`` / ``health:<system>:critical`` — entering a band opens its alert
  (once per transition: ``alert_raise`` keeps one unresolved alert per key); going up from
  critical to warning resolves the critical one and opens a warning one; healthy resolves both.
  No health alert is raised for a new system before its first backup run has finished (or one
  full interval has passed since it was added): until then there is nothing to have fallen from.
- ``backup-overdue:<system>:<kind>`` — the newest backup of a kind is older than its interval
  (or there is none, once the system is older than that interval).
- ``drill-overdue:<system>`` — no successful restore test in ``DRPANEL_DRILL_OVERDUE_DAYS``
  days (once the system is that old); see ``last_restore_test``.

It runs after every relevant event (``compliance.health_signals``; as a job of its own when the
event is a backup run's, so the backup does not wait for it), every 15 minutes
(``drpanel/cron.py``), and is idempotent. Time is ``drpanel.clock`` time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.urls import reverse

from backups.continuous import rpo_seconds
from backups.models import Artifact, BackupRun, System
from compliance.alerts import alert_raise, alert_resolve
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from compliance.health import (
    CRITICAL,
    HEALTHY,
    WARNING,
    Health,
    RestoreTest,
    every_text,
    format_age,
    health_evaluate,
    last_restore_test,
)
from compliance.models import Alert, HealthSnapshot
from drpanel import queues, runs
from drpanel.context import reset_current_request, set_current_request

log = logging.getLogger(__name__)

# With the recompute every 15 minutes, a row whenever the newest is 45 minutes old keeps one an hour.
SNAPSHOT_EVERY = timedelta(minutes=45)


# --- recomputing, history, alerts ------------------------------------------------------------

def health_recompute(system: System | int, *, trigger: str = "") -> HealthSnapshot | None:
    """Recompute a system's score now, keep its history, and raise or resolve its alerts.

    Stores a ``HealthSnapshot`` when the score, the band or a check changed, or when the newest
    is ``SNAPSHOT_EVERY`` old; audits every change of score (``health.changed``). The system row
    is locked for the duration, so concurrent recomputes (an event and the cron) take turns
    and the newest row always describes the newest data. Returns the snapshot in force, or
    None when the system no longer exists. Whoever's request triggered it, the system acts.
    """
    pk = system.pk if isinstance(system, System) else system
    token = set_current_request(None)
    try:
        with transaction.atomic():
            locked = System.objects.select_for_update().filter(pk=pk).first()
            if locked is None:
                return None
            health = health_evaluate(locked)
            snapshot = _store(locked, health, trigger)
            alerts = _Alerts(locked)
            _health_alerts(locked, health, alerts)
            _backup_age_alerts(locked, health, alerts)
            _drill_alert(locked, health.at, alerts)
            _rpo_alert(locked, health.at, alerts)
    finally:
        reset_current_request(token)
    return snapshot


def health_recompute_all(*, trigger: str = "schedule") -> list[HealthSnapshot]:
    """Recompute every system (the 15-minute cron); one failing system does not stop the others."""
    snapshots = []
    for pk in System.objects.order_by("pk").values_list("pk", flat=True):
        try:
            snapshot = health_recompute(pk, trigger=trigger)
        except Exception:
            # Logged and left for the next run: the other systems still get their score and alerts.
            log.exception("health recompute of system %s failed", pk)
            continue
        if snapshot is not None:
            snapshots.append(snapshot)
    return snapshots


def _store(system: System, health: Health, trigger: str) -> HealthSnapshot:
    latest = HealthSnapshot.objects.filter(system=system).order_by("-at", "-pk").first()
    fingerprint = health.fingerprint()
    if latest is not None and latest.fingerprint == fingerprint and health.at - latest.at < SNAPSHOT_EVERY:
        return latest
    snapshot = HealthSnapshot.objects.create(
        system=system, at=health.at, score=health.score, status=health.status,
        checks=[c.as_dict() for c in health.checks], fingerprint=fingerprint, trigger=trigger[:100])
    if latest is None or (latest.score, latest.status) != (snapshot.score, snapshot.status):
        audit_record(actor=None, action=AuditAction.HEALTH_CHANGED, obj=system, details={
            "from": {"score": latest.score, "status": latest.status} if latest else None,
            "to": {"score": snapshot.score, "status": snapshot.status},
            "failing": {c.code: c.reason for c in health.failing}, "trigger": trigger[:100],
            "snapshot": snapshot.pk})
    return snapshot


def alerts_armed(system: System, now: datetime) -> bool:
    """Health alerts start once a backup run of the system finished, or one full interval after it was added."""
    if BackupRun.objects.filter(system=system, state__in=[BackupRun.State.SUCCEEDED, BackupRun.State.FAILED]).exists():
        return True
    if Artifact.objects.filter(system=system).exists():
        return True
    return now - system.created_at >= system.interval(Artifact.Kind.FULL)


def health_alert_key(system: System, band: str) -> str:
    return f"health:{system.pk}:{band}"


class _Alerts:
    """The system's alerts, raised and resolved idempotently; one query finds which are open now."""

    def __init__(self, system: System):
        keys = [health_alert_key(system, band) for band in (WARNING, CRITICAL)]
        keys += [f"backup-overdue:{system.pk}:{kind}" for kind in Artifact.Kind.values]
        keys.append(f"drill-overdue:{system.pk}")
        keys.append(rpo_alert_key(system))
        self.open = set(Alert.objects.filter(dedup_key__in=keys).exclude(state=Alert.State.RESOLVED)
                        .values_list("dedup_key", flat=True))

    def resolve(self, key: str, note: str) -> None:
        if key in self.open:
            alert_resolve(dedup_key=key, note=note)
            self.open.discard(key)

    def raise_(self, key: str, **kwargs) -> None:
        if key not in self.open:
            alert_raise(dedup_key=key, **kwargs)
            self.open.add(key)


def _health_alerts(system: System, health: Health, alerts: _Alerts) -> None:
    score, status = health.score, health.status
    if status == HEALTHY:
        for band in (CRITICAL, WARNING):
            alerts.resolve(health_alert_key(system, band), note=f"score back to {score}")
        return
    if status == WARNING:
        alerts.resolve(health_alert_key(system, CRITICAL), note=f"score up to {score} (warning)")
    if health_alert_key(system, status) in alerts.open:
        return
    if not alerts_armed(system, health.at):
        return
    lines = [f"The health score of {system.name} is {score}/100 ({status}); healthy is 90 or more.", "",
             "Failing checks:"]
    lines += [f"- {c.label} (weight {c.weight}): {c.reason}" for c in health.failing]
    passing = [c for c in health.checks if c.enabled and c.passed]
    if passing:
        lines += ["", "Passing:"] + [f"- {c.label} (weight {c.weight})" for c in passing]
    alerts.raise_(health_alert_key(system, status), kind=f"health.{status}", severity=status,
                  subject=f"{system.name}: backup health {status} ({score}/100)", message="\n".join(lines),
                  evidence_url=reverse("drpanel:health-detail", args=[system.pk]))


def backup_overdue(system: System, kind: str, now: datetime, newest: Artifact | None) -> bool:
    """Is ``newest`` (the newest backup of a kind) older than the policy allows, or missing past the first interval?"""
    interval = system.interval(kind)
    if interval is None:
        return False
    if newest is not None:
        return now - newest.created_at > interval
    return now - system.created_at > interval


def _backup_age_alerts(system: System, health: Health, alerts: _Alerts) -> None:
    now = health.at
    for kind in Artifact.Kind.values:
        key = f"backup-overdue:{system.pk}:{kind}"
        newest = health.newest.get(kind)
        if not backup_overdue(system, kind, now, newest):
            alerts.resolve(key, note=f"a {kind} backup within the policy exists")
            continue
        if key in alerts.open:
            continue
        interval = system.interval(kind)
        if newest is not None:
            detail = (f"The newest {kind} backup of {system.name} ({newest.short_id}, "
                      f"{newest.created_at:%Y-%m-%d %H:%M} UTC) is {format_age(now - newest.created_at)} old; "
                      f"the policy asks for one {every_text(interval)}.")
            evidence = reverse("backups:artifact-detail", args=[newest.pk])
        else:
            detail = (f"{system.name} has no {kind} backup, {format_age(now - system.created_at)} after it was "
                      f"added; the policy asks for one {every_text(interval)}.")
            evidence = reverse("backups:system-detail", args=[system.pk])
        alerts.raise_(key, kind="backup.overdue", severity="warning", subject=f"{system.name}: {kind} backup overdue",
                      message=detail + "\nCheck the system's backup runs and the workers.", evidence_url=evidence)


def drill_overdue(system: System, now: datetime) -> tuple[bool, RestoreTest | None]:
    """No successful restore test in ``DRILL_OVERDUE_DAYS`` (counted from when the system was added)."""
    limit = timedelta(days=settings.DRILL_OVERDUE_DAYS)
    last = last_restore_test(system, now)
    since = last.at if last is not None else system.created_at
    return now - since > limit, last


def _drill_alert(system: System, now: datetime, alerts: _Alerts) -> None:
    key = f"drill-overdue:{system.pk}"
    overdue, last = drill_overdue(system, now)
    if not overdue:
        alerts.resolve(key, note="a restore test succeeded")
        return
    if key in alerts.open:
        return
    days = settings.DRILL_OVERDUE_DAYS
    when = (f"The last one succeeded {format_age(now - last.at)} ago ({last.at:%Y-%m-%d %H:%M} UTC)." if last
            else "None has succeeded since it was added.")
    alerts.raise_(key, kind="drill.overdue", severity="warning", subject=f"{system.name}: restore drill overdue",
                  message=f"No restore test of {system.name} succeeded in the last {days} days. {when}\n"
                          "Run a restore test (or a drill into staging) and let it finish.",
                  evidence_url=last.evidence.url if last else reverse("restores:run-list"))


def rpo_alert_key(system: System) -> str:
    return f"rpo-over-target:{system.pk}"


def _rpo_alert(system: System, now: datetime, alerts: _Alerts) -> None:
    """Continuous protection: RPO now (now − last WAL received) past the system's RPO target."""
    key = rpo_alert_key(system)
    seconds = rpo_seconds(system, now)
    target = system.rpo_target_minutes * 60
    if not system.continuous_enabled or seconds is None or seconds <= target:
        alerts.resolve(key, note=f"RPO now {seconds} s, within {target} s" if seconds is not None
                       else "continuous protection off")
        return
    alerts.raise_(key, kind="rpo.over_target", severity="critical", subject=f"{system.name}: RPO past its target",
                  message=f"No WAL of {system.name} received for {seconds} s; its RPO target is {target} s.\n"
                          "Check Barman's receiver on the workers and the database server's replication slot.",
                  evidence_url=reverse("backups:system-detail", args=[system.pk]))


# --- when to recompute -----------------------------------------------------------------------

ALL_SYSTEMS = None
_deferred = threading.local()


# The job that recomputes off a run's critical path (``compliance.jobs``), and its time limit.
RECOMPUTE_JOB = "compliance.jobs.health_recompute_system_job"
RECOMPUTE_JOB_TIMEOUT = 600


class _Recompute:
    """An after-commit recompute of one system (or of all): a class, so duplicates can be recognised.

    ``queued``: put it on the default queue as a job of its own instead of doing it here (set
    inside a run's body, ``drpanel.runs.run_body``, so the run does not wait for it).
    """

    def __init__(self, system_id: int | None, trigger: str, *, queued: bool = False):
        self.system_id = system_id
        self.trigger = trigger
        self.queued = queued

    def __call__(self) -> None:
        if self.queued:
            # One job per system when the run ends, for the last of its transactions that moved the score.
            runs.after_run_body(("health", self.system_id), self.enqueue)
            return
        try:
            if self.system_id is ALL_SYSTEMS:
                health_recompute_all(trigger=self.trigger)
            else:
                health_recompute(self.system_id, trigger=self.trigger)
        except Exception:
            # The change that triggered it is committed and must stay so; the cron recomputes within 15 minutes.
            log.exception("health recompute after %s failed", self.trigger)

    def enqueue(self) -> None:
        try:
            queues.enqueue(RECOMPUTE_JOB, self.system_id, self.trigger[:100], queue="default",
                           timeout=RECOMPUTE_JOB_TIMEOUT)
        except Exception:
            # Redis refused: the change stays committed, and the cron recomputes within 15 minutes.
            log.exception("queueing the health recompute after %s failed", self.trigger)


def health_recompute_soon(system_id: int | None, *, trigger: str) -> None:
    """Recompute a system (``None``: every system) once the current transaction commits.

    Called by the catalog's signals (``compliance.health_signals``) and by any app whose
    change moves a score. One recompute per system per transaction, however many of its
    rows changed. Inside ``health_recompute_deferred()`` it waits for the block to end; inside
    a run's body (``drpanel.runs.run_body``: a backup) it is queued as a job when the run ends,
    one per system, so the run ends without waiting for it.
    """
    pending = getattr(_deferred, "systems", None)
    if pending is not None:
        pending.setdefault(system_id, trigger)
        return
    connection = transaction.get_connection()
    if connection.in_atomic_block:
        for _sids, func, _robust in connection.run_on_commit:
            if isinstance(func, _Recompute) and func.system_id in (system_id, ALL_SYSTEMS):
                return
    transaction.on_commit(_Recompute(system_id, trigger, queued=runs.in_run_body()))


@contextlib.contextmanager
def health_recompute_deferred():
    """Hold every recompute until the block ends, then do each system once (e.g. a batch of backups)."""
    if getattr(_deferred, "systems", None) is not None:
        yield
        return
    _deferred.systems = {}
    try:
        yield
    finally:
        pending, _deferred.systems = _deferred.systems, None
    if ALL_SYSTEMS in pending:
        _Recompute(ALL_SYSTEMS, pending[ALL_SYSTEMS])()
    else:
        for system_id, trigger in pending.items():
            _Recompute(system_id, trigger)()
