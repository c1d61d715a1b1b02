"""Helpers of the restore tests: throw-away databases on the shared PostgreSQL, and small archives.

Other engineers run tests on the same server at the same time, so every database made
here is named ``drt_<random>…`` and all of them (with their side, pre and failed copies)
are dropped when the test ends (``ScratchServer.drop_all``, called by the ``scratch``
fixture of ``tests.restore_fixtures``).
"""

import os
import secrets
import shutil
import subprocess
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
from psycopg import sql

from drpanel import runtime
from restores import pg


def server_url(dbname: str) -> str:
    """The test server's URL, naming ``dbname``."""
    return runtime.with_database_name(os.environ["DATABASE_URL"], dbname)


class ScratchServer:
    """Makes databases with one random ``drt_`` prefix on the shared server; drops them all afterwards."""

    def __init__(self):
        self.prefix = f"drt_{secrets.token_hex(4)}"

    def name(self, suffix: str = "db") -> str:
        return f"{self.prefix}_{suffix}"

    def url(self, name: str) -> str:
        return server_url(name)

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(server_url("postgres"), autocommit=True)

    def create(self, suffix: str = "db", *, marker: str | None = None, setup: str | None = None) -> str:
        """Create ``<prefix>_<suffix>`` (optionally with ``info(marker)`` and more SQL); return its URL."""
        name = self.name(suffix)
        self.create_named(name, marker=marker, setup=setup)
        return self.url(name)

    def create_named(self, name: str, *, marker: str | None = None, setup: str | None = None,
                     allow_connections: bool = True) -> None:
        assert name.startswith(self.prefix)
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        if marker is not None or setup:
            with psycopg.connect(self.url(name), autocommit=True) as conn:
                if marker is not None:
                    conn.execute("CREATE TABLE info (marker text)")
                    conn.execute("INSERT INTO info VALUES (%s)", [marker])
                if setup:
                    conn.execute(setup)
        if not allow_connections:
            with self.admin() as conn:
                conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))

    def databases(self) -> set[str]:
        with self.admin() as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
                                [self.prefix]).fetchall()
        return {row[0] for row in rows}

    def allows_connections(self, name: str) -> bool:
        with self.admin() as conn:
            return conn.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", [name]).fetchone()[0]

    def marker(self, name: str) -> str:
        with psycopg.connect(self.url(name)) as conn:
            return conn.execute("SELECT marker FROM info").fetchone()[0]

    def scalar(self, name: str, query: str):
        with psycopg.connect(self.url(name)) as conn:
            return conn.execute(query).fetchone()[0]

    def drop_all(self) -> None:
        with self.admin() as conn:
            for name in self.databases():
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def drop_all_later(self) -> None:
        """``drop_all`` without waiting: the names are found now, the drops run on ``later_drops``."""
        later_drops.drop(self.databases())


class LaterDrops:
    """Drops databases on background threads, so that no test waits for them.

    PostgreSQL's DROP DATABASE waits for a checkpoint: a second or more on a busy server, for
    every database a test made. Drops running side by side share their checkpoints. Every name
    is random (``drt_<random>…``, ``<test database>_src_<random>``), so no later test can meet
    one that is still being dropped. ``drain()`` (end of the session, ``tests/conftest.py``)
    waits for all of them and returns the failures, which fail the run.
    """

    def __init__(self, threads: int = 4):
        self.threads = threads
        self.lock = threading.Lock()
        self.pool: ThreadPoolExecutor | None = None
        self.pending = []
        # Each thread keeps its connection for the next drop: a new one for each of the hundreds of databases a
        # test process makes was a PostgreSQL backend started and ended for one statement.
        self.connections = threading.local()

    def drop(self, names) -> None:
        with self.lock:
            if self.pool is None:
                self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="drop-database")
            self.pending += [self.pool.submit(self._drop, name) for name in names]

    def _drop(self, name: str) -> None:
        conn = getattr(self.connections, "conn", None)
        if conn is None or conn.closed:
            conn = self.connections.conn = psycopg.connect(server_url("postgres"), autocommit=True)
        try:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        except psycopg.OperationalError:
            conn.close()  # a connection the server ended: the next drop opens another
            raise

    def drain(self) -> list[str]:
        """Wait for every drop asked for so far; the failures, one line each."""
        with self.lock:
            pending, self.pending = self.pending, []
        return [str(future.exception()).strip() for future in pending if future.exception() is not None]


later_drops = LaterDrops()


def new_run_id() -> str:
    return str(uuid.uuid4())


# --- archives --------------------------------------------------------------------------------

SAMPLE_SCHEMA = """
CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL UNIQUE, profile jsonb NOT NULL DEFAULT '{}');
CREATE TABLE orders (id serial PRIMARY KEY, user_id int NOT NULL REFERENCES users(id), total numeric(10,2),
                     note text);
CREATE INDEX orders_user_idx ON orders (user_id);
CREATE INDEX users_profile_idx ON users USING gin (profile);
INSERT INTO users (email, profile) SELECT 'user' || n || '@example.com', jsonb_build_object('n', n)
  FROM generate_series(1, 300) n;
INSERT INTO orders (user_id, total, note) SELECT 1 + n % 300, n * 1.5, repeat('x', n % 50)
  FROM generate_series(1, 2000) n;
CREATE TABLE info (marker text);
INSERT INTO info VALUES ('restored');
"""
SAMPLE_COUNTS = {"public.users": 300, "public.orders": 2000, "public.info": 1}


def pg_dump_for_server() -> str:
    """A ``pg_dump`` as new as the test server (beside the ``pg_restore`` chosen for it)."""
    tool = pg.choose_pg_restore(server_version=pg.server_version_num(server_url("postgres")))
    path = Path(tool.path).with_name("pg_dump")
    return str(path) if path.exists() else shutil.which("pg_dump")


def make_archive(path: Path, setup: str = SAMPLE_SCHEMA) -> Path:
    """Create a database from ``setup``, dump it in the custom format to ``path``, drop it."""
    server = ScratchServer()
    try:
        url = server.create("src", setup=setup)
        subprocess.run([pg_dump_for_server(), "-Fc", "-f", str(path), "--dbname", url], check=True,
                       capture_output=True)
    finally:
        server.drop_all()
    return path
