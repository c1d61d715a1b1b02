"""In the browser (Chromium): an auditor filters the log, exports it, downloads the key, verifies the chain;
the export verifies offline and fails after a one-byte edit."""

import pytest

from compliance.models import AuditEvent
from tests.audit_support import record, run_verifier
from tests.factories import UserFactory
from tests.support import journey_screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def audit_dirs(settings, tmp_path):
    settings.AUDIT_CHECKPOINT_DIR = tmp_path / "checkpoints"
    settings.AUDIT_RETIRED_KEYS_DIR = tmp_path / "retired"


def test_an_auditor_filters_exports_and_the_export_verifies_offline(page, live_server, sign_in, tmp_path):
    UserFactory(username="auditor", role="Auditor")
    record(4, action="restore.requested")
    record(3, action="backup.started")
    sign_in(page, "auditor")
    page.wait_for_url(f"{live_server.url}/")
    page.get_by_role("link", name="Audit").click()

    page.fill("#f-action", "restore.*")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/audit/?*action=restore.*")
    actions = page.get_by_test_id("audit-events").locator("tbody td:nth-child(4)").all_inner_texts()
    assert actions == ["restore.requested"] * 4

    with page.expect_download() as download:
        page.get_by_test_id("export-jsonl").click()
    export = tmp_path / download.value.suggested_filename
    download.value.save_as(export)
    with page.expect_download() as download:
        page.get_by_test_id("public-key").click()
    key = tmp_path / download.value.suggested_filename
    download.value.save_as(key)
    assert export.suffix == ".jsonl" and key.suffix == ".pem"

    result = run_verifier(export, key)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK: 4 events") and "for auditor; filter: action=restore.*" in result.stdout

    content = bytearray(export.read_bytes())
    content[len(content) // 3] ^= 0x01
    export.write_bytes(bytes(content))
    edited = run_verifier(export, key)
    assert edited.returncode == 1 and edited.stdout.startswith("FAILED ("), edited.stdout

    page.get_by_role("link", name="Verify the chain…").click()
    page.get_by_role("button", name="Verify now").click()
    assert page.get_by_test_id("verify-result").inner_text().startswith("Intact.")
    journey_screenshot(page, "auditor")  # the auditor's journey (tests/browser/test_browser_journeys.py)
    assert AuditEvent.objects.filter(action="audit.exported", actor_username="auditor").count() == 1
    assert AuditEvent.objects.filter(action="audit.verified", actor_username="auditor", outcome="success").exists()


def test_an_operator_is_refused_the_audit_log_in_the_browser(page, live_server, sign_in):
    UserFactory(username="operator", role="Operator")
    sign_in(page, "operator")
    page.wait_for_url(f"{live_server.url}/")
    page.goto(f"{live_server.url}/audit/")
    assert page.locator("h1").inner_text() == "Not allowed"
    assert AuditEvent.objects.filter(action="access.denied", actor_username="operator").exists()
