"""The restore and verification pages and API: who may do what (403 + audit otherwise), and what they show."""

from datetime import timedelta

import pytest
from django.http import Http404
from django.urls import reverse
from django.utils import timezone

from compliance.models import AuditEvent
from restores import execution, requests, targets
from restores.models import RestoreRun, VerificationRun
from restores.selectors import access_run, visible_runs
from restores.verifications import verification_execute, verification_request
from tests.support import ROLES, assert_only_roles

pytest_plugins = ["tests.restore_fixtures", "tests.loop_fixtures"]
pytestmark = pytest.mark.django_db

VIEWERS = {"operator", "manager", "auditor", "admin"}
STARTERS = {"operator", "manager", "admin"}
TICKERS = {"operator", "manager"}


def request(actor, artifact, target, mode="database-only") -> RestoreRun:
    return requests.restore_request(actor=actor, artifact=artifact, target=target, mode=mode, confirm=target.name)


def denials() -> int:
    return AuditEvent.objects.filter(action="access.denied").count()


@pytest.fixture
def succeeded(operator, manager, full_artifact, production, password) -> RestoreRun:
    run = requests.restore_approve(actor=manager, run=request(operator, full_artifact, production), password=password)
    return execution.restore_run_execute(run.pk)


# --- permission boundaries, pages --------------------------------------------------------------


def test_the_run_list_is_for_every_role(clients):
    assert_only_roles(clients, "get", reverse("restores:run-list"), allowed=VIEWERS)


def test_the_request_form_is_for_those_who_start_jobs(clients, full_artifact):
    assert_only_roles(clients, "get", reverse("restores:run-create") + f"?artifact={full_artifact.pk}",
                      allowed=STARTERS)


def test_requesting_a_restore_needs_the_right_on_that_target(clients, full_artifact, staging):
    data = {"artifact": full_artifact.pk, "target": staging.pk, "mode": "database-only", "confirm": "shop-staging"}
    for role in ("auditor", "outsider"):
        assert clients[role].post(reverse("restores:run-create"), data).status_code == 403
    for role in ("admin", "manager"):
        before = denials()
        assert clients[role].post(reverse("restores:run-create"), data).status_code == 403, role
        assert denials() == before + 1, role
    assert not RestoreRun.objects.exists()
    response = clients["operator"].post(reverse("restores:run-create"), data)
    run = RestoreRun.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("restores:run-detail", args=[run.pk])


def test_a_typo_in_the_confirmation_is_refused_with_the_reason(clients, full_artifact, staging):
    data = {"artifact": full_artifact.pk, "target": staging.pk, "mode": "database-only", "confirm": "shop-stagin"}
    response = clients["operator"].post(reverse("restores:run-create"), data)
    assert response.status_code == 400 and "type the target&#x27;s name" in response.content.decode()
    assert not RestoreRun.objects.exists()


def test_the_confirm_form_asks_for_the_targets_name_and_warns_about_production(clients, full_artifact, production,
                                                                              staging):
    page = clients["operator"].get(reverse("restores:run-create"), {"artifact": full_artifact.pk,
                                                                    "target": production.pk}).content.decode()
    assert 'data-type-to-confirm="shop-production"' in page and "waits for a manager other than you" in page
    assert "This is a drill" not in page
    page = clients["operator"].get(reverse("restores:run-create"), {"artifact": full_artifact.pk,
                                                                    "target": staging.pk}).content.decode()
    assert 'data-type-to-confirm="shop-staging"' in page and "This is a drill" in page


def test_a_run_page_is_seen_by_whoever_sees_its_target_and_a_404_otherwise(clients, operator, full_artifact,
                                                                            staging):
    run = request(operator, full_artifact, staging)
    url = reverse("restores:run-detail", args=[run.pk])
    assert_only_roles(clients, "get", url, allowed=VIEWERS)
    targets.target_right_revoke(actor=None, target=staging, user=operator, right="restore_to_target")
    assert clients["operator"].get(url).status_code == 404
    assert clients["operator"].get(reverse("restores:run-progress", args=[run.pk])).status_code == 404


def test_the_run_list_holds_the_runs_into_the_targets_each_user_sees(operator, manager, auditor, admin, outsider,
                                                                     full_artifact, staging, production):
    seen = request(operator, full_artifact, staging)
    hidden = request(operator, full_artifact, production)
    targets.target_right_revoke(actor=None, target=production, user=operator, right="restore_to_target")
    assert list(visible_runs(operator)) == [seen]
    for user in (manager, auditor, admin):
        assert set(visible_runs(user)) == {seen, hidden}, user.username
    assert list(visible_runs(outsider)) == []
    with pytest.raises(Http404):
        access_run(operator, hidden.pk)
    assert access_run(operator, seen.pk) == seen and access_run(auditor, hidden.pk) == hidden


def test_approving_is_for_a_manager_with_the_right_other_than_the_requester(clients, operator, full_artifact,
                                                                           production, password):
    run = request(operator, full_artifact, production)
    url = reverse("restores:run-approve", args=[run.pk])
    for role in ("operator", "auditor", "admin", "outsider"):
        before = denials()
        assert clients[role].post(url, {"password": password}).status_code == 403, role
        assert denials() == before + 1, role
    response = clients["manager"].post(url, {"password": password})
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.state == "queued"


def test_a_wrong_password_on_the_page_says_so_and_changes_nothing(clients, operator, full_artifact, production):
    run = request(operator, full_artifact, production)
    response = clients["manager"].post(reverse("restores:run-approve", args=[run.pk]), {"password": "nope"},
                                       follow=True)
    assert "That password is not correct." in response.content.decode()
    run.refresh_from_db()
    assert run.state == "awaiting_approval"


def test_rejecting_is_for_approvers_and_the_requester(clients, operator, full_artifact, production):
    run = request(operator, full_artifact, production)
    url = reverse("restores:run-reject", args=[run.pk])
    for role in ("auditor", "admin", "outsider"):
        assert clients[role].post(url).status_code == 403, role
    assert clients["manager"].post(url, {"note": "no"}).status_code == 302
    run.refresh_from_db()
    assert run.state == "rejected"


def test_rolling_back_is_for_managers_with_approve_restore(clients, succeeded, password, scratch):
    url = reverse("restores:run-rollback", args=[succeeded.pk])
    for role in ("operator", "auditor", "admin", "outsider"):
        assert clients[role].post(url, {"password": password}).status_code == 403, role
    response = clients["manager"].post(url, {"password": password}, follow=True)
    assert "Rolled back in" in response.content.decode()
    succeeded.refresh_from_db()
    assert succeeded.state == "rolled_back"


def test_ticking_the_checklist_is_for_operators_and_managers(clients, succeeded):
    check = succeeded.recovery_checks.get(code="payments")
    url = reverse("restores:check-tick", args=[succeeded.pk, check.pk])
    for role in ("auditor", "admin", "outsider"):
        assert clients[role].post(url, {"note": "x"}).status_code == 403, role
    assert clients["operator"].post(url, {"note": "a test payment went through"}).status_code == 302
    check.refresh_from_db()
    assert check.status == "done"
    assert_only_roles(clients, "post", reverse("restores:checks-refresh", args=[succeeded.pk]), allowed=TICKERS)


def test_verifying_is_for_those_who_start_jobs_and_every_role_reads_it(clients, full_artifact):
    assert_only_roles(clients, "post", reverse("restores:verification-create"), allowed=STARTERS,
                      data={"artifact": full_artifact.pk, "level": "decrypt"})
    run = VerificationRun.objects.get()
    assert_only_roles(clients, "get", reverse("restores:verification-detail", args=[run.pk]), allowed=VIEWERS)
    assert_only_roles(clients, "get", reverse("restores:verification-progress", args=[run.pk]), allowed=VIEWERS)


# --- what the pages show -----------------------------------------------------------------------


def test_the_run_page_makes_the_state_and_the_outcome_unmistakable(clients, succeeded):
    page = clients["auditor"].get(reverse("restores:run-detail", args=[succeeded.pk])).content.decode()
    assert 'class="status-banner succeeded"' in page and 'data-testid="run-state">succeeded<' in page
    assert 'data-testid="rto"' in page and 'data-testid="rpo"' in page
    assert "data-poll=" not in page, "a finished run is not polled"
    for step in ("fetch and decrypt", "restore into side database", "sanity checks", "row counts", "swap",
                 "health checks"):
        assert f'id="step-{step.replace(" ", "-")}"' in page
    assert "Post-recovery checklist" in page and "Payment processing functional" in page
    assert "restore.approved" in page, "the run's audit trail is on its page"
    assert "Roll back" not in page, "the auditor sees no rollback button"
    manager_page = clients["manager"].get(reverse("restores:run-detail", args=[succeeded.pk])).content.decode()
    assert "Roll back" in manager_page


def test_a_running_run_is_polled_and_its_fragment_says_when_it_is_done(clients, operator, full_artifact, staging):
    run = request(operator, full_artifact, staging)
    page = clients["operator"].get(reverse("restores:run-detail", args=[run.pk])).content.decode()
    assert f'data-poll="{reverse("restores:run-progress", args=[run.pk])}"' in page
    fragment = clients["operator"].get(reverse("restores:run-progress", args=[run.pk])).content.decode()
    assert "data-poll-done" not in fragment and "Waiting for a worker" in fragment
    execution.restore_run_execute(run.pk)
    fragment = clients["operator"].get(reverse("restores:run-progress", args=[run.pk])).content.decode()
    assert "data-poll-done" in fragment and 'value="100"' in fragment


def test_the_list_shows_runs_and_what_waits_for_my_approval(clients, operator, full_artifact, production):
    run = request(operator, full_artifact, production)
    page = clients["manager"].get(reverse("restores:run-list")).content.decode()
    assert 'data-testid="awaiting-approval"' in page and reverse("restores:run-detail", args=[run.pk]) in page
    operator_page = clients["operator"].get(reverse("restores:run-list")).content.decode()
    assert 'data-testid="awaiting-approval"' not in operator_page
    assert "No restore run is succeeded." in clients["admin"].get(
        reverse("restores:run-list"), {"state": "succeeded"}).content.decode()


def test_the_artifact_page_shows_its_last_verification_and_the_buttons(clients, operator, full_artifact, staging):
    url = reverse("backups:artifact-detail", args=[full_artifact.pk])
    page = clients["operator"].get(url).content.decode()
    assert "No verification has passed yet" in page and "Restore…" in page and ">Verify</button>" in page
    verification_execute(verification_request(actor=operator, artifact=full_artifact, level="structure").pk)
    page = clients["auditor"].get(url).content.decode()
    assert "Last verified at level <strong>structure</strong>" in page and 'data-testid="verification-history"' in page
    assert ">Verify</button>" not in page and "Restore…" not in page


# --- the API -------------------------------------------------------------------------------------


def post(client, url, data=None):
    return client.post(url, data or {}, content_type="application/json")


def test_the_api_requests_a_restore_and_answers_201_with_id_and_state(clients, full_artifact, staging, production):
    body = {"artifact": str(full_artifact.pk), "target": "shop-staging", "mode": "database-only",
            "confirm": "shop-staging"}
    response = post(clients["operator"], "/api/v1/restores", body)
    assert response.status_code == 201
    run = RestoreRun.objects.get()
    assert response.json() == {"id": str(run.pk), "state": "queued"}
    body.update(target="shop-production", confirm="shop-production")
    RestoreRun.objects.filter(pk=run.pk).update(state="failed")
    assert post(clients["operator"], "/api/v1/restores", body).json()["state"] == "awaiting_approval"


@pytest.mark.parametrize(("body", "code", "reason"), [
    ({"confirm": "nope"}, 400, "type the target's name"),
    ({"target": "no-such-target"}, 400, "No such target"),
    ({"artifact": "not-a-uuid"}, 400, "No such artifact"),
    ({"mode": "config-only"}, 400, "needs a config artifact"),
])
def test_the_api_refuses_bad_requests_with_a_reason(clients, full_artifact, staging, body, code, reason):
    data = {"artifact": str(full_artifact.pk), "target": "shop-staging", "mode": "database-only",
            "confirm": "shop-staging", **body}
    response = post(clients["operator"], "/api/v1/restores", data)
    assert response.status_code == code and reason in response.json()["detail"]


def test_the_api_answers_409_when_a_restore_into_the_target_is_in_flight(clients, operator, full_artifact, staging):
    request(operator, full_artifact, staging)
    response = post(clients["operator"], "/api/v1/restores", {
        "artifact": str(full_artifact.pk), "target": "shop-staging", "mode": "database-only",
        "confirm": "shop-staging"})
    assert response.status_code == 409 and "already in flight" in response.json()["detail"]


def test_the_api_refuses_restores_to_whoever_lacks_the_right(clients, full_artifact, staging):
    body = {"artifact": str(full_artifact.pk), "target": "shop-staging", "mode": "database-only",
            "confirm": "shop-staging"}
    for role in ("manager", "auditor", "admin", "outsider"):
        before = denials()
        response = post(clients[role], "/api/v1/restores", body)
        assert response.status_code == 403, role
        assert denials() == before + 1, role


def test_the_api_status_has_state_progress_steps_rto_and_rpo(clients, succeeded):
    data = clients["auditor"].get(f"/api/v1/restores/{succeeded.pk}").json()
    assert data["state"] == "succeeded" and data["progress"] == 100
    assert [s["name"] for s in data["steps"]][-2:] == ["swap", "health checks"]
    assert data["rto_seconds"] > 0 and data["rpo_seconds"] > 0
    assert data["approval"]["approved_by"] == "manager" and data["rollback"]["available"] is True
    assert len(data["checklist"]) == 10
    assert clients["outsider"].get(f"/api/v1/restores/{succeeded.pk}").status_code == 403
    listed = clients["operator"].get("/api/v1/restores", {"state": "succeeded"}).json()["results"]
    assert [r["id"] for r in listed] == [str(succeeded.pk)]


def test_the_api_approves_with_the_password_and_says_why_when_it_refuses(clients, operator, full_artifact,
                                                                          production, password):
    run = request(operator, full_artifact, production)
    url = f"/api/v1/restores/{run.pk}/approve"
    assert post(clients["operator"], url, {"password": password}).status_code == 403
    wrong = post(clients["manager"], url, {"password": "nope"})
    assert wrong.status_code == 403 and wrong.json()["detail"] == "That password is not correct."
    ok = post(clients["manager"], url, {"password": password})
    assert ok.status_code == 200 and ok.json() == {"id": str(run.pk), "state": "queued"}
    again = post(clients["manager"], url, {"password": password})
    assert again.status_code == 409 and "awaiting approval" in again.json()["detail"]
    rejected = post(clients["manager"], f"/api/v1/restores/{run.pk}/reject")
    assert rejected.status_code == 409


def test_the_api_rolls_back_and_answers_409_outside_the_window(clients, succeeded, password):
    url = f"/api/v1/restores/{succeeded.pk}/rollback"
    assert post(clients["operator"], url, {"password": password}).status_code == 403
    RestoreRun.objects.filter(pk=succeeded.pk).update(rollback_until=timezone.now() - timedelta(minutes=1))
    late = post(clients["manager"], url, {"password": password})
    assert late.status_code == 409 and "window has passed" in late.json()["detail"]
    RestoreRun.objects.filter(pk=succeeded.pk).update(rollback_until=timezone.now() + timedelta(hours=1))
    done = post(clients["manager"], url, {"password": password})
    assert done.status_code == 200 and done.json()["state"] == "rolled_back" and done.json()["rollback_seconds"] > 0


def test_the_api_reject_is_final_and_withdrawals_count(clients, operator, full_artifact, production):
    run = request(operator, full_artifact, production)
    response = post(clients["operator"], f"/api/v1/restores/{run.pk}/reject", {"note": "wrong artifact"})
    assert response.status_code == 200 and response.json()["state"] == "rejected"


def test_the_api_starts_and_reports_verifications(clients, full_artifact):
    url = f"/api/v1/artifacts/{full_artifact.pk}/verifications"
    for role in ROLES:
        response = post(clients[role], url, {"level": "structure"})
        assert response.status_code == (202 if role in STARTERS else 403), role
    run = VerificationRun.objects.exclude(trigger="backup").get()
    verification_execute(run.pk)
    data = clients["auditor"].get(f"/api/v1/verifications/{run.pk}").json()
    assert data["state"] == "succeeded" and data["reached_level"] == "structure"
    assert [r["level"] for r in data["results"]] == ["checksum", "decrypt", "structure"]
    assert all(r["state"] == "succeeded" and r["duration_ms"] is not None for r in data["results"])
    bad = post(clients["operator"], url, {"level": "quantum"})
    assert bad.status_code == 400 and "unknown level" in bad.json()["detail"]
    artifact = clients["operator"].get(f"/api/v1/artifacts/{full_artifact.pk}").json()
    assert artifact["last_verification"]["level"] == "structure"


def test_the_api_schema_documents_the_restore_endpoints(clients):
    schema = clients["operator"].get("/api/v1/schema/").content.decode()
    for path in ("/api/v1/restores/{id}/approve", "/api/v1/restores/{id}/rollback",
                 "/api/v1/artifacts/{id}/verifications", "/api/v1/verifications/{id}"):
        assert path in schema
