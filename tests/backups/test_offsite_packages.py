"""Off-site packages of continuous protection without Barman: written from segment files to moto's S3 (over
HTTP), re-wrapped by a key rotation, failed cleanly when the location refuses, and known to the inventory.

The segment files here are random bytes named like segments: the packaging does not read WAL, it moves it.
"""

import gzip
import io
import os
import tarfile

import boto3
import pytest

from backups import formats
from backups.inventory import _sync_location
from backups.keyrotation import key_rotation_execute
from backups.keys import Keyring
from backups.models import OffsitePackage, StorageLocation, System
from backups.offsite import WalBatch, write_wal
from compliance.models import AuditEvent
from restores.offsite_recovery import OffsiteRecoveryError, _unpack, choose
from restores.pitr import RecoveryPoint

pytest_plugins = ["tests.backup_fixtures"]
pytestmark = pytest.mark.django_db

NAMES = ["000000010000000000000007", "000000010000000000000008"]


@pytest.fixture
def shop(db):
    return System.objects.create(name="shop", database_ref="env:DRPANEL_SECRET_UNUSED", continuous_enabled=True)


@pytest.fixture
def batch(tmp_path):
    members = []
    for name in NAMES:
        (tmp_path / name).write_bytes(os.urandom(4096))
        members.append((tmp_path / name, name))
    return WalBatch(timeline=1, first=NAMES[0], last=NAMES[-1], members=members)


def stored(location, package) -> bytes:
    return location.backend().get_bytes(package.key)


def unpacked(body: bytes, package, keys: dict) -> dict[str, bytes]:
    out = io.BytesIO()
    formats.decrypt_stream(io.BytesIO(body), out, artifact_id=package.pk, keyring=Keyring.from_keys(keys))
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(out.getvalue())), mode="r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_a_wal_batch_is_written_encrypted_and_re_read_and_holds_its_segments(shop, offsite, test_keys, batch):
    package = write_wal(shop, offsite, batch)

    assert package.status == "ok" and package.segments == 2 and package.key_id == "k1"
    assert (package.first_segment, package.last_segment, package.timeline) == (NAMES[0], NAMES[1], 1)
    body = stored(offsite, package)
    assert len(body) == package.size and body.startswith(formats.MAGIC)
    assert not any(path.read_bytes()[:64] in body for path, _ in batch.members)
    assert unpacked(body, package, test_keys) == {name: path.read_bytes() for path, name in batch.members}
    event = AuditEvent.objects.get(action="offsite.package_copied", object_id=str(shop.pk))
    assert event.outcome == "success" and event.details["what"] == f"WAL batch {NAMES[0]}–{NAMES[1]}"


def test_a_key_rotation_re_wraps_the_offsite_packages_too(shop, offsite, test_keys, batch):
    package = write_wal(shop, offsite, batch)

    result = key_rotation_execute("k2")

    package.refresh_from_db()
    assert result["failed"] == [] and result["rewrapped"] == 1
    assert package.key_id == "k2" and package.status == "ok"
    body = stored(offsite, package)
    assert len(body) == package.size
    # The old key alone no longer opens it; the new one alone does.
    assert unpacked(body, package, {"k2": test_keys["k2"]})[NAMES[0]] == batch.members[0][0].read_bytes()
    with pytest.raises(formats.UnknownKeyIdError):
        unpacked(body, package, {"k1": test_keys["k1"]})
    event = AuditEvent.objects.get(action="offsite.package_rewrapped", object_id=str(shop.pk))
    assert (event.details["from_key_id"], event.details["to_key_id"]) == ("k1", "k2")


def test_a_location_that_refuses_the_write_leaves_a_failed_audited_package_and_nothing_there(
        shop, s3_endpoint, test_keys, batch):
    gone = StorageLocation.objects.create(name="gone", kind="s3", role="offsite", bucket="no-such-bucket-here",
                                          region="us-east-1", endpoint_url=s3_endpoint)

    package = write_wal(shop, gone, batch)

    assert package.status == "failed" and package.error
    event = AuditEvent.objects.get(action="offsite.package_copied", object_id=str(shop.pk))
    assert event.outcome == "failure" and event.details["status"] == "failed"


def test_a_segment_gone_while_packing_fails_the_package_and_removes_what_was_written(
        shop, offsite, test_keys, batch, s3_endpoint):
    batch.members[1][0].unlink()

    package = write_wal(shop, offsite, batch)

    assert package.status == "failed" and NAMES[1] in package.error
    listed = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=offsite.bucket)
    assert listed.get("KeyCount", 0) == 0


def test_the_inventory_knows_the_packages_and_lists_a_planted_object_beside_them_as_extra(
        shop, offsite, test_keys, batch, settings):
    package = write_wal(shop, offsite, batch)
    planted = package.key.rsplit("/", 1)[0] + "/000000010000000000000009-planted.drp"
    offsite.backend().put_bytes(planted, b"not ours")

    report = _sync_location(offsite)

    assert planted in report["extra"] and package.key not in report["extra"]
    assert report["catalogued"] == [] and report["imported"] == []



def test_the_timeline_history_files_go_with_a_wal_batch_and_unpack_beside_its_segments(
        shop, offsite, test_keys, tmp_path, settings):
    settings.BARMAN_HOME = str(tmp_path / "barman")
    wals = tmp_path / "barman" / "shop" / "wals"
    wals.mkdir(parents=True)
    (wals / "00000002.history").write_text("1\t0/5000060\tno recovery target specified\n")
    (wals / "00000003.history").write_text("1\t0/5000060\tno recovery target specified\n2\t0/7000000\tagain\n")
    names = ["000000020000000000000005", "000000020000000000000006"]
    members = []
    for name in names:
        (tmp_path / name).write_bytes(os.urandom(4096))
        members.append((tmp_path / name, name))

    package = write_wal(shop, offsite, WalBatch(timeline=2, first=names[0], last=names[1], members=members))

    assert package.status == "ok" and package.manifest["history"] == ["00000002.history"]
    inside = unpacked(stored(offsite, package), package, test_keys)
    assert set(inside) == {*names, "00000002.history"}, "only the history of timelines up to the batch's"
    assert inside["00000002.history"] == (wals / "00000002.history").read_bytes()
    # Random bytes are no WAL: nothing is claimed about their commits.
    assert package.manifest["last_commit"] is None and package.manifest["restore_points"] == []
    archive = tmp_path / "package.tar"
    out = io.BytesIO()
    formats.decrypt_stream(io.BytesIO(stored(offsite, package)), out, artifact_id=package.pk,
                           keyring=Keyring.from_keys(test_keys))
    archive.write_bytes(out.getvalue())
    _unpack(archive, tmp_path / "wal", base_id=None)
    assert sorted(p.name for p in (tmp_path / "wal").iterdir()) == ["00000002.history", *names]


def ok_package(system, location, kind, first, last, **fields):
    timeline = int(first[:8], 16)
    return OffsitePackage.objects.create(system=system, location=location, kind=kind, timeline=timeline,
                                         first_segment=first, last_segment=last, key=f"k/{kind}-{first}",
                                         status="ok", **fields)


def test_a_recovery_from_offsite_follows_a_promotion_onto_the_next_timeline_and_names_a_gap_before_the_fork(
        shop, offsite):
    info = {"base_backup_information": {"end_time": "2026-12-03T10:00:00+00:00"}}
    base = ok_package(shop, offsite, "base", "000000010000000000000002", "000000010000000000000002",
                      backup_id="20261203T095900", manifest=info)
    first = ok_package(shop, offsite, "wal", "000000010000000000000002", "000000010000000000000003")
    after_fork = ok_package(shop, offsite, "wal", "000000020000000000000005", "000000020000000000000006")

    with pytest.raises(OffsiteRecoveryError, match="lacks WAL segment 000000010000000000000004 of shop, before "
                                                   "timeline 2 forked at 000000020000000000000005"):
        choose(shop, offsite, RecoveryPoint.latest())

    bridge = ok_package(shop, offsite, "wal", "000000010000000000000004", "000000010000000000000004")
    chosen_base, wal = choose(shop, offsite, RecoveryPoint.latest())
    assert chosen_base == base and wal == [first, bridge, after_fork]
    OffsitePackage.objects.filter(pk=after_fork.pk).update(status="missing")
    ok_package(shop, offsite, "wal", "000000020000000000000006", "000000020000000000000007")
    with pytest.raises(OffsiteRecoveryError, match="lacks WAL segment 000000020000000000000005 .*is missing there"):
        choose(shop, offsite, RecoveryPoint.latest())
