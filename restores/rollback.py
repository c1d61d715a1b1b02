"""Rollback: swapping a restored target back to its pre-restore state (a manager, password re-entered), and
dropping the pre-restore copies once the rollback window has passed."""

import logging
import time

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel import secrets
from drpanel.passwords import password_confirm
from drpanel.permissions import Cap, Denied, has_object_right, require_cap
from drpanel.scrub import scrub
from restores import configs, pg
from restores.models import APPROVE_RESTORE, RestoreRun
from restores.runstate import RestoreConflict, audit_details, transition
from restores.swaplock import target_lock

log = logging.getLogger(__name__)


def rollback_blocker(run: RestoreRun, now=None) -> str | None:
    """Why ``run`` cannot be rolled back now, or None when it can."""
    now = now or timezone.now()
    if run.state not in (RestoreRun.State.SUCCEEDED, RestoreRun.State.FAILED) or not run.swapped_at:
        return f"only a restore that was swapped in can be rolled back (this one is {run.get_state_display()})"
    if run.copies_dropped_at or not run.rollback_until or run.rollback_until <= now:
        return "the rollback window has passed: the pre-restore copy is gone"
    later = RestoreRun.objects.filter(target_id=run.target_id, swapped_at__gt=run.swapped_at).exclude(
        state=RestoreRun.State.ROLLED_BACK).exclude(pk=run.pk).first()
    if later is not None:
        return f"a later restore (run {later.short_id}) replaced this one: roll that one back first"
    active = RestoreRun.objects.filter(target_id=run.target_id, state__in=RestoreRun.ACTIVE_STATES).first()
    if active is not None:
        return f"a restore into {run.target.name} is in flight (run {active.short_id}): wait for it"
    return None


def restore_rollback(*, actor, run: RestoreRun, password: str, request=None) -> RestoreRun:
    """Swap the pre-restore state back (a manager holding ``approve_restore`` on the target, password re-entered).

    Timed and audited. Raises ``Denied``, ``PasswordRefused`` or ``PasswordLocked``, or ``RestoreConflict``.
    """
    require_cap(actor, Cap.VIEW_PANEL, action="restore.rollback", obj=run)
    if not has_object_right(actor, APPROVE_RESTORE, run.target):
        raise Denied("Rolling back needs approve_restore on this target.", need=APPROVE_RESTORE, obj=run,
                     action="restore.rollback")
    password_confirm(actor=actor, password=password, purpose="restore.rollback", obj=run, request=request,
                     details=audit_details(run))
    started = time.perf_counter()
    done: dict = {}
    failure = None
    with target_lock(run.target_id):
        run = RestoreRun.objects.select_related("target", "artifact", "requested_by").get(pk=run.pk)
        blocker = rollback_blocker(run)
        if blocker:
            raise RestoreConflict(blocker)
        try:
            if run.restores_database:
                done["database"] = pg.swap_back(secrets.resolve(run.target.database_ref), run.pk).as_dict()
            if run.restores_config:
                done["config"] = configs.swap_back_config_dir(run.target.config_dir, run.pk).as_dict()
        except (pg.PgOpsError, configs.ConfigSwapError, secrets.SecretReferenceError, OSError) as exc:
            failure = exc
        if failure is None:
            seconds = time.perf_counter() - started
            transition(run, [RestoreRun.State.SUCCEEDED, RestoreRun.State.FAILED], RestoreRun.State.ROLLED_BACK,
                       rolled_back_at=timezone.now(), rolled_back_by=actor, rollback_seconds=seconds)
            audit_record(actor=actor, action=AuditAction.RESTORE_ROLLED_BACK, obj=run, request=request,
                         details=audit_details(run, rolled_back_by=actor.get_username(), seconds=round(seconds, 4),
                                               reauthenticated=True, **done))
            return run
    with transaction.atomic():
        audit_record(actor=actor, action=AuditAction.RESTORE_ROLLBACK_FAILED, obj=run, outcome="failure",
                     request=request,
                     details=audit_details(run, error=scrub(failure)[:500], done=done))
    raise RestoreConflict(f"the rollback failed: {scrub(failure)}"
                          + (" (the database was swapped back)" if "database" in done else ""))


def restore_copies_drop_due(now=None) -> int:
    """Drop the pre-restore (or, after a rollback, the restored) copies of runs whose window passed (cron)."""
    now = now or timezone.now()
    due = RestoreRun.objects.filter(swapped_at__isnull=False, copies_dropped_at__isnull=True, rollback_until__lte=now,
                                    state__in=[RestoreRun.State.SUCCEEDED, RestoreRun.State.FAILED,
                                               RestoreRun.State.ROLLED_BACK]).select_related("target")
    count = 0
    for run in due:
        dropped = []
        with target_lock(run.target_id):
            try:
                if run.restores_database:
                    url = secrets.resolve(run.target.database_ref)
                    for kind in (pg.CopyKind.PRE, pg.CopyKind.FAILED):
                        if pg.drop_copy(url, run.pk, kind):
                            dropped.append(pg.copy_name(pg.database_name(url), run.pk, kind))
                if run.restores_config and run.target.config_dir:
                    for kind in (configs.ConfigCopyKind.PRE, configs.ConfigCopyKind.FAILED):
                        if configs.drop_config_copy(run.target.config_dir, run.pk, kind):
                            dropped.append(str(configs.config_copy_path(run.target.config_dir, run.pk, kind)))
            except (pg.PgOpsError, secrets.SecretReferenceError, configs.ConfigSwapError, OSError) as exc:
                log.warning("cannot drop the copies of restore %s: %s", run.pk, exc)
                continue
            RestoreRun.objects.filter(pk=run.pk).update(copies_dropped_at=timezone.now())
            audit_record(actor=None, action=AuditAction.RESTORE_COPIES_DROPPED, obj=run,
                         details={"run": str(run.pk), "target": run.target.name, "dropped": dropped,
                                  "window_hours": settings.RESTORE_ROLLBACK_WINDOW_HOURS})
            count += 1
    return count
