"""What is audited: user, group and permission changes (however they are made), and no secret ever."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import connection, transaction
from django.test import Client, RequestFactory
from django.urls import reverse
from guardian.shortcuts import assign_perm, remove_perm

from compliance.audit.export import audit_export_start, export_to_file
from compliance.audit.query import AuditFilter
from compliance.models import AuditEvent
from drpanel.context import reset_current_request, set_current_request
from drpanel.services import api_token_create, api_token_revoke
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
User = get_user_model()


@pytest.fixture(autouse=True)
def audit_dirs(settings, tmp_path):
    settings.AUDIT_CHECKPOINT_DIR = tmp_path / "checkpoints"
    settings.AUDIT_RETIRED_KEYS_DIR = tmp_path / "retired"


def events(action: str):
    return list(AuditEvent.objects.filter(action=action).order_by("seq"))


def last(action: str) -> AuditEvent:
    return AuditEvent.objects.filter(action=action).order_by("-seq").first()


@pytest.fixture
def acting_as():
    """Run code as if inside a request made by ``user`` (how the admin site and views act)."""
    tokens = []

    def _acting_as(user):
        request = RequestFactory().post("/admin/")
        request.user = user
        tokens.append(set_current_request(request))

    yield _acting_as
    for token in reversed(tokens):
        reset_current_request(token)


# --- users ----------------------------------------------------------------------------------

def test_creating_a_user_is_audited_without_the_password_hash():
    user = User(username="newbie", email="n@example.com")
    user.set_password("a long passphrase")
    with transaction.atomic():
        user.save()
    created = last("user.created")
    assert created.object_id == str(user.pk) and created.actor_username == "system"
    assert created.details["username"] == "newbie" and created.details["usable_password"] is True
    assert user.password not in str(created.details)


def test_privilege_changes_are_audited_with_before_and_after(operator, admin, acting_as):
    acting_as(admin)
    operator.is_staff = True
    operator.is_superuser = True
    operator.is_active = False
    with transaction.atomic():
        operator.save()
    changed = last("user.changed")
    assert changed.actor == admin
    assert changed.details == {"changes": {"is_active": [True, False], "is_staff": [False, True],
                                           "is_superuser": [False, True]}}


def test_a_password_change_is_audited_without_any_hash(operator):
    old_hash, before = operator.password, AuditEvent.objects.count()
    operator.set_password("another long passphrase")
    with transaction.atomic():
        operator.save()
    (changed,) = AuditEvent.objects.filter(seq__gt=before)
    assert changed.action == "user.password_changed"
    assert changed.object_id == str(operator.pk) and changed.details == {"usable_password": True}
    assert old_hash not in str(changed.details) and operator.password not in str(changed.details)


def test_a_hash_upgrade_at_sign_in_is_not_a_password_change(operator, password, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher",
                                 "django.contrib.auth.hashers.MD5PasswordHasher"]
    changes = len(events("user.password_changed"))
    assert operator.check_password(password)
    assert last("user.password_rehashed").details == {"algorithm": "pbkdf2_sha256"}
    assert len(events("user.password_changed")) == changes


def test_signing_in_is_one_event_not_a_user_change(client, operator, password):
    client.post(reverse("drpanel:login"), {"username": "operator", "password": password})
    assert len(events("auth.login")) == 1
    assert not events("user.changed")


def test_deleting_a_user_is_audited_with_their_roles(operator):
    pk = operator.pk
    operator.delete()
    deleted = last("user.deleted")
    assert deleted.object_id == str(pk) and deleted.details["groups"] == ["Operator"]


# --- groups and memberships ------------------------------------------------------------------

def test_group_membership_changes_are_audited_from_either_side(operator):
    managers, auditors = Group.objects.get(name="Manager"), Group.objects.get(name="Auditor")
    operator.groups.add(managers)
    assert last("user.groups_changed").details == {"added": ["Manager"]}
    auditors.user_set.add(operator)
    members = last("group.members_changed")
    assert members.object_type == "auth.group" and members.details == {"added": ["operator"]}
    operator.groups.remove(managers, auditors)
    assert last("user.groups_changed").details == {"removed": ["Auditor", "Manager"]}
    operator.groups.clear()
    assert last("user.groups_changed").details == {"cleared": ["Operator"]}


def test_a_change_that_changes_nothing_is_not_an_event(operator):
    before = AuditEvent.objects.count()
    operator.groups.add(Group.objects.get(name="Operator"))  # already a member
    operator.groups.remove(Group.objects.get(name="Auditor"))  # not a member
    assert AuditEvent.objects.count() == before


def test_group_and_user_permissions_are_audited(operator):
    group = Group.objects.create(name="Reviewers")
    assert last("group.created").details == {"name": "Reviewers"}
    perm = Permission.objects.get(content_type__app_label="drpanel", codename="read_audit")
    group.permissions.add(perm)
    assert last("group.permissions_changed").details == {"added": ["drpanel.read_audit"]}
    operator.user_permissions.add(perm)
    assert last("user.permissions_changed").details == {"added": ["drpanel.read_audit"]}
    perm.group_set.remove(group)
    assert last("permission.groups_changed").details == {"removed": ["Reviewers"]}
    group.name = "Readers"
    group.save()
    assert last("group.changed").details == {"changes": {"name": ["Reviewers", "Readers"]}}
    group.delete()
    assert last("group.deleted").details["name"] == "Readers"


def test_the_admin_site_records_who_made_a_change(db):
    root = UserFactory(username="root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(root)
    response = client.post(reverse("admin:auth_user_add"), {
        "username": "night", "password1": "a-long-night-shift-pass", "password2": "a-long-night-shift-pass",
        "usable_password": "true"})
    assert response.status_code == 302
    assert last("user.created").actor == root
    night = User.objects.get(username="night")
    response = client.post(reverse("admin:auth_user_change", args=[night.pk]), {
        "username": "night", "first_name": "Night", "last_name": "Shift", "email": "night@example.com",
        "is_active": "on"})
    assert response.status_code == 302
    changed = last("user.changed")
    assert changed.actor == root and changed.details["changes"]["first_name"] == ["", "Night"]


# --- django-guardian object permissions -----------------------------------------------------

def test_object_permissions_granted_and_revoked_are_audited(operator, manager):
    target = Group.objects.create(name="Production DB")
    assign_perm("auth.change_group", operator, target)
    granted = last("object_permission.granted")
    assert (granted.object_type, granted.object_id, granted.object_repr) == ("auth.group", str(target.pk),
                                                                            "Production DB")
    assert granted.details == {"user": "operator", "permission": "auth.change_group"}
    assign_perm("auth.view_group", Group.objects.get(name="Manager"), target)
    assert last("object_permission.granted").details == {"group": "Manager", "permission": "auth.view_group"}
    remove_perm("auth.change_group", operator, target)
    assert last("object_permission.revoked").details == {"user": "operator", "permission": "auth.change_group"}


def test_bulk_object_permission_grants_are_audited_one_by_one(operator, manager):
    targets = [Group.objects.create(name=f"Target {n}") for n in range(3)]
    assign_perm("auth.change_group", operator, Group.objects.filter(name__startswith="Target"))
    assert sorted(e.object_repr for e in events("object_permission.granted")) == ["Target 0", "Target 1", "Target 2"]
    assign_perm("auth.view_group", [operator, manager], targets[0])
    assign_perm("auth.view_group", [operator, manager], targets[0])  # already granted: nothing new
    views = [e.details["user"] for e in events("object_permission.granted")
             if e.details["permission"] == "auth.view_group"]
    assert sorted(views) == ["manager", "operator"]
    remove_perm("auth.change_group", operator, Group.objects.filter(name__startswith="Target"))
    assert len(events("object_permission.revoked")) == 3


# --- tokens and secrets -----------------------------------------------------------------------

CANARY_PASSWORD = "canary-Pw-5f1e9c0b-do-not-log"


def test_no_password_hash_or_token_ever_reaches_the_log_or_an_export(tmp_path, manager, password):
    """Canary: a password and a token used in every audited path never show up anywhere in the trail."""
    client = Client()
    user = User(username="canary")
    user.set_password(CANARY_PASSWORD)
    with transaction.atomic():
        user.save()
    user.groups.add(Group.objects.get(name="Manager"))
    client.post(reverse("drpanel:login"), {"username": "canary", "password": "wrong-" + CANARY_PASSWORD})
    client.post(reverse("drpanel:login"), {"username": "canary", "password": CANARY_PASSWORD})
    client.post(reverse("drpanel:reauth"), {"password": "wrong-" + CANARY_PASSWORD})
    client.post(reverse("drpanel:reauth"), {"password": CANARY_PASSWORD})
    token, raw_token = api_token_create(actor=user, user=user, name="canary token", password=CANARY_PASSWORD)
    api = Client()
    assert api.get("/api/v1/audit/events", HTTP_AUTHORIZATION=f"Bearer {raw_token}").status_code == 200
    operator_token = api_token_create(actor=None, user=UserFactory(username="op2", role="Operator"), name="x")[1]
    assert api.get(f"/api/v1/audit/events?token={raw_token}",
                   HTTP_AUTHORIZATION=f"Bearer {operator_token}").status_code == 403
    api_token_revoke(actor=user, token=token)
    client.post(reverse("drpanel:logout"))
    user.set_password("rotated-" + CANARY_PASSWORD)
    with transaction.atomic():
        user.save()
    hashes = [user.password, User.objects.get(pk=manager.pk).password, token.token_hash]

    with connection.cursor() as cursor:
        cursor.execute("SELECT t::text FROM compliance_auditevent AS t")
        stored = "\n".join(row[0] for row in cursor.fetchall())
    files = []
    for export_format in ("jsonl", "csv"):
        plan = audit_export_start(actor=manager, format=export_format, flt=AuditFilter(), via="test")
        files += export_to_file(plan, tmp_path / f"all.{export_format}")[1]
    exported = "\n".join(path.read_text() for path in files)

    assert {"auth.login_failed", "auth.login", "auth.reauthenticated", "api_token.created", "access.denied",
            "api_token.revoked", "user.password_changed", "auth.logout"} <= set(
        AuditEvent.objects.filter(actor_username__in=["canary", "op2", "system", "anonymous"])
        .values_list("action", flat=True))
    for secret in (CANARY_PASSWORD, raw_token, raw_token[len("drp_"):], *hashes):
        assert secret not in stored, f"{secret[:12]}… is in the audit table"
        assert secret not in exported, f"{secret[:12]}… is in an export"
