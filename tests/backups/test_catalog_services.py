"""Approvals, deletion, key rotation, inventory sync, retention and schedules of the catalog."""

import gzip
import io
import subprocess
from datetime import timedelta

import pytest
from django.utils import timezone

from backups import formats
from backups.deletion import artifact_delete, artifact_delete_approve, artifact_delete_request
from backups.errors import BackupError
from backups.inventory import inventory_sync_execute, legacy_match
from backups.keyrotation import artifact_rewrap
from backups.keys import KeyConfig
from backups.models import Artifact, ArtifactCopy, BackupRun, InventoryRun, StorageLocation
from backups.retention import retention_apply, retention_plan
from backups.runs import backup_request, backup_run_execute
from backups.schedules import due_backups, enqueue_due_backups
from compliance.models import AuditEvent
from drpanel.approvals import ApprovalError, approval_expire_due, approval_reject
from drpanel.models import Approval
from drpanel.passwords import PasswordRefused
from drpanel.permissions import Denied
from restores.models import VerificationRun
from tests.backup_fixtures import *  # noqa: F403 - fixtures
from tests.backup_fixtures import keyring_of
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def artifact(operator, system, primary, offsite, test_keys):
    run = backup_run_execute(backup_request(actor=operator, system=system, kind="full").id)
    assert run.state == BackupRun.State.SUCCEEDED, run.error
    return run.artifact


def make_artifact(system, created_at, kind="full", **extra):
    return Artifact.objects.create(system=system, kind=kind, format="pg_custom", status="available",
                                   created_at=created_at, storage_key=f"k/{created_at.isoformat()}-{kind}", **extra)


# --- deletion needs a manager's approval ---------------------------------------------------------

def test_a_manual_deletion_waits_for_a_manager_and_then_removes_every_copy(artifact, operator, manager):
    approval = artifact_delete_request(actor=operator, artifact=artifact, reason="test data")
    assert approval.state == Approval.State.PENDING
    artifact.refresh_from_db()
    assert artifact.status == Artifact.Status.AVAILABLE
    artifact_delete_approve(actor=manager, approval=approval, password=PASSWORD)
    artifact.refresh_from_db()
    approval.refresh_from_db()
    assert artifact.status == Artifact.Status.DELETED and approval.state == Approval.State.CONSUMED
    assert set(artifact.copies.values_list("status", flat=True)) == {ArtifactCopy.Status.DELETED}
    for copy in artifact.copies.select_related("location"):
        assert list(copy.location.backend().list("drpanel/")) == []
    event = AuditEvent.objects.get(action="artifact.deleted")
    assert event.details["approved_by"] == "manager" and event.details["requested_by"] == "operator"
    assert {"approval.requested", "approval.approved", "approval.consumed"} <= set(
        AuditEvent.objects.values_list("action", flat=True))


def test_nobody_approves_their_own_deletion(artifact, manager):
    approval = artifact_delete_request(actor=manager, artifact=artifact, reason="mine")
    with pytest.raises(Denied, match="own request"):
        artifact_delete_approve(actor=manager, approval=approval, password=PASSWORD)


def test_only_managers_approve_deletions(artifact, operator, admin):
    approval = artifact_delete_request(actor=operator, artifact=artifact, reason="x")
    with pytest.raises(Denied):
        artifact_delete_approve(actor=admin, approval=approval, password=PASSWORD)
    assert Artifact.objects.get(pk=artifact.pk).status == Artifact.Status.AVAILABLE


def test_an_approval_needs_the_password_again(artifact, operator, manager):
    approval = artifact_delete_request(actor=operator, artifact=artifact, reason="x")
    with pytest.raises(PasswordRefused, match="password"):
        artifact_delete_approve(actor=manager, approval=approval, password="wrong")
    approval.refresh_from_db()
    assert approval.state == Approval.State.PENDING
    assert AuditEvent.objects.filter(action="approval.password_refused").count() == 1


def test_an_approval_is_void_once_the_artifact_changed(artifact, operator, manager):
    approval = artifact_delete_request(actor=operator, artifact=artifact, reason="x")
    Artifact.objects.filter(pk=artifact.pk).update(sha256="0" * 64)
    with pytest.raises(ApprovalError, match="changed"):
        artifact_delete_approve(actor=manager, approval=approval, password=PASSWORD)
    assert Artifact.objects.get(pk=artifact.pk).status == Artifact.Status.AVAILABLE


def test_an_expired_approval_cannot_be_approved(artifact, operator, manager):
    approval = artifact_delete_request(actor=operator, artifact=artifact, reason="x")
    Approval.objects.filter(pk=approval.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(ApprovalError, match="expired"):
        artifact_delete_approve(actor=manager, approval=approval, password=PASSWORD)
    assert Approval.objects.get(pk=approval.pk).state == Approval.State.EXPIRED


def test_the_expiry_job_expires_what_was_left_open(artifact, operator):
    approval = artifact_delete_request(actor=operator, artifact=artifact, reason="x")
    Approval.objects.filter(pk=approval.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    assert approval_expire_due() == 1
    assert approval_expire_due() == 0
    assert Approval.objects.get(pk=approval.pk).state == Approval.State.EXPIRED
    assert AuditEvent.objects.filter(action="approval.expired").count() == 1


def test_a_rejection_is_final(artifact, operator, manager):
    approval = artifact_delete_request(actor=operator, artifact=artifact, reason="x")
    approval_reject(actor=manager, approval=approval, may_approve=lambda u: True, note="keep it")
    with pytest.raises(ApprovalError):
        artifact_delete_approve(actor=UserFactory(username="m2", role="Manager"), approval=approval,
                                password=PASSWORD)


def test_deletion_without_approval_is_refused(artifact, admin):
    with pytest.raises(Denied):
        artifact_delete(actor=admin, artifact=artifact)


def test_nothing_is_deleted_while_a_restore_of_the_system_runs(artifact, operator, manager, settings):
    settings.BACKUP_RESTORE_RUNNING_HOOK = "tests.backups.test_catalog_services.always_restoring"
    approval = artifact_delete_request(actor=operator, artifact=artifact, reason="x")
    with pytest.raises(BackupError, match="restore"):
        artifact_delete_approve(actor=manager, approval=approval, password=PASSWORD)
    assert Artifact.objects.get(pk=artifact.pk).status == Artifact.Status.AVAILABLE


def always_restoring(system):
    return True


# --- key rotation ------------------------------------------------------------------------------

def test_a_rotation_rewraps_every_copy_and_updates_the_manifest(artifact, admin, test_keys, settings):
    before = artifact.sha256
    artifact_rewrap(actor=admin, artifact=artifact, to_key_id="k2")
    artifact.refresh_from_db()
    assert artifact.key_id == "k2" and artifact.sha256 != before
    assert artifact.manifest["rewrapped"][0]["from_key_id"] == "k1"
    assert artifact.manifest["sha256"] == artifact.sha256
    only_k2 = keyring_of({"k2": test_keys["k2"]}, active="k2")
    for copy in artifact.copies.select_related("location"):
        assert copy.status == ArtifactCopy.Status.OK and copy.sha256_seen == artifact.sha256
        with copy.location.backend().open_read(copy.key) as src:
            result = formats.verify_stream(src, artifact_id=artifact.id, keyring=only_k2)
        assert result.plaintext_sha256 == artifact.plaintext_sha256
    event = AuditEvent.objects.get(action="artifact.rewrapped")
    assert event.details["previous_sha256"] == before and event.actor_username == "admin"


def test_operators_cannot_rotate_keys(artifact, operator):
    with pytest.raises(Denied):
        artifact_rewrap(actor=operator, artifact=artifact, to_key_id="k2")


# --- inventory sync -----------------------------------------------------------------------------

def sync():
    run = InventoryRun.objects.create()
    return inventory_sync_execute(run.id)


def test_the_sync_marks_missing_and_size_mismatched_copies(artifact, primary, offsite):
    offsite.backend().delete(artifact.storage_key)
    path = primary.backend().root / artifact.storage_key
    path.write_bytes(path.read_bytes() + b"junk")
    run = sync()
    copies = {c.location.name: c.status for c in artifact.copies.select_related("location")}
    assert copies == {"primary": "size_mismatch", "offsite": "missing"}
    artifact.refresh_from_db()
    assert artifact.status == Artifact.Status.MISSING
    assert artifact.offsite_verified_at is None
    assert run.summary["totals"]["missing"] == 1 and run.summary["totals"]["mismatched"] == 1


def test_the_sync_reports_extra_objects_and_records_cloud_sync(artifact, offsite):
    offsite.backend().put_bytes("stray/file.bin", b"?")
    run = sync()
    assert "stray/file.bin" in run.summary["locations"]["offsite"]["extra"]
    assert run.summary["cloud_sync_verified"] == 1
    assert Artifact.objects.get(pk=artifact.pk).offsite_verified_at is not None


def test_the_sync_rebuilds_the_catalog_from_manifests(artifact):
    artifact_id, sha = artifact.id, artifact.sha256
    ArtifactCopy.objects.all().delete()
    VerificationRun.objects.all().delete()  # the new full's automatic verification refers to it
    Artifact.objects.all().delete()
    run = sync()
    rebuilt = Artifact.objects.get(pk=artifact_id)
    assert rebuilt.source == Artifact.Source.SYNC and rebuilt.sha256 == sha
    assert set(rebuilt.copies.values_list("status", flat=True)) == {"ok"}
    assert run.summary["totals"]["catalogued"] == 2


def test_the_sync_imports_the_old_guides_layout(system, primary, settings, tmp_path):
    settings.BACKUP_KEYS = KeyConfig(master_keys={}, legacy_passphrases={"guide": "supersecret"})
    sql = gzip.compress(b"-- PostgreSQL database dump\nCREATE TABLE users (id int);\n" * 100)
    (tmp_path / "db.sql.gz").write_bytes(sql)
    encrypted = subprocess.run(["openssl", "enc", "-aes-256-cbc", "-pbkdf2", "-salt", "-in",
                                str(tmp_path / "db.sql.gz"), "-pass", "pass:supersecret"],
                               check=True, capture_output=True).stdout
    backend = primary.backend()
    backend.put_bytes("chatbotdysa-backups/full_20250921_031500/database.sql.gz.enc", encrypted)
    backend.put_bytes("chatbotdysa-backups/full_20250922_031500/database.sql.gz", sql)
    backend.put_bytes("otherapp-backups/full_20250922_031500/database.sql.gz", sql)
    run = sync()
    imported = Artifact.objects.filter(source=Artifact.Source.LEGACY).order_by("created_at")
    assert [(a.encryption, a.format, a.key_id) for a in imported] == [
        ("openssl-aes-256-cbc-pbkdf2", "pg_plain_gzip", "legacy:guide"), ("none", "pg_plain_gzip", "")]
    assert imported[0].created_at.isoformat() == "2025-09-21T03:15:00+00:00"
    assert any("otherapp" in line for line in run.summary["locations"]["primary"]["importable"])
    out = io.BytesIO()
    with backend.open_read(imported[0].storage_key) as src:
        formats.openssl_decrypt_stream(src, out, passphrase="supersecret")
    assert out.getvalue() == sql
    assert sync().summary["totals"]["imported"] == 0


def test_the_legacy_layout_is_recognised_by_name():
    match = legacy_match("home/chatbotdysa-backups/20250101_120000_full/db.dump")
    assert match["system"] == "chatbotdysa" and match["kind"] == "full"
    assert legacy_match("chatbotdysa-backups/latest/db.dump") is None


def test_an_unreachable_location_leaves_its_copies_alone(artifact, offsite):
    StorageLocation.objects.filter(pk=offsite.pk).update(bucket="gone-bucket")
    run = sync()
    assert run.summary["locations"]["offsite"]["error"]
    assert artifact.copies.get(location=offsite).status == ArtifactCopy.Status.OK


# --- retention -----------------------------------------------------------------------------------

def test_retention_keeps_last_n_and_the_newest_per_day_week_month(system):
    system.keep_last, system.keep_daily, system.keep_weekly, system.keep_monthly = 2, 3, 0, 0
    system.save()
    now = timezone.now().replace(hour=12)
    artifacts = [make_artifact(system, now - timedelta(hours=h)) for h in (0, 1, 2, 24, 25, 48, 72, 96)]
    plan = retention_plan(system)
    kept = {a.pk for a in artifacts if a.pk in plan.keep}
    assert kept == {artifacts[0].pk, artifacts[1].pk, artifacts[3].pk, artifacts[5].pk}


def test_retention_never_deletes_the_newest_verified_full(system):
    system.keep_last, system.keep_daily, system.keep_weekly, system.keep_monthly = 1, 0, 0, 0
    system.save()
    now = timezone.now()
    old_verified = make_artifact(system, now - timedelta(days=30), last_verified_level="decrypt",
                                 last_verified_at=now)
    make_artifact(system, now)
    middle = make_artifact(system, now - timedelta(days=3))
    plan = retention_plan(system)
    assert "newest verified full" in plan.keep[old_verified.pk]
    assert [a.pk for a in plan.delete] == [middle.pk]


def test_retention_deletes_through_the_audited_path_and_waits_for_restores(system, settings):
    system.keep_last, system.keep_daily, system.keep_weekly, system.keep_monthly = 1, 0, 0, 0
    system.save()
    now = timezone.now()
    make_artifact(system, now)
    old = make_artifact(system, now - timedelta(days=2))
    settings.BACKUP_RESTORE_RUNNING_HOOK = "tests.backups.test_catalog_services.always_restoring"
    assert retention_apply(system) == 0
    assert AuditEvent.objects.filter(action="retention.skipped").exists()
    settings.BACKUP_RESTORE_RUNNING_HOOK = None
    assert retention_apply(system) == 1
    old.refresh_from_db()
    assert old.status == Artifact.Status.DELETED
    assert AuditEvent.objects.get(action="artifact.deleted").details["why"] == "retention"


# --- schedules ----------------------------------------------------------------------------------

def test_the_schedule_queues_what_the_policy_says_is_due(system, primary):
    assert set(k for _, k in due_backups()) == {"full", "config"}
    make_artifact(system, timezone.now() - timedelta(hours=1))
    assert [k for _, k in due_backups()] == ["config"]
    runs = enqueue_due_backups()
    assert [(r.kind, r.trigger, r.requested_by) for r in runs] == [("config", "schedule", None)]
    assert due_backups() == []


def test_a_failed_scheduled_backup_is_retried_after_the_delay(system, settings):
    system.config_paths = []
    system.save()
    run = BackupRun.objects.create(system=system, kind="full", state="failed", trigger="schedule")
    assert due_backups() == []
    BackupRun.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=31))
    assert [k for _, k in due_backups()] == ["full"]


def test_a_system_with_schedules_off_is_left_alone(system):
    system.schedule_enabled = False
    system.save()
    assert due_backups() == []


@pytest.mark.django_db(transaction=True)
def test_two_managers_approving_at_once_leave_one_decision(system, operator):
    import threading

    from django.db import connection as thread_connection

    from drpanel.approvals import approval_approve

    artifact = make_artifact(system, timezone.now())
    approval = artifact_delete_request(actor=operator, artifact=artifact, reason="race")
    managers = [UserFactory(username=f"race-manager-{n}", role="Manager") for n in range(2)]
    barrier = threading.Barrier(2)
    outcomes = []

    def approve(manager):
        try:
            barrier.wait()
            approval_approve(actor=manager, approval=Approval.objects.get(pk=approval.pk), password=PASSWORD,
                             params={"artifact": str(artifact.id), "sha256": artifact.sha256,
                                     "storage_key": artifact.storage_key}, may_approve=lambda u: True)
            outcomes.append("approved")
        except ApprovalError as exc:
            outcomes.append(str(exc))
        finally:
            thread_connection.close()

    threads = [threading.Thread(target=approve, args=(m,)) for m in managers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["approved", "this approval is approved, not pending"]
    assert AuditEvent.objects.filter(action="approval.approved").count() == 1
