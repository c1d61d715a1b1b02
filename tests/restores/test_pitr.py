"""Point-in-time recovery through Barman, against a real protected server, a real base backup and real WAL.

One protected server (the session's shared one, kept clean), one Barman home and one base backup
(``base_backup``) serve the module: a test that needs "a base backup and the WAL after it" takes that
one; the test of the base backup itself takes its own through a backup run. Each recovery goes into its
own scratch directory, is started on a free port as ``postgres``, and is removed after.
"""

import json
import os
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
from django.test import override_settings
from django.utils import timezone

from backups import barman
from backups.continuous import base_backups_sync
from backups.errors import BackupError
from backups.models import Artifact, BackupRun, System
from backups.retention import retention_plan
from backups.runs import backup_request, backup_run_execute
from compliance.models import AuditEvent
from restores import execution, pitr, requests, runstate, targets
from restores.models import RestoreRun, Target, VerificationRun
from restores.pitr import RecoveryPoint, lsn_value, recovered
from restores.verifications import VerificationError, verification_request
from tests import continuous_support
from tests.continuous_support import URL_VARIABLE, quiet_second, receiver_streaming, streams, system_names
from tests.support import rq_workers, wait_for

pytest_plugins = ["tests.restore_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.django_db]

barman_home = continuous_support.barman_home
server = continuous_support.server
_barman_settings = continuous_support.barman_settings


@pytest.fixture
def shop(db):
    return System.objects.create(name="shop", database_ref=f"env:{URL_VARIABLE}", continuous_enabled=True)


@pytest.fixture(scope="module")
def base_backup(server, barman_home) -> dict:
    """One base backup of the shared server for the module, as Barman describes it (``show-backup``): Barman
    streams the server's WAL from then on, so any later moment can be recovered from it. It is taken before any
    test's rows exist (the system is an unsaved ``System``: Barman needs only its name and server)."""
    system = System(name="shop", database_ref=f"env:{URL_VARIABLE}", continuous_enabled=True)
    url = f"postgresql://postgres:{continuous_support.PASSWORD}@127.0.0.1:{server.port}/postgres"
    with override_settings(BARMAN_HOME=barman_home), pytest.MonkeyPatch.context() as patch:
        patch.setitem(os.environ, URL_VARIABLE, url)
        barman.write_global()
        barman.write_server(system)
        barman.run("cron")  # creates the slot and starts the receiver, as the tick does
        receiver_streaming(server)
        described = barman.backup(system, timeout=600)
    assert described["status"] == "DONE", described
    return described


def catalogued(system, described: dict) -> Artifact:
    """The module's base backup in this test's catalog, as a base backup run leaves it."""
    info = described["base_backup_information"]
    return Artifact.objects.create(system=system, kind="base", format="barman_base", encryption="none",
                                   status="available", created_at=datetime.fromisoformat(info["end_time"]),
                                   size=info["backup_size_bytes"],
                                   storage_key=f"barman:{system.name}/{described['backup_id']}", manifest=described)


def take_base_backup(system, actor) -> Artifact:
    """A base backup as the panel takes one: a backup run of kind ``base`` (its job body run here)."""
    run = backup_request(actor=actor, system=system, kind="base")
    run = backup_run_execute(run.id)
    assert run.state == BackupRun.State.SUCCEEDED, run.error
    return run.artifact


def committed_at(server, item: str, dbname: str = "shop") -> datetime:
    """Insert one order and return the server's time just after it committed."""
    server.execute("INSERT INTO orders (item) VALUES (%s)", item, dbname=dbname)
    return server.execute("SELECT clock_timestamp()")[0][0]


# The tests on the module's base backup take ``transactional_db`` as the restore run's test must (its worker is
# another process): pytest-django runs transactional tests after the others, so all of them then run together on
# one setup of the module's fixtures, and one base backup.


def test_recovery_to_a_time_between_two_inserts_returns_exactly_the_rows_before_it(transactional_db, shop, server,
                                                                                   tmp_path, base_backup):
    server.execute("CREATE DATABASE shop")
    server.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)", dbname="shop")
    streams(server)
    committed_at(server, "before-1")
    moment = committed_at(server, "before-2")
    target = quiet_second()  # the target is a timestamp: the commits around it fall in other seconds
    assert target > moment
    before_after = server.execute("SELECT clock_timestamp()")[0][0]
    committed_at(server, "after")

    with recovered(shop, RecoveryPoint.at(target)) as copy:
        rows = copy.query("SELECT item FROM orders ORDER BY id", dbname="shop")
        position = copy.replay_position()
        progress = copy.progress(position, in_recovery=True)
        dump = copy.dump("shop", tmp_path / "shop.dump")
        data = copy.data

    assert [r[0] for r in rows] == ["before-1", "before-2"]
    assert position and "/" in position
    # Replay is measured from where the base backup's WAL begins (read before the server renamed backup_label).
    assert progress.start != "0/0" and 0 < copy.wal_start <= lsn_value(position)
    assert dump.stat().st_size > 0
    assert not data.exists(), "the scratch copy was not removed"
    # The protected server still has all three: recovery never touched it.
    assert [r[0] for r in server.execute("SELECT item FROM orders ORDER BY id", dbname="shop")] == [
        "before-1", "before-2", "after"]

    with recovered(shop, RecoveryPoint.latest()) as copy:
        latest = [r[0] for r in copy.query("SELECT item FROM orders ORDER BY id", dbname="shop")]
        replayed_at = copy.query("SELECT pg_last_xact_replay_timestamp()")[0][0]
        last_commit = copy.wal_last_commit
    assert latest == ["before-1", "before-2", "after"]
    # "Latest" is a crash recovery of the WAL Barman copied: PostgreSQL keeps no replay timestamp after it, so the
    # moment it brought back (what an incident's RPO measures) is the last COMMIT in that WAL.
    assert replayed_at is None
    assert last_commit is not None and before_after <= last_commit <= datetime.now(UTC)


def test_recovery_to_a_named_restore_point_stops_there(transactional_db, shop, server, base_backup):
    streams(server)
    server.execute("CREATE TABLE IF NOT EXISTS marks (id serial PRIMARY KEY, note text)")
    server.execute("INSERT INTO marks (note) VALUES ('kept')")
    server.execute("SELECT pg_create_restore_point('before_migration')")
    server.execute("INSERT INTO marks (note) VALUES ('dropped')")

    with recovered(shop, RecoveryPoint.named("before_migration")) as copy:
        notes = [r[0] for r in copy.query("SELECT note FROM marks ORDER BY id")]

    assert notes[-1] == "kept" and "dropped" not in notes


def current_segment(server) -> str:
    return server.execute("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]


def test_a_moment_whose_wal_is_archived_is_recovered_without_closing_the_current_segment(
        transactional_db, shop, server, base_backup):
    streams(server)
    server.execute("CREATE TABLE IF NOT EXISTS stamps (id serial PRIMARY KEY, note text)")
    server.execute("INSERT INTO stamps (note) VALUES ('before')")
    moment = quiet_second()
    # Not archived yet: the commit past the moment is only in the segment being written (and Barman's .partial).
    assert not pitr.archived_past(shop, moment, base_backup["backup_id"])
    server.execute("INSERT INTO stamps (note) VALUES ('after')")
    assert not pitr.archived_past(shop, moment, base_backup["backup_id"])
    barman.switch_and_archive(shop)
    assert pitr.archived_past(shop, moment, base_backup["backup_id"])
    # A moment past every transaction archived still needs the switch.
    assert not pitr.archived_past(shop, datetime.now(UTC) + timedelta(hours=1), base_backup["backup_id"])
    before = current_segment(server)

    with recovered(shop, RecoveryPoint.at(moment), backup_id=base_backup["backup_id"]) as copy:
        notes = [r[0] for r in copy.query("SELECT note FROM stamps ORDER BY id")]
        closed_meanwhile = current_segment(server) != before

    assert notes[-1] == "before" and "after" not in notes
    assert not closed_meanwhile, "the recovery closed the current segment although the moment's WAL was archived"


def test_a_moment_whose_wal_is_not_archived_closes_the_segment_first_and_gets_the_rows_before_it(
        transactional_db, shop, server, base_backup):
    streams(server)
    server.execute("CREATE TABLE IF NOT EXISTS stamps (id serial PRIMARY KEY, note text)")
    server.execute("INSERT INTO stamps (note) VALUES ('before-unarchived')")
    moment = quiet_second()
    server.execute("INSERT INTO stamps (note) VALUES ('after-unarchived')")
    before = current_segment(server)

    with recovered(shop, RecoveryPoint.at(moment), backup_id=base_backup["backup_id"]) as copy:
        notes = [r[0] for r in copy.query("SELECT note FROM stamps ORDER BY id")]

    assert notes[-1] == "before-unarchived" and "after-unarchived" not in notes
    assert current_segment(server) != before, "the commit past the moment was not archived before the recovery"


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


# --- point-in-time restore runs: a recovery point instead of an artifact ----------------------------

TARGET_VARIABLE = "DRPANEL_SECRET_TEST_PITR_TARGET_URL"


def point_target(scratch, monkeypatch, server, *, name: str, environment: str, system) -> tuple[Target, str]:
    """A target whose database (on the panel's server) has the same name as the system's on the protected server
    (the system's URL names it); the target holds a single row ``current`` in ``orders`` and the protected one
    gets an empty ``orders``."""
    dbname = scratch.name(name.replace("-", "_"))
    scratch.create_named(dbname, setup="CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL); "
                                       "INSERT INTO orders (item) VALUES ('current')")
    server.execute(f"CREATE DATABASE {dbname}")
    server.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)", dbname=dbname)
    system_names(monkeypatch, server, dbname)
    monkeypatch.setenv(TARGET_VARIABLE, scratch.url(dbname))
    target = targets.target_create(
        actor=None, name=name, environment=environment, database_ref=f"env:{TARGET_VARIABLE}", system=system,
        sanity_checks=[{"name": "orders exist", "query": "SELECT count(*) FROM orders", "expectation": ">= 1"}],
        health_checks=[])
    return target, dbname


def items(scratch, dbname: str) -> list[str]:
    with psycopg.connect(scratch.url(dbname), autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT item FROM orders ORDER BY id").fetchall()]


def base_row(system, *, ended: datetime) -> Artifact:
    """A base backup as the catalog holds one (for the requests that never reach Barman)."""
    return Artifact.objects.create(system=system, kind="base", format="barman_base", encryption="none",
                                   status="available", storage_key=f"barman:{system.name}/20261203T000000",
                                   created_at=ended, manifest={"backup_id": "20261203T000000"})


def restore_events(run) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(object_type="restores.restorerun", object_id=str(run.pk)).order_by("seq"))


def test_a_point_in_time_restore_into_staging_brings_back_exactly_the_rows_before_the_moment(
        transactional_db, shop, server, barman_home, base_backup, operator, scratch, monkeypatch):
    staging, dbname = point_target(scratch, monkeypatch, server, name="shop-pitr-staging", environment="staging",
                                   system=shop)
    targets.target_right_grant(actor=None, target=staging, user=operator, right="restore_to_target")
    streams(server)
    catalogued(shop, base_backup)
    committed_at(server, "before-1", dbname=dbname)
    last_before = committed_at(server, "before-2", dbname=dbname)
    moment = quiet_second()  # the point is a timestamp: the commits around it fall in other seconds
    committed_at(server, "after", dbname=dbname)

    with rq_workers(["restore"], env={"DRPANEL_BARMAN_HOME": barman_home}):
        run = requests.restore_request_point(actor=operator, system=shop, point=RecoveryPoint.at(moment),
                                             target=staging, mode="database-only", confirm=staging.name)
        assert run.state == "queued"
        wait_for(lambda: RestoreRun.objects.get(pk=run.pk).is_done, timeout=600, what="the restore run finishing")

    run.refresh_from_db()
    assert run.state == "succeeded", run.error
    assert items(scratch, dbname) == ["before-1", "before-2"]
    # The previous database is kept aside (closed to connections) for a rollback.
    aside = run.results["swap"]["database"]["moved_aside"]
    assert aside in scratch.databases() and not scratch.allows_connections(aside)
    steps = {step["name"]: step for step in run.steps}
    position = run.results["recovery"]["replay_position"]
    assert "/" in position and position in steps["recover to the point"]["detail"]
    assert steps["dump the database"]["bytes"] > 0 and steps["sanity checks"]["state"] == "succeeded"
    assert run.rpo_seconds == pytest.approx((run.swapped_at - moment).total_seconds(), abs=0.01)
    # The last commit replayed is known after promotion (it is what "latest" and a named point take as RPO).
    assert datetime.fromisoformat(run.results["recovery"]["last_commit"]) <= last_before
    succeeded = [e for e in restore_events(run) if e.action == "restore.succeeded"][0]
    assert succeeded.details["recovery_point"] == f"time {moment.isoformat()}"
    assert succeeded.details["system"] == "shop" and succeeded.details["artifact"] is None
    # The protected server still holds all three: the recovery never touched it.
    assert [r[0] for r in server.execute("SELECT item FROM orders ORDER BY id", dbname=dbname)] == [
        "before-1", "before-2", "after"]


def test_a_production_point_in_time_restore_waits_for_approval_and_the_approver_sees_the_point(
        shop, server, operator, manager, scratch, monkeypatch, clients, password):
    base_row(shop, ended=timezone.now() - timedelta(hours=2))
    production, _ = point_target(scratch, monkeypatch, server, name="shop-pitr-prod", environment="production",
                                 system=shop)
    targets.target_right_grant(actor=None, target=production, user=operator, right="restore_to_target")
    targets.target_right_grant(actor=None, target=production, user=manager, right="approve_restore")
    moment = timezone.now() - timedelta(minutes=10)

    run = requests.restore_request_point(actor=operator, system=shop, point=RecoveryPoint.at(moment),
                                         target=production, mode="database-only", confirm=production.name)

    assert run.state == "awaiting_approval" and run.approval is not None
    assert run.binding_hash == run.approval.binding_hash == runstate.current_binding_hash(run)
    assert [e.action for e in restore_events(run)] == ["restore.requested", "approval.requested",
                                                     "restore.awaiting_approval"]
    page = clients["manager"].get(f"/restores/runs/{run.pk}/").content.decode()
    shown = timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S")
    zone = timezone.localtime(moment).strftime("%Z")
    assert f"shop at {shown} {zone}" in page and 'data-testid="approval-recovery-point"' in page
    approved = requests.restore_approve(actor=manager, run=run, password=password)
    assert approved.state == "queued" and "restore.approved" in [e.action for e in restore_events(run)]
    # Another point is another restore: the approval is bound to this one.
    other = runstate.point_binding_params(system=shop, point=RecoveryPoint.latest(), target=production,
                                          mode="database-only")
    assert other != runstate.run_binding_params(run)


def test_a_point_before_the_first_base_backup_is_refused_before_the_target_is_touched(
        shop, server, operator, scratch, monkeypatch):
    first = base_row(shop, ended=timezone.now() - timedelta(minutes=30))
    staging, dbname = point_target(scratch, monkeypatch, server, name="shop-pitr-early", environment="staging",
                                   system=shop)
    targets.target_right_grant(actor=None, target=staging, user=operator, right="restore_to_target")

    with pytest.raises(runstate.RestoreError, match="before the first base backup of shop"):
        requests.restore_request_point(actor=operator, system=shop, point=RecoveryPoint.at(
            timezone.now() - timedelta(hours=1)), target=staging, mode="database-only", confirm=staging.name)
    assert not RestoreRun.objects.exists()

    # Accepted while the catalog held an earlier base backup, refused by the worker once it is gone.
    moment = timezone.now() - timedelta(minutes=10)
    run = requests.restore_request_point(actor=operator, system=shop, point=RecoveryPoint.at(moment),
                                         target=staging, mode="database-only", confirm=staging.name)
    Artifact.objects.filter(pk=first.pk).update(status="deleted")
    base_row(shop, ended=timezone.now() - timedelta(minutes=5))
    run = execution.restore_run_execute(run.pk)

    assert run.state == "failed" and "before the first base backup of shop" in run.error
    assert items(scratch, dbname) == ["current"]
    assert not [name for name in scratch.databases() if name.startswith(dbname) and name != dbname]
    failed = [e for e in restore_events(run) if e.action == "restore.failed"][0]
    assert failed.details["target_untouched"] is True and failed.details["recovery_point"].startswith("time ")


def test_a_point_in_time_restore_is_database_only_and_needs_continuous_protection(shop, server, operator, scratch,
                                                                                 monkeypatch):
    base_row(shop, ended=timezone.now() - timedelta(hours=1))
    staging, _ = point_target(scratch, monkeypatch, server, name="shop-pitr-modes", environment="staging",
                              system=shop)
    targets.target_right_grant(actor=None, target=staging, user=operator, right="restore_to_target")
    ask = {"actor": operator, "point": RecoveryPoint.latest(), "target": staging, "confirm": staging.name}
    with pytest.raises(runstate.RestoreError, match="database-only"):
        requests.restore_request_point(system=shop, mode="full", **ask)
    System.objects.filter(pk=shop.pk).update(continuous_enabled=False)
    shop.refresh_from_db()
    with pytest.raises(runstate.RestoreError, match="not continuously protected"):
        requests.restore_request_point(system=shop, mode="database-only", **ask)
    assert not RestoreRun.objects.exists()


# --- the API ---------------------------------------------------------------------------------------


def api_post(client, body):
    return client.post("/api/v1/restores", body, content_type="application/json")


@pytest.fixture
def api_staging(shop, server, operator, scratch, monkeypatch):
    base_row(shop, ended=timezone.now() - timedelta(hours=1))
    staging, _ = point_target(scratch, monkeypatch, server, name="shop-pitr-api", environment="staging", system=shop)
    targets.target_right_grant(actor=None, target=staging, user=operator, right="restore_to_target")
    return staging


def point_body(**change) -> dict:
    return {"system": "shop", "recovery_point": {"latest": True}, "target": "shop-pitr-api",
            "mode": "database-only", "confirm": "shop-pitr-api", **change}


def test_the_api_accepts_each_kind_of_recovery_point(api_staging, clients):
    moment = (timezone.now() - timedelta(minutes=10)).astimezone(ZoneInfo("Europe/Paris"))
    for point, kind in (({"latest": True}, "latest"), ({"time": moment.isoformat()}, "time"),
                        ({"name": "before_migration"}, "name")):
        answer = api_post(clients["operator"], point_body(recovery_point=point))
        assert answer.status_code == 201, answer.json()
        run = RestoreRun.objects.get(pk=answer.json()["id"])
        assert run.recovery_kind == kind and run.artifact is None and run.trigger == "api"
        shown = clients["operator"].get(f"/api/v1/restores/{run.pk}").json()
        assert shown["recovery_point"]["kind"] == kind and shown["artifact"] is None
        RestoreRun.objects.filter(pk=run.pk).update(state="cancelled")
    assert run.recovery_name == "before_migration"
    assert RestoreRun.objects.get(recovery_kind="time").recovery_time == moment


@pytest.mark.parametrize(("change", "field"), [
    ({"recovery_point": {"time": "2026-12-03T12:00:00"}}, "time"),
    ({"recovery_point": {"time": "yesterday"}}, "time"),
    ({"recovery_point": {"latest": False}}, "latest"),
    ({"recovery_point": {"latest": "true"}}, "latest"),
    ({"recovery_point": {"name": "x'; DROP"}}, "name"),
    ({"recovery_point": {"latest": True, "name": "a"}}, "non_field_errors"),
    ({"recovery_point": {}}, "non_field_errors"),
    ({"recovery_point": "latest"}, "non_field_errors"),
    ({"recovery_point": {"latest": True, "when": "now"}}, "when"),
    ({"artifact": "6f1c3a57-0000-4000-8000-000000000000"}, "recovery_point"),
    ({"recovery_point": None}, "artifact"),
    ({"system": None}, "system"),
    ({"system": "nope"}, "system"),
    ({"mode": "full"}, "mode"),
    ({"recovery_point": {"time": "2999-01-01T00:00:00+00:00"}}, "time"),
])
def test_the_api_answers_400_naming_the_field_for_each_bad_body(api_staging, clients, change, field):
    body = {key: value for key, value in point_body(**change).items() if value is not None}
    answer = api_post(clients["operator"], body)
    assert answer.status_code == 400
    shown = answer.json()
    assert field in json.dumps(shown["errors"]), shown
    assert not RestoreRun.objects.exists()


def test_without_the_right_the_api_answers_403_and_the_refusal_is_audited(api_staging, clients, manager):
    targets.target_right_grant(actor=None, target=api_staging, user=manager, right="approve_restore")
    for who in ("auditor", "manager"):
        answer = api_post(clients[who], point_body())
        assert answer.status_code == 403, (who, answer.json())
        assert AuditEvent.objects.filter(actor_username=who, action="access.denied", outcome="denied").exists()
    assert not RestoreRun.objects.exists()


# --- the form ----------------------------------------------------------------------------------------


def test_the_form_offers_ten_minutes_ago_in_the_panels_zone_and_reads_the_time_there(api_staging, clients,
                                                                                      settings):
    settings.TIME_ZONE = "Europe/Paris"
    url = "/restores/new/point-in-time"
    page = clients["operator"].get(url, {"system": "shop"}).content.decode()
    paris = ZoneInfo("Europe/Paris")
    ten_ago = timezone.now().astimezone(paris) - timedelta(minutes=10)
    assert f"Date and time, {ten_ago:%Z}" in page and f'value="{ten_ago:%Y-%m-%d %H:%M}' in page

    answer = clients["operator"].post(url, {"system": "shop", "target": api_staging.pk, "kind": "time",
                                            "time": f"{ten_ago:%Y-%m-%d %H:%M:%S}", "confirm": api_staging.name})

    run = RestoreRun.objects.get()
    assert answer.status_code == 302 and answer.url == f"/restores/runs/{run.pk}/"
    assert run.recovery_time == ten_ago.replace(microsecond=0, tzinfo=paris) and run.artifact is None
    detail = clients["operator"].get(answer.url).content.decode()
    assert f"shop at {ten_ago:%Y-%m-%d %H:%M:%S} {ten_ago:%Z}" in detail


@pytest.mark.parametrize(("fields", "message"), [
    ({"kind": "time", "time": "last tuesday"}, "is not a date and time"),
    ({"kind": "name", "name": "x'; DROP"}, "restore point name"),
    ({"kind": "time", "time": "2000-01-01 00:00:00"}, "before the first base backup"),
    ({"kind": "latest", "confirm": "nope"}, "type the target"),
])
def test_the_form_refuses_a_bad_point_with_a_reason_and_records_nothing(api_staging, clients, fields, message):
    body = {"system": "shop", "target": api_staging.pk, "confirm": api_staging.name, **fields}
    answer = clients["operator"].post("/restores/new/point-in-time", body)
    assert answer.status_code == 400 and message in answer.content.decode()
    assert not RestoreRun.objects.exists()


def test_the_form_is_refused_to_those_who_may_not_restore(api_staging, clients):
    for who in ("auditor", "outsider"):
        assert clients[who].get("/restores/new/point-in-time", {"system": "shop"}).status_code == 403
    assert clients["operator"].get("/restores/new/point-in-time", {"system": "nope"}).status_code == 404
    assert AuditEvent.objects.filter(actor_username="auditor", action="access.denied").exists()


def test_the_form_names_where_barmans_home_is(api_staging, clients):
    system = System.objects.get(name="shop")
    page = clients["operator"].get("/restores/new/point-in-time", {"system": "shop"}).content.decode()
    assert "Barman's home on the worker's host" in page and "panel's host" not in page
    system.worker_pool = "db-east"
    system.save(update_fields=["worker_pool"])
    page = clients["operator"].get("/restores/new/point-in-time", {"system": "shop"}).content.decode()
    assert "Barman's home on pool db-east" in page
