"""One API shape: every list of the URLconf pages as ``{"results": [...], "next": cursor}``, and every error
answers ``{"detail": "...", "errors": {field: [messages]}}`` (docs/api.md).

The lists are found by walking the URLconf under ``/api/v1/``, so a list added later is checked without
touching this file: a GET route whose path does not end with an object's id is a list, unless it is named
in ``NOT_LISTS`` (one object, a file, the schema)."""

import json
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core import signing
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework import exceptions

from backups.models import Artifact, ArtifactCopy, StorageLocation, System
from compliance.audit.models import AuditEvent
from compliance.audit.signing import public_pem
from compliance.models import Alert, Contact
from drpanel import clock
from drpanel.api import MAX_LIMIT, exception_handler
from drpanel.services import api_token_create
from restores.incidents import incident_declare
from restores.models import RestoreRun, Target, VerificationRun
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db

PREFIX = "api/v1/"
# GET routes that answer one thing, not a list (DESIGN.md's table: the dashboard is an object).
NOT_LISTS = {
    "me", "dashboard", "schema/", "checklists/today", "audit/export", "audit/public-key",
    "artifacts/<uuid:pk>/deletion", "certifications/<str:id>/bundle", "systems/<int:pk>/health",
    "incidents/<uuid:pk>/report",
}
# The lists the panel had when this test was written: the walk must find at least these.
KNOWN_LISTS = {
    "tokens", "systems", "artifacts", "artifacts/<uuid:pk>/verifications", "targets", "restores",
    "audit/events", "audit/public-keys", "certifications", "contacts", "alerts", "incidents", "runbooks",
}


def api_routes(patterns=None, prefix=""):
    """Every (route, view) of the URLconf, the route as written (``artifacts/<uuid:pk>``)."""
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(entry, URLResolver):
            yield from api_routes(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry.callback


def list_routes() -> list[str]:
    routes = []
    for route, view in api_routes():
        if not route.startswith(PREFIX):
            continue
        route = route.removeprefix(PREFIX)
        view_class = getattr(view, "view_class", None) or getattr(view, "cls", None)
        if view_class is None or not hasattr(view_class, "get") or route.endswith(">") or route in NOT_LISTS:
            continue
        routes.append(route)
    return sorted(routes)


@pytest.fixture
def two_of_each(tmp_path, settings, operator, admin):
    """At least two rows in every list, so that a page of one has a next page."""
    systems = [System.objects.create(name=name, database_ref="env:DRPANEL_SHAPE_UNSET") for name in ("bravo", "alpha")]
    # Three months to certify: the first system is older.
    System.objects.filter(pk=systems[0].pk).update(created_at=clock.now() - timedelta(days=70))
    location = StorageLocation.objects.create(name="primary", kind="local", role="primary", path=str(tmp_path))
    artifacts = []
    for n in range(2):
        artifact = Artifact.objects.create(system=systems[n], kind="full", format="pg_custom", status="available",
                                           size=1000 + n, sha256="a" * 64, storage_key=f"drpanel/x{n}.drp",
                                           manifest={})
        ArtifactCopy.objects.create(artifact=artifact, location=location, key=artifact.storage_key, status="ok",
                                    size=artifact.size, sha256_seen="a" * 64)
        artifacts.append(artifact)
    for level in ("checksum", "decrypt"):
        VerificationRun.objects.create(artifact=artifacts[0], level=level, state="succeeded", reached_level=level,
                                       percent=100)
    targets = [Target.objects.create(name=name, environment="staging", database_ref="env:DRPANEL_SHAPE_UNSET",
                                     config_dir=str(tmp_path / name)) for name in ("scratch", "staging")]
    for target in targets:
        RestoreRun.objects.create(artifact=artifacts[0], target=target, mode="database-only", state="succeeded",
                                  requested_by=operator)
    for n in range(2):
        incident_declare(actor=operator, system=systems[n], scenario="database", severity="critical",
                         target=targets[n])
    for n in range(2):
        Alert.objects.create(kind="backup.stale", severity="warning", subject=f"Late {n}", dedup_key=f"shape-{n}")
    for level in ("l1", "l2"):
        Contact.objects.create(level=level, name=f"On call {level}", email=f"{level}@example.com")
    for name in ("one", "two"):
        api_token_create(actor=admin, user=admin, name=name, password=PASSWORD)
    settings.AUDIT_RETIRED_KEYS_DIR = tmp_path / "retired"
    settings.AUDIT_RETIRED_KEYS_DIR.mkdir()
    (settings.AUDIT_RETIRED_KEYS_DIR / "old.pem").write_text(public_pem(Ed25519PrivateKey.generate().public_key()))
    return {"artifacts": artifacts[0].pk}


def url_of(route: str, ids: dict) -> str:
    segment = route.split("/")[0]
    path = route
    if "<" in route:
        start, end = route.index("<"), route.index(">")
        path = route[:start] + str(ids[segment]) + route[end + 1:]
    return f"/{PREFIX}{path}"


def identity(item: dict):
    return next((item[key] for key in ("id", "seq", "period", "fingerprint") if key in item), json.dumps(item))


def assert_error_body(response, status: int, *fields: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"detail", "errors"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    assert isinstance(body["errors"], dict)
    assert all(isinstance(messages, list) and all(isinstance(m, str) for m in messages)
               for messages in body["errors"].values()), body
    assert set(fields) <= set(body["errors"]), body
    return body


def test_the_walk_finds_every_list():
    assert set(list_routes()) >= KNOWN_LISTS


@pytest.mark.parametrize("route", list_routes())
def test_every_list_pages_with_a_cursor_and_the_pages_cover_it_once(clients, two_of_each, route):
    client, url = clients["admin"], url_of(route, two_of_each)
    whole = client.get(url, {"limit": MAX_LIMIT})
    assert whole.status_code == 200, whole.content
    body = whole.json()
    assert set(body) == {"results", "next"} and isinstance(body["results"], list) and body["next"] is None
    everything = [identity(item) for item in body["results"]]
    assert len(everything) >= 2, f"{route}: the fixture should give it two rows"
    seen, cursor = [], None
    while True:
        page = client.get(url, {"limit": 1, **({"cursor": cursor} if cursor else {})}).json()
        assert set(page) == {"results", "next"} and len(page["results"]) == 1
        seen += [identity(item) for item in page["results"]]
        cursor = page["next"]
        if cursor is None:
            break
        assert isinstance(cursor, str) and len(seen) < len(everything) + 1
    assert seen == everything


@pytest.mark.parametrize("route", list_routes())
def test_every_list_refuses_a_bad_cursor_or_limit_by_name(clients, two_of_each, route):
    client, url = clients["admin"], url_of(route, two_of_each)
    for params, field in (({"cursor": "not-a-cursor"}, "cursor"), ({"limit": "0"}, "limit"),
                          ({"limit": str(MAX_LIMIT + 1)}, "limit"), ({"limit": "ten"}, "limit")):
        assert_error_body(client.get(url, params), 400, field)


def test_a_cursor_is_read_only_by_the_list_that_gave_it(clients, two_of_each):
    client = clients["admin"]
    cursor = client.get("/api/v1/systems", {"limit": 1}).json()["next"]
    assert cursor
    assert_error_body(client.get("/api/v1/targets", {"cursor": cursor}), 400, "cursor")
    # An artifact cursor taken with one sort is refused with another (its position means something else).
    cursor = client.get("/api/v1/artifacts", {"limit": 1, "sort": "size"}).json()["next"]
    assert_error_body(client.get("/api/v1/artifacts", {"cursor": cursor}), 400, "cursor")
    tampered = cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB")
    assert_error_body(client.get("/api/v1/artifacts", {"cursor": tampered, "sort": "size"}), 400, "cursor")


def test_a_signed_cursor_with_values_its_fields_cannot_take_is_a_400_not_a_500(clients):
    """As if the key leaked: a cursor signed right, holding a position that is not a date."""
    forged = signing.dumps({"order": ["-opened_at", "-pk"], "at": ["not a date", "x"]},
                           salt="drpanel.api.cursor:/api/v1/alerts")
    assert_error_body(clients["auditor"].get("/api/v1/alerts", {"cursor": forged}), 400, "cursor")


def test_the_alerts_list_no_longer_stops_at_200(clients):
    Alert.objects.bulk_create(Alert(kind="backup.stale", severity="warning", subject=f"Late {n}",
                                    dedup_key=f"many-{n}", opened_at=clock.now() - timedelta(seconds=n % 7))
                              for n in range(230))
    seen, cursor = [], None
    while True:
        page = clients["auditor"].get("/api/v1/alerts", {"limit": 100, **({"cursor": cursor} if cursor else {})})
        seen += [alert["id"] for alert in page.json()["results"]]
        cursor = page.json()["next"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(Alert.objects.values_list("pk", flat=True)) and len(set(seen)) == 230
    assert len(clients["auditor"].get("/api/v1/alerts").json()["results"]) == 50


def test_every_kind_of_failure_answers_the_one_error_body(clients, operator):
    signed_in, anonymous = clients["auditor"], Client()
    # 401: no credentials, and a token that is not one.
    assert_error_body(anonymous.get("/api/v1/systems"), 401)
    assert_error_body(anonymous.get("/api/v1/systems", HTTP_AUTHORIZATION="Bearer not-a-token"), 401)
    # 403: a capability the caller lacks; the refusal is audited.
    system = System.objects.create(name="alpha", database_ref="env:DRPANEL_SHAPE_UNSET")
    refused = signed_in.post(f"/api/v1/systems/{system.pk}/backups", {"kind": "full"}, content_type="application/json")
    assert_error_body(refused, 403)
    assert AuditEvent.objects.filter(actor_username="auditor", outcome="denied").exists()
    # 404: a missing object, a malformed id, a path no view matches.
    assert_error_body(signed_in.get("/api/v1/alerts/999999"), 404)
    assert_error_body(signed_in.get("/api/v1/artifacts/not-a-uuid"), 404)
    assert_error_body(signed_in.get("/api/v1/no-such-list"), 404)
    # 405 and 415.
    assert_error_body(signed_in.delete("/api/v1/systems"), 405)
    assert_error_body(clients["operator"].post("/api/v1/restores", "artifact=1", content_type="text/plain"), 415)
    # 400: each refused field named, with its messages.
    body = assert_error_body(clients["operator"].post("/api/v1/restores", {"artifact": 7, "mode": "all"},
                                                      content_type="application/json"),
                             400, "artifact", "mode", "target", "confirm")
    assert body["detail"].startswith("artifact: ")
    assert_error_body(signed_in.get("/api/v1/alerts", {"state": "bogus"}), 400, "state")
    assert_error_body(signed_in.get("/api/v1/restores", {"state": "bogus"}), 400, "state")
    # 409: a refusal by state, built by the view.
    alert = Alert.objects.create(kind="backup.stale", severity="warning", subject="Late", dedup_key="conflict")
    acknowledge = f"/api/v1/alerts/{alert.pk}/acknowledge"
    assert clients["operator"].post(acknowledge, {}, content_type="application/json").status_code == 200
    assert_error_body(clients["operator"].post(acknowledge, {}, content_type="application/json"), 409)
    # 403 for a wrong password re-entered, built by the view too.
    assert_error_body(clients["operator"].post("/api/v1/tokens", {"password": "wrong"},
                                               content_type="application/json"), 403)


def test_throttling_answers_the_one_error_body_with_retry_after(rf):
    """No endpoint is throttled today: DRF's own ``Throttled`` goes through the handler as a throttle would."""
    response = exception_handler(exceptions.Throttled(wait=7), {"request": None})
    assert response.status_code == 429 and response["Retry-After"] == "7"
    assert set(response.data) == {"detail", "errors"} and response.data["errors"] == {}
    assert "7 seconds" in response.data["detail"]
