"""Whole-server recovery onto another host: the Barman host's pool recovers, the target host's pool receives.

Two worker pools, each a real ``manage.py worker --pool`` process: ``barman-host`` holds the Barman home (the
system's pool), ``db-host`` does not (the target's pool; its ``DRPANEL_BARMAN_HOME`` is an empty directory). The
recovered data directory goes from one to the other through Redis, checked chunk by chunk.
"""

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from datetime import UTC, datetime

import psycopg
import pytest

from compliance.models import AuditEvent
from drpanel import queues
from restores import execution, requests, shipping, wholeserver
from restores.models import RestoreRun, Target
from restores.pitr import RecoveryPoint
from tests import continuous_support
from tests.continuous_support import POSTGRES, free_port, quiet_second, streams
from tests.drpanel import test_worker_pools_hosts as hosts_support
from tests.restores import test_pitr_wholeserver
from tests.restores.test_pitr_wholeserver import events, server_target, take_base_backup
from tests.support import ROOT, stop_processes, wait_for, worker_env

pytest_plugins = ["tests.restore_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.django_db]

barman_home = continuous_support.barman_home
server = continuous_support.server
_barman_settings = continuous_support.barman_settings
shop = test_pitr_wholeserver.shop
data_root = test_pitr_wholeserver.data_root

SYSTEM_POOL, TARGET_POOL = "barman-host", "db-host"


@contextlib.contextmanager
def pool_workers(pools: dict[str, dict], log_dir):
    """One ``manage.py worker --pool <pool>`` per pool, each with its own environment, for the block."""
    procs = []
    try:
        for pool, env in pools.items():
            log = open(log_dir / f"worker-{pool}.log", "wb")  # noqa: SIM115
            procs.append(subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "worker", "--pool", pool],
                                          env=worker_env(**env), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
            log.close()
            wait_for(lambda p=pool: queues.pool_workers(queues.get_connection(), p), 90,
                     what=f"the worker of pool {pool} to register")
        yield procs
    finally:
        stop_processes(procs, timeout=15)


def empty_orders(server) -> None:
    """The protected server's database ``shop`` with an empty ``orders`` (the module's tests share the server)."""
    if not server.execute("SELECT 1 FROM pg_database WHERE datname = 'shop'"):
        server.execute("CREATE DATABASE shop")
        server.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)", dbname="shop")
    server.execute("TRUNCATE orders", dbname="shop")


def shipped_target(monkeypatch, shop, operator, data_root):
    data_dir, port = data_root / "shop-elsewhere", free_port()
    target = server_target(monkeypatch, name="shop-elsewhere", data_dir=data_dir, port=port, system=shop,
                           operator=operator)
    Target.objects.filter(pk=target.pk).update(worker_pool=TARGET_POOL)
    type(shop).objects.filter(pk=shop.pk).update(worker_pool=SYSTEM_POOL)
    shop.refresh_from_db()
    target.refresh_from_db()
    return target, data_dir, port


def test_the_barman_hosts_pool_recovers_and_the_target_hosts_pool_starts_the_shipped_server(
        transactional_db, shop, server, barman_home, operator, data_root, monkeypatch, tmp_path, redis_conn):
    empty_orders(server)
    target, data_dir, port = shipped_target(monkeypatch, shop, operator, data_root)
    streams(server)
    base = take_base_backup(shop, operator)
    server.execute("INSERT INTO orders (item) VALUES ('before-1'), ('before-2')", dbname="shop")
    # WAL for the Barman host's copy to replay (tens of MB), so its progress is seen here while it runs; dropped
    # before the point, so the shipped directory does not grow by as much.
    server.execute("CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 120000) g",
                   dbname="shop")
    server.execute("DROP TABLE filler", dbname="shop")
    moment = quiet_second()
    server.execute("INSERT INTO orders (item) VALUES ('after')", dbname="shop")
    elsewhere = tmp_path / "no-barman-here"
    elsewhere.mkdir()

    pools = {SYSTEM_POOL: {"DRPANEL_BARMAN_HOME": barman_home},
             TARGET_POOL: {"DRPANEL_BARMAN_HOME": elsewhere, "DRPANEL_SERVER_DATA_ROOTS": str(data_root)}}
    with pool_workers(pools, tmp_path):
        run = requests.restore_request_point(actor=operator, system=shop, point=RecoveryPoint.at(moment),
                                             target=target, mode="whole-server", confirm=target.name)
        wait_for(lambda: RestoreRun.objects.get(pk=run.pk).is_done, timeout=600, what="the restore run finishing")

    run.refresh_from_db()
    logs = {p: (tmp_path / f"worker-{p}.log").read_text()[-2000:] for p in pools}
    assert run.state == "succeeded", (run.error, logs)
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/shop", autocommit=True) as conn:
        assert [r[0] for r in conn.execute("SELECT item FROM orders ORDER BY id").fetchall()] == [
            "before-1", "before-2"]
    assert data_dir.stat().st_uid == POSTGRES.pw_uid and not (data_dir / "barman_wal").exists()
    # The target's pool never had Barman's home; the run and the shipment say where each part ran.
    assert not list(elsewhere.iterdir())
    assert run.worker_host and run.results["recovery"]["replay_position"]
    # The replay on the Barman host was followed from here while it ran, as a recovery in place is, and ended at
    # the position the sender's summary names.
    replay = run.results["replay"]
    assert replay["in_recovery"] is False and replay["fraction"] == 1.0
    # Measured from where the base backup's WAL begins (its backup_label, read before the server consumes it).
    assert replay["start"] == base.manifest["base_backup_information"]["begin_lsn"] != "0/0"
    assert replay["replayed"] == run.results["recovery"]["replay_position"]
    assert any(s["in_recovery"] for s in replay["samples"]), replay["samples"]
    fractions = [s["fraction"] for s in replay["samples"]]
    assert fractions == sorted(fractions) and 0 <= fractions[0] < 1
    recovered = next(step for step in run.steps if step["name"] == "recover to the point")
    finished = datetime.fromisoformat(recovered["finished_at"])
    assert all(datetime.fromisoformat(s["at"]) < finished for s in replay["samples"])
    shipped = run.results["recovery"]["shipped"]
    assert shipped["from_pool"] == SYSTEM_POOL and shipped["to_pool"] == TARGET_POOL
    assert shipped["chunks"] == -(-shipped["bytes"] // shipping.CHUNK_BYTES) > 1
    event = next(e for e in events(run) if e.action == "restore.shipped")
    assert event.outcome == "success"
    assert event.details["bytes"] == shipped["bytes"] and event.details["sha256"] == shipped["sha256"]
    assert len(event.details["sha256"]) == 64
    assert [e.action for e in events(run)][-1] == "restore.succeeded"
    assert not redis_conn.exists(shipping.channel(run.pk))


def test_a_shipment_that_never_comes_is_refused_the_directory_removed_and_audited(
        shop, server, operator, data_root, monkeypatch, redis_conn):
    """No worker serves the Barman host's pool: the target host's run waits ``IDLE_SECONDS`` for the first chunk,
    then refuses, and the directory it made is gone."""
    target, data_dir, _ = shipped_target(monkeypatch, shop, operator, data_root)
    test_pitr_wholeserver.base_row(shop, ended=datetime.now(UTC))
    monkeypatch.setattr(shipping, "IDLE_SECONDS", 2)
    run = requests.restore_request_point(actor=operator, system=shop, point=RecoveryPoint.latest(), target=target,
                                         mode="whole-server", confirm=target.name)

    run = execution.restore_run_execute(run.pk)

    assert run.state == "failed", run.error
    assert f"the directory recovered on pool {SYSTEM_POOL} was refused: chunk 0 did not arrive in 2 s" in run.error
    assert not data_dir.exists()
    refused = next(e for e in events(run) if e.action == "restore.shipped")
    assert refused.outcome == "failure" and refused.details["removed"] is True
    assert "chunk 0 did not arrive" in refused.details["reason"]
    failed = next(e for e in events(run) if e.action == "restore.failed")
    assert "the target host is as it was" in failed.details["error"]
    # The sender's job, which nobody on the Barman host's pool took, is taken off its queue.
    assert "(the sender's job: cancelled)" in refused.details["reason"]
    assert queues.get_queue("restore", SYSTEM_POOL).count == 0
    assert AuditEvent.objects.filter(action="restore.server_started").count() == 0


def test_the_run_names_the_barman_hosts_pool_it_recovers_on_and_the_pool_it_is_shipped_to(
        shop, server, operator, data_root, monkeypatch, clients):
    target, _, _ = shipped_target(monkeypatch, shop, operator, data_root)
    test_pitr_wholeserver.base_row(shop, ended=datetime.now(UTC))

    run = requests.restore_request_point(actor=operator, system=shop, point=RecoveryPoint.latest(), target=target,
                                         mode="whole-server", confirm=target.name)

    source = f"Barman's home on pool {SYSTEM_POOL}, shipped to pool {TARGET_POOL}"
    assert run.ship_pools == (SYSTEM_POOL, TARGET_POOL) and run.recovery_source == source
    assert next(e for e in events(run) if e.action == "restore.requested").details["source"] == source
    shown = clients["operator"].get(f"/api/v1/restores/{run.pk}").json()
    assert shown["recovery_point"]["source"] == {"kind": "barman", "location": None, "label": source}
    page = clients["operator"].get(f"/restores/runs/{run.pk}/").content.decode()
    assert f'data-testid="recovery-source">{source}<' in page.replace("&#x27;", "'")
    # A target on the Barman host's own pool recovers in place, and one with no pool in the system's pool.
    Target.objects.filter(pk=target.pk).update(worker_pool=SYSTEM_POOL)
    in_place = RestoreRun.objects.get(pk=run.pk)
    assert in_place.ship_pools is None and in_place.recovery_source == f"Barman's home on pool {SYSTEM_POOL}"
    Target.objects.filter(pk=target.pk).update(worker_pool="")
    assert RestoreRun.objects.get(pk=run.pk).recovery_source == f"Barman's home on pool {SYSTEM_POOL}"
    type(shop).objects.filter(pk=shop.pk).update(worker_pool="")
    anywhere = RestoreRun.objects.get(pk=run.pk)
    assert anywhere.ship_pools is None and anywhere.recovery_source == "Barman's home on the worker's host"


@pytest.fixture
def two_hosts(redis_conn, server):
    """The Barman host and the target host, each a network namespace of its own
    (``tests/drpanel/test_worker_pools_hosts.py``): their workers reach the panel's PostgreSQL and Redis through a
    veth link and a forwarder, and the Barman host also the protected server; the target host reaches nothing else
    of this machine. Both workers see the panel's database under one name (one installation); they are started by
    the test."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 to make network namespaces")
    tag = secrets.token_hex(3)
    with contextlib.ExitStack() as stack:
        forwarder = hosts_support.Forwarder()
        stack.callback(forwarder.stop)
        subnets = hosts_support.free_subnets(2)
        barman_host = hosts_support.make_host(stack, tag, "b", subnets[0], pool=SYSTEM_POOL)
        target_host = hosts_support.make_host(stack, tag, "t", subnets[1], pool=TARGET_POOL)
        services = hosts_support.service_ports()
        for host, ports in ((barman_host, (*services, server.port)), (target_host, services)):
            for port in ports:
                forwarder.listen(host.outside, port)
            stack.callback(hosts_support.stop_worker, host)
        yield barman_host, target_host


def test_each_pool_on_its_own_host_the_barman_host_ships_and_the_target_host_starts_the_server(
        transactional_db, shop, server, barman_home, operator, data_root, monkeypatch, tmp_path, two_hosts):
    barman_host, target_host = two_hosts
    empty_orders(server)
    target, data_dir, port = shipped_target(monkeypatch, shop, operator, data_root)
    streams(server)
    take_base_backup(shop, operator)
    server.execute("INSERT INTO orders (item) VALUES ('kept')", dbname="shop")
    elsewhere = tmp_path / "no-barman-here"
    elsewhere.mkdir()
    barman_host.env = hosts_support.host_env(barman_host, DRPANEL_BARMAN_HOME=str(barman_home))
    # The target's own URL is the new server's, on the target host's loopback: it is not rewritten.
    target_host.env = hosts_support.host_env(
        target_host, DRPANEL_BARMAN_HOME=str(elsewhere), DRPANEL_SERVER_DATA_ROOTS=str(data_root),
        **{test_pitr_wholeserver.SERVER_VARIABLE: os.environ[test_pitr_wholeserver.SERVER_VARIABLE]})

    for host in two_hosts:
        hosts_support.start_worker(host, tmp_path, uts=False)
    run = requests.restore_request_point(actor=operator, system=shop, point=RecoveryPoint.latest(),
                                         target=target, mode="whole-server", confirm=target.name)
    wait_for(lambda: RestoreRun.objects.get(pk=run.pk).is_done, timeout=600, what="the restore run finishing")

    run.refresh_from_db()
    logs = [host.log.read_text()[-1500:] for host in two_hosts]
    assert run.state == "succeeded", (run.error, logs)
    assert run.results["recovery"]["shipped"]["to_pool"] == TARGET_POOL
    assert run.results["health"]["connectivity"]["ok"] is True
    # The new server listens on the target host's loopback, not on this machine's.
    assert not wholeserver.port_in_use(port)
    rows = subprocess.run(["ip", "netns", "exec", target_host.netns, str(continuous_support.BINDIR / "psql"), "-h",
                           "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "shop", "-Atc",
                           "SELECT item FROM orders ORDER BY id"], capture_output=True, text=True, timeout=60)
    assert rows.stdout.split() == ["kept"], rows.stderr
    assert next(e for e in events(run) if e.action == "restore.shipped").outcome == "success"
    assert not list(elsewhere.iterdir())
