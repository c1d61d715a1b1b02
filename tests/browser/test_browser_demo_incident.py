"""In Chromium, on the seeded demo (``manage.py demo``, the same steps as ``make demo``): the issue's first
"done when" line.

The demo operator declares "database corruption or loss" on ``chatbotdysa`` from the dashboard, follows the
runbook (assess → recovery point → decision → production restore) until the demo manager approves it in a
second browser; the health checks call the panel's own ``/health`` (the demo's targets do), the manual steps
are done on the page, and the manager closes the incident. The report shows the RTO and RPO measured against
the targets. Everything is real: the demo's database with its rows, the backups the demo took, the
verification, the assessment, the restore and the health checks on real RQ workers, the roster called by
mail through an SMTP receiver on loopback.

The demo runs here on the panel's PostgreSQL (not on its own server as under ``make demo``, where the system
is continuously protected and the recovery point defaults to the latest WAL: that path is
``tests/restores/test_incident_points.py`` and ``tests/browser/test_browser_pitr.py``).
"""

import io
from urllib.parse import urlparse

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection
from django.template.defaultfilters import floatformat

from backups.models import Artifact
from compliance.audit.models import AuditEvent
from compliance.certification_record import certification_assemble
from drpanel.metrics import render
from restores.incidents import report_hash
from restores.models import Incident, IncidentStep
from tests.backup_fixtures import server_url
from tests.browser_support import blank
from tests.support import rq_workers, wait_for

pytest_plugins = ["tests.notify_support"]
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

DEMO_PASSWORD = "demo password for the journey"
LOST = 100  # orders the corruption deletes


@pytest.fixture
def demo(redis_conn, settings, tmp_path, s3_endpoint, monkeypatch, live_server, smtp_receiver):
    """The demo seeded as ``manage.py demo`` does, into this test's var/ and a database of its own; the workers
    this test starts read the demo's secret files (``DRPANEL_SECRET_DIRS``)."""
    settings.VAR_DIR = tmp_path
    settings.DEMO_DATABASE = f"{connection.settings_dict['NAME']}_demo"
    settings.DEMO_S3_ENDPOINT = s3_endpoint
    monkeypatch.setenv("DRPANEL_DEMO_PASSWORD", DEMO_PASSWORD)
    monkeypatch.setenv("PORT", str(urlparse(live_server.url).port))  # the targets' health checks call this panel
    monkeypatch.setenv("DRPANEL_SECRET_DIRS", str(tmp_path / "demo" / "secrets"))
    out = io.StringIO()
    call_command("demo", stdout=out)
    yield settings
    with psycopg.connect(server_url("postgres"), autocommit=True) as admin:
        names = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                              [settings.DEMO_DATABASE + "%"]).fetchall()
        for (name,) in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def demo_url(settings, database: str = "") -> str:
    return server_url(database or settings.DEMO_DATABASE)


def count(settings, table: str) -> int:
    with psycopg.connect(demo_url(settings)) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608 - a fixed name


def step_in(page, code: str, state: str, timeout: float = 120_000) -> None:
    try:
        page.wait_for_selector(f"[data-testid=step-{code}][data-state={state}]", timeout=timeout)
    except Exception:
        found = IncidentStep.objects.filter(code=code).values("state", "error", "result").first()
        raise AssertionError(f"step {code} is not {state}: {found}") from None


def press(page, code: str, button: str = "step-start") -> None:
    page.locator(f"[data-testid=step-{code}] [data-testid={button}]").click()
    page.wait_for_load_state()


def test_the_demo_operator_recovers_database_corruption_with_the_managers_approval_and_the_report_measures_it(
        demo, browser, page, live_server, redis_conn, smtp_receiver):
    base = live_server.url
    env = {"EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend", "EMAIL_HOST": "127.0.0.1",
           "EMAIL_PORT": smtp_receiver.port}
    full = Artifact.objects.get(kind="full", status="available")
    orders = count(demo, "orders")
    assert orders > LOST
    with rq_workers(["default", "verify", "restore"], count=1, env=env):
        # The demo's backup asked for its decrypt-level verification: a worker does it.
        wait_for(lambda: Artifact.objects.filter(pk=full.pk, last_verified_level="decrypt").first(), timeout=120,
                 what="the demo full's verification")
        with psycopg.connect(demo_url(demo), autocommit=True) as conn:
            conn.execute("DELETE FROM order_items WHERE order_id IN (SELECT id FROM orders ORDER BY id DESC LIMIT %s)",
                         [LOST])
            conn.execute("DELETE FROM orders WHERE id IN (SELECT id FROM orders ORDER BY id DESC LIMIT %s)", [LOST])
        assert count(demo, "orders") == orders - LOST

        page.goto(f"{base}/login/")
        page.fill("#id_username", "operator")
        page.fill("#id_password", DEMO_PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")
        page.get_by_test_id("declare-incident").click()
        assert page.locator("#declare-system option:checked").text_content() == "chatbotdysa"
        page.select_option("#declare-scenario", "database")
        page.select_option("#declare-severity", "critical")
        page.select_option("#declare-target", label="chatbotdysa-production (production)")
        page.fill("#declare-summary", "orders vanished after the 02:50 deploy")
        page.get_by_role("button", name="Declare — start the clock").click()
        page.wait_for_url(f"{base}/incidents/*/")
        incident = Incident.objects.get()
        assert (incident.rto_target_seconds, incident.rpo_target_seconds) == (900, 1800)

        press(page, "assess")
        step_in(page, "assess", "done")
        assessed = page.text_content("[data-testid=step-assess]")
        tables = len(full.manifest["tables"])
        assert f"SELECT 1 answered; {tables - 2} of {tables} tables hold" in assessed, assessed  # orders, order_items
        press(page, "recovery-point")
        step_in(page, "recovery-point", "done")
        assert full.short_id in page.text_content("[data-testid=step-recovery-point]")
        page.locator("[data-testid=step-go-restore] input[name=note]").fill(f"{LOST} orders lost: restore")
        press(page, "go-restore", "step-complete")
        press(page, "restore")
        step_in(page, "restore", "waiting")
        waiting = page.text_content("[data-testid=step-restore]")
        assert "awaiting" in waiting.lower() and "manager" in waiting, waiting
        assert count(demo, "orders") == orders - LOST  # nothing restored before the manager's approval

        manager = browser.new_context().new_page()
        manager.on("dialog", lambda dialog: dialog.accept())
        manager.goto(f"{base}/login/")
        manager.fill("#id_username", "manager")
        manager.fill("#id_password", DEMO_PASSWORD)
        manager.click("button[type=submit]")
        manager.wait_for_url(f"{base}/")
        manager.goto(f"{base}/incidents/{incident.pk}/")
        manager.get_by_test_id("step-restore-link").click()
        manager.fill("#approve-password", DEMO_PASSWORD)
        manager.get_by_role("button", name="Approve the production restore").click()

        step_in(page, "restore", "done", timeout=240_000)
        assert count(demo, "orders") == orders
        press(page, "health")
        step_in(page, "health", "done")
        assert "health URLs answer" in page.text_content("[data-testid=step-health]")
        press(page, "restart", "step-complete")
        step = page.locator("[data-testid=step-endpoints]")
        step.locator("input[name=note]").fill("admin panel, widget and API answer")
        step.locator("input[name=evidence_url]").fill("https://status.example.com/chatbotdysa")
        press(page, "endpoints", "step-complete")
        press(page, "checklist")
        page.wait_for_selector("[data-testid=incident-state]:text('recovered')", timeout=30_000)

        manager.goto(f"{base}/incidents/{incident.pk}/")
        manager.fill("#review-cause", "a deploy's migration deleted the newest orders")
        manager.fill("#review-remediation", "restored the newest verified full")
        manager.fill("#review-follow-ups", "review migrations that delete rows")
        manager.get_by_role("button", name="Close the incident").click()
        manager.wait_for_url(f"{base}/incidents/{incident.pk}/report")
        rto = manager.text_content("[data-testid=report-rto]")
        rpo = manager.text_content("[data-testid=report-rpo]")
        page.goto(f"{base}/")  # the dashboard shows the measured incident against its targets
        measures = page.text_content("[data-testid=incident-measures]")
        page.goto(f"{base}/systems/{incident.system_id}/health")
        health = page.inner_html("[data-testid=system-incident-measures]")
        for page_ in (page, manager):
            blank(page_)
        manager.context.close()

    incident.refresh_from_db()
    assert incident.state == "closed" and incident.recovery_artifact_id == full.pk
    assert "against 15 min 0 s" in rto and ("met" in rto) == (incident.rto_seconds <= 900), rto
    assert "against 30 min 0 s" in rpo and ("met" in rpo) == (incident.rpo_seconds <= 1800), rpo
    report = incident.report
    assert report["rto"]["seconds"] == round(incident.rto_seconds, 1) > 0
    assert report["rpo"]["seconds"] == round((incident.declared_at - full.created_at).total_seconds(), 1)
    assert report["approvals"][0]["decided_by"] == "manager" and report["approvals"][0]["asked"] == ["manager"]
    assert AuditEvent.objects.get(action="incident.closed").details["report_sha256"] == report_hash(report)
    # The measured figures reach the dashboard, the system's health, /metrics and the month's certification.
    rto_s, rpo_s = floatformat(incident.rto_seconds, 0), floatformat(incident.rpo_seconds, 0)
    figures = f"RTO {rto_s} s of 900 s, RPO {rpo_s} s of 1800 s"
    assert "Last incident" in measures and figures in measures, measures
    assert "Last incident" in health and f"/incidents/{incident.pk}/report" in health
    gauge = f'drpanel_incident_rto_seconds{{drill="false",system="chatbotdysa"}} {float(incident.rto_seconds)}'
    assert gauge in render()
    entries = certification_assemble(year=incident.declared_at.year, month=incident.declared_at.month)["incidents"]
    assert [(e["id"], e["drill"]) for e in entries] == [(str(incident.pk), False)]
    # The roster was called for a critical incident: Emergency and L1 at once, by mail.
    wait_for(lambda: len(smtp_receiver.messages) >= 2, timeout=60, what="the roster's mails")
    assert {"tomas.herrera@example.com", "dana.whitfield@example.com"} <= {m.to[0] for m in smtp_receiver.messages}
    # The demo's secrets (its database password, the S3 secret key) are nowhere in the signed report.
    secrets_dir = demo.VAR_DIR / "demo" / "secrets"
    canaries = [p.read_text().strip() for p in secrets_dir.iterdir() if p.is_file()]
    canaries += [c.split("password=")[1].split()[0] for c in canaries if "password=" in c]
    text = str(report)
    assert canaries and not [c for c in canaries if len(c) > 10 and c in text]
