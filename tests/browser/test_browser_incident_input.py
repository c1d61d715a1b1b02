"""In Chromium: what a person types on the incident page survives, and bad input says why (issue 14, items 7
and 10).

- The live region refreshes every 2 s while another person works: a note, an evidence link and a half-written
  skip reason left (the field no longer focused) are still there after the refresh, the skip form still open.
- The clocks tick without a reload (the incident's and the banner's on every page).
- Bad input: a second declaration lands on the open incident with the reason; a manual step posted without the
  evidence link its runbook requires (the browser's own check bypassed) is refused with the reason and the note
  kept; closing with required steps open is refused naming them, the review kept.

No automatic step runs here (the steps before the manual ones are skipped through the services, as another
operator would): no worker, no protected database is needed.
"""

import pytest

from backups.models import System
from restores.incident_steps import incident_step_skip
from restores.incidents import incident_declare
from restores.models import Incident
from restores.targets import target_create, target_right_grant

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def incident(operator, tmp_path):
    system = System.objects.create(name="chatbotdysa", database_ref="env:DRPANEL_SECRET_INCIDENT_NOWHERE_URL")
    target = target_create(actor=None, name="chatbotdysa-prod", environment="production", system=system,
                           database_ref="env:DRPANEL_SECRET_INCIDENT_PROD_URL", config_dir=str(tmp_path / "cfg"))
    target_right_grant(actor=None, target=target, user=operator, right="restore_to_target")
    return incident_declare(actor=operator, system=system, scenario="database", severity="critical", target=target)


def signed_in(page, sign_in, live_server, who: str) -> str:
    sign_in(page, who)
    page.wait_for_url(f"{live_server.url}/")
    return live_server.url


def test_typed_text_survives_the_live_refresh_and_the_clocks_tick(page, live_server, sign_in, operator, incident):
    base = signed_in(page, sign_in, live_server, "operator")
    page.goto(f"{base}/incidents/{incident.pk}/")
    endpoints = page.locator("[data-testid=step-endpoints]")
    endpoints.locator("input[name=note]").fill("admin panel answers; widget still")
    endpoints.locator("input[name=evidence_url]").fill("https://status.example.com/inc")
    restart = page.locator("[data-testid=step-restart]")
    restart.locator("summary").click()
    restart.locator("input[name=reason]").fill("the hosting provider restarts")
    page.locator("h1").click()  # the field is no longer focused: the refresh does not wait for it
    clock = page.text_content("[data-testid=incident-clock]")

    incident_step_skip(actor=operator, step=incident.steps.get(code="assess"), reason="another operator checked")
    page.wait_for_selector("[data-testid=step-assess][data-state=skipped]", timeout=15_000)  # the region refreshed
    page.wait_for_timeout(2_500)  # and once more
    assert endpoints.locator("input[name=note]").input_value() == "admin panel answers; widget still"
    assert endpoints.locator("input[name=evidence_url]").input_value() == "https://status.example.com/inc"
    assert restart.locator("details").get_attribute("open") is not None
    assert restart.locator("input[name=reason]").input_value() == "the hosting provider restarts"
    assert page.text_content("[data-testid=incident-clock]") != clock, "the incident's clock does not tick"

    page.goto(f"{base}/restores/")
    banner = page.get_by_test_id("incident-banner-global")
    before = banner.locator("[data-clock-since]").first.text_content()
    page.wait_for_timeout(1_500)
    assert banner.locator("[data-clock-since]").first.text_content() != before, "the banner's clock does not tick"
    page.goto("about:blank")


def test_bad_input_on_the_pages_says_why_and_loses_nothing(browser, page, live_server, sign_in, operator, manager,
                                                           incident):
    base = signed_in(page, sign_in, live_server, "operator")
    # A second declaration on the same system leads to the open incident, with the reason.
    page.goto(f"{base}/incidents/")
    page.select_option("#declare-scenario", "system")
    page.get_by_role("button", name="Declare — start the clock").click()
    page.wait_for_url(f"{base}/incidents/{incident.pk}/")
    assert "already open on chatbotdysa" in page.text_content("main")
    assert Incident.objects.count() == 1

    for code in ("assess", "recovery-point", "go-restore", "restore", "health", "restart"):
        incident_step_skip(actor=operator, step=incident.steps.get(code=code), reason="not in this test")
    page.reload()
    endpoints = page.locator("[data-testid=step-endpoints]")
    endpoints.locator("input[name=note]").fill("all answer")
    endpoints.locator("[data-testid=step-complete]").click()
    assert page.url == f"{base}/incidents/{incident.pk}/", "the browser's own check lets the form go without evidence"
    # A client that skips the browser's check (or an older page) meets the server's.
    endpoints.locator("input[name=evidence_url]").evaluate("el => el.removeAttribute('required')")
    endpoints.locator("[data-testid=step-complete]").click()
    page.wait_for_load_state()
    assert "needs an evidence link" in page.text_content("main")
    endpoints = page.locator("[data-testid=step-endpoints]")
    assert endpoints.get_attribute("data-state") == "pending"
    page.wait_for_timeout(2_500)  # a live refresh later, the note is still there
    assert endpoints.locator("input[name=note]").input_value() == "all answer"

    manager_page = browser.new_context().new_page()
    signed_in(manager_page, sign_in, live_server, "manager")
    manager_page.goto(f"{base}/incidents/{incident.pk}/")
    manager_page.on("dialog", lambda dialog: dialog.accept())
    manager_page.fill("#review-cause", "a bad deploy deleted rows")
    manager_page.fill("#review-follow-ups", "guard migrations")
    manager_page.get_by_role("button", name="Close the incident").click()
    manager_page.wait_for_url(f"{base}/incidents/{incident.pk}/#close")
    assert "required steps are still open: 7. Verify all endpoints" in manager_page.text_content("main")
    assert manager_page.input_value("#review-cause") == "a bad deploy deleted rows"
    assert manager_page.input_value("#review-follow-ups") == "guard migrations"
    incident.refresh_from_db()
    assert incident.is_open and not incident.report_hash
    for each in (page, manager_page):
        each.goto("about:blank")
    manager_page.context.close()
