"""``DRPANEL_LOG_FORMAT=json``: one JSON object per line, with the request id the response echoes and the
audit events of that request store."""

import io
import json
import logging

import pytest

from compliance.audit.models import AuditEvent
from drpanel.logformat import RequestIdFilter, json_formatter
from drpanel.scrub import ScrubFilter
from tests.drpanel.test_settings import manage


@pytest.fixture
def json_log():
    """The panel's JSON handler (formatter and filters as ``LOGGING`` builds them) on the root logger."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(ScrubFilter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)


@pytest.mark.django_db
def test_a_sane_incoming_request_id_is_kept_logged_echoed_and_audited(client, operator, json_log):
    client.force_login(operator)
    response = client.get("/audit/", HTTP_X_REQUEST_ID="lb-7f3a.42_x")
    assert response.status_code == 403  # an operator may not read the audit log: the denial is audited
    assert response["X-Request-ID"] == "lb-7f3a.42_x"
    lines = [line for line in json_log() if line["logger"] == "drpanel.request"]
    assert len(lines) == 1
    line = lines[0]
    assert line["request_id"] == "lb-7f3a.42_x" and line["level"] == "INFO"
    assert line["message"].startswith("GET /audit/ 403 ")
    assert line["time"].endswith(("Z", "+00:00"))
    event = AuditEvent.objects.order_by("-seq").first()
    assert event.outcome == AuditEvent.Outcome.DENIED
    assert event.request_id == "lb-7f3a.42_x"


@pytest.mark.django_db
@pytest.mark.parametrize("incoming", ["<script>alert(1)</script>", "a" * 65, "id with spaces", "ünïcode"])
def test_a_malformed_request_id_is_replaced_by_a_new_one(client, incoming, json_log):
    response = client.get("/health/live", HTTP_X_REQUEST_ID=incoming)
    generated = response["X-Request-ID"]
    assert generated != incoming and len(generated) == 32 and generated.isalnum()
    assert [line["request_id"] for line in json_log() if line["logger"] == "drpanel.request"] == [generated]


@pytest.mark.django_db
def test_the_request_line_names_the_route_not_a_token_in_the_path(client, json_log):
    client.get("/alerts/ack/secret-ack-token-canary-123")
    lines = json_log()
    (line,) = [line for line in lines if line["logger"] == "drpanel.request"]
    assert line["message"].startswith("GET /alerts/ack/<str:token> ")
    assert "secret-ack-token-canary-123" not in json.dumps(line)
    assert all("request" not in line for line in lines), "Django's request object was dumped into a line"


def test_lines_outside_a_request_carry_empty_ids_and_scrubbed_secrets(json_log):
    logging.getLogger("drpanel.test").warning("could not reach postgresql://panel:hunter2-canary-pw@db/x")
    (line,) = [line for line in json_log() if line["logger"] == "drpanel.test"]
    assert line["request_id"] == "" and line["job_id"] == "" and line["level"] == "WARNING"
    assert "hunter2-canary-pw" not in line["message"] and "***" in line["message"]


def test_the_setting_switches_the_process_to_json_lines_and_refuses_other_values():
    result = manage("shell", "-c", "import logging; logging.getLogger('drpanel.probe').warning('hello json')",
                    DRPANEL_LOG_FORMAT="json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if "hello json" in line]
    assert lines and lines[0]["message"] == "hello json" and lines[0]["logger"] == "drpanel.probe"
    result = manage("check", DRPANEL_LOG_FORMAT="xml")
    assert result.returncode == 2 and "DRPANEL_LOG_FORMAT='xml' is not one of: plain, json" in result.stderr
