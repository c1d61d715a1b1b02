"""Key rotation: re-wrapping artifacts' data keys under another master key, one artifact or all of them."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backups import formats, server_roles
from backups.copies import write_manifest
from backups.errors import BackupError
from backups.keys import get_keyring
from backups.models import Artifact, ArtifactCopy, OffsitePackage
from backups.storage import StorageError
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel import queues
from drpanel.permissions import Cap, require_cap
from drpanel.scrub import scrub

ROTATION_QUEUE = "backup"


def artifact_rewrap(*, actor, artifact: Artifact, to_key_id: str | None = None) -> Artifact:
    """Re-wrap an artifact's data key under another master key, in every copy; chunks are copied as they are.

    The stored bytes change (new key section), so size/SHA-256 of the artifact, its copies and
    its manifest are updated and each copy is re-read and checked.
    """
    if actor is not None:
        require_cap(actor, Cap.MANAGE_PANEL, action="artifact.rewrap", obj=artifact)
    keyring = get_keyring()
    to_key_id = to_key_id or keyring.active_key_id
    if artifact.encryption != Artifact.Encryption.DRPANEL or not artifact.is_live:
        raise BackupError("only live DR Panel artifacts can be re-wrapped")
    if artifact.key_id == to_key_id:
        return artifact
    copies = list(artifact.copies.select_related("location").filter(status=ArtifactCopy.Status.OK))
    if not copies:
        raise BackupError("no copy of this artifact is known to be intact; run an inventory sync first")
    source = copies[0]
    old = {"key_id": artifact.key_id, "sha256": artifact.sha256, "size": artifact.size}
    spool = Path(settings.BACKUP_SPOOL_DIR)
    spool.mkdir(parents=True, exist_ok=True)
    # Rewrite into a local spool file first: a copy is replaced only by bytes already checked.
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(_spool_file(spool, artifact.id))
        with contextlib.closing(source.location.backend().open_read(source.key)) as src:
            header, result = formats.rewrap_stream(src, tmp, artifact_id=artifact.id, keyring=keyring,
                                                   to_key_id=to_key_id)
        tmp.flush()
        tmp.seek(0)
        formats.verify_stream(tmp, artifact_id=artifact.id, keyring=keyring, hash_plaintext=False)
        with transaction.atomic():
            manifest = dict(artifact.manifest or {})
            manifest.setdefault("encryption", {})["key_id"] = header.key_id
            manifest["size"], manifest["sha256"] = result.stored_size, result.stored_sha256
            if (manifest.get("globals") or {}).get("data"):
                # The roles sealed in the manifest follow the artifact to the new master key.
                manifest["globals"] = server_roles.rewrap_globals(manifest["globals"], artifact_id=artifact.id,
                                                                  keyring=keyring, to_key_id=header.key_id)
            manifest.setdefault("rewrapped", []).append({"at": timezone.now().isoformat(), "from_key_id": old["key_id"],
                                                         "to_key_id": header.key_id, "previous_sha256": old["sha256"]})
            Artifact.objects.filter(pk=artifact.pk).update(key_id=header.key_id, sha256=result.stored_sha256,
                                                           size=result.stored_size, manifest=manifest)
            audit_record(actor=actor, action=AuditAction.ARTIFACT_REWRAPPED, obj=artifact, details={
                "from_key_id": old["key_id"], "to_key_id": header.key_id, "previous_sha256": old["sha256"],
                "sha256": result.stored_sha256, "size": result.stored_size})
        artifact.refresh_from_db()
        for copy in copies:
            tmp.seek(0)
            backend = copy.location.backend()
            try:
                with backend.open_write(copy.key) as out:
                    formats.copy_stream(tmp, out)
                size, sha = backend.sha256(copy.key)
                write_manifest(copy.location, artifact)
            except StorageError as exc:
                with transaction.atomic():
                    ArtifactCopy.objects.filter(pk=copy.pk).update(status=ArtifactCopy.Status.CHECKSUM_MISMATCH)
                    audit_record(actor=None, action=AuditAction.ARTIFACT_COPY_REWRAP_FAILED, obj=artifact,
                                 outcome="failure",
                                 details={"location": copy.location.name, "error": scrub(exc)})
                continue
            now = timezone.now()
            ok = sha == artifact.sha256
            ArtifactCopy.objects.filter(pk=copy.pk).update(
                size=size, sha256_seen=sha, checked_at=now, last_seen_at=now,
                status=ArtifactCopy.Status.OK if ok else ArtifactCopy.Status.CHECKSUM_MISMATCH)
    return artifact


def package_rewrap(package: OffsitePackage, *, to_key_id: str) -> OffsitePackage:
    """Re-wrap an off-site package's data key under ``to_key_id`` in its location (``backups.offsite``), like an
    artifact's: rewritten through a checked spool file, re-read there, audited."""
    if package.key_id == to_key_id:
        return package
    keyring = get_keyring()
    spool = Path(settings.BACKUP_SPOOL_DIR)
    spool.mkdir(parents=True, exist_ok=True)
    backend = package.location.backend()
    with _spool_file(spool, package.pk) as tmp:
        with contextlib.closing(backend.open_read(package.key)) as src:
            header, result = formats.rewrap_stream(src, tmp, artifact_id=package.pk, keyring=keyring,
                                                   to_key_id=to_key_id)
        tmp.flush()
        tmp.seek(0)
        formats.verify_stream(tmp, artifact_id=package.pk, keyring=keyring, hash_plaintext=False)
        tmp.seek(0)
        with backend.open_write(package.key) as out:
            formats.copy_stream(tmp, out)
    size, sha = backend.sha256(package.key)
    ok = size == result.stored_size and sha == result.stored_sha256
    with transaction.atomic():
        OffsitePackage.objects.filter(pk=package.pk).update(
            key_id=header.key_id, size=size, sha256=sha, checked_at=timezone.now(),
            status=package.status if ok else OffsitePackage.Status.FAILED,
            error=package.error if ok else f"re-read after re-wrapping: SHA-256 {sha} differs")
        audit_record(actor=None, action=AuditAction.OFFSITE_PACKAGE_REWRAPPED, obj=package.system,
                     outcome="success" if ok else "failure",
                     details={"package": str(package.pk), "what": package.label, "location": package.location.name,
                              "from_key_id": package.key_id, "to_key_id": header.key_id, "sha256": sha})
    package.refresh_from_db()
    return package


@contextlib.contextmanager
def _spool_file(spool: Path, artifact_id):
    path = spool / f".rewrap-{artifact_id}-{uuid.uuid4().hex[:8]}"
    handle = open(path, "w+b")  # noqa: SIM115
    os.chmod(path, 0o600)
    try:
        yield handle
    finally:
        handle.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def key_rotation_request(*, actor, to_key_id: str | None = None, request=None) -> str:
    """Queue the re-wrap of every artifact not under ``to_key_id`` (default: the active key)."""
    require_cap(actor, Cap.MANAGE_PANEL, action="keys.rotate")
    keyring = get_keyring()
    to_key_id = to_key_id or keyring.active_key_id
    if not to_key_id or to_key_id not in keyring.key_ids():
        raise BackupError(f"{to_key_id!r} is not a key this panel holds")
    pending = Artifact.objects.live().filter(encryption=Artifact.Encryption.DRPANEL).exclude(key_id=to_key_id).count()
    with transaction.atomic():
        audit_record(actor=actor, action=AuditAction.KEYS_ROTATION_REQUESTED, request=request,
                     object_type="backups.keyring",
                     object_repr=to_key_id, details={"to_key_id": to_key_id, "artifacts": pending})
        # Not robust (as it always was): a Redis that refuses is an error the admin sees at once.
        queues.enqueue_on_commit("backups.jobs.key_rotation_job", to_key_id, queue=ROTATION_QUEUE,
                                 timeout=24 * 3600, robust=False)
    return to_key_id


def key_rotation_execute(to_key_id: str) -> dict:
    """Re-wrap every live DR Panel artifact, and every off-site package, not already under ``to_key_id``."""
    done, failed = 0, []
    ids = Artifact.objects.live().filter(encryption=Artifact.Encryption.DRPANEL).exclude(
        key_id=to_key_id).values_list("pk", flat=True)
    for pk in list(ids):
        artifact = Artifact.objects.select_related("system").get(pk=pk)
        try:
            artifact_rewrap(actor=None, artifact=artifact, to_key_id=to_key_id)
            done += 1
        except (BackupError, StorageError, formats.ArtifactError) as exc:
            failed.append({"artifact": str(pk), "error": scrub(exc)[:300]})
    # Continuous protection's off-site packages are under the same keys (``backups.offsite``).
    packages = OffsitePackage.objects.filter(status=OffsitePackage.Status.OK).exclude(key_id=to_key_id)
    for package in packages.select_related("location", "system"):
        try:
            package_rewrap(package, to_key_id=to_key_id)
            done += 1
        except (StorageError, formats.ArtifactError, OSError) as exc:
            failed.append({"package": str(package.pk), "error": scrub(exc)[:300]})
    with transaction.atomic():
        audit_record(actor=None, action=AuditAction.KEYS_ROTATION_FINISHED, object_type="backups.keyring",
                     object_repr=to_key_id, outcome="success" if not failed else "failure",
                     details={"to_key_id": to_key_id, "rewrapped": done, "failed": failed[:50]})
    return {"rewrapped": done, "failed": failed}
