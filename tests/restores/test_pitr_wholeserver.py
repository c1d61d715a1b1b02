"""Whole-server recovery and WAL replay progress, against a real protected server, real Barman and real WAL.

A server target names a new data directory (under ``DRPANEL_SERVER_DATA_ROOTS``), a port and an OS user; the
recovered cluster becomes a new PostgreSQL server there, started by the test's worker as ``postgres``.
"""

import os
import shutil
import socket
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from backups import barman
from backups.models import Artifact, BackupRun, System
from backups.runs import backup_request, backup_run_execute
from compliance.models import AuditEvent
from restores import execution, pitr, requests, runstate, targets, wholeserver
from restores.models import RestoreRun
from restores.pitr import Recovered, RecoveryPoint, lsn_text
from tests import continuous_support
from tests.continuous_support import POSTGRES, URL_VARIABLE, as_postgres, free_port, quiet_second, streams, system_names
from tests.protected_servers import PgServer
from tests.support import rq_workers, wait_for

pytest_plugins = ["tests.restore_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.django_db]

barman_home = continuous_support.barman_home
server = continuous_support.server
_barman_settings = continuous_support.barman_settings

SERVER_VARIABLE = "DRPANEL_SECRET_TEST_NEW_SERVER_URL"


@pytest.fixture
def shop(db):
    return System.objects.create(name="shop", database_ref=f"env:{URL_VARIABLE}", continuous_enabled=True)


@pytest.fixture
def data_root(settings):
    """A directory the new servers may go under (owned by ``postgres``, who must reach into it)."""
    root = Path(tempfile.mkdtemp(prefix="drpanel-server-root-"))
    os.chown(root, POSTGRES.pw_uid, POSTGRES.pw_gid)
    settings.SERVER_DATA_ROOTS = [root]
    yield root
    for pid_file in root.glob("*/postmaster.pid"):
        as_postgres(str(continuous_support.BINDIR / "pg_ctl"), "-D", str(pid_file.parent), "-m", "immediate", "-w",
                    "stop", check=False)
    shutil.rmtree(root, ignore_errors=True)


def server_target(monkeypatch, *, name: str, data_dir: Path, port: int, dbname: str = "shop",
                  environment: str = "staging", system=None, operator=None):
    monkeypatch.setenv(SERVER_VARIABLE, f"postgresql://postgres@127.0.0.1:{port}/{dbname}")
    target = targets.target_create(
        actor=None, name=name, environment=environment, database_ref=f"env:{SERVER_VARIABLE}", system=system,
        kind="server", server_data_dir=str(data_dir), server_port=port, server_user="postgres",
        sanity_checks=[{"name": "orders exist", "query": "SELECT count(*) FROM orders", "expectation": ">= 1"}],
        health_checks=[])
    if operator is not None:
        targets.target_right_grant(actor=None, target=target, user=operator, right="restore_to_target")
    return target


def take_base_backup(system, actor) -> Artifact:
    run = backup_run_execute(backup_request(actor=actor, system=system, kind="base").id)
    assert run.state == BackupRun.State.SUCCEEDED, run.error
    return run.artifact


def base_row(system, *, ended: datetime) -> Artifact:
    """A base backup as the catalog holds one (for runs refused before Barman is asked anything)."""
    return Artifact.objects.create(system=system, kind="base", format="barman_base", encryption="none",
                                   status="available", storage_key=f"barman:{system.name}/20261203T000000",
                                   created_at=ended, manifest={"backup_id": "20261203T000000"})


def events(run) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(object_type="restores.restorerun", object_id=str(run.pk)).order_by("seq"))


def test_whole_server_recovery_to_a_time_between_two_inserts_starts_a_server_with_exactly_the_earlier_rows(
        transactional_db, shop, server, barman_home, operator, data_root, monkeypatch, clients):
    server.execute("CREATE DATABASE shop")
    server.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)", dbname="shop")
    data_dir, port = data_root / "shop-new", free_port()
    target = server_target(monkeypatch, name="shop-new-server", data_dir=data_dir, port=port, system=shop,
                           operator=operator)
    streams(server)
    base = take_base_backup(shop, operator)
    server.execute("INSERT INTO orders (item) VALUES ('before-1'), ('before-2')", dbname="shop")
    # WAL for the replay to walk through (tens of MB), so its progress is seen while it runs.
    server.execute("CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 120000) g",
                   dbname="shop")
    moment = quiet_second()
    server.execute("INSERT INTO orders (item) VALUES ('after')", dbname="shop")

    env = {"DRPANEL_BARMAN_HOME": barman_home, "DRPANEL_SERVER_DATA_ROOTS": str(data_root)}
    with rq_workers(["restore"], env=env):
        run = requests.restore_request_point(actor=operator, system=shop, point=RecoveryPoint.at(moment),
                                             target=target, mode="whole-server", confirm=target.name)
        assert run.state == "queued"
        wait_for(lambda: RestoreRun.objects.get(pk=run.pk).is_done, timeout=600, what="the restore run finishing")

    run.refresh_from_db()
    assert run.state == "succeeded", run.error
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/shop", autocommit=True) as conn:
        rows = [r[0] for r in conn.execute("SELECT item FROM orders ORDER BY id").fetchall()]
        assert not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    assert rows == ["before-1", "before-2"]
    assert (data_dir / "PG_VERSION").exists() and data_dir.stat().st_uid == POSTGRES.pw_uid
    steps = {step["name"]: step for step in run.steps}
    assert [s["state"] for s in run.steps] == ["succeeded"] * 5, run.steps
    assert steps["sanity checks"]["detail"].startswith("1 sanity checks passed on the recovered server")
    assert run.results["health"]["connectivity"]["ok"] is True
    assert run.results["server"] == {**run.results["server"], "data_dir": str(data_dir), "port": port,
                                     "user": "postgres", "running": True}
    assert run.rollback_until is None and run.rpo_seconds == pytest.approx(
        (run.swapped_at - moment).total_seconds(), abs=0.01)
    actions = [e.action for e in events(run)]
    assert "restore.server_started" in actions and actions[-1] == "restore.succeeded"
    started = next(e for e in events(run) if e.action == "restore.server_started")
    assert started.details["port"] == port and started.details["data_dir"] == str(data_dir)
    # The replay was followed while it ran, and ended at the position the run records.
    replay = run.results["replay"]
    assert replay["in_recovery"] is False and replay["fraction"] == 1.0
    assert replay["replayed"] == run.results["recovery"]["replay_position"]
    # Measured from where the base backup's WAL begins (its backup_label, read before the server consumes it).
    assert replay["start"] == base.manifest["base_backup_information"]["begin_lsn"] != "0/0"
    assert any(s["in_recovery"] for s in replay["samples"]), replay["samples"]
    fractions = [s["fraction"] for s in replay["samples"]]
    assert fractions == sorted(fractions) and 0 <= fractions[0] < 1
    # The API and the page say where the new server runs and how far the replay went.
    shown = clients["operator"].get(f"/api/v1/restores/{run.pk}").json()
    assert shown["mode"] == "whole-server" and shown["server"]["port"] == port and shown["server"]["running"]
    assert shown["recovery_point"]["replay"]["replayed"] == replay["replayed"]
    page = clients["operator"].get(f"/restores/runs/{run.pk}/").content.decode()
    assert 'data-testid="new-server"' in page and f"on port {port} as" in page and str(data_dir) in page
    assert f"ended at <code>{replay['replayed']}</code>" in page and 'data-testid="rollback-card"' not in page
    # The protected server still holds all three: the recovery never touched it.
    assert [r[0] for r in server.execute("SELECT item FROM orders ORDER BY id", dbname="shop")] == [
        "before-1", "before-2", "after"]


def refused_run(shop, operator, target) -> RestoreRun:
    base_row(shop, ended=timezone.now() - timedelta(hours=1))
    run = requests.restore_request_point(actor=operator, system=shop, point=RecoveryPoint.latest(), target=target,
                                         mode="whole-server", confirm=target.name)
    return execution.restore_run_execute(run.pk)


def assert_refused_untouched(run, message: str) -> None:
    assert run.state == "failed" and message in run.error, run.error
    assert run.error.startswith("refused before anything was written: ")
    states = {step["name"]: step["state"] for step in run.steps}
    assert states["check the target host"] == "failed" and states["recover to the point"] == "not run"
    refused = next(e for e in events(run) if e.action == "restore.refused")
    assert refused.details["target_untouched"] is True and message in refused.details["reason"]
    assert next(e for e in events(run) if e.action == "restore.failed")


def test_a_non_empty_data_directory_is_refused_and_left_as_it_was(shop, operator, data_root, monkeypatch):
    data_dir, port = data_root / "occupied", free_port()
    data_dir.mkdir(mode=0o700)
    (data_dir / "PG_VERSION").write_text("15\n")
    (data_dir / "precious").write_bytes(b"someone else's data")
    target = server_target(monkeypatch, name="shop-occupied", data_dir=data_dir, port=port, system=shop,
                           operator=operator)

    run = refused_run(shop, operator, target)

    assert_refused_untouched(run, f"{data_dir} is not empty (2 entries")
    assert sorted(os.listdir(data_dir)) == ["PG_VERSION", "precious"]
    assert (data_dir / "precious").read_bytes() == b"someone else's data"
    assert not wholeserver.port_in_use(port)


def test_a_port_in_use_is_refused_and_nothing_is_written(shop, operator, data_root, monkeypatch):
    data_dir = data_root / "fresh"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        target = server_target(monkeypatch, name="shop-busy-port", data_dir=data_dir, port=port, system=shop,
                               operator=operator)

        run = refused_run(shop, operator, target)

    assert_refused_untouched(run, f"port {port} is in use")
    assert not data_dir.exists()


def test_an_empty_directory_others_may_write_into_is_refused(shop, operator, data_root, monkeypatch):
    data_dir = data_root / "shared"
    data_dir.mkdir()
    data_dir.chmod(0o777)
    target = server_target(monkeypatch, name="shop-shared", data_dir=data_dir, port=free_port(), system=shop,
                           operator=operator)

    run = refused_run(shop, operator, target)

    assert_refused_untouched(run, "writable by its group or by others")
    assert os.listdir(data_dir) == []


def test_a_data_directory_through_a_planted_link_is_refused(shop, operator, data_root, monkeypatch):
    elsewhere = Path(tempfile.mkdtemp(prefix="drpanel-elsewhere-"))
    try:
        (data_root / "linked").symlink_to(elsewhere)
        target = server_target(monkeypatch, name="shop-linked", data_dir=data_root / "linked", port=free_port(),
                               system=shop, operator=operator)

        run = refused_run(shop, operator, target)

        assert_refused_untouched(run, "symbolic link")
        assert os.listdir(elsewhere) == []
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_a_server_target_is_checked_when_saved(db, data_root, monkeypatch):
    monkeypatch.setenv(SERVER_VARIABLE, "postgresql://postgres@127.0.0.1:6543/shop")
    base = {"actor": None, "environment": "staging", "database_ref": f"env:{SERVER_VARIABLE}", "kind": "server",
            "server_port": 6543, "server_user": "postgres"}
    with pytest.raises(ValidationError) as outside:
        targets.target_create(name="outside", server_data_dir="/var/lib/postgresql/15/main", **base)
    assert "DRPANEL_SERVER_DATA_ROOTS" in str(outside.value.message_dict["server_data_dir"])
    with pytest.raises(ValidationError) as root:
        targets.target_create(name="as-root", server_data_dir=str(data_root / "x"),
                              **{**base, "server_user": "root"})
    assert "root" in str(root.value.message_dict["server_user"])
    with pytest.raises(ValidationError) as climbing:
        targets.target_create(name="climbing", server_data_dir=f"{data_root}/../etc", **base)
    assert "server_data_dir" in climbing.value.message_dict
    with pytest.raises(ValidationError) as mixed:
        targets.target_create(name="mixed", **{**base, "kind": "database"}, server_data_dir=str(data_root / "y"))
    assert "kind" in mixed.value.message_dict
    assert not targets.Target.objects.exists()


def test_modes_and_target_kinds_must_match(shop, operator, data_root, monkeypatch, scratch):
    base_row(shop, ended=timezone.now() - timedelta(hours=1))
    server_kind = server_target(monkeypatch, name="shop-server", data_dir=data_root / "n", port=free_port(),
                                system=shop, operator=operator)
    with pytest.raises(runstate.RestoreError, match="whole-server restores only"):
        requests.restore_request_point(actor=operator, system=shop, point=RecoveryPoint.latest(),
                                       target=server_kind, mode="database-only", confirm=server_kind.name)
    dbname = scratch.name("plain")
    scratch.create_named(dbname)
    monkeypatch.setenv("DRPANEL_SECRET_TEST_PLAIN_URL", scratch.url(dbname))
    database_kind = targets.target_create(actor=None, name="shop-database", environment="staging",
                                          database_ref="env:DRPANEL_SECRET_TEST_PLAIN_URL", system=shop)
    targets.target_right_grant(actor=None, target=database_kind, user=operator, right="restore_to_target")
    with pytest.raises(runstate.RestoreError, match="goes into a server target"):
        requests.restore_request_point(actor=operator, system=shop, point=RecoveryPoint.latest(),
                                       target=database_kind, mode="whole-server", confirm=database_kind.name)
    assert not RestoreRun.objects.exists()


def test_a_production_whole_server_approval_is_bound_to_where_the_server_goes(shop, operator, data_root,
                                                                                monkeypatch):
    base_row(shop, ended=timezone.now() - timedelta(hours=1))
    production = server_target(monkeypatch, name="shop-prod-server", data_dir=data_root / "p", port=free_port(),
                               system=shop, operator=operator, environment="production")

    run = requests.restore_request_point(actor=operator, system=shop, point=RecoveryPoint.latest(),
                                         target=production, mode="whole-server", confirm=production.name)

    assert run.state == "awaiting_approval"
    params = runstate.run_binding_params(run)
    assert params["server_data_dir"] == str(data_root / "p") and params["server_user"] == "postgres"
    production.server_port += 1
    assert runstate.point_binding_params(system=shop, point=RecoveryPoint.latest(), target=production,
                                         mode="whole-server") != params


def test_the_form_and_the_api_ask_for_a_whole_server_restore_of_a_server_target(shop, operator, data_root,
                                                                              monkeypatch, clients):
    base_row(shop, ended=timezone.now() - timedelta(hours=1))
    target = server_target(monkeypatch, name="shop-form-server", data_dir=data_root / "f", port=free_port(),
                           system=shop, operator=operator)
    page = clients["operator"].get("/restores/new/point-in-time", {"system": "shop"}).content.decode()
    assert f"whole server: a new server in {data_root / 'f'} on port {target.server_port}" in page

    answer = clients["operator"].post("/restores/new/point-in-time", {
        "system": "shop", "target": target.pk, "kind": "latest", "confirm": target.name})

    run = RestoreRun.objects.get()
    assert answer.status_code == 302 and run.mode == "whole-server" and run.state == "queued"
    RestoreRun.objects.filter(pk=run.pk).update(state="cancelled")
    body = {"system": "shop", "recovery_point": {"latest": True}, "target": target.name, "mode": "whole-server",
            "confirm": target.name}
    created = clients["operator"].post("/api/v1/restores", body, content_type="application/json")
    assert created.status_code == 201, created.json()
    shown = clients["operator"].get(f"/api/v1/restores/{created.json()['id']}").json()
    assert shown["mode"] == "whole-server" and shown["server"] is None and shown["recovery_point"]["replay"] is None
    refused = clients["operator"].post("/api/v1/restores", {
        **{k: v for k, v in body.items() if k not in ("system", "recovery_point")},
        "artifact": str(base_row(shop, ended=timezone.now()).pk)}, content_type="application/json")
    assert refused.status_code == 400 and "mode" in refused.json()["errors"]


def test_replay_progress_runs_from_the_base_backups_start_to_the_end_of_the_wal():
    copy = Recovered(system=None, point=RecoveryPoint.latest(), data=Path("/nonexistent"), socket_dir=Path("/"),
                     port=1, bindir=Path("/"), user="u", recover_seconds=0, start_seconds=0,
                     wal_start=0x2000028, wal_end=0x6000000)
    halfway = copy.progress(lsn_text(0x2000028 + (0x6000000 - 0x2000028) // 2), True)
    assert halfway.fraction == pytest.approx(0.5, abs=0.001) and halfway.end == "0/6000000"
    assert copy.progress("0/2000028", True).fraction == 0.0
    assert copy.progress("0/7000000", True).fraction == 0.99  # past the end held: not done until promoted
    assert copy.progress("0/5000000", False).fraction == 1.0
    assert "WAL replayed to 0/4000000 of 0/6000000" in copy.progress("0/4000000", True).describe()



# --- database-only point in time onto a server without the database's roles ---------------------------

ROLES_TARGET_VARIABLE = "DRPANEL_SECRET_TEST_PITR_ROLES_TARGET_URL"


def test_a_point_in_time_restore_onto_a_server_without_the_databases_roles_creates_them_first(
        shop, server, operator, monkeypatch):
    server.execute("CREATE ROLE shop_owner LOGIN")
    server.execute("CREATE ROLE shop_reader NOLOGIN")
    server.execute("CREATE DATABASE shop_roles OWNER shop_owner")
    with server.connect("shop_roles") as conn:
        conn.execute("SET ROLE shop_owner")
        conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)")
        conn.execute("GRANT SELECT ON orders TO shop_reader")
    system_names(monkeypatch, server, "shop_roles")  # the database a restore of one database takes
    streams(server)
    take_base_backup(shop, operator)
    server.execute("INSERT INTO orders (item) VALUES ('before')", dbname="shop_roles")
    moment = quiet_second()
    server.execute("INSERT INTO orders (item) VALUES ('after')", dbname="shop_roles")
    empty = PgServer().start()  # a second server: none of the database's roles, and no database of that name
    try:
        empty_url = empty.url("shop_roles")
        with psycopg.connect(empty.url(), autocommit=True) as conn:
            conn.execute("CREATE ROLE shop_reader NOLOGIN CREATEDB")  # exists and differs: reported, never altered
        monkeypatch.setenv(ROLES_TARGET_VARIABLE, empty_url)
        target = targets.target_create(
            actor=None, name="shop-roles-empty", environment="staging", database_ref=f"env:{ROLES_TARGET_VARIABLE}",
            system=shop, sanity_checks=[{"name": "orders", "query": "SELECT count(*) FROM orders",
                                         "expectation": "= 1"}], health_checks=[])
        targets.target_right_grant(actor=None, target=target, user=operator, right="restore_to_target")

        run = requests.restore_request_point(actor=operator, system=shop, point=RecoveryPoint.at(moment),
                                             target=target, mode="database-only", confirm=target.name)
        run = execution.restore_run_execute(run.pk)

        assert run.state == "succeeded", run.error
        with psycopg.connect(empty_url, autocommit=True) as conn:
            assert [r[0] for r in conn.execute("SELECT item FROM orders").fetchall()] == ["before"]
            assert conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'orders'").fetchone()[0] == \
                "shop_owner"
            assert conn.execute("SELECT has_table_privilege('shop_reader', 'orders', 'SELECT')").fetchone()[0]
            assert conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'shop_roles'"
                                ).fetchone()[0] == "shop_owner"
            assert conn.execute("SELECT rolcreatedb FROM pg_roles WHERE rolname = 'shop_reader'").fetchone()[0]
        report = run.results["roles"]
        assert report["created"] == ["shop_owner"] and "shop_reader" in report["existing"]
        assert {"role": "shop_reader", "attribute": "CREATEDB", "backup": False, "server": True} in \
            report["differences"]
        steps = {step["name"]: step for step in run.steps}
        assert steps["roles"]["state"] == "succeeded" and "1 created (shop_owner)" in steps["roles"]["detail"]
        assert steps["database owner and grants"]["detail"].startswith("shop_roles is new on this server")
        created = next(e for e in events(run) if e.action == "restore.roles_created")
        assert created.details["roles"]["created"] == ["shop_owner"] and created.details["system"] == "shop"
        assert run.results["replay"]["replayed"] == run.results["recovery"]["replay_position"]
    finally:
        empty.stop()


def test_a_whole_server_recovery_to_a_moment_already_archived_does_not_close_the_current_segment(
        transactional_db, shop, server, barman_home, operator, data_root):
    """Like a database-only restore: a moment whose WAL Barman already holds needs no switch first."""
    streams(server)
    base = take_base_backup(shop, operator)
    backup_id = base.manifest["backup_id"]
    server.execute("CREATE TABLE stamps (id serial PRIMARY KEY, note text)")
    server.execute("INSERT INTO stamps (note) VALUES ('before')")
    moment = quiet_second()
    server.execute("INSERT INTO stamps (note) VALUES ('after')")
    barman.switch_and_archive(shop)
    assert pitr.archived_past(shop, moment, backup_id)

    def segment() -> str:
        return server.execute("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]

    before = segment()
    plan = wholeserver.HostPlan(data=data_root / "moment", port=free_port(), user=POSTGRES, create=True)
    with wholeserver.recovered_privately(shop, RecoveryPoint.at(moment), backup_id, plan) as ready:
        notes = [r[0] for r in ready.query("SELECT note FROM stamps ORDER BY id")]
        closed_meanwhile = segment() != before

    assert notes == ["before"]
    assert not closed_meanwhile, "the recovery closed the current segment although the moment's WAL was archived"
