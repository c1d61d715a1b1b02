"""The fault campaign, backup side (``make chaos``; also part of ``make test``: about a minute).

Real processes and real faults: an RQ worker killed with SIGKILL in the middle of a backup, Redis
dropped and emptied with a backup queued, the artifact directory on a full filesystem, the S3
endpoint down, stalled and slow during the off-site copy. Each ends with the run states truthful,
nothing half-written catalogued or left behind, and the audit chain valid.
"""

import time

import boto3
import pytest
from django.utils import timezone as django_timezone

from backups import pgtools
from backups.models import Artifact, ArtifactCopy, BackupRun, StorageLocation
from backups.runs import backup_request, backup_run_execute, backup_runs_reap
from compliance.audit.verify import verify_chain
from compliance.models import AuditEvent
from drpanel import pgbin, queues
from tests.backup_fixtures import *  # noqa: F403 - fixtures
from tests.backup_fixtures import keys_env
from tests.chaos_support import FaultyProxy, fill, kill_tree, restart_redis_database, small_filesystem
from tests.support import rq_workers, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def run_state(run) -> str:
    return BackupRun.objects.values_list("state", flat=True).get(pk=run.pk)


def assert_chain_valid():
    result = verify_chain()
    assert result.ok, result.summary()


def files_in(location: StorageLocation) -> list[str]:
    from pathlib import Path

    return sorted(str(p.relative_to(location.path)) for p in Path(location.path).rglob("*") if p.is_file())


# --- kill -9 of a worker mid-backup -----------------------------------------------------------

STALE_SECONDS = 5


@pytest.fixture
def slow_pg_dump(tmp_path, source_db):
    """A pg_dump that dumps, then holds on for a minute before exiting: the backup sits mid-write."""
    import psycopg

    with psycopg.connect(source_db) as conn:
        real = pgbin.find_tool("pg_dump", pgtools.server_facts(conn)["server_major"])
    bin_dir = tmp_path / "slow-bin"
    bin_dir.mkdir()
    script = bin_dir / "pg_dump"
    script.write_text(f'#!/bin/sh\ncase "$1" in --version) exec "{real.path}" --version;; esac\n'
                      f'"{real.path}" "$@"\nsleep 60\n')
    script.chmod(0o755)
    return str(bin_dir)


def test_a_worker_killed_mid_backup_fails_the_run_within_the_bound_and_leaves_nothing(
        operator, system, primary, test_keys, redis_conn, slow_pg_dump, tmp_path):
    with rq_workers(["backup"], count=1, log_dir=tmp_path / "logs",
                    env={**keys_env(test_keys), "PG_BIN_DIR": slow_pg_dump}) as (worker,):
        run = backup_request(actor=operator, system=system, kind="full")
        wait_for(lambda: list(primary.backend().root.rglob(".*.part")), 60, "the backup to be mid-write")
        time.sleep(0.5)
        assert run_state(run) == "running"
        killed = kill_tree(worker.pid)
        assert len(killed) >= 3  # the worker, its work horse, pg_dump
        killed_at = time.monotonic()
        # The reaper runs every minute in production; here every second, with a short stale bound.
        wait_for(lambda: backup_runs_reap(stale_after_seconds=STALE_SECONDS) or run_state(run) == "failed",
                 STALE_SECONDS + 15, "the reaper to fail the run", interval=1)
        detected = time.monotonic() - killed_at
    run.refresh_from_db()
    # Whichever sign of the death the reaper meets first: the run's own heartbeat gone stale, or RQ's registry
    # having moved the job to the failed ones (its heartbeat lapsed too). Both name the dead worker.
    assert run.state == "failed" and ("stopped reporting" in run.error or "its job was abandoned" in run.error), \
        run.error
    assert detected <= STALE_SECONDS + 5
    artifact = Artifact.objects.get(pk=run.artifact_id)
    assert artifact.status == Artifact.Status.FAILED
    assert not ArtifactCopy.objects.filter(artifact=artifact).exists()
    assert files_in(primary) == [], "a partial object was left in the primary location"
    assert AuditEvent.objects.filter(action="backup.failed", details__run=str(run.id)).exists()

    # A re-run with a healthy worker succeeds: a new interpreter, as systemd starts one after a crash.
    with rq_workers(["backup"], count=1, log_dir=tmp_path / "logs", env=keys_env(test_keys), fresh=True):
        again = backup_request(actor=operator, system=system, kind="full")
        assert again.pk != run.pk
        wait_for(lambda: run_state(again) not in ("queued", "running"), 90, "the re-run")
    again.refresh_from_db()
    assert again.state == "succeeded", again.error
    assert again.artifact.copies.get().status == ArtifactCopy.Status.OK
    assert_chain_valid()


# --- Redis restarted and flushed with a backup queued -----------------------------------------

def test_a_backup_queued_when_redis_restarts_empty_is_queued_again_and_runs(
        operator, system, primary, test_keys, redis_conn, tmp_path):
    from rq.job import Job

    run = backup_request(actor=operator, system=system, kind="config")
    run.refresh_from_db()
    assert Job.exists(run.job_id, connection=redis_conn)
    restart_redis_database(redis_conn)
    assert not Job.exists(run.job_id, connection=queues.get_connection("backup"))
    lost_job = run.job_id

    assert backup_runs_reap(requeue_after_seconds=0) == 1
    run.refresh_from_db()
    assert run.state == "queued" and run.job_id and run.job_id != lost_job
    event = AuditEvent.objects.get(action="backup.requeued")
    assert event.details["run"] == str(run.id) and "lost" in event.details["reason"]
    assert backup_runs_reap(requeue_after_seconds=0) == 0  # its job is there now: nothing to do

    with rq_workers(["backup"], count=1, log_dir=tmp_path / "logs", env=keys_env(test_keys)):
        wait_for(lambda: run_state(run) not in ("queued", "running"), 60, "the re-queued run")
    run.refresh_from_db()
    assert run.state == "succeeded", run.error
    assert BackupRun.objects.count() == 1
    assert_chain_valid()


def test_a_queued_backup_whose_job_stays_lost_is_failed_with_the_reason(operator, system, primary, redis_conn):
    from datetime import timedelta

    from django.utils import timezone

    run = backup_request(actor=operator, system=system, kind="full")
    restart_redis_database(redis_conn)
    BackupRun.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(hours=1))
    assert backup_runs_reap() == 1
    run.refresh_from_db()
    assert run.state == "failed" and "lost" in run.error
    assert_chain_valid()


# --- the artifact directory full --------------------------------------------------------------

def test_a_full_artifact_directory_fails_the_backup_clearly_and_keeps_nothing(
        operator, system, test_keys, tmp_path, redis_conn):
    with small_filesystem(tmp_path / "small", size_kb=256) as mount:
        primary = StorageLocation.objects.create(name="primary", kind="local", role="primary", path=str(mount))
        ballast = fill(mount, leave_bytes=8 * 1024)
        run = backup_run_execute(backup_request(actor=operator, system=system, kind="full").id)
        assert run.state == "failed"
        assert "No space left on device" in run.error and str(mount) in run.error
        assert "unexpected error" not in run.error
        assert Artifact.objects.get().status == Artifact.Status.FAILED
        assert not ArtifactCopy.objects.exists()
        assert files_in(primary) == ["ballast"], "a partial object was left on the full disk"
        failed_step = [s for s in run.steps if s["state"] == "failed"]
        assert [s["name"] for s in failed_step] == ["dump and encrypt"]

        ballast.unlink()
        again = backup_run_execute(backup_request(actor=operator, system=system, kind="full").id)
        assert again.state == "succeeded", again.error
    assert_chain_valid()


# --- the S3 endpoint down, stalled or slow during the off-site copy ---------------------------

@pytest.fixture
def offsite_through(s3_endpoint):
    """An off-site location whose endpoint is a FaultyProxy in front of moto; yields a factory."""
    proxies = []

    def make(mode: str, delay: float = 0.0):
        bucket = f"chaos-{len(proxies)}-{int(time.time() * 1000) % 10**8}"
        boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        proxy = FaultyProxy(s3_endpoint, mode=mode, delay=delay)
        proxies.append(proxy)
        location = StorageLocation.objects.create(name=f"offsite-{mode}", kind="s3", role="offsite", bucket=bucket,
                                                  prefix="dr/", region="us-east-1", endpoint_url=proxy.url)
        return proxy, location

    yield make
    for proxy in proxies:
        proxy.stop()


def assert_copy_missing_but_primary_ok(run, location):
    assert run.state == "succeeded", run.error
    artifact = run.artifact
    assert artifact.status == Artifact.Status.AVAILABLE and artifact.offsite_verified_at is None
    copies = {c.location.name: c.status for c in artifact.copies.select_related("location")}
    assert copies == {"primary": "ok", location.name: "missing"}
    step = run.steps[-1]
    assert step["name"] == f"copy to {location.name}" and step["state"] == "failed"
    event = AuditEvent.objects.get(action="artifact.copied", outcome="failure")
    assert event.details["location"] == location.name and event.details["status"] == "missing"


@pytest.mark.parametrize("fault", ["down", "stalled"])
def test_an_s3_endpoint_down_or_stalled_marks_the_offsite_copy_missing_within_the_timeout(
        fault, operator, system, primary, test_keys, offsite_through, settings, clients):
    settings.S3_TIMEOUT_SECONDS, settings.S3_ATTEMPTS = 2, 2
    proxy, location = offsite_through("stall" if fault == "stalled" else "pass")
    if fault == "down":
        proxy.stop()
    started = time.monotonic()
    run = backup_run_execute(backup_request(actor=operator, system=system, kind="full").id)
    elapsed = time.monotonic() - started
    assert_copy_missing_but_primary_ok(run, location)
    # Bounded by the timeouts: two attempts of two seconds for the upload, as many for the cleanup.
    assert elapsed < 30, f"the copy took {elapsed:.0f} s to give up"
    detail = clients["auditor"].get(f"/api/v1/artifacts/{run.artifact_id}").json()
    assert {c["location"]: c["status"] for c in detail["copies"]} == {"primary": "ok", location.name: "missing"}
    assert_chain_valid()


def test_a_slow_s3_endpoint_still_gets_a_verified_copy(operator, system, primary, test_keys, offsite_through,
                                                       settings):
    settings.S3_TIMEOUT_SECONDS = 5
    _, location = offsite_through("slow", delay=0.05)
    run = backup_run_execute(backup_request(actor=operator, system=system, kind="full").id)
    assert run.state == "succeeded", run.error
    copy = run.artifact.copies.get(location=location)
    assert copy.status == ArtifactCopy.Status.OK and copy.sha256_seen == run.artifact.sha256
    assert run.artifact.offsite_verified_at is not None
    assert_chain_valid()


def test_a_running_backup_whose_job_was_abandoned_is_failed_at_once(system, primary, redis_conn):
    from rq.job import JobStatus

    job = queues.get_queue("backup").enqueue("drpanel.jobs.ping", "x")
    job.set_status(JobStatus.FAILED)  # what rq does to a job whose worker stopped heartbeating
    run = BackupRun.objects.create(system=system, kind="full", state="running", job_id=job.id,
                                   heartbeat_at=django_timezone.now())
    assert backup_runs_reap() == 1
    run.refresh_from_db()
    assert run.state == "failed" and "abandoned" in run.error
    assert_chain_valid()
