"""The demo's dashboard is true: its score comes from the demo's real backups, computed after seeding."""

import io

import psycopg
import pytest
from django.db import connection

from backups import demo as backups_demo
from backups.models import BackupRun
from compliance import demo as compliance_demo
from compliance.models import Alert, HealthSnapshot
from drpanel import clock
from tests.backup_fixtures import server_url

pytest_plugins = ["tests.notify_support"]


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
def test_the_demo_scores_its_real_backups_and_invents_no_history(demo_env, redis_conn, outbox):
    out = io.StringIO()
    backups_demo.seed(out)
    compliance_demo.seed_contacts(out)
    compliance_demo.seed_health(out)
    text = out.getvalue()
    assert "ran the queued full backup of chatbotdysa now: succeeded" in text
    assert "ran the queued config backup of chatbotdysa now: succeeded" in text
    assert ("Health of chatbotdysa: 76/100 (warning); failing: Newest full verified (decrypt level or better) "
            "in the last 24 h. History starts now.") in text
    assert not BackupRun.objects.exclude(state="succeeded").exists()
    assert (f"Certification {clock.today():%Y-%m} (not signed yet): 2 backup(s) succeeded, 0 failed; "
            "1 verification(s) (0 passed, 1 still running); 0 restore run(s). Sign it as manager:") in text, \
        "the new full's automatic verification is queued"
    snapshots = list(HealthSnapshot.objects.order_by("at"))
    assert [s.score for s in snapshots] == [0, 76], "the new system, then one row after both backups, nothing older"
    assert all(e["url"] for c in snapshots[-1].checks for e in c["evidence"])
    alert = Alert.objects.get(kind="health.warning")
    assert [m.to for m in outbox if m.subject.endswith(alert.subject)] == [["dana.whitfield@example.com"]]

    compliance_demo.seed_health(io.StringIO())
    assert HealthSnapshot.objects.count() == 2 and Alert.objects.filter(kind="health.warning").count() == 1
