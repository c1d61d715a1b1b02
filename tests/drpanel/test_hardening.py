"""Hardening: the CSP holds for every template, production settings are secure, password re-entry
is limited, sessions end, refused tokens are logged without the token, errors show nothing."""

import json
import logging
import re
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.urls import include, path, reverse

from compliance.models import AuditEvent
from drpanel.middleware import SIGNED_IN_AT
from tests.drpanel.test_settings import manage, production_env

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = sorted((ROOT / "templates").rglob("*.html"))


# --- the content security policy --------------------------------------------------------------

SCRIPT_TAG = re.compile(r"<script\b[^>]*>", re.IGNORECASE)
STYLE_ATTRIBUTE = re.compile(r"""<[a-zA-Z][^>]*\sstyle\s*=""", re.IGNORECASE | re.DOTALL)
HANDLER_ATTRIBUTE = re.compile(r"""<[a-zA-Z][^>]*\son[a-z]+\s*=""", re.IGNORECASE | re.DOTALL)
STYLE_BLOCK = re.compile(r"<style\b", re.IGNORECASE)
JS_URL = re.compile(r"""(href|src|action)\s*=\s*["']\s*javascript:""", re.IGNORECASE)


def test_there_are_templates_to_scan():
    assert len(TEMPLATES) > 20


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: str(p.relative_to(ROOT / "templates")))
def test_no_template_needs_what_the_csp_forbids(template):
    """No inline script without the nonce, no style attribute or block, no on* handler, no javascript: URL."""
    text = template.read_text()
    for tag in SCRIPT_TAG.findall(text):
        assert "nonce=" in tag, f"{tag} has no nonce"
    assert not STYLE_ATTRIBUTE.search(text), "an inline style= attribute"
    assert not HANDLER_ATTRIBUTE.search(text), "an inline on…= event handler"
    assert not STYLE_BLOCK.search(text), "a <style> block (style-src is 'self' only)"
    assert not JS_URL.search(text), "a javascript: URL"


def test_the_scan_would_catch_each_forbidden_form():
    assert STYLE_ATTRIBUTE.search('<div class="x" style="color:red">')
    assert HANDLER_ATTRIBUTE.search('<button\n  onclick="go()">')
    assert not HANDLER_ATTRIBUTE.search('<p>Turn it on=off</p>')
    assert "nonce=" not in SCRIPT_TAG.findall("<script>alert(1)</script>")[0]


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/login/", "/", "/artifacts/", "/api/v1/me", "/nowhere"])
def test_every_answer_carries_a_strict_policy(clients, url):
    client = Client() if url == "/login/" else clients["auditor"]
    policy = client.get(url)["Content-Security-Policy"]
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
    assert "default-src 'self'" in policy and "object-src 'none'" in policy
    assert "style-src 'self'" in policy and "frame-ancestors 'none'" in policy


# --- production settings ----------------------------------------------------------------------

def test_production_settings_make_cookies_secure_and_send_hsts(tmp_path):
    code = ("import json; from django.conf import settings as s; print(json.dumps({k: getattr(s, k) for k in ["
            "'SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE', 'SESSION_COOKIE_HTTPONLY', 'CSRF_COOKIE_HTTPONLY', "
            "'SESSION_COOKIE_SAMESITE', 'SECURE_SSL_REDIRECT', 'SECURE_HSTS_SECONDS', "
            "'SECURE_HSTS_INCLUDE_SUBDOMAINS', 'SECURE_HSTS_PRELOAD', 'SECURE_CONTENT_TYPE_NOSNIFF', "
            "'X_FRAME_OPTIONS', 'DEBUG', 'SESSION_COOKIE_AGE', 'SESSION_EXPIRE_AT_BROWSER_CLOSE', "
            "'SESSION_SAVE_EVERY_REQUEST', 'SESSION_MAX_HOURS']}))")
    result = manage("shell", "-c", code, **production_env(tmp_path))
    assert result.returncode == 0, result.stderr
    production = json.loads(result.stdout.strip().splitlines()[-1])
    assert production == {
        "SESSION_COOKIE_SECURE": True, "CSRF_COOKIE_SECURE": True, "SESSION_COOKIE_HTTPONLY": True,
        "CSRF_COOKIE_HTTPONLY": True, "SESSION_COOKIE_SAMESITE": "Lax", "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 31536000, "SECURE_HSTS_INCLUDE_SUBDOMAINS": True, "SECURE_HSTS_PRELOAD": True,
        "SECURE_CONTENT_TYPE_NOSNIFF": True, "X_FRAME_OPTIONS": "DENY", "DEBUG": False,
        "SESSION_COOKIE_AGE": 30 * 60, "SESSION_EXPIRE_AT_BROWSER_CLOSE": True, "SESSION_SAVE_EVERY_REQUEST": True,
        "SESSION_MAX_HOURS": 12,
    }


def test_production_refuses_debug(tmp_path):
    result = manage("check", **production_env(tmp_path), DEBUG="1")
    assert result.returncode == 2 and "DEBUG=1 is refused" in result.stderr


# --- password re-entry, sessions, tokens ------------------------------------------------------


@pytest.mark.django_db
def test_wrong_passwords_reentered_in_a_session_end_it_after_the_limit(client, manager, password):
    client.force_login(manager)
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert client.post(reverse("drpanel:reauth"), {"password": "guess"}).status_code == 400
    response = client.post(reverse("drpanel:reauth"), {"password": "guess"})
    assert response.status_code == 429
    assert client.get(reverse("drpanel:dashboard")).status_code == 302  # signed out
    client.force_login(manager)
    # Even the right password is not checked until the cool-off has passed.
    assert client.post(reverse("drpanel:reauth"), {"password": password}).status_code == 429
    assert AuditEvent.objects.filter(action="auth.reauth_locked", actor=manager).exists()


@pytest.mark.django_db
def test_approvals_refuse_a_password_after_too_many_wrong_ones(manager, operator, password, tmp_path):
    from backups.deletion import artifact_delete_approve, artifact_delete_request
    from backups.models import Artifact, System
    from drpanel.passwords import PasswordLocked, PasswordRefused

    system = System.objects.create(name="app", database_ref="env:DRPANEL_SECRET_UNSET_FOR_TEST")
    artifact = Artifact.objects.create(system=system, kind="full", format="pg_custom", status="available",
                                       storage_key="k")
    approval = artifact_delete_request(actor=operator, artifact=artifact, reason="test")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        with pytest.raises(PasswordRefused, match="not correct"):
            artifact_delete_approve(actor=manager, approval=approval, password="guess")
    with pytest.raises(PasswordLocked, match="Too many wrong passwords"):
        artifact_delete_approve(actor=manager, approval=approval, password=password)
    artifact.refresh_from_db()
    assert artifact.status == "available"


@pytest.mark.django_db
def test_a_session_ends_at_its_maximum_lifetime_however_active(client, operator, settings):
    client.force_login(operator)
    assert client.get(reverse("drpanel:dashboard")).status_code == 200
    session = client.session
    session[SIGNED_IN_AT] = time.time() - settings.SESSION_MAX_HOURS * 3600 - 1
    session.save()
    response = client.get(reverse("drpanel:dashboard"))
    assert response.status_code == 302 and response.url.startswith(reverse("drpanel:login"))


@pytest.mark.django_db
def test_a_refused_token_is_logged_without_the_token(client):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("drpanel.authentication")
    logger.addHandler(handler)
    try:
        response = client.get("/api/v1/me", HTTP_AUTHORIZATION="Bearer drp_canary-guess-4417")
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 401 and response["WWW-Authenticate"] == "Bearer"
    assert [r.levelname for r in records] == ["WARNING"]
    assert "canary-guess" not in records[0].getMessage() and "/api/v1/me" in records[0].getMessage()


# --- error answers ----------------------------------------------------------------------------

CANARY = "canary-error-5521"


def explode(request):
    raise RuntimeError(f"the database password is {CANARY}")


handler404 = "drpanel.views.page_not_found"
handler500 = "drpanel.views.server_error"
urlpatterns = [
    path("boom", explode),
    path("api/v1/boom", explode),
    path("", include("drpanel.urls")),
]


@pytest.mark.django_db
@pytest.mark.urls("tests.drpanel.test_hardening")
@pytest.mark.parametrize("url", ["/boom", "/api/v1/boom"])
def test_a_server_error_shows_nothing_of_the_error_or_the_settings(clients, settings, url):
    settings.DEBUG = False
    client = clients["operator"]
    client.raise_request_exception = False
    response = client.get(url)
    assert response.status_code == 500
    body = response.content.decode()
    for leak in (CANARY, "Traceback", "RuntimeError", settings.SECRET_KEY, settings.DATABASES["default"]["NAME"],
                 "SECRET_KEY", "DATABASE"):
        assert leak not in body, leak
    if url.startswith("/api/"):
        assert response.json() == {"detail": "Internal error; it has been logged.", "errors": {}}


@pytest.mark.django_db
def test_a_malformed_id_in_an_api_path_is_a_json_404(clients):
    response = clients["auditor"].get("/api/v1/artifacts/not-a-uuid")
    assert response.status_code == 404 and response.json() == {"detail": "Not found.", "errors": {}}


@pytest.mark.django_db
@pytest.mark.parametrize(("url", "field"), [
    ("/api/v1/audit/events?from=2026-02-30", "filter"),
    ("/api/v1/audit/events?to=2026-11-25T25:00", "filter"),
    ("/api/v1/artifacts?kind=snapshot", "kind"),
    ("/api/v1/artifacts?status=", "status"),
    ("/api/v1/artifacts?cursor=garbage", "cursor"),
    ("/api/v1/artifacts?to=yesterday", "to"),
])
def test_a_refused_value_is_a_400_naming_it(clients, url, field):
    response = clients["manager"].get(url)
    assert response.status_code == 400
    body = response.json()
    assert body["detail"].startswith(f"{field}: ") and field in body["errors"]
