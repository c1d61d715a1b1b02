"""Services of the backup catalog: every change goes through one of these (audited, transactional).

Views, API endpoints, jobs and management commands call them alike. Long work (dumps,
copies, rotations) runs in jobs; the services that start it create the run row first and
enqueue on commit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import tarfile
import threading
import time
import uuid
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backups import formats, hooks, pgtools
from backups.keys import get_keyring
from backups.models import Artifact, ArtifactCopy, BackupRun, InventoryRun, StorageLocation, System
from backups.storage import StorageError, artifact_key, manifest_key
from compliance.audit import audit_record
from drpanel import endpoints, secrets
from drpanel.approvals import approval_approve, approval_consume, approval_request, open_approvals
from drpanel.models import Approval
from drpanel.permissions import Cap, Denied, Role, require_cap
from drpanel.scrub import scrub

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
DELETE_APPROVAL = "artifact.delete"


class BackupError(Exception):
    """A backup, copy or catalog change could not be done; the message is for the operator."""


# --- systems and locations (Admin) -----------------------------------------------------------

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


# --- backup runs ----------------------------------------------------------------------------

def backup_request(*, actor, system: System, kind: str, trigger: str = BackupRun.Trigger.MANUAL,
                   request=None) -> BackupRun:
    """Queue a backup of ``system`` (kind full or config). A second request while one is queued or
    running returns that run instead of starting another. ``actor=None`` is the scheduler."""
    if actor is not None:
        require_cap(actor, Cap.START_JOBS, action=f"backup.{kind}", obj=system)
    if kind == Artifact.Kind.INCREMENTAL:
        raise BackupError("incremental artifacts are produced by an external tool (WAL archiving) and catalogued "
                          "by the inventory sync; the panel does not create them yet")
    if kind not in (Artifact.Kind.FULL, Artifact.Kind.CONFIG):
        raise BackupError(f"unknown backup kind {kind!r}")
    if kind == Artifact.Kind.CONFIG and not system.config_paths:
        raise BackupError(f"{system.name} has no config paths to back up")
    with transaction.atomic():
        # Lock the system row: two clicks (or a click and the scheduler) serialise here.
        System.objects.select_for_update().get(pk=system.pk)
        active = BackupRun.objects.filter(system=system, kind=kind,
                                          state__in=[BackupRun.State.QUEUED, BackupRun.State.RUNNING]).first()
        if active is not None:
            return active
        previous = (Artifact.objects.filter(system=system, kind=kind, status=Artifact.Status.AVAILABLE)
                    .exclude(plaintext_size=None).order_by("-created_at").values_list("plaintext_size", flat=True)
                    .first())
        run = BackupRun.objects.create(system=system, kind=kind, trigger=trigger,
                                       requested_by=actor if actor is not None else None, bytes_expected=previous)
        audit_record(actor=actor, action="backup.requested", obj=system, request=request,
                     details={"run": str(run.id), "kind": kind, "trigger": trigger})
        # robust: if Redis refuses, the request still succeeds; the reaper fails the lost run later.
        transaction.on_commit(lambda: _enqueue_backup(run.id), robust=True)
    return run


def _enqueue_backup(run_id) -> None:
    import django_rq

    from backups.jobs import backup_run_job

    job = django_rq.get_queue("backup").enqueue(backup_run_job, str(run_id), job_timeout=12 * 3600)
    BackupRun.objects.filter(pk=run_id).update(job_id=job.id)


class _RunProgress:
    """Throttled progress writes to the run row (the page polls it)."""

    def __init__(self, run: BackupRun, *, start: int, span: int, expected: int | None, count_bytes: bool = True):
        self.run = run
        self.count_bytes = count_bytes
        self.start = start
        self.span = span
        self.expected = expected
        self.table_fraction = 0.0
        self.last = 0.0
        self.bytes = 0

    def __call__(self, done: int) -> None:
        self.bytes = done
        now = time.monotonic()
        if now - self.last < 0.5:
            return
        self.last = now
        self.flush()

    def fraction(self) -> float:
        by_bytes = min(0.99, self.bytes / self.expected) if self.expected else 0.0
        return max(by_bytes, min(0.99, self.table_fraction))

    def flush(self) -> None:
        percent = self.start + int(self.span * self.fraction())
        fields = {"bytes_done": self.bytes} if self.count_bytes else {}
        BackupRun.objects.filter(pk=self.run.pk).update(percent=percent, heartbeat_at=timezone.now(), **fields)


class _Steps:
    """The run's step list, saved as it changes."""

    def __init__(self, run: BackupRun):
        self.run = run
        self.run.steps = []

    def start(self, name: str) -> dict:
        step = {"name": name, "state": "running", "started_at": timezone.now().isoformat(), "finished_at": None,
                "bytes": None, "detail": ""}
        self.run.steps.append(step)
        self._save()
        return step

    def finish(self, step: dict, *, state: str = "succeeded", bytes: int | None = None, detail: str = "") -> None:
        step.update(state=state, finished_at=timezone.now().isoformat(), bytes=bytes, detail=detail[:500])
        self._save()

    def _save(self) -> None:
        BackupRun.objects.filter(pk=self.run.pk).update(steps=self.run.steps, heartbeat_at=timezone.now())


def backup_run_execute(run_id) -> BackupRun:
    """Do a queued backup run (called by the job). Never raises for a backup failure: the run records it."""
    with transaction.atomic():
        # Conditional transition: a run is executed once, even if its job is delivered twice.
        started = BackupRun.objects.filter(pk=run_id, state=BackupRun.State.QUEUED).update(
            state=BackupRun.State.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now())
        run = BackupRun.objects.select_related("system").get(pk=run_id)
        if not started:
            return run
        audit_record(actor=None, action="backup.started", obj=run.system,
                     details={"run": str(run.id), "kind": run.kind})
    steps = _Steps(run)
    artifact = None
    try:
        backup = _full_backup if run.kind == Artifact.Kind.FULL else _config_backup
        artifact = backup(run, steps)
    except Exception as exc:
        message = scrub(str(exc) or type(exc).__name__)
        if not isinstance(exc, BackupError | pgtools.ToolError | StorageError | formats.ArtifactError
                          | secrets.SecretReferenceError):
            log.exception("backup run %s failed", run.id)
            message = f"unexpected error: {type(exc).__name__}: {message}"[:2000]
        for step in run.steps:
            if step["state"] == "running":
                steps.finish(step, state="failed", detail=message)
        with transaction.atomic():
            BackupRun.objects.filter(pk=run.pk).update(state=BackupRun.State.FAILED, finished_at=timezone.now(),
                                                       error=message[:4000])
            if artifact is None:
                artifact = Artifact.objects.filter(runs=run, status=Artifact.Status.WRITING).first()
            if artifact is not None and artifact.status == Artifact.Status.WRITING:
                Artifact.objects.filter(pk=artifact.pk).update(status=Artifact.Status.FAILED)
            audit_record(actor=None, action="backup.failed", obj=run.system, outcome="failure",
                         details={"run": str(run.id), "kind": run.kind, "error": message[:500],
                                  "artifact": str(artifact.id) if artifact else None})
        if artifact is not None:
            _remove_objects(artifact)
    run.refresh_from_db()
    return run


def _remove_objects(artifact: Artifact) -> None:
    """Remove a failed artifact's objects, and any partial write of them, from every enabled location."""
    for location in StorageLocation.objects.filter(enabled=True):
        with contextlib.suppress(StorageError):
            backend = location.backend()
            backend.delete(artifact.storage_key)
            backend.delete(manifest_key(artifact.storage_key))
            backend.discard_partial(artifact.storage_key)


def _new_artifact(run: BackupRun, *, fmt: str) -> Artifact:
    artifact_id = uuid.uuid4()
    artifact = Artifact.objects.create(
        id=artifact_id, system=run.system, kind=run.kind, format=fmt, encryption=Artifact.Encryption.DRPANEL,
        status=Artifact.Status.WRITING, source=Artifact.Source.BACKUP,
        storage_key=artifact_key(run.system_id, artifact_id))
    BackupRun.objects.filter(pk=run.pk).update(artifact=artifact)
    return artifact


def _stream_to_primary(run: BackupRun, artifact: Artifact, steps: _Steps, step: dict, src, progress,
                       finish_source) -> tuple[StorageLocation, formats.StreamResult]:
    """Encrypt ``src`` into the primary location; ``finish_source()`` must raise if the producer failed."""
    location = primary_location()
    backend = location.backend()
    with backend.open_write(artifact.storage_key) as out:
        result = formats.encrypt_stream(src, out, artifact_id=artifact.id, keyring=get_keyring(),
                                        chunk_size=settings.BACKUP_CHUNK_SIZE, progress=progress)
        finish_source()
    progress.bytes = result.plaintext_size
    progress.flush()
    steps.finish(step, bytes=result.stored_size,
                 detail=f"{result.plaintext_size} bytes → {result.stored_size} stored in {location.name}")
    now = timezone.now()
    ArtifactCopy.objects.create(artifact=artifact, location=location, key=artifact.storage_key,
                                status=ArtifactCopy.Status.OK, size=result.stored_size,
                                sha256_seen=result.stored_sha256, checked_at=now, last_seen_at=now)
    return location, result


def _full_backup(run: BackupRun, steps: _Steps) -> Artifact:
    step = steps.start("connect")
    url = secrets.resolve(run.system.database_ref)
    conn = pgtools.connect(url, autocommit=True)
    try:
        facts = pgtools.server_facts(conn)
        tool = pgtools.find_tool("pg_dump", facts["server_major"])
        # One snapshot for the dump and the row counts: the manifest's counts are those of the dump.
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        # The counts run beside pg_dump: one core at most, so they do not slow the dump down.
        conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        tables = pgtools.list_tables(conn)
        steps.finish(step, detail=f"PostgreSQL {facts['server_version']}, {tool.version}, {len(tables)} tables")
        artifact = _new_artifact(run, fmt=Artifact.Format.PG_CUSTOM)
        step = steps.start("dump and encrypt")
        total_size = sum(size for _, _, size in tables) or 1
        sizes = {f"{s}.{t}": size for s, t, size in tables}
        progress = _RunProgress(run, start=0, span=80, expected=run.bytes_expected)
        counts: dict = {}
        stderr_tail: list[str] = []

        def follow_stderr(stream):
            done = 0
            current = None
            for raw in stream:
                line = raw.decode(errors="replace").rstrip()
                stderr_tail.append(line)
                del stderr_tail[:-20]
                if "dumping contents of table" in line:
                    name = line.split("dumping contents of table", 1)[1].strip().strip('"')
                    if current:
                        done += sizes.get(current, 0)
                    current = name
                    progress.table_fraction = done / total_size

        def count_in_snapshot():
            try:
                counts["tables"] = pgtools.count_rows(conn, tables)
            except Exception as exc:  # the manifest says so; the dump itself does not depend on it
                counts["error"] = f"{type(exc).__name__}"

        proc = subprocess.Popen(
            [tool.path, "--format=custom", "--verbose", f"--snapshot={snapshot}", "--no-password"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=pgtools.libpq_env(url), bufsize=1 << 20)
        readers = [threading.Thread(target=follow_stderr, args=(proc.stderr,), daemon=True),
                   threading.Thread(target=count_in_snapshot, daemon=True)]
        for thread in readers:
            thread.start()

        def finish_dump():
            code = proc.wait()
            readers[0].join(10)
            if code != 0:
                errors = [line for line in stderr_tail if "error" in line.lower()] or stderr_tail[-3:]
                raise BackupError(f"pg_dump exited with {code}: {' / '.join(errors)[-800:]}")

        try:
            location, result = _stream_to_primary(run, artifact, steps, step, proc.stdout, progress, finish_dump)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            readers[1].join()
        conn.execute("COMMIT")
    finally:
        conn.close()
    manifest = _manifest(artifact, result, extra={
        "postgres": {"server_version": facts["server_version"], "server_version_num": facts["server_version_num"],
                     "database": facts["database"], "database_size": facts["database_size"],
                     "pg_dump": tool.version, "pg_dump_major": tool.major},
        "tables": counts.get("tables", []),
        "row_counts": ("exact count(*) per table, in the dump's own snapshot (pg_export_snapshot + pg_dump --snapshot)"
                       if "tables" in counts else f"not taken ({counts.get('error', 'unknown error')})"),
    })
    return _finish_artifact(run, artifact, location, result, manifest, steps)


def _config_backup(run: BackupRun, steps: _Steps) -> Artifact:
    step = steps.start("collect config files")
    for path in run.system.config_paths:
        try:
            endpoints.check_config_path(path, what="config path")
        except endpoints.EndpointRefused as exc:
            raise BackupError(str(exc)) from None
    paths = [Path(p) for p in run.system.config_paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise BackupError(f"config paths missing: {', '.join(missing)}")
    files = []
    for path in paths:
        if path.is_dir():
            files.extend(f for f in sorted(path.rglob("*")) if f.is_file() or f.is_symlink())
        else:
            files.append(path)
    steps.finish(step, detail=f"{len(files)} files under {len(paths)} paths")
    artifact = _new_artifact(run, fmt=Artifact.Format.CONFIG_TAR)
    step = steps.start("archive and encrypt")
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []
    listing: list[dict] = []

    def produce():
        try:
            with os.fdopen(write_fd, "wb") as pipe, tarfile.open(fileobj=pipe, mode="w|") as tar:
                for path in paths:
                    # Relative names only: the archive can be unpacked anywhere, never over "/".
                    tar.add(str(path), arcname=path.name, recursive=True, filter=_tar_filter(listing))
        except BaseException as exc:
            failure.append(exc)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    progress = _RunProgress(run, start=0, span=80, expected=run.bytes_expected or sum(
        f.stat().st_size for f in files if f.is_file()) or None)

    def finish_tar():
        producer.join()
        if failure:
            raise BackupError(f"config archive failed: {failure[0]}")

    with os.fdopen(read_fd, "rb") as src:
        location, result = _stream_to_primary(run, artifact, steps, step, src, progress, finish_tar)
    manifest = _manifest(artifact, result, extra={"config": {"paths": run.system.config_paths,
                                                             "files": len(listing), "members": listing[:1000]}})
    return _finish_artifact(run, artifact, location, result, manifest, steps)


def _tar_filter(listing: list):
    def keep(info: tarfile.TarInfo):
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        if info.isfile() or info.issym():
            listing.append({"name": info.name, "size": info.size, "type": "link" if info.issym() else "file"})
        return info

    return keep


def _manifest(artifact: Artifact, result: formats.StreamResult, *, extra: dict) -> dict:
    return {
        "manifest_version": MANIFEST_VERSION,
        "artifact_id": str(artifact.id),
        "system": {"id": artifact.system_id, "name": artifact.system.name},
        "kind": artifact.kind,
        "format": artifact.format,
        "created_at": artifact.created_at.isoformat(),
        "storage_key": artifact.storage_key,
        "encryption": {"scheme": formats.ENCRYPTION_DRPANEL, "key_id": result.key_id,
                       "chunk_size": result.chunk_size, "chunks": result.chunks},
        "size": result.stored_size,
        "sha256": result.stored_sha256,
        "plaintext_size": result.plaintext_size,
        "plaintext_sha256": result.plaintext_sha256,
        **extra,
    }


def _write_manifest(location: StorageLocation, artifact: Artifact) -> None:
    data = json.dumps(artifact.manifest, indent=2, sort_keys=True).encode()
    location.backend().put_bytes(manifest_key(artifact.storage_key), data)


def _finish_artifact(run, artifact, primary, result, manifest, steps) -> Artifact:
    with transaction.atomic():
        Artifact.objects.filter(pk=artifact.pk).update(
            size=result.stored_size, sha256=result.stored_sha256, plaintext_size=result.plaintext_size,
            plaintext_sha256=result.plaintext_sha256, key_id=result.key_id, manifest=manifest)
    artifact.refresh_from_db()
    _write_manifest(primary, artifact)
    offsite = list(StorageLocation.objects.filter(enabled=True, role=StorageLocation.Role.OFFSITE))
    span = 20 // max(1, len(offsite))
    for n, location in enumerate(offsite):
        step = steps.start(f"copy to {location.name}")
        progress = _RunProgress(run, start=80 + n * span, span=span, expected=result.stored_size, count_bytes=False)
        try:
            copy = copy_artifact(artifact, source=primary, target=location, progress=progress)
        except (StorageError, BackupError) as exc:
            _copy_failed(artifact, location, scrub(exc))
            steps.finish(step, state="failed", detail=scrub(exc))
            continue
        state = "succeeded" if copy.status == ArtifactCopy.Status.OK else "failed"
        steps.finish(step, state=state, bytes=copy.size,
                     detail=f"re-read from {location.name}: SHA-256 {'matches' if state == 'succeeded' else 'differs'}")
    with transaction.atomic():
        Artifact.objects.filter(pk=artifact.pk, status=Artifact.Status.WRITING).update(status=Artifact.Status.AVAILABLE)
        BackupRun.objects.filter(pk=run.pk).update(state=BackupRun.State.SUCCEEDED, finished_at=timezone.now(),
                                                   percent=100, heartbeat_at=timezone.now())
        artifact.refresh_from_db()
        copies = {c.location.name: c.status for c in artifact.copies.select_related("location")}
        failed = [s for s in run.steps if s["state"] == "failed"]
        audit_record(actor=None, action="backup.succeeded", obj=artifact,
                     details={"run": str(run.id), "kind": artifact.kind, "size": artifact.size,
                              "sha256": artifact.sha256, "plaintext_sha256": artifact.plaintext_sha256,
                              "key_id": artifact.key_id, "copies": copies,
                              "failed_steps": [s["name"] for s in failed]})
        if artifact.kind == Artifact.Kind.FULL:
            _after_full(artifact)
    return artifact


def _after_full(artifact: Artifact) -> None:
    """Ask for the new full's first verification (``hooks.backup_succeeded``) in the success's transaction.

    A savepoint keeps a failure of the hook from undoing the backup: the daily verification
    still covers the artifact then.
    """
    try:
        with transaction.atomic():
            hooks.backup_succeeded(artifact)
    except Exception:
        log.exception("the backup-succeeded hook failed for artifact %s", artifact.pk)


def _copy_failed(artifact: Artifact, location: StorageLocation, error: str) -> None:
    """A copy that could not be made is said to be missing there (not left "pending"), and audited."""
    with transaction.atomic():
        ArtifactCopy.objects.filter(artifact=artifact, location=location,
                                    status=ArtifactCopy.Status.PENDING).update(status=ArtifactCopy.Status.MISSING)
        audit_record(actor=None, action="artifact.copied", obj=artifact, outcome="failure",
                     details={"location": location.name, "status": ArtifactCopy.Status.MISSING, "error": error[:500]})
    with contextlib.suppress(StorageError):
        location.backend().discard_partial(artifact.storage_key)


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
    _write_manifest(target, artifact)
    now = timezone.now()
    ok = sha == artifact.sha256 and size == artifact.size
    status = ArtifactCopy.Status.OK if ok else (
        ArtifactCopy.Status.SIZE_MISMATCH if size != artifact.size else ArtifactCopy.Status.CHECKSUM_MISMATCH)
    with transaction.atomic():
        ArtifactCopy.objects.filter(pk=copy.pk).update(status=status, size=size, sha256_seen=sha, checked_at=now,
                                                       last_seen_at=now)
        if ok and target.is_offsite:
            Artifact.objects.filter(pk=artifact.pk).update(offsite_verified_at=now)
        audit_record(actor=None, action="artifact.copied", obj=artifact, outcome="success" if ok else "failure",
                     details={"location": target.name, "size": size, "sha256": sha, "status": status})
    copy.refresh_from_db()
    return copy


def _job_status(run: BackupRun) -> str | None:
    """The RQ status of a run's job, or None when there is no such job (never enqueued, Redis flushed)."""
    import django_rq
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    if not run.job_id:
        return None
    try:
        job = Job.fetch(run.job_id, connection=django_rq.get_connection("backup"))
    except NoSuchJobError:
        return None
    return job.get_status(refresh=False)


_JOB_DEAD = ("failed", "stopped", "canceled")


def _job_lost(run: BackupRun) -> bool:
    """A queued run whose RQ job is gone (never enqueued, Redis flushed, job failed before starting)."""
    status = _job_status(run)
    return status is None or status in _JOB_DEAD


def _fail_run(run: BackupRun, *, expected_state: str, error: str, **conditions) -> bool:
    with transaction.atomic():
        # Conditional on the state we saw: a run that started or finished meanwhile is left alone.
        changed = BackupRun.objects.filter(pk=run.pk, state=expected_state, **conditions).update(
            state=BackupRun.State.FAILED, finished_at=timezone.now(), error=error)
        artifact = Artifact.objects.filter(runs=run, status=Artifact.Status.WRITING).first() if changed else None
        if changed:
            Artifact.objects.filter(runs=run, status=Artifact.Status.WRITING).update(status=Artifact.Status.FAILED)
            audit_record(actor=None, action="backup.failed", obj=run.system, outcome="failure",
                         details={"run": str(run.id), "error": error,
                                  "artifact": str(artifact.id) if artifact else None})
    if artifact is not None:
        # The dead worker may have left part of the object behind (a temporary file, an open upload).
        _remove_objects(artifact)
    return bool(changed)


def _requeue(run: BackupRun, reason: str) -> bool:
    with transaction.atomic():
        # Only while still queued: a worker that picked it up meanwhile owns it.
        if not BackupRun.objects.filter(pk=run.pk, state=BackupRun.State.QUEUED).exists():
            return False
        audit_record(actor=None, action="backup.requeued", obj=run.system,
                     details={"run": str(run.id), "kind": run.kind, "reason": reason, "previous_job": run.job_id})
        transaction.on_commit(lambda: _enqueue_backup(run.id), robust=True)
    return True


def backup_runs_reap(*, stale_after_seconds: int | None = None, requeue_after_seconds: int = 60,
                     lost_after_seconds: int = 600) -> int:
    """Settle runs that can no longer finish on their own (cron, every minute); returns how many.

    - running, and its RQ job was abandoned (the worker died: rq fails the job about a minute
      after its last heartbeat) or the run row's heartbeat is older than
      ``DRPANEL_BACKUP_STALE_SECONDS``: failed, and whatever the worker left in storage removed;
    - queued, and its job is gone (Redis restarted or flushed, the enqueue failed): queued again,
      audited as ``backup.requeued`` (executing twice is impossible: the start is conditional);
    - queued for longer than ``lost_after_seconds`` and still without a job: failed with the reason.
    """
    import django_rq
    from rq.registry import StartedJobRegistry

    stale_after_seconds = stale_after_seconds or settings.BACKUP_STALE_SECONDS
    now = timezone.now()
    # Move jobs whose worker stopped heartbeating to the failed registry now, not at some other
    # worker's next maintenance.
    StartedJobRegistry("backup", connection=django_rq.get_connection("backup")).cleanup()
    cutoff = now - timezone.timedelta(seconds=stale_after_seconds)
    count = 0
    for run in BackupRun.objects.filter(state=BackupRun.State.RUNNING).select_related("system"):
        if run.heartbeat_at and run.heartbeat_at < cutoff:
            count += _fail_run(run, expected_state=BackupRun.State.RUNNING, heartbeat_at__lt=cutoff,
                               error="the worker stopped reporting progress (it died or was killed)")
        elif run.job_id and _job_status(run) in _JOB_DEAD:
            count += _fail_run(run, expected_state=BackupRun.State.RUNNING,
                               error="the worker running it died (its job was abandoned)")
    old = now - timezone.timedelta(seconds=lost_after_seconds)
    requeue_before = now - timezone.timedelta(seconds=requeue_after_seconds)
    for run in BackupRun.objects.filter(state=BackupRun.State.QUEUED, created_at__lt=requeue_before).select_related(
            "system"):
        if not _job_lost(run):
            continue
        if run.created_at < old:
            count += _fail_run(run, expected_state=BackupRun.State.QUEUED,
                               error="its job was lost before a worker started it (Redis or the enqueue failed)")
        else:
            count += _requeue(run, "its job was lost (Redis restarted or flushed, or the enqueue failed)")
    return count


# --- deletion with approval -------------------------------------------------------------------

def _delete_params(artifact: Artifact) -> dict:
    return {"artifact": str(artifact.id), "sha256": artifact.sha256, "storage_key": artifact.storage_key}


def may_approve_deletion(user) -> bool:
    """Managers approve artifact deletions (never their own request: ``approval_approve`` checks that)."""
    return bool(user.is_active and user.groups.filter(name=Role.MANAGER.value).exists())


def artifact_delete_request(*, actor, artifact: Artifact, reason: str, request=None) -> Approval:
    """Ask for a manual deletion; it happens only when a manager approves it."""
    require_cap(actor, Cap.START_JOBS, action="artifact.delete", obj=artifact)
    if not artifact.is_live:
        raise BackupError("this artifact is already deleted")
    if not (reason or "").strip():
        raise BackupError("say why this artifact should be deleted")
    existing = open_approvals(artifact, DELETE_APPROVAL).first()
    if existing is not None:
        raise BackupError(f"a deletion of this artifact is already {existing.state} (approval #{existing.pk})")
    return approval_request(actor=actor, kind=DELETE_APPROVAL, subject=artifact, params=_delete_params(artifact),
                            reason=reason, request=request)


def artifact_delete_approve(*, actor, approval: Approval, password: str, request=None) -> Artifact:
    """A manager (not the requester) approves with their password; the deletion runs at once."""
    artifact = approval.subject
    approval = approval_approve(actor=actor, approval=approval, password=password, params=_delete_params(artifact),
                                may_approve=may_approve_deletion, request=request)
    return artifact_delete(actor=actor, artifact=artifact, approval=approval, request=request)


def artifact_delete(*, actor, artifact: Artifact, approval: Approval | None = None, retention: dict | None = None,
                    request=None) -> Artifact:
    """Delete an artifact from every location. Needs an approved approval, or a retention decision
    (system actor). Refused while a restore of its system runs."""
    if approval is None and retention is None:
        raise Denied("Deleting an artifact needs a manager's approval.", obj=artifact, action="artifact.delete")
    if hooks.restore_running(artifact.system):
        raise BackupError(f"a restore of {artifact.system.name} is running; artifacts are not deleted meanwhile")
    with transaction.atomic():
        locked = Artifact.objects.select_for_update().get(pk=artifact.pk)
        if not locked.is_live:
            raise BackupError("this artifact is already deleted")
        if approval is not None:
            approval_consume(approval=approval, params=_delete_params(locked), actor=actor)
        Artifact.objects.filter(pk=locked.pk).update(status=Artifact.Status.DELETED, deleted_at=timezone.now())
        audit_record(actor=actor, action="artifact.deleted", obj=locked, request=request, details={
            "why": "retention" if retention is not None else "approved deletion",
            "approval": approval.pk if approval else None,
            "approved_by": approval.decided_by.get_username() if approval and approval.decided_by else None,
            "requested_by": approval.requested_by.get_username() if approval else None,
            "retention": retention, "sha256": locked.sha256, "kind": locked.kind,
            "created_at": locked.created_at})
    failures = []
    for copy in artifact.copies.select_related("location").exclude(status=ArtifactCopy.Status.DELETED):
        try:
            backend = copy.location.backend()
            backend.delete(copy.key)
            backend.delete(manifest_key(copy.key))
        except StorageError as exc:
            failures.append(scrub(f"{copy.location.name}: {exc}"))
            continue
        ArtifactCopy.objects.filter(pk=copy.pk).update(status=ArtifactCopy.Status.DELETED)
    if failures:
        with transaction.atomic():
            audit_record(actor=None, action="artifact.delete_incomplete", obj=artifact, outcome="failure",
                         details={"failures": failures})
    artifact.refresh_from_db()
    return artifact


# --- key rotation -----------------------------------------------------------------------------

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
            manifest.setdefault("rewrapped", []).append({"at": timezone.now().isoformat(), "from_key_id": old["key_id"],
                                                         "to_key_id": header.key_id, "previous_sha256": old["sha256"]})
            Artifact.objects.filter(pk=artifact.pk).update(key_id=header.key_id, sha256=result.stored_sha256,
                                                           size=result.stored_size, manifest=manifest)
            audit_record(actor=actor, action="artifact.rewrapped", obj=artifact, details={
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
                _write_manifest(copy.location, artifact)
            except StorageError as exc:
                with transaction.atomic():
                    ArtifactCopy.objects.filter(pk=copy.pk).update(status=ArtifactCopy.Status.CHECKSUM_MISMATCH)
                    audit_record(actor=None, action="artifact.copy_rewrap_failed", obj=artifact, outcome="failure",
                                 details={"location": copy.location.name, "error": scrub(exc)})
                continue
            now = timezone.now()
            ok = sha == artifact.sha256
            ArtifactCopy.objects.filter(pk=copy.pk).update(
                size=size, sha256_seen=sha, checked_at=now, last_seen_at=now,
                status=ArtifactCopy.Status.OK if ok else ArtifactCopy.Status.CHECKSUM_MISMATCH)
    return artifact


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
        audit_record(actor=actor, action="keys.rotation_requested", request=request, object_type="backups.keyring",
                     object_repr=to_key_id, details={"to_key_id": to_key_id, "artifacts": pending})

        def enqueue():
            import django_rq

            from backups.jobs import key_rotation_job

            django_rq.get_queue("backup").enqueue(key_rotation_job, to_key_id, job_timeout=24 * 3600)

        transaction.on_commit(enqueue)
    return to_key_id


def key_rotation_execute(to_key_id: str) -> dict:
    """Re-wrap every live DR Panel artifact not already under ``to_key_id`` (the job's body)."""
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
    with transaction.atomic():
        audit_record(actor=None, action="keys.rotation_finished", object_type="backups.keyring",
                     object_repr=to_key_id, outcome="success" if not failed else "failure",
                     details={"to_key_id": to_key_id, "rewrapped": done, "failed": failed[:50]})
    return {"rewrapped": done, "failed": failed}


# --- inventory sync ---------------------------------------------------------------------------

def inventory_request(*, actor, request=None) -> InventoryRun:
    """Queue an inventory sync of every enabled location (operators and up; the cron as system)."""
    if actor is not None:
        require_cap(actor, Cap.START_JOBS, action="inventory.sync")
    with transaction.atomic():
        run = InventoryRun.objects.create(requested_by=actor)
        audit_record(actor=actor, action="inventory.requested", obj=run, request=request)

        def enqueue():
            import django_rq

            from backups.jobs import inventory_sync_job

            django_rq.get_queue("backup").enqueue(inventory_sync_job, str(run.id), job_timeout=6 * 3600)

        transaction.on_commit(enqueue, robust=True)
    return run


def read_manifest(location: StorageLocation, key: str) -> dict | None:
    try:
        data = json.loads(location.backend().get_bytes(manifest_key(key)))
    except (StorageError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def head_bytes(location: StorageLocation, key: str, n: int = 4096) -> bytes:
    with contextlib.closing(location.backend().open_read(key, start=0, length=n)) as handle:
        return handle.read()
