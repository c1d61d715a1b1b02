"""Disaster mode's pages and API side by side (issue 14, items 2, 8 and 10):

- the API runs a whole runbook (start, complete, skip, detail, close, report) and writes exactly the audit
  events the pages write for the same actions;
- a refused form (a step without its evidence link, a close with required steps open, a skip without a
  reason) says why and gives back what the person typed: nothing is lost at 3 a.m.; what was typed stays
  in its writer's session, escaped, for that incident only;
- admins edit a runbook through its page: a new version, audited; bad JSON keeps the text.
"""

import json

import pytest
from django.urls import reverse

from backups.models import Artifact, System
from compliance.audit.models import AuditEvent
from restores import runbooks
from restores.incident_steps import incident_step_skip
from restores.incidents import incident_declare
from restores.models import Incident, RunbookTemplate
from restores.targets import target_create, target_right_grant

pytestmark = pytest.mark.django_db

API = "/api/v1/incidents"


def make_system(name, tmp_path, operator) -> tuple:
    system = System.objects.create(name=name, database_ref="env:DRPANEL_SECRET_INCIDENT_NOWHERE_URL")
    target = target_create(actor=None, name=f"{name}-prod", environment="production", system=system,
                           database_ref="env:DRPANEL_SECRET_INCIDENT_PROD_URL", config_dir=str(tmp_path / name))
    target_right_grant(actor=None, target=target, user=operator, right="restore_to_target")
    Artifact.objects.create(system=system, kind="full", format="pg_custom", status="available", size=1,
                            sha256="0" * 64, storage_key=f"{name}-k", last_verified_level="decrypt")
    return system, target


def trail(incident) -> list[tuple]:
    """The incident's audit events: (action, outcome, actor, step)."""
    return [(e.action, e.outcome, e.actor.get_username() if e.actor else None, e.details.get("step"))
            for e in AuditEvent.objects.filter(details__incident=str(incident.pk)).select_related("actor")
            .order_by("seq")]


# The runbook "database corruption or loss" without a real database: what each step gets.
JOURNEY = [
    (1, "skip", {"reason": "the alert already says what broke"}),
    (2, "start", {}),
    (3, "complete", {"decision": "continue", "note": "restore"}),
    (4, "skip", {"reason": "restored by hand from the replica"}),
    (5, "skip", {"reason": "checked by hand"}),
    (6, "start", {}),
    (6, "complete", {"note": "backend restarted"}),
    (7, "complete", {"note": "all answer", "evidence_url": "https://status.example.com/ok"}),
    (8, "start", {}),
]


def test_the_api_runs_the_runbook_with_the_same_audit_events_as_the_pages(clients, operator, tmp_path):
    by_page, page_target = make_system("by-page", tmp_path, operator)
    by_api, api_target = make_system("by-api", tmp_path, operator)
    response = clients["operator"].post("/incidents/", {"system": by_page.pk, "scenario": "database",
                                                        "severity": "major", "target": page_target.pk})
    on_page = Incident.objects.get(system=by_page)
    assert response.status_code == 302
    response = clients["operator"].post(API, {"system": by_api.name, "scenario": "database", "severity": "major",
                                              "target": api_target.name}, content_type="application/json")
    assert response.status_code == 201
    on_api = Incident.objects.get(pk=response.json()["id"])

    for position, verb, data in JOURNEY:
        page = clients["operator"].post(f"/incidents/{on_page.pk}/steps/{position}/{verb}", data)
        assert page.status_code == 302
        api = clients["operator"].post(f"{API}/{on_api.pk}/steps/{position}/{verb}", data,
                                       content_type="application/json")
        assert api.status_code == 200, api.content
        detail = clients["auditor"].get(f"{API}/{on_api.pk}").json()
        assert detail["steps"][position - 1]["state"] in ("running", "done", "skipped")
    detail = clients["auditor"].get(f"{API}/{on_api.pk}").json()
    assert detail["state"] == "recovering" and detail["next_step"] is None and detail["phase"] is None
    assert [s["state"] for s in detail["steps"]] == ["skipped", "done", "done", "skipped", "skipped", "done", "done",
                                                     "done"]

    review = {"cause": "a bad deploy", "remediation": "by hand", "follow_ups": "canary deploys"}
    assert clients["manager"].post(f"/incidents/{on_page.pk}/close", review).status_code == 302
    closed = clients["manager"].post(f"{API}/{on_api.pk}/close", {"review": review}, content_type="application/json")
    assert closed.status_code == 200 and closed.json()["state"] == "closed"

    page_trail, api_trail = trail(on_page), trail(on_api)
    assert page_trail == api_trail
    actions = [a for a, *_ in api_trail]
    assert actions[0] == "incident.declared" and actions[-1] == "incident.closed"
    assert actions.count("incident.step_skipped") == 3 and actions.count("incident.step_completed") == 5
    report = clients["auditor"].get(f"{API}/{on_api.pk}/report").json()
    assert report["signed"] and [s["state"] for s in report["report"]["timeline"]] == [
        s["state"] for s in detail["steps"]]
    printable = clients["auditor"].get(f"/incidents/{on_page.pk}/report", {"format": "json"}).json()
    assert printable["signed"] and printable["report"]["timeline"][5]["finished_by"] == "operator"


@pytest.fixture
def incident(operator, tmp_path):
    system, target = make_system("chatbotdysa", tmp_path, operator)
    incident = incident_declare(actor=operator, system=system, scenario="database", severity="critical",
                                target=target)
    for position in (1, 2, 3, 4, 5):
        incident_step_skip(actor=operator, step=incident.steps.get(position=position - 1), reason="not in this test")
    return incident


def test_a_step_refused_for_its_missing_evidence_says_why_and_gives_back_the_note(clients, incident):
    typed = 'nginx and the API answer "><script>alert(1)</script>'
    response = clients["operator"].post(f"/incidents/{incident.pk}/steps/7/complete", {"note": typed})
    assert response.status_code == 302 and response.url.endswith("#step-7")
    page = clients["operator"].get(response.url.split("#")[0]).content.decode()
    assert "needs an evidence link" in page
    assert 'value="nginx and the API answer &quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" data-kept' in page
    assert "<script>alert(1)" not in page
    assert incident.steps.get(position=6).state == "pending"
    assert not AuditEvent.objects.filter(action="incident.step_completed").exists()
    # Read once: the next visit shows the empty form again; nobody else ever sees it.
    assert "data-kept" not in clients["operator"].get(f"/incidents/{incident.pk}/").content.decode()


def test_what_was_typed_stays_in_its_writers_session_and_its_incident(clients, incident, operator, tmp_path):
    other_system, other_target = make_system("other", tmp_path, operator)
    other = incident_declare(actor=operator, system=other_system, scenario="database", severity="minor",
                             target=other_target)
    clients["operator"].post(f"/incidents/{incident.pk}/steps/7/complete", {"note": "typed by the operator"})
    assert "typed by the operator" not in clients["manager"].get(f"/incidents/{incident.pk}/").content.decode()
    assert "typed by the operator" not in clients["operator"].get(f"/incidents/{other.pk}/").content.decode()
    assert "typed by the operator" not in clients["operator"].get(f"/incidents/{incident.pk}/live").content.decode()


def test_a_skip_without_a_reason_is_refused_and_keeps_the_form_open(clients, incident):
    response = clients["operator"].post(f"/incidents/{incident.pk}/steps/6/skip", {"reason": "   "})
    page = clients["operator"].get(response.url.split("#")[0]).content.decode()
    assert "say why the step is skipped" in page and incident.steps.get(position=5).state == "pending"


def test_a_close_refused_for_open_steps_names_them_and_gives_back_the_review(clients, incident):
    review = {"cause": "the disk filled up", "remediation": "bigger disk", "follow_ups": "alert at 80 %"}
    response = clients["manager"].post(f"/incidents/{incident.pk}/close", review)
    assert response.status_code == 302 and response.url.endswith("#close")
    page = clients["manager"].get(response.url.split("#")[0]).content.decode()
    assert "required steps are still open: 6. Restart all services" in page
    for text in review.values():
        assert f"data-kept>{text}</textarea>" in page
    incident.refresh_from_db()
    assert incident.state == "recovering" and not incident.report_hash
    assert AuditEvent.objects.filter(action="incident.close_refused").count() == 1


def test_an_admin_edits_a_runbook_on_its_page_into_a_new_version_audited(clients):
    steps = runbooks.current_runbook("database").steps
    url = reverse("restores:runbook-edit", args=["database"])
    changed = [dict(s) for s in steps]
    changed[5]["expected_seconds"] = 300
    response = clients["admin"].post(url, {"steps": json.dumps(changed), "note": "restarts take longer"})
    assert response.status_code == 302
    newest = runbooks.current_runbook("database")
    assert newest.version == 2 and newest.steps[5]["expected_seconds"] == 300
    event = AuditEvent.objects.filter(action="runbook.edited").last()
    assert event.actor.get_username() == "admin" and event.details["version"] == 2

    denied = AuditEvent.objects.filter(action="access.denied").count()
    bad = '[{"code": "x", "title": '
    response = clients["admin"].post(url, {"steps": bad, "note": "broken"})
    assert response.status_code == 400 and "not JSON" in response.content.decode()
    assert bad.replace('"', "&quot;") in response.content.decode()
    for role in ("operator", "manager", "auditor"):
        assert clients[role].post(url, {"steps": json.dumps(changed), "note": "x"}).status_code == 403
    assert RunbookTemplate.objects.filter(scenario="database").count() == 2
    assert AuditEvent.objects.filter(action="access.denied").count() == denied + 3
