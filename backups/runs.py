"""Backup runs: the request, the worker's execution, and the reaper that settles runs whose worker died.

``backup_request`` creates the run row and enqueues ``backups.jobs.backup_run_job`` when the
transaction commits; ``backup_run_execute`` is the job's body (``backups.dumps`` makes the
artifact); ``backup_runs_reap`` (cron, every minute) fails runs whose worker died and queues
again runs whose job was lost. ``BACKUP_RUNS`` is the backup kind of the shared run runtime
(``drpanel.runs``).
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backups import formats, pgtools
from backups.continuous import base_backup
from backups.copies import remove_objects
from backups.dumps import config_backup, full_backup
from backups.errors import BackupError
from backups.models import Artifact, BackupRun, System
from backups.storage import StorageError
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel import queues, runs, secrets
from drpanel.permissions import Cap, require_cap
from drpanel.scrub import scrub

log = logging.getLogger(__name__)


class BackupRuns(runs.RunKind):
    """Backup runs in the run runtime: their own reaper (``backup_runs_reap``) settles them."""

    name = "backup"
    model = BackupRun
    queue = "backup"
    job = "backups.jobs.backup_run_job"
    timeout = 12 * 3600

    def record_job(self, run_id, job) -> None:
        BackupRun.objects.filter(pk=run_id).update(job_id=job.id)

    def pool_for(self, run_id) -> str:
        """A backup runs in its system's pool."""
        return BackupRun.objects.filter(pk=run_id).values_list("system__worker_pool", flat=True).first() or ""

    def fail(self, run_id, reason: str, *, expected, **conditions) -> bool:
        """Fail the run if still in ``expected`` (and ``conditions``); its half-written artifact is failed and
        whatever the dead worker left in storage removed."""
        expected = [expected] if isinstance(expected, str) else list(expected)
        with transaction.atomic():
            # Conditional on the state we saw: a run that started or finished meanwhile is left alone.
            changed = BackupRun.objects.filter(pk=run_id, state__in=expected, **conditions).update(
                state=BackupRun.State.FAILED, finished_at=timezone.now(), error=reason)
            artifact = None
            if changed:
                run = BackupRun.objects.select_related("system").get(pk=run_id)
                artifact = Artifact.objects.filter(runs=run, status=Artifact.Status.WRITING).first()
                Artifact.objects.filter(runs=run, status=Artifact.Status.WRITING).update(status=Artifact.Status.FAILED)
                audit_record(actor=None, action=AuditAction.BACKUP_FAILED, obj=run.system, outcome="failure",
                             details={"run": str(run.id), "error": reason,
                                      "artifact": str(artifact.id) if artifact else None})
        if artifact is not None:
            # The dead worker may have left part of the object behind (a temporary file, an open upload).
            remove_objects(artifact)
        return bool(changed)

    def record_requeue(self, run, details: dict) -> None:
        audit_record(actor=None, action=AuditAction.BACKUP_REQUEUED, obj=run.system, details=details)


BACKUP_RUNS = runs.register(BackupRuns())


def backup_request(*, actor, system: System, kind: str, trigger: str = BackupRun.Trigger.MANUAL,
                   request=None) -> BackupRun:
    """Queue a backup of ``system`` (full, config, or base under continuous protection). A second request while
    one is queued or running returns that run instead of starting another. ``actor=None`` is the scheduler."""
    if actor is not None:
        require_cap(actor, Cap.START_JOBS, action=f"backup.{kind}", obj=system)
    if kind == Artifact.Kind.INCREMENTAL:
        raise BackupError("incremental artifacts are produced by an external tool (WAL archiving) and catalogued "
                          "by the inventory sync; the panel does not create them yet")
    if kind not in (Artifact.Kind.FULL, Artifact.Kind.CONFIG, Artifact.Kind.BASE):
        raise BackupError(f"unknown backup kind {kind!r}")
    if kind == Artifact.Kind.BASE and not system.continuous_enabled:
        raise BackupError(f"{system.name} is not continuously protected: a base backup needs Barman streaming its WAL")
    if kind == Artifact.Kind.CONFIG and not system.config_paths:
        raise BackupError(f"{system.name} has no config paths to back up")
    with transaction.atomic():
        # Lock the system row: two clicks (or a click and the scheduler) serialise here.
        System.objects.select_for_update().get(pk=system.pk)
        active = BackupRun.objects.filter(system=system, kind=kind,
                                          state__in=[BackupRun.State.QUEUED, BackupRun.State.RUNNING]).first()
        if active is not None:
            return active
        previous = (Artifact.objects.filter(system=system, kind=kind, status=Artifact.Status.AVAILABLE)
                    .exclude(plaintext_size=None).order_by("-created_at").values_list("plaintext_size", flat=True)
                    .first())
        run = BackupRun.objects.create(system=system, kind=kind, trigger=trigger,
                                       requested_by=actor if actor is not None else None, bytes_expected=previous)
        audit_record(actor=actor, action=AuditAction.BACKUP_REQUESTED, obj=system, request=request,
                     details={"run": str(run.id), "kind": kind, "trigger": trigger})
        # If Redis refuses, the request still succeeds; the reaper fails the lost run later.
        BACKUP_RUNS.enqueue_on_commit(run.id)
    return run


def backup_run_execute(run_id) -> BackupRun:
    """Do a queued backup run (called by the job). Never raises for a backup failure: the run records it.

    The health recompute its outcome sets off is queued as a job of its own (``runs.run_body``):
    the run ends as soon as its artifact and its rows are written.
    """
    with runs.run_body():
        return _execute(run_id)


def _execute(run_id) -> BackupRun:
    with transaction.atomic():
        # Conditional transition: a run is executed once, even if its job is delivered twice.
        started = BackupRun.objects.filter(pk=run_id, state=BackupRun.State.QUEUED).update(
            state=BackupRun.State.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now(),
            worker_host=runs.worker_host())
        run = BackupRun.objects.select_related("system").get(pk=run_id)
        if not started:
            return run
        audit_record(actor=None, action=AuditAction.BACKUP_STARTED, obj=run.system,
                     details={"run": str(run.id), "kind": run.kind, "worker_host": run.worker_host})
    steps = runs.StepLog(run)
    artifact = None
    try:
        backup = {Artifact.Kind.FULL: full_backup, Artifact.Kind.CONFIG: config_backup,
                  Artifact.Kind.BASE: base_backup}[run.kind]
        artifact = backup(run, steps)
    except Exception as exc:
        message = scrub(str(exc) or type(exc).__name__)
        if not isinstance(exc, BackupError | pgtools.ToolError | StorageError | formats.ArtifactError
                          | secrets.SecretReferenceError):
            log.exception("backup run %s failed", run.id)
            message = f"unexpected error: {type(exc).__name__}: {message}"[:2000]
        steps.fail_open(message)
        with transaction.atomic():
            BackupRun.objects.filter(pk=run.pk).update(state=BackupRun.State.FAILED, finished_at=timezone.now(),
                                                       error=message[:4000])
            if artifact is None:
                artifact = Artifact.objects.filter(runs=run, status=Artifact.Status.WRITING).first()
            if artifact is not None and artifact.status == Artifact.Status.WRITING:
                Artifact.objects.filter(pk=artifact.pk).update(status=Artifact.Status.FAILED)
            audit_record(actor=None, action=AuditAction.BACKUP_FAILED, obj=run.system, outcome="failure",
                         details={"run": str(run.id), "kind": run.kind, "error": message[:500],
                                  "artifact": str(artifact.id) if artifact else None})
        if artifact is not None:
            remove_objects(artifact)
    run.refresh_from_db()
    return run


def _job_lost(run: BackupRun) -> bool:
    """A queued run whose RQ job is gone (never enqueued, Redis flushed, job failed before starting)."""
    status = runs.job_status(run.job_id, BACKUP_RUNS.queue)
    return status == "missing" or status in runs.DEAD


def _requeue(run: BackupRun, reason: str) -> bool:
    with transaction.atomic():
        # Only while still queued: a worker that picked it up meanwhile owns it.
        if not BackupRun.objects.filter(pk=run.pk, state=BackupRun.State.QUEUED).exists():
            return False
        BACKUP_RUNS.record_requeue(run, {"run": str(run.id), "kind": run.kind, "reason": reason,
                                         "previous_job": run.job_id})
        BACKUP_RUNS.enqueue_on_commit(run.id)
    return True


def backup_runs_reap(*, stale_after_seconds: int | None = None, requeue_after_seconds: int | None = None,
                     lost_after_seconds: int | None = None) -> int:
    """Settle runs that can no longer finish on their own (cron, every minute); returns how many.

    - running, and its RQ job was abandoned (the worker died: rq fails the job about a minute
      after its last heartbeat) or the run row's heartbeat is older than
      ``DRPANEL_BACKUP_STALE_SECONDS``: failed, and whatever the worker left in storage removed;
    - queued for ``DRPANEL_BACKUP_REQUEUE_SECONDS``, and its job is gone (Redis restarted or
      flushed, the enqueue failed): queued again, audited as ``backup.requeued`` (executing
      twice is impossible: the start is conditional);
    - queued for longer than ``DRPANEL_BACKUP_LOST_SECONDS`` and still without a job: failed
      with the reason.
    """
    stale_after_seconds = stale_after_seconds or settings.BACKUP_STALE_SECONDS
    requeue_after_seconds = settings.BACKUP_REQUEUE_SECONDS if requeue_after_seconds is None else requeue_after_seconds
    lost_after_seconds = settings.BACKUP_LOST_SECONDS if lost_after_seconds is None else lost_after_seconds
    now = timezone.now()
    # Move jobs whose worker stopped heartbeating to the failed registry now, not at some other
    # worker's next maintenance.
    queues.get_queue(BACKUP_RUNS.queue).started_job_registry.cleanup()
    cutoff = now - timezone.timedelta(seconds=stale_after_seconds)
    count = 0
    for run in BackupRun.objects.filter(state=BackupRun.State.RUNNING).select_related("system"):
        if run.heartbeat_at and run.heartbeat_at < cutoff:
            count += BACKUP_RUNS.fail(run.pk, "the worker stopped reporting progress (it died or was killed)",
                                      expected=BackupRun.State.RUNNING, heartbeat_at__lt=cutoff)
        elif run.job_id and runs.job_status(run.job_id, BACKUP_RUNS.queue) in runs.DEAD:
            count += BACKUP_RUNS.fail(run.pk, "the worker running it died (its job was abandoned)",
                                      expected=BackupRun.State.RUNNING)
    old = now - timezone.timedelta(seconds=lost_after_seconds)
    requeue_before = now - timezone.timedelta(seconds=requeue_after_seconds)
    for run in BackupRun.objects.filter(state=BackupRun.State.QUEUED, created_at__lt=requeue_before).select_related(
            "system"):
        if not _job_lost(run):
            continue
        if run.created_at < old:
            count += BACKUP_RUNS.fail(run.pk, "its job was lost before a worker started it (Redis or the enqueue "
                                              "failed)", expected=BackupRun.State.QUEUED)
        else:
            count += _requeue(run, "its job was lost (Redis restarted or flushed, or the enqueue failed)")
    return count
