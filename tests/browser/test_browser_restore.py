"""In the browser (Chromium), with a real worker: the whole restore loop, and the demo's restores.

1. An operator requests a production restore; a manager approves it with their password; the
   page shows the progress, the swap and the health checks, then the measured RTO; the manager
   rolls it back.
2. The demo, seeded as ``make demo`` seeds it: the demo operator restores the demo database into
   staging end to end, then asks for a production restore that the demo manager approves.
"""

import io

import pytest

from backups.models import Artifact, BackupRun
from backups.runs import backup_run_execute
from restores.models import RestoreRun
from tests.browser_support import leave
from tests.support import rq_workers, wait_for_finished_run

pytest_plugins = ["tests.restore_fixtures", "tests.loop_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

DONE = "[data-testid=run-progress][data-state={}]"


def accept_confirmations(page) -> None:
    page.on("dialog", lambda dialog: dialog.accept())



def request_restore(page, base: str, artifact, target_name: str, *, drill: bool = False,
                    mode: str | None = None) -> None:
    page.goto(f"{base}/artifacts/{artifact.pk}/")
    page.get_by_role("link", name="Restore…").click()
    page.select_option("#target", label=next(o for o in page.locator("#target option").all_inner_texts()
                                               if o.startswith(target_name + " ")))
    if mode:
        page.select_option("#mode", mode)
    page.get_by_role("button", name="Continue").click()
    button = page.locator("form[data-type-to-confirm] button[type=submit]")
    assert button.is_disabled(), "the button waits for the typed name"
    page.fill("#confirm", target_name[:-1])
    assert button.is_disabled()
    if drill:
        page.check("input[name=is_drill]")
    page.fill("#confirm", target_name)
    assert button.is_enabled()
    button.click()
    page.wait_for_url(f"{base}/restores/runs/*/")


def test_the_whole_loop_request_approve_progress_swap_health_rto_rollback(browser, page, live_server, sign_in,
                                                                          operator, manager, full_artifact,
                                                                          production, scratch, password,
                                                                          redis_conn):
    base = live_server.url
    with rq_workers(["restore"], count=1):
        sign_in(page, "operator")
        page.wait_for_url(f"{base}/")
        request_restore(page, base, full_artifact, "shop-production")
        assert page.text_content("[data-testid=run-state]").strip() == "awaiting approval"
        assert "Waiting for a manager other than the requester" in page.text_content("[data-testid=run-progress]")
        run = RestoreRun.objects.get()
        assert page.locator("[data-testid=approval-card] input[name=password]").count() == 0, \
            "the requester is not offered the approval"

        manager_page = browser.new_context().new_page()
        accept_confirmations(manager_page)
        sign_in(manager_page, "manager")
        manager_page.wait_for_url(f"{base}/")
        manager_page.goto(f"{base}/restores/")
        manager_page.click(f"[data-testid=awaiting-approval] a[href='/restores/runs/{run.pk}/']")
        manager_page.fill("#approve-password", password)
        manager_page.get_by_role("button", name="Approve the production restore").click()
        manager_page.wait_for_selector("text=Approved: the restore is queued.")
        wait_for_finished_run(manager_page, DONE.format("succeeded"), timeout=120_000)
        progress = manager_page.text_content("[data-testid=run-progress]")
        for step in ("fetch and decrypt", "restore into side database", "sanity checks", "row counts", "swap",
                     "health checks"):
            assert step in progress
        assert "swapped in" in progress and "→ 200" in progress
        run.refresh_from_db()
        assert manager_page.text_content("[data-testid=rto]").strip() != "—"
        assert manager_page.locator("progress[data-testid=run-percent]").get_attribute("value") == "100"
        assert run.rto_seconds > 0 and scratch.marker(scratch.name("shop_production")) == "restored"
        assert manager_page.locator("[data-testid=recovery-checklist] [data-code=tables_intact]").inner_text() \
            .count("passed") == 1

        manager_page.fill("#rollback-password", password)
        manager_page.get_by_role("button", name="Roll back").click()
        wait_for_finished_run(manager_page, DONE.format("rolled_back"))
        assert "Rolled back in" in manager_page.text_content(".flash")
        assert manager_page.text_content("[data-testid=rollback-time]").strip() != "—"
        leave(page, manager_page)
    run.refresh_from_db()
    assert run.state == "rolled_back" and run.rolled_back_by == manager
    assert scratch.marker(scratch.name("shop_production")) == "before"


@pytest.fixture
def demo(settings, tmp_path, scratch, live_server, monkeypatch, redis_conn, loop_keys):
    """The demo as ``manage.py demo`` seeds it, on a ``drt_<random>_demo`` database, with its backups taken."""
    from django.core.management import call_command

    settings.VAR_DIR = tmp_path
    # The worker process reads its settings from the environment: there the demo's secret files (under
    # this test's var/) are only readable through the deployment's secret directories.
    monkeypatch.setenv("DRPANEL_SECRET_DIRS", str(tmp_path / "demo" / "secrets"))
    settings.DEMO_DATABASE = scratch.name("demo")
    monkeypatch.setenv("DRPANEL_DEMO_PASSWORD", "demo password 123")
    monkeypatch.setenv("PORT", str(live_server.url.rsplit(":", 1)[1]))
    settings.DEMO_S3_ENDPOINT = None
    monkeypatch.delenv("DRPANEL_DEMO_S3_ENDPOINT", raising=False)
    call_command("demo", stdout=io.StringIO())
    for run in BackupRun.objects.filter(state=BackupRun.State.QUEUED):
        assert backup_run_execute(run.pk).state == "succeeded"
    return Artifact.objects.get(kind="full")


def test_the_demo_operator_restores_staging_and_the_demo_manager_approves_production(browser, page, live_server,
                                                                                     sign_in, demo, scratch):
    base = live_server.url
    with rq_workers(["restore", "default"], count=1):
        sign_in(page, "operator", "demo password 123")
        page.wait_for_url(f"{base}/")
        request_restore(page, base, demo, "chatbotdysa-staging", drill=True)
        wait_for_finished_run(page, DONE.format("succeeded"), timeout=180_000)
        assert page.text_content("[data-testid=rto]").strip() != "—"
        staging = RestoreRun.objects.get(target__name="chatbotdysa-staging")
        assert staging.is_drill and scratch.scalar(scratch.name("demo_staging"), "SELECT count(*) FROM users") > 0

        request_restore(page, base, demo, "chatbotdysa-production")
        manager_page = browser.new_context().new_page()
        accept_confirmations(manager_page)
        sign_in(manager_page, "manager", "demo password 123")
        manager_page.wait_for_url(f"{base}/")
        production = RestoreRun.objects.get(target__name="chatbotdysa-production")
        manager_page.goto(f"{base}/restores/runs/{production.pk}/")
        manager_page.fill("#approve-password", "demo password 123")
        manager_page.get_by_role("button", name="Approve the production restore").click()
        wait_for_finished_run(manager_page, DONE.format("succeeded"), timeout=180_000)
        leave(page, manager_page)
    production.refresh_from_db()
    assert production.approval.decided_by.username == "manager"
    assert production.requested_by.username == "operator"
