"""Continuous protection off-site: base backups and archived WAL copied encrypted to every off-site location.

Why the panel's artifact format and not ``barman-cloud-*``: those tools encrypt on S3 only
server-side (``--encryption AES256|aws:kms``), and Barman's own ``encryption = gpg`` covers the
Barman home, not the cloud WAL archive, with a second set of keys. Here a base backup (its
Barman directory, tarred) and each batch of consecutive archived WAL segments (tarred) are
encrypted as they stream (``backups.formats``, the keyring of every other artifact), written to
each enabled off-site location, and re-read there (SHA-256) before they count as off-site.

An off-site run (``OffsiteRun``) is asked for when a base backup is catalogued and by the
minute tick when archived WAL is not off-site yet; it first looks for its location's packages
(one missing there is marked ``missing`` and audited with its range), then writes what is due.
Segments covered by no ``ok`` package are written again while Barman still holds them, so a
lost batch heals itself if it can; ``wal_coverage`` names the first segment a location lacks.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import re
import tarfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backups import barman, formats
from backups.keys import get_keyring
from backups.models import Artifact, OffsitePackage, OffsiteRun, StorageLocation, System
from backups.offsite_catalog import describe, offsite_check, package_key, segments_covered
from backups.offsite_list import offsite_list_write
from backups.offsite_retention import offsite_retention, retention_plan
from backups.storage import StorageError
from backups.wal_facts import wal_facts
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel import runs
from drpanel.scrub import scrub

log = logging.getLogger(__name__)

# Segments per WAL package: 64 × 16 MiB = 1 GiB of plaintext at most.
WAL_BATCH_SEGMENTS = 64
RETRY_AFTER_FAILURE = 600
ARCHIVED = re.compile(r"^[0-9A-F]{24}$")
HISTORY = re.compile(r"^([0-9A-F]{8})\.history$")


class OffsiteError(Exception):
    """Continuous protection cannot be copied off-site (no location, a file Barman removed meanwhile...)."""


def offsite_locations() -> list[StorageLocation]:
    return list(StorageLocation.objects.filter(enabled=True, role=StorageLocation.Role.OFFSITE))


# --- runs ------------------------------------------------------------------------------------------


class OffsiteRuns(runs.RunKind):
    """Off-site runs in the run runtime, settled by ``reconcile_runs`` from the continuous tick."""

    name = "offsite"
    model = OffsiteRun
    queue = "backup"
    job = "backups.jobs.offsite_run_job"
    timeout = 12 * 3600
    reconciled = True

    def pool_for(self, run_id) -> str:
        """Where the Barman home is: the system's pool."""
        return OffsiteRun.objects.filter(pk=run_id).values_list("system__worker_pool", flat=True).first() or ""

    def fail(self, run_id, reason: str, *, expected) -> bool:
        expected = [expected] if isinstance(expected, str) else list(expected)
        with transaction.atomic():
            # Conditional on the state seen: a run that finished meanwhile is left alone.
            changed = OffsiteRun.objects.filter(pk=run_id, state__in=expected).update(
                state=OffsiteRun.State.FAILED, finished_at=timezone.now(), error=reason[:4000], needs_cleanup=True)
            if not changed:
                return False
            run = OffsiteRun.objects.select_related("system").get(pk=run_id)
            audit_record(actor=None, action=AuditAction.OFFSITE_FAILED, obj=run.system, outcome="failure",
                         details={"run": str(run.pk), "error": reason[:500]})
        self.tidy(run)
        return True

    def tidy(self, run) -> None:
        """Packages the dead run was writing are failed, and what they left in their location discarded."""
        for package in OffsitePackage.objects.filter(run=run, status=OffsitePackage.Status.WRITING):
            _discard(package, "its run ended before it was written")
        OffsiteRun.objects.filter(pk=run.pk).update(needs_cleanup=False)

    def record_requeue(self, run, details: dict) -> None:
        audit_record(actor=None, action=AuditAction.OFFSITE_REQUEUED, obj=run.system, details=details)


OFFSITE_RUNS = runs.register(OffsiteRuns())


def offsite_request(system: System, *, reason: str) -> OffsiteRun | None:
    """Queue an off-site run of ``system`` (as the system); the one queued or running is returned instead.

    None when no off-site location is enabled (nothing to copy to).
    """
    if not offsite_locations():
        return None
    with transaction.atomic():
        # Lock the system row: the tick and a finished base backup serialise here.
        System.objects.select_for_update().get(pk=system.pk)
        active = OffsiteRun.objects.filter(system=system, state__in=[OffsiteRun.State.QUEUED,
                                                                    OffsiteRun.State.RUNNING]).first()
        if active is not None:
            return active
        run = OffsiteRun.objects.create(system=system, reason=reason[:200])
        audit_record(actor=None, action=AuditAction.OFFSITE_REQUESTED, obj=system,
                     details={"run": str(run.pk), "reason": reason})
        OFFSITE_RUNS.enqueue_on_commit(run.pk)
    return run


def offsite_tick(system: System) -> OffsiteRun | None:
    """Every minute (continuous tick): settle dead off-site runs, and ask for one when something is due.

    After a failed run the tick waits ``RETRY_AFTER_FAILURE`` seconds (a location that is down is not
    asked every minute); a base backup's request does not wait.
    """
    runs.reconcile_runs(run_kinds=[OFFSITE_RUNS])
    last = OffsiteRun.objects.filter(system=system).first()
    if (last is not None and last.state == OffsiteRun.State.FAILED and last.finished_at
            and (timezone.now() - last.finished_at).total_seconds() < RETRY_AFTER_FAILURE):
        return None
    for location in offsite_locations():
        if pending_bases(system, location) or pending_wal(system, location):
            return offsite_request(system, reason="archived WAL or a base backup is not off-site yet")
        if retention_plan(system, location).packages:
            return offsite_request(system, reason="packages left the recovery window")
    return None


def offsite_run_execute(run_id, *, batch_segments: int = WAL_BATCH_SEGMENTS) -> OffsiteRun:
    """Do a queued off-site run (the job's body). Never raises for a copy failure: the run records it."""
    with transaction.atomic():
        # Conditional transition: a run is executed once, even if its job is delivered twice.
        started = OffsiteRun.objects.filter(pk=run_id, state=OffsiteRun.State.QUEUED).update(
            state=OffsiteRun.State.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now(),
            progress_at=timezone.now(), worker_host=runs.worker_host())
        run = OffsiteRun.objects.select_related("system").get(pk=run_id)
        if not started:
            return run
        audit_record(actor=None, action=AuditAction.OFFSITE_STARTED, obj=run.system,
                     details={"run": str(run.pk), "worker_host": run.worker_host})
    steps = runs.StepLog(run)
    summary: dict = {"written": [], "failed": [], "missing": []}
    try:
        with runs.Heartbeat(run):
            _copy_due(run, steps, summary, batch_segments)
        error = "; ".join(summary["failed"])[:4000]
    except Exception as exc:  # the run records every failure; the job itself ends normally
        error = scrub(str(exc) or type(exc).__name__)
        if not isinstance(exc, OffsiteError | StorageError | barman.BarmanError | formats.ArtifactError | OSError):
            log.exception("off-site run %s failed", run.pk)
        steps.fail_open(error)
    # A package left "writing" would count as off-site for ever: whatever this run did not finish is failed.
    OFFSITE_RUNS.tidy(run)
    state = OffsiteRun.State.FAILED if error else OffsiteRun.State.SUCCEEDED
    with transaction.atomic():
        OffsiteRun.objects.filter(pk=run.pk).update(state=state, finished_at=timezone.now(), error=error,
                                                    summary=summary, percent=100 if not error else run.percent)
        audit_record(actor=None, action=AuditAction.OFFSITE_FAILED if error else AuditAction.OFFSITE_SUCCEEDED,
                     obj=run.system, outcome="failure" if error else "success",
                     details={"run": str(run.pk), "written": summary["written"][:50],
                              "failed": summary["failed"][:50], "missing": summary["missing"][:50],
                              "removed": summary.get("removed", [])[:50],
                              "error": error[:500]})
    run.refresh_from_db()
    return run


def _copy_due(run: OffsiteRun, steps: runs.StepLog, summary: dict, batch_segments: int) -> None:
    system = run.system
    locations = offsite_locations()
    if not locations:
        raise OffsiteError("no enabled off-site location to copy to")
    step = steps.start("archive what Barman received")
    try:
        # Complete segments still in Barman's streaming directory move to its archive (wals/), where they are read.
        barman.run("archive-wal", barman.server_name(system))
        steps.finish(step)
    except barman.BarmanError as exc:  # the tick archives too; what is archived already is copied anyway
        steps.finish(step, state="skipped", detail=scrub(exc))
    plan = []
    for location in locations:
        step = steps.start(f"look for the packages in {location.name}")
        lost = offsite_check(system, location)
        summary["missing"] += [f"{p.label} @ {location.name}" for p in lost]
        steps.finish(step, detail=f"{len(lost)} missing there" if lost else "every package is there")
        plan += [(location, "base", base) for base in pending_bases(system, location)]
        plan += [(location, "wal", batch) for batch in pending_wal(system, location, batch_segments)]
    expected = sum(_plan_size(system, kind, item) for _, kind, item in plan) or None
    OffsiteRun.objects.filter(pk=run.pk).update(bytes_expected=expected)
    progress = runs.ByteProgress(run, start=0, span=100, expected=expected)
    for location, kind, item in plan:
        done_before = progress.bytes
        if kind == "base":
            step = steps.start(f"base backup {item.manifest.get('backup_id')} → {location.name}")
            package = write_base(system, location, item, run=run, progress=lambda n, d=done_before: progress(d + n))
        else:
            step = steps.start(f"WAL {item.first}–{item.last} → {location.name}")
            package = write_wal(system, location, item, run=run, progress=lambda n, d=done_before: progress(d + n))
        if package.status == OffsitePackage.Status.OK:
            summary["written"].append(f"{package.label} @ {location.name}")
            steps.finish(step, bytes=package.size, detail=f"{package.plaintext_size} bytes encrypted, re-read from "
                                                          f"{location.name}: SHA-256 matches")
        else:
            summary["failed"].append(f"{package.label} @ {location.name}: {package.error}")
            steps.finish(step, state="failed", detail=package.error)
    progress.flush()
    for location in locations:
        step = steps.start(f"retention in {location.name}")
        removed = offsite_retention(system, location)
        summary.setdefault("removed", []).extend(f"{p.label} @ {location.name}" for p in removed)
        steps.finish(step, detail=f"{len(removed)} packages outside the {system.recovery_window_days}-day recovery "
                                  "window removed" if removed else "every package is needed for the recovery window")
        step = steps.start(f"package list in {location.name}")
        listed = offsite_list_write(system, location)
        steps.finish(step, detail=f"{listed} packages listed (encrypted) beside them")


def _plan_size(system: System, kind: str, item) -> int:
    if kind == "wal":
        return sum(_segment_path(system, path, name).stat().st_size for path, name in item.members)
    return int((item.manifest.get("base_backup_information") or {}).get("backup_size_bytes") or 0)


# --- what is due -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WalBatch:
    """Consecutive archived segments of one timeline, to be written as one package."""

    timeline: int
    first: str
    last: str
    members: list[tuple[Path, str]]


def archived_segments(system: System) -> dict[str, Path]:
    """The complete WAL segments Barman holds for the system, by name: archived (``wals/``), and the last complete
    one received, which Barman leaves in ``streaming/`` until the next one starts (the ``.partial`` is not)."""
    base = barman.home() / system.name
    found = {path.name: path for path in (base / "streaming").glob("*") if ARCHIVED.match(path.name)}
    for path in (base / "wals").glob("*/*"):
        if ARCHIVED.match(path.name):
            found[path.name] = path
    return found


def _segment_path(system: System, path: Path, name: str) -> Path:
    """Where a segment is now: ``barman archive-wal`` may have moved it from ``streaming/`` meanwhile."""
    return path if path.exists() else barman.home() / system.name / "wals" / name[:16] / name


def _oldest_needed(system: System) -> tuple[int, int] | None:
    """(timeline, position) of the first segment the oldest catalogued base backup needs (None: no base yet)."""
    begins = [(b.manifest.get("base_backup_information") or {}).get("begin_wal") for b in Artifact.objects.filter(
        system=system, kind=Artifact.Kind.BASE, status=Artifact.Status.AVAILABLE)]
    numbers = [barman.segment_number(b) for b in begins if b and ARCHIVED.match(b)]
    return min(numbers) if numbers else None


def pending_wal(system: System, location: StorageLocation, batch_segments: int = WAL_BATCH_SEGMENTS) -> list[WalBatch]:
    """Archived segments no ``ok`` (or ``writing``) package of the location covers, in batches of consecutive ones.

    Only from the first segment of the oldest catalogued base backup on: older WAL recovers nothing.
    """
    oldest = _oldest_needed(system)
    if oldest is None:
        return []
    floor = retention_floor(system, location)
    if floor is not None and floor > oldest:
        oldest = floor  # what off-site retention removed is not written again while Barman still holds it
    covered = segments_covered(system, location, [OffsitePackage.Status.OK, OffsitePackage.Status.WRITING])
    held: dict[int, dict[int, Path]] = {}
    for name, path in archived_segments(system).items():
        timeline, number = barman.segment_number(name)
        if (timeline, number) >= oldest and number not in covered.get(timeline, ()):
            held.setdefault(timeline, {})[number] = path
    batches = []
    for timeline in sorted(held):
        numbers = sorted(held[timeline])
        run: list[int] = []
        for number in numbers + [None]:
            if run and (number is None or number != run[-1] + 1 or len(run) >= batch_segments):
                members = [(held[timeline][n], barman.segment_name(timeline, n)) for n in run]
                batches.append(WalBatch(timeline, members[0][1], members[-1][1], members))
                run = []
            if number is not None:
                run.append(number)
    return batches


def retention_floor(system: System, location: StorageLocation) -> tuple[int, int] | None:
    """Once off-site retention removed a base package there: the first segment of the oldest base kept there."""
    if not OffsitePackage.objects.filter(system=system, location=location, kind=OffsitePackage.Kind.BASE,
                                         status=OffsitePackage.Status.REMOVED).exists():
        return None
    firsts = OffsitePackage.objects.filter(system=system, location=location, kind=OffsitePackage.Kind.BASE,
                                           status=OffsitePackage.Status.OK).values_list("first_segment", flat=True)
    return min((barman.segment_number(f) for f in firsts if f), default=None)


def pending_bases(system: System, location: StorageLocation) -> list[Artifact]:
    """Base backups Barman holds whose package is not in the location (``ok``, being written, or removed by off-site
    retention)."""
    there = set(OffsitePackage.objects.filter(
        system=system, location=location, kind=OffsitePackage.Kind.BASE,
        status__in=[OffsitePackage.Status.OK, OffsitePackage.Status.WRITING, OffsitePackage.Status.REMOVED]
    ).values_list("backup_id", flat=True))
    bases = Artifact.objects.filter(system=system, kind=Artifact.Kind.BASE, status=Artifact.Status.AVAILABLE,
                                    storage_key__startswith="barman:").order_by("created_at")
    return [b for b in bases if b.manifest.get("backup_id") and b.manifest["backup_id"] not in there]


# --- writing one package ---------------------------------------------------------------------------------


def write_base(system: System, location: StorageLocation, base: Artifact, *, run=None, progress=None) -> OffsitePackage:
    """Write a base backup's Barman directory (tarred, encrypted) to ``location``; the package says how it went."""
    backup_id = base.manifest["backup_id"]
    directory = barman.home() / system.name / "base" / backup_id
    info = base.manifest.get("base_backup_information") or {}
    fields = {"kind": OffsitePackage.Kind.BASE, "base_artifact": base, "backup_id": backup_id,
              "timeline": info.get("timeline"), "first_segment": info.get("begin_wal") or "",
              "last_segment": info.get("end_wal") or "", "manifest": base.manifest}

    def add(tar: tarfile.TarFile) -> None:
        if not directory.is_dir():
            raise OffsiteError(f"Barman no longer holds base backup {backup_id} ({directory})")
        tar.add(str(directory), arcname=backup_id, recursive=True, filter=_plain_member)

    return _write_package(system, location, fields, add, name=backup_id, run=run, progress=progress)


def history_files(system: System, timeline: int) -> list[Path]:
    """The timeline history files (``*.history``) Barman holds for timelines up to ``timeline``: a recovery that
    follows a promotion reads them (``recovery_target_timeline = 'latest'``) to find where each timeline forked."""
    base = barman.home() / system.name
    found = {}
    for path in [*(base / "wals").glob("*.history"), *(base / "streaming").glob("*.history")]:
        match = HISTORY.match(path.name)
        if match and 1 < int(match[1], 16) <= timeline:
            found[path.name] = path
    return [found[name] for name in sorted(found)]


def write_wal(system: System, location: StorageLocation, batch: WalBatch, *, run=None, progress=None) -> OffsitePackage:
    """Write a batch of WAL segments (tarred, encrypted) to ``location``; the package says how it went.

    The timeline history files up to the batch's timeline go with it (a few bytes each), and its manifest
    records what a request needs to know before queueing (``wal_facts``): the last commit in the batch, the
    restore points it holds, and when its last segment was received."""
    paths = [_segment_path(system, path, name) for path, name in batch.members]
    histories = history_files(system, batch.timeline)
    fields = {"kind": OffsitePackage.Kind.WAL, "timeline": batch.timeline, "first_segment": batch.first,
              "last_segment": batch.last, "segments": len(batch.members),
              "manifest": {"segments": [name for _, name in batch.members],
                           "history": [path.name for path in histories], **wal_facts(paths)}}

    def add(tar: tarfile.TarFile) -> None:
        for path, (_, name) in zip(paths, batch.members, strict=True):
            tar.add(str(_segment_path(system, path, name)), arcname=name, recursive=False, filter=_plain_member)
        for path in histories:
            tar.add(str(path), arcname=path.name, recursive=False, filter=_plain_member)

    return _write_package(system, location, fields, add, name=f"{batch.first}-{batch.last}", run=run,
                          progress=progress)


def _plain_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_package(system, location, fields: dict, add, *, name: str, run, progress) -> OffsitePackage:
    package_id = uuid.uuid4()
    kind = fields["kind"]
    package = OffsitePackage.objects.create(id=package_id, system=system, location=location, run=run,
                                           key=package_key(system, package_id, kind=kind, name=name), **fields)
    backend = location.backend()
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            # gzip level 1: WAL closed early by a switch is mostly zeros, and the copy crosses a WAN.
            with os.fdopen(write_fd, "wb") as pipe, gzip.GzipFile(fileobj=pipe, mode="wb", compresslevel=1,
                                                                  mtime=0) as packed, \
                    tarfile.open(fileobj=packed, mode="w|") as tar:
                add(tar)
        except BaseException as exc:  # reported by finish(); the reader sees the pipe close
            failure.append(exc)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        with os.fdopen(read_fd, "rb") as src, backend.open_write(package.key) as out:
            result = formats.encrypt_stream(src, out, artifact_id=package_id, keyring=get_keyring(),
                                            chunk_size=settings.BACKUP_CHUNK_SIZE, progress=progress)
            producer.join()
            if failure:
                raise OffsiteError(f"reading {package.label} failed: {failure[0]}")
        size, sha = backend.sha256(package.key)
    except (OffsiteError, StorageError, OSError, formats.ArtifactError) as exc:
        producer.join(10)
        _discard(package, scrub(exc))
        package.refresh_from_db()
        return package
    ok = size == result.stored_size and sha == result.stored_sha256
    now = timezone.now()
    with transaction.atomic():
        OffsitePackage.objects.filter(pk=package.pk).update(
            status=OffsitePackage.Status.OK if ok else OffsitePackage.Status.FAILED, size=size, sha256=sha,
            plaintext_size=result.plaintext_size, plaintext_sha256=result.plaintext_sha256, key_id=result.key_id,
            checked_at=now, error="" if ok else f"re-read from {location.name}: SHA-256 {sha} differs")
        package.refresh_from_db()
        audit_record(actor=None, action=AuditAction.OFFSITE_PACKAGE_COPIED, obj=system,
                     outcome="success" if ok else "failure", details=describe(package))
    return package


def _discard(package: OffsitePackage, error: str) -> None:
    """A package that could not be written is failed (audited), and what it left in its location removed."""
    with transaction.atomic():
        OffsitePackage.objects.filter(pk=package.pk).update(status=OffsitePackage.Status.FAILED, error=error[:2000])
        package.refresh_from_db()
        audit_record(actor=None, action=AuditAction.OFFSITE_PACKAGE_COPIED, obj=package.system, outcome="failure",
                     details={**describe(package), "error": error[:500]})
    with contextlib.suppress(StorageError):
        backend = package.location.backend()
        backend.discard_partial(package.key)
        backend.delete(package.key)
