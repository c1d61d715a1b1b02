"""API skeleton: bearer tokens (stored hashed), ``/api/v1/me``, the schema, the token page."""

import subprocess
import sys
from pathlib import Path

import pytest
from django.urls import reverse

from compliance.models import AuditEvent
from drpanel.models import ApiToken, hash_token
from drpanel.services import api_token_create, api_token_revoke
from tests.factories import PASSWORD
from tests.support import worker_env

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


def bearer(raw):
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_me_answers_with_the_tokens_user_and_roles(client, manager):
    _, raw = api_token_create(actor=manager, user=manager, name="script", password=PASSWORD)
    response = client.get("/api/v1/me", **bearer(raw))
    assert response.status_code == 200
    assert response.json() == {"username": "manager", "roles": ["Manager"]}


def test_tokens_are_stored_only_as_hashes(manager):
    token, raw = api_token_create(actor=manager, user=manager, name="script", password=PASSWORD)
    token.refresh_from_db()
    assert token.token_hash == hash_token(raw)
    assert raw not in str(ApiToken.objects.values())
    event = AuditEvent.objects.get(action="api_token.created")
    assert raw not in str(event.details)


def test_a_revoked_or_unknown_token_is_refused(client, manager):
    token, raw = api_token_create(actor=manager, user=manager, name="script", password=PASSWORD)
    api_token_revoke(actor=manager, token=token)
    assert client.get("/api/v1/me", **bearer(raw)).status_code == 401
    assert client.get("/api/v1/me", **bearer("drp_nonsense")).status_code == 401
    assert client.get("/api/v1/me").status_code in (401, 403)
    assert AuditEvent.objects.filter(action="api_token.revoked").count() == 1


def test_nobody_revokes_someone_elses_token(client, manager, operator):
    token, _ = api_token_create(actor=manager, user=manager, name="script", password=PASSWORD)
    client.force_login(operator)
    response = client.post(reverse("drpanel:token-revoke", args=[token.pk]))
    assert response.status_code == 404
    token.refresh_from_db()
    assert token.is_active


def test_the_token_page_creates_shows_once_and_revokes(client, operator):
    client.force_login(operator)
    response = client.post(reverse("drpanel:token-create"), {"name": "monitoring", "password": PASSWORD})
    raw = response.context["new_token"]
    assert raw.encode() in response.content
    assert raw.encode() not in client.get(reverse("drpanel:token-list")).content
    assert client.get("/api/v1/me", **bearer(raw)).json()["username"] == "operator"
    token = ApiToken.objects.get(user=operator)
    client.post(reverse("drpanel:token-revoke", args=[token.pk]))
    assert client.get("/api/v1/me", **bearer(raw)).status_code == 401


@pytest.mark.django_db(transaction=True)
def test_the_api_token_command_prints_a_working_token(client, operator):
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), "api_token", "operator"],
                            env=worker_env(), capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    raw = result.stdout.strip()
    assert client.get("/api/v1/me", **bearer(raw)).json() == {"username": "operator", "roles": ["Operator"]}


def test_the_openapi_schema_is_served(client, auditor):
    client.force_login(auditor)
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    assert b"/api/v1/me" in response.content
