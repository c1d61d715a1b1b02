"""The package list beside a system's off-site packages: what a new panel needs to recover without the old database.

After each off-site run, every location gets ``drpanel/continuous/system-<id>/packages.drp``: the
``ok`` packages there (id, kind, key, segments, sizes, SHA-256 of the stored bytes, key id, and
their manifests: Barman's description of a base backup, a WAL batch's facts) as JSON, **encrypted
in the artifact format** with the panel's keyring. The authenticated encryption is its signature:
whoever lacks the master keys can neither read it nor write one that decrypts (its artifact id,
bound into the header, is derived from the system's id), so a list planted in the bucket is
refused, and it holds nothing a reader without keys could use.

``offsite_list_rebuild`` reads it back into the catalog of a panel that lost its database (the
admin re-creates the system and the location, then ``manage.py offsite_recover … --rebuild-list``):
each listed package absent from the catalog becomes an ``ok`` row, checked again (size and
SHA-256) when a recovery fetches it.
"""

from __future__ import annotations

import io
import json
import uuid

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backups import formats
from backups.keys import get_keyring
from backups.models import OffsitePackage, StorageLocation, System
from backups.offsite_catalog import PREFIX_ROOT, prefix
from backups.storage import StorageError
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction

FORMAT = "drpanel-offsite-packages/1"
FIELDS = ("kind", "key", "backup_id", "timeline", "first_segment", "last_segment", "segments", "size", "sha256",
          "plaintext_size", "plaintext_sha256", "key_id", "manifest")


class OffsiteListError(Exception):
    """The package list is absent, unreadable, forged or of another system; the message says which."""


def list_key(system_id: int) -> str:
    return f"{PREFIX_ROOT}system-{int(system_id)}/packages.drp"


def list_id(system_id: int) -> uuid.UUID:
    """The artifact id the list is encrypted under: a list of one system never decrypts as another's."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"drpanel:offsite-packages:system-{int(system_id)}")


def offsite_list_write(system: System, location: StorageLocation) -> int:
    """Write the list of the system's ``ok`` packages in ``location`` there (encrypted); how many it lists."""
    packages = OffsitePackage.objects.filter(system=system, location=location, status=OffsitePackage.Status.OK)
    rows = [{"id": str(p.pk), **{name: getattr(p, name) for name in FIELDS}, "created_at": p.created_at.isoformat()}
            for p in packages.order_by("kind", "timeline", "first_segment", "created_at")]
    body = json.dumps({"format": FORMAT, "system": system.name, "system_id": system.pk, "location": location.name,
                       "written_at": timezone.now().isoformat(), "prefix": prefix(system), "packages": rows},
                      sort_keys=True).encode()
    out = io.BytesIO()
    formats.encrypt_stream(io.BytesIO(body), out, artifact_id=list_id(system.pk), keyring=get_keyring(),
                           chunk_size=settings.BACKUP_CHUNK_SIZE)
    location.backend().put_bytes(list_key(system.pk), out.getvalue())
    return len(rows)


def offsite_list_read(location: StorageLocation, system_id: int) -> dict:
    """The list stored for ``system_id`` in ``location``, authenticated and decrypted."""
    try:
        stored = location.backend().get_bytes(list_key(system_id))
    except StorageError as exc:
        raise OffsiteListError(f"{location.name} holds no package list of system {system_id}: {exc}") from None
    out = io.BytesIO()
    try:
        formats.decrypt_stream(io.BytesIO(stored), out, artifact_id=list_id(system_id), keyring=get_keyring())
    except formats.ArtifactError as exc:
        raise OffsiteListError(f"the package list in {location.name} is refused: {type(exc).__name__}: {exc}"
                               ) from None
    listed = json.loads(out.getvalue())
    if listed.get("format") != FORMAT or listed.get("system_id") != int(system_id):
        raise OffsiteListError(f"the package list in {location.name} is not a list of system {system_id}")
    return listed


def offsite_list_rebuild(system: System, location: StorageLocation, *, actor, listed_system_id: int | None = None
                         ) -> list[OffsitePackage]:
    """Catalog the packages the list in ``location`` names that this panel does not know (as ``ok``, audited).

    ``listed_system_id``: the system's id in the panel that wrote the list (default: this system's).
    """
    listed = offsite_list_read(location, listed_system_id or system.pk)
    known = set(OffsitePackage.objects.filter(location=location).values_list("key", flat=True))
    added = []
    with transaction.atomic():
        for row in listed["packages"]:
            if row["key"] in known:
                continue
            fields = {name: row[name] for name in FIELDS}
            if fields["kind"] not in OffsitePackage.Kind.values or not str(fields["key"]).startswith(
                    listed["prefix"]):
                raise OffsiteListError(f"the package list in {location.name} names an unexpected package "
                                       f"{row['id']}")
            added.append(OffsitePackage.objects.create(
                id=uuid.UUID(row["id"]), system=system, location=location, status=OffsitePackage.Status.OK,
                created_at=row["created_at"], **fields))
        audit_record(actor=actor, action=AuditAction.OFFSITE_LIST_REBUILT, obj=system,
                     details={"location": location.name, "listed": len(listed["packages"]), "added": len(added),
                              "written_at": listed["written_at"], "listed_system_id": listed["system_id"]})
    return added
