"""In the browser (Chromium): a user makes a scrape-only metrics token on the token page, sees its expiry, and
the token scrapes /metrics of the running server but cannot read the API."""

import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from django.conf import settings

from drpanel.models import ApiToken
from tests.factories import PASSWORD, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def status_of(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310 - http only
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - the test's own live server
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_metrics_token_is_made_on_the_page_shows_its_expiry_and_only_scrapes(page, live_server, sign_in):
    user = UserFactory(username="prometheus", role="Auditor")
    sign_in(page, "prometheus")
    page.wait_for_url(f"{live_server.url}/")
    page.goto(f"{live_server.url}/tokens/")
    page.fill("#id_name", "scraper")
    page.select_option("#id_access", "metrics")
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Create token").click()
    raw = page.get_by_test_id("new-token").inner_text().strip()
    token = ApiToken.objects.get(user=user)
    assert token.kind == "metrics" and token.expires_at == token.created_at + timedelta(days=settings.TOKEN_DAYS)
    shown = page.get_by_test_id("new-token-expiry").inner_text()
    assert shown == f"{token.expires_at:%Y-%m-%d %H:%M} UTC"  # pages name the zone (TIME_ZONE, UTC here)
    assert page.get_by_test_id("token-expiry").first.inner_text() == shown

    assert status_of(f"{live_server.url}/metrics", raw) == 200
    assert status_of(f"{live_server.url}/api/v1/me", raw) == 403
