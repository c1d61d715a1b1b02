"""The monthly certification: the record counted from rows, who may sign and when, the immutability of a
signed record, its hash in the audit chain, the pages and the API, and the bundle verified offline."""

import json
import subprocess
import sys
import zipfile
from datetime import UTC, date, datetime, timedelta

import pytest
from django.contrib.contenttypes.models import ContentType
from django.contrib.sessions.backends.db import SessionStore
from django.db import DatabaseError, connection, transaction
from django.test import Client
from django.urls import reverse

from backups.models import BackupRun
from compliance.audit.verify import verify_chain
from compliance.certification_record import (
    CertificationConflict,
    certification_assemble,
    content_hash,
    failure_reason,
)
from compliance.certifications import certification_sign
from compliance.checklists import checklist_month_summary, checklist_period_open
from compliance.models import AuditEvent, Cadence, Certification, ChecklistItem, Contact
from drpanel.models import Approval
from drpanel.permissions import Denied, mark_reauthenticated
from restores.models import RestoreRun, Target, VerificationRun
from tests.audit_support import ROOT, clean_env
from tests.factories import UserFactory
from tests.support import assert_only_roles

pytestmark = pytest.mark.django_db
pytest_plugins = ["tests.compliance_fixtures", "tests.health_fixtures"]

NOV = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
OCT = datetime(2026, 10, 20, 9, 0, tzinfo=UTC)
PANEL_ROLES = {"operator", "manager", "auditor", "admin"}
SIGN_URL = "/api/v1/certifications/2026-11/sign"


def at(hours: float) -> datetime:
    return NOV + timedelta(hours=hours)


def backup(system, kind, state, when) -> BackupRun:
    return BackupRun.objects.create(system=system, kind=kind, state=state, created_at=when,
                                    finished_at=when + timedelta(minutes=2), error="boom" if state == "failed" else "")


def verification(artifact, level, state, when, error="", seconds=60) -> VerificationRun:
    return VerificationRun.objects.create(artifact=artifact, level=level, state=state, created_at=when,
                                          started_at=when, finished_at=when + timedelta(seconds=seconds), error=error,
                                          reached_level=level if state == "succeeded" else "")


def target(name, environment) -> Target:
    return Target.objects.create(name=name, environment=environment, database_ref=f"env:DRPANEL_SECRET_{name.upper()}")


def restore(artifact, into, requester, when, *, state="succeeded", rto=None, rpo=None, approval=None) -> RestoreRun:
    healthy = when + timedelta(seconds=rto) if rto is not None else None
    return RestoreRun.objects.create(artifact=artifact, target=into, mode="database-only", state=state,
                                     requested_by=requester, created_at=when, healthy_at=healthy, finished_at=healthy,
                                     rto_seconds=rto, rpo_seconds=rpo, approval=approval,
                                     error="swap refused" if state == "failed" else "")


def approval(subject, requester, state, when, decider=None) -> Approval:
    return Approval.objects.create(kind="restore.production", content_type=ContentType.objects.get_for_model(subject),
                                   object_id=str(subject.pk), binding_hash="b" * 64, requested_by=requester,
                                   state=state, created_at=when, expires_at=when + timedelta(hours=1),
                                   decided_by=decider, decided_at=when + timedelta(minutes=5) if decider else None)


def sign(client, **body):
    return client.post(SIGN_URL, data=json.dumps(body), content_type="application/json")


# --- the record: every figure counted from rows -------------------------------------------------------

@pytest.fixture
def month(catalog, operator, manager, roster):
    """November 2026 with known rows (and October rows that must not count)."""
    system = catalog.system
    full = catalog.artifact("full", timedelta(days=20))
    for hours in (1, 25, 49):
        backup(system, "full", "succeeded", at(hours))
    failed_full = backup(system, "full", "failed", at(10))
    backup(system, "config", "succeeded", at(2))
    open_config = backup(system, "config", "failed", at(300))
    backup(system, "full", "succeeded", OCT)
    verification(full, "decrypt", "succeeded", at(3))
    verification(full, "checksum", "succeeded", at(4))
    missing = verification(full, "checksum", "failed", at(5), "checksum: primary: drpanel/x.drp is missing from /data")
    verification(full, "decrypt", "failed", at(6), "checksum: primary: the stored bytes do not match the catalog "
                 "(SHA-256 0123456789abcdef…, 10 bytes; expected fedcba9876543210…, 4096 bytes)")
    verification(full, "decrypt", "failed", at(7), "checksum: primary: the stored bytes do not match the catalog "
                 "(SHA-256 0123456789abcdef…, 4096 bytes; expected fedcba9876543210…, 4096 bytes)")
    verification(full, "decrypt", "failed", at(8), "decrypt: chunk 3 does not authenticate")
    verification(full, "checksum", "succeeded", at(9))  # remediates the missing copy of at(5)
    restore_test = verification(full, "restore-test", "succeeded", at(12), seconds=300)
    verification(full, "decrypt", "failed", OCT, "checksum: gone is missing from /data")
    full.created_at = at(11)
    full.save(update_fields=["created_at"])
    staging, production = target("staging", "staging"), target("production", "production")
    drill = restore(full, staging, operator, at(20), rto=420.0, rpo=32400.0)
    prod_run = restore(full, production, operator, at(30), rto=1000.0, rpo=600.0)
    prod_run.approval = approval(prod_run, operator, "consumed", at(30), manager)
    prod_run.save(update_fields=["approval"])
    rejected = restore(full, production, operator, at(40), state="rejected")
    approval(rejected, operator, "rejected", at(40), manager)
    expired = restore(full, production, operator, at(41), state="expired")
    approval(expired, operator, "expired", at(41))
    failed_restore = restore(full, staging, operator, at(50), state="failed")
    restore(full, staging, operator, OCT, rto=10.0)
    Contact.objects.filter(level=Contact.Level.L1).update(last_verified_on=date(2026, 11, 20))
    return {"full": full, "drill": drill, "prod_run": prod_run, "restore_test": restore_test, "missing": missing,
            "failed_full": failed_full, "open_config": open_config, "failed_restore": failed_restore}


def test_the_record_counts_backups_per_kind_in_the_month_only(month, panel_clock):
    record = certification_assemble(year=2026, month=11)
    assert record["backups"]["by_kind"]["full"] == {"succeeded": 3, "failed": 1, "open": 0}
    assert record["backups"]["by_kind"]["config"] == {"succeeded": 1, "failed": 1, "open": 0}
    assert record["backups"]["total"] == {"succeeded": 4, "failed": 2, "open": 0}
    assert [s["name"] for s in record["scope"]] == ["chatbotdysa"]
    assert record["period"] == {"year": 2026, "month": 11, "label": "2026-11", "from": "2026-11-01T00:00:00+00:00",
                                "to": "2026-12-01T00:00:00+00:00", "complete": False}


def test_the_record_measures_every_restore_and_restore_test_against_the_targets(month, panel_clock):
    record = certification_assemble(year=2026, month=11)
    restores = {r["id"]: r for r in record["restores"]}
    assert len(restores) == 5, "every restore run requested in November, whatever its state"
    drill, prod = restores[str(month["drill"].pk)], restores[str(month["prod_run"].pk)]
    assert (drill["drill"], drill["rto_seconds"], drill["rto_met"], drill["rpo_met"]) == (True, 420.0, True, False)
    assert (prod["drill"], prod["rto_seconds"], prod["rto_met"]) == (False, 1000.0, False)
    assert (prod["requested_by"], prod["approved_by"]) == ("operator", "manager")
    assert drill["url"] == reverse("restores:run-detail", args=[month["drill"].pk])
    [test] = record["restore_tests"]
    assert (test["id"], test["rto_seconds"], test["rto_met"]) == (str(month["restore_test"].pk), 300.0, True)
    assert test["rpo_seconds"] == 3600.0 + 300.0, "the artifact was 1 h old when the test began, 1 h 5 min at its end"
    assert record["rto"] == {"target_seconds": 900, "measured": 3, "met": 2, "over": 1, "worst_seconds": 1000.0,
                             "best_seconds": 300.0}
    assert (record["rpo"]["target_seconds"], record["rpo"]["measured"], record["rpo"]["met"]) == (1800, 3, 1)


def test_the_record_counts_verifications_by_outcome_and_failure_reason(month, panel_clock):
    counts = certification_assemble(year=2026, month=11)["verifications"]
    assert (counts["total"], counts["passed"], counts["failed_total"], counts["open"]) == (8, 4, 4, 0)
    assert counts["failed"] == {"missing": 1, "checksum": 1, "size": 1, "other": 1}
    assert counts["by_level"]["decrypt"] == {"passed": 1, "failed": 3, "open": 0}


def test_each_failure_says_what_remediated_it_or_that_it_is_open(month, panel_clock):
    failures = {f["id"]: f for f in certification_assemble(year=2026, month=11)["failures"]}
    assert len(failures) == 7, "2 backups, 4 verifications, 1 restore"
    assert failures[str(month["failed_full"].pk)]["remediation"]["state"] == "remediated"
    assert failures[str(month["open_config"].pk)]["remediation"]["state"] == "open"
    missing = failures[str(month["missing"].pk)]
    assert (missing["reason"], missing["remediation"]["state"]) == ("missing", "remediated")
    assert failures[str(month["failed_restore"].pk)]["remediation"]["state"] == "open"


def test_the_record_lists_approvals_with_both_identities_contacts_checklists_and_the_audit_head(month, panel_clock):
    checklist_period_open(Cadence.DAILY)
    record = certification_assemble(year=2026, month=11)
    assert record["approvals"]["counts"] == {"requested": 3, "approved": 1, "rejected": 1, "expired": 1,
                                             "pending": 0}
    decided = [(a["state"], a["requested_by"], a["decided_by"]) for a in record["approvals"]["items"]]
    assert decided == [("consumed", "operator", "manager"), ("rejected", "operator", "manager"),
                       ("expired", "operator", None)]
    assert (record["contacts"]["active"], record["contacts"]["verified_recently"]) == (5, 1)
    assert record["checklists"]["totals"] == checklist_month_summary(2026, 11)["totals"]
    head = AuditEvent.objects.order_by("-seq").first()
    assert record["audit_head"]["seq"] == head.seq and record["audit_head"]["hash"] == head.hash


def test_a_month_with_nothing_measured_shows_empty_figures_not_invented_ones(catalog, panel_clock):
    record = certification_assemble(year=2026, month=11)
    assert record["restores"] == [] and record["restore_tests"] == []
    assert record["rto"]["measured"] == 0 and record["rto"]["worst_seconds"] is None
    assert record["verifications"]["total"] == 0 and record["failures"] == []


@pytest.mark.parametrize(("error", "reason"), [
    ("checksum: no intact copy of this artifact to read", "missing"),
    ("checksum: s3: drpanel/a is missing from s3://b/p", "missing"),
    ("checksum: primary: the stored bytes do not match the catalog (SHA-256 ab…, 1 bytes; expected cd…, 2 bytes)",
     "size"),
    ("checksum: primary: the stored bytes do not match the catalog (SHA-256 ab…, 2 bytes; expected cd…, 2 bytes)",
     "checksum"),
    ("structure: pg_restore --list failed", "other"),
])
def test_failure_reasons_come_from_the_verification_error(error, reason):
    assert failure_reason(error) == reason


# --- signing ------------------------------------------------------------------------------------

def test_operators_and_auditors_cannot_sign_and_the_refusal_is_audited(clients, catalog, panel_clock, password):
    for who in ("operator", "auditor", "admin"):
        before = AuditEvent.objects.filter(action="access.denied", actor_username=who).count()
        response = sign(clients[who], password=password, attestation="I certify.")
        assert response.status_code == 403, who
        assert AuditEvent.objects.filter(action="access.denied", actor_username=who).count() == before + 1
    assert not Certification.objects.exists()


def test_signing_needs_the_password_again(clients, catalog, panel_clock):
    response = sign(clients["manager"], attestation="I certify.")
    assert response.status_code == 403 and "Re-enter your password" in response.json()["detail"]
    response = sign(clients["manager"], password="wrong", attestation="I certify.")
    assert response.status_code == 403 and "password is not correct" in response.json()["detail"]
    assert not Certification.objects.exists()
    assert AuditEvent.objects.filter(action="auth.reauthenticated", outcome="failure").count() == 1
    denial = AuditEvent.objects.filter(action="access.denied", actor_username="manager").first()
    assert denial.details["need"] == "re-authentication"


def test_the_manager_who_ran_the_months_drill_cannot_sign_it(clients, catalog, manager, panel_clock, password):
    full = catalog.artifact("full")
    restore(full, target("scratch", "scratch"), manager, at(5), rto=100.0)
    response = sign(clients["manager"], password=password, attestation="I certify.")
    assert response.status_code == 403
    assert "not the operator who ran that month's drill" in response.json()["detail"]
    assert not Certification.objects.exists()
    other = UserFactory(username="manager2", role="Manager")
    other_client = Client()
    other_client.force_login(other)
    assert sign(other_client, password=password, attestation="I certify.").status_code == 201


def test_a_drill_of_another_month_does_not_bar_the_manager(clients, catalog, manager, panel_clock, password):
    restore(catalog.artifact("full"), target("scratch", "scratch"), manager, OCT, rto=100.0)
    assert sign(clients["manager"], password=password, attestation="I certify.").status_code == 201


def test_an_attestation_is_required(clients, catalog, panel_clock, password):
    response = sign(clients["manager"], password=password, attestation="   ")
    assert response.status_code == 400 and "attestation" in response.json()["detail"]


def test_a_manager_signs_and_the_content_hash_enters_the_audit_chain(clients, month, panel_clock, password):
    response = sign(clients["manager"], password=password, attestation="Reviewed every figure; I certify.")
    assert response.status_code == 201, response.content
    data = response.json()["data"]
    cert = Certification.objects.get()
    assert (cert.state, cert.signed_by.username, cert.label, data["content_hash"]) == (
        "signed", "manager", "2026-11", cert.content_hash)
    assert cert.content_hash == content_hash(cert.record), "the stored record hashes to its stored hash"
    assert cert.record["rto"]["measured"] == 3
    event = AuditEvent.objects.get(action="certification.signed")
    assert event.details["content_hash"] == cert.content_hash and event.actor_username == "manager"
    assert event.details["attestation"] == "Reviewed every figure; I certify."
    assert event.object_id == str(cert.pk)
    assert verify_chain().ok


def test_signing_signs_the_months_signoff_items(clients, catalog, panel_clock, password):
    period = checklist_period_open(Cadence.MONTHLY, date(2026, 11, 1))
    items = period.items.filter(kind="signoff")
    assert items.exists() and not items.filter(status="signed").exists()
    assert sign(clients["manager"], password=password, attestation="I certify.").status_code == 201
    cert = Certification.objects.get()
    for item in items.all():
        assert (item.status, item.ticked_by.username) == (ChecklistItem.Status.SIGNED, "manager")
        assert item.evidence[0]["object_id"] == str(cert.pk)


def test_signing_twice_needs_a_reason_and_supersedes_the_first_record(clients, catalog, panel_clock, password):
    assert sign(clients["manager"], password=password, attestation="First.").status_code == 201
    again = sign(clients["manager"], password=password, attestation="Second.")
    assert again.status_code == 409 and "give a reason" in again.json()["detail"]
    assert Certification.objects.count() == 1
    second = sign(clients["manager"], password=password, attestation="Second.", reason="a late restore test")
    assert second.status_code == 201
    first, new = Certification.objects.order_by("pk")
    assert (first.superseded_by_id, new.supersedes_id, new.reason) == (new.pk, first.pk, "a late restore test")
    assert first.state == new.state == "signed" and first.superseded_at is not None
    event = AuditEvent.objects.filter(action="certification.signed").order_by("-seq").first()
    assert event.details["supersedes"] == first.pk and event.details["superseded_hash"] == first.content_hash
    listed = clients["auditor"].get("/api/v1/certifications").json()["results"][0]
    assert (listed["period"], listed["content_hash"], listed["superseded_records"]) == ("2026-11", new.content_hash, 1)


def test_a_month_that_has_not_begun_cannot_be_signed(clients, catalog, panel_clock, password):
    response = clients["manager"].post("/api/v1/certifications/2026-12/sign", data=json.dumps(
        {"password": password, "attestation": "x"}), content_type="application/json")
    assert response.status_code == 404
    assert clients["manager"].get("/certifications/2026-12/").status_code == 404


def test_two_records_in_force_for_one_month_are_refused_by_the_database(catalog, manager, panel_clock):
    Certification.objects.create(year=2026, month=11, state="signed", content_hash="a" * 64, signed_by=manager)
    with pytest.raises(DatabaseError), transaction.atomic():
        Certification.objects.create(year=2026, month=11, state="signed", content_hash="b" * 64, signed_by=manager)


def test_the_service_refuses_a_second_signature_without_a_reason(catalog, manager, panel_clock, rf):
    request = rf.post("/")
    request.user, request.session = manager, SessionStore()
    mark_reauthenticated(request)
    certification_sign(actor=manager, year=2026, month=11, attestation="One.", request=request)
    with pytest.raises(CertificationConflict):
        certification_sign(actor=manager, year=2026, month=11, attestation="Two.", request=request)
    with pytest.raises(Denied):
        certification_sign(actor=manager, year=2026, month=11, attestation="Two.", request=None, reason="r")


# --- a signed record never changes ----------------------------------------------------------------

@pytest.fixture
def signed(clients, catalog, panel_clock, password):
    assert sign(clients["manager"], password=password, attestation="I certify.").status_code == 201
    return Certification.objects.get()


def test_the_model_refuses_to_change_or_delete_a_signed_record(signed):
    signed.attestation = "Something else."
    with pytest.raises(PermissionError):
        signed.save()
    with pytest.raises(PermissionError):
        signed.save(update_fields=["attestation"])
    with pytest.raises(PermissionError):
        signed.delete()
    signed.refresh_from_db()
    assert signed.attestation == "I certify."


def test_the_database_refuses_to_change_or_delete_a_signed_record(signed):
    for sql in ("UPDATE compliance_certification SET content_hash = 'x' WHERE id = %s",
                "UPDATE compliance_certification SET record = '{}'::jsonb WHERE id = %s",
                "DELETE FROM compliance_certification WHERE id = %s"):
        with pytest.raises(DatabaseError, match="a signed certification never changes"), transaction.atomic(), \
                connection.cursor() as cursor:
            cursor.execute(sql, [signed.pk])
    with pytest.raises(DatabaseError), transaction.atomic():
        Certification.objects.filter(pk=signed.pk).update(attestation="edited")
    signed.refresh_from_db()
    assert signed.content_hash == content_hash(signed.record) and signed.attestation == "I certify."


# --- pages and API ---------------------------------------------------------------------------------

def test_every_panel_role_reads_the_certifications_and_an_outsider_is_refused(clients, catalog, panel_clock):
    for url in (reverse("compliance:certification-list"), reverse("compliance:certification-detail", args=["2026-11"]),
                reverse("compliance:certification-print", args=["2026-11"]), "/api/v1/certifications",
                "/api/v1/certifications/2026-11"):
        assert_only_roles(clients, "get", url, allowed=PANEL_ROLES)


def test_only_managers_may_post_the_sign_form(clients, catalog, panel_clock):
    assert_only_roles(clients, "post", reverse("compliance:certification-sign", args=["2026-11"]),
                      allowed={"manager"}, data={"attestation": "x"})


def test_a_wrong_password_on_the_sign_form_is_an_error_on_the_page_and_audited(clients, catalog, panel_clock):
    url = reverse("compliance:certification-sign", args=["2026-11"])
    response = clients["manager"].post(url, {"password": "wrong", "attestation": "I certify.", "confirm": "yes"},
                                       follow=True)
    assert response.status_code == 200 and "password is not correct" in response.content.decode()
    assert not Certification.objects.exists()
    refusal = AuditEvent.objects.filter(action="access.denied").latest("seq")
    assert refusal.details["need"] == "re-authentication"
    assert refusal.details["attempted"] == "certification.sign 2026-11"


def test_the_draft_page_shows_the_measured_figures_linked_to_their_evidence(clients, month, panel_clock):
    html = clients["operator"].get(reverse("compliance:certification-detail", args=["2026-11"])).content.decode()
    assert 'data-state="draft"' in html
    assert reverse("restores:run-detail", args=[month["drill"].pk]) in html
    assert reverse("restores:verification-detail", args=[month["restore_test"].pk]) in html
    assert reverse("backups:run-detail", args=[month["failed_full"].pk]) in html
    assert "3 measured: 2 within, 1 over; worst 1000.0 s" in html
    assert 'data-testid="sign-card"' not in html, "operators get no sign form"
    manager_html = clients["manager"].get(reverse("compliance:certification-detail", args=["2026-11"])).content
    assert b'data-testid="sign-card"' in manager_html


def test_the_drill_operator_is_told_why_there_is_no_sign_form(clients, catalog, manager, panel_clock):
    restore(catalog.artifact("full"), target("staging", "staging"), manager, at(1), rto=50.0)
    html = clients["manager"].get(reverse("compliance:certification-detail", args=["2026-11"])).content.decode()
    assert 'data-testid="sign-refused"' in html and "not the operator who ran that month" in html


def test_the_detail_api_gives_a_draft_then_the_signed_record(clients, catalog, panel_clock, password):
    draft = clients["auditor"].get("/api/v1/certifications/2026-11").json()["data"]
    assert draft["state"] == "draft" and draft["content_hash"] == content_hash(draft["record"])
    sign(clients["manager"], password=password, attestation="I certify.")
    data = clients["auditor"].get("/api/v1/certifications/2026-11").json()["data"]
    assert (data["state"], data["signed_by"], data["attestation"]) == ("signed", "manager", "I certify.")
    assert data["content_hash"] == content_hash(data["record"])
    assert clients["auditor"].get("/api/v1/certifications/2026-13").status_code == 404


def test_the_navigation_and_the_dashboard_link_the_certification(clients, catalog, panel_clock, password):
    html = clients["operator"].get(reverse("drpanel:dashboard")).content.decode()
    assert reverse("compliance:certification-list") in html and "2026-10 not signed" in html
    assert 'data-testid="last-certification"' not in html


# --- the evidence bundle ---------------------------------------------------------------------------

def unzip(response, where):
    archive = where / "bundle.zip"
    archive.write_bytes(b"".join(response.streaming_content))
    with zipfile.ZipFile(archive) as bundle:
        bundle.extractall(where)
        return set(bundle.namelist())


def run(script, *args, cwd):
    return subprocess.run([sys.executable, "-I", str(script), *map(str, args)], env=clean_env(),
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def test_only_managers_auditors_and_admins_download_the_bundle(clients, signed):
    assert_only_roles(clients, "get", "/api/v1/certifications/2026-11/bundle", allowed={"manager", "auditor", "admin"})
    assert_only_roles(clients, "get", reverse("compliance:certification-bundle", args=["2026-11"]),
                      allowed={"manager", "auditor", "admin"})


def test_an_unsigned_month_has_no_bundle(clients, catalog, panel_clock):
    assert clients["auditor"].get("/api/v1/certifications/2026-11/bundle").status_code == 409
    assert clients["auditor"].get(reverse("compliance:certification-bundle", args=["2026-11"])).status_code == 404


def test_the_bundle_unzips_and_verifies_offline(clients, signed, tmp_path):
    response = clients["auditor"].get("/api/v1/certifications/2026-11/bundle")
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    names = unzip(response, tmp_path)
    assert names == {"certification.json", "audit-2026-11.jsonl", "public-key.pem", "README.txt",
                     "verify_export.py", "verify_certification.py"}
    document = json.loads((tmp_path / "certification.json").read_text())
    assert (document["content_hash"], document["signed_by"]) == (signed.content_hash, "manager")
    readme = (tmp_path / "README.txt").read_text()
    assert "python3 verify_export.py audit-2026-11.jsonl --public-key public-key.pem" in readme
    for verifier_dir in (tmp_path, ROOT / "compliance"):
        export = run(verifier_dir / "verify_export.py", tmp_path / "audit-2026-11.jsonl", "--public-key",
                     tmp_path / "public-key.pem", cwd=tmp_path)
        assert export.returncode == 0 and export.stdout.startswith("OK: "), export.stdout + export.stderr
        assert "one unbroken stretch of the chain" in export.stdout
        cert = run(verifier_dir / "verify_certification.py", tmp_path / "certification.json",
                   tmp_path / "audit-2026-11.jsonl", "--public-key", tmp_path / "public-key.pem", cwd=tmp_path)
        assert cert.returncode == 0, cert.stdout + cert.stderr
        assert cert.stdout.startswith(f"OK: certification 2026-11 #{signed.pk}, content hash {signed.content_hash}")
    assert AuditEvent.objects.filter(action="certification.bundle_downloaded", actor_username="auditor").exists()


def test_an_edited_record_or_export_fails_offline(clients, signed, tmp_path):
    unzip(clients["auditor"].get("/api/v1/certifications/2026-11/bundle"), tmp_path)
    path = tmp_path / "certification.json"
    document = json.loads(path.read_text())
    document["record"]["backups"]["total"]["failed"] += 1
    path.write_text(json.dumps(document))
    args = (path, tmp_path / "audit-2026-11.jsonl", "--public-key", tmp_path / "public-key.pem")
    edited = run(tmp_path / "verify_certification.py", *args, cwd=tmp_path)
    assert edited.returncode == 1 and edited.stdout.startswith("FAILED (hash-mismatch)"), edited.stdout
    # A record re-hashed to match is still not the one the audit chain recorded.
    document["content_hash"] = content_hash(document["record"])
    path.write_text(json.dumps(document))
    rehashed = run(tmp_path / "verify_certification.py", *args, cwd=tmp_path)
    assert rehashed.returncode == 1 and rehashed.stdout.startswith("FAILED (not-in-chain)"), rehashed.stdout
    export = tmp_path / "audit-2026-11.jsonl"
    lines = export.read_bytes().splitlines(keepends=True)
    export.write_bytes(b"".join(line for line in lines if b'"certification.signed"' not in line))
    cut = run(tmp_path / "verify_certification.py", *args, cwd=tmp_path)
    assert cut.returncode == 1 and cut.stdout.startswith("FAILED (export-"), cut.stdout


def test_the_verifier_of_the_repository_needs_neither_django_nor_the_panel(clients, signed, tmp_path):
    unzip(clients["auditor"].get("/api/v1/certifications/2026-11/bundle"), tmp_path)
    script = ROOT / "compliance" / "verify_certification.py"
    blocker = ("import sys, runpy; sys.modules['django'] = None; sys.modules['compliance'] = None; "
               f"sys.argv = ['verify_certification.py', 'certification.json', 'audit-2026-11.jsonl', "
               f"'--public-key', 'public-key.pem']; runpy.run_path({str(script)!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-I", "-c", blocker], env=clean_env(), capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("OK: "), result.stdout + result.stderr
