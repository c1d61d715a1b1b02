"""Systems and storage locations (Admin): saved with an audit event, and locations checked on demand.

A change that weakens protection (shrinking retention, turning schedules off, rarer backups,
moving a system to another worker pool, disabling a location) is not applied by the admin alone: it
becomes a pending approval that another Manager or Admin decides with their password
(``system_change_approve`` / ``location_change_approve``); strengthening changes apply at once.
"""

from __future__ import annotations

from django.db import transaction

from backups.errors import BackupError
from backups.models import StorageLocation, System
from backups.storage import StorageError
from compliance.audit import audit_record
from drpanel.approvals import (
    approval_consume,
    canonical_params,
    protection_change_approve,
    protection_change_request,
)
from drpanel.models import Approval
from drpanel.permissions import Cap, require_cap

SYSTEM_FIELDS = ("name", "description", "database_ref", "config_paths", "schedule_enabled", "full_every_hours",
                 "incremental_enabled", "incremental_every_hours", "config_every_hours", "keep_last", "keep_daily",
                 "keep_weekly", "keep_monthly", "continuous_enabled", "rpo_target_minutes", "base_every_hours",
                 "recovery_window_days", "worker_pool")
LOCATION_FIELDS = ("name", "kind", "role", "enabled", "path", "bucket", "prefix", "region", "endpoint_url",
                   "access_key_ref", "secret_key_ref")


SYSTEM_CHANGE_APPROVAL = "system.change"
LOCATION_CHANGE_APPROVAL = "location.change"
RETENTION_FIELDS = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "recovery_window_days")
INTERVAL_FIELDS = ("full_every_hours", "incremental_every_hours", "config_every_hours", "rpo_target_minutes",
                   "base_every_hours")


def system_weakens(before: dict, system: System) -> list[str]:
    """Why a change of ``system`` weakens protection: less retention, schedules or continuous protection off, rarer
    backups, a looser RPO target, or its jobs moved to another worker pool (other hosts, or none running)."""
    reasons = [f"{name} {before[name]} → {getattr(system, name)}" for name in RETENTION_FIELDS
               if getattr(system, name) < before[name]]
    reasons += [f"{name} off" for name in ("schedule_enabled", "incremental_enabled", "continuous_enabled")
                if before[name] and not getattr(system, name)]
    reasons += [f"{name} {before[name]} → {getattr(system, name)}" for name in INTERVAL_FIELDS
                if getattr(system, name) > before[name]]
    if system.worker_pool != before["worker_pool"]:
        reasons.append(f"worker_pool {before['worker_pool'] or '(any)'} → {system.worker_pool or '(any)'}")
    return reasons


def location_weakens(before: dict, location: StorageLocation) -> list[str]:
    """Why a change of ``location`` weakens protection: disabling it."""
    return ["disabled"] if before["enabled"] and not location.enabled else []


def _change_params(instance, fields, change: dict) -> dict:
    """What an approval binds: the change, and the row as it stands now."""
    return {"change": canonical_params(change), "before": canonical_params({f: getattr(instance, f) for f in fields})}


def _save_with_audit(*, actor, instance, fields, values: dict, action: str, kind: str, weakens, request=None):
    require_cap(actor, Cap.MANAGE_PANEL, action=action, obj=instance if instance.pk else None)
    # "Before" comes from the database: a ModelForm has already written the new values onto its instance.
    stored = type(instance).objects.get(pk=instance.pk) if instance.pk else None
    row = stored if stored is not None else instance
    before = {f: getattr(stored, f) for f in fields} if stored is not None else {}
    for field in fields:
        if field in values:
            setattr(row, field, values[field])
    row.full_clean()
    changed = {f: getattr(row, f) for f in fields if before.get(f) != getattr(row, f)}
    created = stored is None
    if not created and not changed:
        return row
    reasons = [] if created else weakens(before, row)
    if actor is not None and reasons:
        current = type(row).objects.get(pk=row.pk)
        return protection_change_request(actor=actor, kind=kind, subject=current, request=request,
                                         params=_change_params(current, fields, changed), reason="; ".join(reasons))
    with transaction.atomic():
        if created:
            row.save()
        else:
            row.save(update_fields=[*changed, *(["updated_at"] if hasattr(row, "updated_at") else [])])
        # References (env:NAME, file:/path) are not secrets; their values never come near here.
        audit_record(actor=actor, action=f"{action}{'created' if created else 'updated'}", obj=row,
                     request=request, details={"changed": changed})
    return row


def _change_approve(*, actor, approval: Approval, password: str, fields, action: str, request=None):
    subject = approval.subject
    change = approval.params["change"]

    def apply(approved: Approval):
        with transaction.atomic():
            locked = type(subject).objects.select_for_update().get(pk=subject.pk)
            # Consumed against the row as it is now: a change made after the request voids the approval.
            approval_consume(approval=approved, params=_change_params(locked, fields, change), actor=actor)
            for field, value in change.items():
                setattr(locked, field, value)
            locked.full_clean()
            locked.save(update_fields=[*change, *(["updated_at"] if hasattr(locked, "updated_at") else [])])
            audit_record(actor=actor, action=f"{action}updated", obj=locked, request=request, details={
                "changed": change, "approval": approved.pk, "requested_by": approved.requested_by.get_username(),
                "approved_by": approved.decided_by.get_username()})
        return locked

    return protection_change_approve(actor=actor, approval=approval, password=password,
                                     params=_change_params(subject, fields, change), apply=apply, request=request)


def system_save(*, actor, system: System | None = None, values: dict, request=None) -> System | Approval:
    """Create or change a system (Admin). ``values`` holds model fields; validation errors propagate.

    Less retention, a schedule turned off or rarer backups wait for a second person: the pending
    ``Approval`` is returned, and ``system_change_approve`` applies it."""
    return _save_with_audit(actor=actor, instance=system or System(), fields=SYSTEM_FIELDS, values=values,
                            action="system.", kind=SYSTEM_CHANGE_APPROVAL, weakens=system_weakens, request=request)


def system_change_approve(*, actor, approval: Approval, password: str, request=None) -> System:
    """Another Manager or Admin approves a pending system change with their password; it applies at once."""
    return _change_approve(actor=actor, approval=approval, password=password, fields=SYSTEM_FIELDS,
                           action="system.", request=request)


def location_save(*, actor, location: StorageLocation | None = None, values: dict,
                  request=None) -> StorageLocation | Approval:
    """Create or change a storage location (Admin); the location list checks reachability on demand.

    Disabling a location waits for a second person (``location_change_approve``)."""
    location = location or StorageLocation()
    return _save_with_audit(actor=actor, instance=location, fields=LOCATION_FIELDS, values=values,
                            action="location.", kind=LOCATION_CHANGE_APPROVAL, weakens=location_weakens,
                            request=request)


def location_change_approve(*, actor, approval: Approval, password: str, request=None) -> StorageLocation:
    """Another Manager or Admin approves disabling a location with their password; it applies at once."""
    return _change_approve(actor=actor, approval=approval, password=password, fields=LOCATION_FIELDS,
                           action="location.", request=request)


def location_check(location: StorageLocation) -> str | None:
    """None when the location answers, else the reason (for the admin page)."""
    try:
        location.backend().check()
    except StorageError as exc:
        return str(exc)
    return None


def primary_location() -> StorageLocation:
    location = StorageLocation.objects.filter(role=StorageLocation.Role.PRIMARY, enabled=True).first()
    if location is None:
        raise BackupError("no enabled primary storage location: an admin must add one")
    return location
