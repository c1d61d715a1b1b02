"""One journey per role in the browser (Chromium), on real workers, each ending with a screenshot in
``test-artifacts/journeys/<role>.png`` (the folder is git-ignored).

- operator: back up now (a real backup on a real worker), verify the new artifact up to
  ``restore-test``, restore it into staging (full: database and config), watch the progress bar reach
  done, tick the post-recovery checklist.
- manager: approve the production restore an operator requested, be refused approving their own
  request (on the page), roll the first one back.
- auditor and admin: their journeys are the existing browser tests, which save their screenshots here
  too: ``tests/browser/test_browser_audit.py`` (filter, export, public key, the offline verifier exits 0) and
  ``tests/browser/test_browser_targets.py`` (create a target, grant an operator ``restore_to_target``).

The full request → approve → progress → rollback loop driven by the operator is in
``tests/browser/test_browser_restore.py``; the manager's journey starts from a request made through the service.
"""

import pytest

from backups.models import Artifact, BackupRun
from compliance.audit.verify import verify_chain
from compliance.models import AuditEvent
from restores import requests
from restores.models import RestoreRun, VerificationRun
from tests.browser.test_browser_restore import DONE, accept_confirmations, leave, request_restore
from tests.support import journey_screenshot, rq_workers, wait_for, wait_for_finished_run

pytest_plugins = ["tests.restore_fixtures", "tests.loop_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

def test_operator_backs_up_verifies_restores_to_staging_and_ticks_the_checklist(page, live_server, sign_in,
                                                                                 operator, shop_system, staging,
                                                                                 scratch, redis_conn):
    base = live_server.url
    accept_confirmations(page)
    with rq_workers(count=1):
        sign_in(page, "operator")
        page.wait_for_url(f"{base}/")

        # Back up now: a full, then a config backup, each on the real worker.
        for kind, button in (("config", page.get_by_role("button", name="Back up now (config)")),
                             ("full", page.get_by_test_id("backup-full"))):
            page.goto(f"{base}/systems/")
            button.click()
            page.wait_for_url(f"{base}/backups/runs/*/")
            page.wait_for_selector("[data-testid=run-progress][data-state=succeeded]", timeout=120_000)
            assert page.get_by_test_id("run-state").inner_text().strip() == "succeeded"
            assert BackupRun.objects.filter(kind=kind, state="succeeded").count() == 1
        full = Artifact.objects.get(kind="full")
        assert full.short_id in page.get_by_test_id("run-artifact").inner_text()

        # Verify the new full up to restore-test (a throw-away database, sanity queries, dropped).
        # Each new full is verified at decrypt level by itself, right after its backup.
        wait_for(lambda: VerificationRun.objects.filter(artifact=full, trigger="backup", state="succeeded").exists(),
                 120, what="the automatic decrypt verification of the new full")
        page.get_by_test_id("run-artifact").get_by_role("link").click()
        page.wait_for_url(f"{base}/artifacts/{full.pk}/")
        assert "Last verified at level decrypt" in page.get_by_test_id("last-verified").inner_text()
        page.select_option("#verify-level", "restore-test")
        page.get_by_role("button", name="Verify", exact=True).click()
        page.wait_for_url(f"{base}/restores/verifications/*/")
        wait_for_finished_run(page, "[data-testid=verification-progress][data-state=succeeded]", timeout=120_000)
        levels = page.get_by_test_id("verification-levels").inner_text()
        for level in ("checksum", "decrypt", "structure", "restore-test"):
            assert level in levels
        assert VerificationRun.objects.get(artifact=full, level="restore-test").reached_level == "restore-test"
        page.goto(f"{base}/artifacts/{full.pk}/")
        assert "Last verified at level restore-test" in page.get_by_test_id("last-verified").inner_text()

        # Restore into staging, database and config, and watch the bar reach done.
        request_restore(page, base, full, "shop-staging", mode="full")
        wait_for_finished_run(page, DONE.format("succeeded"), timeout=180_000)
        assert page.locator("progress[data-testid=run-percent]").get_attribute("value") == "100"
        assert page.text_content("[data-testid=rto]").strip() != "—"
        run = RestoreRun.objects.get(target=staging)
        assert run.mode == "full" and run.state == "succeeded" and run.rto_seconds > 0
        assert scratch.marker(scratch.name("shop_staging")) == "restored"

        # The post-recovery checklist: the panel decided what it measured; the operator ticks the rest.
        checklist = page.get_by_test_id("recovery-checklist")
        tickable = checklist.get_by_role("button", name="Tick")
        assert tickable.count() > 0, "a full restore leaves items for people to tick"
        ticked = 0
        while tickable.count():
            row = checklist.locator("tr", has=page.get_by_role("button", name="Tick")).first
            code = row.get_attribute("data-code")
            row.locator("input[name=note]").fill(f"checked {code} by hand after the staging restore")
            row.get_by_role("button", name="Tick").click()
            page.wait_for_selector(f"[data-testid=recovery-checklist] tr[data-code={code}] .badge.done")
            ticked += 1
        statuses = checklist.locator("tbody tr td:nth-child(3)").all_inner_texts()
        assert "pending" not in [s.strip() for s in statuses]
        assert AuditEvent.objects.filter(action="restore.checklist_ticked", actor_username="operator").count() \
            == ticked
        journey_screenshot(page, "operator")
        leave(page)
    assert verify_chain().ok


def test_manager_approves_an_operators_restore_is_refused_their_own_and_rolls_back(browser, page, live_server,
                                                                                    sign_in, operator, manager,
                                                                                    full_artifact, production,
                                                                                    scratch, password,
                                                                                    redis_conn):
    base = live_server.url
    requested = requests.restore_request(actor=operator, artifact=full_artifact, target=production,
                                         mode="database-only", confirm="shop-production")
    assert requested.state == "awaiting_approval"
    accept_confirmations(page)
    with rq_workers(["restore"], count=1):
        sign_in(page, "manager")
        page.wait_for_url(f"{base}/")
        page.goto(f"{base}/restores/")
        page.click(f"[data-testid=awaiting-approval] a[href='/restores/runs/{requested.pk}/']")
        assert "You are approving operator's request" in page.get_by_test_id("approval-card").inner_text()
        page.fill("#approve-password", password)
        page.get_by_role("button", name="Approve the production restore").click()
        page.wait_for_selector("text=Approved: the restore is queued.")
        wait_for_finished_run(page, DONE.format("succeeded"), timeout=120_000)
        assert scratch.marker(scratch.name("shop_production")) == "restored"

        # Their own request: no approval form, a clear sentence, and a forced POST is refused.
        request_restore(page, base, full_artifact, "shop-production")
        own = RestoreRun.objects.exclude(pk=requested.pk).get()
        card = page.get_by_test_id("approval-card")
        assert "You asked for it: another manager" in card.inner_text()
        assert card.locator("input[name=password]").count() == 0
        page.evaluate("""([url, password]) => {
            const form = document.createElement("form");
            form.method = "post"; form.action = url;
            for (const [name, value] of [["password", password],
                 ["csrfmiddlewaretoken", document.querySelector("input[name=csrfmiddlewaretoken]").value]]) {
                const input = document.createElement("input");
                input.type = "hidden"; input.name = name; input.value = value; form.appendChild(input);
            }
            document.body.appendChild(form); form.submit();
        }""", [f"/restores/runs/{own.pk}/approve", password])
        page.wait_for_selector("h1:text('Not allowed')")
        own.refresh_from_db()
        assert own.state == "awaiting_approval"
        assert AuditEvent.objects.filter(action="access.denied", actor_username="manager").exists()

        # A request in flight blocks a rollback of the target; the manager withdraws theirs.
        page.goto(f"{base}/restores/runs/{requested.pk}/")
        assert f"in flight (run {own.short_id})" in page.locator("main").inner_text()
        page.goto(f"{base}/restores/runs/{own.pk}/")
        page.get_by_role("button", name="Withdraw the request").click()
        page.wait_for_selector("text=Withdrawn.")

        # Roll the operator's restore back: the previous database is live again.
        page.goto(f"{base}/restores/runs/{requested.pk}/")
        page.fill("#rollback-password", password)
        page.get_by_role("button", name="Roll back").click()
        wait_for_finished_run(page, DONE.format("rolled_back"))
        assert "Rolled back in" in page.text_content(".flash")
        journey_screenshot(page, "manager")
        leave(page)
    requested.refresh_from_db()
    assert requested.state == "rolled_back" and requested.rolled_back_by == manager
    assert scratch.marker(scratch.name("shop_production")) == "before"
    assert verify_chain().ok
