"""When a health score must be recomputed: after every change of the catalog that can move it.

Two kinds of receivers, so no other app has to call us:

- ``post_save`` of ``System`` (its policy), ``Artifact`` (status, verification fields, off-site
  flag) and ``ArtifactCopy`` — changes made through ``save()``;
- ``post_save`` of ``AuditEvent`` for the actions below — the catalog changes most rows with
  conditional ``update()`` calls (no ``post_save``), but every such change is audited, in the
  same transaction, so its audit event is the reliable signal. That covers a backup finishing
  (``backup.succeeded`` / ``backup.failed``), a copy being checked (``artifact.copied``,
  ``artifact.copy_status``), the inventory sync, deletions and rewraps, and the verification
  and restore runs of the restores app (``verification.*``, ``restore.*`` outcomes).

Each only schedules ``health_recompute_soon``: the recompute runs after the transaction
commits, once per system, and never fails the change that triggered it.
"""

import uuid

from django.db.models.signals import post_save

from backups.models import Artifact, ArtifactCopy, System
from compliance.audit.actions import AuditAction
from compliance.health_recompute import ALL_SYSTEMS, health_recompute_soon
from compliance.models import AuditEvent

ARTIFACT_FIELDS = {"status", "created_at", "last_verified_level", "last_verified_at", "offsite_verified_at", "kind",
                   "system", "system_id", "sha256", "size"}
WATCHED_PREFIXES = ("artifact.", "verification.", "system.", "continuous.")
WATCHED_ACTIONS = {AuditAction.BACKUP_SUCCEEDED, AuditAction.BACKUP_FAILED, AuditAction.INVENTORY_FINISHED}
RESTORE_OUTCOMES = (".succeeded", ".failed", ".rolled_back")


def watched(action: str) -> bool:
    """Does an audit event of this action mean some health score may have moved?"""
    if action in WATCHED_ACTIONS or action.startswith(WATCHED_PREFIXES):
        return True
    return action.startswith(("restore.", "drill.")) and action.endswith(RESTORE_OUTCOMES)


def _system_saved(sender, instance, raw=False, **kwargs):
    if not raw:
        health_recompute_soon(instance.pk, trigger="system saved")


def _artifact_saved(sender, instance, raw=False, update_fields=None, **kwargs):
    if raw or instance.status == Artifact.Status.WRITING:
        return
    if update_fields is not None and not ARTIFACT_FIELDS & set(update_fields):
        return
    health_recompute_soon(instance.system_id, trigger=f"artifact {instance.short_id} saved")


def _copy_saved(sender, instance, raw=False, **kwargs):
    if raw:
        return
    system_id = Artifact.objects.filter(pk=instance.artifact_id).values_list("system_id", flat=True).first()
    if system_id is not None:
        health_recompute_soon(system_id, trigger=f"copy of {str(instance.artifact_id)[:8]} saved")


def _system_of(event: AuditEvent) -> int | None:
    """The system an audit event is about, or ``ALL_SYSTEMS`` when it does not say."""
    if event.object_type == "backups.system" and event.object_id.isdigit():
        return int(event.object_id)
    if event.object_type == "backups.artifact":
        try:
            uuid.UUID(event.object_id)
        except ValueError:
            return ALL_SYSTEMS
        found = Artifact.objects.filter(pk=event.object_id).values_list("system_id", flat=True).first()
        return found if found is not None else ALL_SYSTEMS
    return ALL_SYSTEMS


def _audited(sender, instance, created=False, raw=False, **kwargs):
    # Runs inside the audit writer's transaction: it only reads and schedules, so it cannot
    # make the audited change fail.
    if raw or not created or not watched(instance.action):
        return
    health_recompute_soon(_system_of(instance), trigger=instance.action)


def connect() -> None:
    post_save.connect(_system_saved, sender=System, dispatch_uid="health.system")
    post_save.connect(_artifact_saved, sender=Artifact, dispatch_uid="health.artifact")
    post_save.connect(_copy_saved, sender=ArtifactCopy, dispatch_uid="health.copy")
    post_save.connect(_audited, sender=AuditEvent, dispatch_uid="health.audit")
