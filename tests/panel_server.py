"""The panel's own PostgreSQL server for a test run, started before Django loads (``drpanel.testing``).

A run makes and drops about 570 databases on the panel's server (each test's database, the restore tests'
targets, side and source databases) and commits after nearly every test. On the machine's server (fsync on,
data on an ext4 disk) that cost the server, and the kernel under it, more than the queries: the same six
DB-heavy test files at ``-n 2`` used 107–109 machine CPU-seconds there and 74–79 on a server of the run's own.

So, unless the environment names ``DATABASE_URL`` (then that server is used) or ``DRPANEL_TEST_PANEL_SERVER=0``,
the run's first process starts a real PostgreSQL of the machine's version (``tests.pg_servers``) in the run's
temporary directory (memory, where ``drpanel.testing`` chose it), with fsync off like the tests' other servers,
and exports its ``DATABASE_URL``: the xdist workers and every process a test starts inherit it. The server is
stopped and removed when that process exits. One left behind by a run that was killed (its owner's process is
gone) is stopped and removed by the next run.

Durability is not what the tests measure on this server; the crash-safety of the panel's writes is PostgreSQL's.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from drpanel.runtime import pid_alive
from tests.pg_servers import BIN_DIR, PgServer, as_postgres

NAME = "panel"
# What the machine's server was given for the runs (max_connections 300) and its default shared buffers: six xdist
# workers, their live servers and the processes their tests start connect at once.
CONF = {"max_connections": "300", "shared_buffers": "128MB"}
OWNER = "owner.pid"
# Set by ``start`` (to its process id) for the processes of the run: the panel's server is the run's own.
MARK = "DRPANEL_TEST_PANEL_SERVER_OWNER"


def owner_of(folder: Path) -> int | None:
    try:
        return int((folder / OWNER).read_text())
    except (OSError, ValueError):
        return None


def reap_stale() -> list[Path]:
    """Stop and remove the panel servers (in the temporary directory) of runs whose process is gone; the folders
    removed."""
    removed = []
    for folder in sorted(Path(tempfile.gettempdir()).glob(f"drpanel-{NAME}-*")):
        pid = owner_of(folder)
        if pid is None or pid_alive(pid):
            continue  # being made (no owner yet) or in use
        if (folder / "data" / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError):
                as_postgres(str(BIN_DIR / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate",
                            "-w", "-t", "60", "stop", check=False)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def start() -> PgServer:
    """Start the run's panel server, owned by this process, and export its ``DATABASE_URL``."""
    reap_stale()
    server = PgServer(NAME, conf=CONF)
    (server.folder / OWNER).write_text(str(os.getpid()))
    atexit.register(server.stop)
    server.start()
    server.execute("CREATE DATABASE drpanel")  # what ``runtime.ensure_database`` makes on the machine's server
    os.environ["DATABASE_URL"] = server.url("drpanel")
    os.environ[MARK] = str(os.getpid())
    return server
