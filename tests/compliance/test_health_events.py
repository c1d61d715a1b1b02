"""The score is recomputed after every change that can move it, once per transaction, after the commit;
and a real backup finishing on a real worker records the new score there."""

import time
from datetime import timedelta

import pytest
from django.db import connection, transaction

from backups.models import Artifact, BackupRun
from backups.runs import backup_request, backup_run_execute
from compliance.audit import audit_record
from compliance.health_recompute import RECOMPUTE_JOB, _Recompute, health_recompute_deferred, health_recompute_soon
from compliance.health_signals import watched
from compliance.models import HealthSnapshot
from drpanel import queues
from tests.backup_fixtures import *  # noqa: F403 - fixtures
from tests.support import rq_workers, wait_for

pytest_plugins = ["tests.compliance_fixtures", "tests.health_fixtures"]


def triggers(system) -> list[str]:
    return list(HealthSnapshot.objects.filter(system=system).order_by("pk").values_list("trigger", flat=True))


def test_the_actions_that_move_a_score_are_watched():
    for action in ("backup.succeeded", "backup.failed", "artifact.copied", "artifact.copy_status", "artifact.deleted",
                   "artifact.status", "inventory.finished", "verification.succeeded", "system.updated",
                   "restore.succeeded", "drill.failed"):
        assert watched(action), action
    for action in ("backup.requested", "backup.started", "alert.raised", "health.changed", "restore.started",
                   "checklist.evaluated", "auth.login"):
        assert not watched(action), action


@pytest.mark.django_db(transaction=True)
def test_an_audited_update_without_post_save_still_recomputes_after_the_commit(catalog):
    full = catalog.artifact("full", timedelta(hours=2), verified="decrypt")
    before = HealthSnapshot.objects.filter(system=catalog.system).count()
    with transaction.atomic():
        # The catalog's own style: a conditional update() (no post_save) and its audit event.
        Artifact.objects.filter(pk=full.pk).update(status=Artifact.Status.MISSING)
        audit_record(actor=None, action="artifact.status", obj=full, details={"from": "available", "to": "missing"})
        assert HealthSnapshot.objects.filter(system=catalog.system).count() == before, "nothing before the commit"
    latest = HealthSnapshot.objects.filter(system=catalog.system).latest("pk")
    assert latest.trigger == "artifact.status"
    assert latest.score == 0 and not latest.checks[0]["passed"]


@pytest.mark.django_db(transaction=True)
def test_a_save_of_the_verification_fields_recomputes(catalog):
    full = catalog.artifact("full", timedelta(hours=2))
    assert not HealthSnapshot.objects.filter(system=catalog.system).latest("pk").checks[4]["passed"]
    full.last_verified_level, full.last_verified_at = "decrypt", full.created_at + timedelta(minutes=5)
    full.save(update_fields=["last_verified_level", "last_verified_at"])
    latest = HealthSnapshot.objects.filter(system=catalog.system).latest("pk")
    assert latest.checks[4]["passed"] and latest.trigger == f"artifact {full.short_id} saved"


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_change_recomputes_nothing(catalog):
    count = HealthSnapshot.objects.count()
    with pytest.raises(RuntimeError), transaction.atomic():
        catalog.artifact("full", timedelta(hours=1))
        raise RuntimeError("the change fails")
    assert HealthSnapshot.objects.count() == count


@pytest.mark.django_db(transaction=True)
def test_many_changes_in_one_transaction_recompute_each_system_once(catalog):
    with transaction.atomic():
        full = catalog.artifact("full", timedelta(hours=2))
        audit_record(actor=None, action="backup.succeeded", obj=full)
        audit_record(actor=None, action="artifact.copied", obj=full)
        health_recompute_soon(catalog.system.pk, trigger="by hand")
        pending = [func for _, func, _ in connection.run_on_commit if isinstance(func, _Recompute)]
        assert [(f.system_id, f.trigger) for f in pending] == [(catalog.system.pk, f"artifact {full.short_id} saved")]
    assert triggers(catalog.system)[-1] == f"artifact {full.short_id} saved"


@pytest.mark.django_db(transaction=True)
def test_an_event_about_something_else_recomputes_every_system(catalog):
    full = catalog.artifact("full", timedelta(hours=2))
    with transaction.atomic():
        Artifact.objects.filter(pk=full.pk).update(last_verified_level="decrypt", last_verified_at=full.created_at)
        audit_record(actor=None, action="verification.succeeded", object_type="restores.verificationrun",
                     object_id="7", object_repr="verification #7")
    assert triggers(catalog.system)[-1] == "verification.succeeded"


@pytest.mark.django_db(transaction=True)
def test_a_deferred_block_recomputes_once_at_its_end(catalog):
    count = HealthSnapshot.objects.count()
    with health_recompute_deferred():
        catalog.artifact("full", timedelta(hours=2), verified="decrypt")
        catalog.artifact("config", timedelta(hours=1))
        assert HealthSnapshot.objects.count() == count
    assert HealthSnapshot.objects.count() == count + 1
    assert HealthSnapshot.objects.latest("pk").score == 100


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_backup_finishing_on_a_worker_records_the_new_score(redis_conn, operator, system, primary, offsite):
    snapshot = None
    with rq_workers(count=1):
        run = backup_request(actor=operator, system=system, kind="full")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            run.refresh_from_db()
            snapshot = (HealthSnapshot.objects.filter(system=system, trigger__in=["backup.succeeded",
                                                                                  "artifact.copied"])
                        .order_by("pk").last())
            if run.is_done and snapshot is not None and snapshot.checks[0]["passed"]:
                break
            time.sleep(0.3)
    assert run.state == BackupRun.State.SUCCEEDED, run.error
    assert snapshot is not None, "the worker recomputed after the backup committed"
    codes = {c["code"]: c for c in snapshot.checks}
    assert codes["full_backup"]["passed"] and codes["offsite_copy"]["passed"]
    assert codes["full_backup"]["evidence"][0]["url"] == f"/artifacts/{run.artifact_id}/"
    assert not codes["verified"]["passed"] and not codes["config_backup"]["passed"]
    assert (snapshot.score, snapshot.status) == (58, "critical"), "50 of 85: no config backup, not verified yet"


@pytest.mark.django_db(transaction=True)
def test_an_event_naming_an_artifact_badly_is_still_audited_and_recomputes_every_system(catalog):
    full = catalog.artifact("full", timedelta(hours=2))
    with transaction.atomic():
        Artifact.objects.filter(pk=full.pk).update(last_verified_level="decrypt", last_verified_at=full.created_at)
        event = audit_record(actor=None, action="artifact.status", object_type="backups.artifact",
                             object_id="not-a-uuid")
    assert event.pk is not None
    assert triggers(catalog.system)[-1] == "artifact.status"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_backup_run_ends_without_the_recompute_it_queues_for_a_worker(redis_conn, operator, system, primary):
    latest_before = HealthSnapshot.objects.filter(system=system).latest("pk")
    assert not {c["code"]: c for c in latest_before.checks}["config_backup"]["passed"]
    run = backup_run_execute(backup_request(actor=operator, system=system, kind="config").id)
    assert run.state == BackupRun.State.SUCCEEDED, run.error
    # The run is over and no recompute ran in it: the newest score is still the one from before.
    assert HealthSnapshot.objects.filter(system=system).latest("pk") == latest_before
    queued = [job for job in queues.get_queue("default").get_jobs() if job.func_name == RECOMPUTE_JOB]
    assert queued and {job.args[0] for job in queued} == {system.pk}
    assert "backup.succeeded" in {job.args[1] for job in queued}
    with rq_workers(["default"]):
        snapshot = wait_for(lambda: HealthSnapshot.objects.filter(system=system, pk__gt=latest_before.pk).first(),
                            60, "a worker to recompute the score the backup moved")
    assert {c["code"]: c for c in snapshot.checks}["config_backup"]["passed"]
    assert queues.get_queue("default").count == 0


@pytest.mark.django_db(transaction=True)
def test_outside_a_run_the_recompute_is_still_done_at_the_commit(redis_conn, catalog):
    with transaction.atomic():
        catalog.artifact("full", timedelta(hours=2), verified="decrypt")
    assert not [job for job in queues.get_queue("default").get_jobs() if job.func_name == RECOMPUTE_JOB]
    assert HealthSnapshot.objects.filter(system=catalog.system).latest("pk").checks[0]["passed"]
