"""CSRF proven: a form post without a token is refused on every URL the panel serves.

The URLconf is walked (every pattern, the Django admin's included); each URL gets a POST from a
signed-in admin (and the sign-in page from an anonymous visitor) through a client that enforces CSRF
checks, with no token: 403, the "did not come from this panel" page (or DRF's JSON refusal under
``/api/``), an ``access.denied`` audit event for a signed-in page, no other row added or removed in any
table, and nothing enqueued in Redis. The only views exempt from CSRF are listed here, each with why.
"""

import re
import uuid

import pytest
from django.apps import apps
from django.conf import settings
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve

from compliance.models import AuditEvent
from drpanel import queues

pytestmark = pytest.mark.django_db

# Views that opt out of Django's CSRF check, and why that is safe.
EXEMPT = {
    # DRF views: a bearer token is not sent by a browser on its own; a session-authenticated API call
    # is checked by DRF's SessionAuthentication instead (asserted: 403 "CSRF Failed", nothing changed).
    "api": lambda url: url.startswith("/api/"),
}


def walk(patterns, prefix=""):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from walk(entry.url_patterns, prefix + _route(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + _route(entry.pattern), entry


def _route(pattern) -> str:
    text = str(pattern)
    if hasattr(pattern, "converters") and not text.startswith("^"):
        return re.sub(r"<(?:(\w+):)?(\w+)>", lambda m: _sample(m.group(1) or "str"), text)
    text = text.lstrip("^").rstrip("$").replace("\\Z", "")
    text = re.sub(r"\(\?P<(\w+)>([^()]*)\)", lambda m: REGEX_SAMPLES.get(m.group(1)) or _alternative(m.group(2)), text)
    return text.replace("\\", "")


def _sample(converter: str) -> str:
    return {"int": "1", "uuid": str(uuid.uuid4())}.get(converter, "x")


REGEX_SAMPLES = {"period": "2026-11", "object_id": "1"}


def _alternative(group: str) -> str:
    first = group.split("|")[0]
    return "x" if any(c in first for c in "[]+*.\\{") else first


def every_url() -> list[str]:
    urls = set()
    for route, pattern in walk(get_resolver().url_patterns):
        url = "/" + route
        try:
            match = resolve(url)
        except Exception:  # noqa: BLE001 - a sample that does not resolve is reported below
            pytest.fail(f"no sample URL resolves for the pattern {route!r} ({pattern.lookup_str})")
        if match.func is not pattern.callback:
            continue  # an earlier pattern answers this URL: it is walked on its own
        urls.add(url)
    return sorted(urls)


def counts() -> dict:
    return {model._meta.label: model.objects.count() for model in apps.get_models() if model._meta.managed}


def enqueued() -> int:
    return sum(queues.get_queue(name).count for name in settings.RQ_QUEUE_NAMES)


def test_the_walk_covers_the_panels_forms():
    urls = every_url()
    assert len(urls) > 60
    for expected in ("/login/", "/reauth/", "/tokens/new", "/backups/inventory", "/admin/auth/user/add/"):
        assert expected in urls, expected


def test_a_post_without_a_token_is_refused_everywhere_and_changes_nothing(admin, redis_conn):
    from backups.models import System

    # A real system too: "Back up now" on it would enqueue a job if the post got through.
    system = System.objects.create(name="shop", database_ref="env:DRPANEL_SECRET_SHOP_URL")
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin)
    anonymous = Client(enforce_csrf_checks=True)
    before, refused = counts(), []
    before.pop("compliance.AuditEvent")
    for url in [*every_url(), f"/systems/{system.pk}/backups", f"/api/v1/systems/{system.pk}/backups"]:
        exempt = [name for name, applies in EXEMPT.items() if applies(url)]
        events = AuditEvent.objects.count()
        if exempt:
            response = client.post(url, {"kind": "full"}, content_type="application/json")
            assert response.status_code == 403 and b"CSRF Failed" in response.content, (url, response.status_code)
            continue
        response = (anonymous if url == "/login/" else client).post(url, {"name": "x", "password": "x", "kind": "full"})
        refused.append(url)
        assert response.status_code == 403, (url, response.status_code)
        assert b"did not come from this panel" in response.content, url
        if url != "/login/":
            denial = AuditEvent.objects.filter(seq__gt=0).order_by("-seq").first()
            assert AuditEvent.objects.count() == events + 1 and denial.action == "access.denied", url
    after = counts()
    after.pop("compliance.AuditEvent")
    assert after == before
    assert enqueued() == 0
    assert len(refused) > 60
