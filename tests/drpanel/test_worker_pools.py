"""Worker pools: a system's or a target's jobs go to its pool's queues, and its runs say where they ran or wait.

These run against the real PostgreSQL and Redis; the workers here are real rq ``Worker`` records
registered in Redis (what the panel reads to know who serves which pool), not processes: the
processes, each on its own "host", are in ``test_worker_pools_hosts.py``.
"""

import secrets
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from guardian.shortcuts import assign_perm
from rq import Queue, Worker

from backups import systems
from backups.continuous import continuous_check_request
from backups.models import Artifact, BackupRun, System
from backups.runs import backup_request, backup_run_execute
from compliance.models import AuditEvent
from drpanel import queues
from drpanel.management.commands.worker import pool_of_instance
from drpanel.models import Approval
from restores import requests, targets
from restores.models import RestoreRun, Target, VerificationRun
from restores.verifications import verification_execute, verification_request

pytestmark = pytest.mark.django_db


def jobs_on(redis_conn, name: str, pool: str = "") -> list[str]:
    return Queue(queues.queue_name(name, pool), connection=redis_conn).job_ids


@pytest.fixture
def world(operator):
    """A system in pool ``a``, one of its artifacts, and three staging targets: in pool ``b``, in none, and one
    whose system has no pool."""
    system = System.objects.create(name="shop", database_ref="env:DRPANEL_UNSET_FOR_TEST", worker_pool="a")
    loose = System.objects.create(name="blog", database_ref="env:DRPANEL_UNSET_FOR_TEST")
    made = {"system": system, "loose": loose,
            "artifact": Artifact.objects.create(system=system, kind="full", format="pg_custom", status="available",
                                                storage_key="k", sha256="a" * 64),
            "loose_artifact": Artifact.objects.create(system=loose, kind="full", format="pg_custom",
                                                      status="available", storage_key="l", sha256="b" * 64)}
    for name, pool in (("pinned", "b"), ("plain", "")):
        made[name] = Target.objects.create(name=name, environment="staging", worker_pool=pool,
                                           database_ref=f"env:DRPANEL_SECRET_{name.upper()}_URL")
        assign_perm("restore_to_target", operator, made[name])
    return made


def restore(operator, artifact, target) -> RestoreRun:
    return requests.restore_request(actor=operator, artifact=artifact, target=target, mode="database-only",
                                    confirm=target.name)


@pytest.fixture
def registered(redis_conn):
    """Register a real rq worker record on ``queue_names`` (as ``manage.py worker`` would), removed afterwards."""
    made = []

    def register(queue_names: list[str]) -> Worker:
        worker = Worker(queue_names, connection=redis_conn, name=f"pool-test-{secrets.token_hex(4)}")
        worker.register_birth()
        made.append(worker)
        return worker

    yield register
    for worker in made:
        worker.register_death()


# --- names --------------------------------------------------------------------------------------

def test_a_pool_has_its_own_copy_of_each_queue_beside_the_shared_one(settings):
    prefix = settings.RQ_QUEUE_PREFIX
    assert queues.queue_name("restore") == f"{prefix}restore"
    assert queues.queue_name("restore", "b") == f"{prefix}restore:pool:b"
    assert queues.queue_names(["restore", "verify"], pool="b") == [
        f"{prefix}restore:pool:b", f"{prefix}verify:pool:b", f"{prefix}restore", f"{prefix}verify"]


@pytest.mark.parametrize("bad", ["B", "-b", "b.2", "b:c", "a" * 41, "default", "b c"])
def test_a_pool_name_is_a_short_slug_and_default_is_reserved(bad):
    with pytest.raises(KeyError):
        queues.queue_name("restore", bad)
    system = System(name="shop", database_ref="env:DRPANEL_UNSET_FOR_TEST", worker_pool=bad)
    with pytest.raises(ValidationError) as refused:
        system.full_clean()
    assert "worker_pool" in refused.value.message_dict


def test_the_worker_command_takes_its_pool_from_the_systemd_instance_name():
    assert pool_of_instance("default") == ""
    assert pool_of_instance("b") == "b"
    assert pool_of_instance("b.2") == "b"
    assert pool_of_instance("default.2") == ""
    for bad in ("B", "b.x", "../b", ""):
        with pytest.raises(CommandError):
            pool_of_instance(bad)


# --- where the jobs go ----------------------------------------------------------------------------

# django-rq enqueues only outside a transaction: these commit for real.
@pytest.mark.django_db(transaction=True)
def test_a_restore_goes_to_its_targets_pool_else_its_systems_else_the_shared_queue(world, operator, redis_conn):
    into_pinned = restore(operator, world["artifact"], world["pinned"])
    of_pooled_system = restore(operator, world["artifact"], world["plain"])
    into_pinned.refresh_from_db()
    of_pooled_system.refresh_from_db()
    assert jobs_on(redis_conn, "restore", "b") == [into_pinned.job_id]
    assert jobs_on(redis_conn, "restore", "a") == [of_pooled_system.job_id]
    assert jobs_on(redis_conn, "restore") == []
    RestoreRun.objects.filter(pk=of_pooled_system.pk).update(state="failed")
    anywhere = restore(operator, world["loose_artifact"], world["plain"])
    anywhere.refresh_from_db()
    assert jobs_on(redis_conn, "restore") == [anywhere.job_id]


@pytest.mark.django_db(transaction=True)
def test_a_backup_and_a_verification_go_to_their_systems_pool(world, operator, redis_conn):
    backup = backup_request(actor=operator, system=world["system"], kind="full")
    verification = verification_request(actor=operator, artifact=world["artifact"], level="checksum")
    backup.refresh_from_db()
    verification.refresh_from_db()
    assert jobs_on(redis_conn, "backup", "a") == [backup.job_id] and jobs_on(redis_conn, "backup") == []
    assert jobs_on(redis_conn, "verify", "a") == [verification.job_id] and jobs_on(redis_conn, "verify") == []


def test_a_barman_check_goes_to_the_systems_pool_where_its_barman_home_is(world, operator, redis_conn,
                                                                         django_capture_on_commit_callbacks):
    System.objects.filter(pk=world["system"].pk).update(continuous_enabled=True)
    world["system"].refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        continuous_check_request(actor=operator, system=world["system"])
    assert len(jobs_on(redis_conn, "default", "a")) == 1 and jobs_on(redis_conn, "default") == []


# --- changing a pool ---------------------------------------------------------------------------------

def test_a_new_system_takes_its_pool_at_once_but_moving_it_waits_for_a_second_person(admin, redis_conn):
    system = systems.system_save(actor=admin, values={"name": "crm", "database_ref": "env:DRPANEL_SECRET_CRM_URL",
                                                     "worker_pool": "a"})
    assert System.objects.get(pk=system.pk).worker_pool == "a"
    pending = systems.system_save(actor=admin, system=system, values={"worker_pool": "b"})
    assert isinstance(pending, Approval) and "worker_pool a → b" in pending.reason
    assert System.objects.get(pk=system.pk).worker_pool == "a", "not applied by one admin alone"
    cleared = systems.system_save(actor=admin, system=system, values={"worker_pool": ""})
    assert isinstance(cleared, Approval) and "worker_pool a → (any)" in cleared.reason
    assert System.objects.get(pk=system.pk).worker_pool == "a"


def test_a_bad_pool_name_is_refused_naming_the_field_and_nothing_changes(admin):
    system = System.objects.create(name="crm", database_ref="env:DRPANEL_UNSET_FOR_TEST", worker_pool="a")
    with pytest.raises(ValidationError) as refused:
        systems.system_save(actor=admin, system=system, values={"worker_pool": "Pool B"})
    assert "worker_pool" in refused.value.message_dict
    assert System.objects.get(pk=system.pk).worker_pool == "a"


def test_moving_a_target_to_another_pool_waits_for_a_second_person(world, admin):
    pending = targets.target_update(actor=admin, target=world["pinned"], worker_pool="a")
    assert isinstance(pending, Approval) and "worker_pool changed" in pending.reason
    assert Target.objects.get(pk=world["pinned"].pk).worker_pool == "b"


def test_only_an_admin_may_move_a_system_to_another_pool_and_each_refusal_is_audited(world, clients, admin):
    form = {"name": "shop", "database_ref": "env:DRPANEL_SECRET_SHOP_URL", "full_every_hours": 24,
            "incremental_every_hours": 6, "config_every_hours": 4, "keep_last": 7, "keep_daily": 7, "keep_weekly": 4,
            "keep_monthly": 6, "schedule_enabled": "on", "worker_pool": "b"}
    for role in ("operator", "manager", "auditor", "outsider"):
        assert clients[role].post(f"/systems/{world['system'].pk}/edit", form).status_code == 403, role
    assert System.objects.get(pk=world["system"].pk).worker_pool == "a"
    assert AuditEvent.objects.filter(action="access.denied", outcome="denied").count() == 4
    clients["admin"].post(f"/systems/{world['system'].pk}/edit", form)
    assert System.objects.get(pk=world["system"].pk).worker_pool == "a", "waits for a second person"
    assert Approval.objects.filter(requested_by=admin, reason__contains="worker_pool a → b").exists()


# --- waiting, and where it ran --------------------------------------------------------------------

def test_a_queued_run_says_when_no_worker_serves_its_pool(world, operator, clients, registered, redis_conn):
    run = restore(operator, world["artifact"], world["pinned"])
    page = f"/restores/runs/{run.pk}/"
    api = f"/api/v1/restores/{run.pk}"
    # A worker of pool a and a worker of no pool: neither takes pool b's jobs.
    registered(queues.queue_names(pool="a"))
    registered(queues.queue_names())
    assert "no worker in pool b" in clients["operator"].get(page).content.decode()
    body = clients["operator"].get(api).json()
    assert body["worker_pool"] == "b" and body["waiting"].startswith("no worker in pool b")
    # A worker of pool b that stopped heartbeating is dead, even while Redis still lists it.
    silent = registered(queues.queue_names(pool="b"))
    redis_conn.hset(silent.key, "last_heartbeat",
                    (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    assert "no worker in pool b" in clients["operator"].get(page).content.decode()
    registered(queues.queue_names(pool="b"))
    assert "no worker in pool" not in clients["operator"].get(page).content.decode()
    assert clients["operator"].get(api).json()["waiting"] is None


def test_a_run_records_the_host_that_ran_it(world, operator, clients, settings, redis_conn):
    settings.WORKER_HOST = "db-host-7"
    backup = backup_request(actor=operator, system=world["system"], kind="full")
    verification = verification_request(actor=operator, artifact=world["artifact"], level="checksum")
    # Both fail here (no database, no stored object): what matters is that the run records where it ran.
    backup_run_execute(backup.pk)
    verification_execute(verification.pk)
    assert BackupRun.objects.get(pk=backup.pk).worker_host == "db-host-7"
    assert VerificationRun.objects.get(pk=verification.pk).worker_host == "db-host-7"
    assert clients["operator"].get(f"/api/v1/backup-runs/{backup.pk}").json()["worker_host"] == "db-host-7"
    assert clients["operator"].get(f"/api/v1/verifications/{verification.pk}").json()["worker_host"] == "db-host-7"
    assert "db-host-7" in clients["operator"].get(f"/backups/runs/{backup.pk}/").content.decode()
    started = AuditEvent.objects.get(action="backup.started")
    assert started.details["worker_host"] == "db-host-7"


def test_an_automatic_incident_step_runs_in_its_targets_pool_says_when_it_waits_and_records_its_host(
        world, operator, clients, registered, redis_conn, settings, django_capture_on_commit_callbacks):
    from restores.incident_steps import INCIDENT_STEP_RUNS, incident_step_execute, incident_step_start
    from restores.incidents import incident_declare

    incident = incident_declare(actor=operator, system=world["system"], scenario="database", severity="critical",
                                target=world["pinned"])
    assess = incident.steps.get(code="assess")
    # The step reaches the incident's databases: its job goes to the target's pool (b), not the shared queue.
    with django_capture_on_commit_callbacks(execute=True):
        incident_step_start(actor=operator, step=assess)
    assess.refresh_from_db()
    assert assess.state == "queued" and INCIDENT_STEP_RUNS.pool_for(assess.pk) == "b"
    assert assess.job_id in jobs_on(redis_conn, "default", "b")
    assert assess.job_id not in jobs_on(redis_conn, "default")
    page = f"/incidents/{incident.pk}/"
    registered(queues.queue_names(pool="a"))
    registered(queues.queue_names())
    assert "no worker in pool b" in clients["operator"].get(page).content.decode()
    registered(queues.queue_names(pool="b"))
    assert "no worker in pool" not in clients["operator"].get(page).content.decode()

    # The job, as pool b's worker runs it: it fails here (the system's database is not set), and says where.
    settings.WORKER_HOST = "db-host-9"
    assert incident_step_execute(assess.pk).worker_host == "db-host-9"
    assert "Ran on db-host-9" in clients["operator"].get(page).content.decode()
    body = clients["auditor"].get(f"/api/v1/incidents/{incident.pk}").json()
    assert [s["worker_host"] for s in body["steps"] if s["code"] == "assess"] == ["db-host-9"]

    # A target without a pool: the system's pool (a).
    Target.objects.filter(pk=world["pinned"].pk).update(worker_pool="")
    assert INCIDENT_STEP_RUNS.pool_for(assess.pk) == "a"
