"""A point-in-time restore of one database takes the system's own database, whatever the target calls its own.

The system's URL names ``shop`` on its protected server; the target's names ``<prefix>_shop_staging`` on another
server (the panel's): the run dumps ``shop`` from the recovered copy and restores it as the target's database,
through the usual side database and swap.
"""

import pytest

from compliance.models import AuditEvent
from restores import execution, pitr, requests, targets
from restores.models import RestoreRun
from restores.pitr import RecoveryPoint
from tests import continuous_support
from tests.continuous_support import URL_VARIABLE, quiet_second, streams, system_names
from tests.restores import test_pitr
from tests.restores.test_pitr import TARGET_VARIABLE, catalogued, committed_at, items, restore_events
from tests.support import rq_workers, wait_for

pytest_plugins = ["tests.restore_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.django_db]

barman_home = continuous_support.barman_home
server = continuous_support.server
_barman_settings = continuous_support.barman_settings
shop = test_pitr.shop
base_backup = test_pitr.base_backup


@pytest.fixture
def staging(shop, server, scratch, monkeypatch, operator):
    """The system's database ``shop`` (an empty ``orders``) on the protected server, named by its URL, and a
    staging target on the panel's server whose database, ``…_shop_staging``, holds one row ``current``."""
    if not server.execute("SELECT 1 FROM pg_database WHERE datname = 'shop'"):
        server.execute("CREATE DATABASE shop")
        server.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)", dbname="shop")
    server.execute("TRUNCATE orders", dbname="shop")
    system_names(monkeypatch, server, "shop")
    dbname = scratch.name("shop_staging")
    scratch.create_named(dbname, setup="CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL); "
                                       "INSERT INTO orders (item) VALUES ('current')")
    monkeypatch.setenv(TARGET_VARIABLE, scratch.url(dbname))
    target = targets.target_create(
        actor=None, name="shop-staging", environment="staging", database_ref=f"env:{TARGET_VARIABLE}", system=shop,
        sanity_checks=[{"name": "orders exist", "query": "SELECT count(*) FROM orders", "expectation": ">= 1"}],
        health_checks=[])
    targets.target_right_grant(actor=None, target=target, user=operator, right="restore_to_target")
    return target, dbname


def test_the_database_taken_is_the_one_the_systems_url_names(shop, monkeypatch, server):
    system_names(monkeypatch, server, "shop")
    assert pitr.system_database(shop) == "shop"
    # A system whose URL names ``postgres`` restores ``postgres``.
    system_names(monkeypatch, server, "postgres")
    assert pitr.system_database(shop) == "postgres"
    # No database in the URL: libpq's default, the user's name.
    monkeypatch.setenv(URL_VARIABLE, f"postgresql://app@127.0.0.1:{server.port}")
    assert pitr.system_database(shop) == "app"


def test_a_point_in_time_restore_brings_the_systems_database_into_a_target_that_names_it_otherwise(
        transactional_db, shop, server, barman_home, base_backup, operator, scratch, staging):
    target, dbname = staging
    assert dbname != "shop" and not server.execute("SELECT 1 FROM pg_database WHERE datname = %s", dbname)
    streams(server)
    catalogued(shop, base_backup)
    committed_at(server, "before-1")
    committed_at(server, "before-2")
    moment = quiet_second()
    committed_at(server, "after")

    with rq_workers(["restore"], env={"DRPANEL_BARMAN_HOME": str(barman_home)}):
        run = requests.restore_request_point(actor=operator, system=shop, point=RecoveryPoint.at(moment),
                                             target=target, mode="database-only", confirm=target.name)
        wait_for(lambda: RestoreRun.objects.get(pk=run.pk).is_done, timeout=600, what="the restore run finishing")

    run.refresh_from_db()
    assert run.state == "succeeded", run.error
    assert items(scratch, dbname) == ["before-1", "before-2"]
    steps = {step["name"]: step for step in run.steps}
    assert f"dumped from shop at {RecoveryPoint.at(moment)}" in steps["dump the database"]["detail"]
    assert f"restored as {dbname}" in steps["dump the database"]["detail"]
    aside = run.results["swap"]["database"]["moved_aside"]
    assert aside.startswith(f"{dbname}__") and aside in scratch.databases()
    # Nothing named after the target appeared on the protected server, which still holds all three rows.
    assert not server.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", f"{dbname}%")
    assert [r[0] for r in server.execute("SELECT item FROM orders ORDER BY id", dbname="shop")] == [
        "before-1", "before-2", "after"]


def test_a_system_database_missing_at_the_point_fails_clearly_and_leaves_the_target_untouched(
        transactional_db, shop, server, barman_home, base_backup, operator, scratch, staging, monkeypatch):
    target, dbname = staging
    streams(server)
    catalogued(shop, base_backup)
    committed_at(server, "kept")
    moment = quiet_second()
    # The system's URL now names a database made after the point: the recovered copy cannot have it.
    server.execute("CREATE DATABASE shop_late")
    system_names(monkeypatch, server, "shop_late")
    point = RecoveryPoint.at(moment)
    run = requests.restore_request_point(actor=operator, system=shop, point=point, target=target,
                                         mode="database-only", confirm=target.name)

    run = execution.restore_run_execute(run.pk)

    assert run.state == "failed"
    assert f"the recovered shop has no database shop_late at {point}; the target is untouched" in run.error
    assert items(scratch, dbname) == ["current"]
    assert not [name for name in scratch.databases() if name.startswith(f"{dbname}__")]
    failed = [e for e in restore_events(run) if e.action == "restore.failed"][0]
    assert failed.details["target_untouched"] is True and "no database shop_late" in failed.details["error"]
    assert not AuditEvent.objects.filter(action="restore.succeeded", object_id=str(run.pk)).exists()
