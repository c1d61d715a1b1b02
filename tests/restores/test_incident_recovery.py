"""Disaster mode against real services: a real backup of a real database, real restores (pg_restore, the swap),
the automatic steps' jobs on real RQ workers, the manager's four-eyes approval, and drills as checklist evidence."""

from datetime import date, timedelta

import psycopg
import pytest
from django.utils import timezone

from compliance.audit.models import AuditEvent
from compliance.certification_record import certification_assemble
from drpanel.dashboard import dashboard_json
from drpanel.evidence import EvidenceRejected, validator_for
from drpanel.metrics import render
from restores import execution, incidents, requests, verifications
from restores.incident_steps import (
    incident_step_complete,
    incident_step_execute,
    incident_step_skip,
    incident_step_start,
    incident_steps_sync,
)
from restores.incidents import incident_close, incident_declare
from restores.models import IncidentStep, RestoreRun, VerificationRun
from tests.support import wait_for

pytest_plugins = ["tests.restore_fixtures", "tests.loop_fixtures"]
pytestmark = pytest.mark.slow


def verified(artifact, actor):
    run = verifications.verification_request(actor=actor, artifact=artifact, level="decrypt")
    verifications.verification_execute(run.pk)  # here, or by a worker that took its job first
    run = wait_for(lambda: VerificationRun.objects.filter(pk=run.pk, state__in=["succeeded", "failed"]).first(),
                   what="the verification")
    assert run.state == "succeeded", run.error
    artifact.refresh_from_db()
    return artifact


def step(incident, code) -> IncidentStep:
    return incident.steps.get(code=code)


def live(scratch, target) -> str:
    return scratch.name(target.name.replace("-", "_"))


def settled(incident, code, states=("done", "failed")):
    def check():
        incident_steps_sync(incident)
        found = step(incident, code)
        return found if found.state in states else None
    return check


@pytest.mark.django_db(transaction=True)
def test_scenario_1_database_corruption_recovered_with_the_managers_approval(
        operator, manager, password, full_artifact, production, shop, scratch, workers):
    """Declare → assess → pick the artifact → production restore approved by a manager → health → checklist →
    close → report with the measured RTO and RPO; the automatic steps run on a real worker (started last, so it
    sees the secret references the fixtures set)."""
    verified(full_artifact, operator)
    with psycopg.connect(shop, autocommit=True) as conn:
        conn.execute("DELETE FROM orders WHERE id > 1500")  # the corruption: 500 orders lost
    # Halfway between the backup and now: after the backup was taken (what it lost is the RPO) and before the
    # declaration, however quickly the fixtures ran.
    noticed = full_artifact.created_at + (timezone.now() - full_artifact.created_at) / 2
    incident = incident_declare(actor=operator, system=full_artifact.system, scenario="database",
                                severity="critical", target=production, noticed_at=noticed,
                                noticed_reason="orders alert at the time of the bad deploy")

    assert incident_step_start(actor=operator, step=step(incident, "assess")).state == "queued"
    assessed = wait_for(settled(incident, "assess"), what="the assessment job")
    assert assessed.state == "done" and assessed.result["reachable"] is True, assessed.result
    assert assessed.result["differing"] == 1 and "orders" in assessed.result["summary"]

    point = incident_step_start(actor=operator, step=step(incident, "recovery-point"))
    assert point.state == "done" and point.result["artifact"] == str(full_artifact.pk)
    incident_step_complete(actor=operator, step=step(incident, "go-restore"), decision="continue",
                           note="500 orders lost: restore")

    restore = incident_step_start(actor=operator, step=step(incident, "restore"))
    assert restore.state == "waiting" and restore.restore_run.state == "awaiting_approval"
    [approval] = incidents.approvals_of(incident)
    assert approval["asked"] == ["manager"] and approval["requested_by"] == "operator" and approval["requested_at"]
    assert scratch.marker(live(scratch, production)) == "before"  # nothing touched before the approval
    requests.restore_approve(actor=manager, run=restore.restore_run, password=password, note="go")
    restore = wait_for(settled(incident, "restore"), timeout=120, what="the approved restore")
    assert restore.state == "done", restore.error

    incident_step_start(actor=operator, step=step(incident, "health"))
    health = wait_for(settled(incident, "health"), what="the health-check job")
    assert health.state == "done", health.error
    assert {c["table"]: c["actual"] for c in health.result["row_counts"]}['"public"."orders"'] == 2000

    incident_step_complete(actor=operator, step=step(incident, "restart"), note="backend restarted")
    incident_step_complete(actor=manager, step=step(incident, "endpoints"), note="all answer",
                           evidence_url="https://status.example.com/incident")
    incident.refresh_from_db()
    assert incident.state == "recovering"  # the checklist step is still required
    checklist = incident_step_start(actor=operator, step=step(incident, "checklist"))
    assert checklist.state == "done" and checklist.result["items"]["tables_intact"] == "passed"

    incident.refresh_from_db()
    assert incident.state == "recovered"
    assert incident.recovered_at == step(incident, "checklist").finished_at
    assert incident.rto_seconds == (incident.recovered_at - noticed).total_seconds() > 1
    assert incident.rpo_seconds == (noticed - full_artifact.created_at).total_seconds() > 0

    closed = incident_close(actor=manager, incident=incident, review={
        "cause": "a deploy deleted orders", "remediation": "restored the verified full", "follow_ups": "guard"})
    report = closed.report
    assert report["rto"]["seconds"] == round(incident.rto_seconds, 1) and report["rto"]["target_seconds"] == 900
    assert report["rpo"]["seconds"] == round(incident.rpo_seconds, 1) and report["rpo"]["target_seconds"] == 1800
    assert report["approvals"][0]["decided_by"] == "manager"
    assert [s["finished_by"] for s in report["timeline"] if s["code"] in ("restart", "endpoints")] == [
        "operator", "manager"]
    event = AuditEvent.objects.get(action="incident.closed")
    assert event.details["report_sha256"] == incidents.report_hash(report) == closed.report_hash
    assert scratch.scalar(live(scratch, production), "SELECT count(*) FROM orders") == 2000


@pytest.mark.django_db
def test_a_failed_restore_fails_its_step_and_the_target_is_untouched(operator, full_artifact, staging, scratch):
    verified(full_artifact, operator)
    drill = incident_declare(actor=operator, system=full_artifact.system, scenario="database", severity="minor",
                             target=staging, is_drill=True)
    incident_step_skip(actor=operator, step=step(drill, "assess"), reason="drill")
    incident_step_start(actor=operator, step=step(drill, "recovery-point"))
    incident_step_complete(actor=operator, step=step(drill, "go-restore"), decision="continue")
    restore = incident_step_start(actor=operator, step=step(drill, "restore"))
    # The restore breaks before its swap: the sanity check expects a table the backup does not have.
    staging.sanity_checks.update(query="SELECT count(*) FROM no_such_table")
    run = execution.restore_run_execute(restore.restore_run_id)
    assert run.state == "failed"
    incident_steps_sync(drill)
    failed = step(drill, "restore")
    assert failed.state == "failed" and "no_such_table" in failed.error
    assert scratch.marker(live(scratch, staging)) == "before"
    assert AuditEvent.objects.filter(action="incident.step_failed").last().details["step"] == "restore"


@pytest.mark.django_db
def test_a_drill_that_completes_its_runbook_is_measured_and_is_the_evidence_of_the_runbook_and_drill_items(
        clients, operator, manager, full_artifact, staging, scratch):
    verified(full_artifact, operator)
    drill = incident_declare(actor=operator, system=full_artifact.system, scenario="database", severity="minor",
                             target=staging, is_drill=True)
    incident_step_start(actor=operator, step=step(drill, "assess"))
    incident_step_execute(step(drill, "assess").pk)  # the job, run in this process
    incident_step_start(actor=operator, step=step(drill, "recovery-point"))
    incident_step_complete(actor=operator, step=step(drill, "go-restore"), decision="continue")
    restore = incident_step_start(actor=operator, step=step(drill, "restore"))
    assert restore.restore_run.state == "queued"  # staging: no approval
    assert execution.restore_run_execute(restore.restore_run_id).state == RestoreRun.State.SUCCEEDED
    incident_steps_sync(drill)
    incident_step_start(actor=operator, step=step(drill, "health"))
    assert incident_step_execute(step(drill, "health").pk).state == "done"
    incident_step_complete(actor=operator, step=step(drill, "restart"), note="n/a in staging")
    incident_step_complete(actor=operator, step=step(drill, "endpoints"), note="ok",
                           evidence_url="https://staging.example.com/health")
    incident_step_start(actor=operator, step=step(drill, "checklist"))
    drill.refresh_from_db()
    assert drill.state == "recovered" and drill.rto_seconds > 0 and drill.rpo_seconds >= 0

    # The measured figures reach the dashboard, the system's health, /metrics and the monthly certification.
    last = dashboard_json()["incidents"]["last_drill"]
    assert (last["incident"], last["rto_seconds"], last["rto_target_seconds"]) == (str(drill.pk), drill.rto_seconds,
                                                                                     900)
    assert f'drpanel_incident_rto_seconds{{drill="true",system="shop"}} {float(drill.rto_seconds)}' in render()
    page = clients["auditor"].get(f"/systems/{drill.system_id}/health").content.decode()
    assert "Last drill" in page and f"/incidents/{drill.pk}/report" in page
    assert "Last drill" in clients["auditor"].get("/").content.decode()
    [entry] = certification_assemble(year=drill.declared_at.year, month=drill.declared_at.month)["incidents"]
    assert entry["id"] == str(drill.pk) and entry["drill"] and entry["rto_met"] is True

    today = date.today()
    for code in ("weekly.runbook", "monthly.drill", "monthly.rto_rpo"):
        validator = validator_for(code)
        [evidence] = validator.candidates(today - timedelta(days=today.weekday()), today)
        assert evidence.object_id == str(drill.pk) and "RTO" in evidence.label and "RPO" in evidence.label
        assert validator.validate(today, today, "restores.incident", str(drill.pk)).object_id == str(drill.pk)
        with pytest.raises(EvidenceRejected):
            validator.validate(today - timedelta(days=40), today - timedelta(days=35), "restores.incident",
                               str(drill.pk))


@pytest.mark.django_db
def test_a_drill_with_a_required_step_skipped_is_no_evidence(operator, full_artifact, staging):
    drill = incident_declare(actor=operator, system=full_artifact.system, scenario="database", severity="minor",
                             target=staging, is_drill=True)
    for s in drill.steps.exclude(action="health_checks"):
        incident_step_skip(actor=operator, step=s, reason="paper drill")
    incident_step_start(actor=operator, step=step(drill, "health"))
    assert incident_step_execute(step(drill, "health").pk).state == "done"
    drill.refresh_from_db()
    assert drill.state == "recovered"
    today = date.today()
    assert validator_for("monthly.drill").candidates(today, today) == []
    with pytest.raises(EvidenceRejected):
        validator_for("monthly.drill").validate(today, today, "restores.incident", str(drill.pk))
