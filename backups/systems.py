"""Systems and storage locations (Admin): saved with an audit event, and locations checked on demand."""

from __future__ import annotations

from django.db import transaction

from backups.errors import BackupError
from backups.models import StorageLocation, System
from backups.storage import StorageError
from compliance.audit import audit_record
from drpanel.permissions import Cap, require_cap

SYSTEM_FIELDS = ("name", "description", "database_ref", "config_paths", "schedule_enabled", "full_every_hours",
                 "incremental_enabled", "incremental_every_hours", "config_every_hours", "keep_last", "keep_daily",
                 "keep_weekly", "keep_monthly")
LOCATION_FIELDS = ("name", "kind", "role", "enabled", "path", "bucket", "prefix", "region", "endpoint_url",
                   "access_key_ref", "secret_key_ref")


def _save_with_audit(*, actor, instance, fields, values: dict, action: str, request=None):
    require_cap(actor, Cap.MANAGE_PANEL, action=action, obj=instance if instance.pk else None)
    before = {f: getattr(instance, f) for f in fields} if instance.pk else {}
    for field in fields:
        if field in values:
            setattr(instance, field, values[field])
    instance.full_clean()
    changed = {f: getattr(instance, f) for f in fields if before.get(f) != getattr(instance, f)}
    created = instance.pk is None
    if not created and not changed:
        return instance
    with transaction.atomic():
        if created:
            instance.save()
        else:
            instance.save(update_fields=[*changed, *(["updated_at"] if hasattr(instance, "updated_at") else [])])
        # References (env:NAME, file:/path) are not secrets; their values never come near here.
        audit_record(actor=actor, action=f"{action}{'created' if created else 'updated'}", obj=instance,
                     request=request, details={"changed": changed})
    return instance


def system_save(*, actor, system: System | None = None, values: dict, request=None) -> System:
    """Create or change a system (Admin). ``values`` holds model fields; validation errors propagate."""
    return _save_with_audit(actor=actor, instance=system or System(), fields=SYSTEM_FIELDS, values=values,
                            action="system.", request=request)


def location_save(*, actor, location: StorageLocation | None = None, values: dict, request=None) -> StorageLocation:
    """Create or change a storage location (Admin); the location list checks reachability on demand."""
    location = location or StorageLocation()
    return _save_with_audit(actor=actor, instance=location, fields=LOCATION_FIELDS, values=values,
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
