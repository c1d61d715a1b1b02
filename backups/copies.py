"""Copies of an artifact: writing its manifest, copying it to another location and re-reading it there,
and removing what a failed backup left behind."""

from __future__ import annotations

import contextlib
import json

from django.db import transaction
from django.utils import timezone

from backups import formats
from backups.models import Artifact, ArtifactCopy, StorageLocation
from backups.storage import StorageError, manifest_key
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction


def write_manifest(location: StorageLocation, artifact: Artifact) -> None:
    """Write the artifact's manifest (``<key>.manifest.json``) next to it in ``location``."""
    data = json.dumps(artifact.manifest, indent=2, sort_keys=True).encode()
    location.backend().put_bytes(manifest_key(artifact.storage_key), data)


def copy_artifact(artifact: Artifact, *, source: StorageLocation, target: StorageLocation,
                  progress=None) -> ArtifactCopy:
    """Copy an artifact (and its manifest) to ``target``, then re-read it there and compare SHA-256."""
    src_backend, dst_backend = source.backend(), target.backend()
    copy, _ = ArtifactCopy.objects.update_or_create(
        artifact=artifact, location=target,
        defaults={"key": artifact.storage_key, "status": ArtifactCopy.Status.PENDING})
    with contextlib.closing(src_backend.open_read(artifact.storage_key)) as src, \
            dst_backend.open_write(artifact.storage_key) as out:
        formats.copy_stream(src, out, progress=progress)
    size, sha = dst_backend.sha256(artifact.storage_key)
    write_manifest(target, artifact)
    now = timezone.now()
    ok = sha == artifact.sha256 and size == artifact.size
    status = ArtifactCopy.Status.OK if ok else (
        ArtifactCopy.Status.SIZE_MISMATCH if size != artifact.size else ArtifactCopy.Status.CHECKSUM_MISMATCH)
    with transaction.atomic():
        ArtifactCopy.objects.filter(pk=copy.pk).update(status=status, size=size, sha256_seen=sha, checked_at=now,
                                                       last_seen_at=now)
        if ok and target.is_offsite:
            Artifact.objects.filter(pk=artifact.pk).update(offsite_verified_at=now)
        audit_record(actor=None, action=AuditAction.ARTIFACT_COPIED, obj=artifact,
                     outcome="success" if ok else "failure",
                     details={"location": target.name, "size": size, "sha256": sha, "status": status})
    copy.refresh_from_db()
    return copy


def copy_failed(artifact: Artifact, location: StorageLocation, error: str) -> None:
    """A copy that could not be made is said to be missing there (not left "pending"), and audited."""
    with transaction.atomic():
        ArtifactCopy.objects.filter(artifact=artifact, location=location,
                                    status=ArtifactCopy.Status.PENDING).update(status=ArtifactCopy.Status.MISSING)
        audit_record(actor=None, action=AuditAction.ARTIFACT_COPIED, obj=artifact, outcome="failure",
                     details={"location": location.name, "status": ArtifactCopy.Status.MISSING, "error": error[:500]})
    with contextlib.suppress(StorageError):
        location.backend().discard_partial(artifact.storage_key)


def remove_objects(artifact: Artifact) -> None:
    """Remove a failed artifact's objects, and any partial write of them, from every enabled location."""
    for location in StorageLocation.objects.filter(enabled=True):
        with contextlib.suppress(StorageError):
            backend = location.backend()
            backend.delete(artifact.storage_key)
            backend.delete(manifest_key(artifact.storage_key))
            backend.discard_partial(artifact.storage_key)
