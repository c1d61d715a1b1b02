"""Point-in-time recovery through Barman, against a real protected server, a real base backup and real WAL.

One protected server, one Barman home and one base backup serve the module; each recovery goes
into its own scratch directory, is started on a free port as ``postgres``, and is removed after.
"""

import time
from datetime import UTC, datetime

import pytest

from backups import barman
from backups.continuous import base_backups_sync
from backups.errors import BackupError
from backups.models import Artifact, BackupRun, System
from backups.retention import retention_plan
from backups.runs import backup_request, backup_run_execute
from compliance.models import AuditEvent
from restores.models import VerificationRun
from restores.pitr import RecoveryPoint, recovered
from restores.verifications import VerificationError, verification_request
from tests import continuous_support
from tests.continuous_support import URL_VARIABLE, streams

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

barman_home = continuous_support.barman_home
server = continuous_support.server
_barman_settings = continuous_support.barman_settings


@pytest.fixture
def shop(db):
    return System.objects.create(name="shop", database_ref=f"env:{URL_VARIABLE}", continuous_enabled=True)


def take_base_backup(system, actor) -> Artifact:
    """A base backup as the panel takes one: a backup run of kind ``base`` (its job body run here)."""
    run = backup_request(actor=actor, system=system, kind="base")
    run = backup_run_execute(run.id)
    assert run.state == BackupRun.State.SUCCEEDED, run.error
    return run.artifact


def committed_at(server, item: str) -> datetime:
    """Insert one order and return the server's time just after it committed."""
    server.execute("INSERT INTO orders (item) VALUES (%s)", item, dbname="shop")
    return server.execute("SELECT clock_timestamp()")[0][0]


def test_recovery_to_a_time_between_two_inserts_returns_exactly_the_rows_before_it(shop, server, tmp_path, operator):
    server.execute("CREATE DATABASE shop")
    server.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)", dbname="shop")
    streams(server)
    base = take_base_backup(shop, operator)
    assert base.manifest["status"] == "DONE"
    committed_at(server, "before-1")
    moment = committed_at(server, "before-2")
    time.sleep(1.1)  # the target is a timestamp: keep the next commit in a later second than the target
    target = datetime.now(UTC).replace(microsecond=0)
    assert target > moment
    time.sleep(1.1)
    committed_at(server, "after")

    with recovered(shop, RecoveryPoint.at(target)) as copy:
        rows = copy.query("SELECT item FROM orders ORDER BY id", dbname="shop")
        position = copy.replay_position()
        dump = copy.dump("shop", tmp_path / "shop.dump")
        data = copy.data

    assert [r[0] for r in rows] == ["before-1", "before-2"]
    assert position and "/" in position
    assert dump.stat().st_size > 0
    assert not data.exists(), "the scratch copy was not removed"
    # The protected server still has all three: recovery never touched it.
    assert [r[0] for r in server.execute("SELECT item FROM orders ORDER BY id", dbname="shop")] == [
        "before-1", "before-2", "after"]

    with recovered(shop, RecoveryPoint.latest()) as copy:
        latest = [r[0] for r in copy.query("SELECT item FROM orders ORDER BY id", dbname="shop")]
    assert latest == ["before-1", "before-2", "after"]


def test_recovery_to_a_named_restore_point_stops_there(shop, server):
    streams(server)
    server.execute("CREATE TABLE IF NOT EXISTS marks (id serial PRIMARY KEY, note text)")
    if not barman.run_json("list-backups", "shop").get("shop"):
        barman.backup(shop, timeout=600)  # when this test runs alone
    server.execute("INSERT INTO marks (note) VALUES ('kept')")
    server.execute("SELECT pg_create_restore_point('before_migration')")
    server.execute("INSERT INTO marks (note) VALUES ('dropped')")

    with recovered(shop, RecoveryPoint.named("before_migration")) as copy:
        notes = [r[0] for r in copy.query("SELECT note FROM marks ORDER BY id")]

    assert notes[-1] == "kept" and "dropped" not in notes


def test_a_recovery_time_needs_its_zone_and_a_name_is_checked():
    with pytest.raises(ValueError, match="time zone"):
        RecoveryPoint.at(datetime(2026, 12, 3, 12, 0))
    with pytest.raises(ValueError):
        RecoveryPoint.named("x'; DROP")


def test_a_base_backup_is_an_artifact_outside_the_panels_retention_until_barman_drops_it(shop, server, operator):
    streams(server)
    base = take_base_backup(shop, operator)

    backup_id = base.manifest["backup_id"]
    assert base.kind == "base" and base.status == "available" and base.storage_key == f"barman:shop/{backup_id}"
    assert base.size == base.manifest["base_backup_information"]["backup_size_bytes"] > 0
    assert AuditEvent.objects.filter(action="backup.succeeded", object_id=str(base.pk)).exists()
    assert base.pk not in [a.pk for a in retention_plan(shop).delete]
    assert base_backups_sync(shop) == 0

    barman.run("delete", "shop", backup_id)
    assert base_backups_sync(shop) == 1

    base.refresh_from_db()
    assert base.status == "deleted"
    assert AuditEvent.objects.get(action="continuous.base_expired", object_id=str(base.pk))


def test_a_base_backup_needs_continuous_protection(db, operator):
    plain = System.objects.create(name="plain", database_ref=f"env:{URL_VARIABLE}")
    with pytest.raises(BackupError, match="not continuously protected"):
        backup_request(actor=operator, system=plain, kind="base")
    assert not BackupRun.objects.filter(system=plain).exists()


def test_a_base_artifact_is_refused_by_the_storage_verification_ladder(db, operator):
    system = System.objects.create(name="based", database_ref=f"env:{URL_VARIABLE}", continuous_enabled=True)
    base = Artifact.objects.create(system=system, kind="base", format="barman_base", encryption="none",
                                   status="available", storage_key="barman:based/20261203T000000")

    with pytest.raises(VerificationError, match="Barman's home"):
        verification_request(actor=operator, artifact=base, level="checksum")
    assert not VerificationRun.objects.filter(artifact=base).exists()
