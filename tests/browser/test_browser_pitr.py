"""In the browser (Chromium), with a real worker, a real protected server streamed by Barman: "restore to N ago".

The operator reads the RPO in seconds on the dashboard, follows it to the system's continuous
protection, opens "Restore to a point in time…", and asks for the production database as it was
a moment ago, typed as a time ago ("… seconds ago": the test does not wait ten minutes; the commits
around the moment are made with known times). "10 minutes ago" is refused first, clearly: it lies
before the end of the only base backup. A manager approves in another browser; the worker recovers
the server through Barman to that moment, dumps the database, swaps it in. The target then holds
exactly the rows committed before the moment, none after.
"""

import time
from datetime import UTC, datetime

import psycopg
import pytest

from backups.continuous import continuous_tick
from backups.models import System
from restores import targets
from restores.models import RestoreRun
from tests import continuous_support
from tests.browser.test_browser_accessibility import AXE, axe_check, report
from tests.browser_support import leave
from tests.continuous_support import URL_VARIABLE, streams, system_names
from tests.support import rq_workers, wait_for_finished_run

pytest_plugins = ["tests.restore_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

barman_home = continuous_support.barman_home
server = continuous_support.server
_barman_settings = continuous_support.barman_settings

TARGET_VARIABLE = "DRPANEL_SECRET_TEST_BROWSER_PITR_URL"
DONE = "[data-testid=run-progress][data-state={}]"


def commit(server, dbname: str, item: str) -> datetime:
    """Insert one order on the protected server; the server's time just after it committed."""
    server.execute("INSERT INTO orders (item) VALUES (%s)", item, dbname=dbname)
    return server.execute("SELECT clock_timestamp()")[0][0]


def items(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT item FROM orders ORDER BY id").fetchall()]



def ask(page, target_name: str, when: str) -> None:
    page.select_option("#target", label=next(o for o in page.locator("#target option").all_inner_texts()
                                               if o.startswith(target_name + " ")))
    page.check("input[name=kind][value=time]")
    page.fill("#time", when)
    page.fill("#confirm", target_name)
    page.get_by_role("button", name="Restore to this point").click()
    page.wait_for_load_state()


def test_an_operator_restores_production_to_a_time_ago_and_gets_exactly_the_rows_of_that_moment(
        browser, page, live_server, sign_in, operator, manager, password, scratch, server, barman_home,
        monkeypatch, redis_conn):
    from backups.runs import backup_request, backup_run_execute

    base = live_server.url
    shop = System.objects.create(name="shop", database_ref=f"env:{URL_VARIABLE}", continuous_enabled=True)
    dbname = scratch.name("shop_pitr_browser")
    scratch.create_named(dbname, setup="CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL); "
                                       "INSERT INTO orders (item) VALUES ('current')")
    server.execute(f"CREATE DATABASE {dbname}")
    server.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)", dbname=dbname)
    system_names(monkeypatch, server, dbname)
    monkeypatch.setenv(TARGET_VARIABLE, scratch.url(dbname))
    production = targets.target_create(
        actor=None, name="shop-live", environment="production", database_ref=f"env:{TARGET_VARIABLE}",
        system=shop, health_checks=[],
        sanity_checks=[{"name": "orders exist", "query": "SELECT count(*) FROM orders", "expectation": ">= 1"}])
    targets.target_right_grant(actor=None, target=production, user=operator, right="restore_to_target")
    targets.target_right_grant(actor=None, target=production, user=manager, right="approve_restore")
    streams(server)
    run = backup_request(actor=operator, system=shop, kind="base")
    assert backup_run_execute(run.id).state == "succeeded"
    continuous_tick()  # the minute's tick: the WAL catalog and RPO now

    commit(server, dbname, "before-1")
    last_before = commit(server, dbname, "before-2")
    time.sleep(8)
    first_after = commit(server, dbname, "after-1")
    commit(server, dbname, "after-2")
    moment = last_before + (first_after - last_before) / 2

    sign_in(page, "operator")
    page.wait_for_url(f"{base}/")
    rpo = page.locator("[data-testid=continuous-rpos] tr[data-system=shop] [data-testid=continuous-rpo-seconds]")
    assert rpo.inner_text().endswith(" s") and rpo.inner_text()[:-2].isdigit()
    assert rpo.get_attribute("href") == f"/systems/{shop.pk}/#continuous"
    rpo.click()
    page.wait_for_url(f"{base}/systems/{shop.pk}/#continuous")
    # The continuous protection block and the point-in-time form pass axe-core too (as the main pages do).
    found = axe_check(page, AXE.read_text())
    page.get_by_test_id("point-restore").click()
    page.wait_for_url(f"{base}/restores/new/point-in-time?system=shop")
    found += axe_check(page, AXE.read_text())
    assert not found, report([("operator", page.url, v) for v in found])

    ask(page, "shop-live", "10 minutes ago")
    assert "is before the first base backup of shop" in page.text_content(".flash")
    assert not RestoreRun.objects.exists(), "a refused point records nothing"

    ago = round((datetime.now(UTC) - moment).total_seconds())
    ask(page, "shop-live", f"{ago} seconds ago")
    page.wait_for_url(f"{base}/restores/runs/*/")
    assert page.text_content("[data-testid=run-state]").strip() == "awaiting approval"
    requested = RestoreRun.objects.get()
    assert last_before < requested.recovery_point.time < first_after, "the time ago is fixed when it is asked"

    with rq_workers(["restore"], env={"DRPANEL_BARMAN_HOME": str(barman_home)}):
        manager_page = browser.new_context().new_page()
        manager_page.on("dialog", lambda dialog: dialog.accept())
        sign_in(manager_page, "manager")
        manager_page.wait_for_url(f"{base}/")
        manager_page.goto(f"{base}/restores/runs/{requested.pk}/")
        assert "shop at " in manager_page.text_content("[data-testid=approval-recovery-point]")
        manager_page.fill("#approve-password", password)
        manager_page.get_by_role("button", name="Approve the production restore").click()
        wait_for_finished_run(manager_page, DONE.format("succeeded"), timeout=300_000)
        progress = manager_page.text_content("[data-testid=run-progress]")
        leave(page, manager_page)

    assert "recover to the point" in progress and "dump the database" in progress
    requested.refresh_from_db()
    assert requested.state == "succeeded", requested.error
    assert requested.approval.decided_by == manager and requested.requested_by == operator
    assert items(scratch.url(dbname)) == ["before-1", "before-2"], "exactly the rows before the moment"
    assert [r[0] for r in server.execute("SELECT item FROM orders ORDER BY id", dbname=dbname)] == [
        "before-1", "before-2", "after-1", "after-2"], "the protected server is untouched"
