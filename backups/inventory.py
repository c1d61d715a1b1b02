"""Inventory sync: compare every location with the catalog, and catalogue what carries a manifest.

Per enabled location it:

- checks each known copy: missing, size mismatch, or present (a copy that was not known to be
  intact is re-read and its SHA-256 compared before it counts as ``ok``);
- catalogues objects whose ``*.manifest.json`` names an artifact the catalog lacks (a catalog
  rebuilt from storage after the panel's own database was lost); a manifest naming an artifact
  the catalog knows changes nothing (it is ignored and audited);
- recognises the old guide's layout — ``<system>-backups/`` with ``*full*`` (or ``*config*``,
  ``*incremental*``) directories stamped ``YYYYMMDD_HHMMSS`` — and imports those files as legacy
  artifacts (openssl-encrypted, gzip'd SQL, custom dumps), identifying the passphrase from the
  keyring's legacy passphrases;
- lists the rest as *extra* objects;

then records per artifact whether an off-site copy with a matching checksum exists ("cloud sync
verified"). A location that cannot be listed is reported, and its copies are left as they were.

Storage is untrusted: everything catalogued or imported here arrives *quarantined*
(``Artifact.Status.QUARANTINED``) until an admin adopts it and it passes a verification up to
the structure level (``restores.adoption``).
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from datetime import UTC, datetime

from django.db import transaction
from django.utils import timezone

from backups import formats
from backups.keys import LEGACY_PREFIX, get_keyring
from backups.models import Artifact, ArtifactCopy, InventoryRun, OffsitePackage, StorageLocation, System
from backups.offsite_list import list_key
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
FOUND_IN_STORAGE = ("found in storage, not written by this panel: an admin must adopt it, and it must pass "
                    "a verification up to the structure level, before it can be restored")


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
                  for key in ("missing", "mismatched", "extra", "catalogued", "imported", "importable", "ignored")}
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
              "importable": [], "ignored": [], "error": None}
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
    # Continuous protection's off-site packages have no manifest: the catalog knows them (``backups.offsite``),
    # and each system's package list (``backups.offsite_list``).
    handled = set(copies) | set(OffsitePackage.objects.filter(location=location).values_list("key", flat=True))
    handled |= {list_key(system_id) for system_id in System.objects.values_list("pk", flat=True)}
    for key in sorted(objects):
        if not key.endswith(MANIFEST_SUFFIX):
            continue
        artifact_key_ = key[: -len(MANIFEST_SUFFIX)]
        handled.add(key)
        if artifact_key_ in copies or artifact_key_ not in objects:
            continue
        handled.add(artifact_key_)
        outcome = _catalogue_from_manifest(location, artifact_key_, objects[artifact_key_])
        bucket = next((b for b in ("catalogued", "ignored") if outcome.startswith(b)), "importable")
        report[bucket].append(f"{artifact_key_}: {outcome}")
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


def _choice(value, choices, default):
    return value if isinstance(value, str) and value in choices.values else default


def _manifest_artifact_id(manifest: dict) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(manifest.get("artifact_id")))
    except ValueError:
        return None


def _manifest_created_at(manifest: dict, fallback: datetime) -> datetime:
    try:
        created = datetime.fromisoformat(str(manifest["created_at"]))
    except (KeyError, ValueError):
        return fallback
    return created if created.tzinfo else created.replace(tzinfo=UTC)


def _manifest_int(manifest: dict, field: str) -> int | None:
    value = manifest.get(field)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _manifest_text(manifest: dict, field: str, limit: int = 64) -> str:
    value = manifest.get(field)
    return value[:limit] if isinstance(value, str) else ""


def _catalogue_from_manifest(location: StorageLocation, key: str, info: ObjectInfo) -> str:
    """Catalogue an object from the manifest found next to it: quarantined, whatever the manifest says.

    The manifest is data: its fields fill a new row, never change a known one
    (``_manifest_for_known_artifact``).
    """
    manifest = read_manifest(location, key)
    artifact_id = _manifest_artifact_id(manifest) if manifest else None
    if artifact_id is None:
        return "manifest unreadable"
    artifact = Artifact.objects.filter(pk=artifact_id).first()
    if artifact is not None:
        return _manifest_for_known_artifact(location, key, manifest, artifact)
    system_name = (manifest.get("system") or {}).get("name", "") if isinstance(manifest.get("system"), dict) else ""
    system = System.objects.filter(name=system_name).first()
    if system is None:
        return f"no system named {system_name!r} in the catalog"
    size, sha = location.backend().sha256(key)
    now = timezone.now()
    encryption = manifest.get("encryption") if isinstance(manifest.get("encryption"), dict) else {}
    with transaction.atomic():
        artifact = Artifact.objects.create(
            id=artifact_id, system=system, kind=_choice(manifest.get("kind"), Artifact.Kind, Artifact.Kind.FULL),
            format=_choice(manifest.get("format"), Artifact.Format, Artifact.Format.UNKNOWN),
            encryption=_choice(encryption.get("scheme"), Artifact.Encryption, Artifact.Encryption.DRPANEL),
            status=Artifact.Status.QUARANTINED, quarantine_reason=FOUND_IN_STORAGE, source=Artifact.Source.SYNC,
            created_at=_manifest_created_at(manifest, info.modified or now),
            size=_manifest_int(manifest, "size"), sha256=_manifest_text(manifest, "sha256"),
            plaintext_size=_manifest_int(manifest, "plaintext_size"),
            plaintext_sha256=_manifest_text(manifest, "plaintext_sha256"),
            key_id=_manifest_text(encryption, "key_id", 300), storage_key=key, manifest=manifest)
        audit_record(actor=None, action=AuditAction.ARTIFACT_CATALOGUED, obj=artifact,
                     details={"location": location.name, "from": "manifest", "key": key,
                              "status": Artifact.Status.QUARANTINED})
        ok = sha == artifact.sha256
        ArtifactCopy.objects.create(artifact=artifact, location=location, key=key, size=size, sha256_seen=sha,
                                    checked_at=now, last_seen_at=now,
                                    status=ArtifactCopy.Status.OK if ok else ArtifactCopy.Status.CHECKSUM_MISMATCH)
    return "catalogued, quarantined" + ("" if ok else " (checksum differs from its manifest)")


def _manifest_for_known_artifact(location: StorageLocation, key: str, manifest: dict, artifact: Artifact) -> str:
    """A manifest naming an artifact the catalog knows, next to an object the catalog does not.

    It may only add the copy of an artifact that was itself found in storage (a catalog rebuilt
    from several locations), when its claims and the object's bytes match the row exactly. A
    manifest naming an artifact the panel wrote, or contradicting the row, changes nothing and
    is audited.
    """
    size, sha = location.backend().sha256(key)
    claimed = manifest.get("sha256")
    why = ""
    if artifact.source == Artifact.Source.BACKUP:
        why = "the panel wrote this artifact: a manifest found in storage cannot add to it"
    elif claimed != artifact.sha256 or sha != artifact.sha256:
        why = "its checksum differs from the catalog's"
    elif artifact.copies.filter(location=location).exists():
        why = "the catalog already has a copy of this artifact in this location"
    if not why:
        now = timezone.now()
        ArtifactCopy.objects.create(artifact=artifact, location=location, key=key, size=size, sha256_seen=sha,
                                    checked_at=now, last_seen_at=now, status=ArtifactCopy.Status.OK)
        return "catalogued, another copy of a found artifact"
    with transaction.atomic():
        audit_record(actor=None, action=AuditAction.ARTIFACT_MANIFEST_IGNORED, obj=artifact, outcome="failure",
                     details={"location": location.name, "key": key, "why": why,
                              "claimed_sha256": str(claimed)[:64], "seen_sha256": sha,
                              "catalog_sha256": artifact.sha256})
    return f"ignored: {why}"


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
            encryption=encryption, status=Artifact.Status.QUARANTINED, quarantine_reason=FOUND_IN_STORAGE,
            source=Artifact.Source.LEGACY,
            created_at=legacy["created_at"], size=size, sha256=sha, key_id=key_id, storage_key=key, manifest=manifest)
        ArtifactCopy.objects.create(artifact=artifact, location=location, key=key, status=ArtifactCopy.Status.OK,
                                    size=size, sha256_seen=sha, checked_at=now, last_seen_at=now)
        audit_record(actor=None, action=AuditAction.ARTIFACT_CATALOGUED, obj=artifact,
                     details={"location": location.name, "from": "legacy layout", "key": key, "key_id": key_id,
                              "status": Artifact.Status.QUARANTINED})
    known = key_id or encryption == formats.ENCRYPTION_NONE
    return "imported, quarantined" + ("" if known else " (passphrase unknown)")


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
