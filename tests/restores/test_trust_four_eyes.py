"""One admin alone cannot turn a production target into an unapproved restore path (issue 12, item 3).

Moving a target out of production, changing its database or config directory, and granting
``approve_restore`` wait for another Manager or Admin, who approves with their password; the approval
applies exactly the change it was asked for, and nothing else.
"""

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from compliance.approval_kinds import approvals_waiting_for
from compliance.models import AuditEvent
from drpanel.approvals import ApprovalError, approval_approve
from drpanel.models import Approval
from drpanel.passwords import PasswordRefused
from drpanel.permissions import Denied, has_object_right
from restores import targets
from restores.models import APPROVE_RESTORE, Target
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

PRODUCTION_DB = "env:DRPANEL_SECRET_SHOP_PRODUCTION_URL"


@pytest.fixture
def production(tmp_path):
    return targets.target_create(actor=None, name="shop", environment="production", database_ref=PRODUCTION_DB,
                                 config_dir=str(tmp_path / "config"))


@pytest.fixture
def second_admin():
    return UserFactory(username="admin2", role="Admin", is_staff=True)


def edit_form(target: Target, **fields) -> dict:
    data = {"name": target.name, "environment": target.environment, "description": target.description,
            "database_ref": target.database_ref, "config_dir": target.config_dir, "health_check_hosts": "",
            "is_active": "on", "sanity-TOTAL_FORMS": "0", "sanity-INITIAL_FORMS": "0",
            "health-TOTAL_FORMS": "0", "health-INITIAL_FORMS": "0"}
    data.update(fields)
    return data


def events(action):
    return list(AuditEvent.objects.filter(action=action).order_by("seq"))


def test_one_admin_alone_cannot_turn_a_production_target_into_staging(clients, admin, production):
    response = clients["admin"].post(reverse("restores:target-edit", args=[production.pk]),
                                     edit_form(production, environment="staging"))
    approval = Approval.objects.get(kind=targets.TARGET_CHANGE_APPROVAL)
    assert response.status_code == 302 and response.url == reverse("drpanel:approval-detail", args=[approval.pk])
    page = clients["admin"].get(response.url).content.decode()
    assert "This change waits for a second person" in page and "staging" in page
    link = f'href="{response.url}"'
    for url in (reverse("restores:target-edit", args=[production.pk]),
                reverse("restores:target-detail", args=[production.pk])):
        shown = clients["admin"].get(url).content.decode()
        assert "This change waits for a second person" in shown and link in shown
    production.refresh_from_db()
    assert production.environment == "production", "nothing changed"
    assert events("target.updated") == []
    [requested] = events("approval.requested")
    assert requested.actor == admin and requested.details["reason"] == "production → staging"

    # The requester cannot approve it, even with the right password: 403, audited, still pending.
    refused = clients["admin"].post(reverse("drpanel:approval-approve", args=[approval.pk]), {"password": PASSWORD})
    assert refused.status_code == 403
    assert events("access.denied")[-1].actor == admin
    approval.refresh_from_db()
    production.refresh_from_db()
    assert approval.state == Approval.State.PENDING and production.environment == "production"


def test_the_second_persons_approval_applies_exactly_the_bound_change(clients, admin, manager, production):
    waiting = targets.target_update(actor=admin, target=production, environment="scratch",
                                    description="retired")
    assert isinstance(waiting, Approval)
    assert [a["approval"].pk for a in approvals_waiting_for(manager)] == [waiting.pk]
    assert approvals_waiting_for(admin) == [], "never one's own request"
    response = clients["manager"].post(reverse("drpanel:approval-approve", args=[waiting.pk]),
                                       {"password": PASSWORD})
    assert response.status_code == 302
    production.refresh_from_db()
    assert (production.environment, production.description) == ("scratch", "retired")
    assert production.database_ref == PRODUCTION_DB
    [updated] = events("target.updated")
    assert updated.actor == manager and updated.details["approved_by"] == "manager"
    assert updated.details["requested_by"] == "admin"
    assert set(updated.details["changes"]) == {"environment", "description"}
    assert [e.action for e in AuditEvent.objects.filter(action__startswith="approval.").order_by("seq")] == [
        "approval.requested", "approval.approved", "approval.consumed"]


def test_a_wrong_password_changes_nothing_and_is_audited(manager, admin, production):
    waiting = targets.target_update(actor=admin, target=production, environment="staging")
    with pytest.raises(PasswordRefused):
        targets.target_change_approve(actor=manager, approval=waiting, password="not it")
    production.refresh_from_db()
    waiting.refresh_from_db()
    assert production.environment == "production" and waiting.state == Approval.State.PENDING
    [refused] = events("approval.password_refused")
    assert refused.actor == manager and refused.outcome == "failure"


def test_a_change_to_the_target_after_the_request_voids_the_approval(admin, manager, production):
    waiting = targets.target_update(actor=admin, target=production, environment="staging")
    # Meanwhile, a change that applies at once (it weakens nothing) moves the target on.
    targets.target_update(actor=admin, target=production, description="now serving the new shop")
    with pytest.raises(ApprovalError, match="changed"):
        targets.target_change_approve(actor=manager, approval=waiting, password=PASSWORD)
    production.refresh_from_db()
    assert production.environment == "production"
    assert events("approval.binding_mismatch")[-1].actor == manager


def test_a_change_after_the_approval_is_refused_when_it_is_applied(admin, manager, production):
    waiting = targets.target_update(actor=admin, target=production, environment="staging")
    approved = approval_approve(actor=manager, approval=waiting, password=PASSWORD,
                                params=waiting.params, may_approve=lambda user: True)
    assert approved.state == Approval.State.APPROVED
    targets.target_update(actor=admin, target=production, description="changed after approval")
    with pytest.raises(ApprovalError, match="differ"):
        targets.target_change_apply(actor=manager, approval=approved)
    production.refresh_from_db()
    approved.refresh_from_db()
    assert production.environment == "production" and approved.state == Approval.State.APPROVED
    mismatch = events("approval.binding_mismatch")[-1]
    assert mismatch.outcome == "failure" and mismatch.details["approval"] == approved.pk


def test_a_tampered_request_is_refused(admin, manager, production):
    waiting = targets.target_update(actor=admin, target=production, environment="staging")
    params = waiting.params
    params["change"]["fields"]["database_ref"] = "env:DRPANEL_SECRET_ELSEWHERE_URL"
    Approval.objects.filter(pk=waiting.pk).update(params=params)
    waiting.refresh_from_db()
    with pytest.raises(ApprovalError, match="changed"):
        targets.target_change_approve(actor=manager, approval=waiting, password=PASSWORD)
    production.refresh_from_db()
    assert (production.environment, production.database_ref) == ("production", PRODUCTION_DB)
    assert events("approval.binding_mismatch")


def test_changing_the_database_of_a_staging_target_waits_too(admin, production, tmp_path):
    staging = targets.target_create(actor=admin, name="shop-staging", environment="staging",
                                    database_ref="env:DRPANEL_SECRET_SHOP_STAGING_URL")
    waiting = targets.target_update(actor=admin, target=staging, database_ref="env:DRPANEL_SECRET_OTHER_URL")
    assert isinstance(waiting, Approval) and waiting.reason == "database_ref changed"
    staging.refresh_from_db()
    assert staging.database_ref == "env:DRPANEL_SECRET_SHOP_STAGING_URL"


def test_a_staging_target_may_never_name_the_production_database(admin, production):
    with pytest.raises(ValidationError, match="production target “shop”"):
        targets.target_create(actor=admin, name="shop-copy", environment="staging", database_ref=PRODUCTION_DB)
    assert not Target.objects.filter(name="shop-copy").exists()


def test_strengthening_changes_apply_at_once(admin, production):
    staging = targets.target_create(actor=admin, name="shop-staging", environment="staging",
                                    database_ref="env:DRPANEL_SECRET_SHOP_STAGING_URL")
    result = targets.target_update(actor=admin, target=staging, environment="production", is_active=False)
    assert isinstance(result, Target) and result.environment == "production"
    assert not Approval.objects.exists()
    new = targets.target_create(actor=admin, name="shop-2", environment="production",
                                database_ref="env:DRPANEL_SECRET_SHOP_2_URL")
    assert new.pk and not Approval.objects.exists()


def test_granting_approve_restore_waits_and_the_grantee_cannot_approve_it(clients, admin, manager, production):
    response = clients["admin"].post(reverse("restores:target-right-grant", args=[production.pk]),
                                     {"user": "manager", "right": "approve_restore"})
    approval = Approval.objects.get(kind=targets.RIGHT_GRANT_APPROVAL)
    assert response.url == reverse("drpanel:approval-detail", args=[approval.pk])
    assert not has_object_right(manager, APPROVE_RESTORE, production)
    assert approvals_waiting_for(manager) == [], "not the one who would receive the right"
    with pytest.raises(Denied):
        targets.target_right_grant_approve(actor=manager, approval=approval, password=PASSWORD)
    assert not has_object_right(manager, APPROVE_RESTORE, production)
    other = UserFactory(username="manager2", role="Manager")
    assert targets.target_right_grant_approve(actor=other, approval=approval, password=PASSWORD) is True
    assert has_object_right(manager, APPROVE_RESTORE, production)
    granted = events("target.right_granted")[-1]
    assert granted.details["approved_by"] == "manager2" and granted.details["requested_by"] == "admin"


def test_the_api_grant_of_approve_restore_answers_202_with_the_pending_approval(admin, manager, production):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(admin)
    response = client.post(f"/api/v1/targets/{production.pk}/rights/grant",
                           {"user": "manager", "right": "approve_restore"}, format="json")
    assert response.status_code == 202
    assert response.json()["approval"] == Approval.objects.get().pk and response.json()["changed"] is False
    assert not has_object_right(manager, APPROVE_RESTORE, production)


def test_only_viewers_see_a_protection_approval_and_only_deciders_decide(clients, admin, production):
    waiting = targets.target_update(actor=admin, target=production, environment="staging")
    page = reverse("drpanel:approval-detail", args=[waiting.pk])
    assert clients["outsider"].get(page).status_code in (302, 403)
    assert "Approve and apply" in clients["manager"].get(page).content.decode()
    assert "Approve and apply" not in clients["operator"].get(page).content.decode()
    assert clients["operator"].post(reverse("drpanel:approval-approve", args=[waiting.pk]),
                                    {"password": PASSWORD}).status_code == 403
    production.refresh_from_db()
    assert production.environment == "production"
