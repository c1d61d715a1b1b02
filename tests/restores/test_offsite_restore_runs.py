"""Restore runs from the off-site copy, its coverage (requests, health, /metrics) and its retention, against a real
protected server, real Barman and real WAL, packages in moto's S3 over HTTP, and real RQ workers.

Each test takes its own base backup and ships to its own bucket; the module shares the server and Barman's home
(``tests.continuous_support``).
"""

import io
import os
import time
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from django.core.management import call_command
from django.urls import reverse

from backups import formats
from backups import offsite as shipping
from backups.keys import Keyring
from backups.models import Artifact, BackupRun, OffsitePackage, OffsiteRun, System
from backups.offsite_catalog import offsite_check
from backups.offsite_list import OffsiteListError, list_id, list_key, offsite_list_read
from backups.offsite_retention import offsite_retention, retention_plan
from backups.runs import backup_request, backup_run_execute
from compliance.health import health_evaluate
from compliance.models import AuditEvent
from drpanel.services import api_token_create
from restores import requests, runstate, targets
from restores.models import RestoreRun
from restores.offsite_recovery import OffsiteRecoveryError, offsite_reach, recovered_from_offsite
from restores.pitr import RecoveryPoint, scratch_root, started
from tests import continuous_support
from tests.backup_fixtures import keys_env
from tests.continuous_support import URL_VARIABLE, catalog_reaches, quiet_second, segment_of_switch, streams
from tests.restores.test_pitr import committed_at, items, point_target
from tests.support import rq_workers, wait_for

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


def ship(system, batch_segments: int = 1) -> OffsiteRun:
    """Execute the off-site run a base backup or the tick queued (the job's body, here)."""
    run = OffsiteRun.objects.filter(system=system, state=OffsiteRun.State.QUEUED).first() or \
        shipping.offsite_tick(system)
    run = shipping.offsite_run_execute(run.id, batch_segments=batch_segments)
    assert run.state == OffsiteRun.State.SUCCEEDED, run.error
    return run


def flip(s3, location, package) -> bytes:
    """Flip one bit in the middle of a package's object; the original bytes."""
    key = location.prefix + package.key
    original = s3.get_object(Bucket=location.bucket, Key=key)["Body"].read()
    body = bytearray(original)
    body[len(body) // 2] ^= 0x01
    s3.put_object(Bucket=location.bucket, Key=key, Body=bytes(body))
    return original


def api_post(client, body):
    return client.post("/api/v1/restores", body, content_type="application/json")


def run_events(run) -> dict[str, AuditEvent]:
    return {e.action: e for e in AuditEvent.objects.filter(object_type="restores.restorerun", object_id=str(run.pk))}


def test_a_restore_run_recovers_a_moment_from_the_offsite_copy_and_refuses_a_flipped_bit_before_the_target(
        transactional_db, shop, server, barman_home, offsite, test_keys, operator, scratch, monkeypatch, s3, clients):
    staging, dbname = point_target(scratch, monkeypatch, server, name="shop-offsite-staging",
                                   environment="staging", system=shop)
    targets.target_right_grant(actor=None, target=staging, user=operator, right="restore_to_target")
    streams(server)
    base_backup(shop, operator)
    committed_at(server, "before-1", dbname=dbname)
    committed_at(server, "before-2", dbname=dbname)
    moment = quiet_second()
    committed_at(server, "after", dbname=dbname)
    catalog_reaches(shop, segment_of_switch(server))
    ship(shop)
    wal = OffsitePackage.objects.filter(system=shop, location=offsite, kind="wal").order_by("first_segment")
    assert wal.count() >= 2 and any(p.manifest.get("last_commit") for p in wal), [p.manifest for p in wal]
    body = {"system": "shop", "recovery_point": {"time": moment.isoformat()}, "target": staging.name,
            "mode": "database-only", "confirm": staging.name, "offsite_location": "offsite"}
    tampered = wal.last()
    original = flip(s3, offsite, tampered)
    env = {**keys_env(test_keys), "DRPANEL_BARMAN_HOME": str(barman_home)}

    with rq_workers(["restore"], env=env):
        answer = api_post(clients["operator"], body)
        assert answer.status_code == 201, answer.json()
        refused = RestoreRun.objects.get(pk=answer.json()["id"])
        wait_for(lambda: RestoreRun.objects.get(pk=refused.pk).is_done, timeout=600, what="the refused run ending")

        refused.refresh_from_db()
        assert refused.state == "failed" and "refused before anything was written" in refused.error
        assert tampered.label in refused.error and "checksum mismatch" in refused.error
        # The target is untouched: its one row, and no side database was ever made beside it.
        assert items(scratch, dbname) == ["current"]
        assert not [d for d in scratch.databases() if d.startswith(f"{dbname}__")]
        why = AuditEvent.objects.get(action="offsite.refused", object_id=str(shop.pk))
        assert why.details["run"] == str(refused.pk) and why.details["package"] == str(tampered.pk)
        assert "checksum mismatch" in why.details["reason"]
        failed = run_events(refused)["restore.failed"]
        assert failed.details["source"] == "off-site copy at offsite" and tampered.label in failed.details["error"]
        assert failed.details["target_untouched"] is True

        s3.put_object(Bucket=offsite.bucket, Key=offsite.prefix + tampered.key, Body=original)
        # Barman's home is away: what comes back can only come from the off-site copy.
        aside = barman_home.with_name(barman_home.name + "-away")
        barman_home.rename(aside)
        try:
            answer = api_post(clients["operator"], body)
            assert answer.status_code == 201, answer.json()
            run = RestoreRun.objects.get(pk=answer.json()["id"])
            wait_for(lambda: RestoreRun.objects.get(pk=run.pk).is_done, timeout=600, what="the restore run ending")
        finally:
            aside.rename(barman_home)

    run.refresh_from_db()
    assert run.state == "succeeded", run.error
    assert items(scratch, dbname) == ["before-1", "before-2"]
    assert run.recovery_location == offsite
    assert run.results["recovery"]["source"] == "off-site copy at offsite"
    shown = clients["operator"].get(f"/api/v1/restores/{run.pk}").json()["recovery_point"]
    assert shown["source"] == {"kind": "offsite", "location": "offsite", "label": "off-site copy at offsite"}
    page = clients["operator"].get(f"/restores/runs/{run.pk}/").content.decode()
    assert "from the off-site copy at offsite" in page and "off-site copy at offsite</dd>" in page
    events = run_events(run)
    assert events["restore.requested"].details["source"] == "off-site copy at offsite"
    assert events["restore.succeeded"].details["source"] == "off-site copy at offsite"
    fetched = AuditEvent.objects.get(action="offsite.fetched", details__run=str(run.pk))
    assert fetched.details["location"] == "offsite"


def test_a_point_the_offsite_copy_does_not_cover_is_refused_before_queueing_and_health_shows_its_coverage(
        shop, server, offsite, test_keys, operator, scratch, monkeypatch, s3, clients, auditor, password):
    staging, dbname = point_target(scratch, monkeypatch, server, name="shop-offsite-cover",
                                   environment="staging", system=shop)
    targets.target_right_grant(actor=None, target=staging, user=operator, right="restore_to_target")
    streams(server)
    base_backup(shop, operator)
    committed_at(server, "a", dbname=dbname)
    server.execute("SELECT pg_create_restore_point('copied_point')")
    inside = datetime.now(UTC)
    committed_at(server, "b", dbname=dbname)
    names = [segment_of_switch(server) for _ in range(3)]
    catalog_reaches(shop, names[-1])
    ship(shop)
    reach = offsite_reach(shop, offsite)
    assert "copied_point" in reach.restore_points and reach.last_commit > inside
    late = committed_at(server, "not off-site yet", dbname=dbname)
    server.execute("SELECT pg_create_restore_point('not_copied')")
    time.sleep(1.1)

    def ask(point, **extra):
        return api_post(clients["operator"], {"system": "shop", "recovery_point": point, "target": staging.name,
                                              "mode": "database-only", "confirm": staging.name,
                                              "offsite_location": "offsite", **extra})

    too_new = ask({"time": (late + timedelta(seconds=1)).isoformat()})
    assert too_new.status_code == 400
    detail = too_new.json()["detail"]
    assert "is not covered by the off-site copy at offsite" in detail and reach.last_segment in detail
    assert f"{reach.last_commit:%Y-%m-%d %H:%M:%S} UTC" in detail
    absent = ask({"name": "not_copied"})
    assert absent.status_code == 400 and "restore point 'not_copied' is not in the WAL at offsite" in \
        absent.json()["detail"]
    nowhere = ask({"latest": True}, offsite_location="nowhere")
    assert nowhere.status_code == 400 and "offsite_location" in nowhere.json()["errors"]
    assert not RestoreRun.objects.exists()
    accepted = ask({"name": "copied_point"})
    assert accepted.status_code == 201, accepted.json()
    RestoreRun.objects.filter(pk=accepted.json()["id"]).update(state="cancelled")

    # Health and /metrics: the newest point recoverable from the off-site copy alone, against the RPO target.
    row = health_evaluate(shop).offsite[0]
    assert row["location"] == "offsite" and row["last_segment"] == reach.last_segment
    assert row["within_target"] and 0 <= row["age_seconds"] < 600
    assert row["newest_point"] == reach.received_until.isoformat()
    page = clients["auditor"].get(reverse("drpanel:health-detail", args=[shop.pk])).content.decode()
    assert 'data-testid="offsite-coverage"' in page and reach.last_segment in page
    _, raw = api_token_create(actor=auditor, user=auditor, name="prometheus", password=password)
    metrics = clients["auditor"].get("/metrics", HTTP_AUTHORIZATION=f"Bearer {raw}").content.decode()
    assert 'drpanel_continuous_offsite_within_target{location="offsite",system="shop"} 1.0' in metrics
    assert 'drpanel_continuous_offsite_rpo_seconds{location="offsite",system="shop"}' in metrics
    assert 'drpanel_continuous_rpo_seconds{system="shop"}' in metrics

    # A batch lost off-site: the form names the segment before anything is queued, and health says why.
    lost = OffsitePackage.objects.get(system=shop, location=offsite, kind="wal", first_segment=names[1])
    s3.delete_object(Bucket=offsite.bucket, Key=offsite.prefix + lost.key)
    offsite_check(shop, offsite)
    form = clients["operator"].post("/restores/new/point-in-time", {
        "system": "shop", "target": staging.pk, "confirm": staging.name, "kind": "latest",
        "source": str(offsite.pk)})
    assert form.status_code == 400
    assert f"lacks WAL segment {names[1]}" in form.content.decode()
    assert not RestoreRun.objects.exclude(state="cancelled").exists()
    gone = health_evaluate(shop).offsite[0]
    assert gone["newest_point"] is None and not gone["within_target"] and names[1] in gone["error"]


def test_offsite_retention_removes_only_what_no_point_of_the_window_needs(
        transactional_db, shop, server, barman_home, offsite, test_keys, operator, s3):
    streams(server)
    server.execute("DROP DATABASE IF EXISTS shopret")
    server.execute("CREATE DATABASE shopret")
    server.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)", dbname="shopret")
    first = base_backup(shop, operator)
    committed_at(server, "old", dbname="shopret")
    catalog_reaches(shop, segment_of_switch(server))
    ship(shop)
    second = base_backup(shop, operator)
    committed_at(server, "kept-1", dbname="shopret")
    oldest = quiet_second()  # the window's oldest point, below
    committed_at(server, "kept-2", dbname="shopret")
    catalog_reaches(shop, segment_of_switch(server))
    ship(shop)
    window = timedelta(days=shop.recovery_window_days)
    second_begin = second.manifest["base_backup_information"]["begin_wal"]
    before = {p.pk: p for p in OffsitePackage.objects.filter(system=shop, location=offsite, status="ok")}

    # While the newer base backup ended inside the window, the older one is still needed: nothing goes.
    ended = datetime.fromisoformat(second.manifest["base_backup_information"]["end_time"])
    assert offsite_retention(shop, offsite, now=ended + window - timedelta(seconds=1)) == []

    removed = offsite_retention(shop, offsite, now=oldest + window)

    old_wal = [p for p in before.values() if p.kind == "wal" and p.last_segment < second_begin]
    assert old_wal, "the first base backup's WAL was shipped before the second began"
    assert {p.pk for p in removed} == {p.pk for p in old_wal} | {
        p.pk for p in before.values() if p.kind == "base" and p.backup_id == first.manifest["backup_id"]}
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=offsite.bucket).get("Contents", [])}
    for package in before.values():
        package.refresh_from_db()
        assert (package.status == "removed") == (package.pk in {p.pk for p in removed})
        assert (offsite.prefix + package.key in listed) == (package.status == "ok")
    events = AuditEvent.objects.filter(action="offsite.package_removed", object_id=str(shop.pk))
    assert events.count() == len(removed)
    assert {e.details["oldest_kept_base"] for e in events} == {second.manifest["backup_id"]}
    assert retention_plan(shop, offsite, now=oldest + window).packages == []
    # What retention removed is not written again while Barman still holds it.
    assert shipping.pending_bases(shop, offsite) == []
    assert all(batch.first >= second_begin for batch in shipping.pending_wal(shop, offsite))

    # The window's oldest point still comes back from the off-site copy alone.
    with recovered_from_offsite(shop, RecoveryPoint.at(oldest), location=offsite) as copy:
        rows = [r[0] for r in copy.query("SELECT item FROM orders ORDER BY id", dbname="shopret")]
    assert rows == ["old", "kept-1"]
    with pytest.raises(OffsiteRecoveryError, match="holds no base backup of shop that ended before"):
        offsite_reach(shop, offsite, RecoveryPoint.at(datetime.fromisoformat(
            first.manifest["base_backup_information"]["end_time"]) + timedelta(seconds=1)))


def test_a_production_restore_from_the_offsite_copy_is_approved_for_that_source(
        shop, server, offsite, test_keys, operator, manager, scratch, monkeypatch, password):
    production, _ = point_target(scratch, monkeypatch, server, name="shop-offsite-prod", environment="production",
                                 system=shop)
    targets.target_right_grant(actor=None, target=production, user=operator, right="restore_to_target")
    targets.target_right_grant(actor=None, target=production, user=manager, right="approve_restore")
    streams(server)
    base_backup(shop, operator)
    catalog_reaches(shop, segment_of_switch(server))
    ship(shop)

    run = requests.restore_request_point(actor=operator, system=shop, point=RecoveryPoint.latest(),
                                         target=production, mode="database-only", confirm=production.name,
                                         location=offsite)

    assert run.state == "awaiting_approval"
    params = runstate.run_binding_params(run)
    assert params["recovery_location"] == offsite.pk and params["recovery_location_name"] == "offsite"
    from_barman = runstate.point_binding_params(system=shop, point=RecoveryPoint.latest(), target=production,
                                                mode="database-only")
    assert from_barman != params, "the approval must be bound to the source"
    assert requests.restore_approve(actor=manager, run=run, password=password).state == "queued"
    with pytest.raises(runstate.RestoreError, match="whole-server recovery from the off-site copy"):
        requests._validate_offsite(system=shop, point=RecoveryPoint.latest(), mode="whole-server", location=offsite)
    offsite.enabled = False
    offsite.save(update_fields=["enabled"])
    RestoreRun.objects.filter(pk=run.pk).update(state="cancelled")
    with pytest.raises(runstate.RestoreError, match="not an enabled off-site location"):
        requests.restore_request_point(actor=operator, system=shop, point=RecoveryPoint.latest(), target=production,
                                       mode="database-only", confirm=production.name, location=offsite)


def test_a_panel_that_lost_its_database_rebuilds_the_package_list_from_the_encrypted_one_beside_the_packages(
        shop, server, offsite, test_keys, operator, admin, s3, scratch, monkeypatch):
    server.execute("DROP DATABASE IF EXISTS shoplist")
    server.execute("CREATE DATABASE shoplist")
    server.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)", dbname="shoplist")
    streams(server)
    base_backup(shop, operator)
    committed_at(server, "listed", dbname="shoplist")
    catalog_reaches(shop, segment_of_switch(server))
    run = ship(shop)
    assert any(s["name"] == "package list in offsite" for s in run.steps)
    stored = s3.get_object(Bucket=offsite.bucket, Key=offsite.prefix + list_key(shop.pk))["Body"].read()
    assert b"listed" not in stored and b"base_backup_information" not in stored, "the list is encrypted"
    ok = set(OffsitePackage.objects.filter(system=shop, location=offsite, status="ok").values_list("key", flat=True))
    assert {p["key"] for p in offsite_list_read(offsite, shop.pk)["packages"]} == ok
    # Moved under another system's key, or written with other keys, a list is refused.
    offsite.backend().put_bytes(list_key(shop.pk + 1000), stored)
    with pytest.raises(OffsiteListError, match="refused"):
        offsite_list_read(offsite, shop.pk + 1000)
    foreign = io.BytesIO()
    formats.encrypt_stream(io.BytesIO(b'{"format": "drpanel-offsite-packages/1"}'), foreign,
                           artifact_id=list_id(shop.pk + 2000), keyring=Keyring.from_keys({"k1": os.urandom(32)}))
    offsite.backend().put_bytes(list_key(shop.pk + 2000), foreign.getvalue())
    with pytest.raises(OffsiteListError, match="refused"):
        offsite_list_read(offsite, shop.pk + 2000)

    # The panel's database is gone: a new panel knows the system (another id) and the location, not the packages.
    old_id = shop.pk
    OffsitePackage.objects.filter(system=shop).delete()
    reborn = System.objects.create(name="shop-reborn", database_ref=f"env:{URL_VARIABLE}", continuous_enabled=True)
    new_host = scratch_root(reborn)
    out = io.StringIO()
    call_command("offsite_recover", "shop-reborn", location="offsite", into=str(new_host / "data"),
                 username="admin", rebuild_list=True, listed_system_id=old_id, stdout=out)
    assert f"{len(ok)} package(s) catalogued from the package list in offsite" in out.getvalue()
    with started(reborn, RecoveryPoint.latest(), new_host, user_name="postgres", recover_seconds=0) as copy:
        rows = [r[0] for r in copy.query("SELECT item FROM orders ORDER BY id", dbname="shoplist")]
    assert rows == ["listed"]
    event = AuditEvent.objects.get(action="offsite.list_rebuilt", object_id=str(reborn.pk))
    assert event.actor == admin and event.details["added"] == len(ok) == event.details["listed"]

    # Barman's catalog is gone too: a restore run from Barman's home is refused, one from the off-site copy queued.
    staging, _ = point_target(scratch, monkeypatch, server, name="shop-reborn-staging", environment="staging",
                              system=reborn)
    targets.target_right_grant(actor=None, target=staging, user=operator, right="restore_to_target")
    with pytest.raises(runstate.RestoreError, match="has no base backup yet"):
        requests.restore_request_point(actor=operator, system=reborn, point=RecoveryPoint.latest(), target=staging,
                                       mode="database-only", confirm=staging.name)
    run = requests.restore_request_point(actor=operator, system=reborn, point=RecoveryPoint.latest(), target=staging,
                                         mode="database-only", confirm=staging.name, location=offsite)
    assert run.state == "queued" and run.recovery_location == offsite


def test_after_a_promotion_the_next_timeline_comes_back_from_the_offsite_copy_with_its_history_file(
        shop, server, barman_home, offsite, test_keys, operator, settings, tmp_path):
    """Recover, promote, continue: the copy recovered from off-site is promoted onto timeline 2 by PostgreSQL, takes
    a write, and its timeline-2 WAL (with the history file, as Barman stores it when it streams a new timeline) is
    packaged off-site; a second recovery from off-site alone must follow the fork. Barman streaming from the
    promoted server is the one part not run here (the copy listens on a private socket only)."""
    server.execute("DROP DATABASE IF EXISTS shoptl")
    server.execute("CREATE DATABASE shoptl")
    server.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)", dbname="shoptl")
    streams(server)
    base_backup(shop, operator)
    committed_at(server, "timeline-1", dbname="shoptl")
    catalog_reaches(shop, segment_of_switch(server))
    ship(shop)
    home_of_timeline_2 = tmp_path / "barman"
    (home_of_timeline_2 / "shop" / "wals").mkdir(parents=True)

    with recovered_from_offsite(shop, RecoveryPoint.latest(), location=offsite) as copy:
        with copy.connect("shoptl") as conn:
            conn.execute("INSERT INTO orders (item) VALUES ('timeline-2')")
            written = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
            conn.execute("SELECT pg_switch_wal()")  # a switch flushes the segment (no checkpoint: it would recycle)
        assert written.startswith("00000002"), written
        wal = copy.data / "pg_wal"
        names = sorted(p.name for p in wal.iterdir() if p.name.startswith("00000002") and len(p.name) == 24
                       and p.name <= written)
        (home_of_timeline_2 / "shop" / "wals" / "00000002.history").write_bytes(
            (wal / "00000002.history").read_bytes())
        settings.BARMAN_HOME = str(home_of_timeline_2)
        package = shipping.write_wal(shop, offsite, shipping.WalBatch(
            timeline=2, first=names[0], last=names[-1], members=[(wal / n, n) for n in names]))
        settings.BARMAN_HOME = str(barman_home)
    assert package.status == "ok" and package.manifest["history"] == ["00000002.history"]
    assert package.manifest["last_commit"] is not None

    with recovered_from_offsite(shop, RecoveryPoint.latest(), location=offsite) as again:
        rows = [r[0] for r in again.query("SELECT item FROM orders ORDER BY id", dbname="shoptl")]
    assert rows == ["timeline-1", "timeline-2"]
