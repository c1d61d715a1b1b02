"""Verification runs: proving an artifact restorable, level by level (checksum → decrypt → structure → restore-test).

``verification_request`` (operators, managers, admins; the scheduler as the system) creates
the row and enqueues the job on the ``verify`` queue after commit; ``verification_execute``
is the job's body. Each level up to the one asked for runs in order, and the first that
fails ends the run:

- **checksum** — every stored byte of the copy is read and its SHA-256 and size compared
  with the catalog;
- **decrypt** — in the same pass, every chunk is authenticated (AES-256-GCM) and nothing is
  kept: the stored hash and the authentication run on two threads at once;
- **structure** — the artifact is decrypted into a temporary file and its table of contents
  read: ``pg_restore --list`` (every table of the manifest must have its data entry), a
  config tar's headers under the restore rules, or a plain dump's header and trailer;
- **restore-test** — the file is restored into a throw-away database on the verification
  server (``DRPANEL_VERIFY_DATABASE``), every table's rows are counted against the
  manifest, the sanity checks of the targets that receive this system run on it, and the
  database is dropped. A config tar is extracted (with the restore rules) into a temporary
  directory and its files counted against the manifest.

The artifact's ``last_verified_level``/``last_verified_at`` then say what this run
reached (empty when even the checksum failed).
"""

import contextlib
import logging
import random
import shutil
import tarfile
import tempfile
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from backups import formats
from backups.models import Artifact, System
from backups.storage import StorageError
from compliance.audit import audit_record
from drpanel import runtime, secrets
from drpanel.permissions import Cap, require_cap
from drpanel.scrub import scrub
from restores import configs, materialize, pgops, plainsql, sanity
from restores.models import LEVELS, SanityCheck, VerificationRun
from restores.tracking import Heartbeat, StepList

log = logging.getLogger(__name__)

VERIFY_QUEUE = "verify"
VERIFIABLE_KINDS = (Artifact.Kind.FULL, Artifact.Kind.CONFIG)
PLAIN_HEAD = b"PostgreSQL database dump"
PLAIN_TAIL = b"PostgreSQL database dump complete"


class VerificationError(Exception):
    """A verification cannot be requested as asked; the message is for the person asking."""


class LevelFailed(Exception):
    """A level failed; the run stops there."""


# --- where restore-tests go -------------------------------------------------------------------


def verify_server_url() -> str:
    """The libpq URL whose server hosts throw-away databases; its database name is their base name."""
    if settings.VERIFY_DATABASE_REF:
        return secrets.resolve(settings.VERIFY_DATABASE_REF, deployment=True)
    return runtime.with_database_name(settings.DATABASE_URL, f"{connection.settings_dict['NAME']}_verify")


def quoted_table(schema: str, table: str) -> str:
    """``"schema"."table"`` as ``restores.sanity.parse_table_name`` reads it back exactly."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in (schema, table))


def manifest_counts(artifact: Artifact) -> dict[str, int]:
    """``{"schema"."table": rows}`` from the manifest (exact counts taken in the dump's snapshot)."""
    counts = {}
    for entry in (artifact.manifest or {}).get("tables") or []:
        if isinstance(entry, dict) and {"schema", "table", "rows"} <= set(entry):
            counts[quoted_table(str(entry["schema"]), str(entry["table"]))] = int(entry["rows"])
    return counts


def system_sanity_checks(system: System) -> list[SanityCheck]:
    """The sanity checks of the active targets that receive ``system``'s artifacts (each query once)."""
    seen, checks = set(), []
    for check in SanityCheck.objects.filter(target__system=system, target__is_active=True).order_by(
            "target__name", "position"):
        key = (check.query.strip(), check.expectation.strip())
        if key not in seen:
            seen.add(key)
            checks.append(check)
    return checks


# --- requests ---------------------------------------------------------------------------------


def verification_request(*, actor, artifact: Artifact, level: str, trigger: str = VerificationRun.Trigger.MANUAL,
                         request=None) -> VerificationRun:
    """Queue a verification of ``artifact`` up to ``level`` (``actor=None``: the scheduler).

    The same artifact and level already queued or running returns that run instead.
    """
    if actor is not None:
        require_cap(actor, Cap.START_JOBS, action="verification.request", obj=artifact)
    if level not in LEVELS:
        raise VerificationError(f"unknown level {level!r}; the levels are {', '.join(LEVELS)}")
    if artifact.status != Artifact.Status.AVAILABLE:
        raise VerificationError(f"this artifact is {artifact.status}: there is nothing to verify")
    if artifact.kind not in VERIFIABLE_KINDS and LEVELS.index(level) > LEVELS.index("decrypt"):
        raise VerificationError(f"{artifact.kind} artifacts are verified up to the decrypt level only")
    with transaction.atomic():
        # Lock the artifact: two clicks (or a click and the scheduler) serialise here.
        Artifact.objects.select_for_update().get(pk=artifact.pk)
        active = VerificationRun.objects.filter(artifact=artifact, level=level, state__in=[
            VerificationRun.State.QUEUED, VerificationRun.State.RUNNING]).first()
        if active is not None:
            return active
        run = VerificationRun.objects.create(artifact=artifact, level=level, trigger=trigger, requested_by=actor)
        audit_record(actor=actor, action="verification.requested", obj=artifact, request=request,
                     details={"run": str(run.id), "level": level, "trigger": trigger})
        # robust: if Redis refuses, the request still stands; the reconciler queues it again.
        transaction.on_commit(lambda: enqueue_verification(run.id), robust=True)
    return run


def verify_new_backup(artifact: Artifact) -> VerificationRun:
    """``BACKUP_SUCCEEDED_HOOK``: a new full is verified at the decrypt level right away (by the system).

    Called in the transaction that makes the artifact available; the job is queued when it
    commits. Without it the newest full would count as unverified from the backup until the
    next daily verification, and the health score and the daily checklist would flap.
    """
    return verification_request(actor=None, artifact=artifact, level=VerificationRun.Level.DECRYPT,
                                trigger=VerificationRun.Trigger.BACKUP)


def enqueue_verification(run_id) -> None:
    """Put the run's job on the ``verify`` queue and remember its id (also used to queue a lost job again)."""
    import django_rq
    from django.db.models import F
    from rq import Callback

    from restores.jobs import verification_job_failed, verification_run_job

    job = django_rq.get_queue(VERIFY_QUEUE).enqueue(verification_run_job, str(run_id), job_timeout=12 * 3600,
                                                    on_failure=Callback(verification_job_failed))
    VerificationRun.objects.filter(pk=run_id).update(job_id=job.id, enqueue_count=F("enqueue_count") + 1)


# --- execution --------------------------------------------------------------------------------

WEIGHTS = {"checksum": 25, "decrypt": 25, "structure": 10, "restore-test": 40}


def verification_execute(run_id) -> VerificationRun:
    """Run a queued verification (the job's body). Never raises for a failed level: the run records it."""
    with transaction.atomic():
        # Conditional transition: a job delivered twice runs once.
        started = VerificationRun.objects.filter(pk=run_id, state=VerificationRun.State.QUEUED).update(
            state=VerificationRun.State.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now())
        run = VerificationRun.objects.select_related("artifact__system").get(pk=run_id)
        if not started:
            return run
        audit_record(actor=None, action="verification.started", obj=run.artifact,
                     details={"run": str(run.id), "level": run.level})
    levels = LEVELS[: LEVELS.index(run.level) + 1]
    steps = StepList(run, [(level, WEIGHTS[level]) for level in levels], field="results")
    error = ""
    with Heartbeat(run):
        try:
            _verify(run, steps, levels)
        except LevelFailed as exc:
            error = scrub(exc)
        except Exception as exc:
            log.exception("verification %s failed unexpectedly", run.id)
            error = scrub(f"unexpected error: {type(exc).__name__}: {exc}")[:2000]
            steps.fail_open(error)
        finally:
            _drop_throwaway(run)
    return _finish(run, steps, error)


def _finish(run: VerificationRun, steps: StepList, error: str) -> VerificationRun:
    passed = [s["name"] for s in steps.steps if s["state"] == "succeeded"]
    reached = ""
    for level in LEVELS:
        if level in passed:
            reached = level
        else:
            break
    state = VerificationRun.State.FAILED if error else VerificationRun.State.SUCCEEDED
    now = timezone.now()
    with transaction.atomic():
        changed = VerificationRun.objects.filter(pk=run.pk, state=VerificationRun.State.RUNNING).update(
            state=state, finished_at=now, reached_level=reached, error=error[:4000],
            percent=100 if not error else steps.percent())
        if changed:
            Artifact.objects.filter(pk=run.artifact_id).update(last_verified_level=reached,
                                                               last_verified_at=now if reached else None)
            audit_record(actor=None, action=f"verification.{state}", obj=run.artifact,
                         outcome="success" if not error else "failure",
                         details={"run": str(run.id), "level": run.level, "reached": reached, "error": error[:500],
                                  "results": {s["name"]: s["state"] for s in steps.steps}})
    run.refresh_from_db()
    return run


def _fail(steps: StepList, level: str, message: str, **data) -> None:
    message = scrub(message)
    steps.finish(level, state="failed", detail=message, data=data or None)
    for step in steps.steps:
        if step["state"] == "pending":
            step["state"] = "not run"
    steps.save()
    raise LevelFailed(f"{level}: {message}")


def _authenticate_only(artifact, copy, steps, progress_of) -> None:
    """The checksum and decrypt levels in one streaming pass; nothing is kept."""
    try:
        result = materialize.authenticate_copy(artifact, copy, progress=progress_of("checksum", "decrypt"))
    except materialize.ChecksumMismatch as exc:
        steps.finish("decrypt", detail="every chunk authenticated")
        _fail(steps, "checksum", str(exc))
    except materialize.MaterializeError as exc:
        _split_failure(artifact, copy, steps, str(exc))
    _record_pass(artifact, copy, steps, result, same_pass=True)


def _verify(run: VerificationRun, steps: StepList, levels: tuple[str, ...]) -> None:
    artifact = run.artifact
    try:
        copy = materialize.pick_copy(artifact)
    except materialize.MaterializeError as exc:
        steps.start("checksum")
        _fail(steps, "checksum", str(exc))
    VerificationRun.objects.filter(pk=run.pk).update(location=copy.location.name)
    total = artifact.size or 0

    def progress_of(*names):
        def progress(done: int) -> None:
            for name in names:
                steps.progress(name, done / total if total else None, bytes=done)
        return progress

    if levels[-1] == "checksum":
        steps.start("checksum", detail=f"reading the copy in {copy.location.name}")
        try:
            size, sha256 = materialize.hash_copy(artifact, copy, progress=progress_of("checksum"))
        except materialize.MaterializeError as exc:
            _fail(steps, "checksum", str(exc))
        steps.finish("checksum", bytes=size, detail=f"SHA-256 of the {size} stored bytes in {copy.location.name} "
                                                    "matches the catalog", data={"sha256": sha256})
        return
    steps.start("checksum", detail=f"reading the copy in {copy.location.name}")
    steps.start("decrypt", detail="authenticating every chunk in the same pass")
    if levels[-1] == "decrypt":
        _authenticate_only(artifact, copy, steps, progress_of)
        return
    plan = pgops.plan_restore(artifact.plaintext_size or artifact.size or 0, jobs=1)
    if plan.mode == "stream":
        # No room to decrypt into a file: prove what one streaming pass can, and say why the rest waits.
        _authenticate_only(artifact, copy, steps, progress_of)
        steps.start("structure")
        _fail(steps, "structure", f"not enough temporary disk to decrypt into: {plan.reason.split(':')[0]}; free "
                                  "some space or point DRPANEL_RESTORE_TEMP_DIR elsewhere")
    try:
        made = materialize.materialize_copy(artifact, copy, run_id=run.id, progress=progress_of("checksum", "decrypt"))
    except materialize.ChecksumMismatch as exc:
        steps.finish("decrypt", detail="every chunk authenticated")
        _fail(steps, "checksum", str(exc))
    except (formats.ArtifactError, StorageError, materialize.MaterializeError, OSError) as exc:
        _split_failure(artifact, copy, steps, f"{type(exc).__name__}: {exc}")
    try:
        _record_pass(artifact, copy, steps, made, same_pass=True)
        _structure(artifact, steps, made)
        if "restore-test" in levels:
            _restore_test(run, artifact, steps, made)
    finally:
        materialize.discard(made.path)


def _split_failure(artifact, copy, steps: StepList, message: str) -> None:
    """The decrypting pass failed: tell whether the stored bytes are damaged (checksum) or only the decryption."""
    try:
        size, _ = materialize.hash_copy(artifact, copy)
    except materialize.MaterializeError as exc:
        steps.finish("decrypt", state="failed", detail=scrub(message))
        _fail(steps, "checksum", str(exc))
    steps.finish("checksum", bytes=size, detail=f"the {size} stored bytes match the catalog's SHA-256 "
                                                "(re-read after the decryption failed)")
    _fail(steps, "decrypt", message)


def _record_pass(artifact, copy, steps: StepList, result, *, same_pass: bool) -> None:
    stored_size = result.stored_size
    steps.finish("checksum", bytes=stored_size,
                 detail=f"SHA-256 of the {stored_size} stored bytes in {copy.location.name} matches the catalog"
                        + (" (measured in the decrypting pass)" if same_pass else ""),
                 data={"sha256": result.stored_sha256})
    if artifact.encryption == Artifact.Encryption.DRPANEL:
        chunks = getattr(result, "chunks", None)
        detail = (f"every chunk{f' ({chunks})' if chunks else ''} authenticated (AES-256-GCM) with key "
                  f"{artifact.key_id}; {result.plaintext_size} bytes of plaintext")
    elif artifact.encryption == Artifact.Encryption.OPENSSL:
        detail = f"legacy AES-256-CBC decrypted with {artifact.key_id}; padding intact ({result.plaintext_size} bytes)"
    else:
        detail = "not encrypted: nothing to authenticate, the checksum is its only integrity check"
    steps.finish("decrypt", bytes=result.plaintext_size, detail=detail)


def _structure(artifact: Artifact, steps: StepList, made: materialize.Materialized) -> None:
    steps.start("structure")
    content = made.content
    if content == "pg_custom":
        try:
            listing = pgops.list_archive(made.path)
        except pgops.PgOpsError as exc:
            _fail(steps, "structure", str(exc))
        expected = {f"{t['schema']}.{t['table']}" for t in (artifact.manifest or {}).get("tables") or []
                    if isinstance(t, dict) and "schema" in t}
        missing = sorted(expected - set(listing.table_data))
        if missing:
            _fail(steps, "structure", f"the archive has no data for {len(missing)} table(s) of the manifest: "
                                      f"{', '.join(missing[:10])}")
        steps.finish("structure", detail=f"pg_restore --list: {listing.toc_entries or len(listing.entries)} TOC "
                                         f"entries, data for {len(listing.table_data)} tables"
                                         + (", every table of the manifest present" if expected else ""),
                     data=listing.as_dict())
    elif content == "config_tar":
        try:
            summary = configs.check_config_tar(made.path)
        except configs.ConfigArchiveRefused as exc:
            _fail(steps, "structure", str(exc))
        expected = ((artifact.manifest or {}).get("config") or {}).get("files")
        if expected is not None and int(expected) != summary.files:
            _fail(steps, "structure", f"the tar holds {summary.files} files, the manifest says {expected}")
        steps.finish("structure", detail=f"tar headers: {summary.members} members, {summary.files} files, "
                                         f"{summary.bytes} bytes; no absolute path, '..', link out or device",
                     data=summary.as_dict())
    elif content == "pg_plain":
        head, tail = _ends(made.path)
        if PLAIN_HEAD not in head:
            _fail(steps, "structure", "this does not start like a pg_dump plain SQL dump")
        if PLAIN_TAIL not in tail:
            _fail(steps, "structure", "the plain SQL dump has no 'dump complete' trailer: it was cut short")
        steps.finish("structure", detail=f"plain SQL dump, {made.plaintext_size} bytes, header and "
                                         "'dump complete' trailer present")
    elif content == "pg_directory_tar":
        try:
            with tarfile.open(made.path, mode="r:*") as archive:
                names = archive.getnames()
        except (tarfile.TarError, OSError) as exc:
            _fail(steps, "structure", f"not a readable tar: {exc}")
        if not any(Path(name).name == "toc.dat" for name in names):
            _fail(steps, "structure", "the tar holds no toc.dat: not a pg_dump directory archive")
        steps.finish("structure", detail=f"directory-format dump in a tar: {len(names)} members with toc.dat")
    else:
        _fail(steps, "structure", f"the format {artifact.format!r} has no structure check")


def _ends(path: Path, size: int = 4096) -> tuple[bytes, bytes]:
    with open(path, "rb") as handle:
        head = handle.read(size)
        handle.seek(0, 2)
        end = handle.tell()
        handle.seek(max(0, end - size))
        return head, handle.read()


def _restore_test(run: VerificationRun, artifact: Artifact, steps: StepList, made: materialize.Materialized) -> None:
    steps.start("restore-test")
    if made.content == "config_tar":
        _config_restore_test(run, artifact, steps, made)
        return
    if made.content not in ("pg_custom", "pg_plain"):
        _fail(steps, "restore-test", "only custom-format and plain SQL dumps can be restore-tested")
    try:
        url = verify_server_url()
    except secrets.SecretReferenceError as exc:
        _fail(steps, "restore-test", f"DRPANEL_VERIFY_DATABASE: {exc}")
    VerificationRun.objects.filter(pk=run.pk).update(needs_cleanup=True)
    try:
        if made.content == "pg_custom":
            restored = pgops.restore_to_side_database(
                url, run.id, made.path,
                on_progress=lambda p: steps.progress("restore-test", (p.fraction or 0) * 0.8,
                                                     detail=f"pg_restore: {p.message}"))
        else:
            restored = plainsql.restore_plain_sql(
                url, run.id, made.path, on_progress=lambda done, total: steps.progress(
                    "restore-test", 0.8 * done / total if total else None, bytes=done))
    except pgops.PgOpsError as exc:
        _fail(steps, "restore-test", f"the restore failed: {exc}")
    side_url = runtime.with_database_name(url, restored.database)
    expected = manifest_counts(artifact)
    counts = sanity.compare_row_counts(side_url, expected) if expected else []
    checks = system_sanity_checks(artifact.system)
    results = sanity.run_sanity_checks(side_url, checks) if checks else []
    data = {"restore": restored.as_dict(), "row_counts": [c.as_dict() for c in counts],
            "sanity_checks": [r.as_dict() for r in results]}
    bad_counts = [c for c in counts if not c.ok]
    bad_checks = [r for r in results if not r.ok]
    if bad_counts:
        first = bad_counts[0]
        _fail(steps, "restore-test", f"{len(bad_counts)} of {len(counts)} tables differ from the manifest "
                                     f"(first: {first.table}: {first.error})", **data)
    if bad_checks:
        first = bad_checks[0]
        _fail(steps, "restore-test", f"{len(bad_checks)} sanity check(s) failed (first: {first.name}: "
                                     f"{first.error})", **data)
    detail = (f"restored into a throw-away database in {restored.duration_s:.1f} s; "
              + (f"all {len(counts)} tables have the manifest's row counts" if counts
                 else "the manifest has no row counts to compare")
              + (f"; {len(results)} sanity check(s) passed" if results else "; no sanity check applies to "
                 f"{artifact.system.name}") + "; dropped")
    steps.finish("restore-test", detail=detail, data=data)


def _config_restore_test(run, artifact: Artifact, steps: StepList, made: materialize.Materialized) -> None:
    scratch = Path(tempfile.mkdtemp(prefix=f"{materialize.TEMP_PREFIX}{run.id}-", dir=materialize.temp_dir()))
    try:
        try:
            extracted, summary = configs.extract_config_tar(made.path, scratch / "config", run.id)
        except (configs.ConfigArchiveRefused, configs.ConfigSwapError) as exc:
            _fail(steps, "restore-test", f"extraction refused: {exc}")
        files = sum(1 for path in extracted.rglob("*") if path.is_file() and not path.is_symlink())
        expected = ((artifact.manifest or {}).get("config") or {}).get("files")
        if expected is not None and int(expected) != files:
            _fail(steps, "restore-test", f"{files} files extracted, the manifest says {expected}")
        steps.finish("restore-test", detail=f"extracted {files} files ({summary.bytes} bytes) under the restore rules "
                                            "into a temporary directory, then removed", data=summary.as_dict())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _drop_throwaway(run: VerificationRun) -> None:
    """Drop the run's throw-away database if it made one (and say so on the row)."""
    run.refresh_from_db(fields=["needs_cleanup"])
    if not run.needs_cleanup:
        return
    with contextlib.suppress(pgops.PgOpsError, secrets.SecretReferenceError):
        pgops.drop_copy(verify_server_url(), run.id, pgops.CopyKind.SIDE)
        VerificationRun.objects.filter(pk=run.pk).update(needs_cleanup=False)


# --- schedules ----------------------------------------------------------------------------------


def schedule_daily(now=None) -> list[VerificationRun]:
    """Every day: the newest available full artifact of each system, at the decrypt level."""
    runs = []
    for system in System.objects.all():
        newest = Artifact.objects.filter(system=system, kind=Artifact.Kind.FULL,
                                         status=Artifact.Status.AVAILABLE).order_by("-created_at").first()
        if newest is not None:
            runs.append(verification_request(actor=None, artifact=newest, level="decrypt",
                                             trigger=VerificationRun.Trigger.SCHEDULE))
    return runs


def schedule_weekly(now=None, rng: random.Random | None = None) -> list[VerificationRun]:
    """Every week: one full artifact of each system from the last 30 days, picked at random, at restore-test."""
    now = now or timezone.now()
    rng = rng or random.SystemRandom()
    runs = []
    for system in System.objects.all():
        recent = list(Artifact.objects.filter(system=system, kind=Artifact.Kind.FULL, status=Artifact.Status.AVAILABLE,
                                              created_at__gte=now - timedelta(days=30)).values_list("pk", flat=True))
        if recent:
            artifact = Artifact.objects.get(pk=rng.choice(recent))
            runs.append(verification_request(actor=None, artifact=artifact, level="restore-test",
                                             trigger=VerificationRun.Trigger.SCHEDULE))
    return runs
