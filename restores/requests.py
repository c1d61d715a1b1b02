"""Restore requests: the rights to ask, the request itself, the four-eyes approval of production restores,
rejection, and the expiry of approvals nobody gave in time.

Every change goes through one service here (``restore_request``, ``restore_approve``,
``restore_reject``, ``restore_expire_due``): the service owns the transaction, the
validation, the state transition (a conditional update on the state it expects, see
``RestoreRun``'s docstring) and the audit event. Views, the API, jobs and management
commands call these alike; nothing else changes a run. A queued run's job is enqueued when
the transaction commits (``restores.execution.RESTORE_RUNS``).
"""

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from backups.models import Artifact, StorageLocation, System
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel.approvals import ApprovalError, approval_approve, approval_consume, approval_reject, approval_request
from drpanel.models import Approval
from drpanel.permissions import Cap, has_object_right, require_cap, require_object_right
from restores.execution import RESTORE_RUNS
from restores.models import APPROVE_RESTORE, RESTORE_TO_TARGET, RestoreRun, Target
from restores.offsite_recovery import OffsiteRecoveryError, offsite_point_check
from restores.pitr import RecoveryPoint
from restores.quarantine import refuse_quarantined
from restores.runstate import (
    PRODUCTION_APPROVAL,
    RestoreConflict,
    RestoreError,
    audit_details,
    run_binding_params,
    transition,
)

DATABASE_FORMATS = (Artifact.Format.PG_CUSTOM, Artifact.Format.PG_PLAIN, Artifact.Format.PG_PLAIN_GZIP)


def may_approve(target: Target):
    """The approval rule of one target: holds ``approve_restore`` on it (guardian)."""
    return lambda user: has_object_right(user, APPROVE_RESTORE, target)


def config_artifact_for(artifact: Artifact) -> Artifact | None:
    """The config artifact of the same system taken closest in time to ``artifact`` (for a full restore)."""
    return config_artifact_near(artifact.system, artifact.created_at)


def config_artifact_near(system: System, moment) -> Artifact | None:
    """The config artifact of ``system`` taken closest in time to ``moment`` (a full's, or a point in time)."""
    candidates = Artifact.objects.filter(system_id=system.pk, kind=Artifact.Kind.CONFIG,
                                         status=Artifact.Status.AVAILABLE, format=Artifact.Format.CONFIG_TAR)
    before = candidates.filter(created_at__lte=moment).order_by("-created_at").first()
    after = candidates.filter(created_at__gt=moment).order_by("created_at").first()
    options = [a for a in (before, after) if a is not None]
    return min(options, key=lambda a: abs((a.created_at - moment).total_seconds()), default=None)


def _validate(*, artifact: Artifact, target: Target, mode: str, confirm: str, is_drill: bool) -> Artifact | None:
    if mode not in RestoreRun.Mode.values:
        raise RestoreError(f"unknown mode {mode!r}; the modes are {', '.join(RestoreRun.Mode.values)}")
    if mode == RestoreRun.Mode.SERVER:
        raise RestoreError("a whole-server restore recovers a point in time: it takes a recovery point, not an "
                           "artifact")
    if target.is_server:
        raise RestoreError(f"{target.name} is a server target: it takes whole-server restores of a point in time "
                           "only")
    if not target.is_active:
        raise RestoreError(f"the target {target.name} is deactivated: it accepts no restore")
    if (confirm or "").strip() != target.name:
        raise RestoreError(f"type the target's name ({target.name}) to confirm the restore")
    if artifact.status != Artifact.Status.AVAILABLE:
        raise RestoreError(f"this artifact is {artifact.status}: it cannot be restored")
    if target.system_id and target.system_id != artifact.system_id:
        raise RestoreError(f"{target.name} receives {target.system.name}; this artifact is of {artifact.system.name}")
    if is_drill and target.is_production:
        raise RestoreError("drills go into staging or scratch targets, never production")
    config_artifact = None
    if mode in (RestoreRun.Mode.DATABASE, RestoreRun.Mode.FULL) and (
            artifact.kind != Artifact.Kind.FULL or artifact.format not in DATABASE_FORMATS):
        raise RestoreError(f"a {mode} restore needs a full backup in pg_dump custom or plain SQL format; "
                           f"this is a {artifact.kind} artifact ({artifact.get_format_display()})")
    if mode == RestoreRun.Mode.CONFIG and (artifact.kind != Artifact.Kind.CONFIG
                                           or artifact.format != Artifact.Format.CONFIG_TAR):
        raise RestoreError("a config-only restore needs a config artifact")
    if mode in (RestoreRun.Mode.CONFIG, RestoreRun.Mode.FULL) and not target.config_dir:
        raise RestoreError(f"{target.name} has no config directory: it takes no config restore")
    if mode == RestoreRun.Mode.FULL:
        config_artifact = config_artifact_for(artifact)
        if config_artifact is None:
            raise RestoreError(f"no available config artifact of {artifact.system.name} to restore with this one")
    return config_artifact


def restore_request(*, actor, artifact: Artifact, target: Target, mode: str, confirm: str, is_drill: bool = False,
                    reason: str = "", trigger: str = RestoreRun.Trigger.MANUAL, request=None) -> RestoreRun:
    """Ask for a restore of ``artifact`` into ``target`` (needs ``restore_to_target`` on it).

    ``confirm`` must be the target's name. A production target waits for an approval;
    staging and scratch are queued at once. Raises ``Denied``, ``RestoreError`` (bad input)
    or ``RestoreConflict`` (another restore into this target is in flight). A quarantined artifact
    (found in storage, not adopted and verified yet) is refused with its reason, audited.
    """
    require_cap(actor, Cap.VIEW_PANEL, action="restore.request", obj=target)
    require_object_right(actor, RESTORE_TO_TARGET, target, action="restore.request")
    refuse_quarantined(actor=actor, artifact=artifact, what=f"{mode} restore into {target.name}", error=RestoreError,
                       request=request)
    config_artifact = _validate(artifact=artifact, target=target, mode=mode, confirm=confirm, is_drill=is_drill)
    run = RestoreRun(artifact=artifact, target=target, mode=mode, config_artifact=config_artifact,
                     is_drill=bool(is_drill), reason=(reason or "")[:500], requested_by=actor, trigger=trigger)
    return _create(run, actor=actor, request=request)


def _create(run: RestoreRun, *, actor, request=None) -> RestoreRun:
    """Save a validated run, audit it, then route it: production waits for approval, the rest is queued."""
    target, mode = run.target, run.mode
    with transaction.atomic():
        try:
            # The partial unique index decides between two requests for one target, not a prior read.
            with transaction.atomic():
                run.save(force_insert=True)
        except IntegrityError:
            active = RestoreRun.objects.filter(target=target, state__in=RestoreRun.ACTIVE_STATES).first()
            raise RestoreConflict(f"a restore into {target.name} is already in flight"
                                  + (f" (run {active.short_id}, {active.get_state_display()})" if active else "")
                                  ) from None
        audit_record(actor=actor, action=AuditAction.RESTORE_REQUESTED, obj=run, request=request,
                     details=audit_details(run, reason=run.reason, confirm_typed=True))
        if target.is_production:
            params = run_binding_params(run)
            approval = approval_request(actor=actor, kind=PRODUCTION_APPROVAL, subject=run, params=params,
                                        reason=run.reason or f"{mode} restore into {target.name}", request=request)
            transition(run, RestoreRun.State.REQUESTED, RestoreRun.State.AWAITING_APPROVAL, approval=approval,
                       binding_hash=approval.binding_hash)
            audit_record(actor=actor, action=AuditAction.RESTORE_AWAITING_APPROVAL, obj=run, request=request,
                         details=audit_details(run, approval=approval.pk, binding_hash=approval.binding_hash,
                                               expires_at=approval.expires_at))
        else:
            _queue(run, actor=actor, request=request)
    return run


def first_base_backup(system: System) -> Artifact | None:
    """The oldest available base backup of ``system``: no point before its end can be recovered."""
    return Artifact.objects.filter(system=system, kind=Artifact.Kind.BASE, status=Artifact.Status.AVAILABLE
                                   ).order_by("created_at").first()


def _validate_point(*, system: System, point: RecoveryPoint, target: Target, mode: str, confirm: str,
                    is_drill: bool, location: StorageLocation | None = None) -> None:
    if mode not in (RestoreRun.Mode.DATABASE, RestoreRun.Mode.SERVER):
        raise RestoreError(f"a point-in-time restore is database-only or whole-server; {mode!r} needs an artifact")
    if mode == RestoreRun.Mode.SERVER and not target.is_server:
        raise RestoreError(f"a whole-server restore goes into a server target (a new data directory, port and OS "
                           f"user); {target.name} is a database")
    if mode == RestoreRun.Mode.DATABASE and target.is_server:
        raise RestoreError(f"{target.name} is a server target: it takes whole-server restores only")
    if not target.is_active:
        raise RestoreError(f"the target {target.name} is deactivated: it accepts no restore")
    if (confirm or "").strip() != target.name:
        raise RestoreError(f"type the target's name ({target.name}) to confirm the restore")
    if not system.continuous_enabled:
        raise RestoreError(f"{system.name} is not continuously protected: it has no point in time to recover to")
    if target.system_id and target.system_id != system.pk:
        raise RestoreError(f"{target.name} receives {target.system.name}; this recovery point is of {system.name}")
    if is_drill and target.is_production:
        raise RestoreError("drills go into staging or scratch targets, never production")
    if location is not None:
        # The off-site packages decide alone (Barman's catalog may be gone with its data center).
        if point.kind == "time" and point.time > timezone.now():
            raise RestoreError(f"{point} is in the future")
        _validate_offsite(system=system, point=point, mode=mode, location=location)
        return
    first = first_base_backup(system)
    if first is None:
        raise RestoreError(f"{system.name} has no base backup yet: nothing to recover a point in time from")
    if point.kind == "time":
        if point.time > timezone.now():
            raise RestoreError(f"{point} is in the future")
        if point.time < first.created_at:
            raise RestoreError(f"{point} is before the first base backup of {system.name} (it ended "
                               f"{first.created_at:%Y-%m-%d %H:%M:%S} UTC): no point before it can be recovered")


def _validate_offsite(*, system: System, point: RecoveryPoint, mode: str, location: StorageLocation) -> None:
    """A point recovered from an off-site copy: a database-only restore, from an enabled off-site location whose
    packages cover the point (the error names what lacks: a base backup, a WAL segment, newer WAL)."""
    if location.role != StorageLocation.Role.OFFSITE or not location.enabled:
        raise RestoreError(f"{location.name} is not an enabled off-site location: choose Barman's home or one of "
                           "those")
    if mode != RestoreRun.Mode.DATABASE:
        raise RestoreError("a whole-server recovery from the off-site copy is made with manage.py offsite_recover "
                           "on the new host; a restore run from it is database-only")
    try:
        offsite_point_check(system, location, point)
    except OffsiteRecoveryError as exc:
        raise RestoreError(f"the off-site copy cannot recover this point: {exc}") from None


def restore_request_point(*, actor, system: System, point: RecoveryPoint, target: Target, mode: str, confirm: str,
                          is_drill: bool = False, reason: str = "", trigger: str = RestoreRun.Trigger.MANUAL,
                          request=None, location: StorageLocation | None = None) -> RestoreRun:
    """Ask for a point-in-time restore of ``system`` at ``point`` into ``target`` (database-only, or whole-server
    into a server target; needs ``restore_to_target`` on it). Same rules as ``restore_request``: production waits
    for an approval (bound to the system, the point, the source and the target), staging and scratch are queued at
    once. ``location``: recover from the off-site copy there instead of Barman's home (database-only; refused
    before queueing when its packages do not cover the point)."""
    require_cap(actor, Cap.VIEW_PANEL, action="restore.request", obj=target)
    require_object_right(actor, RESTORE_TO_TARGET, target, action="restore.request")
    _validate_point(system=system, point=point, target=target, mode=mode, confirm=confirm, is_drill=is_drill,
                    location=location)
    run = RestoreRun(recovery_system=system, recovery_kind=point.kind, recovery_time=point.time,
                     recovery_name=point.name, target=target, mode=mode, is_drill=bool(is_drill),
                     reason=(reason or "")[:500], requested_by=actor, trigger=trigger, recovery_location=location)
    return _create(run, actor=actor, request=request)


def _queue(run: RestoreRun, *, actor, request=None) -> None:
    """requested | approved → queued, and enqueue the job once the transaction commits."""
    if not transition(run, [RestoreRun.State.REQUESTED, RestoreRun.State.APPROVED], RestoreRun.State.QUEUED,
                      queued_at=timezone.now()):
        raise RestoreConflict("this restore could not be queued: its state changed meanwhile")
    audit_record(actor=actor, action=AuditAction.RESTORE_QUEUED, obj=run, request=request, details=audit_details(run))
    # If Redis refuses, the request stands; the reconciler queues it again (restores.reliability).
    RESTORE_RUNS.enqueue_on_commit(run.pk)


def restore_approve(*, actor, run: RestoreRun, password: str, note: str = "", request=None) -> RestoreRun:
    """Approve a production restore: another person than the requester, holding ``approve_restore`` on
    the target, with their password re-entered, for exactly the artifact, target and mode asked for.

    Raises ``Denied`` (self-approval, no right), ``PasswordRefused`` or ``PasswordLocked``, ``RestoreConflict``
    (not awaiting approval, expired, or the request changed since it was made).
    """
    require_cap(actor, Cap.VIEW_PANEL, action="restore.approve", obj=run)
    if run.state != RestoreRun.State.AWAITING_APPROVAL or run.approval is None:
        raise RestoreConflict(f"this restore is {run.get_state_display()}; only one awaiting approval can be approved")
    try:
        approval_approve(actor=actor, approval=run.approval, password=password, params=run_binding_params(run),
                         may_approve=may_approve(run.target), note=note, request=request)
    except ApprovalError as exc:
        run.approval.refresh_from_db()
        if run.approval.state == Approval.State.EXPIRED:
            _expire(run)
        raise RestoreConflict(str(exc)) from None
    with transaction.atomic():
        # Only the run's row: its artifact is on the nullable side of the join for a point-in-time restore.
        locked = RestoreRun.objects.select_for_update(of=("self",)).select_related(
            "target", "artifact", "recovery_system", "requested_by").get(pk=run.pk)
        if not transition(locked, RestoreRun.State.AWAITING_APPROVAL, RestoreRun.State.APPROVED):
            raise RestoreConflict(f"this restore is {locked.get_state_display()} now")
        approval = approval_consume(approval=run.approval, params=run_binding_params(locked), actor=actor)
        audit_record(actor=actor, action=AuditAction.RESTORE_APPROVED, obj=locked, request=request,
                     details=audit_details(locked, approved_by=actor.get_username(), approval=approval.pk,
                                           binding_hash=approval.binding_hash, reauthenticated=True, note=note[:300]))
        _queue(locked, actor=actor, request=request)
    locked.refresh_from_db()
    return locked


def restore_reject(*, actor, run: RestoreRun, note: str = "", request=None) -> RestoreRun:
    """Reject a production restore (an approver), or withdraw it (the requester). Final."""
    require_cap(actor, Cap.VIEW_PANEL, action="restore.reject", obj=run)
    if run.state != RestoreRun.State.AWAITING_APPROVAL or run.approval is None:
        raise RestoreConflict(f"this restore is {run.get_state_display()}; only one awaiting approval can be rejected")
    try:
        approval_reject(actor=actor, approval=run.approval, may_approve=may_approve(run.target), note=note,
                        request=request)
    except ApprovalError as exc:
        raise RestoreConflict(str(exc)) from None
    run.approval.refresh_from_db()
    withdrawn = actor.pk == run.requested_by_id
    with transaction.atomic():
        if not transition(run, RestoreRun.State.AWAITING_APPROVAL, RestoreRun.State.REJECTED,
                          finished_at=timezone.now()):
            raise RestoreConflict(f"this restore is {run.get_state_display()} now")
        audit_record(actor=actor, action=AuditAction.RESTORE_REJECTED, obj=run, request=request,
                     details=audit_details(run, rejected_by=actor.get_username(), withdrawn=withdrawn, note=note[:300]))
    return run


def _expire(run: RestoreRun) -> bool:
    with transaction.atomic():
        # Conditional: an approval decided a moment ago keeps its decision.
        if run.approval_id and Approval.objects.filter(pk=run.approval_id, state=Approval.State.PENDING).update(
                state=Approval.State.EXPIRED):
            audit_record(actor=None, action=AuditAction.APPROVAL_EXPIRED, obj=run,
                         details={"approval": run.approval_id, "kind": PRODUCTION_APPROVAL})
        if not transition(run, RestoreRun.State.AWAITING_APPROVAL, RestoreRun.State.EXPIRED,
                          finished_at=timezone.now()):
            return False
        why = f"nobody approved it within {settings.APPROVAL_TTL_MINUTES} minutes"
        audit_record(actor=None, action=AuditAction.RESTORE_EXPIRED, obj=run, details=audit_details(run, why=why))
    return True


def restore_expire_due(now=None) -> int:
    """Expire (auto-reject) production restores whose approval window passed (cron, every minute)."""
    now = now or timezone.now()
    due = RestoreRun.objects.filter(state=RestoreRun.State.AWAITING_APPROVAL, approval__expires_at__lte=now
                                    ).select_related("target", "requested_by")
    return sum(_expire(run) for run in due)
