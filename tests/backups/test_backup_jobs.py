"""Backup jobs: real pg_dump into the primary location, copies off-site re-checked, manifests, failures."""

import io
import json
import subprocess
import tarfile

import pytest

from backups import formats, pgtools
from backups.errors import BackupError
from backups.models import Artifact, ArtifactCopy, BackupRun
from backups.runs import backup_request, backup_run_execute
from backups.storage import manifest_key
from compliance.models import AuditEvent
from drpanel import pgbin
from tests.backup_fixtures import *  # noqa: F403 - fixtures
from tests.backup_fixtures import keyring_of

pytestmark = pytest.mark.django_db


def decrypt(artifact: Artifact, keys) -> bytes:
    location = artifact.copies.get(location__role="primary").location
    out = io.BytesIO()
    with location.backend().open_read(artifact.storage_key) as src:
        formats.decrypt_stream(src, out, artifact_id=artifact.id, keyring=keyring_of(keys))
    return out.getvalue()


def test_a_full_backup_dumps_encrypts_and_verifies_the_offsite_copy(operator, system, primary, offsite, test_keys,
                                                                     tmp_path):
    run = backup_request(actor=operator, system=system, kind="full")
    assert run.state == BackupRun.State.QUEUED
    run = backup_run_execute(run.id)
    assert run.state == BackupRun.State.SUCCEEDED, run.error
    assert run.percent == 100
    assert [s["name"] for s in run.steps] == ["connect", "roles", "dump and encrypt", "copy to offsite"]
    assert [s["state"] for s in run.steps] == ["succeeded"] * 4
    artifact = run.artifact
    assert artifact.status == Artifact.Status.AVAILABLE
    assert artifact.format == "pg_custom" and artifact.key_id == "k1"
    assert artifact.offsite_verified_at is not None
    copies = {c.location.name: c for c in artifact.copies.select_related("location")}
    assert {name: c.status for name, c in copies.items()} == {"primary": "ok", "offsite": "ok"}
    assert copies["offsite"].sha256_seen == artifact.sha256
    manifest = artifact.manifest
    assert {(t["table"], t["rows"]) for t in manifest["tables"]} == {("users", 300), ("orders", 2000)}
    assert "snapshot" in manifest["row_counts"]
    assert manifest["postgres"]["pg_dump_major"] >= manifest["postgres"]["server_version_num"] // 10000
    assert manifest["sha256"] == artifact.sha256 and manifest["plaintext_sha256"] == artifact.plaintext_sha256
    stored = json.loads(offsite.backend().get_bytes(manifest_key(artifact.storage_key)))
    assert stored["artifact_id"] == str(artifact.id)
    dump = tmp_path / "dump.pgc"
    dump.write_bytes(decrypt(artifact, test_keys))
    pg_restore = pgbin.find_tool("pg_restore", manifest["postgres"]["pg_dump_major"]).path
    listing = subprocess.run([pg_restore, "--list", str(dump)], capture_output=True, text=True, check=True).stdout
    assert "TABLE DATA public orders" in listing
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"backup.requested", "backup.started", "artifact.copied", "backup.succeeded"} <= actions


@pytest.mark.parametrize("level", [1, 6])
def test_a_full_backup_dumps_at_the_configured_compression(operator, system, primary, test_keys, tmp_path, settings,
                                                          level):
    settings.BACKUP_COMPRESSION = level
    run = backup_run_execute(backup_request(actor=operator, system=system, kind="full").id)
    assert run.state == BackupRun.State.SUCCEEDED, run.error
    manifest = run.artifact.manifest
    assert manifest["postgres"]["compression"] == f"gzip:{level}"
    dump = tmp_path / "dump.pgc"
    dump.write_bytes(decrypt(run.artifact, test_keys))
    pg_restore = pgbin.find_tool("pg_restore", manifest["postgres"]["pg_dump_major"]).path
    listing = subprocess.run([pg_restore, "--list", str(dump)], capture_output=True, text=True, check=True).stdout
    # pg_restore reads the level pg_dump wrote in the archive's header.
    assert f";     Compression: {level}" in listing.splitlines()


def test_a_second_click_returns_the_run_already_queued(operator, system, primary, test_keys):
    first = backup_request(actor=operator, system=system, kind="full")
    assert backup_request(actor=operator, system=system, kind="full").pk == first.pk
    assert BackupRun.objects.count() == 1


def test_a_config_backup_archives_relative_names_only(operator, system, primary, test_keys):
    run = backup_run_execute(backup_request(actor=operator, system=system, kind="config").id)
    assert run.state == BackupRun.State.SUCCEEDED, run.error
    plain = decrypt(run.artifact, test_keys)
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        names = tar.getnames()
    assert "config/app.env" in names and "config/nested/nginx.conf" in names
    assert not any(n.startswith("/") or ".." in n for n in names)
    assert run.artifact.manifest["config"]["files"] == 2


def test_a_failed_dump_fails_the_run_and_leaves_no_object(operator, system, primary, test_keys, monkeypatch):
    monkeypatch.setenv("DRPANEL_SECRET_TEST_SOURCE_URL", "postgresql://postgres:canary-pw-7731@127.0.0.1:5432/no_such_db")
    run = backup_run_execute(backup_request(actor=operator, system=system, kind="full").id)
    assert run.state == BackupRun.State.FAILED
    assert "no_such_db" in run.error and "canary-pw-7731" not in run.error
    assert list(primary.backend().list()) == []
    event = AuditEvent.objects.get(action="backup.failed")
    assert "canary-pw-7731" not in json.dumps(event.details)


def test_a_pg_dump_that_dies_midway_marks_the_artifact_failed(operator, system, primary, test_keys, settings,
                                                              tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    script = fake / "pg_dump"
    script.write_text("#!/bin/sh\ncase \"$1\" in --version) echo 'pg_dump (PostgreSQL) 99.0';; "
                      "*) head -c 300000 /dev/urandom; echo 'pg_dump: error: connection lost' >&2; exit 1;; esac\n")
    script.chmod(0o755)
    settings.PG_BIN_DIR = str(fake)
    run = backup_run_execute(backup_request(actor=operator, system=system, kind="full").id)
    assert run.state == BackupRun.State.FAILED
    assert "pg_dump exited with 1" in run.error and "connection lost" in run.error
    assert Artifact.objects.get().status == Artifact.Status.FAILED
    assert list(primary.backend().list()) == []


def test_no_fitting_pg_dump_is_a_clear_error(settings):
    settings.PG_BIN_DIR = None
    with pytest.raises(pgtools.ToolError, match="no pg_dump of version 99 or newer"):
        pgbin.find_tool("pg_dump", 99)


def test_the_closest_pg_dump_at_least_the_server_version_is_chosen(settings):
    settings.PG_BIN_DIR = None
    tools = [pgbin.tool_version(d + "/pg_dump") for d in pgbin.candidate_dirs()]
    majors = sorted({t.major for t in tools if t})
    chosen = pgbin.find_tool("pg_dump", majors[0])
    assert chosen.major == majors[0]


def test_auditors_cannot_start_backups(auditor, system, primary):
    from drpanel.permissions import Denied

    with pytest.raises(Denied):
        backup_request(actor=auditor, system=system, kind="full")


def test_incremental_backups_are_not_made_by_the_panel(operator, system):
    with pytest.raises(BackupError, match="external tool"):
        backup_request(actor=operator, system=system, kind="incremental")


def test_an_unreachable_offsite_location_fails_its_step_not_the_backup(operator, system, primary, test_keys):
    from backups.models import StorageLocation

    StorageLocation.objects.create(name="gone", kind="s3", role="offsite", bucket="nope",
                                   endpoint_url="http://127.0.0.1:9", region="us-east-1")
    run = backup_run_execute(backup_request(actor=operator, system=system, kind="full").id)
    assert run.state == BackupRun.State.SUCCEEDED
    assert [s["state"] for s in run.steps][-1] == "failed"
    assert run.artifact.offsite_verified_at is None
    assert run.artifact.copies.get(location__name="gone").status == ArtifactCopy.Status.MISSING
    assert AuditEvent.objects.get(action="artifact.copied", outcome="failure").details["location"] == "gone"


def test_the_backup_command_runs_a_backup_inline(system, primary, test_keys):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("backup", "chatbotdysa", "--kind", "config", "--inline", stdout=out)
    assert "succeeded" in out.getvalue()
    assert Artifact.objects.get().kind == "config"
    out = StringIO()
    call_command("backup_keys", "list", stdout=out)
    assert out.getvalue().splitlines() == ["k1  (active)", "k2"]
    call_command("inventory_sync", stdout=out)
    assert "succeeded" in out.getvalue()


def test_the_reaper_fails_runs_that_can_no_longer_finish(operator, system, primary, redis_conn):
    from datetime import timedelta

    from django.utils import timezone

    from backups.runs import backup_runs_reap

    long_ago = timezone.now() - timedelta(hours=1)
    dead = BackupRun.objects.create(system=system, kind="full", state="running", heartbeat_at=long_ago)
    lost = BackupRun.objects.create(system=system, kind="config", created_at=long_ago, job_id="no-such-job")
    fresh = BackupRun.objects.create(system=system, kind="config")
    assert backup_runs_reap() == 2
    dead.refresh_from_db()
    lost.refresh_from_db()
    fresh.refresh_from_db()
    assert dead.state == lost.state == "failed" and "stopped reporting" in dead.error and "lost" in lost.error
    assert fresh.state == "queued"
    assert backup_runs_reap() == 0
