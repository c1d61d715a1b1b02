"""The minute's tick of continuous protection runs where each system's Barman home is: on its worker pool's host.

The cron job runs on any worker (the shared queue). Before, it configured, started and catalogued every system's
Barman there: with a system pinned to pool ``b`` (the host with its Barman home), a shared worker on another host
wrote that system's configuration into its own home, started a second receiver for the one slot, and built the WAL
catalog and RPO from a home that held nothing. Now each pool with a protected system gets its own tick on its own
queue, and a pool's tick touches its own systems only. Real Barman and a real protected server (the module's).
"""

import pytest
from rq.job import Job

from backups import barman, jobs
from backups.continuous import POOL_TICK_TTL_SECONDS, continuous_minute, continuous_tick
from backups.models import ContinuousState, System
from drpanel import queues
from tests import continuous_support
from tests.continuous_support import URL_VARIABLE, receiver_streaming

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

barman_home = continuous_support.barman_home
server = continuous_support.server
_barman_settings = continuous_support.barman_settings


def system(name: str, pool: str = "", *, protected: bool = True) -> System:
    return System.objects.create(name=name, database_ref=f"env:{URL_VARIABLE}", continuous_enabled=protected,
                                 worker_pool=pool)


def queued(pool: str) -> list[Job]:
    return queues.get_queue("default", pool).get_jobs()


def test_the_minute_queues_one_tick_per_pool_on_its_own_queue_and_ticks_the_rest_here(redis_conn):
    system("shop", "b")
    system("books", "b")
    system("ledger", "c")
    system("archive", "d", protected=False)

    assert jobs.continuous_tick() == 0, "no system without a pool: nothing to tick on this worker"

    for pool in ("b", "c"):
        [job] = queued(pool)
        assert job.func_name == "backups.jobs.continuous_pool_tick" and job.args == (pool,)
        assert job.ttl == POOL_TICK_TTL_SECONDS, "a pool without workers does not pile up a tick a minute"
    assert queued("d") == [] and queues.get_queue("default").get_jobs() == []


def test_a_pools_tick_configures_and_refreshes_its_own_systems_only(server, barman_home, redis_conn):
    system("shop", "b")
    retired = system("retired", "b", protected=False)
    ledger = system("ledger", "c")
    plain = system("plain")
    for written in (retired, ledger, plain):
        barman.write_server(written)  # as an earlier tick on this host left them (before protection went off)

    assert continuous_tick(pool="b") == 1

    conf = {path.stem for path in (barman_home / "conf.d").glob("*.conf")}
    assert "shop" in conf, "its own system is configured"
    assert "retired" not in conf, "protection is off"
    assert "ledger" not in conf, "another pool's system is not Barman's business on this host"
    assert "plain" in conf, "a system without a pool is left to the tick without one"
    refreshed = set(ContinuousState.objects.exclude(refreshed_at=None).values_list("system__name", flat=True))
    assert refreshed == {"shop"}, "only the pool's own systems are catalogued from this home"


def test_a_pool_worker_runs_its_pools_tick_and_streaming_starts_there(server, barman_home, redis_conn):
    books = system("books", "b")

    assert continuous_minute() == 0
    [job] = queued("b")
    assert not (barman_home / "conf.d" / "books.conf").exists(), "the shared worker wrote nothing for pool b"

    job.perform()  # the job's body, as pool b's worker runs it

    assert (barman_home / "conf.d" / "books.conf").exists()
    receiver_streaming(server)
    assert barman.receiver_pid(books) is not None
