"""In the browser (Chromium), with real workers: disaster mode.

1. Scenario 1 end to end: an operator declares database corruption from the dashboard, follows the
   runbook (assess → recovery point → decision → production restore, approved by a manager in
   another browser → health → manual steps with evidence → checklist); a manager closes it and the
   report shows the measured RTO and RPO.
2. A drill into staging, started from the dashboard, whose restore needs no approval.
3. Scenario 2 onto an empty second PostgreSQL server (``second_server``: the tests' shared one, kept clean),
   and scenario 3 from the off-site copy with the primary storage location gone, onto a target on another
   server: the steps before the restore are set up through the services; the restore, its live progress, the
   health checks and the end are on the page.
"""

import os

import boto3
import pytest
from django.utils import timezone

from backups.copies import copy_artifact
from backups.models import StorageLocation
from restores import requests, verifications
from restores.incident_steps import incident_step_complete, incident_step_skip, incident_step_start
from restores.incidents import incident_declare
from restores.models import Incident, IncidentStep, VerificationRun
from tests.browser_support import leave
from tests.loop_support import take_backup
from tests.restores.test_incident_scenarios import new_host_target, orders_on
from tests.support import rq_workers, wait_for

pytest_plugins = ["tests.restore_fixtures", "tests.loop_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def verified(artifact, actor):
    run = verifications.verification_request(actor=actor, artifact=artifact, level="decrypt")
    verifications.verification_execute(run.pk)
    return wait_for(lambda: VerificationRun.objects.filter(pk=run.pk, state="succeeded").first(),
                    what="the verification")



def step_in(page, code: str, state: str, timeout: float = 90_000) -> None:
    try:
        page.wait_for_selector(f"[data-testid=step-{code}][data-state={state}]", timeout=timeout)
    except Exception:
        found = IncidentStep.objects.filter(code=code).values("state", "error", "result").first()
        raise AssertionError(f"step {code} is not {state}: {found}") from None


def run_step(page, code: str) -> None:
    page.locator(f"[data-testid=step-{code}] [data-testid=step-start]").click()
    page.wait_for_load_state()


def complete_step(page, code: str, note: str = "", evidence: str = "") -> None:
    step = page.locator(f"[data-testid=step-{code}]")
    if note:
        step.locator("input[name=note]").fill(note)
    if evidence:
        step.locator("input[name=evidence_url]").fill(evidence)
    step.locator("[data-testid=step-complete]").click()
    page.wait_for_load_state()


def test_scenario_1_declare_assess_restore_with_approval_health_checklist_close_report(
        browser, page, live_server, sign_in, operator, manager, password, full_artifact, production, redis_conn):
    base = live_server.url
    verified(full_artifact, operator)
    with rq_workers(["default", "restore"], count=1):
        sign_in(page, "operator")
        page.wait_for_url(f"{base}/")
        page.get_by_test_id("declare-incident").click()
        page.select_option("#declare-scenario", "database")
        page.select_option("#declare-target", label="shop-production (production)")
        page.fill("#declare-summary", "orders table corrupted")
        page.get_by_role("button", name="Declare — start the clock").click()
        page.wait_for_url(f"{base}/incidents/*/")
        incident = Incident.objects.get()
        assert page.get_by_test_id("incident-banner-global").is_visible()
        assert "Assess damage" in page.text_content("[data-testid=next-step]")

        run_step(page, "assess")
        step_in(page, "assess", "done")  # the live region shows the job's end without a reload
        assert "tables hold the newest manifest's row counts" in page.text_content("[data-testid=step-assess]")
        run_step(page, "recovery-point")
        step_in(page, "recovery-point", "done")
        assert full_artifact.short_id in page.text_content("[data-testid=step-recovery-point]")
        complete_step(page, "go-restore", note="restore it")
        run_step(page, "restore")
        step_in(page, "restore", "waiting")
        assert "asked" in page.text_content("[data-testid=step-restore]")
        assert "manager" in page.text_content("[data-testid=step-restore]")

        manager_page = browser.new_context().new_page()
        manager_page.on("dialog", lambda dialog: dialog.accept())
        sign_in(manager_page, "manager")
        manager_page.wait_for_url(f"{base}/")
        manager_page.goto(f"{base}/incidents/{incident.pk}/")
        manager_page.get_by_test_id("step-restore-link").click()
        manager_page.fill("#approve-password", password)
        manager_page.get_by_role("button", name="Approve the production restore").click()

        step_in(page, "restore", "done", timeout=120_000)
        run_step(page, "health")
        step_in(page, "health", "done")
        complete_step(page, "restart", note="backend restarted")
        complete_step(page, "endpoints", note="all answer", evidence="https://status.example.com/ok")
        run_step(page, "checklist")
        page.wait_for_selector("[data-testid=incident-state]:text('recovered')", timeout=30_000)
        assert "met" in page.text_content("[data-testid=incident-rto]")

        manager_page.goto(f"{base}/incidents/{incident.pk}/")
        manager_page.fill("#review-cause", "a deploy deleted orders")
        manager_page.fill("#review-remediation", "restored the verified full")
        manager_page.get_by_role("button", name="Close the incident").click()
        manager_page.wait_for_url(f"{base}/incidents/{incident.pk}/report")
        incident.refresh_from_db()
        assert incident.state == "closed" and incident.report_hash
        assert incident.report_hash in manager_page.text_content("[data-testid=report-hash]")
        rto = manager_page.text_content("[data-testid=report-rto]")
        rpo = manager_page.text_content("[data-testid=report-rpo]")
        assert "against 15 min 0 s" in rto and "met" in rto
        assert "against 30 min 0 s" in rpo and incident.rpo_seconds is not None
        page.goto(f"{base}/restores/")
        assert page.get_by_test_id("incident-banner-global").count() == 0
        leave(page, manager_page)


def test_a_drill_from_the_dashboard_into_staging_needs_no_approval(page, live_server, sign_in, operator,
                                                                   full_artifact, staging, redis_conn):
    base = live_server.url
    verified(full_artifact, operator)
    with rq_workers(["default", "restore"], count=1):
        sign_in(page, "operator")
        page.wait_for_url(f"{base}/")
        page.get_by_role("link", name="Start a drill").click()
        page.select_option("#declare-scenario", "database")
        page.select_option("#declare-target", label="shop-staging (staging)")
        assert page.is_checked("input[name=drill]")
        page.get_by_role("button", name="Start the drill").click()
        page.wait_for_url(f"{base}/incidents/*/")
        drill = Incident.objects.get()
        assert drill.is_drill and drill.target == staging
        page.set_viewport_size({"width": 390, "height": 844})  # a phone
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the incident page scrolls sideways"
        page.locator("[data-testid=step-assess] summary").click()
        page.locator("[data-testid=step-assess] input[name=reason]").fill("drill: the source is fine")
        page.locator("[data-testid=step-assess] [data-testid=step-skip]").click()
        page.wait_for_load_state()
        run_step(page, "recovery-point")
        complete_step(page, "go-restore")
        run_step(page, "restore")
        step_in(page, "restore", "done", timeout=120_000)
        drill.refresh_from_db()
        assert drill.steps.get(code="restore").restore_run.approval_id is None
        assert drill.steps.get(code="restore").finished_at <= timezone.now()
        leave(page)


def _recover_on_new_server(page, base, operator, manager, password, incident, restore_codes) -> None:
    """The operator runs the restore steps on the page; the manager approves each restore (through the service:
    the approval page is the restore page's, proven in ``test_browser_restore``)."""
    page.goto(f"{base}/incidents/{incident.pk}/")
    for code in restore_codes:
        run_step(page, code)
        step_in(page, code, "waiting")
        run = incident.steps.get(code=code).restore_run
        requests.restore_approve(actor=manager, run=run, password=password)
        step_in(page, code, "done", timeout=120_000)


def test_scenario_2_complete_system_failure_onto_an_empty_second_server(
        page, live_server, sign_in, monkeypatch, tmp_path, operator, manager, password, full_artifact, shop_system,
        health_server, redis_conn, second_server):
    base = live_server.url
    verified(full_artifact, operator)
    take_backup(shop_system, "config")
    target = new_host_target(monkeypatch, tmp_path, second_server, shop_system, health_server, operator, manager)
    incident = incident_declare(actor=operator, system=shop_system, scenario="system", severity="critical",
                                target=target)
    incident_step_complete(actor=operator, step=incident.steps.get(code="prerequisites"), note="ok")
    incident_step_skip(actor=operator, step=incident.steps.get(code="assess"), reason="the old host is gone")
    incident_step_start(actor=operator, step=incident.steps.get(code="recovery-point"))
    with rq_workers(["default", "restore"], count=1):
        sign_in(page, "operator")
        page.wait_for_url(f"{base}/")
        _recover_on_new_server(page, base, operator, manager, password, incident, ["restore", "config"])
        complete_step(page, "application", note="installed")
        complete_step(page, "startup", note="up", evidence="https://ci.example.com/run/42")
        run_step(page, "health")
        step_in(page, "health", "done")
        run_step(page, "checklist")
        page.wait_for_selector("[data-testid=incident-state]:text('recovered')", timeout=30_000)
        assert orders_on(second_server) == 2000
        leave(page)


def test_scenario_3_data_center_outage_from_the_offsite_copy_onto_another_server(
        page, live_server, sign_in, monkeypatch, tmp_path, operator, manager, password, full_artifact, shop_system,
        health_server, s3_endpoint, redis_conn, second_server):
    base = live_server.url
    bucket = f"offsite-{os.urandom(4).hex()}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    offsite = StorageLocation.objects.create(name="offsite", kind="s3", role="offsite", bucket=bucket,
                                             region="us-east-1", endpoint_url=s3_endpoint)
    primary = StorageLocation.objects.get(role="primary")
    copy_artifact(full_artifact, source=primary, target=offsite)
    verified(full_artifact, operator)
    os.rename(primary.path, primary.path + "-lost")  # the data center is gone, the primary location with it
    target = new_host_target(monkeypatch, tmp_path, second_server, shop_system, health_server, operator, manager,
                             name="shop-west")
    incident = incident_declare(actor=operator, system=shop_system, scenario="datacenter", severity="critical",
                                target=target)
    incident_step_skip(actor=operator, step=incident.steps.get(code="assess"), reason="the site is dark")
    incident_step_complete(actor=operator, step=incident.steps.get(code="failover"), decision="continue")
    incident_step_start(actor=operator, step=incident.steps.get(code="recovery-point"))
    incident_step_complete(actor=operator, step=incident.steps.get(code="deploy"), note="terraform apply",
                           evidence_url="https://ci.example.com/run/43")
    with rq_workers(["default", "restore"], count=1):
        sign_in(page, "operator")
        page.wait_for_url(f"{base}/")
        page.goto(f"{base}/incidents/{incident.pk}/")
        run_step(page, "restore")
        step_in(page, "restore", "waiting")
        requests.restore_approve(actor=manager, run=incident.steps.get(code="restore").restore_run,
                                 password=password)
        step_in(page, "restore", "done", timeout=120_000)
        page.locator("[data-testid=step-config] summary").click()
        page.locator("[data-testid=step-config] input[name=reason]").fill("config ships with the deployment")
        page.locator("[data-testid=step-config] [data-testid=step-skip]").click()
        page.wait_for_load_state()
        complete_step(page, "dns", note="switched", evidence="https://dns.example.com/change/7")
        run_step(page, "health")
        step_in(page, "health", "done")
        run_step(page, "checklist")
        page.wait_for_selector("[data-testid=incident-state]:text('recovered')", timeout=30_000)
        run = incident.steps.get(code="restore").restore_run
        assert "offsite" in str(run.steps) + str(run.plan)
        assert orders_on(second_server) == 2000
        leave(page)
