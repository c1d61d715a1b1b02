"""Every password re-entry goes through ``drpanel.passwords.password_confirm``: one lockout for all of them.

The paths: approving a production restore, approving an artifact's deletion (the generic
approvals), rolling a restore back, signing the monthly certification, creating an API token,
and the re-authentication page. Each refuses a wrong password, audits it, counts it toward one
limit per user, and once the limit is reached refuses even the right password without checking it.
"""

import json
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from backups.deletion import artifact_delete_request
from backups.models import Artifact, System
from compliance.models import AuditEvent, Certification
from drpanel import clock
from drpanel.models import ApiToken, Approval
from drpanel.passwords import (
    PURPOSES,
    PasswordLocked,
    PasswordRefused,
    password_attempts_exhausted,
    password_confirm,
)
from restores import requests, rollback
from restores.models import RestoreRun, Target
from restores.targets import target_right_grant
from tests.support import restore_awaiting_approval

pytestmark = pytest.mark.django_db

REFUSED = "That password is not correct."
LOCKED = "Too many wrong passwords"


@pytest.fixture
def world(operator, manager, admin):
    """A production target the manager may approve and roll back on, a restore awaiting approval, one
    that can be rolled back, and an artifact whose deletion is waiting for a manager."""
    system = System.objects.create(name="shop", database_ref="env:DRPANEL_UNSET_FOR_TEST")
    artifact = Artifact.objects.create(system=system, kind="full", format="pg_custom", status="available",
                                       storage_key="k", sha256="a" * 64)
    production = Target.objects.create(name="shop-production", environment="production", system=system,
                                       database_ref="env:DRPANEL_UNSET_FOR_TEST")
    target_right_grant(actor=None, target=production, user=manager, right="approve_restore")
    awaiting = restore_awaiting_approval(artifact=artifact, target=production, requested_by=operator)
    now = timezone.now()
    swapped = RestoreRun.objects.create(artifact=artifact, target=production, mode="database-only", state="succeeded",
                                        requested_by=operator, swapped_at=now, rollback_until=now + timedelta(hours=1))
    deletion = artifact_delete_request(actor=operator, artifact=artifact, reason="obsolete")
    return {"artifact": artifact, "awaiting": awaiting, "swapped": swapped, "deletion": deletion}


def post(client, url, body):
    return client.post(url, json.dumps(body), content_type="application/json")


def _restore_approve(client, world, password):
    return post(client, f"/api/v1/restores/{world['awaiting'].pk}/approve", {"password": password})


def _deletion_approve(client, world, password):
    return post(client, f"/api/v1/artifacts/{world['artifact'].pk}/deletion/approve", {"password": password})


def _rollback(client, world, password):
    return post(client, f"/api/v1/restores/{world['swapped'].pk}/rollback", {"password": password})


def _certification_sign(client, world, password):
    today = clock.today()
    return post(client, f"/api/v1/certifications/{today:%Y-%m}/sign", {"password": password,
                                                                       "attestation": "I certify."})


def _token_create(client, world, password):
    return post(client, "/api/v1/tokens", {"name": "script", "password": password})


def _nothing_changed(world, manager):
    """None of the paths' changes happened."""
    assert RestoreRun.objects.get(pk=world["awaiting"].pk).state == "awaiting_approval"
    assert Approval.objects.get(pk=world["deletion"].pk).state == "pending"
    assert Artifact.objects.get(pk=world["artifact"].pk).status == "available"
    swapped = RestoreRun.objects.get(pk=world["swapped"].pk)
    assert swapped.state == "succeeded" and swapped.rolled_back_at is None
    assert not Certification.objects.exists()
    assert not ApiToken.objects.filter(user=manager).exists()


# path → (how to try it through the API, the audit action of a wrong password)
PATHS = {
    "restore approval": (_restore_approve, "approval.password_refused"),
    "deletion approval": (_deletion_approve, "approval.password_refused"),
    "rollback": (_rollback, "restore.rollback_password_refused"),
    "certification signing": (_certification_sign, "auth.reauthenticated"),
    "API token creation": (_token_create, "api_token.password_refused"),
}


def assert_locked(response, path: str = "") -> None:
    """The answer once locked: 429 with Retry-After (the certification refuses through its own 403)."""
    assert response.json()["detail"].startswith(LOCKED)
    if path == "certification signing":
        assert response.status_code == 403
        return
    assert response.status_code == 429
    assert int(response["Retry-After"]) == int(settings.AXES_COOLOFF_TIME.total_seconds())


def failures(user) -> int:
    return AuditEvent.objects.filter(actor=user, outcome="failure",
                                     action__in=set(PURPOSES.values())).count()


@pytest.mark.parametrize("path", PATHS)
def test_a_wrong_password_is_refused_audited_and_counted(path, world, clients, manager):
    attempt, action = PATHS[path]
    response = attempt(clients["manager"], world, "guess")
    assert response.status_code == 403 and response.json()["detail"].startswith(REFUSED)
    event = AuditEvent.objects.get(action=action, actor=manager, outcome="failure")
    assert event.details["purpose"] in PURPOSES
    assert failures(manager) == 1 and not password_attempts_exhausted(manager)
    _nothing_changed(world, manager)


@pytest.mark.parametrize("path", PATHS)
def test_after_the_limit_every_path_refuses_even_the_right_password(path, world, clients, manager, password):
    attempt, _ = PATHS[path]
    for _ in range(settings.AXES_FAILURE_LIMIT):
        assert attempt(clients["manager"], world, "guess").status_code == 403
    assert password_attempts_exhausted(manager)
    response = attempt(clients["manager"], world, password)
    assert_locked(response, path)
    assert AuditEvent.objects.filter(action="auth.reauth_locked", actor=manager, outcome="denied").count() == 1
    assert failures(manager) == settings.AXES_FAILURE_LIMIT, "a locked attempt is not checked, so not counted"
    _nothing_changed(world, manager)


def test_wrong_passwords_on_different_paths_add_up_to_one_limit(world, clients, manager, password):
    tries = list(PATHS.values())
    for index in range(settings.AXES_FAILURE_LIMIT):
        attempt, _ = tries[index % len(tries)]
        assert attempt(clients["manager"], world, "guess").status_code == 403
    for path, (attempt, _) in PATHS.items():
        assert_locked(attempt(clients["manager"], world, password), path)
    _nothing_changed(world, manager)


def test_a_signed_in_session_guessing_the_rollback_password_is_locked_out(world, clients, manager, password):
    """The attack: a stolen session guesses the rollback password. It is stopped after the limit, and the
    right password is then refused too, so a lucky guess after the limit does not roll anything back."""
    url = f"/api/v1/restores/{world['swapped'].pk}/rollback"
    for guess in range(settings.AXES_FAILURE_LIMIT):
        response = post(clients["manager"], url, {"password": f"guess-{guess}"})
        assert response.status_code == 403 and response.json()["detail"] == REFUSED
    assert_locked(post(clients["manager"], url, {"password": password}))
    assert AuditEvent.objects.filter(action="restore.rollback_password_refused",
                                     actor=manager).count() == settings.AXES_FAILURE_LIMIT
    locked = AuditEvent.objects.get(action="auth.reauth_locked", actor=manager)
    assert locked.details["purpose"] == "restore.rollback" and locked.object_id == str(world["swapped"].pk)
    swapped = RestoreRun.objects.get(pk=world["swapped"].pk)
    assert swapped.state == "succeeded" and swapped.rolled_back_at is None
    assert not AuditEvent.objects.filter(action__in=["restore.rolled_back", "restore.rollback_failed"]).exists()


def test_the_reauthentication_page_shares_the_lockout(world, client, manager, password):
    """Wrong passwords typed into approvals lock the re-authentication page too (and it ends the session)."""
    client.force_login(manager)
    for _ in range(settings.AXES_FAILURE_LIMIT):
        assert _rollback(client, world, "guess").status_code == 403
    response = client.post(reverse("drpanel:reauth"), {"password": password})
    assert response.status_code == 429
    assert AuditEvent.objects.filter(action="auth.reauth_locked", actor=manager,
                                     details__purpose="auth.reauthenticate").exists()


def test_once_locked_the_password_is_not_even_checked(world, manager, password, monkeypatch):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        with pytest.raises(PasswordRefused):
            password_confirm(actor=manager, password="guess", purpose="restore.rollback", obj=world["swapped"])

    def checked(self, raw):
        raise AssertionError("the password was checked while locked out")

    monkeypatch.setattr(get_user_model(), "check_password", checked)
    with pytest.raises(PasswordLocked):
        password_confirm(actor=manager, password=password, purpose="restore.rollback", obj=world["swapped"])


def test_the_lockout_ends_after_the_cool_off(world, manager, password, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        with pytest.raises(PasswordRefused):
            password_confirm(actor=manager, password="guess", purpose="api_token.create")
    with pytest.raises(PasswordLocked):
        password_confirm(actor=manager, password=password, purpose="api_token.create")
    settings.AXES_COOLOFF_TIME = timedelta(microseconds=1)
    password_confirm(actor=manager, password=password, purpose="api_token.create")


def test_the_lockout_is_per_user(world, manager, password):
    other = get_user_model().objects.get(username="admin")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        with pytest.raises(PasswordRefused):
            password_confirm(actor=other, password="guess", purpose="auth.reauthenticate")
    password_confirm(actor=manager, password=password, purpose="restore.rollback")
    assert not password_attempts_exhausted(manager) and password_attempts_exhausted(other)


@pytest.mark.parametrize("wrong", ["", None, 42, ["x"]])
def test_an_empty_or_non_text_password_is_refused_and_counted(manager, wrong):
    with pytest.raises(PasswordRefused):
        password_confirm(actor=manager, password=wrong, purpose="auth.reauthenticate")
    assert failures(manager) == 1


def test_an_unknown_purpose_is_a_programming_error(manager, password):
    with pytest.raises(ValueError, match="unknown password purpose"):
        password_confirm(actor=manager, password=password, purpose="something.else")
    assert not AuditEvent.objects.filter(actor=manager).exists()


def test_the_service_paths_raise_typed_errors(world, manager, password):
    """Callers tell a refused password from a lockout by type, never by message text."""
    for _ in range(settings.AXES_FAILURE_LIMIT):
        with pytest.raises(PasswordRefused):
            rollback.restore_rollback(actor=manager, run=world["swapped"], password="guess")
    with pytest.raises(PasswordLocked):
        requests.restore_approve(actor=manager, run=RestoreRun.objects.get(pk=world["awaiting"].pk), password=password)


@pytest.mark.django_db(transaction=True)
def test_parallel_guesses_do_not_slip_past_the_limit_together():
    """A burst of simultaneous guesses: each one is checked after the previous one was counted."""
    import threading

    from django.db import connection as thread_connection

    from tests.factories import UserFactory

    user = UserFactory(username="raced-manager", role="Manager")
    extra = 3
    barrier = threading.Barrier(settings.AXES_FAILURE_LIMIT + extra)
    outcomes = []

    def guess(n):
        try:
            barrier.wait()
            password_confirm(actor=user, password=f"guess-{n}", purpose="restore.rollback")
        except (PasswordRefused, PasswordLocked) as exc:
            outcomes.append(type(exc).__name__)
        finally:
            thread_connection.close()

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(settings.AXES_FAILURE_LIMIT + extra)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["PasswordLocked"] * extra + ["PasswordRefused"] * settings.AXES_FAILURE_LIMIT
    assert failures(user) == settings.AXES_FAILURE_LIMIT
