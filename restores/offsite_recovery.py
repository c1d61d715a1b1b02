"""Point-in-time recovery from an off-site location alone (the guide's data-center outage).

``offsite_materialize`` picks the base backup package that precedes the point and every WAL
package after its first segment, then **fetches, checks (size and SHA-256 of the stored bytes)
and decrypts each one into a staging directory before anything else is written**: a flipped
bit, a wrong key, a truncated object, or a WAL batch the location lacks refuses the recovery
(audited as ``offsite.refused``) and the data directory it was to fill is never created. Only
then is the base backup unpacked (tar members checked: no absolute paths, no ``..``, no links
out) into that directory, the segments into a WAL directory beside it, and PostgreSQL's own
recovery configured (``recovery.signal``, ``restore_command`` copying from that directory, the
target). ``recovered_from_offsite`` does this in a scratch directory and starts the copy like
``restores.pitr.recovered`` — same ``Recovered``, same private socket, stopped and removed after.

Barman's home is not needed: what Barman would have done (``barman recover``) is what
PostgreSQL does itself from a plain base backup and its WAL.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from django.db import transaction

from backups import barman, formats
from backups.keys import get_keyring
from backups.models import OffsitePackage, StorageLocation
from backups.offsite import ARCHIVED, HISTORY
from backups.storage import StorageError
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from restores.pitr import Recovered, RecoveryPoint, scratch_root, started


class OffsiteRecoveryError(barman.BarmanError):
    """A recovery from an off-site location was refused; the message names the package and why."""


def _ended(package: OffsitePackage) -> datetime | None:
    ended = (package.manifest.get("base_backup_information") or {}).get("end_time")
    return datetime.fromisoformat(ended) if ended else None


def choose(system, location: StorageLocation, point: RecoveryPoint) -> tuple[OffsitePackage, list[OffsitePackage]]:
    """The base package to recover and the WAL packages it needs, or ``OffsiteRecoveryError`` naming what lacks.

    Every WAL package from the base's first segment to the newest one must be there and ``ok``:
    a gap stops replay short of the point without saying so, so it is refused with the first
    segment missing and the batch that held it. After a promotion the WAL of each later timeline
    follows, from the segment where it forked (its first one; the history files in the packages
    tell PostgreSQL where): the parent timeline must reach that segment.
    """
    bases = [p for p in OffsitePackage.objects.filter(system=system, location=location, kind=OffsitePackage.Kind.BASE,
                                                      status=OffsitePackage.Status.OK) if _ended(p)]
    if point.kind == "time":
        bases = [p for p in bases if _ended(p) <= point.time]
    if not bases:
        raise OffsiteRecoveryError(f"{location.name} holds no base backup of {system.name} that ended before {point}")
    base = max(bases, key=_ended)
    timeline, begin = barman.segment_number(base.first_segment)
    chosen, expected = _chain(system, location, timeline, begin)
    end = barman.segment_number(base.last_segment)[1] if base.last_segment else begin
    if expected <= end:
        raise OffsiteRecoveryError(f"{location.name} lacks WAL segment {barman.segment_name(timeline, expected)} "
                                   f"that base backup {base.backup_id} needs to be consistent")
    later = sorted(set(OffsitePackage.objects.filter(
        system=system, location=location, kind=OffsitePackage.Kind.WAL, timeline__gt=timeline).exclude(
        status=OffsitePackage.Status.REMOVED).values_list("timeline", flat=True)))
    for child in later:
        fork = min(barman.segment_number(first)[1] for first in OffsitePackage.objects.filter(
            system=system, location=location, kind=OffsitePackage.Kind.WAL, timeline=child).exclude(
            status=OffsitePackage.Status.REMOVED).values_list("first_segment", flat=True))
        if fork > expected:
            raise OffsiteRecoveryError(
                f"{location.name} lacks WAL segment {barman.segment_name(timeline, expected)} of {system.name}, "
                f"before timeline {child} forked at {barman.segment_name(child, fork)}")
        more, expected = _chain(system, location, child, fork)
        chosen += more
        timeline = child
    return base, chosen


def _chain(system, location: StorageLocation, timeline: int, begin: int) -> tuple[list[OffsitePackage], int]:
    """The ``ok`` WAL packages of one timeline that continue from segment ``begin``, and the first position after
    them; a package lost in the middle is refused with the segment it held."""
    packages = list(OffsitePackage.objects.filter(system=system, location=location, kind=OffsitePackage.Kind.WAL,
                                                  timeline=timeline).exclude(status=OffsitePackage.Status.REMOVED))
    wal = sorted((p for p in packages if p.status == OffsitePackage.Status.OK
                  and barman.segment_number(p.last_segment)[1] >= begin),
                 key=lambda p: barman.segment_number(p.first_segment)[1])
    expected = begin
    chosen = []
    for package in wal:
        first, last = barman.segment_number(package.first_segment)[1], barman.segment_number(package.last_segment)[1]
        if last < expected:
            continue  # written again after a loss: an earlier package already covers it
        if first > expected:
            lost = next((p for p in packages if p.status != OffsitePackage.Status.OK
                         and barman.segment_number(p.first_segment)[1] <= expected
                         <= barman.segment_number(p.last_segment)[1]), None)
            raise OffsiteRecoveryError(
                f"{location.name} lacks WAL segment {barman.segment_name(timeline, expected)} of {system.name}"
                + (f" (WAL batch {lost.first_segment}–{lost.last_segment} is {lost.status} there)" if lost else ""))
        chosen.append(package)
        expected = last + 1
    return chosen, expected


@dataclass(frozen=True)
class OffsiteReach:
    """How far a location's packages recover a system: the base, the WAL after it, the last commit there (the
    newest moment a time target reaches), the restore points, and when the last segment was received (every
    commit before it is there)."""

    location: StorageLocation
    base: OffsitePackage
    wal: list[OffsitePackage]
    last_commit: datetime | None
    received_until: datetime | None
    restore_points: frozenset[str]
    last_segment: str

    def as_dict(self) -> dict:
        return {"location": self.location.name, "base_backup": self.base.backup_id,
                "last_segment": self.last_segment,
                "last_commit": self.last_commit.isoformat() if self.last_commit else None,
                "received_until": self.received_until.isoformat() if self.received_until else None}


def _moment(value) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def offsite_reach(system, location: StorageLocation, point: RecoveryPoint | None = None) -> OffsiteReach:
    """What ``location`` recovers of ``system`` (from the base that precedes ``point``; default: the newest);
    ``OffsiteRecoveryError`` naming what lacks when it recovers nothing."""
    base, wal = choose(system, location, point or RecoveryPoint.latest())
    commits = [c for c in (_moment(p.manifest.get("last_commit")) for p in wal) if c]
    received = [c for c in (_moment(p.manifest.get("received_until")) for p in wal) if c]
    points = frozenset(name for p in wal for name in p.manifest.get("restore_points") or ())
    return OffsiteReach(location=location, base=base, wal=wal, last_commit=max(commits, default=None),
                        received_until=max(received, default=_ended(base)), restore_points=points,
                        last_segment=wal[-1].last_segment if wal else base.last_segment)


def offsite_point_check(system, location: StorageLocation, point: RecoveryPoint) -> OffsiteReach:
    """Refuse (``OffsiteRecoveryError``, naming what lacks) a point the location's packages cannot recover: no base
    before it, a gap, a moment after the last commit its WAL holds, a restore point it does not hold."""
    reach = offsite_reach(system, location, point)
    if point.kind == "time" and (reach.last_commit is None or point.time >= reach.last_commit):
        newest = f"{reach.last_commit:%Y-%m-%d %H:%M:%S} UTC" if reach.last_commit else "none"
        raise OffsiteRecoveryError(
            f"{point} is not covered by the off-site copy at {location.name}: the last commit in its WAL (up to "
            f"segment {reach.last_segment}) is {newest}; the WAL after it is not off-site yet")
    if point.kind == "name" and point.name not in reach.restore_points:
        raise OffsiteRecoveryError(
            f"{point} is not in the WAL at {location.name} after base backup {reach.base.backup_id} (up to segment "
            f"{reach.last_segment})")
    return reach


def _fetch(package: OffsitePackage, staging: Path) -> Path:
    """Download, check the stored bytes' size and SHA-256, and decrypt (authenticated) into ``staging``."""
    stored = staging / f"{package.pk}.drp"
    digest = hashlib.sha256()
    size = 0
    with contextlib.closing(package.location.backend().open_read(package.key)) as src, open(stored, "wb") as out:
        while data := src.read(1 << 20):
            digest.update(data)
            size += len(data)
            out.write(data)
    if size != package.size or digest.hexdigest() != package.sha256:
        raise formats.ArtifactError(f"checksum mismatch: {size} bytes with SHA-256 {digest.hexdigest()[:16]}…, "
                                    f"the catalog says {package.size} bytes, {package.sha256[:16]}…")
    plain = staging / f"{package.pk}.tar"
    with open(stored, "rb") as src:
        formats.decrypt_to_file(src, plain, artifact_id=package.pk, keyring=get_keyring())
    stored.unlink()
    return plain


def _refuse(system, location, package, reason: str, point, actor=None, context: dict | None = None) -> None:
    with transaction.atomic():
        audit_record(actor=actor, action=AuditAction.OFFSITE_REFUSED, obj=system, outcome="failure",
                     details={"location": location.name, "package": str(package.pk) if package else None,
                              "what": package.label if package else None, "point": str(point),
                              "reason": reason[:500], **(context or {})})


def offsite_materialize(system, location: StorageLocation, point: RecoveryPoint, *, into: Path, work: Path,
                        actor=None, context: dict | None = None) -> dict:
    """Make ``into`` a data directory that recovers to ``point`` from ``location``'s packages alone.

    ``into`` must not exist; it is created only once every package has passed. ``work`` holds
    the staging files and the WAL directory the recovery reads (keep it while the copy runs).
    ``actor``: who asked (an admin through ``manage.py offsite_recover``; None for the panel itself).
    ``context``: added to its audit events (the restore run it serves).
    """
    context = context or {}
    if into.exists() or work.exists():
        raise OffsiteRecoveryError(f"{into if into.exists() else work} already exists: a recovery never writes over "
                                   "a directory")
    try:
        base, wal = choose(system, location, point)
    except OffsiteRecoveryError as exc:
        _refuse(system, location, None, str(exc), point, actor, context)
        raise
    staging = work / "packages"
    staging.mkdir(parents=True)
    began = time.monotonic()
    fetched = {}
    for package in [base, *wal]:
        try:
            fetched[package.pk] = _fetch(package, staging)
        except (formats.ArtifactError, StorageError, OSError) as exc:
            reason = f"{package.label} in {location.name}: {type(exc).__name__}: {exc}"
            _refuse(system, location, package, reason, point, actor, context)
            raise OffsiteRecoveryError(f"refused before anything was written: {reason}") from None
    wal_dir = work / "wal"
    _unpack(fetched[base.pk], work / "base", base_id=base.backup_id)
    data = work / "base" / base.backup_id / "data"
    if not (data / "PG_VERSION").is_file():
        raise OffsiteRecoveryError(f"base backup {base.backup_id} holds no data directory")
    for package in wal:
        _unpack(fetched[package.pk], wal_dir, base_id=None)
    shutil.move(str(data), str(into))
    into.chmod(0o700)
    _configure(into, wal_dir, point)
    facts = {"location": location.name, "base_backup": base.backup_id, "wal_packages": len(wal),
             "first_segment": base.first_segment, "last_segment": wal[-1].last_segment if wal else base.last_segment,
             "fetch_seconds": round(time.monotonic() - began, 3), "point": str(point), **context}
    with transaction.atomic():
        audit_record(actor=actor, action=AuditAction.OFFSITE_FETCHED, obj=system, details=facts)
    return facts


def _unpack(archive: Path, destination: Path, *, base_id: str | None) -> None:
    """Unpack a package's tar with the ``data`` filter (no absolute paths, ``..``, devices or links out)."""
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, mode="r:gz") as tar:
        for member in tar.getmembers():
            top = member.name.split("/", 1)[0]
            if (base_id is None and not (member.isfile() and (ARCHIVED.match(member.name)
                                                               or HISTORY.match(member.name)))) or (
                    base_id is not None and top != base_id):
                raise OffsiteRecoveryError(f"unexpected member {member.name!r} in an off-site package")
        try:
            tar.extractall(destination, filter="data")
        except tarfile.FilterError as exc:
            raise OffsiteRecoveryError(f"refused member of an off-site package: {exc}") from None
    archive.unlink()


def _configure(data: Path, wal_dir: Path, point: RecoveryPoint) -> None:
    """PostgreSQL's own archive recovery: ``recovery.signal`` and the settings, appended to postgresql.auto.conf."""
    lines = [f"restore_command = 'cp \"{wal_dir}/%f\" \"%p\"'"]
    if point.kind == "time":
        lines += [f"recovery_target_time = '{point.time.isoformat()}'", "recovery_target_action = 'promote'"]
    elif point.kind == "name":
        lines += [f"recovery_target_name = '{point.name}'", "recovery_target_action = 'promote'"]
    with open(data / "postgresql.auto.conf", "a") as conf:
        conf.write("\n# Recovery from an off-site copy (DR Panel)\n" + "\n".join(lines) + "\n")
    (data / "recovery.signal").touch()


@contextlib.contextmanager
def recovered_from_offsite(system, point: RecoveryPoint, *, location: StorageLocation, on_replay=None,
                           prefix: str | None = None, context: dict | None = None) -> Iterator[Recovered]:
    """Recover ``system`` at ``point`` from ``location`` alone into a scratch directory, start it, yield it
    (``on_replay``, ``prefix``: as ``restores.pitr.recovered``; ``context``: added to the audit events)."""
    connection, _ = barman.connection_for(system)
    root = scratch_root(system, prefix=prefix)
    try:
        began = time.monotonic()
        offsite_materialize(system, location, point, into=root / "data", work=root / "work", context=context)
        recover_seconds = time.monotonic() - began
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    with started(system, point, root, user_name=connection.user, recover_seconds=recover_seconds,
                 on_replay=on_replay, wal_dir=root / "work" / "wal", prefix=prefix) as ready:
        yield ready


def offsite_sources(system) -> list[dict]:
    """The enabled off-site locations a restore of ``system`` may recover from, each with how far its packages
    reach (``reach``) or why they recover nothing (``error``): what the restore form offers beside Barman's home."""
    sources = []
    for location in StorageLocation.objects.filter(enabled=True, role=StorageLocation.Role.OFFSITE).order_by("name"):
        try:
            sources.append({"location": location, "reach": offsite_reach(system, location), "error": ""})
        except OffsiteRecoveryError as exc:
            sources.append({"location": location, "reach": None, "error": str(exc)})
    return sources


def offsite_coverage(system, now: datetime) -> list[dict]:
    """Per enabled off-site location: the newest point recoverable from it alone (every commit before the last
    segment there was received), its age against the system's RPO target, the last commit a moment can reach,
    or why it recovers nothing. For the system's health and ``/metrics``."""
    target = system.rpo_target_minutes * 60
    rows = []
    for source in offsite_sources(system):
        reach = source["reach"]
        newest = reach.received_until if reach else None
        age = max(0, round((now - newest).total_seconds())) if newest else None
        rows.append({"location": source["location"].name, "newest_point": newest.isoformat() if newest else None,
                     "last_commit": reach.last_commit.isoformat() if reach and reach.last_commit else None,
                     "last_segment": reach.last_segment if reach else None, "age_seconds": age,
                     "rpo_target_seconds": target, "within_target": age is not None and age <= target,
                     "error": source["error"]})
    return rows
