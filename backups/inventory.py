"""Inventory sync: compare every location with the catalog, and catalogue what carries a manifest.

Per enabled location it:

- checks each known copy: missing, size mismatch, or present (a copy that was not known to be
  intact is re-read and its SHA-256 compared before it counts as ``ok``);
- catalogues objects whose ``*.manifest.json`` names an artifact the catalog lacks (a catalog
  rebuilt from storage after the panel's own database was lost);
- recognises the old guide's layout — ``<system>-backups/`` with ``*full*`` (or ``*config*``,
  ``*incremental*``) directories stamped ``YYYYMMDD_HHMMSS`` — and imports those files as legacy
  artifacts (openssl-encrypted, gzip'd SQL, custom dumps), identifying the passphrase from the
  keyring's legacy passphrases;
- lists the rest as *extra* objects;

then records per artifact whether an off-site copy with a matching checksum exists ("cloud sync
verified"). A location that cannot be listed is reported, and its copies are left as they were.
"""

from __future__ import annotations

import contextlib
import json
import re
from datetime import UTC, datetime

from django.db import transaction
from django.utils import timezone

from backups import formats
from backups.keys import LEGACY_PREFIX, get_keyring
from backups.models import Artifact, ArtifactCopy, InventoryRun, StorageLocation, System
from backups.storage import MANIFEST_SUFFIX, ObjectInfo, StorageError, manifest_key
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel import queues
from drpanel.permissions import Cap, require_cap
from drpanel.scrub import scrub

LEGACY = re.compile(r"(?:^|/)(?P<system>[a-z0-9][a-z0-9_-]*)-backups/(?P<dir>[^/]+)/(?P<file>[^/]+)$")
STAMP = re.compile(r"(?P<d>\d{8})_(?P<t>\d{6})")
EXTRA_LIMIT = 200
INVENTORY_QUEUE = "backup"


def inventory_request(*, actor, request=None) -> InventoryRun:
    """Queue an inventory sync of every enabled location (operators and up; the cron as system)."""
    if actor is not None:
        require_cap(actor, Cap.START_JOBS, action="inventory.sync")
    with transaction.atomic():
        run = InventoryRun.objects.create(requested_by=actor)
        audit_record(actor=actor, action=AuditAction.INVENTORY_REQUESTED, obj=run, request=request)
        queues.enqueue_on_commit("backups.jobs.inventory_sync_job", str(run.id), queue=INVENTORY_QUEUE,
                                 timeout=6 * 3600)
    return run


def read_manifest(location: StorageLocation, key: str) -> dict | None:
    """The manifest stored next to ``key`` in ``location``, or None when there is none or it is not JSON."""
    try:
        data = json.loads(location.backend().get_bytes(manifest_key(key)))
    except (StorageError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def head_bytes(location: StorageLocation, key: str, n: int = 4096) -> bytes:
    """The first ``n`` bytes of an object (to recognise its format)."""
    with contextlib.closing(location.backend().open_read(key, start=0, length=n)) as handle:
        return handle.read()


def legacy_match(key: str) -> dict | None:
    """The old guide's layout: ``<system>-backups/<kind…YYYYMMDD_HHMMSS…>/<file>``."""
    match = LEGACY.search(key)
    if not match:
        return None
    directory = match.group("dir").lower()
    stamp = STAMP.search(directory) or STAMP.search(match.group("file"))
    kind = next((k for k, words in (("full", ("full",)), ("config", ("config",)),
                                    ("incremental", ("incremental", "incr"))) if any(w in directory for w in words)),
                None)
    if not stamp or not kind:
        return None
    try:
        created = datetime.strptime(stamp.group("d") + stamp.group("t"), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return {"system": match.group("system"), "kind": kind, "created_at": created, "stamp": stamp.group(0)}


def _legacy_format(kind: str, encryption: str, content: str) -> str:
    if kind == "config":
        return Artifact.Format.CONFIG_TAR
    return {"pg_custom": Artifact.Format.PG_CUSTOM, "gzip": Artifact.Format.PG_PLAIN_GZIP,
            "pg_plain": Artifact.Format.PG_PLAIN, "tar": Artifact.Format.PG_DIRECTORY_TAR}.get(
        content, Artifact.Format.UNKNOWN)


def inventory_sync_execute(run_id) -> InventoryRun:
    """Run a queued inventory sync (the job's body); the run row records the summary or the error."""
    started = InventoryRun.objects.filter(pk=run_id, state=InventoryRun.State.QUEUED).update(
        state=InventoryRun.State.RUNNING, started_at=timezone.now())
    run = InventoryRun.objects.get(pk=run_id)
    if not started:
        return run
    summary: dict = {"locations": {}}
    try:
        for location in StorageLocation.objects.filter(enabled=True):
            summary["locations"][location.name] = _sync_location(location)
        summary["cloud_sync_verified"] = _update_offsite_verified()
        totals = {key: sum(len(s.get(key, [])) for s in summary["locations"].values())
                  for key in ("missing", "mismatched", "extra", "catalogued", "imported", "importable")}
        summary["totals"] = totals
        with transaction.atomic():
            InventoryRun.objects.filter(pk=run.pk).update(state=InventoryRun.State.SUCCEEDED,
                                                          finished_at=timezone.now(), summary=summary)
            audit_record(actor=None, action=AuditAction.INVENTORY_FINISHED, obj=run, details={
                "totals": totals, "unreachable": [n for n, s in summary["locations"].items() if s.get("error")]})
    except Exception as exc:
        error = scrub(f"{type(exc).__name__}: {exc}")
        with transaction.atomic():
            InventoryRun.objects.filter(pk=run.pk).update(state=InventoryRun.State.FAILED, finished_at=timezone.now(),
                                                          summary=summary, error=error[:2000])
            audit_record(actor=None, action=AuditAction.INVENTORY_FAILED, obj=run, outcome="failure",
                         details={"error": error[:500]})
        raise
    run.refresh_from_db()
    return run


def _set_copy(copy: ArtifactCopy, status: str, **fields) -> None:
    previous = copy.status
    ArtifactCopy.objects.filter(pk=copy.pk).update(status=status, **fields)
    if previous != status:
        audit_record(actor=None, action=AuditAction.ARTIFACT_COPY_STATUS, obj=copy.artifact,
                     outcome="success" if status == ArtifactCopy.Status.OK else "failure",
                     details={"location": copy.location.name, "from": previous, "to": status})


def _sync_location(location: StorageLocation) -> dict:
    report = {"objects": 0, "missing": [], "mismatched": [], "extra": [], "catalogued": [], "imported": [],
              "importable": [], "error": None}
    backend = location.backend()
    try:
        objects: dict[str, ObjectInfo] = {o.key: o for o in backend.list()}
    except StorageError as exc:
        report["error"] = scrub(exc)
        return report
    report["objects"] = len(objects)
    now = timezone.now()
    copies = {c.key: c for c in ArtifactCopy.objects.filter(location=location).exclude(
        status=ArtifactCopy.Status.DELETED).select_related("artifact", "location")}
    for key, copy in copies.items():
        if copy.artifact.status == Artifact.Status.WRITING:
            continue  # a backup is still writing it; the next sync looks again
        found = objects.get(key)
        artifact = copy.artifact
        with transaction.atomic():
            if found is None:
                _set_copy(copy, ArtifactCopy.Status.MISSING)
                report["missing"].append(key)
            elif artifact.size is not None and found.size != artifact.size:
                _set_copy(copy, ArtifactCopy.Status.SIZE_MISMATCH, size=found.size, last_seen_at=now)
                report["mismatched"].append(key)
            elif copy.status == ArtifactCopy.Status.OK and copy.sha256_seen == artifact.sha256:
                ArtifactCopy.objects.filter(pk=copy.pk).update(last_seen_at=now, size=found.size)
            else:
                size, sha = backend.sha256(key)
                ok = not artifact.sha256 or sha == artifact.sha256
                _set_copy(copy, ArtifactCopy.Status.OK if ok else ArtifactCopy.Status.CHECKSUM_MISMATCH,
                          size=size, sha256_seen=sha, checked_at=now, last_seen_at=now)
                if not ok:
                    report["mismatched"].append(key)
    handled = set(copies)
    for key in sorted(objects):
        if not key.endswith(MANIFEST_SUFFIX):
            continue
        artifact_key_ = key[: -len(MANIFEST_SUFFIX)]
        handled.add(key)
        if artifact_key_ in copies or artifact_key_ not in objects:
            continue
        handled.add(artifact_key_)
        outcome = _catalogue_from_manifest(location, artifact_key_, objects[artifact_key_])
        report["catalogued" if outcome.startswith("catalogued") else "importable"].append(f"{artifact_key_}: {outcome}")
    for key in sorted(objects):
        if key in handled:
            continue
        legacy = legacy_match(key)
        if legacy is None:
            if len(report["extra"]) < EXTRA_LIMIT:
                report["extra"].append(key)
            continue
        outcome = _import_legacy(location, key, objects[key], legacy)
        report["imported" if outcome.startswith("imported") else "importable"].append(f"{key}: {outcome}")
    _refresh_statuses(location)
    return report


def _catalogue_from_manifest(location: StorageLocation, key: str, info: ObjectInfo) -> str:
    manifest = read_manifest(location, key)
    if not manifest or "artifact_id" not in manifest:
        return "manifest unreadable"
    system = System.objects.filter(name=(manifest.get("system") or {}).get("name", "")).first()
    artifact = Artifact.objects.filter(pk=manifest["artifact_id"]).first()
    if artifact is None and system is None:
        return f"no system named {(manifest.get('system') or {}).get('name')!r} in the catalog"
    size, sha = location.backend().sha256(key)
    now = timezone.now()
    with transaction.atomic():
        if artifact is None:
            created = manifest.get("created_at")
            artifact = Artifact.objects.create(
                id=manifest["artifact_id"], system=system, kind=manifest.get("kind", "full"),
                format=manifest.get("format", Artifact.Format.UNKNOWN),
                encryption=(manifest.get("encryption") or {}).get("scheme", Artifact.Encryption.DRPANEL),
                status=Artifact.Status.AVAILABLE, source=Artifact.Source.SYNC,
                created_at=datetime.fromisoformat(created) if created else info.modified or now,
                size=manifest.get("size"), sha256=manifest.get("sha256", ""),
                plaintext_size=manifest.get("plaintext_size"), plaintext_sha256=manifest.get("plaintext_sha256", ""),
                key_id=(manifest.get("encryption") or {}).get("key_id", ""), storage_key=key, manifest=manifest)
            audit_record(actor=None, action=AuditAction.ARTIFACT_CATALOGUED, obj=artifact,
                         details={"location": location.name, "from": "manifest", "key": key})
        ok = sha == artifact.sha256
        ArtifactCopy.objects.update_or_create(artifact=artifact, location=location, defaults={
            "key": key, "size": size, "sha256_seen": sha, "checked_at": now, "last_seen_at": now,
            "status": ArtifactCopy.Status.OK if ok else ArtifactCopy.Status.CHECKSUM_MISMATCH})
    return "catalogued" + ("" if ok else " (checksum differs from its manifest)")


def _import_legacy(location: StorageLocation, key: str, info: ObjectInfo, legacy: dict) -> str:
    system = System.objects.filter(name=legacy["system"]).first()
    if system is None:
        return f"importable: no system named {legacy['system']!r} in the catalog"
    first = head_bytes(location, key)
    encryption, content = formats.sniff(first)
    key_id = ""
    if encryption == formats.ENCRYPTION_OPENSSL:
        content = "unknown"
        for passphrase_id, passphrase in get_keyring().legacy_passphrases.items():
            probed = formats.openssl_probe(first, passphrase)
            if probed:
                key_id, content = LEGACY_PREFIX + passphrase_id, probed
                break
    elif encryption == formats.ENCRYPTION_DRPANEL:
        return "importable: a DR Panel artifact without its manifest (copy the manifest next to it)"
    size, sha = location.backend().sha256(key)
    now = timezone.now()
    manifest = {"imported": {"layout": "legacy guide", "location": location.name, "key": key,
                             "stamp": legacy["stamp"], "content": content,
                             "passphrase": key_id or ("none needed" if encryption == formats.ENCRYPTION_NONE
                                                      else "no legacy passphrase in the keyring fits")},
                "size": size, "sha256": sha}
    with transaction.atomic():
        artifact = Artifact.objects.create(
            system=system, kind=legacy["kind"], format=_legacy_format(legacy["kind"], encryption, content),
            encryption=encryption, status=Artifact.Status.AVAILABLE, source=Artifact.Source.LEGACY,
            created_at=legacy["created_at"], size=size, sha256=sha, key_id=key_id, storage_key=key, manifest=manifest)
        ArtifactCopy.objects.create(artifact=artifact, location=location, key=key, status=ArtifactCopy.Status.OK,
                                    size=size, sha256_seen=sha, checked_at=now, last_seen_at=now)
        audit_record(actor=None, action=AuditAction.ARTIFACT_CATALOGUED, obj=artifact,
                     details={"location": location.name, "from": "legacy layout", "key": key, "key_id": key_id})
    return "imported" + ("" if key_id or encryption == formats.ENCRYPTION_NONE else " (passphrase unknown)")


def _refresh_statuses(location: StorageLocation) -> None:
    """An artifact none of whose copies is there is missing; one that reappeared is available again."""
    touched = Artifact.objects.filter(copies__location=location, status__in=[Artifact.Status.AVAILABLE,
                                                                             Artifact.Status.MISSING]).distinct()
    for artifact in touched:
        present = artifact.copies.filter(status=ArtifactCopy.Status.OK).exists()
        target = Artifact.Status.AVAILABLE if present else Artifact.Status.MISSING
        if artifact.status != target:
            with transaction.atomic():
                changed = Artifact.objects.filter(pk=artifact.pk, status=artifact.status).update(status=target)
                if changed:
                    audit_record(actor=None, action=AuditAction.ARTIFACT_STATUS, obj=artifact, outcome=(
                        "success" if present else "failure"), details={"from": artifact.status, "to": target})


def _update_offsite_verified() -> int:
    """Cloud sync verified = some off-site copy's recomputed SHA-256 matches the artifact."""
    verified = Artifact.objects.live().filter(copies__location__role=StorageLocation.Role.OFFSITE,
                                              copies__status=ArtifactCopy.Status.OK).distinct()
    Artifact.objects.live().filter(offsite_verified_at__isnull=False).exclude(pk__in=verified).update(
        offsite_verified_at=None)
    verified.filter(offsite_verified_at__isnull=True).update(offsite_verified_at=timezone.now())
    return verified.count()
