"""In the browser (Chromium): a manager signs the month, an auditor prints it and downloads the evidence bundle,
which then verifies offline."""

import json
import subprocess
import sys
import zipfile
from datetime import UTC, datetime

import pytest
from django.conf import settings

from backups.models import BackupRun
from compliance.models import AuditEvent, Certification
from tests.audit_support import clean_env
from tests.factories import PASSWORD

pytest_plugins = ["tests.compliance_fixtures", "tests.health_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def audit_dirs(settings, tmp_path):
    settings.AUDIT_RETIRED_KEYS_DIR = tmp_path / "retired"


def offline(script, *args, cwd):
    return subprocess.run([sys.executable, "-I", script, *map(str, args)], env=clean_env(), capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_a_manager_signs_the_month_and_an_auditor_verifies_its_bundle_offline(page, browser, sign_in, live_server,
                                                                             manager, auditor, catalog, healthy,
                                                                             panel_clock, tmp_path):
    for hour, state in ((1, "succeeded"), (2, "succeeded"), (3, "failed")):
        BackupRun.objects.create(system=catalog.system, kind="full", state=state,
                                 created_at=datetime(2026, 11, 3, hour, tzinfo=UTC))
    sign_in(page, "manager")
    page.wait_for_url(f"{live_server.url}/")
    assert "2026-10 not signed" in page.text_content("[data-testid=certification-status]")
    page.get_by_role("link", name="Certification").click()
    page.wait_for_url("**/certifications/")
    page.click("[data-period='2026-11'] a")
    page.wait_for_url("**/certifications/2026-11/")
    assert page.get_attribute("[data-testid=cert-state]", "data-state") == "draft"
    assert page.text_content("[data-testid=cert-backups]").strip() == "2 succeeded, 1 failed"

    page.fill("#sign-attestation", "I reviewed the backups, the verifications and the roster of November.")
    page.fill("#sign-password", PASSWORD)
    page.check("input[name=confirm]")
    page.get_by_role("button", name="Sign the certification of 2026-11").click()
    page.wait_for_url("**/certifications/2026-11/")
    assert page.get_attribute("[data-testid=cert-state]", "data-state") == "signed"
    cert = Certification.objects.get()
    assert page.text_content("[data-testid=cert-hash]") == cert.content_hash
    assert page.text_content("[data-testid=cert-signer]").startswith("manager, ")
    shots = settings.BASE_DIR / "test-artifacts"
    shots.mkdir(exist_ok=True)
    page.screenshot(path=shots / "certification-signed.png", full_page=True)
    assert AuditEvent.objects.get(action="certification.signed").details["content_hash"] == cert.content_hash

    context = browser.new_context(accept_downloads=True)
    other = context.new_page()
    sign_in(other, "auditor")
    other.wait_for_url(f"{live_server.url}/")
    other.click("[data-testid=last-certification]")
    other.wait_for_url("**/certifications/2026-11/")
    assert other.locator("[data-testid=sign-card]").count() == 0, "auditors sign nothing"
    other.get_by_role("link", name="Printable view").click()
    other.wait_for_url("**/certifications/2026-11/print")
    other.emulate_media(media="print")
    assert not other.locator(".mainnav").is_visible() and other.locator("[data-testid=cert-summary]").is_visible()
    other.screenshot(path=shots / "certification-print.png", full_page=True)
    other.emulate_media(media="screen")
    other.go_back()
    with other.expect_download() as download:
        other.get_by_test_id("bundle-link").click()
    bundle = tmp_path / download.value.suggested_filename
    download.value.save_as(bundle)
    context.close()
    assert bundle.name == "drpanel-certification-2026-11.zip"

    unpacked = tmp_path / "bundle"
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(unpacked)
    document = json.loads((unpacked / "certification.json").read_text())
    assert (document["content_hash"], document["signed_by"]) == (cert.content_hash, "manager")
    assert document["record"]["backups"]["by_kind"]["full"] == {"succeeded": 2, "failed": 1, "open": 0}
    export = offline("verify_export.py", "audit-2026-11.jsonl", "--public-key", "public-key.pem", cwd=unpacked)
    assert export.returncode == 0 and export.stdout.startswith("OK: "), export.stdout + export.stderr
    verified = offline("verify_certification.py", "certification.json", "audit-2026-11.jsonl", "--public-key",
                       "public-key.pem", cwd=unpacked)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"content hash {cert.content_hash}, signed by manager" in verified.stdout
    assert AuditEvent.objects.filter(action="certification.bundle_downloaded", actor_username="auditor").exists()
