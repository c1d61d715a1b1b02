"""The dashboard in a real browser: the score, and evidence links that open what they name."""

from datetime import timedelta

import pytest

from compliance.health_recompute import health_recompute
from compliance.models import HealthSnapshot

pytest_plugins = ["tests.compliance_fixtures", "tests.health_fixtures"]


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_an_auditor_sees_the_score_and_follows_each_check_to_its_evidence(page, sign_in, live_server, auditor,
                                                                          catalog, healthy, roster):
    # Each row of the catalog above was saved and committed: the signals recorded the score as it grew.
    assert health_recompute(catalog.system).score == 100
    sign_in(page, "auditor")
    page.goto(f"{live_server.url}/")
    assert page.text_content("[data-testid=worst-score]") == "100"
    assert page.text_content("[data-testid=worst-status]") == "healthy"
    assert page.locator("[data-testid=health-chart] svg polyline").count() == 1
    assert "Lena One" in page.text_content("[data-testid=on-call]")

    for code, artifact in (("full_backup", healthy["full"]), ("config_backup", healthy["config"]),
                           ("offsite_copy", healthy["full"]), ("verified", healthy["full"])):
        page.goto(f"{live_server.url}/")
        page.click(f"[data-testid=checks-{catalog.system.pk}] [data-testid=evidence-{code}]")
        page.wait_for_url(f"**/artifacts/{artifact.pk}/")
        assert artifact.short_id in page.text_content("main"), code

    page.goto(f"{live_server.url}/")
    page.click("[data-testid=worst-score]")
    page.wait_for_url(f"**/systems/{catalog.system.pk}/health")
    assert page.text_content("[data-testid=score]") == "100"
    history = page.text_content("[data-testid=history]")
    assert "system saved" in history and f"artifact {healthy['config'].short_id} saved" in history
    assert HealthSnapshot.objects.filter(system=catalog.system).count() > 2


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_score_drops_on_the_page_when_the_full_is_late(page, sign_in, live_server, auditor, catalog, healthy):
    from drpanel import clock

    clock.advance(timedelta(hours=22, minutes=1))
    sign_in(page, "auditor")
    page.goto(f"{live_server.url}/")
    assert page.get_attribute("[data-testid=health-score]", "data-status") == "critical"
    row = page.locator(f"[data-testid=checks-{catalog.system.pk}] [data-testid=check-full_backup]")
    assert row.get_attribute("data-passed") == "no"
    assert "the policy asks for one every 24 h" in row.text_content()


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_with_many_systems_a_healthy_one_is_a_line_whose_score_opens_its_checks_and_axe_finds_nothing_serious(
        page, sign_in, live_server, auditor, catalog, healthy):
    from backups.models import System
    from drpanel.dashboard import CHECK_TABLES_UP_TO
    from tests.browser.test_browser_accessibility import AXE, axe_check
    from tests.drpanel.test_dashboard_scale import add_systems

    add_systems(catalog, CHECK_TABLES_UP_TO - 1)
    stale = System.objects.create(name="stale", database_ref="env:DRPANEL_SECRET_TEST_SOURCE_URL")  # no full
    assert health_recompute(catalog.system).score == 100
    sign_in(page, "auditor")
    page.goto(f"{live_server.url}/")
    assert page.locator(f"[data-testid=checks-{stale.pk}] [data-testid=check-full_backup]").get_attribute(
        "data-passed") == "no"
    assert page.locator(f"[data-testid=checks-{catalog.system.pk}]").count() == 0
    assert page.locator("[data-testid=healthy-systems] tbody tr").count() == CHECK_TABLES_UP_TO
    found = axe_check(page, AXE.read_text())
    assert not found, found

    page.click(f"[data-testid=score-{catalog.system.pk}]")
    page.wait_for_url(f"**/systems/{catalog.system.pk}/health")
    page.click(f"[data-testid=checks-{catalog.system.pk}] [data-testid=evidence-full_backup]")
    page.wait_for_url(f"**/artifacts/{healthy['full'].pk}/")
