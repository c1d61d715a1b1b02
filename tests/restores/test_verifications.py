"""Materialising artifacts and the verification ladder, on real backups, real pg_restore and a real S3 server."""

import gzip
import os
import random
import subprocess
from datetime import timedelta

import boto3
import pytest
from django.utils import timezone

from backups.copies import copy_artifact
from backups.keys import KeyConfig
from backups.models import Artifact, ArtifactCopy, StorageLocation
from compliance.models import AuditEvent
from drpanel.permissions import Denied
from restores import materialize, verification_levels, verifications
from restores.models import SanityCheck, VerificationRun
from tests.loop_support import SHOP_COUNTS, store_artifact, stored_path, take_backup
from tests.restore_support import pg_dump_for_server

pytest_plugins = ["tests.restore_fixtures", "tests.loop_fixtures"]
pytestmark = pytest.mark.django_db


def verify(actor, artifact, level) -> VerificationRun:
    run = verifications.verification_request(actor=actor, artifact=artifact, level=level)
    return verifications.verification_execute(run.pk)


def states(run) -> dict:
    return {r["name"]: r["state"] for r in run.results}


def flip_a_byte(path, where=0.5):
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    path.write_bytes(bytes(data))


# --- materialising ---------------------------------------------------------------------------


def test_it_decrypts_the_primary_copy_into_a_private_temporary_file(full_artifact, temp_dir):
    made = materialize.materialize(full_artifact, run_id="a" * 32)
    try:
        assert made.copy.location.name == "primary" and made.content == "pg_custom"
        assert made.path.parent == temp_dir and made.path.stat().st_mode & 0o777 == 0o600
        assert made.path.read_bytes().startswith(b"PGDMP")
        assert made.stored_sha256 == full_artifact.sha256
        assert made.plaintext_sha256 == full_artifact.plaintext_sha256
    finally:
        materialize.discard(made.path)
    assert list(temp_dir.iterdir()) == []


@pytest.mark.parametrize(("damage", "reason"), [
    ("flip", "ChunkAuthenticationError"),
    ("truncate", "TruncatedArtifactError"),
    ("wrong key", "WrongKeyError"),
    ("other artifact", "ArtifactMismatchError"),
])
def test_a_damaged_artifact_is_refused_and_leaves_no_file(full_artifact, shop_system, temp_dir, settings, damage,
                                                          reason):
    path = stored_path(full_artifact)
    if damage == "flip":
        flip_a_byte(path)
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "wrong key":
        settings.BACKUP_KEYS = KeyConfig(master_keys={"k1": os.urandom(32)}, active_key_id="k1", source="test")
    else:
        other = take_backup(shop_system)
        path.write_bytes(stored_path(other).read_bytes())
    with pytest.raises(materialize.MaterializeError, match=reason):
        materialize.materialize(full_artifact, run_id="b" * 32)
    assert list(temp_dir.iterdir()) == []


def test_bytes_that_do_not_match_the_catalog_are_refused_even_when_they_decrypt(full_artifact, temp_dir):
    Artifact.objects.filter(pk=full_artifact.pk).update(sha256="0" * 64)
    full_artifact.refresh_from_db()
    with pytest.raises(materialize.MaterializeError, match="do not match the catalog"):
        materialize.materialize(full_artifact, run_id="c" * 32)
    assert list(temp_dir.iterdir()) == []


def test_a_damaged_primary_falls_back_to_an_offsite_copy_with_a_matching_checksum(full_artifact, s3_endpoint,
                                                                                   temp_dir):
    bucket = f"offsite-{os.urandom(4).hex()}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    offsite = StorageLocation.objects.create(name="offsite", kind="s3", role="offsite", bucket=bucket,
                                             region="us-east-1", endpoint_url=s3_endpoint)
    primary = StorageLocation.objects.get(role="primary")
    copy_artifact(full_artifact, source=primary, target=offsite)
    flip_a_byte(stored_path(full_artifact))
    refused = []
    made = materialize.materialize(full_artifact, run_id="d" * 32, on_refused=refused.append)
    try:
        assert made.copy.location == offsite
        assert made.attempts == refused and "primary: ChunkAuthenticationError" in refused[0]
    finally:
        materialize.discard(made.path)


def test_copies_known_to_be_damaged_or_unchecked_offsite_are_never_read(full_artifact):
    ArtifactCopy.objects.filter(artifact=full_artifact).update(status=ArtifactCopy.Status.CHECKSUM_MISMATCH)
    with pytest.raises(materialize.MaterializeError, match="no intact copy"):
        materialize.pick_copy(full_artifact)


def test_a_legacy_openssl_plain_sql_gzip_artifact_is_decrypted_and_decompressed(shop_system, shop, settings, temp_dir):
    settings.BACKUP_KEYS = KeyConfig(master_keys=settings.BACKUP_KEYS.master_keys, active_key_id="k1",
                                     legacy_passphrases={"old": "guide passphrase"}, source="test")
    dump = subprocess.run([pg_dump_for_server(), "--dbname", shop], capture_output=True, check=True).stdout
    artifact = store_artifact(shop_system, kind="full", fmt="pg_plain_gzip", plaintext=gzip.compress(dump),
                              encryption="openssl-aes-256-cbc-pbkdf2", legacy_passphrase="guide passphrase")
    made = materialize.materialize(artifact, run_id="e" * 32)
    try:
        assert made.content == "pg_plain" and made.path.read_bytes() == dump
    finally:
        materialize.discard(made.path)


def test_the_stream_raises_at_the_damaged_chunk_so_its_consumer_stops(shop_system, temp_dir):
    artifact = store_artifact(shop_system, kind="full", fmt="pg_custom", plaintext=os.urandom(3 * (1 << 20)))
    flip_a_byte(stored_path(artifact), where=0.9)
    copy = materialize.pick_copy(artifact)
    received = 0
    with pytest.raises(materialize.MaterializeError, match="ChunkAuthenticationError"):
        for chunk in materialize.plaintext_stream(artifact, copy):
            received += len(chunk)
    assert 0 < received < 3 * (1 << 20)


# --- the ladder ------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["checksum", "decrypt", "structure", "restore-test"])
def test_each_level_runs_the_levels_below_it_and_marks_the_artifact(operator, full_artifact, scratch, level):
    run = verify(operator, full_artifact, level)
    assert run.state == "succeeded", run.error
    expected = verifications.LEVELS[: verifications.LEVELS.index(level) + 1]
    assert states(run) == dict.fromkeys(expected, "succeeded")
    assert run.reached_level == level and run.percent == 100 and run.location == "primary"
    assert all(r["duration_ms"] is not None for r in run.results)
    full_artifact.refresh_from_db()
    assert full_artifact.last_verified_level == level and full_artifact.last_verified_at is not None
    assert not any("__restore_" in name for name in scratch.databases()), "the throw-away database is dropped"
    actions = list(AuditEvent.objects.filter(object_id=str(full_artifact.pk)).order_by("seq").values_list(
        "action", flat=True))
    assert actions[-3:] == ["verification.requested", "verification.started", "verification.succeeded"]


def test_the_restore_test_counts_rows_and_runs_the_systems_sanity_checks(operator, full_artifact, staging):
    run = verify(operator, full_artifact, "restore-test")
    data = run.results[-1]["data"]
    assert {c["table"]: c["actual"] for c in data["row_counts"]} == {
        f'"public"."{t}"': n for t, n in SHOP_COUNTS.items()}
    assert [c["name"] for c in data["sanity_checks"]] == ["users exist"] and data["sanity_checks"][0]["ok"]


def test_a_failing_sanity_check_fails_the_restore_test(operator, full_artifact, staging):
    SanityCheck.objects.filter(target=staging).update(expectation="= 5")
    run = verify(operator, full_artifact, "restore-test")
    assert run.state == "failed" and run.reached_level == "structure"
    assert "sanity check" in run.error and "expected = 5, got 300" in run.error


def test_row_counts_that_differ_from_the_manifest_fail_the_restore_test(operator, full_artifact, scratch):
    manifest = full_artifact.manifest
    for table in manifest["tables"]:
        if table["table"] == "orders":
            table["rows"] = 1999
    Artifact.objects.filter(pk=full_artifact.pk).update(manifest=manifest)
    full_artifact.refresh_from_db()
    run = verify(operator, full_artifact, "restore-test")
    assert run.state == "failed" and "2000 rows, the manifest says 1999" in run.error
    assert not any("__restore_" in name for name in scratch.databases())


def test_a_flipped_bit_fails_the_checksum_and_the_decryption(operator, full_artifact):
    flip_a_byte(stored_path(full_artifact))
    run = verify(operator, full_artifact, "decrypt")
    assert states(run) == {"checksum": "failed", "decrypt": "failed"}
    assert run.reached_level == ""
    full_artifact.refresh_from_db()
    assert full_artifact.last_verified_level == "" and full_artifact.last_verified_at is None


def test_a_wrong_key_passes_the_checksum_and_fails_the_decryption(operator, full_artifact, settings):
    settings.BACKUP_KEYS = KeyConfig(master_keys={"k1": os.urandom(32)}, active_key_id="k1", source="test")
    run = verify(operator, full_artifact, "structure")
    assert states(run) == {"checksum": "succeeded", "decrypt": "failed", "structure": "not run"}
    assert "WrongKeyError" in run.error and run.reached_level == "checksum"


def test_a_truncated_artifact_fails_its_checksum(operator, full_artifact):
    path = stored_path(full_artifact)
    path.write_bytes(path.read_bytes()[:1000])
    run = verify(operator, full_artifact, "checksum")
    assert run.state == "failed" and "do not match the catalog" in run.error


def test_a_table_missing_from_the_archive_fails_the_structure_check(operator, full_artifact):
    manifest = full_artifact.manifest
    manifest["tables"].append({"schema": "public", "table": "payments", "rows": 5})
    Artifact.objects.filter(pk=full_artifact.pk).update(manifest=manifest)
    full_artifact.refresh_from_db()
    run = verify(operator, full_artifact, "structure")
    assert run.state == "failed" and "no data for 1 table(s) of the manifest: public.payments" in run.error


def test_a_config_artifact_is_checked_under_the_restore_rules(operator, config_artifact):
    run = verify(operator, config_artifact, "restore-test")
    assert run.state == "succeeded", run.error
    assert "2 files" in run.results[-1]["detail"]


def test_a_plain_sql_dump_cut_short_fails_its_structure_check(operator, shop_system, shop):
    dump = subprocess.run([pg_dump_for_server(), "--dbname", shop], capture_output=True, check=True).stdout
    artifact = store_artifact(shop_system, kind="full", fmt="pg_plain", plaintext=dump[: len(dump) // 2])
    run = verify(operator, artifact, "structure")
    assert run.state == "failed" and "cut short" in run.error
    whole = store_artifact(shop_system, kind="full", fmt="pg_plain", plaintext=dump)
    assert verify(operator, whole, "restore-test").state == "succeeded"


# --- requests and schedules ------------------------------------------------------------------


def test_a_second_click_returns_the_verification_already_queued(operator, full_artifact):
    first = verifications.verification_request(actor=operator, artifact=full_artifact, level="decrypt")
    again = verifications.verification_request(actor=operator, artifact=full_artifact, level="decrypt")
    assert again.pk == first.pk and VerificationRun.objects.count() == 1


def test_auditors_cannot_start_a_verification_and_it_is_audited_by_the_caller(auditor, full_artifact):
    with pytest.raises(Denied):
        verifications.verification_request(actor=auditor, artifact=full_artifact, level="decrypt")
    assert not VerificationRun.objects.exclude(trigger="backup").exists(), "only the backup's own verification"


def test_unknown_levels_and_deleted_artifacts_are_refused(operator, full_artifact):
    with pytest.raises(verifications.VerificationError, match="unknown level"):
        verifications.verification_request(actor=operator, artifact=full_artifact, level="deep")
    Artifact.objects.filter(pk=full_artifact.pk).update(status="deleted")
    full_artifact.refresh_from_db()
    with pytest.raises(verifications.VerificationError, match="nothing to verify"):
        verifications.verification_request(actor=operator, artifact=full_artifact, level="checksum")


def test_the_daily_schedule_verifies_each_systems_newest_full_at_decrypt(shop_system, full_artifact):
    older = take_backup(shop_system)
    Artifact.objects.filter(pk=older.pk).update(created_at=timezone.now() - timedelta(days=1))
    for automatic in VerificationRun.objects.filter(trigger="backup"):  # each backup's own, done by now
        verifications.verification_execute(automatic.pk)
    [run] = verifications.schedule_daily()
    assert (run.artifact_id, run.level, run.trigger, run.requested_by) == (full_artifact.pk, "decrypt", "schedule",
                                                                            None)


def test_the_weekly_schedule_restore_tests_a_random_full_of_the_last_30_days(shop_system, full_artifact):
    old = take_backup(shop_system)
    Artifact.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=40))
    picked = {verifications.schedule_weekly(rng=random.Random(seed))[0].artifact_id for seed in range(3)}
    assert picked == {full_artifact.pk}
    assert VerificationRun.objects.exclude(trigger="backup").get().level == "restore-test"


def test_the_verification_server_names_throwaway_databases_after_its_base(settings, verify_server, full_artifact):
    assert verification_levels.verify_server_url() == verify_server
    settings.VERIFY_DATABASE_REF = None
    assert verification_levels.verify_server_url().rsplit("/", 1)[1].endswith("_verify")


def test_the_manifest_counts_are_quoted_exactly(full_artifact):
    counts = verification_levels.manifest_counts(full_artifact)
    assert counts == {f'"public"."{t}"': n for t, n in SHOP_COUNTS.items()}
    assert verification_levels.quoted_table('we"ird', "a.b") == '"we""ird"."a.b"'


def test_a_restore_test_of_a_gzip_plain_dump_works_end_to_end(operator, shop_system, shop):
    dump = subprocess.run([pg_dump_for_server(), "--dbname", shop], capture_output=True, check=True).stdout
    artifact = store_artifact(shop_system, kind="full", fmt="pg_plain_gzip", plaintext=gzip.compress(dump),
                              manifest={"tables": [{"schema": "public", "table": t, "rows": n}
                                                   for t, n in SHOP_COUNTS.items()]})
    run = verify(operator, artifact, "restore-test")
    assert run.state == "succeeded", run.error
    assert "all 3 tables" in run.results[-1]["detail"]


def test_without_room_to_decrypt_the_structure_level_says_why_after_a_streaming_pass(operator, full_artifact,
                                                                                     settings, temp_dir):
    settings.RESTORE_TEMP_HEADROOM_MB = 10 ** 9
    run = verify(operator, full_artifact, "restore-test")
    assert states(run) == {"checksum": "succeeded", "decrypt": "succeeded", "structure": "failed",
                           "restore-test": "not run"}
    assert "not enough temporary disk" in run.error and run.reached_level == "decrypt"
    assert list(temp_dir.iterdir()) == []
