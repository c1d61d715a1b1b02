"""The contact roster: audited edits, verification and its 30-day reminder, exports, API, who may do what."""

import csv
import io
from datetime import date, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from compliance.contacts import (
    contact_create,
    contact_update,
    contact_verify,
    contacts_csv,
    contacts_due_for_review,
    contacts_review,
    contacts_vcard,
)
from compliance.models import Alert, AuditEvent, Contact
from drpanel.permissions import Denied
from tests.support import assert_only_roles

pytestmark = pytest.mark.django_db
pytest_plugins = ["tests.compliance_fixtures"]

ALL_ROLES = {"operator", "manager", "auditor", "admin"}
EDITORS = {"manager", "admin"}
L1 = {"level": "l1", "position": 1, "name": "Dana Whitfield", "role": "Support on-call", "phone": "+1-800-CHATBOT-1",
      "email": "dana@example.com", "response_minutes": 5, "notes": "", "active": True}


def test_creating_a_contact_is_audited_with_its_values(manager, panel_clock):
    contact = contact_create(actor=manager, **L1)
    event = AuditEvent.objects.get(action="contact.created")
    assert event.actor_username == "manager" and event.object_id == str(contact.pk)
    assert event.details["after"]["phone"] == "+1-800-CHATBOT-1"
    assert event.details["after"]["response_minutes"] == 5


def test_an_update_records_before_and_after_of_what_changed_only(manager, panel_clock):
    contact = contact_create(actor=manager, **L1)
    contact_update(actor=manager, contact=contact, **{**L1, "phone": "+1-800-CHATBOT-9", "response_minutes": 4})
    event = AuditEvent.objects.get(action="contact.updated")
    assert event.details == {"changes": {"phone": ["+1-800-CHATBOT-1", "+1-800-CHATBOT-9"],
                                         "response_minutes": [5, 4]}}
    contact_update(actor=manager, contact=contact, **{**L1, "phone": "+1-800-CHATBOT-9", "response_minutes": 4})
    assert AuditEvent.objects.filter(action="contact.updated").count() == 1, "saving without a change is no change"


def test_long_notes_are_cut_in_the_audit_details(manager, panel_clock):
    contact = contact_create(actor=manager, **L1)
    contact_update(actor=manager, contact=contact, **{**L1, "notes": "x" * 1500})
    before, after = AuditEvent.objects.get(action="contact.updated").details["changes"]["notes"]
    assert before == "" and len(after) == 201


@pytest.mark.parametrize(("change", "field"), [
    ({"email": ""}, "email"),
    ({"response_minutes": None}, "response_minutes"),
    ({"response_minutes": 0}, "response_minutes"),
    ({"phone": "=HYPERLINK(1)"}, "phone"),
    ({"name": ""}, "name"),
])
def test_an_escalation_contact_needs_an_email_a_target_and_a_sane_phone(manager, change, field):
    with pytest.raises(ValidationError) as exc:
        contact_create(actor=manager, **{**L1, **change})
    assert field in exc.value.message_dict
    assert not Contact.objects.exists() and not AuditEvent.objects.filter(action="contact.created").exists()


def test_a_vendor_needs_neither_an_email_nor_a_target(manager):
    contact_create(actor=manager, **{**L1, "level": "vendor", "email": "", "response_minutes": None,
                                     "name": "AWS Support"})
    assert Contact.objects.get().level == "vendor"


def test_operators_and_auditors_cannot_change_the_roster(operator, auditor, manager):
    contact = contact_create(actor=manager, **L1)
    for user in (operator, auditor):
        with pytest.raises(Denied):
            contact_create(actor=user, **L1)
        with pytest.raises(Denied):
            contact_update(actor=user, contact=contact, **{**L1, "name": "Mallory"})
        with pytest.raises(Denied):
            contact_verify(actor=user, contact=contact)
    assert Contact.objects.get().name == "Dana Whitfield"


def test_marking_verified_records_today_and_who(manager, panel_clock):
    contact = contact_create(actor=manager, **L1)
    contact_verify(actor=manager, contact=contact)
    contact.refresh_from_db()
    assert contact.last_verified_on == date(2026, 11, 25) and contact.last_verified_by == manager
    event = AuditEvent.objects.get(action="contact.verified")
    assert event.details == {"verified_on": "2026-11-25", "previous": None}


def test_a_contact_is_due_for_review_thirty_days_after_its_last_verification(manager, panel_clock):
    contact = contact_create(actor=manager, **L1)
    assert list(contacts_due_for_review()) == [contact], "never verified"
    contact_verify(actor=manager, contact=contact)
    panel_clock.advance(timedelta(days=29))
    assert list(contacts_due_for_review()) == []
    panel_clock.advance(timedelta(days=1))
    assert list(contacts_due_for_review()) == [contact]


def test_the_daily_review_raises_one_info_alert_per_stale_contact_and_verifying_resolves_it(manager, panel_clock):
    contact = contact_create(actor=manager, **L1)
    contact_verify(actor=manager, contact=contact)
    assert contacts_review() == {"raised": 0, "resolved": 0}
    panel_clock.advance(timedelta(days=31))
    assert contacts_review()["raised"] == 1
    contacts_review()
    alert = Alert.objects.get(kind="contact.unverified")
    assert alert.severity == "info" and alert.state == "open"
    assert "has not been verified since 2026-11-25" in alert.subject
    contact_verify(actor=manager, contact=contact)
    alert.refresh_from_db()
    assert alert.state == "resolved"


def test_deactivating_a_contact_closes_its_reminder(manager, panel_clock):
    contact = contact_create(actor=manager, **L1)
    contacts_review()
    contact_update(actor=manager, contact=contact, **{**L1, "active": False})
    assert Alert.objects.get(kind="contact.unverified").state == "resolved"
    assert list(contacts_due_for_review()) == []


def test_the_roster_page_shows_the_reminder(clients, manager, panel_clock):
    contact = contact_create(actor=manager, **L1)
    page = clients["operator"].get(reverse("compliance:contact-list")).content.decode()
    assert "1 contact due for review" in page and "Dana Whitfield" in page
    contact_verify(actor=manager, contact=contact)
    page = clients["operator"].get(reverse("compliance:contact-list")).content.decode()
    assert "due for review" not in page
    assert "2026-11-25 by manager" in page


def test_the_roster_lists_levels_in_escalation_order(clients, roster):
    page = clients["auditor"].get(reverse("compliance:contact-list")).content.decode()
    positions = [page.index(name) for name in ("Lena One", "Leo Two", "Lara Three", "Emil Emergency", "Vendor Co")]
    assert positions == sorted(positions)


def test_an_empty_roster_says_alerts_reach_nobody(clients):
    page = clients["operator"].get(reverse("compliance:contact-list")).content.decode()
    assert "The roster is empty" in page


def test_the_csv_export_has_every_contact_and_defuses_formulas(manager):
    contact_create(actor=manager, **{**L1, "notes": "=cmd|' /C calc'!A0", "role": "@SUM(1)"})
    rows = list(csv.DictReader(io.StringIO(contacts_csv(Contact.objects.all()))))
    assert rows[0]["name"] == "Dana Whitfield" and rows[0]["level"] == "L1"
    assert rows[0]["phone"] == "+1-800-CHATBOT-1"
    assert rows[0]["notes"] == "'=cmd|' /C calc'!A0" and rows[0]["role"] == "'@SUM(1)"


def unfold(text: str) -> list[str]:
    assert "\n" not in text.replace("\r\n", ""), "bare LF"
    return text.replace("\r\n ", "").split("\r\n")


def test_the_vcard_export_is_one_rfc_6350_file_with_every_contact(manager, roster):
    contact_create(actor=manager, **{**L1, "name": "Zoë Ñandú-Łukasiewicz", "role": "On-call; nights, weekends",
                                     "notes": "Line one\nline two, with comma; and semicolon \\ backslash " * 3})
    text = contacts_vcard(Contact.objects.in_roster_order())
    assert text.endswith("\r\n")
    assert all(len(line.encode()) <= 75 for line in text.split("\r\n")), "lines are folded at 75 octets"
    lines = unfold(text)
    assert lines.count("BEGIN:VCARD") == lines.count("END:VCARD") == 6
    assert lines.count("VERSION:4.0") == 6
    assert "FN:Zoë Ñandú-Łukasiewicz" in lines
    assert "TITLE:On-call\\; nights\\, weekends" in lines
    note = next(line for line in lines if line.startswith("NOTE:") and "Line one" in line)
    assert "Line one\\nline two\\, with comma\\; and semicolon \\\\ backslash" in note
    assert "KIND:org" in lines and "ORG:Vendor Co" in lines
    assert 'TEL;TYPE="work,voice":+1-800-CHATBOT-1' in lines
    assert len({line for line in lines if line.startswith("UID:urn:uuid:")}) == 6


def test_exports_download_and_are_audited(clients, manager):
    contact_create(actor=manager, **L1)
    response = clients["auditor"].get(reverse("compliance:contact-export", args=["vcf"]))
    assert response["Content-Type"].startswith("text/vcard")
    assert 'filename="contacts.vcf"' in response["Content-Disposition"]
    assert b"FN:Dana Whitfield" in response.content
    response = clients["operator"].get(reverse("compliance:contact-export", args=["csv"]))
    assert response["Content-Type"].startswith("text/csv") and b"Dana Whitfield" in response.content
    formats = list(AuditEvent.objects.filter(action="contact.exported").values_list("details__format", flat=True))
    assert sorted(formats) == ["csv", "vcard"]
    assert clients["operator"].get("/contacts/export.xlsx").status_code == 404


def test_the_api_returns_the_roster_in_escalation_order(clients, roster):
    body = clients["operator"].get("/api/v1/contacts").json()
    assert [c["level"] for c in body["results"]] == ["l1", "l2", "l3", "emergency", "vendor"]
    first = body["results"][0]
    assert first["name"] == "Lena One" and first["response_minutes"] == 5
    assert first["last_verified_on"] is None and first["review_due"] is True


# --- pages: who may do what ------------------------------------------------------------------

def test_the_roster_pages_are_for_every_panel_role(clients, roster):
    assert_only_roles(clients, "get", reverse("compliance:contact-list"), allowed=ALL_ROLES)
    assert_only_roles(clients, "get", reverse("compliance:contact-export", args=["csv"]), allowed=ALL_ROLES)
    assert_only_roles(clients, "get", reverse("compliance:contact-export", args=["vcf"]), allowed=ALL_ROLES)
    assert_only_roles(clients, "get", "/api/v1/contacts", allowed=ALL_ROLES)


def test_only_managers_and_admins_open_the_editor(clients, roster):
    assert_only_roles(clients, "get", reverse("compliance:contact-create"), allowed=EDITORS)
    assert_only_roles(clients, "get", reverse("compliance:contact-edit", args=[roster["l1"].pk]), allowed=EDITORS)


def test_only_managers_and_admins_add_edit_and_verify(clients, roster):
    assert_only_roles(clients, "post", reverse("compliance:contact-create"), allowed=EDITORS,
                      data={**L1, "name": "New Person"})
    assert Contact.objects.filter(name="New Person").count() == 2, "the manager's and the admin's"
    assert_only_roles(clients, "post", reverse("compliance:contact-edit", args=[roster["l1"].pk]), allowed=EDITORS,
                      data={**L1, "name": "Renamed"})
    assert_only_roles(clients, "post", reverse("compliance:contact-verify", args=[roster["l2"].pk]), allowed=EDITORS)
    roster["l2"].refresh_from_db()
    assert roster["l2"].last_verified_by.username == "admin"


def test_the_edit_form_shows_what_is_wrong(clients, roster):
    response = clients["manager"].post(reverse("compliance:contact-edit", args=[roster["l1"].pk]),
                                       {**L1, "email": ""})
    assert response.status_code == 400
    assert "Alerts reach L1, L2, L3 and Emergency contacts by email" in response.content.decode()
    roster["l1"].refresh_from_db()
    assert roster["l1"].email == "l1@example.com"


@pytest.mark.parametrize("url", [
    "/contacts/", "/contacts/new", "/contacts/export.csv", "/checklists/", "/checklists/history/",
    "/checklists/templates/", "/alerts/", "/alerts/1/",
])
def test_anonymous_visitors_are_sent_to_sign_in(client, url):
    response = client.get(url)
    assert response.status_code == 302 and response.url.startswith(reverse("drpanel:login"))


@pytest.mark.parametrize("url", ["/api/v1/contacts", "/api/v1/checklists/today", "/api/v1/alerts"])
def test_the_api_refuses_anonymous_callers(client, url):
    assert client.get(url).status_code in (401, 403)
