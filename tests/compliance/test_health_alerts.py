"""Alerts of the health score: one per transition into warning or critical, escalated through the roster,
resolved when healthy again; backups older than their policy; restore drills overdue."""

from datetime import timedelta

import pytest

from backups.models import ArtifactCopy, BackupRun
from compliance.alerts import alert_acknowledge, escalate_due
from compliance.health import last_restore_test
from compliance.health_recompute import alerts_armed
from compliance.jobs import health_recompute_job
from compliance.models import Alert, AuditEvent
from drpanel import clock

pytestmark = pytest.mark.django_db
pytest_plugins = ["tests.compliance_fixtures", "tests.health_fixtures", "tests.notify_support"]

L1, L2 = "l1@example.com", "l2@example.com"


@pytest.fixture
def recompute(django_capture_on_commit_callbacks, catalog):
    """Recompute the catalog's system the way the cron does, with the after-commit mails sent."""

    def _recompute():
        with django_capture_on_commit_callbacks(execute=True):
            health_recompute_job()
        return Alert.objects.exclude(state="resolved")

    return _recompute


@pytest.fixture
def escalate(django_capture_on_commit_callbacks):
    def _escalate():
        with django_capture_on_commit_callbacks(execute=True):
            return escalate_due()

    return _escalate


@pytest.fixture
def complete(catalog):
    """All five checks enabled and passing: incrementals on, each backup fresh, the full verified."""
    catalog.system.incremental_enabled = True
    catalog.system.save(update_fields=["incremental_enabled"])
    full = catalog.artifact("full", timedelta(hours=2), verified="decrypt", verified_age=timedelta(hours=1))
    catalog.artifact("incremental", timedelta(hours=1))
    catalog.artifact("config", timedelta(hours=1))
    BackupRun.objects.create(system=catalog.system, kind="full", state="succeeded", artifact=full)
    return full


def full_goes_late(catalog) -> None:
    """22 h and a second later the 2-hour-old full is past its 24 h policy; its verification (1 h
    after it) is still within 24 h, and the incremental and config backups kept coming."""
    clock.advance(timedelta(hours=22, seconds=1))
    catalog.artifact("incremental", timedelta(minutes=20))
    catalog.artifact("config", timedelta(minutes=10))


def health_mails(outbox, address=None) -> list:
    return [m for m in outbox if "backup health" in m.subject and (address is None or m.to == [address])]


def open_health_alerts() -> list[str]:
    return sorted(Alert.objects.filter(kind__startswith="health.").exclude(state="resolved")
                  .values_list("dedup_key", flat=True))


def test_a_full_past_its_policy_drops_the_score_into_warning_and_mails_l1_then_l2(roster, catalog, complete,
                                                                                  recompute, escalate, outbox):
    recompute()
    assert health_mails(outbox) == [] and open_health_alerts() == []
    full_goes_late(catalog)
    recompute()
    alert = Alert.objects.get(kind="health.warning")
    assert (alert.severity, alert.subject) == ("warning", "chatbotdysa: backup health warning (70/100)")
    assert "Last full backup within its policy (weight 30): Newest full backup is 24 h old" in alert.message
    assert alert.evidence_url == f"/systems/{catalog.system.pk}/health"
    assert [m.to for m in health_mails(outbox)] == [[L1]]
    assert f"/systems/{catalog.system.pk}/health" in health_mails(outbox)[0].body

    recompute()
    assert len(health_mails(outbox)) == 1, "once per transition, however often it is recomputed"
    clock.advance(timedelta(minutes=5))
    escalate()
    assert [m.to for m in health_mails(outbox)] == [[L1], [L2]], "L1 did not acknowledge within 5 minutes"
    assert AuditEvent.objects.filter(action="alert.raised", details__kind="health.warning").count() == 1


def test_an_acknowledged_health_alert_stops_there(roster, catalog, complete, recompute, escalate, operator,
                                                  outbox):
    full_goes_late(catalog)
    recompute()
    alert_acknowledge(actor=operator, alert=Alert.objects.get(kind="health.warning"))
    clock.advance(timedelta(hours=1))
    escalate()
    assert [m.to for m in health_mails(outbox)] == [[L1]]


def test_returning_to_healthy_resolves_the_alert_and_says_so(roster, catalog, complete, recompute, outbox):
    full_goes_late(catalog)
    recompute()
    catalog.artifact("full", timedelta(minutes=10), verified="structure", verified_age=timedelta(minutes=5))
    recompute()
    alert = Alert.objects.get(kind="health.warning")
    assert alert.state == "resolved"
    assert sorted(m.subject for m in outbox if m.subject.startswith("[DR Panel] RESOLVED")) == [
        "[DR Panel] RESOLVED: chatbotdysa: backup health warning (70/100)",
        "[DR Panel] RESOLVED: chatbotdysa: full backup overdue"]
    assert open_health_alerts() == []
    assert AuditEvent.objects.get(action="alert.resolved", details__kind="health.warning").details["note"] == (
        "score back to 100")


def test_warning_then_critical_then_warning_then_healthy(roster, catalog, complete, recompute):
    full_goes_late(catalog)
    recompute()
    key = f"health:{catalog.system.pk}"
    assert open_health_alerts() == [f"{key}:warning"]
    ArtifactCopy.objects.filter(location=catalog.offsite).update(status="missing")
    recompute()
    assert open_health_alerts() == [f"{key}:critical", f"{key}:warning"], "50/100: critical is a new transition"
    assert Alert.objects.get(dedup_key=f"{key}:critical").severity == "critical"
    ArtifactCopy.objects.filter(location=catalog.offsite).update(status="ok")
    recompute()
    assert open_health_alerts() == [f"{key}:warning"], "back up to 70: the critical alert is resolved"
    assert Alert.objects.filter(dedup_key=f"{key}:warning").count() == 1, "still the same warning alert"
    catalog.artifact("full", timedelta(minutes=1), verified="decrypt", verified_age=timedelta(seconds=30))
    recompute()
    assert open_health_alerts() == []


def test_a_new_system_is_not_alerted_about_before_its_first_backup_run(roster, catalog, recompute):
    catalog.system.created_at = clock.now() - timedelta(hours=1)
    catalog.system.save(update_fields=["created_at"])
    recompute()
    assert catalog.system.health_snapshots.get().status == "critical"
    assert open_health_alerts() == [] and not alerts_armed(catalog.system, clock.now())
    BackupRun.objects.create(system=catalog.system, kind="full", state="failed", error="pg_dump exited with 1")
    recompute()
    assert open_health_alerts() == [f"health:{catalog.system.pk}:critical"], "its first run failed: that is news"


def test_a_new_system_is_alerted_about_once_a_full_interval_passed(roster, catalog, recompute):
    catalog.system.created_at = clock.now() - timedelta(hours=24)
    catalog.system.save(update_fields=["created_at"])
    recompute()
    assert open_health_alerts() == [f"health:{catalog.system.pk}:critical"]


# --- backups older than their policy -----------------------------------------------------------

def test_a_backup_older_than_its_policy_raises_an_alert_per_kind(roster, catalog, complete, recompute, outbox):
    recompute()
    assert not Alert.objects.filter(kind="backup.overdue").exists()
    clock.advance(timedelta(hours=3, seconds=1))
    recompute()
    alert = Alert.objects.get(kind="backup.overdue")
    assert alert.dedup_key == f"backup-overdue:{catalog.system.pk}:config"
    assert alert.subject == "chatbotdysa: config backup overdue"
    assert "is 4 h old; the policy asks for one every 4 h." in alert.message
    assert alert.evidence_url.startswith("/artifacts/")
    assert [m.to for m in outbox if m.subject.endswith("config backup overdue")] == [[L1]]
    clock.advance(timedelta(hours=2))
    recompute()
    overdue = sorted(Alert.objects.filter(kind="backup.overdue").values_list("dedup_key", flat=True))
    assert overdue == [f"backup-overdue:{catalog.system.pk}:config", f"backup-overdue:{catalog.system.pk}:incremental"]
    catalog.artifact("config", timedelta(minutes=1))
    recompute()
    assert Alert.objects.get(dedup_key=f"backup-overdue:{catalog.system.pk}:config").state == "resolved"


def test_a_system_without_any_backup_is_overdue_once_older_than_the_interval(roster, catalog, recompute):
    catalog.system.created_at = clock.now() - timedelta(hours=23)
    catalog.system.save(update_fields=["created_at"])
    recompute()
    assert set(Alert.objects.filter(kind="backup.overdue").values_list("dedup_key", flat=True)) == {
        f"backup-overdue:{catalog.system.pk}:config"}, "config (every 4 h) is overdue, the full (24 h) not yet"
    assert Alert.objects.get(kind="backup.overdue").evidence_url == f"/systems/{catalog.system.pk}/"


# --- restore drills ------------------------------------------------------------------------

def test_no_restore_test_in_30_days_is_a_drill_overdue_alert(roster, catalog, complete, recompute):
    recompute()
    alert = Alert.objects.get(kind="drill.overdue")
    assert alert.dedup_key == f"drill-overdue:{catalog.system.pk}"
    assert "None has succeeded since it was added." in alert.message
    tested = catalog.artifact("full", timedelta(days=3), verified="restore-test", verified_age=timedelta(days=2))
    recompute()
    alert.refresh_from_db()
    assert alert.state == "resolved"
    found = last_restore_test(catalog.system)
    assert found.at == clock.now() - timedelta(days=2) and found.evidence.url == f"/artifacts/{tested.pk}/"
    clock.advance(timedelta(days=28, seconds=1))
    recompute()
    again = Alert.objects.exclude(state="resolved").get(kind="drill.overdue")
    assert "The last one succeeded 30 d" in again.message


def test_a_system_younger_than_30_days_is_not_drill_overdue(roster, catalog, complete, recompute):
    catalog.system.created_at = clock.now() - timedelta(days=29)
    catalog.system.save(update_fields=["created_at"])
    recompute()
    assert not Alert.objects.filter(kind="drill.overdue").exists()
