"""The checks of each verification level, run in order on one copy of an artifact (the body of a verification).

- **checksum** and **decrypt** run in one streaming pass (or the checksum alone);
- **structure** reads the decrypted file's table of contents (``pg_restore --list``, a config
  tar's headers under the restore rules, a plain dump's header and trailer);
- **restore-test** restores into a throw-away database on the verification server
  (``verify_server_url``), compares row counts with the manifest and runs the sanity checks of
  the targets that receive the system; a config tar is extracted into a temporary directory.

The first level that fails raises ``LevelFailed``; ``restores.verifications`` records the run.
"""

import logging
import shutil
import tarfile
import tempfile
from pathlib import Path

from django.conf import settings
from django.db import connection

from backups import formats
from backups.models import Artifact, System
from backups.storage import StorageError
from drpanel import runs, runtime, secrets
from drpanel.scrub import scrub
from restores import configs, materialize, pg, plainsql, sanity
from restores.models import SanityCheck, VerificationRun

log = logging.getLogger(__name__)

PLAIN_HEAD = b"PostgreSQL database dump"
PLAIN_TAIL = b"PostgreSQL database dump complete"


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


# --- the levels ----------------------------------------------------------------------------------


def _fail(steps: runs.StepList, level: str, message: str, **data) -> None:
    message = scrub(message)
    steps.finish(level, state="failed", detail=message, data=data or None)
    for step in steps.steps:
        if step["state"] == "pending":
            step["state"] = "not run"
    steps.save()
    raise LevelFailed(f"{level}: {message}")


# The base ladder (``restores.base_verification``) ends its levels the same way.
fail_level = _fail


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


def verify_levels(run: VerificationRun, steps: runs.StepList, levels: tuple[str, ...]) -> None:
    """Run ``levels`` in order on the first intact copy; raises ``LevelFailed`` at the first that fails."""
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
    plan = pg.plan_restore(artifact.plaintext_size or artifact.size or 0, jobs=1)
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


def _split_failure(artifact, copy, steps: runs.StepList, message: str) -> None:
    """The decrypting pass failed: tell whether the stored bytes are damaged (checksum) or only the decryption."""
    try:
        size, _ = materialize.hash_copy(artifact, copy)
    except materialize.MaterializeError as exc:
        steps.finish("decrypt", state="failed", detail=scrub(message))
        _fail(steps, "checksum", str(exc))
    steps.finish("checksum", bytes=size, detail=f"the {size} stored bytes match the catalog's SHA-256 "
                                                "(re-read after the decryption failed)")
    _fail(steps, "decrypt", message)


def _record_pass(artifact, copy, steps: runs.StepList, result, *, same_pass: bool) -> None:
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


def _structure(artifact: Artifact, steps: runs.StepList, made: materialize.Materialized) -> None:
    steps.start("structure")
    content = made.content
    if content == "pg_custom":
        try:
            listing = pg.list_archive(made.path)
        except pg.PgOpsError as exc:
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


def _restore_test(run: VerificationRun, artifact: Artifact, steps: runs.StepList,
                  made: materialize.Materialized) -> None:
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
            restored = pg.restore_to_side_database(
                url, run.id, made.path,
                on_progress=lambda p: steps.progress("restore-test", (p.fraction or 0) * 0.8,
                                                     detail=f"pg_restore: {p.message}"))
        else:
            restored = plainsql.restore_plain_sql(
                url, run.id, made.path, on_progress=lambda done, total: steps.progress(
                    "restore-test", 0.8 * done / total if total else None, bytes=done))
    except pg.PgOpsError as exc:
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


def _config_restore_test(run, artifact: Artifact, steps: runs.StepList, made: materialize.Materialized) -> None:
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
