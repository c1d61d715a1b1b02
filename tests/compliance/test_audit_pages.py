"""The auditors' pages: list with filters and keyset pages, event detail, exports, key, verify button."""

import pytest
from django.db import transaction
from django.urls import reverse

from compliance.audit import audit_record
from compliance.audit.signing import current_public_key, public_pem
from compliance.models import AuditEvent
from tests.audit_support import record, tamper
from tests.support import assert_only_roles

pytestmark = pytest.mark.django_db
READERS = {"manager", "auditor", "admin"}


@pytest.fixture(autouse=True)
def audit_dirs(settings, tmp_path):
    settings.AUDIT_CHECKPOINT_DIR = tmp_path / "checkpoints"
    settings.AUDIT_RETIRED_KEYS_DIR = tmp_path / "retired"


def seqs_on(response) -> list[int]:
    return [event.seq for event in response.context["page"].events]


def test_the_list_shows_the_newest_events_first_fifty_at_a_time(clients):
    auditor = clients["auditor"]
    record(120)
    newest = AuditEvent.objects.order_by("-seq").first().seq
    page = auditor.get(reverse("compliance:audit-list"))
    assert seqs_on(page) == list(range(newest, newest - 50, -1))
    assert page.context["page"].newer is None and page.context["page"].older == newest - 49


def test_keyset_pages_go_older_and_back_newer_without_skipping(clients):
    record(120)
    client, url = clients["auditor"], reverse("compliance:audit-list")
    first = client.get(url, {"action": "test.event"})
    second = client.get(url, {"action": "test.event", "before": first.context["page"].older})
    third = client.get(url, {"action": "test.event", "before": second.context["page"].older})
    all_seqs = seqs_on(first) + seqs_on(second) + seqs_on(third)
    assert len(all_seqs) == 120 and all_seqs == sorted(set(all_seqs), reverse=True)
    assert third.context["page"].older is None
    back = client.get(url, {"action": "test.event", "after": second.context["page"].newer})
    assert seqs_on(back) == seqs_on(first)
    assert b"Older" in second.content and b"Newer" in second.content


def test_new_events_do_not_shift_an_open_page(clients):
    record(60)
    client, url = clients["auditor"], reverse("compliance:audit-list")
    older = client.get(url).context["page"].older
    before = seqs_on(client.get(url, {"before": older}))
    record(5)
    assert seqs_on(client.get(url, {"before": older})) == before


def test_filters_narrow_the_list_by_actor_action_object_outcome_and_time(clients, operator):
    record(3)
    record(2, action="test.other", object_type="auth.user", object_id=str(operator.pk))
    client, url = clients["auditor"], reverse("compliance:audit-list")
    only = client.get(url, {"action": "test.other"})
    assert {e.action for e in only.context["page"].events} == {"test.other"}
    assert len(client.get(url, {"action": "test.*"}).context["page"].events) == 5
    about = client.get(url, {"object_type": "auth.user", "object_id": str(operator.pk), "action": "test.*"})
    assert len(about.context["page"].events) == 2
    assert {e.actor_username for e in client.get(url, {"actor": "system"}).context["page"].events} == {"system"}
    assert client.get(url, {"outcome": "denied"}).context["page"].events == []
    first = AuditEvent.objects.filter(action="test.other").order_by("seq").first()
    since = first.occurred_at.strftime("%Y-%m-%dT%H:%M:%S.%f")
    timed = client.get(url, {"from": since, "action": "test.*"})
    assert [e.action for e in timed.context["page"].events] == ["test.other", "test.other"]
    assert b"Export JSON Lines (filtered)" in timed.content
    assert b"action=test." in timed.content


def test_an_impossible_filter_says_so_and_a_bad_one_is_a_400(clients):
    record(1)
    client, url = clients["auditor"], reverse("compliance:audit-list")
    assert b"No event matches these filters." in client.get(url, {"actor": "nobody"}).content
    response = client.get(url, {"from": "last tuesday"})
    assert response.status_code == 400 and b"is not a date" in response.content


def test_the_detail_shows_pretty_details_hashes_and_a_link_to_the_object(clients, operator):
    with transaction.atomic():
        event = audit_record(actor=None, action="test.detail", obj=operator,
                             details={"reason": "quarterly review", "nested": {"a": 1}})
    page = clients["admin"].get(reverse("compliance:audit-detail", args=[event.seq]))
    text = page.content.decode()
    assert page.status_code == 200
    assert '&quot;nested&quot;: {\n    &quot;a&quot;: 1\n  }' in text
    assert event.hash in text and event.prev_hash in text
    assert reverse("admin:auth_user_change", args=[operator.pk]) in text
    assert "all events about it" in text
    # Without the right to manage users, the object is named but not linked to the admin.
    auditor_page = clients["auditor"].get(reverse("compliance:audit-detail", args=[event.seq])).content.decode()
    assert reverse("admin:auth_user_change", args=[operator.pk]) not in auditor_page


def test_the_detail_says_when_the_object_is_gone(clients):
    with transaction.atomic():
        event = audit_record(actor=None, action="test.detail", object_type="auth.user", object_id="999999",
                             object_repr="ghost")
    assert b"no longer exists" in clients["auditor"].get(reverse("compliance:audit-detail", args=[event.seq])).content


def test_the_list_offers_exports_with_the_current_filter_and_the_public_key(clients):
    record(2)
    client = clients["auditor"]
    page = client.get(reverse("compliance:audit-list"), {"actor": "system"}).content.decode()
    assert f'{reverse("compliance:audit-export")}?format=jsonl&amp;actor=system' in page
    assert f'{reverse("compliance:audit-export")}?format=csv&amp;actor=system' in page
    export = client.get(reverse("compliance:audit-export"), {"format": "jsonl", "actor": "system"})
    body = b"".join(export.streaming_content).decode().splitlines()
    assert all('"actor_username":"system"' in line for line in body[:-1])
    event = AuditEvent.objects.get(action="audit.exported")
    assert event.actor_username == "auditor" and event.details["filter"] == {"actor": "system"}
    key = client.get(reverse("compliance:audit-public-key"))
    assert key.content.decode() == public_pem(current_public_key())
    assert key["Content-Disposition"].startswith('attachment; filename="drpanel-audit-')


def test_the_verify_button_verifies_records_and_shows_the_result(clients):
    record(3)
    client, url = clients["auditor"], reverse("compliance:audit-verify")
    assert b"Nobody has verified the chain yet." in client.get(url).content
    response = client.post(url)
    assert response.status_code == 200
    assert b"Intact." in response.content
    assert AuditEvent.objects.filter(action="audit.verified", actor_username="auditor", outcome="success").exists()
    assert b"Recent verifications" in response.content and b"intact" in response.content


def test_the_verify_button_names_the_first_broken_seq(clients):
    events = record(4)
    tamper("UPDATE {table} SET object_repr = 'x' WHERE seq = %s", [events[1].seq])
    response = clients["manager"].post(reverse("compliance:audit-verify"))
    assert b"Broken at" in response.content
    assert f"seq {events[1].seq}</a>: hash mismatch".encode() in response.content
    assert AuditEvent.objects.get(action="audit.verified").outcome == "failure"


@pytest.mark.parametrize(("method", "url_name", "args"), [
    ("get", "compliance:audit-list", []),
    ("get", "compliance:audit-detail", [1]),
    ("get", "compliance:audit-export", []),
    ("get", "compliance:audit-public-key", []),
    ("get", "compliance:audit-verify", []),
    ("post", "compliance:audit-verify", []),
])
def test_audit_pages_refuse_operators_and_outsiders(clients, method, url_name, args):
    record(1)
    assert_only_roles(clients, method, reverse(url_name, args=args), allowed=READERS)
