"""The guide's scenarios 2 and 3 followed through their runbooks on real services (the steps' jobs and the restores
run in this process, as a worker runs them): onto an empty second PostgreSQL server (the tests' shared one, which
holds no ``shop``; what the restore made there is dropped after the test), and with the primary storage location
gone, from the off-site (S3) copy onto a target on another server."""

import os

import boto3
import psycopg
import pytest

from backups.copies import copy_artifact
from backups.models import StorageLocation
from restores import execution, requests, verifications
from restores.incident_steps import (
    incident_step_complete,
    incident_step_execute,
    incident_step_skip,
    incident_step_start,
    incident_steps_sync,
)
from restores.incidents import incident_declare
from restores.targets import target_create, target_right_grant
from tests.loop_support import take_backup

pytest_plugins = ["tests.restore_fixtures", "tests.loop_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.django_db]


def new_host_target(monkeypatch, tmp_path, server_url, system, health_server, operator, manager, name="shop-newhost"):
    variable = f"DRPANEL_SECRET_{name.upper().replace('-', '_')}_URL"
    monkeypatch.setenv(variable, f"{server_url}/shop")  # the database does not exist there yet
    (tmp_path / f"{name}-config").mkdir()
    target = target_create(actor=None, name=name, environment="production", database_ref=f"env:{variable}",
                           config_dir=str(tmp_path / f"{name}-config"), system=system,
                           health_check_hosts=["127.0.0.1"],
                           health_checks=[{"url": health_server.url, "expected_status": 200}])
    target_right_grant(actor=None, target=target, user=operator, right="restore_to_target")
    target_right_grant(actor=None, target=target, user=manager, right="restore_to_target")
    target_right_grant(actor=None, target=target, user=manager, right="approve_restore")
    return target


def verified(artifact, actor):
    run = verifications.verification_execute(
        verifications.verification_request(actor=actor, artifact=artifact, level="decrypt").pk)
    assert run.state == "succeeded", run.error


def step(incident, code):
    return incident.steps.get(code=code)


def run_job(actor, incident, code):
    incident_step_start(actor=actor, step=step(incident, code))
    return incident_step_execute(step(incident, code).pk)


def restore(actor, manager, password, incident, code):
    started = incident_step_start(actor=actor, step=step(incident, code))
    assert started.state == "waiting", started.error
    run = requests.restore_approve(actor=manager, run=started.restore_run, password=password)
    run = execution.restore_run_execute(run.pk)
    assert run.state == "succeeded", run.error
    incident_steps_sync(incident)
    done = step(incident, code)
    assert done.state == "done", done.error
    return run


def orders_on(server_url) -> int:
    with psycopg.connect(f"{server_url}/shop") as conn:
        return conn.execute("SELECT count(*) FROM orders").fetchone()[0]


def test_scenario_2_complete_system_failure_onto_an_empty_second_server(
        monkeypatch, tmp_path, operator, manager, password, full_artifact, shop_system, health_server,
        second_server, shop_config):
    verified(full_artifact, operator)
    take_backup(shop_system, "config")
    target = new_host_target(monkeypatch, tmp_path, second_server, shop_system, health_server, operator, manager)
    incident = incident_declare(actor=operator, system=shop_system, scenario="system", severity="critical",
                                target=target)
    incident_step_complete(actor=operator, step=step(incident, "prerequisites"), note="docker, node, psql present")
    assert run_job(operator, incident, "assess").state == "done"
    incident_step_start(actor=operator, step=step(incident, "recovery-point"))
    run = restore(operator, manager, password, incident, "restore")
    assert orders_on(second_server) == 2000 and run.target == target
    config = restore(operator, manager, password, incident, "config")
    assert config.mode == "config-only"
    assert (tmp_path / "shop-newhost-config" / "app.env").read_text() == (shop_config / "app.env").read_text()
    incident_step_complete(actor=operator, step=step(incident, "application"), note="npm install --production")
    incident_step_complete(actor=operator, step=step(incident, "startup"), note="up",
                           evidence_url="https://ci.example.com/run/42")
    health = run_job(operator, incident, "health")
    assert health.state == "done", health.error
    incident_step_start(actor=operator, step=step(incident, "checklist"))
    incident.refresh_from_db()
    assert incident.state == "recovered" and incident.rto_seconds > 0 and incident.rpo_seconds >= 0


def test_scenario_3_data_center_outage_from_the_offsite_copy_onto_another_server(
        monkeypatch, tmp_path, operator, manager, password, full_artifact, shop_system, health_server,
        second_server, s3_endpoint):
    bucket = f"offsite-{os.urandom(4).hex()}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    offsite = StorageLocation.objects.create(name="offsite", kind="s3", role="offsite", bucket=bucket,
                                             region="us-east-1", endpoint_url=s3_endpoint)
    primary = StorageLocation.objects.get(role="primary")
    copy_artifact(full_artifact, source=primary, target=offsite)
    verified(full_artifact, operator)
    # The data center is gone: the primary location's directory with it.
    os.rename(primary.path, primary.path + "-lost")
    target = new_host_target(monkeypatch, tmp_path, second_server, shop_system, health_server, operator, manager,
                             name="shop-west")
    incident = incident_declare(actor=operator, system=shop_system, scenario="datacenter", severity="critical",
                                target=target)
    assert run_job(operator, incident, "assess").state == "done"
    incident_step_complete(actor=operator, step=step(incident, "failover"), decision="continue")
    incident_step_start(actor=operator, step=step(incident, "recovery-point"))
    incident_step_complete(actor=operator, step=step(incident, "deploy"), note="terraform apply",
                           evidence_url="https://ci.example.com/run/43")
    run = restore(operator, manager, password, incident, "restore")
    assert orders_on(second_server) == 2000
    assert "offsite" in str(run.steps) or "offsite" in str(run.plan), (run.steps, run.plan)
    incident_step_skip(actor=operator, step=step(incident, "config"), reason="config comes with the new region's "
                                                                             "deployment")
    incident_step_complete(actor=operator, step=step(incident, "dns"), note="switched",
                           evidence_url="https://dns.example.com/change/7")
    assert run_job(operator, incident, "health").state == "done"
    incident_step_start(actor=operator, step=step(incident, "checklist"))
    incident.refresh_from_db()
    assert incident.state == "recovered"
