"""How a backup run makes its artifact: a pg_dump (with row counts in the dump's own snapshot) or a config
tar, encrypted as it streams into the primary location, its manifest written, then copied off-site."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import tarfile
import threading
import uuid
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backups import formats, hooks, pgtools, server_roles
from backups.copies import copy_artifact, copy_failed, write_manifest
from backups.errors import BackupError
from backups.keys import get_keyring
from backups.models import Artifact, ArtifactCopy, BackupRun, StorageLocation
from backups.storage import StorageError, artifact_key
from backups.systems import primary_location
from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from drpanel import endpoints, pgbin, secrets
from drpanel.runs import ByteProgress, StepLog
from drpanel.scrub import scrub

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1


def _new_artifact(run: BackupRun, *, fmt: str) -> Artifact:
    artifact_id = uuid.uuid4()
    artifact = Artifact.objects.create(
        id=artifact_id, system=run.system, kind=run.kind, format=fmt, encryption=Artifact.Encryption.DRPANEL,
        status=Artifact.Status.WRITING, source=Artifact.Source.BACKUP,
        storage_key=artifact_key(run.system_id, artifact_id))
    BackupRun.objects.filter(pk=run.pk).update(artifact=artifact)
    return artifact


def _stream_to_primary(run: BackupRun, artifact: Artifact, steps: StepLog, step: dict, src, progress,
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


# Linux's default pipe holds 64 KiB: pg_dump would block on it and wake this process every 64 KiB.
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, named by the fcntl module from Python 3.10 on Linux only


def _widen_pipe(stream) -> None:
    """Let ``stream``'s pipe hold ``PIPE_SIZE`` bytes (fewer wake-ups of both ends); best effort."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fcntl.fcntl(stream.fileno(), getattr(fcntl, "F_SETPIPE_SZ", F_SETPIPE_SZ), PIPE_SIZE)


def full_backup(run: BackupRun, steps: StepLog) -> Artifact:
    """Dump the system's database (pg_dump custom format) into a new artifact, with the manifest's row counts."""
    step = steps.start("connect")
    url = secrets.resolve(run.system.database_ref)
    conn = pgtools.connect(url, autocommit=True)
    try:
        facts = pgtools.server_facts(conn)
        tool = pgbin.find_tool("pg_dump", facts["server_major"])
        # One snapshot for the dump and the row counts: the manifest's counts are those of the dump.
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        # The counts run beside pg_dump: one core at most, so they do not slow the dump down.
        conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        tables = pgtools.list_tables(conn)
        steps.finish(step, detail=f"PostgreSQL {facts['server_version']}, {tool.version}, {len(tables)} tables")
        artifact = _new_artifact(run, fmt=Artifact.Format.PG_CUSTOM)
        roles = _capture_roles(url, facts["server_major"], artifact, steps, server_roles.database_properties(conn))
        step = steps.start("dump and encrypt")
        total_size = sum(size for _, _, size in tables) or 1
        sizes = {f"{s}.{t}": size for s, t, size in tables}
        progress = ByteProgress(run, start=0, span=80, expected=run.bytes_expected)
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
            [tool.path, "--format=custom", f"--compress={settings.BACKUP_COMPRESSION}", "--verbose",
             f"--snapshot={snapshot}", "--no-password"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=pgtools.libpq_env(url), bufsize=1 << 20)
        _widen_pipe(proc.stdout)
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
                     "pg_dump": tool.version, "pg_dump_major": tool.major,
                     "compression": f"gzip:{settings.BACKUP_COMPRESSION}"},
        "tables": counts.get("tables", []),
        "globals": roles,
        "row_counts": ("exact count(*) per table, in the dump's own snapshot (pg_export_snapshot + pg_dump --snapshot)"
                       if "tables" in counts else f"not taken ({counts.get('error', 'unknown error')})"),
    })
    return _finish_artifact(run, artifact, location, result, manifest, steps)


def _capture_roles(url: str, server_major: int, artifact: Artifact, steps: StepLog, database: dict) -> dict:
    """The manifest's ``globals`` section: the server's roles, taken just before the dump (``backups.server_roles``).

    A failure does not fail the backup (the dump itself is good); the step and the manifest
    say that this full will not bring its roles onto an empty server.
    """
    step = steps.start("roles")
    passwords = settings.BACKUP_ROLE_PASSWORDS
    try:
        text, tool = server_roles.capture_globals(url, server_major, role_passwords=passwords)
        section = server_roles.seal_globals(text, artifact_id=artifact.id, keyring=get_keyring(),
                                            tool_version=tool.version, role_passwords=passwords, database=database)
    except (server_roles.GlobalsError, pgtools.ToolError, subprocess.SubprocessError, UnicodeDecodeError) as exc:
        message = scrub(exc)
        steps.finish(step, state="failed", detail=f"roles not taken: {message}"[:500])
        return {"format": server_roles.GLOBALS_FORMAT, "error": message[:500]}
    steps.finish(step, detail=f"{len(section['roles'])} roles (pg_dumpall --globals-only, passwords "
                              f"{'included' if passwords else 'left out'}), sealed in the manifest")
    return section


def config_backup(run: BackupRun, steps: StepLog) -> Artifact:
    """Archive the system's config paths (tar, relative names) into a new artifact."""
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
    progress = ByteProgress(run, start=0, span=80, expected=run.bytes_expected or sum(
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


def _finish_artifact(run, artifact, primary, result, manifest, steps) -> Artifact:
    with transaction.atomic():
        Artifact.objects.filter(pk=artifact.pk).update(
            size=result.stored_size, sha256=result.stored_sha256, plaintext_size=result.plaintext_size,
            plaintext_sha256=result.plaintext_sha256, key_id=result.key_id, manifest=manifest)
    artifact.refresh_from_db()
    write_manifest(primary, artifact)
    offsite = list(StorageLocation.objects.filter(enabled=True, role=StorageLocation.Role.OFFSITE))
    span = 20 // max(1, len(offsite))
    for n, location in enumerate(offsite):
        step = steps.start(f"copy to {location.name}")
        progress = ByteProgress(run, start=80 + n * span, span=span, expected=result.stored_size, count_bytes=False)
        try:
            copy = copy_artifact(artifact, source=primary, target=location, progress=progress)
        except (StorageError, BackupError) as exc:
            copy_failed(artifact, location, scrub(exc))
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
        audit_record(actor=None, action=AuditAction.BACKUP_SUCCEEDED, obj=artifact,
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
