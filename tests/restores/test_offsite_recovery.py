"""Continuous protection off-site: base backups and WAL batches in moto's S3 (over HTTP), encrypted, and a
point in time recovered from them alone, against a real protected server, real Barman and real WAL.

Each test takes its own base backup and ships to its own bucket; the module shares the server and
Barman's home (``tests.continuous_support``).
"""

import gzip
import io
import uuid
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from backups import formats
from backups import offsite as shipping
from backups.keys import get_keyring
from backups.models import Artifact, BackupRun, OffsitePackage, OffsiteRun, System
from backups.offsite_catalog import offsite_check, wal_coverage
from backups.offsite_list import list_key
from backups.runs import backup_request, backup_run_execute
from compliance.models import AuditEvent
from restores.offsite_recovery import OffsiteRecoveryError, offsite_materialize, recovered_from_offsite
from restores.pitr import RecoveryPoint, scratch_root, started
from tests import continuous_support
from tests.continuous_support import URL_VARIABLE, catalog_reaches, quiet_second, segment_of_switch, streams

pytest_plugins = ["tests.backup_fixtures", "tests.restore_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.django_db]

barman_home = continuous_support.barman_home
server = continuous_support.server
_barman_settings = continuous_support.barman_settings


@pytest.fixture
def shop(db):
    return System.objects.create(name="shop", database_ref=f"env:{URL_VARIABLE}", continuous_enabled=True)


@pytest.fixture
def s3(s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


def base_backup(system, actor) -> Artifact:
    run = backup_run_execute(backup_request(actor=actor, system=system, kind="base").id)
    assert run.state == BackupRun.State.SUCCEEDED, run.error
    return run.artifact


def ship(system, batch_segments: int = 2) -> OffsiteRun:
    """Execute the off-site run a base backup or the tick queued (the job's body, here)."""
    run = OffsiteRun.objects.get(system=system, state=OffsiteRun.State.QUEUED)
    run = shipping.offsite_run_execute(run.id, batch_segments=batch_segments)
    assert run.state == OffsiteRun.State.SUCCEEDED, run.error
    return run


def objects(s3, location) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=location.bucket, Prefix=location.prefix).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=location.bucket, Key=o["Key"])["Body"].read() for o in listed}


def insert(server, item: str) -> datetime:
    server.execute("INSERT INTO orders (item) VALUES (%s)", item, dbname="shop")
    return server.execute("SELECT clock_timestamp()")[0][0]


def prepare_shop(server) -> None:
    server.execute("DROP DATABASE IF EXISTS shop")
    server.execute("CREATE DATABASE shop")
    server.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)", dbname="shop")


def test_a_point_in_time_comes_back_from_the_offsite_copy_alone_and_the_objects_are_unreadable_without_the_key(
        shop, server, barman_home, offsite, test_keys, operator, admin, s3, tmp_path):
    prepare_shop(server)
    streams(server)
    base = base_backup(shop, operator)
    queued = OffsiteRun.objects.get(system=shop)
    assert queued.state == OffsiteRun.State.QUEUED and base.manifest["backup_id"] in queued.reason
    assert AuditEvent.objects.filter(action="offsite.requested", object_id=str(shop.pk)).exists()
    marker = f"card-{uuid.uuid4().hex}"
    insert(server, "before-1")
    segment_of_switch(server)
    moment = insert(server, marker)
    target = quiet_second()
    assert target > moment
    insert(server, "after")
    catalog_reaches(shop, segment_of_switch(server))

    run = ship(shop, batch_segments=1)

    packages = OffsitePackage.objects.filter(system=shop, location=offsite)
    assert {p.status for p in packages} == {"ok"}
    assert packages.filter(kind="base", backup_id=base.manifest["backup_id"]).count() == 1
    wal = packages.filter(kind="wal")
    assert wal.count() >= 2 and all(p.segments == 1 for p in wal)
    assert run.percent == 100 and run.bytes_done > 0
    assert {s["state"] for s in run.steps} == {"succeeded"}
    assert AuditEvent.objects.filter(action="offsite.package_copied", outcome="success").count() == packages.count()
    assert shipping.pending_wal(shop, offsite) == [] and shipping.pending_bases(shop, offsite) == []
    coverage = wal_coverage(shop, offsite)
    assert coverage[0].first_missing == "" and coverage[0].first <= base.manifest["base_backup_information"][
        "begin_wal"]

    # What is stored off-site never shows the row; decrypted with the key, one WAL package does.
    stored = objects(s3, offsite)
    # Every package, and the encrypted package list beside them (``backups.offsite_list``).
    assert set(stored) == {offsite.prefix + p.key for p in packages} | {offsite.prefix + list_key(shop.pk)}
    assert not any(marker.encode() in body for body in stored.values())
    plaintexts = []
    for package in wal:
        out = tmp_path / f"{package.pk}.tar"
        with open(tmp_path / "in", "wb") as handle:
            handle.write(stored[offsite.prefix + package.key])
        with open(tmp_path / "in", "rb") as handle:
            formats.decrypt_to_file(handle, out, artifact_id=package.pk, keyring=get_keyring())
        plaintexts.append(gzip.decompress(out.read_bytes()))
    assert any(marker.encode() in text for text in plaintexts)

    # The data center is gone: Barman's home with it.
    aside = barman_home.with_name(barman_home.name + "-gone")
    barman_home.rename(aside)
    try:
        with recovered_from_offsite(shop, RecoveryPoint.at(target), location=offsite) as copy:
            rows = [r[0] for r in copy.query("SELECT item FROM orders ORDER BY id", dbname="shop")]
            root = copy.data.parent
        with recovered_from_offsite(shop, RecoveryPoint.latest(), location=offsite) as copy:
            latest = [r[0] for r in copy.query("SELECT item FROM orders ORDER BY id", dbname="shop")]
        # The admin's way on a new host: a data directory to start, here started like the panel starts one.
        new_host = scratch_root(shop)  # reachable by the postgres user, unlike pytest's tmp_path
        out = io.StringIO()
        call_command("offsite_recover", "shop", location="offsite", into=str(new_host / "data"), username="admin",
                     time=target.isoformat(), stdout=out)
        assert "verified and decrypted" in out.getvalue() and (new_host / "data.wal" / "wal").is_dir()
        with started(shop, RecoveryPoint.at(target), new_host, user_name="postgres", recover_seconds=0) as copy:
            by_command = [r[0] for r in copy.query("SELECT item FROM orders ORDER BY id", dbname="shop")]
        assert not barman_home.exists(), "the recovery recreated Barman's home"
    finally:
        aside.rename(barman_home)

    assert rows == ["before-1", marker] == by_command
    by_admin = AuditEvent.objects.filter(action="offsite.fetched", actor=admin).get()
    assert by_admin.details["point"] == str(RecoveryPoint.at(target))
    assert latest == ["before-1", marker, "after"]
    assert not root.exists(), "the scratch copy was not removed"
    fetched = AuditEvent.objects.filter(action="offsite.fetched", object_id=str(shop.pk)).first()
    assert fetched.details["base_backup"] == base.manifest["backup_id"] and fetched.details["location"] == "offsite"


def test_a_flipped_bit_in_an_offsite_package_is_refused_before_the_target_is_touched(
        shop, server, offsite, test_keys, operator, s3, tmp_path):
    prepare_shop(server)
    streams(server)
    base_backup(shop, operator)
    insert(server, "kept")
    catalog_reaches(shop, segment_of_switch(server))
    ship(shop)
    package = OffsitePackage.objects.filter(system=shop, location=offsite, kind="wal").order_by("-first_segment")[0]
    full = offsite.prefix + package.key
    body = bytearray(s3.get_object(Bucket=offsite.bucket, Key=full)["Body"].read())
    body[len(body) // 2] ^= 0x01
    s3.put_object(Bucket=offsite.bucket, Key=full, Body=bytes(body))
    target = tmp_path / "target"

    with pytest.raises(OffsiteRecoveryError, match="refused before anything was written") as refused:
        offsite_materialize(shop, offsite, RecoveryPoint.latest(), into=target, work=tmp_path / "work")

    assert package.label in str(refused.value) and "checksum mismatch" in str(refused.value)
    assert not target.exists()
    event = AuditEvent.objects.get(action="offsite.refused", object_id=str(shop.pk))
    assert event.outcome == "failure" and event.details["package"] == str(package.pk)
    assert event.details["what"] == package.label
    assert not AuditEvent.objects.filter(action="offsite.fetched").exists()


def test_the_stored_checksum_matching_a_tampered_package_is_still_refused_by_decryption(
        shop, server, offsite, test_keys, operator, s3, tmp_path):
    prepare_shop(server)
    streams(server)
    base_backup(shop, operator)
    ship(shop)
    package = OffsitePackage.objects.get(system=shop, location=offsite, kind="base")
    full = offsite.prefix + package.key
    body = bytearray(s3.get_object(Bucket=offsite.bucket, Key=full)["Body"].read())
    body[-100] ^= 0x80
    s3.put_object(Bucket=offsite.bucket, Key=full, Body=bytes(body))
    # Someone who can write the catalog too: the checksum agrees, the authenticated encryption does not.
    size, sha = offsite.backend().sha256(package.key)
    OffsitePackage.objects.filter(pk=package.pk).update(size=size, sha256=sha)
    target = tmp_path / "target"

    with pytest.raises(OffsiteRecoveryError, match="ChunkAuthenticationError"):
        offsite_materialize(shop, offsite, RecoveryPoint.latest(), into=target, work=tmp_path / "work")

    assert not target.exists()
    assert AuditEvent.objects.filter(action="offsite.refused", object_id=str(shop.pk)).count() == 1


def test_a_wal_batch_missing_offsite_is_named_and_written_again_while_barman_holds_it(
        shop, server, offsite, test_keys, operator, s3, tmp_path, clients):
    prepare_shop(server)
    streams(server)
    base_backup(shop, operator)
    names = [segment_of_switch(server) for _ in range(3)]
    catalog_reaches(shop, names[-1])
    ship(shop, batch_segments=1)
    lost = OffsitePackage.objects.get(system=shop, location=offsite, kind="wal", first_segment=names[1])
    s3.delete_object(Bucket=offsite.bucket, Key=offsite.prefix + lost.key)

    missing = offsite_check(shop, offsite)

    assert [p.pk for p in missing] == [lost.pk]
    lost.refresh_from_db()
    assert lost.status == "missing"
    event = AuditEvent.objects.get(action="offsite.package_missing", object_id=str(shop.pk))
    assert event.details["first_segment"] == names[1] and event.details["what"] == lost.label
    coverage = wal_coverage(shop, offsite)[0]
    assert coverage.first_missing == names[1] and coverage.missing == 1
    assert coverage.missing_batches == [f"{names[1]}–{names[1]}"]
    page = clients["auditor"].get(reverse("backups:system-detail", args=[shop.pk])).content.decode()
    assert f"off-site gap: {names[1]} missing (1)" in page and f"WAL batch {names[1]}–{names[1]} missing" in page
    with pytest.raises(OffsiteRecoveryError, match=f"lacks WAL segment {names[1]}.*{names[1]}–{names[1]} is missing"):
        offsite_materialize(shop, offsite, RecoveryPoint.latest(), into=tmp_path / "target", work=tmp_path / "w")
    assert not (tmp_path / "target").exists()
    assert AuditEvent.objects.get(action="offsite.refused", object_id=str(shop.pk)).details["package"] is None

    # Barman still holds the segment: the tick asks for a run (not within 10 minutes of a failed one), and the run
    # writes it again.
    assert [b.first for b in shipping.pending_wal(shop, offsite)] == [names[1]]
    failed = OffsiteRun.objects.create(system=shop, state="failed", finished_at=timezone.now(), error="S3 was down")
    assert shipping.offsite_tick(shop) is None
    OffsiteRun.objects.filter(pk=failed.pk).update(finished_at=timezone.now() - timedelta(minutes=11))
    run = shipping.offsite_tick(shop)
    assert run is not None and shipping.offsite_tick(shop).pk == run.pk
    ship(shop)
    assert wal_coverage(shop, offsite)[0].first_missing == ""
    assert wal_coverage(shop, offsite)[0].missing_batches == []


def test_without_an_offsite_location_nothing_is_queued(shop, primary):
    assert shipping.offsite_request(shop, reason="a base backup") is None
    assert shipping.offsite_tick(shop) is None
    assert not OffsiteRun.objects.filter(system=shop).exists()


def test_a_run_whose_worker_died_is_failed_and_its_half_written_package_discarded(shop, offsite, s3):
    run = shipping.offsite_request(shop, reason="a base backup")
    assert shipping.offsite_request(shop, reason="the tick").pk == run.pk
    OffsiteRun.objects.filter(pk=run.pk).update(state="running", started_at=datetime.now(UTC),
                                                heartbeat_at=datetime(2026, 1, 1, tzinfo=UTC))
    key = shipping.package_key(shop, uuid.uuid4(), kind="wal", name="half")
    half = OffsitePackage.objects.create(system=shop, location=offsite, run=run, kind="wal", timeline=1,
                                         first_segment="000000010000000000000001",
                                         last_segment="000000010000000000000001", key=key)
    s3.put_object(Bucket=offsite.bucket, Key=offsite.prefix + half.key, Body=b"partial")

    shipping.offsite_tick(shop)

    run.refresh_from_db()
    half.refresh_from_db()
    assert run.state == "failed" and "no heartbeat" in run.error and not run.needs_cleanup
    assert half.status == "failed"
    assert offsite.prefix + half.key not in objects(s3, offsite)
    assert AuditEvent.objects.get(action="offsite.failed", object_id=str(shop.pk)).details["run"] == str(run.pk)



def test_recovering_from_offsite_by_command_is_for_admins_and_a_refusal_is_audited(shop, offsite, operator, admin,
                                                                                 tmp_path):
    with pytest.raises(CommandError, match="only admins"):
        call_command("offsite_recover", "shop", location="offsite", into=str(tmp_path / "d"), username="operator")
    denied = AuditEvent.objects.get(action="access.denied", object_id=str(shop.pk))
    assert denied.actor == operator and denied.details["via"] == "manage.py offsite_recover"

    with pytest.raises(CommandError, match="holds no base backup of shop"):
        call_command("offsite_recover", "shop", location="offsite", into=str(tmp_path / "d"), username="admin")
    assert AuditEvent.objects.get(action="offsite.refused", object_id=str(shop.pk)).actor == admin
    assert not (tmp_path / "d").exists()

    with pytest.raises(CommandError, match="--time"):
        call_command("offsite_recover", "shop", location="offsite", into=str(tmp_path / "d"), username="admin",
                     time="2026-12-03 10:00")
