"""The daily checklist's evaluators: each decides its item from the catalog and links its evidence."""

from datetime import date, timedelta

import pytest
from django.urls import reverse

from backups.models import ArtifactCopy, BackupRun, System
from compliance.checklists import checklist_evaluate
from compliance.health_recompute import health_recompute
from compliance.models import HealthSnapshot
from drpanel import clock
from drpanel import evidence as evaluators

pytestmark = pytest.mark.django_db
pytest_plugins = ["tests.compliance_fixtures", "tests.health_fixtures"]

TODAY = date(2026, 11, 25)  # the panel clock stands at 12:00 UTC
CODES = ("daily.full_backup", "daily.incremental_backup", "daily.config_backup", "daily.health_score",
         "daily.offsite_copy", "daily.encryption_integrity")


def run(code):
    return evaluators.evaluate(code, TODAY)


def test_every_daily_item_has_an_evaluator():
    assert all(evaluators.evaluator_for(code) is not None for code in CODES)


@pytest.mark.parametrize("code", CODES)
def test_with_no_system_there_is_no_data(panel_clock, code):
    result = run(code)
    assert (result.status, result.summary) == ("no_data", "No system is catalogued: there is nothing to evaluate.")


# --- full backup completed ---------------------------------------------------------------------

def test_a_full_finished_today_passes_with_its_artifact(catalog):
    full = catalog.artifact("full", timedelta(hours=3))
    result = run("daily.full_backup")
    assert result.status == "passed"
    assert result.summary == f"1 of 1 system(s) pass. chatbotdysa: full {full.short_id} finished 09:00 UTC (1 today)."
    assert result.evidence[0].url == f"/artifacts/{full.pk}/"


def test_a_full_from_yesterday_fails_and_links_the_failed_run(catalog):
    catalog.artifact("full", timedelta(hours=13))
    failed = BackupRun.objects.create(system=catalog.system, kind="full", state="failed", error="pg_dump exited with 1",
                                      created_at=clock.now() - timedelta(hours=1))
    result = run("daily.full_backup")
    assert result.status == "failed"
    assert "no full backup completed today; the last attempt failed (pg_dump exited with 1)" in result.summary
    assert result.evidence[0].url == reverse("backups:run-detail", args=[failed.pk])


def test_a_full_without_a_recorded_checksum_does_not_count(catalog):
    full = catalog.artifact("full", timedelta(hours=1))
    type(full).objects.filter(pk=full.pk).update(sha256="")
    assert run("daily.full_backup").status == "failed"


def test_a_system_whose_fulls_are_every_two_days_passes_while_within_policy(catalog):
    catalog.system.full_every_hours = 48
    catalog.system.save(update_fields=["full_every_hours"])
    catalog.artifact("full", timedelta(hours=30))
    result = run("daily.full_backup")
    assert result.status == "passed" and "not due today" in result.summary


def test_one_system_without_a_full_fails_the_item(catalog):
    catalog.artifact("full", timedelta(hours=1))
    other = System.objects.create(name="billing", database_ref="env:DRPANEL_SECRET_X",
                                  created_at=clock.now() - timedelta(days=9))
    result = run("daily.full_backup")
    assert result.status == "failed" and result.summary.startswith("1 of 2 system(s) pass.")
    assert f"/systems/{other.pk}/" in [e.url for e in result.evidence]


# --- every N hours -------------------------------------------------------------------------------

def test_config_backups_every_4_hours_pass(catalog):
    for hours in (14, 10, 6, 2):
        catalog.artifact("config", timedelta(hours=hours))
    result = run("daily.config_backup")
    assert result.status == "passed"
    assert "3 config backup(s) today, never more than every 4 h apart." in result.summary
    assert len(result.evidence) == 3


def test_a_gap_longer_than_the_policy_fails_and_says_where(catalog):
    for hours in (14, 10, 2):
        catalog.artifact("config", timedelta(hours=hours))
    result = run("daily.config_backup")
    assert result.status == "failed"
    assert "no config backup from 11-25 02:00 to 11-25 10:00 UTC (8 h; policy every 4 h)." in result.summary


def test_the_stretch_since_the_last_backup_counts_too(catalog):
    catalog.artifact("config", timedelta(hours=9))
    catalog.artifact("config", timedelta(hours=5))
    result = run("daily.config_backup")
    assert result.status == "failed"
    assert "no config backup from 11-25 07:00 to 11-25 12:00 UTC (5 h; policy every 4 h)." in result.summary


def test_incrementals_disabled_everywhere_is_passed_as_not_applicable(catalog):
    result = run("daily.incremental_backup")
    assert result.status == "passed"
    assert result.summary.startswith("Not applicable: no system's policy asks for incremental backups.")
    assert result.evidence[0].url == f"/systems/{catalog.system.pk}/"


def test_incrementals_are_checked_where_the_policy_enables_them(catalog):
    catalog.system.incremental_enabled = True
    catalog.system.save(update_fields=["incremental_enabled"])
    System.objects.create(name="static-site", database_ref="env:DRPANEL_SECRET_X",
                          created_at=clock.now() - timedelta(days=9))
    for hours in (15, 9, 3):
        catalog.artifact("incremental", timedelta(hours=hours))
    result = run("daily.incremental_backup")
    assert result.status == "passed"
    assert "static-site: not applicable (incrementals are disabled in its policy)." in result.summary
    catalog.system.incremental_every_hours = 4
    catalog.system.save(update_fields=["incremental_every_hours"])
    assert run("daily.incremental_backup").status == "failed"


# --- health score 100 -----------------------------------------------------------------------------

def test_a_day_at_100_passes(healthy, catalog):
    health_recompute(catalog.system)
    result = run("daily.health_score")
    assert result.status == "passed" and "chatbotdysa: 100 all day (1 recorded score(s))." in result.summary
    assert result.evidence[0].url == f"/systems/{catalog.system.pk}/health"


def test_a_dip_below_100_during_the_day_fails(healthy, catalog):
    health_recompute(catalog.system)
    clock.advance(timedelta(hours=1))
    ArtifactCopy.objects.filter(location=catalog.offsite).update(status="missing")
    health_recompute(catalog.system)
    clock.advance(timedelta(hours=1))
    ArtifactCopy.objects.filter(location=catalog.offsite).update(status="ok")
    health_recompute(catalog.system)
    clock.advance(timedelta(hours=1))
    result = run("daily.health_score")
    assert result.status == "failed"
    assert "chatbotdysa: below 100 from 13:00 UTC; lowest 76 (warning)." in result.summary


def test_a_score_below_100_at_midnight_counts_for_the_day(healthy, catalog):
    HealthSnapshot.objects.create(system=catalog.system, at=clock.now() - timedelta(hours=14), score=70,
                                  status="warning", fingerprint="x")
    health_recompute(catalog.system)
    assert "below 100 since before midnight" in run("daily.health_score").summary


def test_no_recorded_score_is_no_data(catalog):
    result = run("daily.health_score")
    assert result.status == "no_data" and "no health score recorded today" in result.summary


# --- cloud sync and encryption integrity -----------------------------------------------------------

def test_cloud_sync_is_the_offsite_check_of_the_newest_full(catalog):
    full = catalog.artifact("full", timedelta(hours=2))
    assert run("daily.offsite_copy").status == "passed"
    ArtifactCopy.objects.filter(artifact=full, location=catalog.offsite).update(status="checksum_mismatch")
    result = run("daily.offsite_copy")
    assert result.status == "failed" and "offsite: checksum mismatch" in result.summary
    assert result.evidence[0].url == f"/artifacts/{full.pk}/"


def test_encryption_integrity_needs_the_newest_full_verified_at_decrypt_level(catalog):
    full = catalog.artifact("full", timedelta(hours=2), verified="checksum")
    result = run("daily.encryption_integrity")
    assert result.status == "failed"
    assert f"newest full {full.short_id} verified only at checksum level" in result.summary
    full.last_verified_level = "structure"
    full.save(update_fields=["last_verified_level"])
    result = run("daily.encryption_integrity")
    assert result.status == "passed" and "verified at structure level" in result.summary
    assert result.evidence[0].label.startswith(f"verification of {full.short_id}: structure")


# --- through the checklist -------------------------------------------------------------------------

def test_evaluating_today_stores_results_with_evidence_that_opens(healthy, catalog, clients):
    for hours in (13, 9, 5):
        catalog.artifact("config", timedelta(hours=hours))
    health_recompute(catalog.system)
    period = checklist_evaluate(actor=None)
    items = {i.code: i for i in period.items.all()}
    assert {code: items[code].status for code in CODES} == {
        "daily.full_backup": "passed", "daily.incremental_backup": "passed", "daily.config_backup": "passed",
        "daily.health_score": "passed", "daily.offsite_copy": "passed", "daily.encryption_integrity": "passed"}
    urls = {e["url"] for i in items.values() for e in i.evidence}
    assert urls and all(u.startswith("/") for u in urls)
    for url in urls:
        assert clients["auditor"].get(url).status_code == 200, url
