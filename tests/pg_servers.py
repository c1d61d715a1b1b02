"""PostgreSQL servers a test starts for itself: ``initdb`` as the ``postgres`` user on a free port, stopped after.

The panel's own server is never a protected one. Each ``TestServer`` lives in a temporary
directory (data, socket, log) and is stopped and removed by ``stop()`` (a module-scoped fixture
calls it in its teardown).
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
from psycopg import sql

BIN_DIR = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                              check=True).stdout.strip())
# pg_config may name another version than the newest Debian server; take the server binaries beside initdb.
if not (BIN_DIR / "initdb").exists():
    BIN_DIR = Path(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))[-1]).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TestServer:
    """One throw-away PostgreSQL cluster (superuser ``postgres``, trust auth on 127.0.0.1)."""

    __test__ = False  # not a test class

    def __init__(self, name: str):
        self.name = name
        self.root = Path(tempfile.mkdtemp(prefix=f"drpanel-{name}-"))
        self.data = self.root / "data"
        self.port = 0
        self.started = False

    def _as_postgres(self, cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
        if os.geteuid() == 0:  # initdb refuses root
            kwargs.update(user="postgres", group=pwd.getpwnam("postgres").pw_gid, extra_groups=[])
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120, **kwargs)

    def start(self) -> TestServer:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres([str(BIN_DIR / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                           "-E", "UTF8", "--locale=C", "--no-sync"])
        self.port = free_port()
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres([str(BIN_DIR / "pg_ctl"), "-D", str(self.data), "-o", options,
                           "-l", str(self.root / "log"), "-w", "-t", "60", "start"])
        self.started = True
        return self

    def stop(self) -> None:
        if self.started:
            with contextlib.suppress(subprocess.SubprocessError):
                self._as_postgres([str(BIN_DIR / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.url(dbname), autocommit=True)

    def execute(self, statement: str, dbname: str = "postgres", params=None) -> list:
        with self.connect(dbname) as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    def create_database(self, name: str, *, owner: str = "postgres") -> None:
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner)))
