"""Point-in-time recovery through Barman: a system's server recovered into a scratch data directory and started.

``recovered(system, point)`` is a context manager: ``barman recover`` of the base backup that
precedes the point into a new directory under ``DRPANEL_RESTORE_TEMP_DIR`` (or the system's
temporary directory), at the point — ``RecoveryPoint.latest()``, ``.at(datetime)`` or
``.named(name)`` —, then a temporary PostgreSQL started on that directory on a free local port,
reachable only through a private Unix socket (its own ``pg_hba.conf``: local connections of
the worker's user), until the block ends; then it is stopped and the directory removed,
whatever happened. What the block gets (``Recovered``) connects to it, runs SQL, dumps one
database and takes its roles (``pg_dumpall --globals-only``).

While the copy replays WAL, ``on_replay`` (when given) receives a ``ReplayProgress`` every
``REPLAY_POLL_SECONDS``: ``pg_last_wal_replay_lsn()`` against the start of the base backup and
the end of the WAL Barman holds (a moment or a name lies before that end; reaching the point
ends the replay at 100 %).

``restores.wholeserver`` reuses the same pieces (``prepare``, ``recover_into``,
``start_private``, ``wait_promoted``) to recover into a new, kept data directory instead.

Replay needs every WAL byte received up to the point: the current segment is closed and archived first
(``barman switch-wal --force --archive``) when the server answers; when it does not (the
disaster case), the segment being received (Barman's ``.partial``) is copied into the recovered
``pg_wal`` so replay goes as far as Barman got. A recovery to a moment skips the switch when Barman's
archive already holds a transaction that ended after the moment (``archived_past``): replay stops there,
so nothing later is needed (Barman's ``recover`` copies archived segments only, never the ``.partial``).

PostgreSQL refuses to run as root: a worker running as root starts it as ``postgres``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from django.conf import settings

from backups import barman
from backups.barman import BarmanError
from backups.server_roles import database_properties
from drpanel import pgbin

START_TIMEOUT = 600
REPLAY_POLL_SECONDS = 0.2
# A Unix socket's path (``<dir>/.s.PGSQL.<port>``) must fit in sun_path: 107 bytes and its NUL.
SOCKET_PATH_MAX = 107


@dataclass(frozen=True)
class RecoveryPoint:
    """What a recovery brings back: the latest WAL received, a moment (aware datetime), or a named restore point."""

    kind: str
    time: datetime | None = None
    name: str = ""

    @classmethod
    def latest(cls) -> RecoveryPoint:
        return cls("latest")

    @classmethod
    def at(cls, moment: datetime) -> RecoveryPoint:
        if moment.tzinfo is None:
            raise ValueError("a recovery time needs its time zone")
        return cls("time", time=moment.astimezone(UTC))

    @classmethod
    def named(cls, name: str) -> RecoveryPoint:
        if not name or len(name) > 63 or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError("a restore point name is 1-63 letters, digits, dashes or underscores")
        return cls("name", name=name)

    def barman_args(self) -> list[str]:
        if self.kind == "time":
            return ["--target-time", self.time.isoformat(), "--target-action", "promote"]
        if self.kind == "name":
            return ["--target-name", self.name, "--target-action", "promote"]
        return []

    def __str__(self) -> str:
        if self.kind == "time":
            return f"{self.time:%Y-%m-%d %H:%M:%S} UTC"
        return f"restore point {self.name!r}" if self.kind == "name" else "latest"


def lsn_value(lsn: str) -> int:
    """``'0/3000060'`` as a byte position."""
    high, low = lsn.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class ReplayProgress:
    """Where WAL replay stands: ``replayed`` between ``start`` (the base backup's) and ``end`` (the end of the WAL
    Barman holds; a moment or a name lies before it), ``fraction`` of that way; done once promoted."""

    replayed: str
    start: str
    end: str
    fraction: float
    in_recovery: bool

    def as_dict(self) -> dict:
        return {"replayed": self.replayed, "start": self.start, "end": self.end,
                "fraction": round(self.fraction, 4), "in_recovery": self.in_recovery}

    def describe(self) -> str:
        if not self.in_recovery:
            return f"replay ended at {self.replayed}: promoted"
        return f"WAL replayed to {self.replayed} of {self.end} ({self.fraction:.0%})"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the temporary server: this worker's user, or ``postgres`` when the worker is root."""
    return pwd.getpwnam("postgres") if os.geteuid() == 0 else None


def _run_as(user, command: list[str], *, timeout: int) -> subprocess.CompletedProcess:
    def demote():
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd="/",
                              preexec_fn=demote if user else None,
                              env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
    except subprocess.TimeoutExpired:
        raise BarmanError(f"{Path(command[0]).name} did not finish in {timeout} s") from None


def _chown_tree(root: Path, user) -> None:
    if user is None:
        return
    os.chown(root, user.pw_uid, user.pw_gid)
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lchown(os.path.join(directory, name), user.pw_uid, user.pw_gid)


def _bindir(data: Path) -> Path:
    major = int((data / "PG_VERSION").read_text().strip().split(".")[0])
    for tool in pgbin.candidates("pg_ctl"):
        if tool.major == major:
            return Path(tool.path).parent
    raise BarmanError(f"no PostgreSQL {major} server binaries (pg_ctl) on this worker to start the recovered copy")


def system_database(system) -> str:
    """The database a point-in-time restore of one database takes from the recovered copy: the one the system's
    URL names (libpq's default, the user's name, when it names none), whatever the target calls its own."""
    connection, _ = barman.connection_for(system)
    return connection.dbname


def _newest_backup(system) -> str:
    answer = barman.run_json("list-backups", barman.server_name(system))
    backups = [b for b in answer.get(system.name, []) if b.get("status") == "DONE"]
    if not backups:
        raise BarmanError(f"{system.name} has no base backup yet: take one before recovering it to a point in time")
    return backups[0]["backup_id"]


def wal_end(system, data: Path, *, wal_dir: Path | None = None) -> int:
    """The end of the WAL replay can reach: the end of the newest segment Barman holds (or copied into ``data``,
    or in ``wal_dir``, where a recovery from the off-site copy unpacked it)."""
    names = [s.name for s in barman.segments(system)]
    folders = (data / "pg_wal", data / "barman_wal", *((wal_dir,) if wal_dir else ()))
    names += [p.name for folder in folders if folder.is_dir()
              for p in folder.iterdir() if barman.SEGMENT.match(p.name)]
    if not names:
        return 0
    _, number = max(barman.segment_number(name[:24]) for name in names)
    return (number + 1) * barman.DEFAULT_SEGMENT_SIZE


def backup_start(data: Path) -> int:
    """Where the base backup's WAL begins (``START WAL LOCATION`` of its ``backup_label``); 0 when unknown."""
    try:
        found = re.search(r"^START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+)", (data / "backup_label").read_text(), re.M)
    except OSError:
        return 0
    return lsn_value(found[1]) if found else 0


_WAL_COMMIT = re.compile(r"desc: COMMIT (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC")


def last_commit_in_wal(data: Path, start: int, *, wal_dir: Path | None = None) -> datetime | None:
    """When the last transaction in the WAL a recovery to "latest" replays committed (``pg_waldump`` of it from
    the base backup's start, read before the server starts); None when there is none or it cannot be read.

    Barman recovers "latest" by copying the WAL into ``pg_wal`` without a ``recovery.signal``: PostgreSQL then
    replays it as a crash recovery, after which ``pg_last_xact_replay_timestamp()`` says nothing. This is the
    moment "latest" brought back (its RPO)."""
    folder = wal_dir or data / "pg_wal"
    try:
        label = (data / "backup_label").read_text()
    except OSError:
        return None
    timeline = re.search(r"^START TIMELINE: (\d+)", label, re.M)
    if not start or not folder.is_dir():
        return None
    command = [str(_bindir(data) / "pg_waldump"), "--path", str(folder), "--rmgr=Transaction",
               "--timeline", timeline[1] if timeline else "1", "--start", lsn_text(start)]
    try:
        # It ends on the first invalid record (the end of the WAL), with a non-zero exit: what it printed counts.
        done = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT,
                              env={**os.environ, "TZ": "UTC"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = _WAL_COMMIT.findall(done.stdout)
    return datetime.fromisoformat(found[-1]).replace(tzinfo=UTC) if found else None


_WAL_TRANSACTION_END = re.compile(r"desc: (?:COMMIT|ABORT) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC")


def newest_archived_segment(system) -> Path | None:
    """The newest whole segment in Barman's archive (``wals/``, newest timeline), or None when it holds none."""
    found = [p for p in (barman.home() / barman.server_name(system) / "wals").glob("*/*")
             if len(p.name) == 24 and barman.SEGMENT.match(p.name)]
    return max(found, key=lambda p: barman.segment_number(p.name), default=None)


def archived_past(system, moment: datetime, backup_id: str) -> bool:
    """Whether Barman's archive already holds the WAL a recovery to ``moment`` needs: a transaction that ended
    (committed or aborted) after ``moment``, in the newest archived segment (``pg_waldump`` of it, by the
    ``pg_waldump`` of the base backup's server version).

    Replay to a time stops at the first such record; without one, PostgreSQL ends recovery "before the configured
    recovery target was reached". Only the archive counts: ``barman recover`` copies archived segments, never the
    ``.partial`` being received. False whenever that cannot be read (no segment, a compressed one, no fitting
    ``pg_waldump``): the caller then closes and archives the current segment, as always.
    """
    segment = newest_archived_segment(system)
    try:
        major = int((barman.home() / barman.server_name(system) / "base" / backup_id / "data" / "PG_VERSION")
                    .read_text().strip().split(".")[0])
    except (OSError, ValueError):
        return False
    tools = [t for t in pgbin.candidates("pg_waldump") if t.major == major]
    if segment is None or not tools:
        return False
    try:
        # It ends on the segment's end (no next segment beside it) with a non-zero exit: what it printed counts.
        done = subprocess.run([tools[0].path, "--rmgr=Transaction", str(segment)], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "TZ": "UTC"})
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(datetime.fromisoformat(found).replace(tzinfo=UTC) > moment
               for found in _WAL_TRANSACTION_END.findall(done.stdout))


def _close_current_segment(system) -> bool:
    """Close and archive the segment being written, so "latest" includes it; False when the server is away."""
    try:
        barman.switch_and_archive(system)
    except BarmanError:
        return False
    return True


@dataclass
class Recovered:
    """A recovered copy of a system's server, started on a free port, reachable through its private socket."""

    system: object
    point: RecoveryPoint
    data: Path
    socket_dir: Path
    port: int
    bindir: Path
    user: str
    recover_seconds: float
    start_seconds: float
    wal_start: int = 0
    wal_end: int = 0
    wal_last_commit: datetime | None = None

    def progress(self, replayed: str, in_recovery: bool) -> ReplayProgress:
        """``replayed`` as a ``ReplayProgress`` between the base backup's start and the end of the WAL held."""
        position = lsn_value(replayed)
        end = max(self.wal_end, position)
        span = end - self.wal_start
        fraction = 1.0 if not in_recovery else (min(0.99, (position - self.wal_start) / span) if span > 0 else 0.0)
        return ReplayProgress(replayed=replayed, start=lsn_text(self.wal_start), end=lsn_text(end),
                              fraction=max(0.0, fraction), in_recovery=in_recovery)

    def url(self, dbname: str) -> str:
        """A libpq URL of ``dbname`` through the private socket."""
        return f"postgresql://{self.user}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def connect(self, dbname: str = "postgres"):
        return psycopg.connect(host=str(self.socket_dir), port=self.port, user=self.user, dbname=dbname,
                               autocommit=True, connect_timeout=10)

    def replay_position(self) -> str:
        """The last WAL position replayed (the recovery's progress; after promotion, where it ended)."""
        with self.connect() as conn:
            lsn = conn.execute("SELECT coalesce(pg_last_wal_replay_lsn(), pg_current_wal_lsn())").fetchone()[0]
        return str(lsn)

    def query(self, sql: str, dbname: str = "postgres") -> list[tuple]:
        with self.connect(dbname) as conn:
            return conn.execute(sql).fetchall()

    def dump(self, dbname: str, output: Path) -> Path:
        """``pg_dump -Fc`` of one database of the recovered copy into ``output``."""
        command = [str(self.bindir / "pg_dump"), "-Fc", "-h", str(self.socket_dir), "-p", str(self.port),
                   "-U", self.user, "-d", dbname, "-f", str(output)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=settings.BARMAN_TIMEOUT_SECONDS * 10)
        if done.returncode != 0:
            raise BarmanError(f"pg_dump of {dbname} from the recovered copy failed: {done.stderr.strip()[-300:]}")
        return output

    def globals(self, *, role_passwords: bool | None = None) -> bytes:
        """``pg_dumpall --globals-only`` of the recovered copy (passwords per ``DRPANEL_BACKUP_ROLE_PASSWORDS``)."""
        if role_passwords is None:
            role_passwords = settings.BACKUP_ROLE_PASSWORDS
        command = [str(self.bindir / "pg_dumpall"), "--globals-only", "--no-tablespaces", "-h", str(self.socket_dir),
                   "-p", str(self.port), "-U", self.user, "-l", "postgres"]
        if not role_passwords:
            command.append("--no-role-passwords")
        done = subprocess.run(command, capture_output=True, timeout=settings.BARMAN_TIMEOUT_SECONDS)
        if done.returncode != 0:
            raise BarmanError("pg_dumpall --globals-only of the recovered copy failed: "
                              f"{done.stderr.decode(errors='replace').strip()[-300:]}")
        return done.stdout

    def database_properties(self, dbname: str) -> dict:
        """The owner, comment and grants of ``dbname`` in the recovered copy (what pg_dump leaves out)."""
        with self.connect(dbname) as conn:
            return database_properties(conn)


def prepare(system, point: RecoveryPoint | None = None, backup_id: str | None = None) -> tuple[barman.Connection, bool]:
    """The system's connection, and whether the WAL up to the point is archived: the current segment could be
    closed, or (a moment, with ``backup_id``) the archive already holds a transaction past it. False: the server
    is away, and replay must also read the segment being received."""
    connection, _ = barman.connection_for(system)
    # Replay needs the WAL up to the point and, for a target, the first commit past it: close the current segment,
    # unless that commit is archived already (a moment in the past: the usual case, and the benchmark's).
    if point is not None and point.kind == "time" and backup_id and archived_past(system, point.time, backup_id):
        return connection, True
    closed = _close_current_segment(system)
    if not closed:
        # Barman's wait after a switch archived every complete segment; without one, archive what was streamed.
        barman.run("archive-wal", barman.server_name(system))
    return connection, closed


def recover_into(system, point: RecoveryPoint, backup_id: str, data: Path, *, closed: bool) -> float:
    """``barman recover`` of ``backup_id`` at ``point`` into ``data`` (plus the segment being received when the
    server is away); the seconds it took."""
    began = time.monotonic()
    barman.run("recover", *point.barman_args(), barman.server_name(system), backup_id, str(data),
               timeout=settings.BARMAN_TIMEOUT_SECONDS * 30)
    if not closed:
        _copy_partial(system, data)
    return time.monotonic() - began


def start_private(data: Path, *, socket_dir: Path, port: int, log: Path, user, extra: str = "") -> float:
    """Start the server of ``data`` reachable only through ``socket_dir`` (no TCP), as ``user``; seconds taken."""
    began = time.monotonic()
    options = (f"-p {port} -c listen_addresses='' -c unix_socket_directories='{socket_dir}' "
               f"-c archive_mode=off -c hot_standby=on {extra}").strip()
    done = _run_as(user, [str(_bindir(data) / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                          "-t", str(START_TIMEOUT), "-o", options, "start"], timeout=START_TIMEOUT + 30)
    if done.returncode != 0:
        raise BarmanError(f"the recovered server did not start: {_log_tail(log)}")
    return time.monotonic() - began


def stop_server(data: Path, user) -> None:
    _run_as(user, [str(_bindir(data) / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], timeout=120)


@contextlib.contextmanager
def recovered(system, point: RecoveryPoint, *, backup_id: str | None = None, on_replay=None,
              prefix: str | None = None) -> Iterator[Recovered]:
    """Recover ``system`` at ``point`` into a scratch directory, start it, yield it; stop and remove it after.

    ``prefix`` names the scratch directory (default ``drpanel-pitr-<system>-``): a run that names it after
    itself lets ``discard`` find what a worker that died mid-block left (a directory, a running server).
    """
    backup_id = backup_id or _newest_backup(system)
    connection, closed = prepare(system, point, backup_id)
    root = scratch_root(system, prefix=prefix)
    try:
        recover_seconds = recover_into(system, point, backup_id, root / "data", closed=closed)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    with started(system, point, root, user_name=connection.user, recover_seconds=recover_seconds,
                 on_replay=on_replay, prefix=prefix) as ready:
        yield ready


def scratch_parent() -> Path | None:
    """Where scratch copies go (``DRPANEL_RESTORE_TEMP_DIR``; None: the system's temporary directory)."""
    return Path(settings.RESTORE_TEMP_DIR) if settings.RESTORE_TEMP_DIR else None


def scratch_root(system, *, prefix: str | None = None) -> Path:
    """A new scratch directory for one recovery (under ``DRPANEL_RESTORE_TEMP_DIR`` when set)."""
    return Path(tempfile.mkdtemp(prefix=prefix or f"drpanel-pitr-{system.name}-", dir=scratch_parent()))


@contextlib.contextmanager
def started(system, point: RecoveryPoint, root: Path, *, user_name: str, recover_seconds: float,
            on_replay=None, wal_dir: Path | None = None, prefix: str | None = None) -> Iterator[Recovered]:
    """Start the recovered data directory ``root/data`` on a free port, wait until it is promoted, yield it;
    stop it and remove ``root`` after, whatever happened. ``wal_dir``: where replay reads WAL when not from Barman."""
    data, socket_dir = root / "data", root / "socket"
    if len(f"{socket_dir}/.s.PGSQL.65535".encode()) > SOCKET_PATH_MAX:
        # A deep scratch directory: the socket goes to a short one of its own, named alike (``discard`` finds it).
        socket_dir = Path(tempfile.mkdtemp(prefix=f"{prefix or f'drpanel-pitr-{system.name}-'}sock-"))
    user = _server_user()
    running = False
    try:
        socket_dir.mkdir(mode=0o700, exist_ok=True)
        _chown_tree(socket_dir, user)
        # Only the worker's user, through the private socket: the copy is never reachable from the network.
        (data / "pg_hba.conf").write_text("local all all trust\n")
        _chown_tree(root, user)
        port = _free_port()
        # Read before the start: the server renames backup_label as soon as it has taken the backup's start from it.
        wal_start = backup_start(data)
        last_commit = last_commit_in_wal(data, wal_start, wal_dir=wal_dir) if point.kind == "latest" else None
        running = True
        start_seconds = start_private(data, socket_dir=socket_dir, port=port, log=root / "server.log", user=user)
        ready = Recovered(system=system, point=point, data=data, socket_dir=socket_dir, port=port,
                          bindir=_bindir(data), user=user_name, recover_seconds=recover_seconds,
                          start_seconds=start_seconds, wal_start=wal_start,
                          wal_end=wal_end(system, data, wal_dir=wal_dir), wal_last_commit=last_commit)
        wait_promoted(ready, point, on_replay=on_replay)
        yield ready
    finally:
        if running:
            stop_server(data, user)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(socket_dir, ignore_errors=True)


def stop_left_server(root: Path) -> bool:
    """Stop (immediately) a server still running on ``<root>/data``; whether one was there."""
    data = root / "data"
    if not (data / "postmaster.pid").exists():
        return False
    with contextlib.suppress(BarmanError, OSError, ValueError):
        _run_as(_server_user(), [str(_bindir(data) / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                timeout=120)
    return True


def discard(prefix: str) -> list[str]:
    """Stop the servers and remove the scratch directories named ``<prefix>…`` (a dead worker's leftovers)."""
    parents = {scratch_parent() or Path(tempfile.gettempdir()), Path(tempfile.gettempdir())}
    removed = []
    for root in sorted(p for parent in parents for p in parent.glob(f"{prefix}*")):
        if root.is_dir() and not root.is_symlink():
            stop_left_server(root)
            shutil.rmtree(root, ignore_errors=True)
            removed.append(root.name)
    return removed


def wait_promoted(ready: Recovered, point: RecoveryPoint, *, on_replay=None) -> None:
    """Recovery ends by promotion once replay reaches the point (or the end of the WAL): wait for that, so reads
    see the point and not a moment of the replay before it. ``on_replay`` hears the replay position meanwhile."""
    deadline = time.monotonic() + START_TIMEOUT
    with ready.connect() as conn:
        while time.monotonic() < deadline:
            in_recovery, replayed = conn.execute("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()").fetchone()
            if on_replay is not None and replayed is not None:
                on_replay(ready.progress(str(replayed), in_recovery))
            if not in_recovery:
                return
            time.sleep(REPLAY_POLL_SECONDS)
    raise BarmanError(f"the recovered copy of {ready.system.name} did not reach {point} in {START_TIMEOUT} s")


def _copy_partial(system, data: Path) -> None:
    """The segment Barman was still receiving, as a whole segment in ``pg_wal`` (its unwritten end is zeros)."""
    for partial in (barman.home() / system.name / "streaming").glob("*.partial"):
        shutil.copyfile(partial, data / "pg_wal" / partial.name.removesuffix(".partial"))


def _log_tail(log: Path) -> str:
    try:
        return " / ".join(log.read_text().strip().splitlines()[-12:])[-2000:]
    except OSError:
        return "no server log"
