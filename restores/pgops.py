"""Database operations of a restore, run against the target's own PostgreSQL server.

Everything here works on a target database ``<db>`` named by its libpq URL (the resolved
secret of ``Target.database_ref``) and only ever creates, renames or drops databases
whose names follow three patterns, all carrying a 12-character *run tag* (the first hex
digits of the run's UUID, see ``run_tag``):

- ``<db>__restore_<tag>`` — the **side database** a run restores into;
- ``<db>__pre_<tag>``     — the target's database as it was before the swap (rollback copy);
- ``<db>__failed_<tag>``  — the restored database after a rollback swapped it back out.

``<db>`` itself is renamed by the swaps but never dropped; a name that does not follow the
patterns is never dropped (``UnsafeDatabaseName``). The server may be the panel's own
(the demo): nothing else on it is touched. ``ALTER DATABASE`` and ``CREATE/DROP
DATABASE`` run from a connection to the maintenance database ``postgres``.

The target URL's role needs ``CREATEDB``, ownership of ``<db>`` (or superuser), and the
right to terminate the sessions of ``<db>`` (same role, ``pg_signal_backend`` or
superuser). Passwords never reach a command line: ``pg_restore`` gets them through
``PGPASSWORD`` in its environment.

The building blocks, in the order a restore run uses them:

- ``read_archive_header`` — pg_dump custom-format header (pg_dump and server versions);
- ``choose_pg_restore`` — a ``pg_restore`` at least as new as the archive's pg_dump and
  the server (``PG_BIN_DIR``, ``/usr/lib/postgresql/*/bin``, pgserver's, ``PATH``);
- ``list_archive`` — the structure check (``pg_restore --list``), from a file or a stream;
- ``plan_restore`` — file with ``-j N`` or, when the temporary disk lacks room, stream ``-j1``;
- ``restore_to_side_database`` — create ``<db>__restore_<tag>`` and ``pg_restore`` into it,
  with progress callbacks; on any failure the side database is dropped and the target is
  untouched;
- ``swap_in`` / ``swap_back`` — the atomic swap (one transaction, two renames) and rollback;
- ``drop_copy``, ``list_copies``, ``find_orphans`` — clean-up;
- ``swap_state`` / ``reconcile_swap`` — what a dead worker left, and bringing it back to a
  consistent state.
"""

import contextlib
import ctypes
import glob
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

MAINTENANCE_DATABASE = "postgres"
TAG_LENGTH = 12
MAX_IDENTIFIER_BYTES = 63
HEADER_BYTES = 4096
CHUNK_BYTES = 1024 * 1024


class CopyKind(StrEnum):
    """The three kinds of database a restore creates beside ``<db>``."""

    SIDE = "restore"
    PRE = "pre"
    FAILED = "failed"


_COPY_NAME = re.compile(rf"^(?P<database>.+)__(?P<kind>restore|pre|failed)_(?P<tag>[0-9a-z]{{{TAG_LENGTH}}})$")


class PgOpsError(Exception):
    """A database operation of a restore failed; the message is meant for the operator."""


class NoSuitablePgRestore(PgOpsError):
    """No installed ``pg_restore`` is new enough for the archive and the server."""


class ArchiveError(PgOpsError):
    """The file is not a pg_dump custom-format archive this code can read."""


class UnsafeDatabaseName(PgOpsError):
    """A name outside the side/pre/failed patterns, or too long for PostgreSQL."""


class RestoreFailed(PgOpsError):
    """``pg_restore`` failed; ``stderr_tail`` holds its last meaningful lines."""

    def __init__(self, message: str, *, stderr_tail: str = "", returncode: int | None = None):
        super().__init__(message)
        self.stderr_tail = stderr_tail
        self.returncode = returncode


class SwapFailed(PgOpsError):
    """A swap did not happen; the live database is as it was (and accepts connections again)."""


# --- names -----------------------------------------------------------------------------------


def run_tag(run_id) -> str:
    """The 12-character tag of a run id (a UUID, with or without hyphens) used in database names."""
    text = str(run_id).replace("-", "").lower()
    if not re.fullmatch(rf"[0-9a-z]{{{TAG_LENGTH},}}", text):
        raise ValueError(f"a run id must have at least {TAG_LENGTH} letters or digits (got {run_id!r})")
    return text[:TAG_LENGTH]


def copy_name(database: str, run_id, kind: CopyKind | str) -> str:
    """``<database>__<kind>_<tag>``; refused when longer than PostgreSQL's 63-byte identifiers."""
    kind = CopyKind(kind)
    suffix = f"__{kind}_{run_tag(run_id)}"
    name = database + suffix
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise UnsafeDatabaseName(
            f"the database name {database!r} is too long for restore copies: at most "
            f"{MAX_IDENTIFIER_BYTES - len(suffix)} bytes leave room for {suffix!r}")
    return name


@dataclass(frozen=True)
class CopyDatabase:
    """A database whose name follows one of the copy patterns."""

    name: str
    database: str
    kind: CopyKind
    tag: str


def parse_copy_name(name: str) -> CopyDatabase | None:
    """The parts of a copy's name, or None when ``name`` follows none of the patterns."""
    match = _COPY_NAME.match(name or "")
    if not match:
        return None
    return CopyDatabase(name=name, database=match["database"], kind=CopyKind(match["kind"]), tag=match["tag"])


# --- connections -----------------------------------------------------------------------------


def database_name(url: str) -> str:
    """The database a libpq URL names (``<db>``)."""
    name = conninfo_to_dict(url).get("dbname")
    if not name:
        raise PgOpsError("the target's database URL names no database")
    return name


def _conninfo(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)


def _connect(url: str, dbname: str = MAINTENANCE_DATABASE) -> psycopg.Connection:
    try:
        return psycopg.connect(_conninfo(url, dbname), autocommit=True, connect_timeout=10,
                               application_name="drpanel-restore")
    except psycopg.Error as exc:
        raise PgOpsError(f"cannot connect to {dbname!r} on the target's server: {_first_line(exc)}") from None


def _client_args(url: str, dbname: str) -> tuple[str, dict]:
    """A conninfo without the password for a command line, and the environment carrying it."""
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    password = params.pop("password", None)
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)
    if password:
        env["PGPASSWORD"] = password
    env.setdefault("PGAPPNAME", "drpanel-restore")
    return make_conninfo(**params), env


def _first_line(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    lines = str(exc).strip().splitlines()
    return (primary or (lines[0] if lines else type(exc).__name__))[:300]


def server_version_num(url: str) -> int:
    """The target server's ``server_version_num`` (e.g. 150020)."""
    with _connect(url) as conn:
        return conn.info.server_version


def _existing(conn: psycopg.Connection, names: Iterable[str]) -> set[str]:
    rows = conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", [list(names)]).fetchall()
    return {row[0] for row in rows}


# --- versions and tools ----------------------------------------------------------------------


def major_number(version: str | int) -> int:
    """A comparable major version: ``"16.2"`` → 160000, ``"9.6.24"`` → 90600, 150020 → 150000."""
    if isinstance(version, int):
        return version // 10000 * 10000 if version >= 100000 else version // 100 * 100
    match = re.match(r"\s*(\d+)(?:\.(\d+))?", version or "")
    if not match:
        raise ValueError(f"{version!r} is not a PostgreSQL version")
    first, second = int(match[1]), int(match[2] or 0)
    return first * 10000 if first >= 10 else first * 10000 + second * 100


def _show_major(number: int) -> str:
    return str(number // 10000) if number >= 100000 else f"{number // 10000}.{number % 10000 // 100}"


@dataclass(frozen=True)
class PgTool:
    """An installed ``pg_restore`` and its version."""

    path: str
    version: str

    @property
    def major(self) -> int:
        return major_number(self.version)


_tool_versions: dict[tuple[str, float], str | None] = {}


def _tool_version(path: str) -> str | None:
    try:
        key = (path, os.stat(path).st_mtime)
    except OSError:
        return None
    if key not in _tool_versions:
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=True).stdout
            match = re.search(r"(\d+(?:\.\d+)*)", out)
            _tool_versions[key] = match[1] if match else None
        except (OSError, subprocess.SubprocessError):
            _tool_versions[key] = None
    return _tool_versions[key]


def _pgserver_bin() -> str | None:
    # Located without importing it: importing pgserver has side effects (platformdirs, logging).
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin")


def pg_restore_candidates(bin_dir: str | None = None) -> list[PgTool]:
    """Installed ``pg_restore`` binaries in order of preference.

    ``bin_dir`` (default ``PG_BIN_DIR``), then ``/usr/lib/postgresql/*/bin`` newest first,
    then pgserver's bundled binaries, then the one on ``PATH``.
    """
    from django.conf import settings

    directories: list[str] = []
    preferred = bin_dir or getattr(settings, "PG_BIN_DIR", None)
    if preferred:
        directories.append(preferred)

    def version_key(directory: str) -> int:
        with contextlib.suppress(ValueError):
            return major_number(Path(directory).parent.name)
        return 0

    directories += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True)
    bundled = _pgserver_bin()
    if bundled:
        directories.append(bundled)
    on_path = shutil.which("pg_restore")
    if on_path:
        directories.append(str(Path(on_path).parent))
    tools, seen = [], set()
    for directory in directories:
        path = os.path.join(directory, "pg_restore")
        if not os.access(path, os.X_OK):
            continue
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        version = _tool_version(path)
        if version:
            tools.append(PgTool(path=path, version=version))
    return tools


def choose_pg_restore(*, archive: "ArchiveHeader | None" = None, server_version: int | str | None = None,
                      bin_dir: str | None = None) -> PgTool:
    """The first candidate at least as new as the archive's pg_dump and the server.

    Raises ``NoSuitablePgRestore`` naming what was needed and what was found.
    """
    needs = []
    if archive is not None:
        needs.append((archive.pg_dump_major, f"the archive was made by pg_dump {archive.pg_dump_version}"))
    if server_version:
        server_major = major_number(server_version)
        needs.append((server_major, f"the server is PostgreSQL {_show_major(server_major)}"))
    need = max((n for n, _ in needs), default=0)
    candidates = pg_restore_candidates(bin_dir)
    for tool in candidates:
        if tool.major >= need:
            return tool
    found = ", ".join(f"{t.path} ({t.version})" for t in candidates) or "none"
    why = "; ".join(reason for _, reason in needs)
    raise NoSuitablePgRestore(
        f"no pg_restore is at least version {_show_major(need)} ({why}); found: {found}. "
        f"Install the PostgreSQL {_show_major(need)} client tools or point PG_BIN_DIR at them.")


# --- the archive header ----------------------------------------------------------------------

_FORMATS = {0: "unknown", 1: "custom", 2: "files", 3: "tar", 4: "null", 5: "directory"}
_ALGORITHMS = {0: "none", 1: "gzip", 2: "lz4", 3: "zstd"}


@dataclass(frozen=True)
class ArchiveHeader:
    """What the header of a pg_dump custom-format archive says about it."""

    format_version: str
    format: str
    compression: str
    created_at: datetime | None
    database: str
    server_version: str
    pg_dump_version: str

    @property
    def pg_dump_major(self) -> int:
        return major_number(self.pg_dump_version)


def parse_archive_header(data: bytes) -> ArchiveHeader:
    """Parse the first bytes of a custom-format archive (``HEADER_BYTES`` are always enough)."""
    if not data.startswith(b"PGDMP"):
        raise ArchiveError("not a pg_dump custom-format archive (it does not start with PGDMP)")
    pos = 5

    def byte() -> int:
        nonlocal pos
        if pos >= len(data):
            raise ArchiveError("the archive header is truncated")
        pos += 1
        return data[pos - 1]

    major, minor, rev = byte(), byte(), byte()
    if (major, minor) < (1, 10):
        raise ArchiveError(f"archive format {major}.{minor} is too old (pg_dump before 8.4?)")
    int_size, _off_size, fmt = byte(), byte(), byte()

    def read_int() -> int:
        sign = byte()
        value = 0
        for shift in range(int_size):
            value |= byte() << (8 * shift)
        return -value if sign else value

    def read_str() -> str:
        nonlocal pos
        length = read_int()
        if length < 0:
            return ""
        if pos + length > len(data):
            raise ArchiveError("the archive header is truncated")
        pos += length
        return data[pos - length:pos].decode("utf-8", "replace")

    if (major, minor) >= (1, 15):
        compression = _ALGORITHMS.get(byte(), "unknown")
    else:
        level = read_int()
        compression = "none" if level == 0 else "gzip"
    sec, minute, hour, mday, mon, year, _isdst = (read_int() for _ in range(7))
    try:
        created = datetime(year + 1900, mon + 1, mday, hour, minute, sec, tzinfo=UTC)
    except ValueError:
        created = None
    database = read_str()
    server_version = read_str()
    pg_dump_version = read_str()
    if _FORMATS.get(fmt) != "custom":
        raise ArchiveError(f"the archive is in pg_dump's {_FORMATS.get(fmt, '?')} format; "
                           "restores need the custom format (pg_dump -Fc)")
    return ArchiveHeader(format_version=f"{major}.{minor}-{rev}", format="custom", compression=compression,
                         created_at=created, database=database, server_version=server_version,
                         pg_dump_version=pg_dump_version)


def read_archive_header(path: str | Path) -> ArchiveHeader:
    """The header of the custom-format archive file at ``path``."""
    try:
        with open(path, "rb") as handle:
            return parse_archive_header(handle.read(HEADER_BYTES))
    except OSError as exc:
        raise ArchiveError(f"cannot read the archive: {exc.strerror}") from None


Source = str | Path | Iterable[bytes]


def _peek(chunks: Iterable[bytes]) -> tuple[bytes, Iterator[bytes]]:
    """The first bytes of a stream (for its header), and an iterator still yielding all of it."""
    iterator = iter(chunks)
    head: list[bytes] = []
    size = 0
    for chunk in iterator:
        head.append(chunk)
        size += len(chunk)
        if size >= HEADER_BYTES:
            break
    first = b"".join(head)

    def rest() -> Iterator[bytes]:
        if first:
            yield first
        yield from iterator

    return first, rest()


def _chunks_of(source) -> Iterable[bytes]:
    if hasattr(source, "read"):
        return iter(lambda: source.read(CHUNK_BYTES), b"")
    return source


# --- running pg_restore ----------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # A worker killed with SIGKILL must not leave a pg_restore writing into the side database.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def _spawn(cmd: list[str], env: dict, *, stdin) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=_die_with_parent)  # noqa: PLW1509 - only prctl, no locks taken


def _feed(proc: subprocess.Popen, chunks: Iterable[bytes], on_chunk: Callable[[int], None] | None = None) -> int:
    """Write the stream into the child's stdin; stops quietly when the child stops reading."""
    sent = 0
    try:
        for chunk in chunks:
            if not chunk:
                continue
            proc.stdin.write(chunk)
            sent += len(chunk)
            if on_chunk is not None:
                on_chunk(sent)
        proc.stdin.close()
    except BrokenPipeError:
        # The child exited (done, or failed): its exit status and stderr tell which.
        with contextlib.suppress(OSError):
            proc.stdin.close()
    return sent


_LIST_LINE = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")
_TOC_ENTRIES = re.compile(r"^;\s+TOC Entries: (\d+)", re.M)
_KINDS = sorted([
    "TABLE", "TABLE DATA", "INDEX", "CONSTRAINT", "FK CONSTRAINT", "SEQUENCE", "SEQUENCE SET",
    "SEQUENCE OWNED BY", "DEFAULT", "VIEW", "MATERIALIZED VIEW", "MATERIALIZED VIEW DATA", "FUNCTION",
    "PROCEDURE", "AGGREGATE", "TRIGGER", "EVENT TRIGGER", "SCHEMA", "EXTENSION", "COMMENT", "ACL", "DEFAULT ACL",
    "TYPE", "DOMAIN", "BLOB", "BLOBS", "BLOB METADATA", "LARGE OBJECT", "POLICY", "ROW SECURITY", "RULE",
    "INDEX ATTACH", "TABLE ATTACH", "COLLATION", "CAST", "OPERATOR", "PUBLICATION", "PUBLICATION TABLE",
    "SUBSCRIPTION", "STATISTICS", "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY",
], key=len, reverse=True)


@dataclass
class ArchiveListing:
    """The structure check's result: the archive's table of contents, as ``pg_restore --list`` sees it."""

    toc_entries: int | None
    entries: list[str]
    counts: dict[str, int]
    table_data: list[str]
    pg_restore: PgTool
    duration_s: float
    header: ArchiveHeader | None = None

    def as_dict(self) -> dict:
        return {"toc_entries": self.toc_entries, "listed": len(self.entries), "counts": self.counts,
                "table_data": self.table_data, "pg_restore": self.pg_restore.version,
                "duration_s": round(self.duration_s, 4)}


def list_archive(source: Source, *, pg_restore: PgTool | None = None) -> ArchiveListing:
    """Structure check: run ``pg_restore --list`` on an archive file or stream and parse its TOC.

    From a stream, ``pg_restore`` reads only the header and the table of contents and stops;
    the rest of the stream is not consumed. Raises ``ArchiveError`` when pg_restore cannot
    read the archive (truncated, corrupted, not an archive).
    """
    started = time.perf_counter()
    stream = not isinstance(source, str | Path)
    if stream:
        head, chunks = _peek(_chunks_of(source))
        header = parse_archive_header(head)
    else:
        header = read_archive_header(source)
    tool = pg_restore or choose_pg_restore(archive=header)
    cmd = [tool.path, "--list"] + ([] if stream else [str(source)])
    proc = _spawn(cmd, dict(os.environ), stdin=subprocess.PIPE if stream else subprocess.DEVNULL)
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),
               threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        if stream:
            _feed(proc, chunks)
        returncode = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        for reader in readers:
            reader.join()
    text = b"".join(out).decode("utf-8", "replace")
    if returncode != 0:
        tail = b"".join(err).decode("utf-8", "replace").strip().splitlines()[-5:]
        raise ArchiveError(f"pg_restore cannot read the archive's table of contents: {' '.join(tail)[:500]}")
    entries, counts, table_data = [], {}, []
    for line in text.splitlines():
        match = _LIST_LINE.match(line)
        if not match:
            continue
        entries.append(line)
        rest = match[4]
        kind = next((k for k in _KINDS if rest.startswith(k + " ")), "OTHER")
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "TABLE DATA":
            schema, _, remainder = rest[len("TABLE DATA "):].partition(" ")
            table_data.append(f"{schema}.{remainder.rsplit(' ', 1)[0]}")
    toc = _TOC_ENTRIES.search(text)
    return ArchiveListing(toc_entries=int(toc[1]) if toc else None, entries=entries, counts=counts,
                          table_data=table_data, pg_restore=tool, duration_s=time.perf_counter() - started,
                          header=header)


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
    from django.conf import settings

    copy = parse_copy_name(database)
    if copy is None or copy.kind != CopyKind.SIDE:
        raise UnsafeDatabaseName(f"refusing to restore into {database!r}: only side databases "
                                 "(<db>__restore_<tag>) are restored into")
    stream = not isinstance(source, str | Path)
    if stream:
        head, chunks = _peek(_chunks_of(source))
        header = parse_archive_header(head)
        jobs = 1
    else:
        header = read_archive_header(source)
        jobs = max(1, int(jobs or settings.RESTORE_JOBS))
    if pg_restore is None or no_owner is None:
        with _connect(url) as conn:
            server_version = conn.info.server_version
            superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        if no_owner is None:
            no_owner = not superuser
    tool = pg_restore or choose_pg_restore(archive=header, server_version=server_version)
    if items_total is None and not stream and on_progress is not None:
        listing = list_archive(source, pg_restore=tool)
        items_total = listing.toc_entries if jobs > 1 else len(listing.entries)
    conninfo, env = _client_args(url, database)
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
    proc = _spawn(cmd, env, stdin=subprocess.PIPE if stream else subprocess.DEVNULL)
    proc.stdout.close()  # pg_restore -d writes nothing there
    watcher = _StderrWatcher(proc.stderr, parallel=jobs > 1, progress=progress, lock=lock)
    try:
        if stream:
            _feed(proc, chunks, on_chunk)
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


# --- planning: file with -j N, or stream with -j1 ---------------------------------------------


@dataclass(frozen=True)
class RestorePlan:
    """How to restore: from a temporary file with ``-j N``, or streaming ``-j1`` when the disk lacks room."""

    mode: str
    jobs: int
    temp_dir: str
    free_bytes: int
    needed_bytes: int
    reason: str

    def as_dict(self) -> dict:
        return {"mode": self.mode, "jobs": self.jobs, "temp_dir": self.temp_dir, "free_bytes": self.free_bytes,
                "needed_bytes": self.needed_bytes, "reason": self.reason}


def human_bytes(count: int) -> str:
    """``1234567`` → ``"1.2 MB"`` (decimal units, as disks are sold)."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} B"


def plan_restore(plaintext_size: int, *, temp_dir: str | None = None, jobs: int | None = None,
                 headroom_bytes: int | None = None) -> RestorePlan:
    """Decide file (``-j jobs``) or stream (``-j1``) by the free space of ``temp_dir``, and say why.

    The decrypted archive needs ``plaintext_size`` bytes plus a headroom
    (``DRPANEL_RESTORE_TEMP_HEADROOM_MB``) in ``temp_dir`` (``DRPANEL_RESTORE_TEMP_DIR``,
    default the system's temporary directory).
    """
    import tempfile

    from django.conf import settings

    temp_dir = temp_dir or settings.RESTORE_TEMP_DIR or tempfile.gettempdir()
    jobs = max(1, int(jobs or settings.RESTORE_JOBS))
    headroom = settings.RESTORE_TEMP_HEADROOM_MB * 1024 * 1024 if headroom_bytes is None else headroom_bytes
    free = shutil.disk_usage(temp_dir).free
    needed = int(plaintext_size) + headroom
    if free >= needed:
        return RestorePlan("file", jobs, temp_dir, free, needed,
                           f"decrypting to a temporary file in {temp_dir} ({human_bytes(free)} free, "
                           f"{human_bytes(needed)} needed), then pg_restore -j{jobs}")
    return RestorePlan("stream", 1, temp_dir, free, needed,
                       f"only {human_bytes(free)} free in {temp_dir}, the decrypted archive needs "
                       f"{human_bytes(plaintext_size)} plus {human_bytes(headroom)} headroom: streaming into "
                       "pg_restore -j1 instead (slower: no parallel restore from a pipe)")


# --- the side database -----------------------------------------------------------------------


def create_side_database(url: str, run_id) -> str:
    """Create the empty side database ``<db>__restore_<tag>`` and return its name.

    It takes ``<db>``'s encoding, collation, ctype and locale provider (and its owner when
    the URL's role may grant it), from ``template0``. Raises ``PgOpsError`` if it already
    exists (an earlier attempt of the same run: drop it first with ``drop_copy``).
    """
    database = database_name(url)
    side = copy_name(database, run_id, CopyKind.SIDE)
    with _connect(url) as conn:
        if _existing(conn, [side]):
            raise PgOpsError(f"the side database {side} already exists (an earlier attempt of this run?)")
        row = conn.execute(
            "SELECT to_jsonb(d), pg_encoding_to_char(d.encoding), pg_get_userbyid(d.datdba), "
            "pg_has_role(current_user, d.datdba, 'MEMBER') FROM pg_database d WHERE d.datname = %s",
            [database]).fetchone()
        parts = [sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(side))]
        if row is not None:
            info, encoding, owner, may_own = row
            parts.append(sql.SQL("ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
                sql.Literal(encoding), sql.Literal(info["datcollate"]), sql.Literal(info["datctype"])))
            provider = info.get("datlocprovider")
            locale = info.get("datlocale") or info.get("daticulocale")
            if provider == "i" and locale:
                parts.append(sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(locale)))
            elif provider == "b" and locale:
                parts.append(sql.SQL("LOCALE_PROVIDER builtin BUILTIN_LOCALE {}").format(sql.Literal(locale)))
            if may_own:
                parts.append(sql.SQL("OWNER {}").format(sql.Identifier(owner)))
            if info.get("datconnlimit", -1) != -1:
                parts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(info["datconnlimit"])))
        try:
            conn.execute(sql.SQL(" ").join(parts))
            if row is not None:
                _copy_database_acl(conn, database, side)
        except psycopg.Error as exc:
            with contextlib.suppress(psycopg.Error):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(side)))
            raise PgOpsError(f"cannot create the side database {side}: {_first_line(exc)}") from None
    return side


def _copy_database_acl(conn: psycopg.Connection, source: str, target: str) -> None:
    """Give ``target`` the database-level grants of ``source`` (pg_dump carries them only with --create).

    Without this, a ``REVOKE CONNECT ... FROM PUBLIC`` on ``<db>`` would quietly disappear
    with the swap.
    """
    rows = conn.execute(
        "SELECT a.privilege_type, a.is_grantable, a.grantee = 0, pg_get_userbyid(a.grantee) "
        "FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s", [source]).fetchall()
    if not rows:
        return  # the default privileges, which the new database already has
    conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(target)))
    for privilege, grantable, public, grantee in rows:
        conn.execute(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
            sql.SQL(privilege), sql.Identifier(target), sql.SQL("PUBLIC") if public else sql.Identifier(grantee),
            sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL("")))


def restore_to_side_database(url: str, run_id, source: Source, **options) -> RestoreResult:
    """Create ``<db>__restore_<tag>`` and restore ``source`` into it (see ``restore_archive``).

    On any failure (bad archive, pg_restore error, a failing stream, an interruption) the
    side database is dropped before the exception propagates, so ``<db>`` is untouched and
    nothing is left behind.
    """
    side = create_side_database(url, run_id)
    try:
        return restore_archive(url, side, source, **options)
    except BaseException:
        with contextlib.suppress(PgOpsError):
            drop_copy(url, run_id, CopyKind.SIDE)
        raise


# --- the swap --------------------------------------------------------------------------------


@dataclass
class SwapResult:
    """A swap that happened: which database went live, where the previous one went, how long it took."""

    database: str
    moved_in: str
    moved_aside: str | None
    duration_s: float
    sessions_terminated: int
    attempts: int

    def as_dict(self) -> dict:
        return {"database": self.database, "moved_in": self.moved_in, "moved_aside": self.moved_aside,
                "duration_s": round(self.duration_s, 4), "sessions_terminated": self.sessions_terminated,
                "attempts": self.attempts}


def _allow_connections(conn: psycopg.Connection, name: str, allow: bool) -> None:
    conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
        sql.Identifier(name), sql.SQL("true" if allow else "false")))


def _terminate(conn: psycopg.Connection, names: list[str], *, wait: float = 5.0) -> int:
    """Signal every other session of ``names`` at once, then wait (polling every 2 ms) until they are gone.

    Not ``pg_terminate_backend(pid, timeout)``: it waits in 100 ms steps, one session after
    the other; and ALTER DATABASE's own wait for sessions also sleeps in 100 ms steps.
    """
    terminated = conn.execute(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) AS gone FROM pg_stat_activity "
        "WHERE datname = ANY(%s) AND pid <> pg_backend_pid()) t WHERE gone", [names]).fetchone()[0]
    if terminated:
        deadline = time.perf_counter() + wait
        while time.perf_counter() < deadline:
            remaining = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(%s) "
                                     "AND pid <> pg_backend_pid()", [names]).fetchone()[0]
            if not remaining:
                break
            time.sleep(0.002)
    return terminated


def _swap(url: str, *, live: str, incoming: str, aside: str, timeout: float) -> SwapResult:
    with _connect(url) as conn:
        present = _existing(conn, [live, incoming, aside])
        if incoming not in present:
            raise SwapFailed(f"{incoming} does not exist: nothing to swap in")
        if aside in present:
            raise SwapFailed(f"{aside} already exists: refusing to overwrite it")
        live_exists = live in present
        started = time.perf_counter()
        terminated = attempts = 0
        try:
            # No new sessions on either database from here: a client sees the old or the new one.
            _allow_connections(conn, incoming, False)
            if live_exists:
                _allow_connections(conn, live, False)
            deadline = started + timeout
            while True:
                attempts += 1
                terminated += _terminate(conn, [live, incoming])
                try:
                    # PostgreSQL allows ALTER DATABASE ... RENAME in a transaction: both renames or none.
                    with conn.transaction():
                        if live_exists:
                            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                                sql.Identifier(live), sql.Identifier(aside)))
                        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(incoming), sql.Identifier(live)))
                        _allow_connections(conn, live, True)
                    break
                except psycopg.errors.ObjectInUse:
                    if time.perf_counter() > deadline:
                        raise SwapFailed(f"sessions kept coming back to {live} for {timeout:g} s") from None
                    time.sleep(0.01)
        except psycopg.Error as exc:
            _reopen(conn, live if live_exists else None)
            raise SwapFailed(f"the swap did not happen: {_first_line(exc)}") from None
        except BaseException:
            _reopen(conn, live if live_exists else None)
            raise
        duration = time.perf_counter() - started
    return SwapResult(database=live, moved_in=incoming, moved_aside=aside if live_exists else None,
                      duration_s=duration, sessions_terminated=terminated, attempts=attempts)


def _reopen(conn: psycopg.Connection, live: str | None) -> None:
    """After a failed swap nothing was renamed: let clients back into the live database."""
    if live is None or conn.closed:
        return
    with contextlib.suppress(psycopg.Error):
        _allow_connections(conn, live, True)


def swap_in(url: str, run_id, *, timeout: float = 15.0) -> SwapResult:
    """Make the side database live: ``<db>`` → ``<db>__pre_<tag>``, ``<db>__restore_<tag>`` → ``<db>``.

    Connections to both are refused (``ALLOW_CONNECTIONS false``) and their sessions
    terminated, then both renames and re-opening ``<db>`` happen in ONE transaction, so a
    client sees the old database or the new one, never a missing or empty one. Retries
    while sessions linger, up to ``timeout`` seconds. The pre-restore copy keeps refusing
    connections (nothing can write into the rollback copy). When ``<db>`` does not exist
    yet, the side database is simply renamed. Raises ``SwapFailed`` (the live database
    unchanged and open again) when it cannot happen.
    """
    database = database_name(url)
    return _swap(url, live=database, incoming=copy_name(database, run_id, CopyKind.SIDE),
                 aside=copy_name(database, run_id, CopyKind.PRE), timeout=timeout)


def swap_back(url: str, run_id, *, timeout: float = 15.0) -> SwapResult:
    """Roll back: ``<db>`` → ``<db>__failed_<tag>``, ``<db>__pre_<tag>`` → ``<db>`` (same guarantees as ``swap_in``)."""
    database = database_name(url)
    return _swap(url, live=database, incoming=copy_name(database, run_id, CopyKind.PRE),
                 aside=copy_name(database, run_id, CopyKind.FAILED), timeout=timeout)


# --- clean-up --------------------------------------------------------------------------------


def _drop(conn: psycopg.Connection, name: str, live: str) -> bool:
    copy = parse_copy_name(name)
    if copy is None or name == live or copy.database != live:
        raise UnsafeDatabaseName(f"refusing to drop {name!r}: only copies of {live} "
                                 "(<db>__restore_/__pre_/__failed_<tag>) are ever dropped")
    if not _existing(conn, [name]):
        return False
    try:
        if conn.info.server_version >= 130000:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        else:
            _allow_connections(conn, name, False)
            _terminate(conn, [name])
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise PgOpsError(f"cannot drop {name}: {_first_line(exc)}") from None
    return True


def drop_copy(url: str, run_id, kind: CopyKind | str) -> bool:
    """Drop ``<db>__<kind>_<tag>`` if it exists (terminating its sessions); True if it was dropped."""
    database = database_name(url)
    with _connect(url) as conn:
        return _drop(conn, copy_name(database, run_id, kind), database)


def drop_database_copy(url: str, name: str) -> bool:
    """Drop a copy found by ``list_copies``/``find_orphans``; refuses any other name."""
    with _connect(url) as conn:
        return _drop(conn, name, database_name(url))


def list_copies(url: str) -> list[CopyDatabase]:
    """Every side database and pre/failed copy of the URL's database on its server."""
    database = database_name(url)
    with _connect(url) as conn:
        names = [row[0] for row in conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY datname",
            [database + "__"]).fetchall()]
    copies = [parse_copy_name(name) for name in names]
    return [c for c in copies if c is not None and c.database == database]


def find_orphans(url: str, *, keep: Iterable = ()) -> list[CopyDatabase]:
    """Copies whose run is not in ``keep`` (run ids or tags of runs still running or within their window)."""
    kept = {run_tag(item) for item in keep}
    return [copy for copy in list_copies(url) if copy.tag not in kept]


# --- reconciliation after a dead worker -------------------------------------------------------


class SwapState(StrEnum):
    """Where a run's databases stand; all but ``UNKNOWN`` can be made consistent automatically."""

    CLEAN = "clean"                # no copy of this run exists
    RESTORING = "restoring"        # the side database exists; the swap has not happened
    SWAPPED = "swapped"            # the restored database is live; the pre-restore copy is kept
    ROLLED_BACK = "rolled_back"    # the pre-restore copy is live again; the restored one kept as failed
    LIVE_MISSING = "live_missing"  # <db> is missing while its pre-restore copy exists
    UNKNOWN = "unknown"            # a combination no swap of ours leaves behind: needs a person


def swap_state(database: str, run_id, existing: Iterable[str]) -> SwapState:
    """Name the state from the set of database names that exist (no I/O)."""
    names = set(existing)
    live = database in names
    side, pre, failed = (copy_name(database, run_id, kind) in names for kind in CopyKind)
    if pre and failed:
        return SwapState.UNKNOWN
    if pre and not live:
        return SwapState.LIVE_MISSING
    if pre:
        return SwapState.SWAPPED
    if failed:
        return SwapState.ROLLED_BACK if live else SwapState.UNKNOWN
    if side:
        return SwapState.RESTORING
    return SwapState.CLEAN


@dataclass
class Reconciliation:
    """What ``reconcile_swap`` found and did."""

    found: SwapState
    state: SwapState
    actions: list[str]

    def as_dict(self) -> dict:
        return {"found": str(self.found), "state": str(self.state), "actions": self.actions}


def reconcile_swap(url: str, run_id, *, existing: Iterable[str] | None = None) -> Reconciliation:
    """Bring a run's databases to a consistent state after its worker died (call only then).

    - ``RESTORING`` (died before or during the swap's transaction): the side database is
      dropped and ``<db>`` accepts connections again → ``CLEAN``, the target untouched;
    - ``SWAPPED`` (died after the swap committed): kept; ``<db>`` accepts connections; a
      stray side database of the run is dropped. Rolling back is a decision for the caller
      (``swap_back``);
    - ``ROLLED_BACK``: kept; ``<db>`` accepts connections;
    - ``LIVE_MISSING``: the pre-restore copy is renamed back to ``<db>`` → ``CLEAN``;
    - ``UNKNOWN``: nothing is changed; a person must look.

    ``existing`` may pass the database names already read; by default they are queried.
    """
    database = database_name(url)
    names = {kind: copy_name(database, run_id, kind) for kind in CopyKind}
    actions: list[str] = []
    with _connect(url) as conn:
        present = set(existing) if existing is not None else _existing(conn, [database, *names.values()])
        found = swap_state(database, run_id, present)
        state = found
        if found == SwapState.LIVE_MISSING:
            with conn.transaction():
                conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(names[CopyKind.PRE]), sql.Identifier(database)))
                _allow_connections(conn, database, True)
            actions.append(f"renamed {names[CopyKind.PRE]} back to {database}")
            present = (present - {names[CopyKind.PRE]}) | {database}
            state = SwapState.CLEAN
        if found in (SwapState.RESTORING, SwapState.SWAPPED, SwapState.LIVE_MISSING) \
                and names[CopyKind.SIDE] in present:
            _drop(conn, names[CopyKind.SIDE], database)
            actions.append(f"dropped {names[CopyKind.SIDE]}")
            if found == SwapState.RESTORING:
                state = SwapState.CLEAN
        if found != SwapState.CLEAN and database in present:
            allowed = conn.execute("SELECT datallowconn FROM pg_database WHERE datname = %s",
                                   [database]).fetchone()
            if allowed is not None and not allowed[0]:
                _allow_connections(conn, database, True)
                actions.append(f"{database} accepts connections again")
    return Reconciliation(found=found, state=state, actions=actions)
