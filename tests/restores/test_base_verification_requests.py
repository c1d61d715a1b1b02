"""Verification of base backups without Barman: who may ask, which levels, the schedules, and what counts as verified.

The base backups here are catalog rows (as ``backups.continuous.base_backup`` writes them); the
requests never reach Barman (their jobs are only queued). The runs themselves, against a real
server and a real Barman, are in ``test_base_verification.py``.
"""

import io
import random
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from backups.models import Artifact, System
from compliance.health import health_evaluate, last_restore_test
from compliance.models import AuditEvent
from drpanel.permissions import Denied
from restores import verifications
from restores.base_verification import BaseBackupMissing, backup_id_of
from restores.models import VerificationRun
from tests.support import assert_only_roles

pytestmark = pytest.mark.django_db

STARTERS = {"operator", "manager", "admin"}
VIEWERS = {"operator", "manager", "auditor", "admin"}


@pytest.fixture
def shop(db):
    return System.objects.create(name="shop", database_ref="env:DRPANEL_SECRET_TEST_UNUSED", continuous_enabled=True)


def base_row(system, *, ago=timedelta(hours=1), backup_id="20261203T000000", **fields) -> Artifact:
    return Artifact.objects.create(system=system, kind="base", format="barman_base", encryption="none",
                                   status="available", storage_key=f"barman:{system.name}/{backup_id}",
                                   created_at=timezone.now() - ago, manifest={"backup_id": backup_id}, **fields)


def full_row(system, *, ago=timedelta(hours=2), **fields) -> Artifact:
    return Artifact.objects.create(system=system, kind="full", format="pg_custom", encryption="none",
                                   status="available", storage_key=f"{system.name}/full-{ago.total_seconds()}",
                                   created_at=timezone.now() - ago, **fields)


def json_post(client, url, data):
    return client.post(url, data, content_type="application/json")


# --- who may ask, and at which levels -------------------------------------------------------------


def test_the_page_queues_a_base_verification_for_starters_only_and_each_refusal_is_audited(clients, shop):
    base = base_row(shop)
    assert_only_roles(clients, "post", reverse("restores:verification-create"), allowed=STARTERS,
                      data={"artifact": base.pk, "level": "restore-test"})
    run = VerificationRun.objects.get(artifact=base)
    assert (run.level, run.state, run.trigger) == ("restore-test", "queued", "manual")
    denied = AuditEvent.objects.filter(action="access.denied")
    assert sorted(e.actor_username for e in denied) == ["auditor", "outsider"]
    assert_only_roles(clients, "get", reverse("restores:verification-detail", args=[run.pk]), allowed=VIEWERS)


def test_the_api_queues_a_base_verification_for_starters_only(clients, shop):
    base = base_row(shop)
    url = f"/api/v1/artifacts/{base.pk}/verifications"
    for role in ("auditor", "outsider"):
        before = AuditEvent.objects.filter(action="access.denied").count()
        assert json_post(clients[role], url, {"level": "manifest"}).status_code == 403, role
        assert AuditEvent.objects.filter(action="access.denied").count() == before + 1, role
    assert not VerificationRun.objects.filter(artifact=base).exists()
    response = json_post(clients["operator"], url, {"level": "manifest"})
    assert response.status_code == 202
    assert response.json()["level"] == "manifest" and response.json()["state"] == "queued"
    event = AuditEvent.objects.get(action="verification.requested", object_id=str(base.pk))
    assert event.actor_username == "operator" and event.details["level"] == "manifest"


def test_the_service_refuses_auditors_itself(auditor, shop):
    with pytest.raises(Denied):
        verifications.verification_request(actor=auditor, artifact=base_row(shop), level="manifest")
    assert not VerificationRun.objects.exists()


@pytest.mark.parametrize("level", ["checksum", "decrypt", "structure"])
def test_a_base_backup_is_verified_at_its_own_levels_only(operator, shop, level, clients):
    base = base_row(shop)
    with pytest.raises(verifications.VerificationError, match="manifest and restore-test"):
        verifications.verification_request(actor=operator, artifact=base, level=level)
    response = json_post(clients["operator"], f"/api/v1/artifacts/{base.pk}/verifications", {"level": level})
    assert response.status_code == 400 and "manifest and restore-test" in response.json()["detail"]
    assert not VerificationRun.objects.exists()


def test_the_manifest_level_is_refused_for_a_full_and_a_base_of_an_unprotected_system(operator, shop):
    with pytest.raises(verifications.VerificationError, match="for base backups"):
        verifications.verification_request(actor=operator, artifact=full_row(shop), level="manifest")
    base = base_row(shop)
    System.objects.filter(pk=shop.pk).update(continuous_enabled=False)
    base.refresh_from_db()
    with pytest.raises(verifications.VerificationError, match="no longer continuously protected"):
        verifications.verification_request(actor=operator, artifact=base, level="manifest")
    assert not VerificationRun.objects.exists()


def test_the_artifact_page_offers_the_base_ladder_with_the_manifest_level_first(clients, shop):
    base = base_row(shop)
    page = clients["operator"].get(reverse("backups:artifact-detail", args=[base.pk])).content.decode()
    assert '<option value="manifest" selected>manifest</option>' in page
    assert '<option value="restore-test">restore-test</option>' in page
    assert 'value="decrypt"' not in page and 'value="checksum"' not in page
    auditor_page = clients["auditor"].get(reverse("backups:artifact-detail", args=[base.pk])).content.decode()
    assert 'id="verify-level"' not in auditor_page


def test_manage_verify_queues_a_base_backups_manifest_check_by_default(shop):
    base = base_row(shop)
    out = io.StringIO()

    call_command("verify", str(base.pk), stdout=out)

    run = VerificationRun.objects.get(artifact=base)
    assert run.level == "manifest" and f"verification {run.pk} queued (manifest)" in out.getvalue()
    with pytest.raises(CommandError, match="manifest and restore-test"):
        call_command("verify", str(base.pk), "--level", "decrypt")


@pytest.mark.parametrize("key", ["barman:other/20261203T000000", "barman:shop/../other/20261203T000000",
                                 "barman:shop/", "s3://bucket/shop/20261203T000000"])
def test_a_storage_key_naming_anything_but_a_backup_of_its_own_system_is_refused(shop, key):
    base = base_row(shop)
    base.storage_key = key
    with pytest.raises(BaseBackupMissing, match="does not name a base backup of shop"):
        backup_id_of(base)
    base.storage_key = "barman:shop/20261203T101500"
    assert backup_id_of(base) == "20261203T101500"


# --- the schedules ---------------------------------------------------------------------------------


def test_the_daily_schedule_checks_the_newest_base_backups_manifest(shop):
    base_row(shop, ago=timedelta(days=2), backup_id="20261201T000000")
    newest = base_row(shop, ago=timedelta(hours=3), backup_id="20261203T000000")
    unprotected = System.objects.create(name="plain", database_ref="env:X", continuous_enabled=False)
    base_row(unprotected, backup_id="20261202T000000")

    [run] = verifications.schedule_daily()

    assert (run.artifact_id, run.level, run.trigger, run.requested_by) == (newest.pk, "manifest", "schedule", None)


def test_the_weekly_schedule_restore_tests_a_base_backup_of_the_last_30_days(shop):
    recent = base_row(shop, ago=timedelta(days=3))
    base_row(shop, ago=timedelta(days=40), backup_id="20261020T000000")
    picked = set()
    for seed in range(4):
        VerificationRun.objects.all().delete()
        [run] = verifications.schedule_weekly(rng=random.Random(seed))
        picked.add(run.artifact_id)
        assert run.level == "restore-test"
    assert picked == {recent.pk}


# --- what counts as verified -----------------------------------------------------------------------


def verified_check(system):
    return next(c for c in health_evaluate(system).checks if c.code == "verified")


def test_a_verified_base_newer_than_the_newest_full_passes_the_verified_check(shop):
    full_row(shop, ago=timedelta(hours=5))
    base = base_row(shop, ago=timedelta(hours=1), last_verified_level="manifest",
                    last_verified_at=timezone.now() - timedelta(minutes=30))

    check = verified_check(shop)

    assert check.passed, check.reason
    assert "manifest" in check.reason and base.short_id in check.reason


def test_an_unverified_base_newer_than_a_verified_full_fails_the_verified_check_naming_it(shop):
    full_row(shop, ago=timedelta(hours=5), last_verified_level="decrypt",
             last_verified_at=timezone.now() - timedelta(hours=4))
    base = base_row(shop, ago=timedelta(hours=1))

    check = verified_check(shop)

    assert not check.passed
    assert check.reason == f"The newest base backup ({base.short_id}) has not been verified yet."


def test_a_full_newer_than_the_base_backups_stays_the_one_that_counts(shop):
    base_row(shop, ago=timedelta(hours=5), last_verified_level="restore-test",
             last_verified_at=timezone.now() - timedelta(hours=4))
    full_row(shop, ago=timedelta(hours=1))

    check = verified_check(shop)

    assert not check.passed and check.reason.startswith("The newest full (")


def test_a_base_restore_test_counts_as_the_systems_last_restore_test(shop):
    assert last_restore_test(shop) is None
    at = timezone.now() - timedelta(hours=2)
    base = base_row(shop, last_verified_level="restore-test", last_verified_at=at)
    base_row(shop, backup_id="20261204T000000", last_verified_level="manifest", last_verified_at=timezone.now())

    found = last_restore_test(shop)

    assert found is not None and found.at == at
    assert base.short_id in found.evidence.label
