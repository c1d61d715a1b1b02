"""One admin alone cannot make itself superuser, nor make an account it controls Admin or Manager.

Privileged roles, the staff and superuser flags and the permissions of the Manager and Admin groups
change only through ``drpanel.roles`` with another Manager's or Admin's approval; the Django admin
shows them read-only (issue 12, item 3).
"""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.urls import reverse

from compliance.approval_kinds import approvals_waiting_for
from compliance.models import AuditEvent
from drpanel import roles
from drpanel.approvals import ApprovalError
from drpanel.models import Approval
from drpanel.permissions import Denied
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

User = get_user_model()


def events(action):
    return list(AuditEvent.objects.filter(action=action).order_by("seq"))


def test_the_admin_site_cannot_make_anyone_superuser_or_admin(clients, admin):
    admin_group = Group.objects.get(name="Admin")
    response = clients["admin"].post(reverse("admin:auth_user_change", args=[admin.pk]), {
        "username": "admin", "first_name": "", "last_name": "", "email": "", "is_active": "on",
        "is_staff": "on", "is_superuser": "on", "groups": [admin_group.pk],
        "user_permissions": [Permission.objects.get(codename="change_group").pk]})
    assert response.status_code == 302, "the form saves what it may: the privileged fields are read-only"
    admin.refresh_from_db()
    assert not admin.is_superuser and not admin.user_permissions.exists()
    page = clients["admin"].get(reverse("admin:auth_user_change", args=[admin.pk])).content.decode()
    assert reverse("drpanel:user-roles", args=[admin.pk]) in page
    assert 'name="is_superuser"' not in page and 'name="groups"' not in page


def test_the_admin_site_cannot_take_over_another_privileged_account(clients, manager, operator):
    old_hash = manager.password
    response = clients["admin"].post(reverse("admin:auth_user_password_change", args=[manager.pk]), {
        "password1": "taken-over-password-1", "password2": "taken-over-password-1", "usable_password": "true"})
    assert response.status_code == 403
    manager.refresh_from_db()
    assert manager.password == old_hash
    assert events("access.denied")[-1].actor.username == "admin"
    response = clients["admin"].post(reverse("admin:auth_user_password_change", args=[operator.pk]), {
        "password1": "new-operator-password-1", "password2": "new-operator-password-1", "usable_password": "true"})
    assert response.status_code == 302, "an account without privileges is still managed here"
    operator.refresh_from_db()
    assert operator.check_password("new-operator-password-1")


def test_the_admin_site_cannot_change_groups_or_their_permissions(clients):
    manager_group = Group.objects.get(name="Manager")
    before = set(manager_group.permissions.values_list("pk", flat=True))
    every = list(Permission.objects.values_list("pk", flat=True))
    response = clients["admin"].post(reverse("admin:auth_group_change", args=[manager_group.pk]),
                                     {"name": "Manager", "permissions": every})
    assert response.status_code == 403
    assert set(manager_group.permissions.values_list("pk", flat=True)) == before
    response = clients["admin"].post(reverse("admin:auth_group_add"), {"name": "Root", "permissions": every})
    assert response.status_code == 403 and not Group.objects.filter(name="Root").exists()
    assert events("access.denied")


def test_an_admin_cannot_make_itself_superuser(clients, admin, manager):
    response = clients["admin"].post(reverse("drpanel:user-roles", args=[admin.pk]),
                                     {"roles": ["Admin"], "is_staff": "on", "is_superuser": "on"})
    approval = Approval.objects.get(kind=roles.ROLE_CHANGE_APPROVAL)
    assert response.url == reverse("drpanel:approval-detail", args=[approval.pk])
    assert "This change waits for a second person" in clients["admin"].get(response.url).content.decode()
    admin.refresh_from_db()
    assert not admin.is_superuser and events("user.roles_changed") == []
    assert events("approval.requested")[-1].actor == admin

    refused = clients["admin"].post(reverse("drpanel:approval-approve", args=[approval.pk]), {"password": PASSWORD})
    assert refused.status_code == 403 and events("access.denied")[-1].actor == admin
    admin.refresh_from_db()
    assert not admin.is_superuser
    assert [a["approval"].pk for a in approvals_waiting_for(manager)] == [approval.pk]
    assert approvals_waiting_for(admin) == []


def test_an_admin_cannot_make_an_account_it_controls_admin(clients, admin, manager):
    response = clients["admin"].post(reverse("admin:auth_user_add"), {
        "username": "sock", "password1": "sock-puppet-password-1", "password2": "sock-puppet-password-1",
        "usable_password": "true"})
    assert response.status_code == 302
    sock = User.objects.get(username="sock")
    waiting = roles.role_change_request(actor=admin, user=sock, roles=["Admin"])
    assert isinstance(waiting, Approval) and not sock.groups.exists()
    sock.refresh_from_db()
    # Neither the requester nor the account itself (not a Manager or Admin, and the one concerned) decides.
    for actor, password in ((admin, PASSWORD), (sock, "sock-puppet-password-1")):
        with pytest.raises(Denied):
            roles.role_change_approve(actor=actor, approval=waiting, password=password)
    assert not sock.groups.exists()
    approved = roles.role_change_approve(actor=manager, approval=waiting, password=PASSWORD)
    assert list(approved.groups.values_list("name", flat=True)) == ["Admin"]
    [changed] = events("user.roles_changed")
    assert changed.actor == manager and changed.details["approved_by"] == "manager"
    assert changed.details["requested_by"] == "admin" and changed.details["to"]["roles"] == ["Admin"]


def test_the_user_concerned_cannot_approve_its_own_promotion(admin, manager):
    waiting = roles.role_change_request(actor=admin, user=manager, roles=["Admin", "Manager"])
    assert approvals_waiting_for(manager) == []
    with pytest.raises(Denied):
        roles.role_change_approve(actor=manager, approval=waiting, password=PASSWORD)
    assert not manager.groups.filter(name="Admin").exists()


def test_a_role_change_after_the_request_voids_the_approval(admin, manager, operator):
    waiting = roles.role_change_request(actor=admin, user=operator, roles=["Manager"])
    roles.role_change_request(actor=admin, user=operator, roles=[])
    with pytest.raises(ApprovalError, match="changed"):
        roles.role_change_approve(actor=manager, approval=waiting, password=PASSWORD)
    assert not operator.groups.exists()
    assert events("approval.binding_mismatch")[-1].actor == manager


def test_taking_privileges_away_applies_at_once(admin, manager):
    result = roles.role_change_request(actor=admin, user=manager, roles=["Operator"])
    assert result == manager and not Approval.objects.exists()
    assert list(manager.groups.values_list("name", flat=True)) == ["Operator"]
    assert events("user.roles_changed")[-1].actor == admin


def test_more_permissions_for_a_privileged_group_wait_fewer_apply_at_once(admin, manager):
    group = Group.objects.get(name="Manager")
    before = roles._permission_names(group)
    waiting = roles.group_permissions_change_request(actor=admin, group=group,
                                                     permissions=[*before, "drpanel.manage_panel"])
    assert isinstance(waiting, Approval) and roles._permission_names(group) == before
    roles.group_permissions_change_approve(actor=manager, approval=waiting, password=PASSWORD)
    assert "drpanel.manage_panel" in roles._permission_names(group)
    fewer = [name for name in before if name != "drpanel.edit_contacts"]
    assert roles.group_permissions_change_request(actor=admin, group=group, permissions=fewer) == group
    assert roles._permission_names(group) == sorted(fewer)
    assert [e.details.get("approved_by") for e in events("role.permissions_changed")] == ["manager", None]


def test_only_admins_open_the_role_page(clients, operator):
    url = reverse("drpanel:user-roles", args=[operator.pk])
    for name in ("operator", "manager", "auditor", "outsider"):
        response = clients[name].post(url, {"roles": ["Admin"]})
        assert response.status_code in (302, 403) and not operator.groups.filter(name="Admin").exists()
    assert clients["admin"].get(url).status_code == 200
    assert not Approval.objects.exists()


def test_a_second_admin_may_approve_too(admin):
    other = UserFactory(username="admin2", role="Admin", is_staff=True)
    target = UserFactory(username="newbie", role="Operator")
    waiting = roles.role_change_request(actor=admin, user=target, roles=["Manager"])
    roles.role_change_approve(actor=other, approval=waiting, password=PASSWORD)
    assert list(target.groups.values_list("name", flat=True)) == ["Manager"]
