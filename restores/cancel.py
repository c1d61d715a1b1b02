"""Cancelling a queued or running restore or verification: its job is taken off the queue or stopped.

``restore_cancel`` and ``verification_cancel`` are the only way to cancel; pages, the API and
commands call them alike. Who may: the person who asked for the run, and managers on any
run (``may_cancel``). What happens:

- **queued** → cancelled: the row changes first (a worker taking the job now finds it
  cancelled and does nothing), then the job is taken off its queue;
- **running** → cancelled: the row changes first, under the target's swap lock for a restore
  (the worker's swap takes that lock and checks the state, so a restore that has not swapped
  yet never will), then the job gets RQ's stop-job command: its worker kills the work horse,
  and the horse's ``pg_restore`` dies with it. The side database (restore) or the throw-away
  database (verification) is then dropped; the target is untouched. If the job has not
  stopped within ``STOP_WAIT_SECONDS`` the run stays marked ``needs_cleanup`` and the
  reconciler drops what is left;
- a restore that has **swapped** cannot be cancelled: roll it back instead.

Each cancel is one audit event (``restore.cancelled`` / ``verification.cancelled``) written
in the transaction that changes the state.
"""

from django.db import transaction
from django.utils import timezone

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel import runs
from drpanel.permissions import Cap, Denied, Role, has_cap, require_cap, roles_of
from restores.execution import RESTORE_RUNS, tidy_failed
from restores.models import RestoreRun, VerificationRun
from restores.runstate import RestoreConflict, audit_details, transition
from restores.swaplock import target_lock
from restores.verifications import VERIFICATION_RUNS, verification_tidy

# How long a cancel waits for a stopped job to end before leaving the clean-up to the reconciler.
STOP_WAIT_SECONDS = 15.0


class CancelConflict(RestoreConflict):
    """The run is not in a state that can be cancelled (HTTP 409)."""


def may_cancel(user, requested_by_id) -> bool:
    """Operators cancel their own runs, managers any run."""
    if not has_cap(user, Cap.VIEW_PANEL):
        return False
    if Role.MANAGER.value in roles_of(user):
        return True
    return requested_by_id is not None and requested_by_id == user.pk and has_cap(user, Cap.START_JOBS)


def _require_may_cancel(actor, run, action: str) -> None:
    require_cap(actor, Cap.VIEW_PANEL, action=action, obj=run)
    if not may_cancel(actor, run.requested_by_id):
        raise Denied("Only the person who asked for this run, or a manager, can cancel it.", need="cancel",
                     obj=run, action=action)


def restore_cancel(*, actor, run: RestoreRun, request=None) -> RestoreRun:
    """Cancel a queued or running restore before its swap (its requester, or a manager). Audited.

    Raises ``Denied`` or ``CancelConflict`` (not queued or running, or already swapped: roll back instead).
    """
    _require_may_cancel(actor, run, "restore.cancel")
    queued, running = RestoreRun.State.QUEUED, RestoreRun.State.RUNNING
    refused = None
    with target_lock(run.target_id):
        run = RestoreRun.objects.select_related("target", "artifact", "requested_by").get(pk=run.pk)
        was = run.state
        if run.swapped_at is not None:
            refused = "this restore has swapped in already: it cannot be cancelled; roll it back instead"
        elif was not in (queued, running):
            refused = f"this restore is {run.get_state_display()}; only a queued or running restore can be cancelled"
        # Under the swap lock: the worker's swap checks the state under the same lock, so it cannot swap after this.
        elif transition(run, [was], RestoreRun.State.CANCELLED, finished_at=timezone.now(), eta_seconds=None,
                        error=f"cancelled by {actor.get_username()} while {was}", needs_cleanup=was == running):
            job = runs.stop_job(run.job_id, RESTORE_RUNS.queue)
            audit_record(actor=actor, action=AuditAction.RESTORE_CANCELLED, obj=run, request=request,
                         details=audit_details(run, was=was, job=job, target_untouched=True))
        else:
            refused = f"this restore is no longer {was}"
    if refused:
        with transaction.atomic():
            audit_record(actor=actor, action=AuditAction.RESTORE_CANCEL_REFUSED, obj=run, request=request,
                         outcome="failure", details=audit_details(run, state=was, reason=refused))
        raise CancelConflict(refused)
    if was == running and runs.wait_job_ended(run.job_id, RESTORE_RUNS.queue, STOP_WAIT_SECONDS):
        tidy_failed(run)
    run.refresh_from_db()
    return run


def verification_cancel(*, actor, run: VerificationRun, request=None) -> VerificationRun:
    """Cancel a queued or running verification (its requester, or a manager); its throw-away database is dropped.

    Raises ``Denied`` or ``CancelConflict``. The artifact's verified level is left as it was.
    """
    _require_may_cancel(actor, run, "verification.cancel")
    queued, running = VerificationRun.State.QUEUED, VerificationRun.State.RUNNING
    with transaction.atomic():
        # Lock the row: the worker's start (queued → running) and its end are conditional updates on it.
        run = VerificationRun.objects.select_for_update().select_related("artifact").get(pk=run.pk)
        if run.state not in (queued, running):
            raise CancelConflict(f"this verification is {run.get_state_display()}; only a queued or running one can "
                                 "be cancelled")
        was = run.state
        VerificationRun.objects.filter(pk=run.pk).update(
            state=VerificationRun.State.CANCELLED, finished_at=timezone.now(),
            error=f"cancelled by {actor.get_username()} while {was}", needs_cleanup=was == running)
        job = runs.stop_job(run.job_id, VERIFICATION_RUNS.queue)
        audit_record(actor=actor, action=AuditAction.VERIFICATION_CANCELLED, obj=run.artifact, request=request,
                     details={"run": str(run.pk), "level": run.level, "was": was, "job": job})
    run.refresh_from_db()
    if was == running and runs.wait_job_ended(run.job_id, VERIFICATION_RUNS.queue, STOP_WAIT_SECONDS):
        verification_tidy(run)
        run.refresh_from_db()
    return run
