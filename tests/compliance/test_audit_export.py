"""Signed exports (JSON Lines, CSV), the offline verifier, and the audit API."""

import base64
import io
import json
import subprocess
import sys
import zipfile

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import call_command
from django.db import transaction
from django.test import Client

from compliance import verify_export
from compliance.audit import audit_record
from compliance.audit.canonical import canonical_bytes
from compliance.audit.export import audit_export_start, export_to_file
from compliance.audit.query import AuditFilter
from compliance.audit.signing import current_public_key, fingerprint, private_pem, public_pem, sign
from compliance.models import AuditEvent
from drpanel.services import api_token_create
from tests.audit_support import VERIFIER, clean_env, force_audit_failures, record, run_verifier
from tests.factories import PASSWORD
from tests.support import assert_only_roles

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def audit_dirs(settings, tmp_path):
    settings.AUDIT_CHECKPOINT_DIR = tmp_path / "checkpoints"
    settings.AUDIT_RETIRED_KEYS_DIR = tmp_path / "retired"
    return tmp_path


@pytest.fixture
def public_key(tmp_path):
    path = tmp_path / "audit-public.pem"
    path.write_text(public_pem(current_public_key()))
    return path


@pytest.fixture
def other_key(tmp_path):
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "other-public.pem"
    path.write_text(public_pem(key.public_key()))
    return key, path


def export(tmp_path, export_format="jsonl", actor=None, **params):
    record(6)
    plan = audit_export_start(actor=actor, format=export_format, flt=AuditFilter.from_params(params), via="test")
    digest, files = export_to_file(plan, tmp_path / f"export.{export_format}")
    return digest, files[0]


def lines_of(path):
    return path.read_bytes().splitlines(keepends=True)


# --- intact exports verify ------------------------------------------------------------------

def test_a_jsonl_export_verifies_offline_with_a_one_line_summary(tmp_path, public_key, auditor):
    digest, path = export(tmp_path, actor=auditor)
    result = run_verifier(path, public_key)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("\n") == 1
    assert result.stdout.startswith(f"OK: {digest['count']} events, seq 1–{digest['last_seq']} "
                                    "(one unbroken stretch of the chain)")
    assert "for auditor; filter: none" in result.stdout


def test_an_export_carries_every_event_with_its_hashes_and_ends_with_the_signed_digest(tmp_path):
    digest, path = export(tmp_path)
    *events, last = [json.loads(line) for line in lines_of(path)]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all({"seq", "prev_hash", "hash"} <= set(e) for e in events)
    assert last == digest and last["type"] == "drpanel-audit-export-digest"
    assert last["key_fingerprint"] == fingerprint(current_public_key())
    assert {"first_seq", "last_seq", "last_hash", "time_range", "filter", "signature"} <= set(last)
    # The export's own event is its last line: the export is in the log it exports.
    assert events[-1]["action"] == "audit.exported" and events[-1]["seq"] == digest["up_to_seq"]


def test_a_csv_export_verifies_offline_with_its_digest_beside_it(tmp_path, public_key):
    digest, path = export(tmp_path, "csv")
    assert (tmp_path / "export.csv.digest.json").exists()
    result = run_verifier(path, public_key)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"OK: {digest['count']} events")


def test_a_filtered_export_holds_only_matches_and_still_verifies(tmp_path, public_key):
    record(3, action="test.other")
    record(2)
    record(2, action="test.other")  # between the matches: the selection has gaps
    digest, path = export(tmp_path, action="test.event")
    events = [json.loads(line) for line in lines_of(path)[:-1]]
    assert {e["action"] for e in events} == {"test.event"} and len(events) == 8
    assert digest["filter"]["action"] == "test.event" and digest["contiguous"] is False
    result = run_verifier(path, public_key)
    assert result.returncode == 0, result.stdout
    assert "(a filtered selection)" in result.stdout and "filter: action=test.event" in result.stdout


def test_spreadsheet_formulas_are_defused_in_csv_and_restored_by_the_verifier(tmp_path, public_key):
    # Any cell may hold a formula; the actions are a fixed list, so the object's id carries it here.
    record(1, object_id="=HYPERLINK(\"http://evil\")", object_repr="'quoted")
    digest, path = export(tmp_path, "csv")
    text = path.read_text()
    assert "'=HYPERLINK" in text and "''quoted" in text
    assert run_verifier(path, public_key).returncode == 0


def test_the_verifier_needs_neither_django_nor_the_panel(tmp_path, public_key):
    _, path = export(tmp_path)
    blocker = ("import sys, runpy; sys.modules['django'] = None; sys.modules['compliance'] = None; "
               f"sys.argv = ['verify_export.py', {str(path)!r}, '--public-key', {str(public_key)!r}]; "
               f"runpy.run_path({str(VERIFIER)!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-I", "-c", blocker], env=clean_env(), capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: ")


# --- tampered exports fail, each with its reason ---------------------------------------------

def _edit_one_byte(lines, key):
    line = bytearray(lines[2])
    at = line.index(b'"action":"') + len(b'"action":"')
    line[at] ^= 0x01
    return [*lines[:2], bytes(line), *lines[3:]]


def _resign(lines, key):
    digest = json.loads(lines[-1])
    return [*lines[:-1], canonical_bytes(sign(digest, key)) + b"\n"]


def _alter_digest(lines):
    digest = json.loads(lines[-1])
    digest["exported_by"] = "someone else"
    return [*lines[:-1], canonical_bytes(digest) + b"\n"]


def _forge_signature_keep_fingerprint(lines, key):
    digest = json.loads(lines[-1])
    unsigned = {k: v for k, v in digest.items() if k != "signature"}
    forged = base64.b64encode(key.sign(canonical_bytes(unsigned))).decode()
    return [*lines[:-1], canonical_bytes({**digest, "signature": forged}) + b"\n"]


def _drop_signature_field(lines):
    digest = json.loads(lines[-1])
    digest.pop("signature")
    return [*lines[:-1], canonical_bytes(digest) + b"\n"]


# What is done to the export's lines (given another key), the reason, and words of the message
# (given the seqs of the original lines).
TAMPERS = {
    "one byte of a line edited": (
        _edit_one_byte, "edited", lambda s: f"line 3 (seq {s[2]}): its fields do not give its hash"),
    "a line removed": (lambda ls, k: [*ls[:3], *ls[4:]], "removed", lambda s: f"seq {s[4]} follows seq {s[2]}"),
    "the first line removed": (lambda ls, k: ls[1:], "removed", lambda s: "the digest signs"),
    "the last event removed": (lambda ls, k: [*ls[:-2], ls[-1]], "removed", lambda s: "the digest signs"),
    "two lines swapped": (
        lambda ls, k: [*ls[:2], ls[3], ls[2], *ls[4:]], "reordered", lambda s: f"seq {s[2]} comes after seq {s[3]}"),
    "a line repeated": (lambda ls, k: [*ls[:3], ls[2], *ls[3:]], "added", lambda s: f"seq {s[2]} appears twice"),
    "the signed digest removed": (lambda ls, k: ls[:-1], "unsigned", lambda s: "no signed digest"),
    "the signature removed from the digest": (
        lambda ls, k: _drop_signature_field(ls), "unsigned", lambda s: "no signature"),
    "re-signed with another key": (
        lambda ls, k: _resign(ls, k), "wrong-key", lambda s: "none of the given public keys"),
    "the digest altered": (
        lambda ls, k: _alter_digest(ls), "bad-signature", lambda s: "altered after it was signed"),
    "another key's signature under our fingerprint": (
        lambda ls, k: _forge_signature_keep_fingerprint(ls, k), "bad-signature", lambda s: "does not verify"),
}


@pytest.mark.parametrize("tampering", list(TAMPERS))
def test_a_tampered_jsonl_export_fails_with_its_reason(tmp_path, public_key, other_key, tampering):
    change, reason, words = TAMPERS[tampering]
    _, path = export(tmp_path)
    lines = lines_of(path)
    seqs = [json.loads(line).get("seq") for line in lines]
    path.write_bytes(b"".join(change(lines, other_key[0])))
    result = run_verifier(path, public_key)
    assert result.returncode == 1, result.stdout
    assert result.stdout.startswith(f"FAILED ({reason}): "), result.stdout
    assert words(seqs) in result.stdout


@pytest.mark.slow  # verifies the export (in process) once per byte of it, each byte flipped
def test_every_single_byte_edit_of_an_export_is_caught(tmp_path, public_key, capsys):
    _, path = export(tmp_path)
    original = path.read_bytes()
    for at in range(len(original)):
        edited = bytearray(original)
        edited[at] ^= 0x01
        path.write_bytes(bytes(edited))
        code = verify_export.main([str(path), "--public-key", str(public_key)])
        assert code == 1, f"an edit at byte {at} ({original[at:at + 1]!r}) went unnoticed"
    capsys.readouterr()


def test_a_tampered_csv_export_fails(tmp_path, public_key):
    _, path = export(tmp_path, "csv")
    original = path.read_bytes().decode()
    rows = original.splitlines(keepends=True)
    at = next(i for i, row in enumerate(rows) if ",test.event," in row)
    edited = [*rows[:at], rows[at].replace(",test.event,", ",test.evenT,"), *rows[at + 1:]]
    path.write_bytes("".join(edited).encode())
    result = run_verifier(path, public_key)
    assert result.returncode == 1 and result.stdout.startswith(f"FAILED (edited): CSV row {at + 1} "), result.stdout
    path.write_bytes("".join([*rows[:at], *rows[at + 1:]]).encode())
    assert run_verifier(path, public_key).stdout.startswith("FAILED (removed)")
    path.write_bytes(original.encode())
    (tmp_path / "export.csv.digest.json").unlink()
    assert run_verifier(path, public_key).stdout.startswith("FAILED (unsigned)")


def test_a_rotated_key_still_verifies_old_exports(tmp_path, public_key, other_key, settings):
    _, path = export(tmp_path)
    settings.AUDIT_SIGNING_KEY = private_pem(other_key[0])
    assert fingerprint(current_public_key()) == fingerprint(other_key[0].public_key())
    assert run_verifier(path, other_key[1]).stdout.startswith("FAILED (wrong-key)")
    result = run_verifier(path, other_key[1], public_key)
    assert result.returncode == 0, result.stdout


def test_unreadable_input_is_exit_2_not_a_verdict(tmp_path, public_key):
    result = run_verifier(tmp_path / "missing.jsonl", public_key)
    assert result.returncode == 2 and "cannot verify" in result.stderr
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("hello")
    _, path = export(tmp_path)
    assert run_verifier(path, not_a_key).returncode == 2


# --- exports are audited and streamed -------------------------------------------------------

def test_every_export_is_audited_with_its_format_and_filter(tmp_path, auditor):
    export(tmp_path, actor=auditor, outcome="success")
    event = AuditEvent.objects.get(action="audit.exported")
    assert event.actor == auditor
    assert event.details == {"format": "jsonl", "filter": {"outcome": "success"}, "via": "test"}


def test_an_export_that_cannot_be_audited_is_not_made(clients):
    client = clients["auditor"]
    record(3)
    force_audit_failures()
    client.raise_request_exception = False
    response = client.get("/api/v1/audit/export?format=jsonl")
    assert response.status_code == 500
    assert not getattr(response, "streaming", False)


@pytest.mark.slow  # 1,500 chained events, enough for an export of several chunks
def test_the_api_streams_the_export_in_chunks(clients):
    record(1500)
    response = clients["auditor"].get("/api/v1/audit/export?format=jsonl")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Disposition"].startswith('attachment; filename="drpanel-audit-')
    chunks = list(response.streaming_content)
    assert len(chunks) > 3
    assert b"".join(chunks).count(b"\n") == AuditEvent.objects.count() + 1


def test_the_api_csv_export_is_a_zip_that_verifies_offline(clients, tmp_path, public_key):
    record(5)
    response = clients["manager"].get("/api/v1/audit/export?format=csv&action=test.event")
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    path = tmp_path / "export.zip"
    path.write_bytes(b"".join(response.streaming_content))
    with zipfile.ZipFile(path) as archive:
        names = sorted(archive.namelist())
        assert len(names) == 2 and names[0].endswith(".csv") and names[1].endswith(".csv.digest.json")
        assert archive.read(names[0]).decode().startswith("seq,occurred_at,")
    result = run_verifier(path, public_key)
    assert result.returncode == 0, result.stdout
    assert "5 events" in result.stdout and "filter: action=test.event" in result.stdout


def test_an_unknown_format_or_filter_is_a_400(clients):
    client = clients["auditor"]
    assert client.get("/api/v1/audit/export?format=xml").status_code == 400
    assert client.get("/api/v1/audit/export?from=yesterday").status_code == 400
    assert client.get("/api/v1/audit/events?outcome=maybe").status_code == 400
    assert not AuditEvent.objects.filter(action="audit.exported").exists()


# --- the rest of the API --------------------------------------------------------------------

def test_the_events_api_filters_and_pages_by_seq(clients):
    record(7)
    client = clients["auditor"]
    first = client.get("/api/v1/audit/events?action=test.event&limit=5").json()
    assert [e["seq"] for e in first["results"]] == sorted((e["seq"] for e in first["results"]), reverse=True)
    assert len(first["results"]) == 5 and all(e["action"] == "test.event" for e in first["results"])
    assert {"hash", "prev_hash", "details", "actor_username"} <= set(first["results"][0])
    second = client.get("/api/v1/audit/events", {"action": "test.event", "limit": 5,
                                                 "cursor": first["next"]}).json()
    assert len(second["results"]) == 2 and second["next"] is None
    assert second["results"][0]["seq"] < first["results"][-1]["seq"]


def test_the_events_api_works_with_a_bearer_token(manager):
    _, raw = api_token_create(actor=manager, user=manager, name="siem", password=PASSWORD)
    response = Client().get("/api/v1/audit/events?actor=manager", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 200
    assert response.json()["results"][0]["action"] == "api_token.created"


def test_the_public_key_api_serves_the_pem_and_its_fingerprint(clients, tmp_path, settings, other_key):
    response = clients["auditor"].get("/api/v1/audit/public-key")
    assert response.status_code == 200
    assert response.content.decode() == public_pem(current_public_key())
    assert response["X-Key-Fingerprint"] == fingerprint(current_public_key())
    settings.AUDIT_RETIRED_KEYS_DIR.mkdir(parents=True)
    (settings.AUDIT_RETIRED_KEYS_DIR / "old.pem").write_text(public_pem(other_key[0].public_key()))
    keys = clients["auditor"].get("/api/v1/audit/public-keys").json()["results"]
    assert [k["current"] for k in keys] == [True, False]
    assert keys[1]["fingerprint"] == fingerprint(other_key[0].public_key())


@pytest.mark.parametrize("url", [
    "/api/v1/audit/events", "/api/v1/audit/export?format=jsonl", "/api/v1/audit/public-key",
    "/api/v1/audit/public-keys",
])
def test_the_audit_api_refuses_operators_and_outsiders(clients, url):
    assert_only_roles(clients, "get", url, allowed={"manager", "auditor", "admin"})


# --- management commands --------------------------------------------------------------------

def test_the_export_command_writes_a_csv_and_its_digest(tmp_path, public_key):
    record(2)
    out = io.StringIO()
    call_command("audit_export", "--format", "csv", "--output", str(tmp_path / "a.csv"), "--action", "test.*",
                 stdout=out)
    assert "Exported 2 events" in out.getvalue()
    assert run_verifier(tmp_path / "a.csv", public_key).returncode == 0
    event = AuditEvent.objects.get(action="audit.exported")
    assert event.actor_username == "system" and event.details["via"].startswith("manage.py audit_export")


def test_the_export_command_refuses_a_bad_filter(tmp_path):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="is not a date"):
        call_command("audit_export", "--format", "jsonl", "--output", str(tmp_path / "a.jsonl"), "--from", "soon")


def test_the_public_key_command_prints_the_pem(capsys):
    call_command("audit_public_key")
    captured = capsys.readouterr()
    assert captured.out == public_pem(current_public_key())
    assert fingerprint(current_public_key()) in captured.err


def test_digests_name_the_key_by_its_fingerprint(tmp_path):
    digest, _ = export(tmp_path)
    assert digest["key_fingerprint"] == fingerprint(current_public_key())
    assert len(base64.b64decode(digest["signature"])) == 64


def test_a_large_detail_survives_a_csv_round_trip(tmp_path, public_key):
    with transaction.atomic():
        audit_record(actor=None, action="test.large", details={f"k{n}": "x" * 9000 for n in range(30)})
    _, path = export(tmp_path, "csv")
    result = run_verifier(path, public_key)
    assert result.returncode == 0, result.stdout


def test_a_csv_digest_can_be_given_explicitly(tmp_path, public_key):
    _, path = export(tmp_path, "csv")
    moved = tmp_path / "elsewhere.json"
    (tmp_path / "export.csv.digest.json").rename(moved)
    assert run_verifier(path, public_key).stdout.startswith("FAILED (unsigned)")
    assert run_verifier(path, public_key, digest=moved).returncode == 0
