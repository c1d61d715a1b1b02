"""PostgreSQL servers of the tests' own (never the panel's): the one module that starts them.

Cheapest first:

- ``protected_database`` (``tests/conftest.py``): a fresh database on the session's shared server,
  dropped after the test.
- ``protected_server``: the shared server itself, one per test process (xdist worker), started on
  first use: ``wal_level = replica``, WAL senders, replication slots, a replication line in pg_hba.
  A test (or module) that leaves fixed names behind — a database ``shop``, roles, Barman's slot —
  wraps its use in ``kept_clean(server)``, which drops every database, role and replication slot
  made meanwhile, and every table made meanwhile in its default database ``postgres``.
- ``PgServer(...)`` of its own, ``stop()``-ed in a ``finally``: only for a test that stops, breaks
  or reconfigures its server, or needs one that is empty of roles.

Starting a server costs a copy of one cluster that ``initdb`` made once per test run
(``template_data``: every xdist worker copies the same one) and a start-up. The servers run as the
``postgres`` user when the tests run as root (PostgreSQL refuses root), on a free port picked at start,
with their data under a fresh folder of the system's temporary directory (``postgres`` cannot enter
pytest's, private to root), removed by ``stop()``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

POSTGRES = pwd.getpwnam("postgres")
AS_POSTGRES = os.geteuid() == 0
DEFAULT_CONF = {
    "listen_addresses": "'127.0.0.1'",
    # A test server: durability is not what the tests measure, and fsyncs are the slow part of a busy disk.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # A spread checkpoint (what pg_basebackup and Barman ask for) paces its writes over up to 0.9 of
    # checkpoint_timeout: a base backup right after a CREATE DATABASE waited 61 s for its checkpoint. At 0 the
    # checkpointer never sleeps between writes; nothing here measures its pacing.
    "checkpoint_completion_target": "0",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "shared_buffers": "16MB",
    "max_connections": "60",
}
HBA = ["local all all trust", "host all all 127.0.0.1/32 trust"]
REPLICATION_HBA = "host replication all 127.0.0.1/32 trust"
# Where the cluster ``initdb`` made for this test run lies (set by the ``_pg_template_home`` fixture of
# tests/conftest.py to the run's temporary directory); None: each server runs initdb itself.
TEMPLATE_HOME: Path | None = None


def bin_dir() -> Path:
    """The server binaries: ``pg_config --bindir``, or the newest Debian server's when pg_config names none."""
    found = Path(subprocess.run(["pg_config", "--bindir"], check=True, capture_output=True,
                                text=True).stdout.strip())
    if not (found / "initdb").exists():
        found = Path(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))[-1]).parent
    return found


BIN_DIR = bin_dir()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def as_postgres(*command: str, check: bool = True, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run ``command`` as ``postgres`` when the tests run as root (initdb and pg_ctl refuse root)."""
    def demote():
        os.setgid(POSTGRES.pw_gid)
        os.setgroups([])
        os.setuid(POSTGRES.pw_uid)
    return subprocess.run(list(command), preexec_fn=demote if AS_POSTGRES else None, capture_output=True,
                          text=True, check=check, timeout=timeout, cwd="/tmp",
                          env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})


def _own_folder(prefix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if AS_POSTGRES:
        os.chown(folder, POSTGRES.pw_uid, POSTGRES.pw_gid)
    return folder


def _initdb(data: Path) -> None:
    as_postgres(str(BIN_DIR / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                "--locale=C.UTF-8", "--no-sync", "--no-instructions")


def template_data() -> Path | None:
    """The data directory ``initdb`` made for this run (made now by the first process to ask), or None."""
    if TEMPLATE_HOME is None:
        return None
    TEMPLATE_HOME.mkdir(parents=True, exist_ok=True)
    template = TEMPLATE_HOME / "pg-template"
    with open(TEMPLATE_HOME / "pg-template.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the xdist workers of one run share it: one initdb, the others wait
        if not (template / "PG_VERSION").exists():
            made = _own_folder("drpanel-pg-template-")
            try:
                _initdb(made / "data")
                shutil.move(made / "data", template)
            finally:
                shutil.rmtree(made, ignore_errors=True)
    return template


class PgServer:
    """One PostgreSQL cluster: ``start()``, ``url(dbname)``, ``execute(sql, *params, dbname=)``, ``stop()``.

    ``conf`` adds to (or overrides) ``DEFAULT_CONF``; ``replication_hba=False`` leaves the replication
    line out of pg_hba.conf (a server Barman cannot stream from).
    """

    def __init__(self, name: str = "pg", *, conf: dict | None = None, replication_hba: bool = True):
        self.name = name
        self.folder = _own_folder(f"drpanel-{name}-")
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.conf = {**DEFAULT_CONF, **(conf or {})}
        self.replication_hba = replication_hba
        self.bin = BIN_DIR
        self.port: int | None = None

    @property
    def root(self) -> Path:
        return self.folder

    def _make_data(self) -> None:
        template = template_data()
        if template is None:
            _initdb(self.data)
        else:
            # cp -a keeps the owner (postgres) and the 0700 mode PostgreSQL insists on.
            subprocess.run(["cp", "-a", str(template), str(self.data)], check=True, capture_output=True)
        settings = {**self.conf, "unix_socket_directories": f"'{self.folder}'"}
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n" + "".join(f"{name} = {value}\n" for name, value in settings.items()))
        (self.data / "pg_hba.conf").write_text("\n".join(HBA + [REPLICATION_HBA] * self.replication_hba) + "\n")

    def start(self, attempts: int = 3) -> PgServer:
        if not (self.data / "PG_VERSION").exists():
            self._make_data()
        for _ in range(attempts):
            # Another process may take the port between the probe and the start: try another one.
            self.port = free_port()
            done = as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                               "-o", f"-p {self.port}", "-w", "-t", "60", "start", check=False)
            if done.returncode == 0:
                return self
            time.sleep(0.2)
        raise AssertionError(f"the test PostgreSQL server {self.name} did not start: {self.log_tail()}")

    @property
    def started(self) -> bool:
        return self.port is not None and (self.data / "postmaster.pid").exists()

    def stop(self) -> None:
        """Stop the server (if it runs) and remove its folder."""
        if self.started:
            with contextlib.suppress(subprocess.SubprocessError):  # already down: a test stopped or broke it
                as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "-t", "60",
                            "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def url(self, dbname: str = "postgres") -> str:
        return self.dsn(dbname)

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.dsn(dbname), autocommit=True)

    def execute(self, statement: str, *params, dbname: str = "postgres") -> list:
        """Run one statement (or several, without parameters); its rows, or [] when it returns none."""
        with self.connect(dbname) as conn:
            cursor = conn.execute(statement, params or None)
            return cursor.fetchall() if cursor.description else []

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def create_database(self, setup: str | None = None, *, name: str | None = None, owner: str = "postgres") -> str:
        """A new database (``pt_<random>`` unless named), optionally filled by ``setup``; its URL."""
        name = name or f"pt_{secrets.token_hex(4)}"
        self.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner)))
        if setup:
            self.execute(setup, dbname=name)
        return self.dsn(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def inventory(self) -> dict[str, set[str]]:
        """The names of its databases, roles and replication slots, and of the tables in ``postgres`` (where
        ``execute`` runs unless told otherwise)."""
        return {"databases": {r[0] for r in self.execute("SELECT datname FROM pg_database")},
                "roles": {r[0] for r in self.execute("SELECT rolname FROM pg_roles")},
                "slots": {r[0] for r in self.execute("SELECT slot_name FROM pg_replication_slots")},
                "tables": {r[0] for r in self.execute(
                    "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                    "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")}}

    def drop_new(self, before: dict[str, set[str]], timeout: float = 30) -> None:
        """Drop every replication slot, database, table of ``postgres`` and role that is not in ``before``."""
        now = self.inventory()
        deadline = time.monotonic() + timeout
        for slot in sorted(now["slots"] - before["slots"]):
            # A receiver may still hold the slot (its process dies after its parent): end its sender first.
            while self.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", slot) == [(True,)]:
                self.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                             "WHERE slot_name = %s AND active_pid IS NOT NULL", slot)
                if time.monotonic() > deadline:
                    raise AssertionError(f"the replication slot {slot} stayed in use on {self.name}")
                time.sleep(0.1)
            self.execute("SELECT pg_drop_replication_slot(%s) FROM pg_replication_slots WHERE slot_name = %s",
                         slot, slot)
        for database in sorted(now["databases"] - before["databases"]):
            self.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        for table in sorted(now["tables"] - before["tables"]):
            self.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
        roles = sorted(now["roles"] - before["roles"])
        if roles:
            names = sql.SQL(", ").join(sql.Identifier(role) for role in roles)
            open_ones = {r[0] for r in self.execute("SELECT datname FROM pg_database WHERE datallowconn")}
            for database in sorted(before["databases"] & open_ones):
                self.execute(sql.SQL("DROP OWNED BY {}").format(names), dbname=database)
            self.execute(sql.SQL("DROP ROLE {}").format(names))


@contextlib.contextmanager
def kept_clean(server: PgServer) -> Iterator[PgServer]:
    """The shared ``server`` for a block that leaves databases, roles or slots behind: they are dropped after it."""
    before = server.inventory()
    try:
        yield server
    finally:
        server.drop_new(before)


@contextlib.contextmanager
def own_server(name: str = "pg", **options) -> Iterator[PgServer]:
    """A ``PgServer`` of its own for the block, stopped and removed after it."""
    server = PgServer(name, **options)
    try:
        yield server.start()
    finally:
        server.stop()
