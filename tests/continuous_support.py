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
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

BINDIR = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
POSTGRES = pwd.getpwnam("postgres")


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
