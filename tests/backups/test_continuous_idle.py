"""RPO now on a quiet server: a real protected server, a real Barman receiver, nothing written for a while.

Nothing at risk is nothing lost: when Barman's receiver has written everything the server has (its ``write_lsn``
in ``pg_stat_replication`` is the server's ``pg_current_wal_lsn()``), RPO now is the age of the receiver's last
status, which it sends every second (``--status-interval=1``, through the ``pg_receivewal`` wrapper in Barman's
home). RPO is read the way the panel reads it (``continuous_refresh`` then ``rpo_for``), about twice a second.
"""

import time
from pathlib import Path

import pytest

from backups import barman
from backups.continuous import continuous_refresh
from backups.models import System
from compliance.measurements import rpo_for
from tests import continuous_support
from tests.continuous_support import URL_VARIABLE, kill_receiver, streams
from tests.support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

barman_home = continuous_support.barman_home
server = continuous_support.server
_barman_settings = continuous_support.barman_settings

IDLE_RPO_LIMIT = 2
IDLE_SECONDS = 6


@pytest.fixture
def shop(db):
    return System.objects.create(name="shop", database_ref=f"env:{URL_VARIABLE}", continuous_enabled=True)


def rpos_for(system, seconds: float) -> list[int]:
    """RPO now of ``system`` as the panel reads it, sampled for ``seconds`` as often as a refresh allows (a refresh
    runs ``barman archive-wal``: about a second on a busy machine), at most twice a second."""
    samples, until = [], time.monotonic() + seconds
    while time.monotonic() < until:
        began = time.monotonic()
        continuous_refresh(system)
        samples.append(rpo_for(system).seconds)
        time.sleep(max(0.0, 0.5 - (time.monotonic() - began)))
    return samples


def receiver_command(system) -> list[str]:
    """The command line of the ``pg_receivewal`` Barman's receiver runs."""
    pid = barman.receiver_pid(system)
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert children, "Barman's receiver runs no pg_receivewal"
    return Path(f"/proc/{children[0]}/cmdline").read_bytes().decode().split("\0")


def test_rpo_stays_within_two_seconds_on_an_idle_server_and_after_writes(shop, server, barman_home):
    streams(server)
    wait_for(lambda: barman.receiver_pid(shop), what="Barman's receiver")
    assert "--status-interval=1" in receiver_command(shop)
    server.execute("CREATE TABLE IF NOT EXISTS quiet (id serial PRIMARY KEY, at timestamptz DEFAULT now())")
    # Idle: the server writes nothing (or a standby snapshot now and then), the receiver has all of it.
    wait_for(lambda: continuous_refresh(shop) and rpo_for(shop).seconds <= IDLE_RPO_LIMIT,
             what="RPO within the idle limit once the receiver caught up")

    idle = rpos_for(shop, IDLE_SECONDS)

    assert len(idle) >= IDLE_SECONDS // 2 and None not in idle
    assert max(idle) <= IDLE_RPO_LIMIT, idle
    # The receiver's status is what RPO is measured from: it arrived within the last two seconds.
    ages = server.execute("SELECT extract(epoch FROM now() - reply_time) FROM pg_stat_replication "
                          "WHERE application_name = 'barman_receive_wal'")
    assert ages and float(ages[0][0]) <= IDLE_RPO_LIMIT, ages

    for _ in range(50):
        server.execute("INSERT INTO quiet DEFAULT VALUES")
    time.sleep(3)
    after = rpos_for(shop, IDLE_SECONDS)

    assert max(after) <= IDLE_RPO_LIMIT, after


def test_rpo_grows_once_streaming_stops(shop, server, barman_home):
    streams(server)
    wait_for(lambda: continuous_refresh(shop) and rpo_for(shop).seconds <= IDLE_RPO_LIMIT,
             what="RPO within the idle limit")
    kill_receiver(barman.receiver_pid(shop))
    wait_for(lambda: not server.execute("SELECT 1 FROM pg_stat_replication WHERE application_name = "
                                        "'barman_receive_wal'"), what="the server seeing the receiver gone")
    # What the server writes now reaches nobody.
    server.execute("CREATE TABLE IF NOT EXISTS lost (id serial PRIMARY KEY)")
    server.execute("INSERT INTO lost DEFAULT VALUES")

    stopped = rpos_for(shop, IDLE_SECONDS)

    assert stopped == sorted(stopped), stopped
    assert stopped[-1] >= IDLE_SECONDS - 2 and stopped[-1] - stopped[0] >= IDLE_SECONDS - 3, stopped
