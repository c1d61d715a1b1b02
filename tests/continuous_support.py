"""A protected PostgreSQL server started by the tests, for continuous protection through Barman.

``ProtectedServer`` runs ``initdb`` from PostgreSQL's bindir as the ``postgres`` user (initdb
refuses root), configured for streaming (``wal_level = replica``, WAL senders, slots, a
replication line in pg_hba), on a free port, under a temporary directory; ``stop()`` stops it
and removes the directory. The panel's own server is never the protected one.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from backups import barman
from backups.continuous import continuous_refresh, continuous_tick
from backups.models import WalTimeline
from tests.support import wait_for

BINDIR = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
POSTGRES = pwd.getpwnam("postgres")
URL_VARIABLE = "DRPANEL_SECRET_TEST_PROTECTED_URL"
PASSWORD = "not-in-any-config-file"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def as_postgres(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    def demote():
        os.setgid(POSTGRES.pw_gid)
        os.setuid(POSTGRES.pw_uid)
    return subprocess.run(list(command), preexec_fn=demote, capture_output=True, text=True, check=check,
                          cwd="/tmp", env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})


class ProtectedServer:
    """One PostgreSQL server in a temporary directory, owned by ``postgres``, on a free port."""

    def __init__(self, *, replication_hba: bool = True):
        self.root = Path(tempfile.mkdtemp(prefix="drpanel-protected-"))
        os.chown(self.root, POSTGRES.pw_uid, POSTGRES.pw_gid)
        self.data = self.root / "data"
        self.port = free_port()
        as_postgres(str(BINDIR / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.root}'\n"
                       "wal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\n"
                       "fsync = off\nshared_buffers = 16MB\n")
        hba = ["local all all trust", "host all all 127.0.0.1/32 trust"]
        if replication_hba:
            hba.append("host replication all 127.0.0.1/32 trust")
        (self.data / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        as_postgres(str(BINDIR / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "start")

    def connect(self, dbname: str = "postgres"):
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, autocommit=True)

    def execute(self, sql: str, *params, dbname: str = "postgres"):
        with self.connect(dbname) as conn:
            cursor = conn.execute(sql, params or None)
            return cursor.fetchall() if cursor.description else None

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            as_postgres(str(BINDIR / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


# --- module fixtures: one protected server and one Barman home per test module ---------------------

@pytest.fixture(scope="module")
def barman_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("barman-home")
    yield home
    # Receivers Barman started in the background outlive the jobs that started them: stop ours.
    for lock in home.glob(".*-receive-wal.lock"):
        try:
            pid = int(lock.read_text().strip() or 0)
            if pid and b"receive-wal" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            pass


@pytest.fixture(scope="module")
def server():
    protected = ProtectedServer()
    yield protected
    protected.stop()


@pytest.fixture(autouse=True)
def barman_settings(settings, barman_home, server, monkeypatch):
    settings.BARMAN_HOME = barman_home
    # The password is accepted and ignored by the server (trust): it is here to prove where it is written.
    monkeypatch.setenv(URL_VARIABLE, f"postgresql://postgres:{PASSWORD}@127.0.0.1:{server.port}/postgres")


def streams(server) -> None:
    """Start (or keep) Barman's receivers, and wait until the server streams to ours through its slot."""
    continuous_tick()
    wait_for(lambda: server.execute("SELECT count(*) FROM pg_stat_replication WHERE application_name = "
                                    "'barman_receive_wal' AND state = 'streaming'")[0][0],
             what="Barman's receiver streaming from the server")


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
