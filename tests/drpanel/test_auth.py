"""Sign-in, lockout, sign-out, idle timeout and re-authentication."""

import re
import time

import pytest
from django.conf import settings
from django.urls import reverse

from compliance.models import AuditEvent
from drpanel.permissions import REAUTH_SESSION_KEY, reauth_required

pytestmark = pytest.mark.django_db


def login(client, username, password):
    return client.post(reverse("drpanel:login"), {"username": username, "password": password})


def test_a_user_signs_in_and_it_is_audited(client, operator, password):
    response = login(client, "operator", password)
    assert response.status_code == 302
    assert response.url == reverse("drpanel:dashboard")
    event = AuditEvent.objects.get(action="auth.login")
    assert event.actor == operator
    assert event.outcome == "success"


def test_a_wrong_password_is_refused_and_audited_without_the_password(client, operator):
    response = login(client, "operator", "not-the-password-canary-7731")
    assert response.status_code == 200
    assert b"do not match" in response.content
    event = AuditEvent.objects.get(action="auth.login_failed")
    assert event.outcome == "failure"
    assert event.object_repr == "operator"
    assert "canary-7731" not in str(event.details)


def test_five_wrong_passwords_lock_the_account_with_a_clear_message(client, operator, password):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert login(client, "operator", "wrong").status_code == 200
    response = login(client, "operator", "wrong")
    assert response.status_code == 429
    assert b"Too many failed sign-in attempts" in response.content
    # Even the right password is refused while locked.
    assert login(client, "operator", password).status_code == 429
    assert AuditEvent.objects.filter(action="auth.lockout", object_repr="operator").exists()


def test_lockout_does_not_reveal_whether_an_account_exists(client, operator):
    answers = {}
    for username in ("operator", "nobody-by-this-name"):
        for _ in range(settings.AXES_FAILURE_LIMIT):
            response = login(client, username, "wrong")
        page = re.sub(rb'nonce="[^"]+"', b"", response.content.replace(username.encode(), b""))
        answers[username] = (response.status_code, page)
    assert answers["operator"] == answers["nobody-by-this-name"]


def test_sign_out_is_a_post_and_is_audited(client, operator, password):
    login(client, "operator", password)
    response = client.post(reverse("drpanel:logout"))
    assert response.status_code == 302
    assert AuditEvent.objects.filter(action="auth.logout", actor=operator).exists()
    assert client.get(reverse("drpanel:dashboard")).status_code == 302


def test_sessions_expire_after_the_idle_timeout(client, operator, password):
    login(client, "operator", password)
    assert client.session.get_expiry_age() == settings.SESSION_IDLE_MINUTES * 60
    assert settings.SESSION_SAVE_EVERY_REQUEST


def test_signed_in_pages_are_not_cached(clients):
    response = clients["operator"].get(reverse("drpanel:dashboard"))
    assert response["Cache-Control"] == "no-store"


def test_pages_carry_the_content_security_policy(clients):
    policy = clients["operator"].get(reverse("drpanel:dashboard"))["Content-Security-Policy"]
    assert "object-src 'none'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "'unsafe-inline'" not in policy
    assert "'nonce-" in policy


@pytest.fixture
def guarded_view():
    from django.http import HttpResponse

    @reauth_required
    def view(request):
        return HttpResponse("approved")

    return view


def test_reauthentication_is_asked_then_valid_for_ten_minutes(rf, client, manager, password, guarded_view):
    client.force_login(manager)
    response = client.post(reverse("drpanel:reauth"), {"password": "wrong", "next": "/restores/"})
    assert response.status_code == 400
    assert AuditEvent.objects.filter(action="auth.reauthenticated", outcome="failure").exists()
    response = client.post(reverse("drpanel:reauth"), {"password": password, "next": "/restores/"})
    assert response.status_code == 302 and response.url == "/restores/"

    request = rf.get("/approve")
    request.user = manager
    request.session = client.session
    assert guarded_view(request).content == b"approved"
    request.session[REAUTH_SESSION_KEY] = time.time() - settings.REAUTH_VALID_MINUTES * 60 - 1
    response = guarded_view(request)
    assert response.status_code == 302
    assert response.url.startswith(reverse("drpanel:reauth"))


def test_reauthentication_refuses_an_outside_next_url(client, manager, password):
    client.force_login(manager)
    response = client.post(reverse("drpanel:reauth"), {"password": password, "next": "https://evil.example/"})
    assert response.url == reverse("drpanel:dashboard")
