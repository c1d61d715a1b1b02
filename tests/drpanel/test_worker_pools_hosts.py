"""Worker pools on two hosts: each host is a network namespace running a real panel worker.

Each "host" is a network namespace (``ip netns``) joined to this machine by a veth pair, with a
private /30 of its own: ``.1`` on the machine's side, ``.2`` inside. Its worker reaches
PostgreSQL and Redis through that link only: the namespace has no other route out, and its own
loopback has no database. The run's panel PostgreSQL (the machine's or the run's own, see
tests/panel_server.py) and Redis listen on 127.0.0.1 only and must not be reconfigured, so the test runs a
small TCP forwarder (asyncio, in this process, in the root namespace) listening on each veth's machine-side
address and relaying to their ports on 127.0.0.1. Inside each namespace the name ``drpanel-services``
resolves (``/etc/netns/NS/hosts``, which ``ip netns exec`` mounts over ``/etc/hosts``) to that namespace's
own route, the way hosts of one deployment share a DNS name for the database server.

Host A's worker serves pool ``a`` and names its host with ``DRPANEL_WORKER_HOST``; host B's
serves pool ``b`` in its own UTS namespace with its own host name (the recorded name is
``socket.gethostname()``). Needs root and iproute2; everything it makes (namespaces, links,
``/etc/netns/NS``, processes, the forwarder) has a unique name per run and is removed in teardown,
also when the test fails.
"""

import asyncio
import contextlib
import ipaddress
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from backups.models import System
from drpanel import queues
from restores import pg, reliability, requests, targets
from restores.models import RestoreRun, SanityCheck, Target, VerificationRun
from restores.verifications import verification_request
from tests.loop_support import make_target
from tests.support import ROOT, wait_for, worker_env

pytest_plugins = ["tests.restore_fixtures", "tests.loop_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SERVICES = "drpanel-services"  # the name each host resolves to its own route to PostgreSQL and Redis


def service_ports() -> tuple[int, int]:
    """The ports of the run's panel PostgreSQL (the machine's, or the run's own) and Redis, on 127.0.0.1."""
    return (int(connection.settings_dict["PORT"] or 5432),
            urlsplit(os.environ["REDIS_URL"]).port or 6379)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Forwarder:
    """TCP relays in the root namespace: ``<address>:<port>`` → ``127.0.0.1:<port>``, on an asyncio loop thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="netns-forwarder")
        self.thread.start()
        self.servers = []

    def listen(self, address: str, port: int) -> None:
        start = asyncio.start_server(lambda r, w: self._relay(port, r, w), address, port)
        self.servers.append(asyncio.run_coroutine_threadsafe(start, self.loop).result(10))

    async def _relay(self, port: int, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return

        async def pipe(source, sink):
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def stop(self) -> None:
        async def close():
            for server in self.servers:
                server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class Host:
    """One "host": a network namespace, its veth link, its addresses and its worker process."""

    netns: str
    link: str
    outside: str  # the machine-side address of the link (the forwarder listens here)
    inside: str
    name: str  # the host name its worker records
    pool: str
    worker: subprocess.Popen | None = None
    log: Path | None = None
    env: dict = field(default_factory=dict)


def free_subnets(count: int) -> list[ipaddress.IPv4Network]:
    """``count`` private /30s in 10.213.0.0/16 that no interface of this machine uses."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    taken = {ipaddress.ip_interface(word).network for word in used.split() if word.count(".") == 3 and "/" in word}
    pool = list(ipaddress.ip_network("10.213.0.0/16").subnets(new_prefix=30))
    random.shuffle(pool)
    found = [net for net in pool if not any(net.overlaps(other) for other in taken)][:count]
    assert len(found) == count, "no free private /30 left"
    return found


def make_host(stack: contextlib.ExitStack, tag: str, letter: str, subnet, *, pool: str) -> Host:
    first, second = list(subnet.hosts())
    host = Host(netns=f"drp-{tag}-{letter}", link=f"drp{tag}{letter}", outside=str(first), inside=str(second),
                name=f"host-{letter}-{tag}", pool=pool)
    ip("netns", "add", host.netns)
    stack.callback(ip, "netns", "delete", host.netns)
    ip("link", "add", host.link, "type", "veth", "peer", "name", f"{host.link}n")
    stack.callback(lambda: subprocess.run(["ip", "link", "delete", host.link], capture_output=True, check=False))
    ip("link", "set", f"{host.link}n", "netns", host.netns)
    ip("addr", "add", f"{host.outside}/30", "dev", host.link)
    ip("link", "set", host.link, "up")
    ip("netns", "exec", host.netns, "ip", "addr", "add", f"{host.inside}/30", "dev", f"{host.link}n")
    ip("netns", "exec", host.netns, "ip", "link", "set", f"{host.link}n", "up")
    ip("netns", "exec", host.netns, "ip", "link", "set", "lo", "up")
    etc = Path("/etc/netns") / host.netns
    etc.mkdir(parents=True)
    stack.callback(shutil.rmtree, etc, True)
    (etc / "hosts").write_text(f"127.0.0.1 localhost\n{host.outside} {SERVICES}\n")
    return host


def host_env(host: Host, **extra) -> dict:
    """This test run's worker environment, with every database and Redis URL pointing at ``drpanel-services``."""
    env = worker_env()
    env.pop("DRPANEL_WORKER_HOST", None)
    for key, value in env.items():
        if value.startswith(("postgres://", "postgresql://", "redis://")):
            env[key] = value.replace("127.0.0.1", SERVICES).replace("localhost", SERVICES)
    # The workers see the database as drpanel-services:<port>, this process as 127.0.0.1:<port>: the same
    # installation, so they are told its id rather than derive one from the address.
    env["DRPANEL_INSTALLATION_ID"] = settings.INSTALLATION_ID
    env.update(extra)
    return env


def start_worker(host: Host, log_dir: Path, *, uts: bool) -> None:
    """Start ``manage.py worker --pool <pool>`` inside the host's namespace (in its own UTS namespace if ``uts``)."""
    command = [sys.executable, str(ROOT / "manage.py"), "worker", "--pool", host.pool]
    if uts:
        command = ["unshare", "--uts", "sh", "-c", 'hostname "$1" && shift && exec "$@"', "sh", host.name, *command]
    host.log = log_dir / f"{host.netns}.log"
    with open(host.log, "ab") as log:
        host.worker = subprocess.Popen(["ip", "netns", "exec", host.netns, *command], env=host.env, cwd=ROOT,
                                       stdout=log, stderr=subprocess.STDOUT)
    conn = queues.get_connection()
    wait_for(lambda: queues.pool_workers(conn, host.pool) or host.worker.poll() is not None, 90,
             what=f"the worker of pool {host.pool} to register")
    assert host.worker.poll() is None, host.log.read_text()[-3000:]


def stop_worker(host: Host) -> None:
    if host.worker is None:
        return
    if host.worker.poll() is None:
        host.worker.send_signal(signal.SIGTERM)
    try:
        host.worker.wait(30)
    except subprocess.TimeoutExpired:
        host.worker.kill()
        host.worker.wait()


@pytest.fixture
def hosts(redis_conn, tmp_path):
    """Hosts A (pool a) and B (pool b), their links and the forwarder; workers are started by the test."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"):
        pytest.skip("needs root, iproute2 and unshare to make network namespaces")
    tag = secrets.token_hex(3)
    with contextlib.ExitStack() as stack:
        forwarder = Forwarder()
        stack.callback(forwarder.stop)
        made = {}
        for letter, subnet in zip("ab", free_subnets(2), strict=True):
            made[letter] = make_host(stack, tag, letter, subnet, pool=letter)
            for port in service_ports():
                forwarder.listen(made[letter].outside, port)
            stack.callback(stop_worker, made[letter])
        yield made


def state_of(model, run) -> str:
    return model.objects.values_list("state", flat=True).get(pk=run.pk)


def test_a_restore_pinned_to_host_b_runs_on_b_and_each_pool_keeps_its_own_jobs(
        hosts, operator, clients, full_artifact, shop_system, scratch, monkeypatch, tmp_path, settings):
    a, b = hosts["a"], hosts["b"]
    settings.RUN_STALE_SECONDS = 20
    settings.WORKER_TTL_SECONDS = 20
    System.objects.filter(pk=shop_system.pk).update(worker_pool="a")
    target = make_target(scratch, monkeypatch, tmp_path, name="pinned", environment="staging", system=shop_system)
    Target.objects.filter(pk=target.pk).update(worker_pool="b")
    targets.target_right_grant(actor=None, target=target, user=operator, right="restore_to_target")
    live = scratch.name("pinned")
    common = {"DRPANEL_WORKER_TTL_SECONDS": "20", "DRPANEL_SANITY_TIMEOUT_SECONDS": "300"}
    a.env = host_env(a, DRPANEL_WORKER_HOST=a.name, **common)
    b.env = host_env(b, **common)
    conn = queues.get_connection()

    def restore() -> RestoreRun:
        return requests.restore_request(actor=operator, artifact=full_artifact, target=target, mode="database-only",
                                        confirm=target.name)

    def page(url: str) -> str:
        response = clients["operator"].get(url)
        assert response.status_code == 200
        return response.content.decode()

    # Only host A is up: the restore pinned to pool b waits, and says why.
    start_worker(a, tmp_path, uts=False)
    run = restore()
    assert "no worker in pool b" in page(f"/restores/runs/{run.pk}/")
    assert clients["operator"].get(f"/api/v1/restores/{run.pk}").json()["waiting"].startswith("no worker in pool b")
    # A job of pool a (its system's verification, queued after the restore) runs on A...
    check = verification_request(actor=operator, artifact=full_artifact, level="decrypt")
    wait_for(lambda: state_of(VerificationRun, check) in ("succeeded", "failed"), 120, what="the verification on A")
    check.refresh_from_db()
    assert check.state == "succeeded", check.error
    assert check.worker_host == a.name
    # ...which never listens on pool b's queues: the restore is still waiting for B.
    assert state_of(RestoreRun, run) == "queued"
    assert all(queues.queue_name("restore", "b") not in w.queue_names() for w in queues.pool_workers(conn, "a"))

    # Host B comes up: the restore runs there, and records B's own host name.
    start_worker(b, tmp_path, uts=True)
    wait_for(lambda: state_of(RestoreRun, run) in ("succeeded", "failed"), 120, what="the restore on B")
    run.refresh_from_db()
    assert run.state == "succeeded", run.error
    assert run.worker_host == b.name and b.name != os.uname().nodename
    assert scratch.marker(live) == "restored"
    assert b.name in page(f"/restores/runs/{run.pk}/")
    assert clients["operator"].get(f"/api/v1/restores/{run.pk}").json()["worker_host"] == b.name

    # A job of pool a is never taken by B: with A stopped it waits, while B runs its own pool's later restore.
    stop_worker(a)
    waiting = verification_request(actor=operator, artifact=full_artifact, level="checksum")
    second = restore()
    wait_for(lambda: state_of(RestoreRun, second) in ("succeeded", "failed"), 120, what="the second restore on B")
    assert RestoreRun.objects.get(pk=second.pk).worker_host == b.name
    assert state_of(VerificationRun, waiting) == "queued"
    assert "no worker in pool a" in page(f"/restores/verifications/{waiting.pk}/")

    # kill -9 of B's worker in the middle of a restore is reconciled as on one host: failed, target untouched.
    with psycopg.connect(scratch.url(live), autocommit=True) as db:
        db.execute("UPDATE info SET marker = 'kept'")
    SanityCheck.objects.filter(target=target).update(query="SELECT count(*) FROM users, pg_sleep(60)")
    doomed = restore()
    wait_for(lambda: any(s["name"] == "sanity checks" and s["state"] == "running"
                         for s in RestoreRun.objects.get(pk=doomed.pk).steps), 120, what="the sanity step on B")
    assert RestoreRun.objects.get(pk=doomed.pk).worker_host == b.name
    side = pg.copy_name(live, doomed.pk, "restore")
    assert side in scratch.databases(), "the restore is half way: its side database exists"
    os.kill(b.worker.pid, signal.SIGKILL)
    b.worker.wait()

    def failed() -> bool:
        reliability.reconcile()  # what the every-minute cron job does
        return state_of(RestoreRun, doomed) == "failed"

    wait_for(failed, 180, interval=2, what="the reconciler failing the run")
    doomed.refresh_from_db()
    assert "heartbeat" in doomed.error or "worker" in doomed.error, doomed.error
    assert scratch.marker(live) == "kept", "the target is untouched"
    assert side not in scratch.databases(), "the half-restored side database is dropped"
    assert not doomed.needs_cleanup

    # With B down, a new restore waits, and its page says which pool has no worker.
    wait_for(lambda: not queues.pool_workers(conn, "b"), 90, what="B's dead worker to stop counting")
    SanityCheck.objects.filter(target=target).update(query="SELECT count(*) FROM users")
    last = restore()
    assert "no worker in pool b" in page(f"/restores/runs/{last.pk}/")
    assert state_of(RestoreRun, last) == "queued"
