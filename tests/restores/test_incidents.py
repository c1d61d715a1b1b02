"""Disaster mode (issue 14): declaring incidents, following runbook steps, closing, runbooks, through the services
and the API. The steps that touch databases and workers are in ``test_incident_recovery.py``."""

from datetime import timedelta

import pytest
from django.utils import timezone

from backups.models import Artifact, System
from compliance.audit.models import AuditEvent
from drpanel.permissions import Denied
from restores import incident_steps, incidents, runbooks
from restores.incident_steps import incident_step_complete, incident_step_skip, incident_step_start
from restores.incidents import IncidentConflict, IncidentError, incident_close, incident_declare
from restores.models import Incident, RunbookTemplate
from restores.runbook_seed import SEED
from restores.targets import target_create, target_right_grant
from tests.support import assert_only_roles

pytestmark = pytest.mark.django_db

API = "/api/v1/incidents"


@pytest.fixture
def system():
    return System.objects.create(name="chatbotdysa", database_ref="env:DRPANEL_SECRET_INCIDENT_NOWHERE_URL")


@pytest.fixture
def production(system, tmp_path, operator):
    target = target_create(actor=None, name="chatbotdysa-prod", environment="production", system=system,
                           database_ref="env:DRPANEL_SECRET_INCIDENT_PROD_URL", config_dir=str(tmp_path / "cfg"))
    target_right_grant(actor=None, target=target, user=operator, right="restore_to_target")
    return target


@pytest.fixture
def staging(system, tmp_path):
    return target_create(actor=None, name="chatbotdysa-staging", environment="staging", system=system,
                         database_ref="env:DRPANEL_SECRET_INCIDENT_STAGING_URL", config_dir="")


def declare(actor, system, target, **kwargs):
    return incident_declare(actor=actor, system=system, scenario=kwargs.pop("scenario", "database"),
                            severity=kwargs.pop("severity", "critical"), target=target, **kwargs)


def events(action):
    return list(AuditEvent.objects.filter(action=action).order_by("seq"))


def step(incident, code):
    return incident.steps.get(code=code)


# --- declaring ---------------------------------------------------------------------------------


def test_an_operator_declares_and_the_current_runbook_is_copied_into_steps(operator, system, production):
    incident = declare(operator, system, production, summary="orders table corrupted")
    assert incident.state == "declared" and incident.runbook.version == 1
    assert [s.code for s in incident.steps.all()] == [s["code"] for s in SEED["database"]["steps"]]
    assert incident.rto_target_seconds == 15 * 60 and incident.rpo_target_seconds == 30 * 60
    [event] = events("incident.declared")
    assert event.actor_username == operator.username
    assert event.details["scenario"] == "database" and event.details["runbook_version"] == 1


def test_the_targets_of_a_system_are_its_own_objectives(operator, admin, system, production):
    runbooks.objective_set(actor=admin, system=system, rto_minutes=20, rpo_minutes=45)
    incident = declare(operator, system, production)
    assert (incident.rto_target_seconds, incident.rpo_target_seconds) == (20 * 60, 45 * 60)
    assert events("recovery_objective.set")[0].details == {"system": system.name, "rto_minutes": 20,
                                                          "rpo_minutes": 45}
    with pytest.raises(Denied):
        runbooks.objective_set(actor=operator, system=system, rto_minutes=1, rpo_minutes=1)


def test_a_second_declaration_answers_409_linking_the_open_one(clients, operator, system, production):
    body = {"system": system.name, "scenario": "database", "severity": "critical", "target": production.name}
    first = clients["operator"].post(API, body, content_type="application/json")
    assert first.status_code == 201, first.json()
    second = clients["manager"].post(API, {**body, "scenario": "system"}, content_type="application/json")
    assert second.status_code == 409
    assert second.json()["open_incident"]["id"] == first.json()["id"]
    assert first.json()["id"][:8] in second.json()["detail"]
    assert Incident.objects.count() == 1


def test_a_drill_does_not_block_an_incident_and_never_runs_against_production(operator, system, production, staging):
    with pytest.raises(IncidentError) as refused:
        declare(operator, system, production, is_drill=True)
    assert "target" in refused.value.errors
    drill = declare(operator, system, staging, is_drill=True)
    incident = declare(operator, system, production)
    assert drill.is_open and incident.is_open
    with pytest.raises(IncidentConflict):
        declare(operator, system, staging, is_drill=True)


def test_noticed_at_must_be_earlier_than_the_declaration_and_explained(operator, system, production):
    with pytest.raises(IncidentError) as later:
        declare(operator, system, production, noticed_at=timezone.now() + timedelta(minutes=5), noticed_reason="x")
    assert "noticed_at" in later.value.errors
    with pytest.raises(IncidentError) as unexplained:
        declare(operator, system, production, noticed_at=timezone.now() - timedelta(minutes=5))
    assert "noticed_reason" in unexplained.value.errors
    assert not Incident.objects.exists()
    noticed = timezone.now() - timedelta(minutes=7)
    incident = declare(operator, system, production, noticed_at=noticed, noticed_reason="alert at 10:02")
    assert incident.failure_at == noticed and incident.elapsed_seconds() >= 7 * 60


def test_bad_declarations_answer_400_naming_the_field(clients, system, production):
    base = {"system": system.name, "scenario": "database", "severity": "critical", "target": production.name}
    for change, field in (({"scenario": "meteor"}, "scenario"), ({"severity": 3}, "severity"),
                          ({"target": "nowhere"}, "target"), ({"system": "nope"}, "system"),
                          ({"drill": "yes"}, "drill"), ({"noticed_at": "yesterday-ish"}, "noticed_at"),
                          ({"urgent": True}, "urgent")):
        response = clients["operator"].post(API, {**base, **change}, content_type="application/json")
        assert response.status_code == 400, (change, response.content)
        assert field in response.json()["errors"], (change, response.json())
    assert not Incident.objects.exists()


def test_only_operators_and_managers_declare_and_refusals_are_audited(clients, system, production):
    body = {"system": system.name, "scenario": "database", "severity": "major", "target": production.name}
    for role in ("auditor", "admin", "outsider"):
        response = clients[role].post(API, body, content_type="application/json")
        assert response.status_code == 403, role
    assert {e.actor_username for e in events("access.denied")} == {"auditor", "admin", "outsider"}
    assert not Incident.objects.exists()
    assert_only_roles(clients, "get", API, {"operator", "manager", "auditor", "admin"})


def test_the_list_pages_with_a_cursor(clients, operator, tmp_path):
    made = []
    for i in range(3):
        system = System.objects.create(name=f"s{i}", database_ref="env:DRPANEL_SECRET_INCIDENT_NOWHERE_URL")
        target = target_create(actor=None, name=f"t{i}", environment="production", system=system,
                               database_ref="env:DRPANEL_SECRET_INCIDENT_PROD_URL", config_dir="")
        made.append(declare(operator, system, target))
    first = clients["auditor"].get(API, {"limit": 2}).json()
    assert [r["id"] for r in first["results"]] == [str(made[2].pk), str(made[1].pk)] and first["next"]
    second = clients["auditor"].get(API, {"limit": 2, "cursor": first["next"]}).json()
    assert [r["id"] for r in second["results"]] == [str(made[0].pk)] and second["next"] is None
    assert clients["auditor"].get(API, {"cursor": "garbage"}).status_code == 400


# --- steps ----------------------------------------------------------------------------------------


def test_steps_run_in_order_and_an_auditor_cannot_run_one(operator, auditor, system, production):
    incident = declare(operator, system, production)
    with pytest.raises(IncidentConflict) as refused:
        incident_step_start(actor=operator, step=step(incident, "go-restore"))
    assert "Assess damage" in str(refused.value)
    with pytest.raises(Denied):
        incident_step_start(actor=auditor, step=step(incident, "assess"))
    assert step(incident, "assess").state == "pending"


def test_a_forbidden_step_answers_403_and_is_audited(clients, operator, system, production):
    incident = declare(operator, system, production)
    response = clients["auditor"].post(f"{API}/{incident.pk}/steps/1/start", {}, content_type="application/json")
    assert response.status_code == 403
    assert events("access.denied")[-1].details["attempted"] == "incident.step_start"
    assert step(incident, "assess").state == "pending"


def test_a_manual_step_without_the_evidence_its_runbook_requires_is_refused(operator, system, production):
    incident = declare(operator, system, production)
    for code in ("assess", "recovery-point", "go-restore", "restore", "health"):
        incident_step_skip(actor=operator, step=step(incident, code), reason="done by hand in this test")
    incident_step_complete(actor=operator, step=step(incident, "restart"), note="systemctl restart backend")
    endpoints = step(incident, "endpoints")
    assert endpoints.evidence_required
    with pytest.raises(IncidentError) as refused:
        incident_step_complete(actor=operator, step=endpoints, note="all answer")
    assert "evidence_url" in refused.value.errors
    with pytest.raises(IncidentError):
        incident_step_complete(actor=operator, step=endpoints, note="all answer", evidence_url="javascript:alert(1)")
    assert step(incident, "endpoints").state == "pending"
    done = incident_step_complete(actor=operator, step=endpoints, note="all answer",
                                  evidence_url="https://grafana.example.com/d/abc")
    assert done.state == "done" and done.finished_by == operator and done.evidence_url.endswith("/abc")


def test_the_api_refuses_a_manual_step_without_evidence_with_the_field(clients, operator, system, production):
    incident = declare(operator, system, production)
    for code in ("assess", "recovery-point", "go-restore", "restore", "health", "restart"):
        incident_step_skip(actor=operator, step=step(incident, code), reason="not in this test")
    url = f"{API}/{incident.pk}/steps/7/complete"
    response = clients["operator"].post(url, {"note": "ok"}, content_type="application/json")
    assert response.status_code == 400 and "evidence_url" in response.json()["errors"]
    response = clients["operator"].post(url, {"note": "ok", "evidence_url": "https://status.example.com/x"},
                                        content_type="application/json")
    assert response.status_code == 200
    assert response.json()["steps"][6]["state"] == "done"


def test_a_decision_continues_or_is_skipped_with_a_reason(operator, system, production):
    incident = declare(operator, system, production)
    for code in ("assess", "recovery-point"):
        incident_step_skip(actor=operator, step=step(incident, code), reason="checked by hand")
    decision = step(incident, "go-restore")
    with pytest.raises(IncidentError):
        incident_step_complete(actor=operator, step=decision, decision="maybe")
    with pytest.raises(IncidentError):
        incident_step_skip(actor=operator, step=decision, reason="  ")
    skipped = incident_step_skip(actor=operator, step=decision, reason="the damage is one table: repaired by hand")
    assert skipped.state == "skipped" and skipped.decision == "skip"
    assert events("incident.step_skipped")[-1].details["reason"].startswith("the damage is one table")
    incident.refresh_from_db()
    assert incident.state == "recovering"


def test_the_restore_step_needs_a_recovery_point_first(operator, system, production):
    incident = declare(operator, system, production)
    for code in ("assess", "recovery-point", "go-restore"):
        incident_step_skip(actor=operator, step=step(incident, code), reason="test")
    with pytest.raises(IncidentConflict) as refused:
        incident_step_start(actor=operator, step=step(incident, "restore"))
    assert "recovery point" in str(refused.value)


def test_the_recovery_point_is_the_newest_verified_full(operator, system, production):
    def full(hours_ago, level):
        return Artifact.objects.create(system=system, kind="full", format="pg_custom", status="available",
                                       size=1, sha256="0" * 64, storage_key=f"k{hours_ago}",
                                       created_at=timezone.now() - timedelta(hours=hours_ago),
                                       last_verified_level=level)
    full(1, "checksum")  # newer, but not verified far enough
    chosen = full(3, "decrypt")
    full(5, "restore-test")
    incident = declare(operator, system, production)
    incident_step_skip(actor=operator, step=step(incident, "assess"), reason="test")
    done = incident_step_start(actor=operator, step=step(incident, "recovery-point"))
    assert done.state == "done" and done.result["artifact"] == str(chosen.pk)
    incident.refresh_from_db()
    assert incident.recovery_artifact == chosen and incident.recovery_point_at == chosen.created_at


def test_no_verified_full_fails_the_recovery_point_with_the_reason(operator, system, production):
    incident = declare(operator, system, production)
    incident_step_skip(actor=operator, step=step(incident, "assess"), reason="test")
    failed = incident_step_start(actor=operator, step=step(incident, "recovery-point"))
    assert failed.state == "failed" and "no available full backup verified" in failed.error
    assert events("incident.step_failed")[-1].outcome == "failure"


# --- closing --------------------------------------------------------------------------------------


def test_closing_with_required_steps_open_is_refused_with_the_reason(clients, operator, manager, system, production):
    incident = declare(operator, system, production)
    response = clients["manager"].post(f"{API}/{incident.pk}/close", {"review": {"cause": "disk"}},
                                       content_type="application/json")
    assert response.status_code == 409 and "Assess damage" in response.json()["detail"]
    assert events("incident.close_refused")[-1].details["open_steps"][0] == "assess"
    incident.refresh_from_db()
    assert incident.state == "declared" and not incident.report_hash


def test_only_a_manager_closes_and_a_closed_report_is_signed(clients, operator, manager, system, production):
    incident = declare(operator, system, production)
    for s in incident.steps.all():
        incident_step_skip(actor=operator, step=s, reason="rehearsal of the paperwork")
    response = clients["operator"].post(f"{API}/{incident.pk}/close", {"review": {"cause": "disk"}},
                                        content_type="application/json")
    assert response.status_code == 403
    with pytest.raises(IncidentError):
        incident_close(actor=manager, incident=incident, review={"cause": ""})
    closed = incident_close(actor=manager, incident=incident, review={
        "cause": "a full disk", "remediation": "alerting on disk", "follow_ups": "resize the volume"})
    assert closed.state == "closed" and closed.closed_by == manager
    [event] = events("incident.closed")
    assert event.details["report_sha256"] == closed.report_hash == incidents.report_hash(closed.report)
    assert closed.report["review"]["cause"] == "a full disk"
    kinds = {d["kind"] for d in closed.report["deviations"]}
    assert "skipped (required)" in kinds
    report = clients["auditor"].get(f"{API}/{incident.pk}/report").json()
    assert report["signed"] and report["report_sha256"] == closed.report_hash
    with pytest.raises(IncidentConflict):
        incident_close(actor=manager, incident=closed, review={"cause": "again"})
    # Closed: a new incident may be declared on the system.
    assert declare(operator, system, production).is_open


# --- runbooks ----------------------------------------------------------------------------------------


def test_an_admin_edits_a_runbook_into_a_new_version_and_an_incident_keeps_its_own(
        clients, operator, admin, system, production):
    before = declare(operator, system, production)
    steps = [dict(s) for s in runbooks.current_runbook("database").steps]
    steps.insert(1, {"code": "page-dba", "title": "Page the DBA on call", "phase": steps[0]["phase"],
                     "kind": "manual", "expected_seconds": 60, "required": False})
    response = clients["admin"].post("/api/v1/runbooks/database", {"steps": steps, "note": "page the DBA"},
                                     content_type="application/json")
    assert response.status_code == 201 and response.json()["version"] == 2
    assert events("runbook.edited")[-1].details["added"] == ["page-dba"]
    assert "page-dba" not in {s.code for s in before.steps.all()} and before.runbook.version == 1
    for role in ("operator", "manager", "auditor"):
        denied = clients[role].post("/api/v1/runbooks/database", {"steps": steps, "note": "x"},
                                    content_type="application/json")
        assert denied.status_code == 403
    assert RunbookTemplate.objects.filter(scenario="database").count() == 2


def test_a_bad_runbook_is_refused_naming_the_step_and_field(admin):
    steps = [dict(s) for s in runbooks.current_runbook("system").steps]
    steps[2] = {**steps[2], "action": "format_disk"}
    with pytest.raises(runbooks.RunbookError) as refused:
        runbooks.runbook_edit(actor=admin, scenario="system", steps=steps, note="x")
    assert "steps[2].action" in refused.value.errors
    steps = [dict(s) for s in runbooks.current_runbook("system").steps]
    steps[0]["expected_seconds"] = "2 min"
    with pytest.raises(runbooks.RunbookError) as refused:
        runbooks.runbook_edit(actor=admin, scenario="system", steps=steps, note="x")
    assert "steps[0].expected_seconds" in refused.value.errors
    assert RunbookTemplate.objects.filter(scenario="system").count() == 1


def test_every_seeded_runbook_is_valid_and_follows_the_guides_phases():
    for scenario, runbook in SEED.items():
        clean = runbooks.validate_steps(runbook["steps"])
        phases = list(dict.fromkeys(s["phase"] for s in clean))
        assert [p.split(" (")[1] for p in phases] == ["0–2 min)", "2–10 min)", "10–15 min)"], scenario
        assert any(s["action"] == "health_checks" for s in clean), scenario
        assert any(s["action"] == "restore_database" for s in clean), scenario



# --- pages ------------------------------------------------------------------------------------------


def test_declaring_from_the_page_opens_it_and_a_second_declaration_leads_to_the_open_one(
        clients, system, production):
    form = {"system": system.pk, "scenario": "database", "severity": "critical", "target": production.pk}
    response = clients["operator"].post("/incidents/", form)
    incident = Incident.objects.get()
    assert response.status_code == 302 and response.url == f"/incidents/{incident.pk}/"
    again = clients["manager"].post("/incidents/", {**form, "scenario": "system"})
    assert again.status_code == 302 and again.url == f"/incidents/{incident.pk}/"
    page = clients["manager"].get(again.url).content.decode()
    assert "already open" in page and "Assess damage" in page and 'data-poll="' in page
    assert Incident.objects.count() == 1


def test_every_page_shows_the_banner_with_the_clock_while_an_incident_is_open(
        clients, operator, manager, system, production):
    assert "incident-banner-global" not in clients["auditor"].get("/restores/").content.decode()
    incident = declare(operator, system, production)
    for url in ("/", "/restores/", "/checklists/", f"/incidents/{incident.pk}/"):
        page = clients["auditor"].get(url).content.decode()
        assert 'data-testid="incident-banner-global"' in page and "data-clock-since" in page, url
    for s in incident.steps.all():
        incident_step_skip(actor=operator, step=s, reason="test")
    incident_close(actor=manager, incident=incident, review={"cause": "test"})
    assert "incident-banner-global" not in clients["auditor"].get("/restores/").content.decode()


def test_incident_pages_are_read_by_every_role_and_steps_run_only_by_operators_and_managers(
        clients, operator, system, production):
    incident = declare(operator, system, production)
    for url in (f"/incidents/{incident.pk}/", f"/incidents/{incident.pk}/live", f"/incidents/{incident.pk}/report",
                "/incidents/", "/incidents/runbooks/"):
        assert_only_roles(clients, "get", url, {"operator", "manager", "auditor", "admin"})
    assert_only_roles(clients, "get", "/incidents/runbooks/database/edit", {"admin"})
    before = AuditEvent.objects.filter(action="access.denied").count()
    for role in ("auditor", "admin"):
        assert clients[role].post(f"/incidents/{incident.pk}/steps/1/start").status_code == 403
    assert AuditEvent.objects.filter(action="access.denied").count() == before + 2
    assert clients["operator"].post(f"/incidents/{incident.pk}/close", {"cause": "x"}).status_code == 403
    response = clients["operator"].post(f"/incidents/{incident.pk}/steps/3/start")
    assert response.status_code == 302
    assert step(incident, "go-restore").state == "pending"


def test_the_report_page_and_its_json(clients, operator, system, production):
    incident = declare(operator, system, production)
    page = clients["auditor"].get(f"/incidents/{incident.pk}/report").content.decode()
    assert "Timeline" in page and "not closed yet" in page.lower()
    data = clients["auditor"].get(f"/incidents/{incident.pk}/report", {"format": "json"}).json()
    assert data["signed"] is False and len(data["report"]["timeline"]) == len(SEED["database"]["steps"])


# --- the cron ----------------------------------------------------------------------------------------


def _ready_to_restore(operator, system, production):
    Artifact.objects.create(system=system, kind="full", format="pg_custom", status="available", size=1,
                            sha256="0" * 64, storage_key="k", last_verified_level="decrypt")
    incident = declare(operator, system, production)
    incident_step_skip(actor=operator, step=step(incident, "assess"), reason="test")
    incident_step_start(actor=operator, step=step(incident, "recovery-point"))
    incident_step_complete(actor=operator, step=step(incident, "go-restore"), decision="continue")
    return incident


def test_a_rejected_restore_fails_its_waiting_step_when_the_cron_settles_it(operator, manager, system, production):
    from restores.requests import restore_reject
    from restores.targets import target_right_grant as grant

    grant(actor=None, target=production, user=manager, right="approve_restore")
    incident = _ready_to_restore(operator, system, production)
    waiting = incident_step_start(actor=operator, step=step(incident, "restore"))
    assert waiting.state == "waiting"
    restore_reject(actor=manager, run=waiting.restore_run, note="wrong backup")
    assert incident_steps.incident_steps_reconcile()["settled"] == 1
    failed = step(incident, "restore")
    assert failed.state == "failed" and "rejected" in failed.error
    again = incident_step_start(actor=operator, step=failed)  # a failed step is started again
    assert again.state == "waiting" and again.attempts == 2 and again.restore_run_id != waiting.restore_run_id


def test_an_automatic_step_whose_job_was_lost_is_queued_again(operator, system, production, redis_conn):
    incident = declare(operator, system, production)
    queued = incident_step_start(actor=operator, step=step(incident, "assess"))
    assert queued.state == "queued" and not queued.job_id  # the job goes out on commit, never here
    queued.__class__.objects.filter(pk=queued.pk).update(queued_at=timezone.now() - timedelta(hours=1))
    summary = incident_steps.incident_steps_reconcile()
    assert summary["requeued"] == [str(queued.pk)]
    assert events("incident.step_requeued")[-1].details["step"] == "assess"
