"""What happens when a worker dies, Redis forgets a job, or a swap is left half done.

The run rows are the truth; RQ is only the vehicle. ``reconcile`` (cron, every minute)
compares the two and repairs:

- a **running** run whose heartbeat stopped for ``DRPANEL_RUN_STALE_SECONDS`` (its worker and
  work horse died: ``kill -9``, OOM, a lost host), or whose RQ job already ended, becomes
  **failed** with that reason, and its databases are reconciled (``runs.tidy_failed``): a
  side database is dropped (the target untouched), a swap that committed is recorded and
  kept for a rollback, a live database missing after a crash mid-swap is renamed back;
- a **queued** run whose RQ job vanished (Redis flushed, the enqueue failed after commit)
  is queued again, at most ``MAX_ENQUEUES`` times in all, then failed with the reason;
  a queued run whose job failed before it started is failed;
- failed runs still marked ``needs_cleanup`` are reconciled again (a target unreachable a
  minute ago may answer now);
- side databases left by finished runs of this panel are dropped, and so are the
  decrypted temporary files of runs that are not running.

RQ failure callbacks (``job_failed``) do the same for one run as soon as RQ knows: a job
that raised, a work horse that died, a job found abandoned by a registry clean-up.
"""

import contextlib
import logging
import os
import shutil
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from compliance.audit import audit_record
from drpanel import secrets
from restores import materialize, pgops, runs, verifications
from restores.models import RestoreRun, Target, VerificationRun

log = logging.getLogger(__name__)

MAX_ENQUEUES = 3
ENDED = ("finished", "failed", "stopped", "canceled")


def failure_reason(exc_type, exc_value) -> str:
    """A failure callback's exception as a reason people can read."""
    name = getattr(exc_type, "__name__", str(exc_type))
    if name == "AbandonedJobError":
        return "its worker stopped (killed or lost): RQ found the job abandoned"
    if name == "WorkHorseKilled":
        return f"{exc_value}"
    if name == "JobTimeoutException":
        return f"the job ran past its time limit ({exc_value})"
    return f"the job failed: {name}: {exc_value}"[:1000]


def job_failed(kind: str, run_id: str, reason: str) -> None:
    """An RQ failure callback: fail the run (queued or running) with the reason, and tidy up."""
    if kind == "restore":
        runs.restore_fail(run_id, reason, expected=(RestoreRun.State.QUEUED, RestoreRun.State.RUNNING))
    else:
        verification_fail(run_id, reason, expected=(VerificationRun.State.QUEUED, VerificationRun.State.RUNNING))


def job_status(job_id: str, queue: str) -> str | None:
    """The RQ status of a job ("missing" when Redis has no such job), or None when Redis cannot be asked."""
    import django_rq
    from redis.exceptions import RedisError
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    if not job_id:
        return "missing"
    try:
        job = Job.fetch(job_id, connection=django_rq.get_connection(queue))
        status = job.get_status(refresh=False)
        return str(getattr(status, "value", status) or "missing")
    except NoSuchJobError:
        return "missing"
    except RedisError:
        return None


# --- verifications ---------------------------------------------------------------------------


def verification_fail(run_id, reason: str, *, expected=(VerificationRun.State.RUNNING,)) -> bool:
    """Fail a verification run that cannot finish; drop its throw-away database."""
    with transaction.atomic():
        changed = VerificationRun.objects.filter(pk=run_id, state__in=list(expected)).update(
            state=VerificationRun.State.FAILED, finished_at=timezone.now(), error=reason[:4000])
        if not changed:
            return False
        run = VerificationRun.objects.select_related("artifact").get(pk=run_id)
        audit_record(actor=None, action="verification.failed", obj=run.artifact, outcome="failure",
                     details={"run": str(run.pk), "level": run.level, "error": reason[:500]})
    _drop_throwaway(run)
    return True


def _drop_throwaway(run: VerificationRun) -> None:
    try:
        pgops.drop_copy(verifications.verify_server_url(), run.pk, pgops.CopyKind.SIDE)
    except (pgops.PgOpsError, secrets.SecretReferenceError) as exc:
        log.warning("cannot drop the throw-away database of verification %s: %s", run.pk, exc)
        VerificationRun.objects.filter(pk=run.pk).update(needs_cleanup=True)
        return
    VerificationRun.objects.filter(pk=run.pk).update(needs_cleanup=False)


# --- the reconciler --------------------------------------------------------------------------


def _stale_reason(run, now, queue: str) -> str | None:
    beat = run.heartbeat_at or run.started_at or now
    silent = (now - beat).total_seconds()
    status = job_status(run.job_id, queue)
    if silent >= settings.RUN_STALE_SECONDS:
        return (f"no heartbeat for {silent:.0f} s: its worker died or was killed"
                + (f" (its RQ job is {status})" if status else ""))
    if status in ("missing", *ENDED) and silent >= 15:
        return f"its RQ job is {status}, yet the run never finished: its worker died"
    return None


def _requeue(model, run, queue_name: str, enqueue, fail) -> str:
    status = job_status(run.job_id, queue_name)
    if status is None or status in ("queued", "started", "deferred", "scheduled"):
        return ""
    if status in ("failed", "stopped", "canceled"):
        fail(run.pk, f"its RQ job {status} before a worker started it", expected=(model.State.QUEUED,))
        return "failed"
    if run.enqueue_count >= MAX_ENQUEUES:
        fail(run.pk, f"its job was lost {run.enqueue_count} times (Redis flushed or unreachable): not queued again",
             expected=(model.State.QUEUED,))
        return "failed"
    label = "restore" if model is RestoreRun else "verification"
    with transaction.atomic():
        # Lock the row: two reconcilers (two cron hosts) must not both queue it again.
        locked = model.objects.select_for_update().filter(pk=run.pk, state=model.State.QUEUED,
                                                          job_id=run.job_id).first()
        if locked is None:
            return ""
        audit_record(actor=None, action=f"{label}.requeued", obj=run if model is RestoreRun else run.artifact,
                     details={"run": str(run.pk), "lost_job": run.job_id or None, "rq_status": status,
                              "enqueued_before": run.enqueue_count})
        transaction.on_commit(lambda: enqueue(run.pk), robust=True)
    return "requeued"


def reconcile(now=None) -> dict:
    """Compare run rows with RQ and with their databases, and repair (see the module docstring)."""
    now = now or timezone.now()
    summary: dict = {"failed": [], "requeued": [], "tidied": [], "dropped": [], "files": 0}
    for run in RestoreRun.objects.filter(state=RestoreRun.State.RUNNING):
        reason = _stale_reason(run, now, runs.RESTORE_QUEUE)
        if reason and runs.restore_fail(run.pk, reason):
            summary["failed"].append(str(run.pk))
    for run in VerificationRun.objects.filter(state=VerificationRun.State.RUNNING):
        reason = _stale_reason(run, now, verifications.VERIFY_QUEUE)
        if reason and verification_fail(run.pk, reason):
            summary["failed"].append(str(run.pk))
    lost_before = now - timedelta(seconds=settings.RUN_LOST_JOB_SECONDS)
    for run in RestoreRun.objects.filter(state=RestoreRun.State.QUEUED, queued_at__lte=lost_before):
        outcome = _requeue(RestoreRun, run, runs.RESTORE_QUEUE, runs.enqueue_restore, runs.restore_fail)
        if outcome:
            summary["requeued" if outcome == "requeued" else "failed"].append(str(run.pk))
    for run in VerificationRun.objects.filter(state=VerificationRun.State.QUEUED, created_at__lte=lost_before):
        outcome = _requeue(VerificationRun, run, verifications.VERIFY_QUEUE, verifications.enqueue_verification,
                           verification_fail)
        if outcome:
            summary["requeued" if outcome == "requeued" else "failed"].append(str(run.pk))
    for run in RestoreRun.objects.filter(state=RestoreRun.State.FAILED, needs_cleanup=True).select_related(
            "target", "artifact", "requested_by"):
        runs.tidy_failed(run)
        summary["tidied"].append(str(run.pk))
    for run in VerificationRun.objects.filter(state=VerificationRun.State.FAILED, needs_cleanup=True):
        _drop_throwaway(run)
        summary["tidied"].append(str(run.pk))
    summary["dropped"] = drop_orphan_side_databases()
    summary["files"] = remove_stale_files()
    return summary


def drop_orphan_side_databases() -> list[str]:
    """Drop side databases (``…__restore_<tag>``) of this panel's runs that are no longer running.

    Only tags of runs this panel knows are touched: another panel sharing the server keeps
    its own. Pre-restore and failed copies are left to ``runs.restore_copies_drop_due``.
    """
    running = {pgops.run_tag(pk) for pk in RestoreRun.objects.filter(
        state__in=[RestoreRun.State.QUEUED, RestoreRun.State.RUNNING]).values_list("pk", flat=True)}
    running |= {pgops.run_tag(pk) for pk in VerificationRun.objects.filter(
        state__in=[VerificationRun.State.QUEUED, VerificationRun.State.RUNNING]).values_list("pk", flat=True)}
    urls = []
    for target in Target.objects.filter(runs__isnull=False).distinct():
        with contextlib.suppress(secrets.SecretReferenceError):
            urls.append((secrets.resolve(target.database_ref), RestoreRun.objects.filter(target=target)))
    with contextlib.suppress(secrets.SecretReferenceError):
        urls.append((verifications.verify_server_url(), VerificationRun.objects.all()))
    dropped = []
    for url, known_runs in urls:
        try:
            copies = [c for c in pgops.find_orphans(url, keep=running) if c.kind == pgops.CopyKind.SIDE]
        except pgops.PgOpsError:
            continue
        if not copies:
            continue
        known = {pgops.run_tag(pk) for pk in known_runs.values_list("pk", flat=True)}
        for copy in copies:
            if copy.tag in known:
                with contextlib.suppress(pgops.PgOpsError):
                    if pgops.drop_database_copy(url, copy.name):
                        dropped.append(copy.name)
    if dropped:
        with transaction.atomic():
            audit_record(actor=None, action="restore.orphans_dropped", object_type="restores.target",
                         object_repr="side databases", details={"dropped": dropped})
    return dropped


def remove_stale_files() -> int:
    """Remove decrypted temporary files (``drpanel-run-<run id>-…``) of this panel's runs that are not running.

    Files of run ids this panel does not know belong to another panel sharing the host: left alone.
    """
    removed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(Path(materialize.temp_dir())):
            if not entry.name.startswith(materialize.TEMP_PREFIX):
                continue
            run_id = entry.name[len(materialize.TEMP_PREFIX):len(materialize.TEMP_PREFIX) + 36]
            with contextlib.suppress(ValueError):
                finished = (RestoreRun.objects.filter(pk=run_id).exclude(state__in=[
                    RestoreRun.State.QUEUED, RestoreRun.State.RUNNING]).exists()
                    or VerificationRun.objects.filter(pk=run_id, state__in=[
                        VerificationRun.State.SUCCEEDED, VerificationRun.State.FAILED]).exists())
                if not finished:
                    continue
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
                    removed += 1
    return removed
