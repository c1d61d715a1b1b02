"""Restoring a plain SQL dump (the old guide's ``pg_dump`` output, gzip already undone) into a side database.

``psql`` runs the file in ONE transaction with ``ON_ERROR_STOP``: the first error rolls
everything back and fails the restore. Like ``pg.restore_to_side_database`` it only
ever writes into ``<db>__restore_<tag>``, which it creates and drops on failure; the
password reaches ``psql`` through its environment, never its command line.
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

from restores import pg


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

    ``on_progress(bytes_fed, total_bytes)`` is called as the file is fed to ``psql``.
    """
    psql = find_psql(url)
    side = pg.create_side_database(url, run_id)
    try:
        return _run(url, side, Path(path), psql, on_progress)
    except BaseException:
        with contextlib.suppress(pg.PgOpsError):
            pg.drop_copy(url, run_id, pg.CopyKind.SIDE)
        raise


def _run(url: str, side: str, path: Path, psql: str, on_progress) -> PlainRestoreResult:
    conninfo, env = pg.client_args(url, side)
    cmd = [psql, "--no-psqlrc", "--quiet", "--single-transaction", "-v", "ON_ERROR_STOP=1", f"--dbname={conninfo}"]
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
