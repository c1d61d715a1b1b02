"""The API does what the pages do: contacts, checklist ticks, alerts, health, verifications per artifact,
post-recovery ticks, target rights and one's own tokens; with the pages' permissions and audit events.

Each endpoint: the role that may, does (and the change is audited); the role that may not gets a 403
naming the capability, nothing changes, and the refusal is an ``access.denied`` event.
"""

import pytest
from guardian.shortcuts import assign_perm, get_user_perms

from backups.models import Artifact, System
from compliance.checklists import checklist_period_open
from compliance.models import Alert, AuditEvent, ChecklistItem, Contact
from drpanel.models import ApiToken
from drpanel.services import api_token_create
from restores.models import RecoveryCheck, RestoreRun, Target, VerificationRun
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(client):
    """``api(user).get/post/patch(path, body)``: a call with the user's own bearer token."""

    class Caller:
        def __init__(self, user):
            _, raw = api_token_create(actor=user, user=user, name="t", password=PASSWORD)
            self.headers = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}

        def get(self, path):
            return client.get(f"/api/v1/{path}", **self.headers)

        def post(self, path, body=None):
            return client.post(f"/api/v1/{path}", body or {}, content_type="application/json", **self.headers)

        def patch(self, path, body):
            return client.patch(f"/api/v1/{path}", body, content_type="application/json", **self.headers)

    return Caller


def denied(response, *, need: str) -> None:
    assert response.status_code == 403, response.content
    event = AuditEvent.objects.filter(action="access.denied").order_by("-seq").first()
    assert event is not None and event.outcome == "denied"
    assert need in event.details.get("need", ""), event.details


@pytest.fixture
def contact(db):
    return Contact.objects.create(level="l1", name="On call", email="oncall@example.com", response_minutes=15)


# --- contacts --------------------------------------------------------------------------------

def test_a_manager_adds_edits_and_verifies_a_contact(api, manager):
    caller = api(manager)
    created = caller.post("contacts", {"level": "l2", "name": "Lead DBA", "email": "dba@example.com",
                                       "response_minutes": 30, "phone": "+56 9 1234 5678"})
    assert created.status_code == 201, created.content
    pk = created.json()["data"]["id"]
    assert Contact.objects.get(pk=pk).name == "Lead DBA"

    edited = caller.patch(f"contacts/{pk}", {"response_minutes": 20})
    assert edited.status_code == 200 and edited.json()["data"]["response_minutes"] == 20
    assert AuditEvent.objects.get(action="contact.updated").details["changes"] == {"response_minutes": [30, 20]}

    verified = caller.post(f"contacts/{pk}/verify")
    assert verified.status_code == 200
    assert verified.json()["data"]["last_verified_by"] == "manager"
    assert AuditEvent.objects.filter(action__in=["contact.created", "contact.verified"]).count() == 2


def test_it_refuses_an_escalating_contact_without_an_email_naming_the_field(api, admin):
    response = api(admin).post("contacts", {"level": "l1", "name": "Nobody", "response_minutes": 5})
    assert response.status_code == 400
    assert "email" in response.json()["errors"]
    assert not Contact.objects.filter(name="Nobody").exists()


def test_it_refuses_a_number_where_the_contact_needs_text(api, manager):
    response = api(manager).post("contacts", {"level": "vendor", "name": 7})
    assert response.status_code == 400 and "name" in response.json()["errors"]


@pytest.mark.parametrize("role", ["operator", "auditor"])
def test_operators_and_auditors_may_not_change_the_roster(api, request, role, contact):
    caller = api(request.getfixturevalue(role))
    denied(caller.post("contacts", {"level": "vendor", "name": "Vendor"}), need="edit_contacts")
    denied(caller.patch(f"contacts/{contact.pk}", {"name": "Changed"}), need="edit_contacts")
    denied(caller.post(f"contacts/{contact.pk}/verify"), need="edit_contacts")
    contact.refresh_from_db()
    assert contact.name == "On call" and contact.last_verified_on is None
    assert caller.get(f"contacts/{contact.pk}").status_code == 200  # reading stays open


# --- checklist items -------------------------------------------------------------------------

@pytest.fixture
def weekly_item(db):
    period = checklist_period_open("weekly")
    return period.items.filter(kind="manual", requires_evidence=False).first()


def test_an_operator_ticks_and_unticks_a_weekly_item(api, operator, weekly_item):
    caller = api(operator)
    ticked = caller.post(f"checklists/items/{weekly_item.pk}/tick", {"note": "Checked the off-site copy by hand"})
    assert ticked.status_code == 200, ticked.content
    assert ticked.json()["data"]["status"] == "done" and ticked.json()["data"]["ticked_by"] == "operator"
    again = caller.post(f"checklists/items/{weekly_item.pk}/tick", {"note": "twice"})
    assert again.status_code == 409 and "already" in again.json()["detail"]

    unticked = caller.post(f"checklists/items/{weekly_item.pk}/untick")
    assert unticked.status_code == 200 and unticked.json()["data"]["status"] == "pending"
    ticks = AuditEvent.objects.filter(action__in=["checklist.ticked", "checklist.unticked"]).order_by("seq")
    assert [e.action for e in ticks] == ["checklist.ticked", "checklist.unticked"]


def test_only_the_person_who_ticked_may_untick(api, operator, manager, weekly_item):
    api(operator).post(f"checklists/items/{weekly_item.pk}/tick", {"note": "done"})
    response = api(manager).post(f"checklists/items/{weekly_item.pk}/untick")
    assert response.status_code == 409
    weekly_item.refresh_from_db()
    assert weekly_item.status == ChecklistItem.Status.DONE


def test_a_tick_needs_a_note(api, operator, weekly_item):
    response = api(operator).post(f"checklists/items/{weekly_item.pk}/tick", {})
    assert response.status_code == 400 and "note" in response.json()["errors"]


@pytest.mark.parametrize("role", ["auditor", "admin"])
def test_auditors_and_admins_do_not_tick_checklists(api, request, role, weekly_item):
    denied(api(request.getfixturevalue(role)).post(f"checklists/items/{weekly_item.pk}/tick", {"note": "x"}),
           need="tick_checklists")
    weekly_item.refresh_from_db()
    assert weekly_item.status == ChecklistItem.Status.PENDING


# --- alerts and health -----------------------------------------------------------------------

@pytest.fixture
def alert(db):
    return Alert.objects.create(kind="backup.stale", severity="warning", subject="No full backup for 30 h",
                                message="", dedup_key="api-test")


def test_an_operator_acknowledges_an_open_alert_once(api, operator, alert):
    caller = api(operator)
    assert caller.get(f"alerts/{alert.pk}").json()["data"]["state"] == "open"
    response = caller.post(f"alerts/{alert.pk}/acknowledge")
    assert response.status_code == 200
    assert response.json()["data"]["state"] == "acknowledged"
    assert response.json()["data"]["acknowledged_by"] == "operator"
    assert caller.post(f"alerts/{alert.pk}/acknowledge").status_code == 409
    assert AuditEvent.objects.filter(action="alert.acknowledged").count() == 1


def test_an_auditor_may_read_but_not_acknowledge_an_alert(api, auditor, alert):
    caller = api(auditor)
    assert caller.get(f"alerts/{alert.pk}").status_code == 200
    denied(caller.post(f"alerts/{alert.pk}/acknowledge"), need="tick_checklists")
    alert.refresh_from_db()
    assert alert.state == Alert.State.OPEN


def test_a_systems_health_is_its_checks_now(api, auditor):
    system = System.objects.create(name="chatbotdysa", database_ref="env:DRPANEL_SECRET_UNSET_DB")
    response = api(auditor).get(f"systems/{system.pk}/health")
    assert response.status_code == 200
    data = response.json()["data"]
    # No artifact at all: every check fails, so the score is 0 and the RPO is unmeasured.
    assert data["score"] == 0 and data["status"] == "critical"
    assert {c["code"] for c in data["checks"]} == {"full_backup", "incremental_backup", "config_backup",
                                                   "offsite_copy", "verified"}
    assert all(not c["passed"] for c in data["checks"] if c["enabled"])
    assert data["rpo"]["seconds"] is None
    assert api(auditor).get("systems/999999/health").status_code == 404


def test_someone_without_a_role_sees_no_health(api, outsider):
    system = System.objects.create(name="chatbotdysa", database_ref="env:DRPANEL_SECRET_UNSET_DB")
    denied(api(outsider).get(f"systems/{system.pk}/health"), need="view_panel")


# --- verifications per artifact, post-recovery ticks, target rights --------------------------

@pytest.fixture
def artifact(db):
    system = System.objects.create(name="chatbotdysa", database_ref="env:DRPANEL_SECRET_UNSET_DB")
    return Artifact.objects.create(system=system, kind="full", format="pg_custom", status="available", size=10,
                                   sha256="a" * 64, storage_key="k", manifest={})


def test_an_artifacts_verifications_are_listed_newest_first(api, auditor, artifact):
    old = VerificationRun.objects.create(artifact=artifact, level="checksum", state="succeeded",
                                         reached_level="checksum", percent=100)
    new = VerificationRun.objects.create(artifact=artifact, level="decrypt", state="failed", error="wrong key")
    response = api(auditor).get(f"artifacts/{artifact.pk}/verifications")
    assert response.status_code == 200
    assert [(r["id"], r["state"]) for r in response.json()["results"]] == [(str(new.pk), "failed"),
                                                                            (str(old.pk), "succeeded")]
    denied(api(auditor).post(f"artifacts/{artifact.pk}/verifications", {"level": "checksum"}), need="start_jobs")
    assert VerificationRun.objects.count() == 2


@pytest.fixture
def finished_run(artifact, operator, tmp_path):
    target = Target.objects.create(name="production", environment="production",
                                   database_ref="env:DRPANEL_SECRET_UNSET_DB", config_dir=str(tmp_path))
    assign_perm("restore_to_target", operator, target)
    run = RestoreRun.objects.create(artifact=artifact, target=target, mode="database-only", state="succeeded",
                                    requested_by=operator)
    RecoveryCheck.objects.create(run=run, position=1, code="notify", title="Tell the users", automatic=False)
    RecoveryCheck.objects.create(run=run, position=2, code="db", title="Database answers", automatic=True,
                                 status="passed")
    return run


def test_an_operator_ticks_a_post_recovery_item_but_not_one_the_panel_decided(api, operator, finished_run):
    manual, automatic = finished_run.recovery_checks.order_by("position")
    caller = api(operator)
    response = caller.post(f"restores/{finished_run.pk}/checklist/{manual.pk}/tick", {"note": "Mailed the users"})
    assert response.status_code == 200 and response.json() == {"code": "notify", "status": "done",
                                                                "ticked_by": "operator"}
    refused = caller.post(f"restores/{finished_run.pk}/checklist/{automatic.pk}/tick", {"note": "I say so"})
    assert refused.status_code == 409
    assert AuditEvent.objects.filter(action="restore.checklist_ticked").count() == 1


def test_an_auditor_does_not_tick_post_recovery_items(api, auditor, finished_run):
    manual = finished_run.recovery_checks.get(code="notify")
    denied(api(auditor).post(f"restores/{finished_run.pk}/checklist/{manual.pk}/tick", {"note": "x"}),
           need="tick_checklists")
    manual.refresh_from_db()
    assert manual.status == "pending"


def test_an_admin_grants_and_revokes_a_right_on_a_target(api, admin, operator, manager, tmp_path):
    target = Target.objects.create(name="staging", environment="staging", database_ref="env:DRPANEL_SECRET_UNSET_DB",
                                   config_dir=str(tmp_path))
    caller = api(admin)
    granted = caller.post(f"targets/{target.pk}/rights/grant", {"user": "operator", "right": "restore_to_target"})
    assert granted.status_code == 200 and granted.json()["changed"] is True
    assert "restore_to_target" in get_user_perms(operator, target)
    # approve_restore is for managers only (DESIGN.md's role table)
    refused = caller.post(f"targets/{target.pk}/rights/grant", {"user": "operator", "right": "approve_restore"})
    assert refused.status_code == 400
    revoked = caller.post(f"targets/{target.pk}/rights/revoke", {"user": "operator", "right": "restore_to_target"})
    assert revoked.status_code == 200 and revoked.json()["rights"] == []
    assert [e.action for e in AuditEvent.objects.filter(action__startswith="target.right").order_by("seq")] == [
        "target.right_granted", "target.right_revoked"]
    denied(api(manager).post(f"targets/{target.pk}/rights/grant", {"user": "manager", "right": "approve_restore"}),
           need="manage_panel")
    assert "approve_restore" not in get_user_perms(manager, target)


# --- one's own tokens ------------------------------------------------------------------------

def test_a_user_lists_creates_and_revokes_only_their_own_tokens(api, client, auditor, operator):
    caller = api(auditor)
    created = caller.post("tokens", {"name": "monitoring", "password": PASSWORD})
    assert created.status_code == 201
    raw = created.json()["token"]
    assert client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {raw}").json()["username"] == "auditor"
    listed = caller.get("tokens").json()["results"]
    assert {t["name"] for t in listed} == {"t", "monitoring"}
    assert raw not in str(listed)

    others, _ = api_token_create(actor=operator, user=operator, name="operator's", password=PASSWORD)
    assert caller.post(f"tokens/{others.pk}/revoke").status_code == 404
    assert ApiToken.objects.get(pk=others.pk).is_active

    revoked = caller.post(f"tokens/{created.json()['data']['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["data"]["active"] is False
    assert client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 401


# --- more of the pages' actions: evaluate today's checklist, re-check a restore, verify the chain,
# --- the four-eyes deletion of an artifact ---------------------------------------------------

def test_an_operator_evaluates_todays_checklist_and_an_auditor_may_not(api, operator, auditor):
    response = api(operator).post("checklists/evaluate")
    assert response.status_code == 200, response.content
    data = response.json()["data"]
    assert data["cadence"] == "daily" and data["items"]
    assert {i["status"] for i in data["items"] if i["kind"] == "automatic"} <= {"passed", "failed", "no_data"}
    assert AuditEvent.objects.filter(action="checklist.evaluated", actor_username="operator").exists()
    denied(api(auditor).post("checklists/evaluate"), need="tick_checklists")


def test_an_operator_rechecks_the_automatic_post_recovery_items(api, operator, auditor, finished_run):
    response = api(operator).post(f"restores/{finished_run.pk}/checklist/refresh")
    assert response.status_code == 200 and response.json()["id"] == str(finished_run.pk)
    assert {c["code"] for c in response.json()["checklist"]} == {"notify", "db"}
    assert api(auditor).post(f"restores/{finished_run.pk}/checklist/refresh").status_code in (403, 404)


def test_an_auditor_verifies_the_chain_through_the_api_and_an_operator_may_not(api, auditor, operator):
    response = api(auditor).post("audit/verify")
    assert response.status_code == 200
    assert response.json()["ok"] is True and response.json()["count"] >= 1
    event = AuditEvent.objects.get(action="audit.verified")
    assert event.actor_username == "auditor" and event.details["via"] == "api"
    denied(api(operator).post("audit/verify"), need="read_audit")


def test_an_artifact_is_deleted_through_the_api_only_with_a_second_persons_password(api, operator, manager,
                                                                                  auditor, artifact, password,
                                                                                  tmp_path):
    from backups.models import ArtifactCopy, StorageLocation

    (tmp_path / "primary").mkdir()
    location = StorageLocation.objects.create(name="primary", kind="local", role="primary",
                                              path=str(tmp_path / "primary"))
    stored = tmp_path / "primary" / artifact.storage_key
    stored.write_bytes(b"encrypted bytes")
    ArtifactCopy.objects.create(artifact=artifact, location=location, key=artifact.storage_key, status="ok",
                                size=15, sha256_seen="a" * 64)
    denied(api(auditor).post(f"artifacts/{artifact.pk}/deletion", {"reason": "old"}), need="start_jobs")
    assert api(operator).post(f"artifacts/{artifact.pk}/deletion", {}).status_code == 400

    asked = api(operator).post(f"artifacts/{artifact.pk}/deletion", {"reason": "test data, not a backup"})
    assert asked.status_code == 202 and asked.json()["approval"]["requested_by"] == "operator"
    assert api(operator).post(f"artifacts/{artifact.pk}/deletion", {"reason": "again"}).status_code == 409
    # The requester cannot approve it, a wrong password is refused, and nothing is deleted meanwhile.
    assert api(operator).post(f"artifacts/{artifact.pk}/deletion/approve", {"password": password}).status_code == 403
    assert api(manager).post(f"artifacts/{artifact.pk}/deletion/approve", {"password": "wrong"}).status_code == 403
    artifact.refresh_from_db()
    assert artifact.status == "available" and stored.exists()

    done = api(manager).post(f"artifacts/{artifact.pk}/deletion/approve", {"password": password})
    assert done.status_code == 200, done.content
    assert done.json()["status"] == "deleted" and done.json()["approval"] is None
    assert not stored.exists()
    assert AuditEvent.objects.filter(action="access.denied", actor_username="operator").exists()


def test_the_requester_withdraws_a_deletion_request(api, operator, artifact):
    api(operator).post(f"artifacts/{artifact.pk}/deletion", {"reason": "mistake"})
    response = api(operator).post(f"artifacts/{artifact.pk}/deletion/reject", {"note": "wrong artifact"})
    assert response.status_code == 200 and response.json()["approval"] is None
    artifact.refresh_from_db()
    assert artifact.status == "available"
    assert api(operator).post(f"artifacts/{artifact.pk}/deletion/reject", {}).status_code == 400
