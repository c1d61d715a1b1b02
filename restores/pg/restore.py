"""Running ``pg_restore`` into a database, with progress read from its verbose output."""

import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from restores.pg.archive import Source, chunks_of, list_archive, peek
from restores.pg.connect import client_args, connect
from restores.pg.errors import RestoreFailed, UnsafeDatabaseName
from restores.pg.header import parse_archive_header, read_archive_header
from restores.pg.names import CopyKind, parse_copy_name
from restores.pg.process import feed, spawn
from restores.pg.tools import PgTool, choose_pg_restore


@dataclass
class RestoreProgress:
    """Progress of a running ``pg_restore``: TOC items done (from ``-v``) and bytes fed (streams)."""

    items_done: int = 0
    items_total: int | None = None
    bytes_done: int | None = None
    bytes_total: int | None = None
    message: str = ""

    @property
    def fraction(self) -> float | None:
        """0..1 from items when their total is known, else from bytes, else None."""
        if self.items_total:
            return min(1.0, self.items_done / self.items_total)
        if self.bytes_total and self.bytes_done is not None:
            return min(1.0, self.bytes_done / self.bytes_total)
        return None


@dataclass
class RestoreResult:
    """A finished restore into a side database."""

    database: str
    mode: str
    jobs: int
    pg_restore: PgTool
    duration_s: float
    items_done: int
    items_total: int | None
    bytes_read: int | None = None
    owners_kept: bool = False
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"database": self.database, "mode": self.mode, "jobs": self.jobs,
                "pg_restore": self.pg_restore.version, "duration_s": round(self.duration_s, 3),
                "items_done": self.items_done, "items_total": self.items_total, "bytes_read": self.bytes_read,
                "owners_kept": self.owners_kept, "warnings": self.warnings}


_ITEM = re.compile(r"^pg_restore: (?:processing|finished) item (\d+) ")
_SERIAL_STEP = re.compile(
    r"^pg_restore: (?:creating |processing data for table |executing |restoring large object|processing BLOBS?)")
_NOISE = re.compile(
    r"^pg_restore: (?:connecting to database|entering main parallel loop|finished main parallel loop|"
    r"launching item|finished item|processing item|creating |processing data for table|executing |"
    r"restoring large object|processing BLOBS?|setting owner|implied data-only restore|dropping )")


class _StderrWatcher:
    """Reads ``pg_restore -v`` output in a thread: counts items, keeps the meaningful tail."""

    def __init__(self, stream, *, parallel: bool, progress: RestoreProgress, lock: threading.Lock):
        self.stream = stream
        self.parallel = parallel
        self.progress = progress
        self.lock = lock
        self.items: set[str] = set()
        self.tail: deque[str] = deque(maxlen=30)
        self.first_error = ""
        self.warnings: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()[:500]
            if self.parallel:
                match = _ITEM.match(line)
                if match:
                    self.items.add(match[1])
                    with self.lock:
                        self.progress.items_done = len(self.items)
                        self.progress.message = line.removeprefix("pg_restore: ")
                    continue
            elif _SERIAL_STEP.match(line):
                with self.lock:
                    self.progress.items_done += 1
                    self.progress.message = line.removeprefix("pg_restore: ")
                continue
            if _NOISE.match(line):
                continue
            self.tail.append(line)
            if not self.first_error and ("error:" in line or line.startswith(("ERROR", "FATAL"))):
                self.first_error = line.removeprefix("pg_restore: ")
            if "warning:" in line:
                self.warnings.append(line.removeprefix("pg_restore: "))

    def join(self) -> None:
        self.thread.join()

    def tail_text(self) -> str:
        return "\n".join(self.tail)


def restore_archive(url: str, database: str, source: Source, *, jobs: int | None = None,
                    pg_restore: PgTool | None = None, items_total: int | None = None,
                    bytes_total: int | None = None, on_progress: Callable[[RestoreProgress], None] | None = None,
                    progress_interval: float = 0.5, no_owner: bool | None = None, no_privileges: bool = False,
                    ) -> RestoreResult:
    """Run ``pg_restore`` into ``database``, which must be a side database (``…__restore_<tag>``).

    ``source`` is a path (restored with ``-j jobs``, default ``DRPANEL_RESTORE_JOBS``) or a
    stream: an iterable of ``bytes`` or a binary file object, fed to ``pg_restore -j1`` on
    its standard input (pg_restore cannot run in parallel from a pipe). If the stream raises
    (a decryption error, say), pg_restore is killed and the exception propagates.

    ``on_progress`` is called in the calling thread at most every ``progress_interval``
    seconds and once at the end, with a ``RestoreProgress``; for a file, ``items_total``
    is taken from ``pg_restore --list`` unless given (only when ``on_progress`` is). Runs
    with ``--exit-on-error``.

    Ownership (``no_owner=None``, the default, decides by the URL's role): a superuser
    keeps the archive's owners (the roles must exist on the target's server), any other
    role restores with ``--no-owner`` and owns everything itself (typically the app's
    own role). Grants are restored unless ``no_privileges``. Raises ``RestoreFailed``
    with pg_restore's first error and ``stderr_tail`` when it exits non-zero. Does not drop
    the database on failure: ``restore_to_side_database`` does.
    """
    copy = parse_copy_name(database)
    if copy is None or copy.kind != CopyKind.SIDE:
        raise UnsafeDatabaseName(f"refusing to restore into {database!r}: only side databases "
                                 "(<db>__restore_<tag>) are restored into")
    stream = not isinstance(source, str | Path)
    if stream:
        head, chunks = peek(chunks_of(source))
        header = parse_archive_header(head)
        jobs = 1
    else:
        header = read_archive_header(source)
        jobs = max(1, int(jobs or settings.RESTORE_JOBS))
    if pg_restore is None or no_owner is None:
        with connect(url) as conn:
            server_version = conn.info.server_version
            superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        if no_owner is None:
            no_owner = not superuser
    tool = pg_restore or choose_pg_restore(archive=header, server_version=server_version)
    if items_total is None and not stream and on_progress is not None:
        listing = list_archive(source, pg_restore=tool)
        items_total = listing.toc_entries if jobs > 1 else len(listing.entries)
    conninfo, env = client_args(url, database)
    cmd = [tool.path, "--verbose", "--exit-on-error", f"--jobs={jobs}", f"--dbname={conninfo}"]
    if no_owner:
        cmd.append("--no-owner")
    if no_privileges:
        cmd.append("--no-privileges")
    if not stream:
        cmd.append(str(source))

    progress = RestoreProgress(items_total=items_total, bytes_done=0 if stream else None, bytes_total=bytes_total)
    lock = threading.Lock()
    last_emit = [0.0]

    def emit(force: bool = False) -> None:
        if on_progress is None:
            return
        now = time.monotonic()
        if not force and now - last_emit[0] < progress_interval:
            return
        last_emit[0] = now
        with lock:
            snapshot = RestoreProgress(**vars(progress))
        on_progress(snapshot)

    def on_chunk(sent: int) -> None:
        with lock:
            progress.bytes_done = sent
        emit()

    started = time.perf_counter()
    proc = spawn(cmd, env, stdin=subprocess.PIPE if stream else subprocess.DEVNULL)
    proc.stdout.close()  # pg_restore -d writes nothing there
    watcher = _StderrWatcher(proc.stderr, parallel=jobs > 1, progress=progress, lock=lock)
    try:
        if stream:
            feed(proc, chunks, on_chunk)
        while True:
            try:
                returncode = proc.wait(timeout=max(0.05, progress_interval))
                break
            except subprocess.TimeoutExpired:
                emit()
    except BaseException:
        proc.kill()
        proc.wait()
        watcher.join()
        raise
    watcher.join()
    duration = time.perf_counter() - started
    if returncode != 0:
        cause = watcher.first_error or (watcher.tail[-1] if watcher.tail else "no message")
        raise RestoreFailed(f"pg_restore failed (exit status {returncode}): {cause}",
                            stderr_tail=watcher.tail_text(), returncode=returncode)
    with lock:
        if progress.items_total:
            progress.items_done = progress.items_total
        progress.message = "restored"
    emit(force=True)
    return RestoreResult(database=database, mode="stream" if stream else "file", jobs=jobs, pg_restore=tool,
                         duration_s=duration, items_done=progress.items_done, items_total=items_total,
                         bytes_read=progress.bytes_done, owners_kept=not no_owner, warnings=watcher.warnings)
