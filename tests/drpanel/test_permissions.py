"""Roles: groups made by the migration, navigation per role, 403s audited for everyone else."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Group, Permission
from django.urls import reverse

from drpanel.permissions import ROLE_CAPABILITIES, Cap, PermissionBackend, has_cap, roles_of
from tests.support import assert_only_roles

pytestmark = pytest.mark.django_db

ALL_ROLES = {"operator", "manager", "auditor", "admin"}


def test_the_migration_grants_each_role_its_capabilities():
    for role, caps in ROLE_CAPABILITIES.items():
        granted = set(Group.objects.get(name=role.value).permissions.filter(
            content_type__app_label="drpanel").values_list("codename", flat=True))
        assert granted == {str(c) for c in caps}, role


def test_roles_and_capabilities_follow_group_membership(operator, auditor, outsider):
    assert roles_of(operator) == ["Operator"]
    assert has_cap(operator, Cap.START_JOBS) and not has_cap(operator, Cap.READ_AUDIT)
    assert has_cap(auditor, Cap.READ_AUDIT) and not has_cap(auditor, Cap.START_JOBS)
    assert roles_of(outsider) == [] and not has_cap(outsider, Cap.VIEW_PANEL)


def test_the_backend_reads_the_same_permissions_as_djangos_in_one_statement(operator, manager, outsider,
                                                                          django_assert_num_queries):
    """A role's permissions and a user's own, together; nothing for an inactive user; all for a superuser."""
    own = Permission.objects.get(content_type__app_label="restores", codename="approve_restore")
    operator.user_permissions.add(own)
    superuser = get_user_model().objects.create_user("root-like", is_superuser=True)
    inactive = get_user_model().objects.create_user("gone", is_active=False)
    inactive.groups.add(Group.objects.get(name="Operator"))
    for user in (operator, manager, outsider, superuser, inactive):
        theirs = ModelBackend().get_all_permissions(get_user_model().objects.get(pk=user.pk))
        fresh = get_user_model().objects.get(pk=user.pk)
        with django_assert_num_queries(1 if user.is_active else 0):
            ours = PermissionBackend().get_all_permissions(fresh)
            assert PermissionBackend().has_perm(fresh, "drpanel.view_panel") == ("drpanel.view_panel" in ours)
        assert ours == theirs, user.username
    assert "restores.approve_restore" in permissions_of(operator) and "drpanel.start_jobs" in permissions_of(operator)
    assert permissions_of(outsider) == set() and permissions_of(inactive) == set()


def permissions_of(user) -> set[str]:
    return PermissionBackend().get_all_permissions(get_user_model().objects.get(pk=user.pk))


@pytest.mark.parametrize("url_name", [
    "drpanel:dashboard", "backups:artifact-list", "restores:run-list",
    "compliance:checklist-today", "compliance:contact-list",
])
def test_panel_pages_refuse_users_without_a_role(clients, url_name):
    assert_only_roles(clients, "get", reverse(url_name), allowed=ALL_ROLES)


def test_the_audit_log_refuses_operators(clients):
    assert_only_roles(clients, "get", reverse("compliance:audit-list"), allowed={"manager", "auditor", "admin"})


def test_anonymous_visitors_are_sent_to_sign_in(client):
    response = client.get(reverse("drpanel:dashboard"))
    assert response.status_code == 302
    assert response.url.startswith(reverse("drpanel:login"))


def test_the_navigation_shows_what_the_role_may_use(clients):
    operator_page = clients["operator"].get(reverse("drpanel:dashboard")).content.decode()
    auditor_page = clients["auditor"].get(reverse("drpanel:dashboard")).content.decode()
    assert 'href="/audit/"' not in operator_page
    assert 'href="/audit/"' in auditor_page
    assert 'href="/admin/"' not in operator_page
    assert 'href="/admin/"' in clients["admin"].get(reverse("drpanel:dashboard")).content.decode()


def test_a_refusal_page_says_nothing_changed(clients):
    response = clients["operator"].get(reverse("compliance:audit-list"))
    assert b"Nothing was changed" in response.content
