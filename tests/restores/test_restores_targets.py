"""Targets: created and changed by admins (audited), rights granted per target, seen by whom they concern."""

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from compliance.models import AuditEvent
from drpanel.models import Approval
from drpanel.permissions import Denied, has_object_right
from restores import targets
from restores.models import APPROVE_RESTORE, RESTORE_TO_TARGET, Target
from tests.factories import PASSWORD, UserFactory
from tests.support import assert_only_roles

pytestmark = pytest.mark.django_db

ALL_ROLES = {"operator", "manager", "auditor", "admin"}


def make_target(name="staging", environment="staging", **extra):
    fields = {"database_ref": f"env:DRPANEL_SECRET_{name.upper().replace('-', '_')}_DATABASE_URL",
              "config_dir": f"/srv/{name}/config"}
    fields.update(extra)
    return targets.target_create(actor=None, name=name, environment=environment, **fields)


def events(action):
    return list(AuditEvent.objects.filter(action=action).order_by("seq"))


# --- services --------------------------------------------------------------------------------


def test_an_admin_creates_a_target_with_its_checks_and_it_is_audited(admin):
    target = targets.target_create(
        actor=admin, name="shop-staging", environment="staging", database_ref="env:DRPANEL_SECRET_SHOP_STAGING_URL",
        config_dir="/srv/shop/config/", health_check_hosts=["127.0.0.1"],
        sanity_checks=[{"name": "users exist", "query": "SELECT count(*) FROM users", "expectation": ">=1"}],
        health_checks=[{"url": "http://127.0.0.1:8005/health", "expected_status": 200}],
    )
    assert target.config_dir == "/srv/shop/config" and target.is_active
    assert [c.expectation for c in target.sanity_checks.all()] == [">= 1"]
    assert [c.url for c in target.health_checks.all()] == ["http://127.0.0.1:8005/health"]
    [event] = events("target.created")
    assert event.actor_id == admin.pk and event.object_id == str(target.pk)
    assert event.details["database_ref"] == "env:DRPANEL_SECRET_SHOP_STAGING_URL"
    assert event.details["sanity_checks"][0]["query"] == "SELECT count(*) FROM users"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("database_ref", "postgresql://app:hunter2@db/shop", "secret reference"),
    ("database_ref", "file:relative/path", "secret reference"),
    ("config_dir", "srv/config", "absolute path"),
    ("config_dir", "/srv/../etc", "'..'"),
    ("config_dir", "/", "root directory"),
    ("name", "Shop Staging", "lowercase"),
    ("name", "-shop", "lowercase"),
    ("environment", "prod", "not a valid choice"),
    ("health_check_hosts", ["not a host"], "allowlist entry"),
])
def test_invalid_fields_are_refused_and_nothing_is_saved(admin, field, value, message):
    fields = {"name": "shop", "environment": "staging", "database_ref": "env:DRPANEL_SECRET_SHOP_URL", field: value}
    with pytest.raises(ValidationError) as refused:
        targets.target_create(actor=admin, **fields)
    assert field in refused.value.message_dict
    assert message in " ".join(refused.value.message_dict[field])
    assert not Target.objects.exists() and not events("target.created")


def test_names_are_unique(admin):
    make_target("shop")
    with pytest.raises(ValidationError, match="already exists"):
        make_target("shop")


def test_health_check_urls_must_pass_the_allowlist_when_saved(admin, settings):
    settings.HEALTHCHECK_ALLOWED_HOSTS = ["status.example.com"]
    with pytest.raises(ValidationError) as refused:
        targets.target_create(actor=admin, name="shop", environment="staging", database_ref="env:DRPANEL_SECRET_X",
                               health_checks=[
            {"url": "http://169.254.169.254/latest/meta-data/", "expected_status": 200},
            {"url": "http://2130706433/", "expected_status": 200},
            {"url": "ftp://status.example.com/", "expected_status": 200},
            {"url": "https://status.example.com/health", "expected_status": 99},
        ])
    messages = refused.value.message_dict["health_checks"]
    assert len(messages) == 4
    target = targets.target_create(actor=admin, name="shop", environment="staging",
                                    database_ref="env:DRPANEL_SECRET_X",
                                    health_checks=[{"url": "https://status.example.com/health"}])
    assert target.health_checks.get().expected_status == 200


def test_bad_sanity_checks_are_refused(admin):
    with pytest.raises(ValidationError) as refused:
        targets.target_create(actor=admin, name="shop", environment="staging", database_ref="env:DRPANEL_SECRET_X",
                               sanity_checks=[
            {"name": "users", "query": "SELECT count(*) FROM users", "expectation": "lots"},
            {"name": "", "query": "SELECT 1", "expectation": "= 1"},
        ])
    assert len(refused.value.message_dict["sanity_checks"]) == 2


def test_an_update_records_what_changed(admin):
    target = make_target("shop")
    targets.target_update(actor=admin, target=target, environment="production", is_active=False,
                          sanity_checks=[{"name": "one", "query": "SELECT 1", "expectation": "= 1"}])
    target.refresh_from_db()
    assert target.environment == "production" and not target.is_active
    [event] = events("target.updated")
    changes = event.details["changes"]
    assert changes["environment"] == {"from": "staging", "to": "production"}
    assert changes["is_active"] == {"from": True, "to": False}
    assert changes["sanity_checks"]["to"] == [{"name": "one", "query": "SELECT 1", "expectation": "= 1"}]
    assert "database_ref" not in changes
    targets.target_update(actor=admin, target=target, environment="production")
    assert len(events("target.updated")) == 1, "saving without a change writes no event"


def test_only_admins_manage_targets(operator, manager):
    for actor in (operator, manager):
        with pytest.raises(Denied):
            targets.target_create(actor=actor, name="shop", environment="staging", database_ref="env:DRPANEL_SECRET_X")
    target = make_target("shop")
    with pytest.raises(Denied):
        targets.target_update(actor=manager, target=target, environment="production")
    with pytest.raises(Denied):
        targets.target_right_grant(actor=manager, target=target, user=manager, right="approve_restore")


def test_granting_a_right_is_audited_with_who_what_whom_and_where(admin, operator):
    target = make_target("shop-staging")
    assert not has_object_right(operator, RESTORE_TO_TARGET, target)
    assert targets.target_right_grant(actor=admin, target=target, user=operator, right="restore_to_target")
    assert has_object_right(operator, RESTORE_TO_TARGET, target)
    [event] = events("target.right_granted")
    assert event.actor_username == "admin" and event.object_id == str(target.pk)
    assert event.details == {"right": "restore_to_target", "user": "operator", "user_id": operator.pk,
                             "target": "shop-staging", "environment": "staging"}
    assert not targets.target_right_grant(actor=admin, target=target, user=operator, right="restore_to_target")
    assert len(events("target.right_granted")) == 1, "granting twice is one event"


def test_rights_go_only_to_the_roles_that_use_them(admin, operator, manager, auditor, outsider):
    target = make_target("shop", "production")
    with pytest.raises(ValidationError, match="only be granted to Managers"):
        targets.target_right_grant(actor=admin, target=target, user=operator, right="approve_restore")
    for user in (auditor, outsider):
        with pytest.raises(ValidationError, match="restore_to_target can only be granted"):
            targets.target_right_grant(actor=admin, target=target, user=user, right="restore_to_target")
    with pytest.raises(ValidationError, match="Unknown right"):
        targets.target_right_grant(actor=admin, target=target, user=manager, right="delete_target")
    waiting = targets.target_right_grant(actor=admin, target=target, user=manager, right="approve_restore")
    assert isinstance(waiting, Approval), "granting approve_restore waits for a second person"
    assert not has_object_right(manager, APPROVE_RESTORE, target)
    second = UserFactory(username="manager2", role="Manager")
    assert targets.target_right_grant_approve(actor=second, approval=waiting, password=PASSWORD) is True
    assert has_object_right(manager, APPROVE_RESTORE, target)
    assert not has_object_right(manager, RESTORE_TO_TARGET, target)


def test_a_right_on_one_target_says_nothing_about_another(admin, operator):
    staging, production = make_target("staging"), make_target("production", "production")
    targets.target_right_grant(actor=admin, target=staging, user=operator, right="restore_to_target")
    assert has_object_right(operator, RESTORE_TO_TARGET, staging)
    assert not has_object_right(operator, RESTORE_TO_TARGET, production)


def test_revoking_is_audited_and_takes_effect(admin, operator):
    target = make_target("shop")
    targets.target_right_grant(actor=admin, target=target, user=operator, right="restore_to_target")
    assert targets.target_right_revoke(actor=admin, target=target, user=operator, right="restore_to_target")
    assert not has_object_right(operator, RESTORE_TO_TARGET, target)
    [event] = events("target.right_revoked")
    assert event.details["user"] == "operator" and event.details["right"] == "restore_to_target"
    assert not targets.target_right_revoke(actor=admin, target=target, user=operator, right="restore_to_target")


def test_a_deactivated_user_holds_no_right(admin, operator):
    target = make_target("shop")
    targets.target_right_grant(actor=admin, target=target, user=operator, right="restore_to_target")
    operator.is_active = False
    operator.save(update_fields=["is_active"])
    assert not has_object_right(operator, RESTORE_TO_TARGET, target)


# --- pages -----------------------------------------------------------------------------------


def test_every_role_may_open_the_target_list(clients):
    assert_only_roles(clients, "get", reverse("restores:target-list"), allowed=ALL_ROLES)


def test_only_admins_may_open_the_target_forms(clients):
    target = make_target("shop")
    assert_only_roles(clients, "get", reverse("restores:target-create"), allowed={"admin"})
    assert_only_roles(clients, "get", reverse("restores:target-edit", args=[target.pk]), allowed={"admin"})


def test_only_admins_may_grant_or_revoke(clients, operator):
    target = make_target("shop")
    data = {"user": "operator", "right": "restore_to_target"}
    assert_only_roles(clients, "post", reverse("restores:target-right-grant", args=[target.pk]), allowed={"admin"},
                      data=data)
    assert has_object_right(operator, RESTORE_TO_TARGET, target)
    assert_only_roles(clients, "post", reverse("restores:target-right-revoke", args=[target.pk]), allowed={"admin"},
                      data=data)
    assert not has_object_right(operator, RESTORE_TO_TARGET, target)


def test_operators_see_only_the_targets_they_hold_a_right_on(clients, admin, operator):
    mine, other = make_target("mine"), make_target("other")
    targets.target_right_grant(actor=admin, target=mine, user=operator, right="restore_to_target")
    page = clients["operator"].get(reverse("restores:target-list")).content.decode()
    assert "mine" in page and "other" not in page
    assert clients["operator"].get(reverse("restores:target-detail", args=[mine.pk])).status_code == 200
    assert clients["operator"].get(reverse("restores:target-detail", args=[other.pk])).status_code == 404
    for who in ("auditor", "manager", "admin"):
        assert clients[who].get(reverse("restores:target-detail", args=[other.pk])).status_code == 200


def test_an_operator_without_rights_is_told_how_to_get_them(clients):
    make_target("shop")
    page = clients["operator"].get(reverse("restores:target-list")).content.decode()
    assert "You hold no right on any target" in page


def test_the_admin_creates_a_target_through_the_page(clients, settings):
    settings.SECRET_DIRS = ["/etc/drpanel"]
    response = clients["admin"].post(reverse("restores:target-create"), {
        "name": "shop-scratch", "environment": "scratch", "database_ref": "file:/etc/drpanel/scratch.url",
        "config_dir": "", "health_check_hosts": "127.0.0.1\n::1", "is_active": "on",
        "sanity-TOTAL_FORMS": "2", "sanity-INITIAL_FORMS": "0",
        "sanity-0-name": "users", "sanity-0-query": "SELECT count(*) FROM users", "sanity-0-expectation": ">= 1",
        "health-TOTAL_FORMS": "1", "health-INITIAL_FORMS": "0",
        "health-0-url": "http://127.0.0.1:8000/health", "health-0-expected_status": "200",
    })
    target = Target.objects.get(name="shop-scratch")
    assert response.status_code == 302 and response.url == reverse("restores:target-detail", args=[target.pk])
    assert target.health_check_hosts == ["127.0.0.1", "::1"]
    assert target.sanity_checks.count() == 1 and target.health_checks.count() == 1
    detail = clients["admin"].get(response.url).content.decode()
    assert "SELECT count(*) FROM users" in detail and "file:/etc/drpanel/scratch.url" in detail


def test_a_refused_form_shows_why_and_saves_nothing(clients):
    response = clients["admin"].post(reverse("restores:target-create"), {
        "name": "shop", "environment": "staging", "database_ref": "postgresql://u:pw@db/shop", "config_dir": "",
        "sanity-TOTAL_FORMS": "0", "sanity-INITIAL_FORMS": "0",
        "health-TOTAL_FORMS": "1", "health-INITIAL_FORMS": "0",
        "health-0-url": "http://169.254.169.254/", "health-0-expected_status": "200",
    })
    page = response.content.decode()
    assert response.status_code == 400
    assert "Nothing was saved" in page and "secret reference" in page and "allowlist" in page
    assert "u:pw" not in page, "a pasted URL is never echoed back"
    assert not Target.objects.exists()


def test_the_edit_page_shows_the_current_checks_and_saves_changes(clients):
    target = make_target("shop", sanity_checks=[{"name": "one", "query": "SELECT 1", "expectation": "= 1"}])
    page = clients["admin"].get(reverse("restores:target-edit", args=[target.pk])).content.decode()
    assert "SELECT 1" in page
    response = clients["admin"].post(reverse("restores:target-edit", args=[target.pk]), {
        "name": "shop", "environment": "production", "database_ref": target.database_ref,
        "config_dir": target.config_dir, "health_check_hosts": "", "is_active": "on",
        "sanity-TOTAL_FORMS": "1", "sanity-INITIAL_FORMS": "1", "sanity-0-name": "one", "sanity-0-query": "SELECT 1",
        "sanity-0-expectation": "= 1", "sanity-0-DELETE": "on",
        "health-TOTAL_FORMS": "0", "health-INITIAL_FORMS": "0",
    })
    assert response.status_code == 302
    target.refresh_from_db()
    assert target.environment == "production" and not target.sanity_checks.exists()


def test_the_detail_page_lists_who_holds_which_right(clients, admin, operator, manager):
    target = make_target("prod", "production")
    targets.target_right_grant(actor=admin, target=target, user=operator, right="restore_to_target")
    targets.target_right_grant(actor=None, target=target, user=manager, right="approve_restore")
    page = clients["operator"].get(reverse("restores:target-detail", args=[target.pk])).content.decode()
    assert "waits for a manager" in page
    assert "Revoke" not in page and "Grant" not in page
    admin_page = clients["admin"].get(reverse("restores:target-detail", args=[target.pk])).content.decode()
    assert admin_page.count(">Revoke</button>") == 2


# --- API -------------------------------------------------------------------------------------


def test_the_api_lists_the_targets_the_caller_may_see(clients, admin, operator):
    mine, other = make_target("mine"), make_target("other", "production")
    targets.target_right_grant(actor=admin, target=mine, user=operator, right="restore_to_target")
    url = reverse("api:target-list")
    body = clients["operator"].get(url).json()["results"]
    assert [t["name"] for t in body] == ["mine"]
    assert body[0]["your_rights"] == ["restore_to_target"]
    assert body[0]["database"] == "env:DRPANEL_SECRET_MINE_DATABASE_URL"
    for who in ("auditor", "manager", "admin"):
        assert [t["name"] for t in clients[who].get(url).json()["results"]] == ["mine", "other"]
    assert clients["operator"].get(reverse("api:target-detail", args=[other.pk])).status_code == 404
    assert clients["operator"].get(reverse("api:target-detail", args=[mine.pk])).json()["name"] == "mine"


def test_the_api_refuses_users_without_a_role(clients):
    assert_only_roles(clients, "get", reverse("api:target-list"), allowed=ALL_ROLES)


def test_the_api_works_with_a_bearer_token(client, operator, admin):
    from drpanel.services import api_token_create

    target = make_target("mine")
    targets.target_right_grant(actor=admin, target=target, user=operator, right="restore_to_target")
    _, raw = api_token_create(actor=operator, user=operator, name="script", password=PASSWORD)
    response = client.get(reverse("api:target-list"), HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 200 and response.json()["results"][0]["name"] == "mine"
