"""Sign-in and tokens (issue 12, item 5), each attack performed against the running app.

Lockout per username across addresses and per address across usernames; the client's address from a
configured proxy count only; 429 answers with Retry-After; failed sign-ins with unknown usernames
counted per window (one audit event per window, however many requests); tokens that expire, read-only
tokens, scrape-only metrics tokens; and a new session id on re-authentication.
"""

import json
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from compliance.models import AuditEvent
from drpanel import clock
from drpanel.jobs import unknown_signin_failures_job
from drpanel.models import ApiToken, SignInFailureWindow
from drpanel.permissions import REAUTH_SESSION_KEY
from drpanel.services import api_token_create
from drpanel.signin import window_of
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


def login(client, username, password, address="198.51.100.10", **extra):
    return client.post(reverse("drpanel:login"), {"username": username, "password": password},
                       REMOTE_ADDR=address, **extra)


def cooloff_seconds() -> int:
    return int(settings.AXES_COOLOFF_TIME.total_seconds())


def assert_locked_out(response):
    assert response.status_code == 429
    assert int(response["Retry-After"]) == cooloff_seconds()
    assert b"Too many failed sign-in attempts" in response.content


def signed_in(client) -> bool:
    return "_auth_user_id" in client.session


@pytest.fixture
def frozen_window():
    """The panel's clock stopped one minute into a window of unknown-username failures."""
    start, _ = window_of(timezone.now())
    with clock.frozen(start + timedelta(minutes=1)):
        yield start


# --- lockout --------------------------------------------------------------------------------------

def test_one_username_is_locked_whatever_the_addresses(client, operator):
    """A botnet guessing one account from many addresses: the account locks, even for the right password."""
    for n in range(settings.AXES_FAILURE_LIMIT):
        login(client, "operator", f"guess-{n}", address=f"203.0.113.{n + 1}")
    response = login(client, "operator", PASSWORD, address="203.0.113.200")
    assert_locked_out(response)
    assert not signed_in(client)
    assert not AuditEvent.objects.filter(action="auth.login").exists()
    assert AuditEvent.objects.filter(action="auth.lockout", object_repr="operator", outcome="denied").exists()
    assert PASSWORD.encode() not in response.content
    # A known username: one event per attempt, the refused one included.
    assert AuditEvent.objects.filter(action="auth.login_failed", object_repr="operator").count() == \
        settings.AXES_FAILURE_LIMIT + 1


def test_one_address_is_locked_whatever_the_usernames(client, operator, manager, auditor, admin, outsider):
    """One host spraying one password over many accounts: the address locks; the accounts do not."""
    for username in ("operator", "manager", "auditor", "admin", "outsider")[:settings.AXES_FAILURE_LIMIT]:
        login(client, username, "Summer2026!", address="198.51.100.66")
    assert_locked_out(login(client, "operator", PASSWORD, address="198.51.100.66"))
    assert not signed_in(client)
    lockout = AuditEvent.objects.filter(action="auth.lockout").latest("seq")
    assert lockout.details["ip_address"] == "198.51.100.66" and lockout.client_ip == "198.51.100.66"
    # The same account from another address is not locked: only that address is.
    other = Client()
    assert login(other, "operator", PASSWORD, address="198.51.100.67").status_code == 302
    assert signed_in(other)


def test_x_forwarded_for_is_not_read_without_a_proxy_count(client, operator, manager, auditor, admin, outsider):
    """Without DRPANEL_PROXY_COUNT a forged X-Forwarded-For changes nothing: one address, one counter."""
    assert settings.PROXY_COUNT == 0
    for n, username in enumerate(("operator", "manager", "auditor", "admin", "outsider")[:settings.AXES_FAILURE_LIMIT]):
        login(client, username, "guess", address="198.51.100.70", HTTP_X_FORWARDED_FOR=f"192.0.2.{n + 1}")
    response = login(client, "operator", PASSWORD, address="198.51.100.70", HTTP_X_FORWARDED_FOR="192.0.2.99")
    assert_locked_out(response)
    assert not signed_in(client)
    ips = set(AuditEvent.objects.filter(action__in=["auth.login_failed", "auth.lockout"])
              .values_list("client_ip", flat=True))
    assert ips == {"198.51.100.70"}


def test_behind_a_proxy_the_client_is_read_from_the_right_of_x_forwarded_for(
        client, settings, operator, manager, auditor, admin, outsider):
    """One proxy in front: the address it appended is the client; what the client prepends is ignored."""
    settings.PROXY_COUNT = 1
    proxy = "10.0.0.5"
    for n, username in enumerate(("operator", "manager", "auditor", "admin", "outsider")[:settings.AXES_FAILURE_LIMIT]):
        # The attacker forges a new left-hand address each time; the proxy appends the real one.
        login(client, username, "guess", address=proxy, HTTP_X_FORWARDED_FOR=f"192.0.2.{n + 1}, 203.0.113.7")
    assert_locked_out(login(client, "operator", PASSWORD, address=proxy,
                            HTTP_X_FORWARDED_FOR="192.0.2.99, 203.0.113.7"))
    assert set(AuditEvent.objects.filter(action="auth.login_failed").values_list("client_ip", flat=True)) == \
        {"203.0.113.7"}
    # Another client behind the same proxy is not locked out with the attacker.
    other = Client()
    assert login(other, "operator", PASSWORD, address=proxy, HTTP_X_FORWARDED_FOR="203.0.113.8").status_code == 302
    assert AuditEvent.objects.get(action="auth.login").client_ip == "203.0.113.8"


def test_a_locked_password_re_entry_on_the_api_is_a_429_with_retry_after(client, manager):
    client.force_login(manager)
    for _ in range(settings.AXES_FAILURE_LIMIT):
        assert client.post("/api/v1/tokens", json.dumps({"password": "guess"}),
                           content_type="application/json").status_code == 403
    response = client.post("/api/v1/tokens", json.dumps({"password": PASSWORD}), content_type="application/json")
    assert response.status_code == 429 and int(response["Retry-After"]) == cooloff_seconds()
    assert response.json()["detail"].startswith("Too many wrong passwords")
    assert not ApiToken.objects.filter(user=manager).exists()
    assert AuditEvent.objects.filter(action="auth.reauth_locked", actor=manager, outcome="denied").count() == 1


# --- unknown usernames: one event per window --------------------------------------------------------

def test_unknown_usernames_add_one_event_per_window_however_many_requests(client, frozen_window):
    """Anonymous guessing with made-up usernames does not grow the chain: one event when the window ends."""
    head = AuditEvent.objects.count()
    addresses = [f"203.0.113.{n}" for n in range(1, 7)]
    for n in range(30):
        login(client, f"nobody-{n}", f"secret-{n}", address=addresses[n % len(addresses)])
    assert AuditEvent.objects.count() == head, "no event while the window is open"
    window = SignInFailureWindow.objects.get(window_start=frozen_window)
    assert window.failures == 30 and window.recorded_at is None

    # The window ends; the next anonymous failure records it (and is counted in the new window).
    clock.advance(timedelta(minutes=settings.UNKNOWN_SIGNIN_WINDOW_MINUTES))
    login(client, "nobody-next", "secret-next", address="203.0.113.50")
    assert AuditEvent.objects.count() == head + 1
    event = AuditEvent.objects.get(action="auth.unknown_user_failures")
    assert event.outcome == "failure" and event.actor is None
    assert event.details["failures"] == 30
    assert event.details["addresses"] == {address: 5 for address in addresses}
    assert event.details["window_start"] == frozen_window.isoformat()
    # Neither the made-up usernames nor the passwords tried are kept (either may be a typed secret).
    stored = json.dumps(event.details) + event.object_repr
    assert "nobody-" not in stored and "secret-" not in stored
    assert SignInFailureWindow.objects.get(window_start=frozen_window).recorded_at is not None


def test_locked_out_unknown_usernames_are_counted_not_audited_one_by_one(client, frozen_window):
    head = AuditEvent.objects.count()
    for n in range(settings.AXES_FAILURE_LIMIT + 3):
        response = login(client, f"ghost-{n}", "guess", address="198.51.100.99")
    assert_locked_out(response)
    assert AuditEvent.objects.count() == head
    window = SignInFailureWindow.objects.get(window_start=frozen_window)
    assert window.failures == settings.AXES_FAILURE_LIMIT + 3 and window.lockouts >= 3
    clock.advance(timedelta(minutes=settings.UNKNOWN_SIGNIN_WINDOW_MINUTES))
    assert unknown_signin_failures_job() == 1
    assert AuditEvent.objects.count() == head + 1
    event = AuditEvent.objects.get(action="auth.unknown_user_failures")
    assert event.details["lockouts"] == window.lockouts and event.details["addresses"] == {
        "198.51.100.99": settings.AXES_FAILURE_LIMIT + 3}


def test_the_job_records_an_ended_window_once(client, frozen_window):
    login(client, "nobody", "guess")
    assert unknown_signin_failures_job() == 0, "the window is still open"
    clock.advance(timedelta(minutes=settings.UNKNOWN_SIGNIN_WINDOW_MINUTES))
    assert unknown_signin_failures_job() == 1
    assert unknown_signin_failures_job() == 0
    assert AuditEvent.objects.filter(action="auth.unknown_user_failures").count() == 1


def test_known_usernames_keep_one_event_per_failure(client, operator, frozen_window):
    for n in range(3):
        login(client, "operator", f"guess-{n}", address=f"203.0.113.{n + 1}")
    events = AuditEvent.objects.filter(action="auth.login_failed", object_repr="operator")
    assert events.count() == 3 and not SignInFailureWindow.objects.exists()
    assert all("guess-" not in json.dumps(event.details) for event in events)


# --- tokens ----------------------------------------------------------------------------------------

def bearer(raw: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_a_token_expires_after_the_configured_days_and_shows_it(client, settings, operator):
    settings.TOKEN_DAYS = 7
    client.force_login(operator)
    response = client.post(reverse("drpanel:token-create"), {"name": "ci", "password": PASSWORD,
                                                             "access": "read-write"})
    token = response.context["new"]
    assert token.expires_at == token.created_at + timedelta(days=7)
    assert f'{token.expires_at:%Y-%m-%d %H:%M}' in response.content.decode()
    listed = client.get("/api/v1/tokens").json()["results"][0]
    assert listed["expires_at"] == token.expires_at.isoformat() and listed["active"] is True


def test_an_expired_token_is_refused(client, operator):
    token, raw = api_token_create(actor=None, user=operator, name="old")
    assert client.get("/api/v1/me", **bearer(raw)).status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = client.get("/api/v1/me", **bearer(raw))
    assert response.status_code == 401 and "operator" not in response.content.decode()
    assert client.get("/metrics", **bearer(raw)).status_code == 403
    client.force_login(operator)
    assert b"expired" in client.get(reverse("drpanel:token-list")).content


def test_a_read_only_token_reads_but_every_write_is_refused_and_audited(client, operator):
    token, raw = api_token_create(actor=operator, user=operator, name="dashboards", password=PASSWORD,
                                  read_only=True)
    assert client.get("/api/v1/me", **bearer(raw)).json()["username"] == "operator"
    head = AuditEvent.objects.count()
    # The attack: a leaked read-only token tries to mint a full token, and to revoke itself.
    minted = client.post("/api/v1/tokens", json.dumps({"name": "full", "password": PASSWORD}),
                         content_type="application/json", **bearer(raw))
    revoked = client.post(f"/api/v1/tokens/{token.pk}/revoke", "{}", content_type="application/json", **bearer(raw))
    for response in (minted, revoked):
        assert response.status_code == 403 and "read-only" in response.json()["detail"]
        assert raw not in response.content.decode()
    assert ApiToken.objects.filter(user=operator).count() == 1
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None
    events = AuditEvent.objects.filter(seq__gt=0).order_by("-seq")[:AuditEvent.objects.count() - head]
    assert [event.action for event in events] == ["api_token.scope_refused"] * 2
    assert {event.details["method"] for event in events} == {"POST"}
    assert all(event.actor == operator and event.outcome == "denied" for event in events)


def test_a_metrics_token_scrapes_and_can_read_nothing_else(client, auditor):
    token, raw = api_token_create(actor=auditor, user=auditor, name="prometheus", password=PASSWORD,
                                  kind=ApiToken.Kind.METRICS)
    scrape = client.get("/metrics", **bearer(raw))
    assert scrape.status_code == 200 and "drpanel_audit_head_seq" in scrape.content.decode()
    for method, path in (("get", "/api/v1/me"), ("get", "/api/v1/audit/events"), ("get", "/api/v1/dashboard"),
                         ("post", "/api/v1/tokens")):
        response = getattr(client, method)(path, **bearer(raw))
        assert response.status_code == 403, path
        assert response.json()["detail"] == "A metrics token can only scrape /metrics."
        assert "auditor" not in response.content.decode()
    refused = AuditEvent.objects.filter(action="api_token.scope_refused", actor=auditor)
    assert refused.count() == 4 and {event.details["kind"] for event in refused} == {"metrics"}
    # Pages never take bearer tokens: the dashboard sends it to the sign-in page.
    page = client.get("/", **bearer(raw))
    assert page.status_code == 302 and page.url.startswith(reverse("drpanel:login"))
    assert not ApiToken.objects.filter(user=auditor).exclude(pk=token.pk).exists()


def test_an_api_token_still_scrapes_metrics_as_before(client, auditor):
    """Documented choice: existing scrape configurations with an API token of a view_panel user keep working."""
    _, raw = api_token_create(actor=auditor, user=auditor, name="old-scraper", password=PASSWORD)
    assert client.get("/metrics", **bearer(raw)).status_code == 200


def test_the_token_command_makes_each_kind(operator, capsys):
    call_command("api_token", "operator", "--metrics")
    call_command("api_token", "operator", "--read-only")
    kinds = set(ApiToken.objects.filter(user=operator).values_list("kind", "read_only"))
    assert kinds == {("metrics", False), ("api", True)}


def test_the_api_refuses_a_read_only_metrics_token(client, operator):
    client.force_login(operator)
    response = client.post("/api/v1/tokens", json.dumps({"password": PASSWORD, "kind": "metrics", "read_only": True}),
                           content_type="application/json")
    assert response.status_code == 400 and "read_only" in response.json()["errors"]
    assert not ApiToken.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_migration_gives_existing_tokens_created_plus_90_days(operator):
    executor = MigrationExecutor(connection)
    before, after = [("drpanel", "0003_approval")], [("drpanel", "0004_token_expiry_kinds_signin_windows")]
    executor.migrate(before)
    old = executor.loader.project_state(before).apps.get_model("drpanel", "ApiToken")
    created = timezone.now() - timedelta(days=30)
    old.objects.create(user_id=operator.pk, name="legacy", prefix="drp_legacy", token_hash="b" * 64,
                       created_at=created)
    executor = MigrationExecutor(connection)
    try:
        executor.migrate(after)
        token = ApiToken.objects.get(token_hash="b" * 64)
        assert token.expires_at == created + timedelta(days=90)
        assert token.kind == "api" and token.read_only is False and token.is_active
    finally:
        # Going back to drpanel 0003 also unapplied the migrations of other apps that depend on 0004 (restores'
        # point-in-time columns): put every app back at its newest, or the tests after this one on the same
        # database meet a schema without them.
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


# --- re-authentication ------------------------------------------------------------------------------

def test_re_authentication_gives_the_session_a_new_id(client, manager):
    client.force_login(manager)
    old_key = client.session.session_key
    response = client.post(reverse("drpanel:reauth"), {"password": PASSWORD})
    assert response.status_code == 302
    new_key = client.session.session_key
    assert new_key != old_key
    assert REAUTH_SESSION_KEY in client.session and signed_in(client)
    assert not Session.objects.filter(session_key=old_key).exists()
    # A copy of the old cookie (a session id stolen before the password was re-entered) is worth nothing.
    stolen = Client()
    stolen.cookies[settings.SESSION_COOKIE_NAME] = old_key
    assert stolen.get(reverse("drpanel:dashboard")).status_code == 302
    assert AuditEvent.objects.filter(action="auth.reauthenticated", actor=manager, outcome="success").exists()
