"""In the browser (Chromium): an admin creates a target, grants a right on it and revokes it."""

import pytest

from compliance.models import AuditEvent
from drpanel.permissions import has_object_right
from restores.models import RESTORE_TO_TARGET, Target
from tests.factories import UserFactory
from tests.support import journey_screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_admin_creates_a_target_then_grants_and_revokes_a_right(page, live_server, sign_in):
    UserFactory(username="admin", role="Admin", is_staff=True)
    operator = UserFactory(username="operator", role="Operator")
    sign_in(page, "admin")
    page.wait_for_url(f"{live_server.url}/")
    page.goto(f"{live_server.url}/restores/targets/")
    assert "No target has been defined yet" in page.locator("main").inner_text()
    page.get_by_role("link", name="New target").click()
    page.fill("#id_name", "shop-staging")
    page.select_option("#id_environment", "staging")
    page.fill("#id_database_ref", "env:DRPANEL_SECRET_SHOP_STAGING_DATABASE_URL")
    page.fill("#id_sanity-0-name", "users exist")
    page.fill("#id_sanity-0-query", "SELECT count(*) FROM users")
    page.fill("#id_sanity-0-expectation", ">= 1")
    page.get_by_role("button", name="Create target").click()
    page.wait_for_url(f"{live_server.url}/restores/targets/*/")
    assert "Target “shop-staging” created." in page.locator(".flash").inner_text()

    page.select_option("#id_user", "operator")
    page.select_option("#id_right", "restore_to_target")
    page.get_by_role("button", name="Grant").click()
    assert "operator now holds restore_to_target" in page.locator(".flash").inner_text()
    target = Target.objects.get(name="shop-staging")
    assert has_object_right(operator, RESTORE_TO_TARGET, target)
    journey_screenshot(page, "admin")  # the admin's journey (tests/browser/test_browser_journeys.py)

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke").click()
    page.wait_for_selector("text=operator no longer holds restore_to_target")
    assert not has_object_right(operator, RESTORE_TO_TARGET, target)
    actions = list(AuditEvent.objects.filter(action__startswith="target.").order_by("seq")
                   .values_list("action", flat=True))
    assert actions == ["target.created", "target.right_granted", "target.right_revoked"]
