"""The health score: its bands, every check's pass/fail edge, its history, and what it says about itself."""

from datetime import timedelta

import pytest

from backups.models import Artifact, ArtifactCopy, StorageLocation
from compliance.health import format_age, health_evaluate, status_for
from compliance.health_recompute import SNAPSHOT_EVERY, health_recompute
from compliance.models import AuditEvent, HealthSnapshot
from drpanel import clock

pytestmark = pytest.mark.django_db
pytest_plugins = ["tests.compliance_fixtures", "tests.health_fixtures"]

SECOND = timedelta(seconds=1)


def checks(health) -> dict:
    return {c.code: c for c in health.checks}


def evaluate(catalog):
    catalog.system.refresh_from_db()
    return health_evaluate(catalog.system)


# --- bands and the score ---------------------------------------------------------------------

@pytest.mark.parametrize(("score", "status"), [
    (100, "healthy"), (90, "healthy"), (89, "warning"), (67, "warning"), (66, "critical"), (0, "critical")])
def test_the_bands_are_healthy_from_90_warning_from_67_critical_below(score, status):
    assert status_for(score) == status


def test_a_fresh_copied_verified_system_scores_100(healthy, catalog):
    health = evaluate(catalog)
    assert (health.score, health.status) == (100, "healthy")
    assert health.enabled_weight == 85, "incrementals are disabled by default: 30 + 15 + 20 + 20"
    assert not checks(health)["incremental_backup"].enabled
    assert [c.weight for c in health.checks] == [30, 15, 15, 20, 20]


def test_the_score_is_passed_weight_over_enabled_weight_rounded_down(healthy, catalog):
    ArtifactCopy.objects.filter(location=catalog.offsite).update(status="missing")
    health = evaluate(catalog)
    assert health.passed_weight == 65 and health.enabled_weight == 85
    assert health.score == 76, "65 / 85 = 76.47…, rounded down"
    assert health.status == "warning"


def test_a_system_with_no_backup_at_all_scores_0(catalog):
    health = evaluate(catalog)
    assert (health.score, health.status) == (0, "critical")
    assert checks(health)["full_backup"].reason == "No full backup yet; the policy asks for one every 24 h."
    assert checks(health)["full_backup"].evidence[0].url == f"/systems/{catalog.system.pk}/"


def test_enabling_incrementals_adds_their_weight(healthy, catalog):
    catalog.system.incremental_enabled = True
    catalog.system.save(update_fields=["incremental_enabled"])
    assert evaluate(catalog).score == 85, "85 of 100: the incremental check now counts and fails"
    catalog.artifact("incremental", timedelta(hours=3))
    assert evaluate(catalog).score == 100


# --- each check's edge -----------------------------------------------------------------------

def test_the_full_backup_check_passes_at_exactly_its_policy_and_fails_a_second_later(catalog):
    catalog.artifact("full", timedelta(hours=24), verified="decrypt", verified_age=timedelta(hours=1))
    catalog.artifact("config", timedelta(hours=1))
    check = checks(evaluate(catalog))["full_backup"]
    assert check.passed and check.reason == "Newest full backup is 24 h old (policy: every 24 h)."
    clock.advance(SECOND)
    health = evaluate(catalog)
    assert not checks(health)["full_backup"].passed
    assert checks(health)["full_backup"].reason == ("Newest full backup is 24 h old; the policy asks for one "
                                                    "every 24 h.")
    assert (health.score, health.status) == (64, "critical"), "55 of 85 once the full is late"


def test_the_full_backup_check_follows_the_systems_own_interval(catalog):
    catalog.system.full_every_hours = 48
    catalog.system.save(update_fields=["full_every_hours"])
    catalog.artifact("full", timedelta(hours=30))
    assert checks(evaluate(catalog))["full_backup"].passed


def test_the_incremental_check_has_its_own_edge(catalog):
    catalog.system.incremental_enabled = True
    catalog.system.save(update_fields=["incremental_enabled"])
    catalog.artifact("incremental", timedelta(hours=6))
    assert checks(evaluate(catalog))["incremental_backup"].passed
    clock.advance(SECOND)
    assert not checks(evaluate(catalog))["incremental_backup"].passed


def test_the_config_check_has_its_own_edge_and_is_off_without_config_paths(catalog):
    catalog.artifact("config", timedelta(hours=4))
    assert checks(evaluate(catalog))["config_backup"].passed
    clock.advance(SECOND)
    config = checks(evaluate(catalog))["config_backup"]
    assert config.enabled and not config.passed
    catalog.system.config_paths = []
    catalog.system.save(update_fields=["config_paths"])
    config = checks(evaluate(catalog))["config_backup"]
    assert not config.enabled
    assert config.reason == "Not part of the policy: it has no config paths."


@pytest.mark.parametrize("status", ["missing", "deleted", "writing", "failed"])
def test_only_an_available_artifact_counts_as_the_newest(catalog, status):
    catalog.artifact("full", timedelta(hours=30))
    catalog.artifact("full", timedelta(hours=1), status=status)
    check = checks(evaluate(catalog))["full_backup"]
    assert not check.passed and "30 h" in check.reason


def test_the_offsite_check_needs_a_matching_checksum_in_an_enabled_offsite_location(catalog):
    full = catalog.artifact("full", timedelta(hours=2))
    check = checks(evaluate(catalog))["offsite_copy"]
    assert check.passed and check.reason.startswith("Copy in offsite: SHA-256 recomputed there matches")
    assert check.evidence[0].url == f"/artifacts/{full.pk}/"

    ArtifactCopy.objects.filter(location=catalog.offsite).update(sha256_seen="ef" * 32)
    check = checks(evaluate(catalog))["offsite_copy"]
    assert not check.passed, "a copy marked ok whose SHA-256 differs does not count"

    ArtifactCopy.objects.filter(location=catalog.offsite).update(status="checksum_mismatch")
    assert checks(evaluate(catalog))["offsite_copy"].reason == ("No off-site copy of the newest full matches "
                                                                "(offsite: checksum mismatch).")
    ArtifactCopy.objects.filter(location=catalog.offsite).update(status="ok", sha256_seen=full.sha256)
    StorageLocation.objects.filter(pk=catalog.offsite.pk).update(enabled=False)
    check = checks(evaluate(catalog))["offsite_copy"]
    assert not check.passed and "location disabled" in check.reason


def test_the_offsite_check_says_when_there_is_no_copy_or_no_location(catalog):
    full = catalog.artifact("full", timedelta(hours=2), offsite=None)
    reason = checks(evaluate(catalog))["offsite_copy"].reason
    assert reason == f"The newest full ({full.short_id}) has no off-site copy."
    StorageLocation.objects.filter(pk=catalog.offsite.pk).update(enabled=False)
    assert checks(evaluate(catalog))["offsite_copy"].reason == "No off-site storage location is enabled."


def test_the_offsite_check_looks_at_the_newest_full_only(catalog):
    catalog.artifact("full", timedelta(hours=20))
    catalog.artifact("full", timedelta(hours=1), offsite=None)
    assert not checks(evaluate(catalog))["offsite_copy"].passed


@pytest.mark.parametrize(("level", "passes"), [
    ("checksum", False), ("decrypt", True), ("structure", True), ("restore-test", True)])
def test_the_verified_check_needs_decrypt_level_or_better(catalog, level, passes):
    catalog.artifact("full", timedelta(hours=2), verified=level)
    check = checks(evaluate(catalog))["verified"]
    assert check.passed is passes
    if not passes:
        assert check.reason == "The newest full was verified only at checksum level; decrypt or better is needed."


def test_the_verified_check_needs_a_verification_at_most_24_hours_old(catalog):
    full = catalog.artifact("full", timedelta(hours=23), verified="decrypt", verified_age=timedelta(hours=24))
    check = checks(evaluate(catalog))["verified"]
    assert check.passed
    assert check.evidence[0].url == f"/artifacts/{full.pk}/"
    assert check.evidence[0].label.startswith(f"verification of {full.short_id}: decrypt at ")
    clock.advance(SECOND)
    check = checks(evaluate(catalog))["verified"]
    assert not check.passed and "one in the last 24 h is needed" in check.reason


def test_the_verified_check_looks_at_the_newest_full_not_an_older_verified_one(catalog):
    catalog.artifact("full", timedelta(hours=20), verified="restore-test")
    newest = catalog.artifact("full", timedelta(hours=1))
    check = checks(evaluate(catalog))["verified"]
    assert not check.passed
    assert check.reason == f"The newest full ({newest.short_id}) has not been verified yet."


def test_an_artifact_from_after_the_moment_evaluated_does_not_count(catalog):
    catalog.artifact("full", timedelta(hours=30))
    catalog.artifact("full", -timedelta(hours=1))
    assert not checks(evaluate(catalog))["full_backup"].passed


def test_ages_read_like_people_write_them():
    assert [format_age(timedelta(seconds=s)) for s in (40, 720, 3 * 3600, 3 * 3600 + 300, 50 * 3600, 72 * 3600)] == [
        "40 s", "12 min", "3 h", "3 h 5 min", "2 d 2 h", "3 d"]


# --- history ---------------------------------------------------------------------------------

def test_a_recompute_records_only_changes_and_at_least_one_row_an_hour(healthy, catalog):
    first = health_recompute(catalog.system, trigger="test")
    assert (first.score, first.status, first.trigger) == (100, "healthy", "test")
    assert [c["code"] for c in first.checks] == ["full_backup", "incremental_backup", "config_backup",
                                                 "offsite_copy", "verified"]
    assert health_recompute(catalog.system).pk == first.pk, "nothing changed: no new row"
    clock.advance(SNAPSHOT_EVERY - SECOND)
    assert health_recompute(catalog.system).pk == first.pk
    clock.advance(SECOND)
    second = health_recompute(catalog.system)
    assert second.pk != first.pk and second.score == 100, "45 minutes on, a row even without a change"
    catalog.artifact("config", timedelta(minutes=1))
    third = health_recompute(catalog.system)
    assert third.pk != second.pk and third.score == 100, "new evidence (a newer config backup) is a change"
    assert HealthSnapshot.objects.count() == 3


def test_a_change_of_score_is_audited_with_what_fails(healthy, catalog):
    health_recompute(catalog.system, trigger="first")
    ArtifactCopy.objects.filter(location=catalog.offsite).update(status="missing")
    snapshot = health_recompute(catalog.system, trigger="copy checked")
    events = list(AuditEvent.objects.filter(action="health.changed").order_by("seq"))
    assert len(events) == 2
    assert events[0].details["from"] is None and events[0].details["to"] == {"score": 100, "status": "healthy"}
    assert events[1].details["from"] == {"score": 100, "status": "healthy"}
    assert events[1].details["to"] == {"score": 76, "status": "warning"}
    assert list(events[1].details["failing"]) == ["offsite_copy"]
    assert events[1].details["snapshot"] == snapshot.pk and events[1].actor_username == "system"
    assert events[1].object_type == "backups.system" and events[1].object_id == str(catalog.system.pk)


def test_a_recompute_of_a_system_that_is_gone_returns_none(db):
    assert health_recompute(999_999) is None


def test_the_kinds_the_score_knows_are_the_catalogs():
    # "base" (Barman) is scored through the WAL stream: the incremental check under continuous protection.
    assert set(Artifact.Kind.values) == {"full", "incremental", "config", "base"}
