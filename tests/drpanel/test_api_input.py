"""Every write endpoint of ``/api/v1/`` checks its body before using it.

One table lists each write endpoint with a body it accepts and the role that may send it. From
it, every field gets a value of the wrong type, every required field goes missing, an unknown
field is added, and the body is replaced by something that is not an object: each answers 400
``{"detail": …, "errors": {field: [...]}}`` naming the field, and nothing changed (no row, no
audit event, nothing queued for after the commit). The accepted body itself gets past the
checks, so the refusals come from the changed value and nothing else.
"""

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from guardian.shortcuts import assign_perm

from backups.deletion import artifact_delete_request
from backups.models import Artifact, BackupRun, System
from compliance.checklists import checklist_period_open
from compliance.models import Alert, AuditEvent, Certification, Contact
from drpanel import clock
from drpanel.models import ApiToken, Approval
from restores.models import APPROVE_RESTORE, RecoveryCheck, RestoreRun, Target, VerificationRun
from tests.factories import PASSWORD
from tests.support import restore_awaiting_approval

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(operator, manager, tmp_path):
    """One object of each kind the write endpoints act on, ready for the accepted bodies."""
    system = System.objects.create(name="shop", database_ref="env:DRPANEL_UNSET_FOR_TEST")
    artifact = Artifact.objects.create(system=system, kind="full", format="pg_custom", status="available",
                                       storage_key="k", sha256="a" * 64)
    staging = Target.objects.create(name="shop-staging", environment="staging", system=system,
                                    database_ref="env:DRPANEL_UNSET_FOR_TEST")
    production = Target.objects.create(name="shop-production", environment="production", system=system,
                                       database_ref="env:DRPANEL_UNSET_FOR_TEST")
    assign_perm("restore_to_target", operator, staging)
    assign_perm(APPROVE_RESTORE, manager, production)
    awaiting = restore_awaiting_approval(artifact=artifact, target=production, requested_by=operator)
    now = timezone.now()
    swapped = RestoreRun.objects.create(artifact=artifact, target=production, mode="database-only", state="succeeded",
                                        requested_by=operator, swapped_at=now, rollback_until=now + timedelta(hours=1))
    restored = RestoreRun.objects.create(artifact=artifact, target=staging, mode="database-only", state="succeeded",
                                         requested_by=operator, swapped_at=now, rollback_until=now + timedelta(hours=1))
    check = RecoveryCheck.objects.create(run=restored, position=1, code="authentication", title="Users can log in")
    artifact_delete_request(actor=operator, artifact=artifact, reason="obsolete")
    quarantined = Artifact.objects.create(system=system, kind="full", format="pg_custom", status="quarantined",
                                          source="sync", storage_key="found", sha256="b" * 64)
    contact = Contact.objects.create(level="l1", name="On call", email="oncall@example.com", response_minutes=15)
    item = checklist_period_open("weekly").items.filter(kind="manual", requires_evidence=False).first()
    alert = Alert.objects.create(kind="backup.stale", severity="warning", subject="No full backup for 30 h",
                                 message="", dedup_key="input")
    return {"system": system.pk, "artifact": artifact.pk, "staging": staging.pk, "production": production.pk,
            "awaiting": awaiting.pk, "swapped": swapped.pk, "restored": restored.pk, "check": check.pk,
            "contact": contact.pk, "item": item.pk, "alert": alert.pk, "period": f"{clock.today():%Y-%m}",
            "quarantined": quarantined.pk}


# (name, role, method, path, accepted body, required fields). Paths are formatted with the world's ids.
ENDPOINTS = [
    ("backup", "operator", "post", "systems/{system}/backups", {"kind": "full"}, ["kind"]),
    ("verification", "operator", "post", "artifacts/{artifact}/verifications", {"level": "decrypt"}, ["level"]),
    ("deletion request", "operator", "post", "artifacts/{artifact}/deletion", {"reason": "obsolete"}, ["reason"]),
    ("deletion approve", "manager", "post", "artifacts/{artifact}/deletion/approve", {"password": PASSWORD},
     ["password"]),
    ("deletion reject", "manager", "post", "artifacts/{artifact}/deletion/reject", {"note": "keep it"}, []),
    ("adopt", "admin", "post", "artifacts/{quarantined}/adopt", {}, []),
    ("restore", "operator", "post", "restores",
     {"artifact": "{artifact}", "target": "shop-staging", "mode": "database-only", "confirm": "shop-staging",
      "drill": True, "reason": "weekly drill"}, ["artifact", "target", "mode", "confirm"]),
    ("restore approve", "manager", "post", "restores/{awaiting}/approve", {"password": PASSWORD, "note": "ok"},
     ["password"]),
    ("restore reject", "manager", "post", "restores/{awaiting}/reject", {"note": "not now"}, []),
    ("restore rollback", "manager", "post", "restores/{swapped}/rollback", {"password": PASSWORD}, ["password"]),
    ("recovery check tick", "operator", "post", "restores/{restored}/checklist/{check}/tick", {"note": "logged in"},
     ["note"]),
    ("recovery checks refresh", "operator", "post", "restores/{restored}/checklist/refresh", {}, []),
    ("right grant", "admin", "post", "targets/{staging}/rights/grant",
     {"user": "operator", "right": "restore_to_target"}, ["user", "right"]),
    ("right revoke", "admin", "post", "targets/{staging}/rights/revoke",
     {"user": "operator", "right": "restore_to_target"}, ["user", "right"]),
    ("certification sign", "manager", "post", "certifications/{period}/sign",
     {"password": PASSWORD, "attestation": "I certify.", "reason": "first"}, ["attestation"]),
    ("token create", "auditor", "post", "tokens", {"name": "monitoring", "password": PASSWORD}, ["password"]),
    ("contact create", "manager", "post", "contacts",
     {"level": "l2", "name": "DBA", "position": 2, "email": "dba@example.com", "response_minutes": 30,
      "active": True}, ["level", "name"]),
    ("contact update", "manager", "patch", "contacts/{contact}", {"name": "On call (day)", "active": False}, []),
    ("contact verify", "manager", "post", "contacts/{contact}/verify", {}, []),
    ("checklist tick", "operator", "post", "checklists/items/{item}/tick", {"note": "checked"}, ["note"]),
    ("checklist untick", "operator", "post", "checklists/items/{item}/untick", {}, []),
    ("checklist evaluate", "operator", "post", "checklists/evaluate", {}, []),
    ("alert acknowledge", "operator", "post", "alerts/{alert}/acknowledge", {}, []),
    ("audit verify", "auditor", "post", "audit/verify", {}, []),
]
BY_NAME = {endpoint[0]: endpoint for endpoint in ENDPOINTS}


def wrong_type(value):
    """A JSON value of another type than ``value``: a string is never a boolean or a number here."""
    if isinstance(value, bool):
        return "false" if value else "true"
    if isinstance(value, int):
        return str(value)
    return 12345


def cases():
    for name, _, _, _, body, required in ENDPOINTS:
        for field, value in body.items():
            yield pytest.param(name, "wrong type", field, id=f"{name}: {field} of the wrong type")
            if isinstance(value, str):
                yield pytest.param(name, "list", field, id=f"{name}: {field} as a list")
        for field in required:
            yield pytest.param(name, "missing", field, id=f"{name}: {field} missing")
        yield pytest.param(name, "extra", "junk", id=f"{name}: an unknown field")


def fill(value, world):
    return value.format(**world) if isinstance(value, str) and "{" in value else value


def signed_in(clients, name):
    """The client of the role that sends ``name``: signed in (and its sign-in audited) before any snapshot."""
    return clients[BY_NAME[name][1]]


def call(clients, world, name, body):
    _, role, method, path, _, _ = BY_NAME[name]
    client = signed_in(clients, name)
    return getattr(client, method)(f"/api/v1/{path.format(**world)}", json.dumps(body),
                                   content_type="application/json")


def accepted(name, world) -> dict:
    return {field: fill(value, world) for field, value in BY_NAME[name][4].items()}


def snapshot() -> dict:
    """What a write could change: rows of every kind the endpoints create or edit, and the audit log."""
    contacts = list(Contact.objects.order_by("pk").values())
    return {"audit": AuditEvent.objects.count(), "backups": BackupRun.objects.count(),
            "verifications": VerificationRun.objects.count(),
            "restores": list(RestoreRun.objects.order_by("pk").values_list("pk", "state", "rolled_back_at")),
            "approvals": list(Approval.objects.order_by("pk").values_list("pk", "state")),
            "artifacts": list(Artifact.objects.values_list("pk", "status")), "contacts": contacts,
            "checks": list(RecoveryCheck.objects.values_list("pk", "status", "note")),
            "tokens": ApiToken.objects.count(), "certifications": Certification.objects.count(),
            "alerts": list(Alert.objects.values_list("pk", "state"))}


@pytest.mark.parametrize(("name", "change", "field"), list(cases()))
def test_a_refused_value_is_a_400_naming_the_field_and_changes_nothing(clients, world, name, change, field,
                                                                       django_capture_on_commit_callbacks):
    body = accepted(name, world)
    if change == "wrong type":
        body[field] = wrong_type(body[field])
    elif change == "list":
        body[field] = [body[field]]
    elif change == "missing":
        del body[field]
    else:
        body[field] = {"anything": 1}
    signed_in(clients, name)
    before = snapshot()
    with django_capture_on_commit_callbacks() as queued:
        response = call(clients, world, name, body)
    assert response.status_code == 400, response.content
    answer = response.json()
    assert field in answer["errors"] and answer["errors"][field], answer
    assert answer["detail"].startswith(f"{field}: "), answer
    assert snapshot() == before
    assert queued == [], "nothing may be queued for after the commit"


@pytest.mark.parametrize("name", BY_NAME)
@pytest.mark.parametrize("junk", [[], "text", 7, None], ids=["a list", "a string", "a number", "null"])
def test_a_body_that_is_not_an_object_is_refused(clients, world, name, junk, django_capture_on_commit_callbacks):
    signed_in(clients, name)
    before = snapshot()
    with django_capture_on_commit_callbacks() as queued:
        response = call(clients, world, name, junk)
    assert response.status_code == 400, response.content
    assert response.json()["detail"] and response.json()["errors"]
    assert snapshot() == before and queued == []


@pytest.mark.parametrize("name", BY_NAME)
def test_the_accepted_body_gets_past_the_checks(clients, world, name):
    """The table's bodies are right: what the other tests refuse is the one value they changed."""
    response = call(clients, world, name, accepted(name, world))
    assert response.status_code != 400, response.content
    assert response.status_code < 500


@pytest.mark.parametrize("drill", ["false", "true", 0, 1, "no", None])
def test_drill_takes_only_a_json_boolean(clients, world, drill, django_capture_on_commit_callbacks):
    """``"drill": "false"`` once meant a drill (``bool("false")``); now anything but true/false is refused."""
    body = {**accepted("restore", world), "drill": drill}
    signed_in(clients, "restore")
    before = snapshot()
    with django_capture_on_commit_callbacks() as queued:
        response = call(clients, world, "restore", body)
    assert response.status_code == 400 and "drill" in response.json()["errors"]
    assert snapshot() == before and queued == []


@pytest.mark.parametrize(("drill", "is_drill"), [(False, False), (True, True)])
def test_drill_false_is_not_a_drill(clients, world, drill, is_drill):
    response = call(clients, world, "restore", {**accepted("restore", world), "drill": drill})
    assert response.status_code == 201, response.content
    assert RestoreRun.objects.get(pk=response.json()["id"]).is_drill is is_drill


def test_a_password_is_taken_as_typed(clients, world, manager):
    """Passwords are not trimmed: " secret " is not "secret"."""
    response = call(clients, world, "restore rollback", {"password": f" {PASSWORD} "})
    assert response.status_code == 403 and response.json()["detail"] == "That password is not correct."


@pytest.mark.parametrize("target", [True, None, "", {"id": 1}, 1.5])
def test_a_restores_target_is_a_name_or_an_id_and_nothing_else(clients, world, target):
    response = call(clients, world, "restore", {**accepted("restore", world), "target": target})
    assert response.status_code == 400 and "target" in response.json()["errors"]
    assert RestoreRun.objects.filter(target_id=world["staging"]).count() == 1, "only the world's own run"


@pytest.mark.parametrize("by", ["name", "id", "id as text"])
def test_a_restores_target_may_be_named_by_name_or_id(clients, world, by):
    target = {"name": "shop-staging", "id": world["staging"], "id as text": str(world["staging"])}[by]
    response = call(clients, world, "restore", {**accepted("restore", world), "target": target})
    assert response.status_code == 201, response.content
    assert RestoreRun.objects.get(pk=response.json()["id"]).target_id == world["staging"]
