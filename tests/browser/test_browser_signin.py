"""In the browser (Chromium): each role signs in, sees its navigation, and signs out."""

import pytest

from tests.factories import UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

NAVIGATION = {
    "Operator": {"Dashboard", "Incidents", "Artifacts", "Restores", "Checklists", "Contacts", "Certification"},
    "Manager": {"Dashboard", "Incidents", "Artifacts", "Restores", "Checklists", "Contacts", "Certification", "Audit"},
    "Auditor": {"Dashboard", "Incidents", "Artifacts", "Restores", "Checklists", "Contacts", "Certification", "Audit"},
    "Admin": {"Dashboard", "Incidents", "Artifacts", "Restores", "Checklists", "Contacts", "Certification", "Audit",
              "Admin"},
}


@pytest.mark.parametrize("role", list(NAVIGATION))
def test_each_role_signs_in_sees_its_navigation_and_signs_out(page, live_server, sign_in, role):
    username = role.lower()
    UserFactory(username=username, role=role, is_staff=role == "Admin")
    sign_in(page, username)
    page.wait_for_url(f"{live_server.url}/")
    assert page.get_by_test_id("whoami").inner_text().startswith(username)
    links = set(page.locator("nav.mainnav a").all_inner_texts())
    assert links == NAVIGATION[role]
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{live_server.url}/login/")
    assert page.locator("h1").inner_text() == "Sign in"


def test_a_wrong_password_shows_an_error_in_the_browser(page, live_server, sign_in):
    UserFactory(username="operator", role="Operator")
    sign_in(page, "operator", "wrong password")
    assert "do not match" in page.get_by_role("alert").inner_text()
