"""PostgreSQL servers of the tests' own (protected systems), shared by the tests of a session.

Starting a server costs ``initdb`` and a start-up (seconds of CPU): a test that needs a protected
server of its own (WAL, replication slots, base backups, a server to lose) takes the session's one
(``protected_server`` in ``tests/conftest.py``) and its own database on it (``protected_database``)
instead of starting one. Only a test that breaks, stops or reconfigures the server starts a
``PgServer`` itself (and stops it in its ``finally``).

The binaries are those of ``pg_config --bindir``; the server runs as the ``postgres`` user when the
tests run as root (``initdb`` refuses root), on a free port picked at start, with its data directory
in a fresh folder of the system's temporary directory (the ``postgres`` user cannot enter pytest's
``tmp_path``, private to root), removed by ``stop()``. It is never the panel's own server.
"""

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

DEFAULT_CONF = {
    "listen_addresses": "'127.0.0.1'",
    # A test server: durability is not what the tests measure, and fsyncs are the slow part of a busy disk.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "replica",
    "max_wal_senders": "8",
    "max_replication_slots": "8",
    "shared_buffers": "16MB",
    "max_connections": "40",
}


def bin_dir() -> Path:
    return Path(subprocess.run(["pg_config", "--bindir"], check=True, capture_output=True, text=True).stdout.strip())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PgServer:
    """One PostgreSQL server: ``start()`` (initdb on first use), ``url(dbname)``, ``stop()``."""

    def __init__(self, *, conf: dict | None = None):
        self.folder = Path(tempfile.mkdtemp(prefix="drpanel-test-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.conf = {**DEFAULT_CONF, **(conf or {})}
        self.port: int | None = None
        self.bin = bin_dir()
        self.as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        command = ["runuser", "-u", "postgres", "--", *args] if self.as_postgres else list(args)
        return subprocess.run(command, check=True, capture_output=True, text=True)

    def start(self, attempts: int = 3) -> "PgServer":
        if self.as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        if not self.data.exists():
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--no-sync", "--no-instructions")
        for attempt in range(attempts):
            # Another process may take the port between the probe and the start: try another one.
            self.port = free_port()
            options = " ".join(f"-c {name}={value}" for name, value in
                               {**self.conf, "port": self.port, "unix_socket_directories": f"'{self.folder}'"}.items())
            try:
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
                          "-w", "-t", "60", "start")
                return self
            except subprocess.CalledProcessError:
                if attempt == attempts - 1:
                    raise AssertionError(f"the test PostgreSQL server did not start: {self.log_tail()}") from None
                time.sleep(0.2)
        return self

    def stop(self) -> None:
        """Stop the server (if it runs) and remove its folder."""
        if self.port is not None and (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):  # already down: a test stopped or broke it
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def create_database(self, setup: str | None = None) -> str:
        """A new database ``pt_<random>`` (optionally filled by ``setup``); its URL."""
        name = f"pt_{secrets.token_hex(4)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        if setup:
            with psycopg.connect(self.url(name), autocommit=True) as conn:
                conn.execute(setup)
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
