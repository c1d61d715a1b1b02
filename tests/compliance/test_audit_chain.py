"""The audit chain: its encoding, append-only in PostgreSQL and in Django, fail-closed, one chain under concurrency."""

import hashlib
import json
import subprocess
import sys
import time
from datetime import UTC

import pytest
from django.contrib.auth.models import Group
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.test import Client, RequestFactory
from django.urls import reverse

from compliance.audit import GENESIS_HASH, audit_record, canonical_bytes, compute_hash, event_fields
from compliance.audit.query import canonical_line, event_rows
from compliance.audit.verify import verify_chain
from compliance.models import AuditEvent
from drpanel.models import ApiToken
from drpanel.services import api_token_create
from tests.audit_support import ROOT, TABLE, force_audit_failures, record
from tests.factories import PASSWORD
from tests.support import worker_env

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _isolated_checkpoints(settings, tmp_path):
    settings.AUDIT_CHECKPOINT_DIR = tmp_path / "checkpoints"
    settings.AUDIT_RETIRED_KEYS_DIR = tmp_path / "retired"


# --- the chain and its encoding -------------------------------------------------------------

def test_events_form_one_chain_from_the_genesis_hash():
    first, second, third = record(3)
    assert (first.seq, second.seq, third.seq) == (first.seq, first.seq + 1, first.seq + 2)
    assert AuditEvent.objects.order_by("seq").first().prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash and third.prev_hash == second.hash


# A fixed event and its hash: if this changes, every stored chain breaks. docs/auditor.md shows it.
GOLDEN_FIELDS = {
    "v": 1, "seq": 42, "occurred_at": "2026-11-25T19:30:00.123456Z", "actor_id": 7, "actor_username": "manager",
    "client_ip": "192.0.2.10", "user_agent": "curl/8.5.0", "request_id": "6f1c0e9a",
    "action": "restore.approved", "object_type": "restores.restorerun", "object_id": "91",
    "object_repr": "chatbotdysa → production", "outcome": "success",
    "details": {"target": "production", "reauthenticated": True, "rto_goal_s": 900},
    "prev_hash": "5" * 64,
}
GOLDEN_HASH = "2c220a974d5536ed710e3ad578aacd32674fd773df9fafbb6b02f0cb50e5003a"


def test_the_documented_example_hashes_to_the_documented_value():
    text = ('{"action":"restore.approved","actor_id":7,"actor_username":"manager","client_ip":"192.0.2.10",'
            '"details":{"reauthenticated":true,"rto_goal_s":900,"target":"production"},"object_id":"91",'
            '"object_repr":"chatbotdysa → production","object_type":"restores.restorerun",'
            '"occurred_at":"2026-11-25T19:30:00.123456Z","outcome":"success","prev_hash":"' + "5" * 64 + '",'
            '"request_id":"6f1c0e9a","seq":42,"user_agent":"curl/8.5.0","v":1}')
    assert canonical_bytes(GOLDEN_FIELDS) == text.encode("utf-8")
    assert compute_hash(GOLDEN_FIELDS) == hashlib.sha256(text.encode("utf-8")).hexdigest() == GOLDEN_HASH


def test_anyone_can_recompute_a_stored_hash_from_the_readme_rules(operator):
    request = RequestFactory().get("/", HTTP_USER_AGENT="Firefox", REMOTE_ADDR="198.51.100.7")
    request.request_id = "req-1"
    with transaction.atomic():
        audit_record(actor=operator, action="test.readme", obj=operator, request=request,
                     details={"b": [1, 2.5, "é"], "a": None})
    event = AuditEvent.objects.get(action="test.readme")
    document = {
        "v": 1, "seq": event.seq, "occurred_at": event.occurred_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor_id": operator.pk, "actor_username": "operator", "client_ip": "198.51.100.7", "user_agent": "Firefox",
        "request_id": "req-1", "action": "test.readme", "object_type": "auth.user", "object_id": str(operator.pk),
        "object_repr": "operator", "outcome": "success", "details": {"a": None, "b": [1, 2.5, "é"]},
        "prev_hash": event.prev_hash,
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == event.hash


def test_awkward_values_hash_the_same_after_a_round_trip_through_postgresql():
    request = RequestFactory().get("/", HTTP_USER_AGENT="bot\x00/1 \udc80", REMOTE_ADDR="2001:0DB8:0000::0001")
    with transaction.atomic():
        audit_record(actor=None, action="test.awkward", request=request, object_repr="naïve \x00 name 🚀",
                     details={"floats": [0.1, 1e-7, 1e20, -0.0, 2.5e300], "big": 2**70, "nul": "a\x00b",
                              "nested": {"ü": {"deep": [True, None]}}, "lone": "\ud800x", "tab\tkey": "\n"})
        audit_record(actor=None, action="test.awkward", request=RequestFactory().get("/", REMOTE_ADDR="::ffff:1.2.3.4"))
    for event in AuditEvent.objects.filter(action="test.awkward"):
        assert compute_hash(event_fields(event)) == event.hash
    with event_rows() as rows:
        for row in rows:
            assert hashlib.sha256(canonical_line(row).encode()).hexdigest() == row[14]
    assert verify_chain().ok


def test_the_fast_row_encoding_matches_the_writers(operator):
    with transaction.atomic():
        audit_record(actor=operator, action="test.fast", obj=operator, details={"k": [1, {"x": "ÿ"}], "z": 0.3})
        audit_record(actor=None, action="test.fast")
    events = {e.seq: e for e in AuditEvent.objects.all()}
    with event_rows() as rows:
        for row in rows:
            assert canonical_line(row).encode() == canonical_bytes(event_fields(events[row[0]]))


def test_secrets_in_details_are_redacted_but_yes_no_answers_are_kept():
    with transaction.atomic():
        event = audit_record(actor=None, action="test.redact", details={
            "password": "hunter2", "api_key": "k", "nested": {"client_secret": "s"}, "usable_password": True})
    event.refresh_from_db()
    assert event.details == {"password": "[redacted]", "api_key": "[redacted]",
                             "nested": {"client_secret": "[redacted]"}, "usable_password": True}


# --- append-only ----------------------------------------------------------------------------

@pytest.mark.parametrize("statement", [
    "UPDATE {table} SET action = 'x'",
    "DELETE FROM {table}",
    "TRUNCATE {table}",
])
def test_postgresql_refuses_to_change_or_remove_events(statement):
    record(2)
    with (pytest.raises(DatabaseError, match="the audit log is append-only"), transaction.atomic(),
          connection.cursor() as cursor):
        cursor.execute(statement.replace("{table}", TABLE))
    assert AuditEvent.objects.filter(action="test.event").count() == 2


def test_the_model_and_its_manager_refuse_changes():
    event = record(1)[0]
    event.action = "forged"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.update(action="forged")
    with pytest.raises(PermissionError):
        AuditEvent.objects.filter(pk=event.pk).delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.bulk_update([event], ["action"])
    with pytest.raises(PermissionError):
        AuditEvent.objects.bulk_create([AuditEvent(seq=999, action="forged")])
    assert AuditEvent.objects.get(pk=event.pk).action == "test.event"


def test_the_database_refuses_a_fork_of_the_chain():
    first = record(1)[0]
    forged = AuditEvent(seq=first.seq + 5, occurred_at=first.occurred_at, actor_username="x", action="forged",
                        prev_hash=first.prev_hash, hash="f" * 64)
    with pytest.raises(IntegrityError), transaction.atomic():
        forged.save(force_insert=True)


def test_the_admin_shows_events_read_only(clients):
    event = record(1)[0]
    admin = clients["admin"]
    assert admin.get(reverse("admin:compliance_auditevent_changelist")).status_code == 200
    page = admin.get(reverse("admin:compliance_auditevent_change", args=[event.pk]))
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert admin.get(reverse("admin:compliance_auditevent_add")).status_code == 403
    delete_url = reverse("admin:compliance_auditevent_delete", args=[event.pk])
    assert admin.post(delete_url, {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


# --- fail closed ----------------------------------------------------------------------------

@pytest.fixture
def audit_writes_fail():
    force_audit_failures()


def test_a_token_whose_creation_cannot_be_audited_is_not_created(manager, audit_writes_fail):
    with pytest.raises(DatabaseError, match="forced by the test"):
        api_token_create(actor=manager, user=manager, name="script", password=PASSWORD)
    assert not ApiToken.objects.exists()


def test_a_membership_change_that_cannot_be_audited_does_not_happen(operator, audit_writes_fail):
    managers = Group.objects.get(name="Manager")
    with pytest.raises(DatabaseError, match="forced by the test"), transaction.atomic():
        operator.groups.add(managers)
    assert list(operator.groups.values_list("name", flat=True)) == ["Operator"]


def test_a_sign_in_that_cannot_be_audited_does_not_sign_in(operator, password, audit_writes_fail):
    client = Client(raise_request_exception=False)
    response = client.post(reverse("drpanel:login"), {"username": "operator", "password": password})
    assert response.status_code == 500
    assert client.get(reverse("drpanel:dashboard")).status_code == 302


# --- concurrency ----------------------------------------------------------------------------

WRITER = """
import sys, time
from pathlib import Path
from django.db import transaction
from compliance.audit import audit_record
import tests.audit_support  # declares the test actions
writer, count, go = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
for n in range(count):
    with transaction.atomic():
        audit_record(actor=None, action="test.concurrent", details={"writer": writer, "n": n})
"""


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_eight_concurrent_writer_processes_keep_one_gapless_chain(tmp_path):
    writers, per_writer = 8, 25
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    go = tmp_path / "go"
    runner = ("import os, sys, runpy, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'drpanel.settings'); "
              "django.setup(); sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    procs = [subprocess.Popen([sys.executable, "-c", runner, str(script), str(n), str(per_writer), str(go)],
                              env=worker_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in range(writers)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        go.touch()
        started = time.monotonic()
        for proc in procs:
            assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    written = AuditEvent.objects.filter(action="test.concurrent")
    assert written.count() == writers * per_writer, f"took {time.monotonic() - started:.1f} s"
    # Each writer's events interleave with the others' (they really ran at the same time)...
    order = [e.details["writer"] for e in written.order_by("seq")]
    assert sum(1 for a, b in zip(order, order[1:], strict=False) if a != b) > writers
    # ...and the whole log is still one chain: no gap, no fork.
    chain = list(AuditEvent.objects.order_by("seq").values_list("seq", "prev_hash", "hash"))
    assert [seq for seq, _, _ in chain] == list(range(1, len(chain) + 1))
    assert all(prev == chain[i - 1][2] for i, (_, prev, _) in enumerate(chain) if i)
    assert len({prev for _, prev, _ in chain}) == len(chain)
    assert verify_chain().ok
