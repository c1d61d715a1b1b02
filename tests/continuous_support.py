"""Continuous protection through Barman in the tests: a Barman home per module, on the shared protected server.

The module's ``server`` is the session's shared PostgreSQL server (``tests.pg_servers``), configured for
streaming (``wal_level = replica``, WAL senders, slots, a replication line in pg_hba); what the module made
on it (databases, roles, Barman's replication slots) is dropped when the module ends, after its Barman
receivers are stopped. ``ProtectedServer`` starts a server of its own, for a test that needs another one
(a pg_hba without the replication line, say); ``stop()`` stops it and removes its directory. The panel's
own server is never the protected one.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backups import barman
from backups.continuous import continuous_refresh, continuous_tick
from backups.models import WalTimeline
from tests.pg_servers import BIN_DIR, POSTGRES, PgServer, as_postgres, free_port, kept_clean
from tests.support import wait_for

__all__ = ["BINDIR", "PASSWORD", "POSTGRES", "URL_VARIABLE", "ProtectedServer", "as_postgres", "barman_home",
           "barman_settings", "catalog_reaches", "free_port", "kill_receiver", "quiet_second", "receiver_streaming",
           "segment_of_switch", "server", "streams", "system_names"]

BINDIR = BIN_DIR
URL_VARIABLE = "DRPANEL_SECRET_TEST_PROTECTED_URL"
PASSWORD = "not-in-any-config-file"


class ProtectedServer(PgServer):
    """A PostgreSQL server of its own, started at once; ``url`` is its ``postgres`` database's."""

    def __init__(self, *, replication_hba: bool = True):
        super().__init__("protected", replication_hba=replication_hba)
        self.start()

    @property
    def url(self) -> str:
        return self.dsn()


# --- module fixtures: the shared server, kept clean, and one Barman home per test module ------------------

@pytest.fixture(scope="module")
def server(protected_server):
    """The session's shared server for this module; the databases, roles and slots the module made are dropped
    after it (``barman_home``, which needs this fixture, has stopped Barman's receivers by then)."""
    with kept_clean(protected_server) as shared:
        yield shared


def running(pid: int) -> bool:
    """Whether the process runs (a zombie, ended but not yet reaped by its parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def barman_home(request, tmp_path_factory, server):
    """The module's Barman home; removed when the module ends without a failure (up to 190 MB of base backups and
    WAL, and a run's temporary files may be in memory: ``drpanel/testing.py``), kept for a look otherwise."""
    home = tmp_path_factory.mktemp("barman-home")
    failed_before = request.session.testsfailed
    yield home
    # Receivers Barman started in the background outlive the jobs that started them: stop ours.
    stopped = []
    for lock in home.glob(".*-receive-wal.lock"):
        try:
            pid = int(lock.read_text().strip() or 0)
            if pid and b"receive-wal" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)
                stopped.append(pid)
        except (OSError, ValueError):
            pass
    if request.session.testsfailed == failed_before:
        # Once its receivers are gone (a receiver still writing would leave files behind).
        deadline = time.monotonic() + 10
        while any(running(pid) for pid in stopped) and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True)
def barman_settings(settings, barman_home, server, monkeypatch):
    settings.BARMAN_HOME = barman_home
    # The password is accepted and ignored by the server (trust): it is here to prove where it is written.
    monkeypatch.setenv(URL_VARIABLE, f"postgresql://postgres:{PASSWORD}@127.0.0.1:{server.port}/postgres")


def system_names(monkeypatch, server, dbname: str) -> None:
    """The system's URL (``URL_VARIABLE``) names ``dbname`` on ``server``: what a point-in-time restore of one
    database takes from the recovered copy."""
    monkeypatch.setenv(URL_VARIABLE, f"postgresql://postgres:{PASSWORD}@127.0.0.1:{server.port}/{dbname}")


def streams(server) -> None:
    """Start (or keep) Barman's receivers, and wait until the server streams to ours through its slot."""
    continuous_tick()
    receiver_streaming(server)


def receiver_streaming(server) -> None:
    """Wait until the server streams to Barman's receiver (started by whoever ran ``barman cron``)."""
    wait_for(lambda: server.execute("SELECT count(*) FROM pg_stat_replication WHERE application_name = "
                                    "'barman_receive_wal' AND state = 'streaming'")[0][0],
             what="Barman's receiver streaming from the server")


def quiet_second() -> datetime:
    """A whole-second moment with no commit near it (a point in time is a timestamp to the second): the last
    commit is over a second before it and the next one (made after this returns) over a second after it."""
    time.sleep(1.1)
    moment = datetime.now(UTC).replace(microsecond=0)
    time.sleep(1.1)
    return moment


def kill_receiver(pid: int) -> None:
    """Crash Barman's receiver: SIGKILL to ``barman receive-wal`` and to the ``pg_receivewal`` it runs."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for victim in [pid, *map(int, children)]:
        os.kill(victim, signal.SIGKILL)


def segment_of_switch(server) -> str:
    """Write a row, close the current WAL segment, and return that segment's name."""
    server.execute("CREATE TABLE IF NOT EXISTS ticks (id serial PRIMARY KEY, at timestamptz DEFAULT now())")
    server.execute("INSERT INTO ticks DEFAULT VALUES")
    return server.execute("SELECT pg_walfile_name(pg_switch_wal())")[0][0]


def catalog_reaches(system, segment: str):
    """Refresh until the catalog's last archived segment is at least ``segment``, continuously."""
    def reached():
        continuous_refresh(system)
        timeline = WalTimeline.objects.filter(system=system, timeline=int(segment[:8], 16)).first()
        archived = {s.name for s in barman.segments(system) if not s.partial}
        return timeline if segment in archived else None
    return wait_for(reached, what=f"segment {segment} archived by Barman")
