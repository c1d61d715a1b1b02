"""Restoring a plain SQL dump (the old guide's ``pg_dump`` output, gzip already undone) into a side database.

A plain SQL file comes from storage, which is untrusted, and ``psql`` would execute its
backslash commands. So, in order:

1. ``sqlscreen.screen_plain_sql`` reads the whole file first (streaming) and refuses any psql
   meta-command outside COPY data: ``UnsafePlainSql``, raised before anything is created.
2. ``psql -X`` (no psqlrc) runs the file in ONE transaction with ``ON_ERROR_STOP``: the first
   error rolls everything back and fails the restore.
3. Its environment is built from nothing: ``PATH``, a C locale, ``PGPASSWORD`` and
   ``PGAPPNAME`` — none of the worker's variables (no ``DRPANEL_*``, ``AWS_*``,
   ``DATABASE_URL``, ``REDIS_URL``…), and no ``~/.pgpass`` or service file.
4. When the deployment names a restore role (``DRPANEL_PLAIN_SQL_ROLE``, with its password from
   the secret reference ``DRPANEL_PLAIN_SQL_ROLE_PASSWORD`` when the server asks for one),
   the side database is created owned by that role and ``psql`` logs in *as* it, so the script
   runs without the target user's superuser rights (``SET ROLE`` inside a superuser session
   could be undone by the script; a separate login cannot). The role must exist on the target's
   server, must not be a superuser (checked), and must be a member of the roles the dump names
   as owners (or the dump made with ``--no-owner``).

Like ``pg.restore_to_side_database`` it only ever writes into ``<db>__restore_<tag>``, which
it creates and drops on failure; the password reaches ``psql`` through its environment, never
its command line.
"""

import contextlib
import os
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from drpanel import secrets
from restores import pg, sqlscreen
from restores.pg.connect import connect as pg_connect


class UnsafePlainSql(pg.PgOpsError):
    """The plain SQL file holds something besides SQL and COPY data; nothing was created or run."""


# What psql's environment may hold besides the connection: nothing of the worker's.
_CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C.UTF-8", "PGPASSFILE": os.devnull,
              "PGSERVICEFILE": os.devnull, "PGSYSCONFDIR": os.devnull}


@dataclass
class PlainRestoreResult:
    """A finished plain SQL restore."""

    database: str
    duration_s: float
    bytes_read: int
    psql: str

    def as_dict(self) -> dict:
        return {"database": self.database, "mode": "plain SQL (psql, one transaction)", "jobs": 1,
                "duration_s": round(self.duration_s, 3), "bytes_read": self.bytes_read, "psql": self.psql}


def find_psql(url: str) -> str:
    """A ``psql`` beside a ``pg_restore`` new enough for the server."""
    tool = pg.choose_pg_restore(server_version=pg.server_version_num(url))
    path = Path(tool.path).with_name("psql")
    if not os.access(path, os.X_OK):
        raise pg.PgOpsError(f"no psql beside {tool.path}")
    return str(path)


def restore_plain_sql(url: str, run_id, path: str | Path, *,
                      on_progress: Callable[[int, int], None] | None = None) -> PlainRestoreResult:
    """Create ``<db>__restore_<tag>`` and run the SQL file into it; on any failure the side database is dropped.

    ``on_progress(bytes_fed, total_bytes)`` is called as the file is fed to ``psql``. Raises
    ``UnsafePlainSql`` before creating anything when the screen refuses the file.
    """
    try:
        sqlscreen.screen_plain_sql(path)
    except sqlscreen.UnsafeScriptError as exc:
        raise UnsafePlainSql(f"refused to run the plain SQL dump: {exc}") from None
    psql = find_psql(url)
    role = settings.PLAIN_SQL_ROLE
    if role:
        _check_role(url, role)
    side = pg.create_side_database(url, run_id)
    try:
        if not role:
            return _run(url, side, Path(path), psql, on_progress, role=None)
        # The restore role owns the empty side database (and so its ``public`` schema) while the
        # script runs; the database goes back to the owner it was created with afterwards.
        owner = _owner(url, side)
        _set_owner(url, side, role)
        result = _run(url, side, Path(path), psql, on_progress, role=role)
        _set_owner(url, side, owner)
        return result
    except BaseException:
        with contextlib.suppress(pg.PgOpsError):
            pg.drop_copy(url, run_id, pg.CopyKind.SIDE)
        raise


def _check_role(url: str, role: str) -> None:
    with pg_connect(url) as conn:
        row = conn.execute("SELECT rolsuper, rolcanlogin FROM pg_roles WHERE rolname = %s", [role]).fetchone()
    if row is None:
        raise pg.PgOpsError(f"DRPANEL_PLAIN_SQL_ROLE: the role {role} does not exist on the target's server")
    if row[0] or not row[1]:
        raise pg.PgOpsError(f"DRPANEL_PLAIN_SQL_ROLE: the role {role} must be able to log in and must not be a "
                               "superuser")


def _owner(url: str, side: str) -> str:
    with pg_connect(url) as conn:
        return conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [side]).fetchone()[0]


def _set_owner(url: str, side: str, owner: str) -> None:
    with pg_connect(url) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(side), sql.Identifier(owner)))


def client_environment(url: str, dbname: str, *, role: str | None = None) -> tuple[str, dict]:
    """The conninfo (no password) and the only environment psql gets: the connection, nothing of the worker's."""
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    password = params.pop("password", None)
    if role:
        params["user"] = role
        reference = settings.PLAIN_SQL_ROLE_PASSWORD
        password = secrets.resolve(reference, deployment=True) if reference else None
    env = dict(_CLEAN_ENV, PGAPPNAME="drpanel-restore")
    if password:
        env["PGPASSWORD"] = password
    return make_conninfo(**params), env


def _run(url: str, side: str, path: Path, psql: str, on_progress, *, role: str | None) -> PlainRestoreResult:
    conninfo, env = client_environment(url, side, role=role)
    cmd = [psql, "-X", "--quiet", "--single-transaction", "-v", "ON_ERROR_STOP=1", f"--dbname={conninfo}"]
    total = path.stat().st_size
    started = time.perf_counter()
    # stdout to /dev/null: a dump's SELECTs print results, and a closed pipe would kill psql (SIGPIPE).
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            preexec_fn=pg.die_with_parent)  # noqa: PLW1509 - only prctl, no locks taken
    tail: deque[str] = deque(maxlen=20)

    def read_stderr():
        for raw in iter(proc.stderr.readline, b""):
            tail.append(raw.decode("utf-8", "replace").rstrip()[:500])

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    last = [0.0]

    def fed(sent: int) -> None:
        if on_progress is not None and time.monotonic() - last[0] > 0.5:
            last[0] = time.monotonic()
            on_progress(sent, total)

    try:
        with open(path, "rb") as handle:
            sent = pg.feed(proc, iter(lambda: handle.read(pg.CHUNK_BYTES), b""), fed)
        returncode = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        reader.join(timeout=10)
    if returncode != 0:
        errors = [line for line in tail if "ERROR" in line or "FATAL" in line] or list(tail)[-3:]
        raise pg.RestoreFailed(f"psql failed (exit status {returncode}): {' / '.join(errors)[:800]}",
                               stderr_tail="\n".join(tail), returncode=returncode)
    if on_progress is not None:
        on_progress(total, total)
    return PlainRestoreResult(database=side, duration_s=time.perf_counter() - started, bytes_read=sent, psql=psql)
