"""The demo end to end: seeded through the real jobs, no canary secret in the panel's database, and
an operator pressing "Back up now" in a real browser until the off-site copy is verified."""

import io
import subprocess

import psycopg
import pytest
from django.db import connection

from backups import demo, pgtools
from backups.models import Artifact, BackupRun, System
from backups.runs import backup_run_execute
from drpanel import pgbin
from tests.backup_fixtures import *  # noqa: F403 - fixtures
from tests.backup_fixtures import server_url
from tests.support import rq_workers, worker_env


@pytest.fixture
def demo_env(settings, tmp_path, s3_endpoint):
    settings.VAR_DIR = tmp_path
    settings.DEMO_DATABASE = f"{connection.settings_dict['NAME']}_demo"
    settings.DEMO_S3_ENDPOINT = s3_endpoint
    yield settings
    with psycopg.connect(server_url("postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{settings.DEMO_DATABASE}" WITH (FORCE)')


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_demo_takes_real_backups_and_stores_no_secret(demo_env, redis_conn, tmp_path):
    out = io.StringIO()
    demo.seed(out)
    demo.seed(out)
    assert "rows" in out.getvalue()
    runs = list(BackupRun.objects.filter(state=BackupRun.State.QUEUED))
    assert sorted(r.kind for r in runs) == ["config", "full"]
    for run in runs:
        assert backup_run_execute(run.id).state == BackupRun.State.SUCCEEDED
    full = Artifact.objects.get(kind="full")
    assert sum(t["rows"] for t in full.manifest["tables"]) >= 100_000
    assert full.offsite_verified_at is not None
    system = System.objects.get(name="chatbotdysa")
    assert system.database_ref.startswith("file:")

    canaries = [p.read_text().strip() for p in (tmp_path / "demo" / "secrets").iterdir()]
    assert any("password=demo-canary-" in c for c in canaries)
    env_file = (tmp_path / "demo" / "chatbotdysa-config" / ".env").read_text()
    canaries.append(env_file.split("JWT_SECRET=")[1].strip())
    canaries += [c.split("password=")[1].split()[0] for c in canaries if "password=" in c]
    assert len(canaries) >= 4 and all(len(c) > 10 for c in canaries)
    url = worker_env()["DATABASE_URL"]
    with psycopg.connect(url) as conn:
        major = pgtools.server_facts(conn)["server_major"]
    dump = subprocess.run([pgbin.find_tool("pg_dump", major).path, "--data-only"], env=pgtools.libpq_env(url),
                          capture_output=True, text=True, check=True).stdout
    assert "chatbotdysa" in dump
    for secret in canaries:
        assert secret not in dump


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_an_operator_presses_back_up_now_and_sees_a_verified_offsite_copy(page, sign_in, live_server, operator,
                                                                           system, primary, offsite, redis_conn):
    with rq_workers(count=1):
        sign_in(page, "operator")
        page.goto(f"{live_server.url}/systems/")
        page.click("[data-testid=backup-full]")
        page.wait_for_selector("[data-testid=run-progress]")
        page.wait_for_selector("[data-testid=run-progress][data-state=succeeded]", timeout=90_000)
        assert "100%" in page.text_content("[data-testid=run-progress]")
        page.click("[data-testid=run-artifact] a")
        body = page.text_content("main")
        assert "verified" in body and "offsite" in body
        assert "public.orders" in body and "2000" in body
    artifact = Artifact.objects.get()
    assert artifact.copies.filter(status="ok").count() == 2
