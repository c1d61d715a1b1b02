"""In the browser (Chromium): a manager edits a contact and marks it verified; an operator ticks a weekly item."""

import pytest

from compliance.models import AuditEvent, ChecklistItem, Contact
from drpanel import clock
from tests.factories import UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_manager_edits_a_contact_and_marks_it_verified(page, live_server, sign_in):
    UserFactory(username="manager", role="Manager")
    contact = Contact.objects.create(level="l2", name="Marcus Oyelaran", role="L2 Engineering",
                                     phone="+1-800-CHATBOT-2", email="marcus@example.com", response_minutes=15)
    sign_in(page, "manager")
    page.wait_for_url(f"{live_server.url}/")
    page.get_by_role("link", name="Contacts").click()
    row = page.get_by_test_id(f"contact-{contact.pk}")
    assert "review due" in row.inner_text()
    assert "1 contact due for review" in page.get_by_test_id("review-reminder").inner_text()

    row.get_by_role("link", name="Edit").click()
    page.get_by_label("Phone").fill("+1-800-CHATBOT-22")
    page.get_by_label("Response-time target (minutes)").fill("10")
    page.get_by_role("button", name="Save").click()
    page.wait_for_url(f"{live_server.url}/contacts/")
    assert "Marcus Oyelaran saved." in page.locator(".flash").inner_text()
    row = page.get_by_test_id(f"contact-{contact.pk}")
    assert "+1-800-CHATBOT-22" in row.inner_text() and "< 10 min" in row.inner_text()

    row.get_by_role("button", name="Mark verified").click()
    page.wait_for_url(f"{live_server.url}/contacts/#contact-{contact.pk}")
    verified = page.get_by_test_id(f"verified-{contact.pk}").inner_text()
    assert f"{clock.today():%Y-%m-%d} by manager" in verified and "current" in verified
    assert page.get_by_test_id("review-reminder").count() == 0

    changes = AuditEvent.objects.get(action="contact.updated").details["changes"]
    assert changes == {"phone": ["+1-800-CHATBOT-2", "+1-800-CHATBOT-22"], "response_minutes": [15, 10]}
    assert AuditEvent.objects.get(action="contact.verified").actor_username == "manager"


def test_an_operator_ticks_a_weekly_item(page, live_server, sign_in):
    UserFactory(username="operator", role="Operator")
    sign_in(page, "operator")
    page.wait_for_url(f"{live_server.url}/")
    page.get_by_role("link", name="Checklists").click()
    row = page.get_by_test_id("item-weekly.file_access")
    assert "pending" in row.inner_text()
    staging = page.get_by_test_id("item-weekly.staging_restore")
    assert "none was found for this period yet" in staging.inner_text()
    assert staging.get_by_role("button", name="Tick").count() == 0

    row.get_by_label("Note").fill("Listed the bucket and read the newest three artifacts")
    row.get_by_label("Evidence link").fill("/artifacts/")
    row.get_by_role("button", name="Tick").click()
    page.wait_for_url(f"{live_server.url}/checklists/#item-weekly.file_access")
    assert "Ticked “Verify backup file accessibility”." in page.locator(".flash").inner_text()
    row = page.get_by_test_id("item-weekly.file_access")
    text = row.inner_text()
    assert "done" in text and "Ticked by operator" in text
    assert row.get_by_role("link", name="link given when ticking").get_attribute("href") == "/artifacts/"
    assert row.get_by_role("button", name="Untick").count() == 1

    item = ChecklistItem.objects.get(code="weekly.file_access")
    assert item.status == "done" and item.ticked_by.username == "operator"
    assert AuditEvent.objects.get(action="checklist.ticked").details["code"] == "weekly.file_access"
