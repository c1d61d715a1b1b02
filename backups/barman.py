"""Barman, as the panel drives it: its configuration per system, its commands, and what it keeps on disk.

The panel writes one global file (``<home>/barman.conf``) and one file per continuously
protected system (``<home>/conf.d/<system>.conf``), and runs ``barman -c <home>/barman.conf``
on the workers that hold the Barman home (``DRPANEL_BARMAN_HOME``). No password is written into a
configuration file: the system's libpq URL is resolved from its secret reference, its password
goes to a 0600 passfile (libpq's ``passfile`` parameter), and the conninfo names that file.

Barman answers ``--format json`` for ``check``, ``show-server``, ``list-backups``; the WAL
it received lives in ``<home>/<system>/wals/<timeline+log>/<segment>`` (archived) and
``<home>/<system>/streaming/`` (being received, the newest as ``.partial``). The receiver it
runs (``barman receive-wal``, started by ``barman cron``) holds ``<home>/.<system>-receive-wal.lock``
with its pid in it; the ``pg_receivewal`` it starts is the panel's wrapper in ``<home>/bin``, which
reports the receiver's position every second.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from django.conf import settings
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backups.errors import BackupError
from drpanel import pgbin, secrets
from drpanel.beside import running_beside
from drpanel.scrub import scrub

RESERVED_NAMES = {"all", "barman"}
SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$")
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024


class BarmanError(BackupError):
    """Barman failed or is misconfigured; the message names no secret."""


def home() -> Path:
    return Path(settings.BARMAN_HOME)


def config_path() -> Path:
    return home() / "barman.conf"


def server_name(system) -> str:
    if system.name in RESERVED_NAMES:
        raise BarmanError(f"Barman reserves the server name {system.name!r}; rename the system to protect it "
                          "continuously")
    return system.name


def slot_name(system) -> str:
    """The replication slot on the system's server: letters, digits and underscores only."""
    return "drpanel_" + re.sub(r"[^a-z0-9_]", "_", system.name)


def executable() -> str:
    if settings.BARMAN_BIN:
        return settings.BARMAN_BIN
    beside = Path(sys.executable).parent / "barman"
    if beside.exists():
        return str(beside)
    found = shutil.which("barman")
    if not found:
        raise BarmanError("Barman is not installed on this worker (pip install barman, or set DRPANEL_BARMAN_BIN)")
    return found


def _passfile_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@dataclass(frozen=True)
class Connection:
    """What Barman's configuration says about a system's server: host, port, user, database (no password)."""

    host: str
    port: str
    user: str
    dbname: str

    def conninfo(self, passfile: Path, **extra) -> str:
        return make_conninfo(host=self.host, port=self.port, user=self.user, dbname=self.dbname,
                             passfile=str(passfile), **extra)


def connection_for(system) -> tuple[Connection, str | None]:
    """The system's server from its secret reference, and its password (kept apart)."""
    try:
        url = secrets.resolve(system.database_ref)
        params = conninfo_to_dict(url)
    except secrets.SecretReferenceError as exc:
        raise BarmanError(f"{system.name}: {exc}") from None
    except Exception:  # noqa: BLE001 - a malformed URL is reported without its text (it holds a password)
        raise BarmanError(f"{system.name}: the database URL its reference names is not a libpq URL") from None
    if not params.get("host") or not params.get("user"):
        raise BarmanError(f"{system.name}: the database URL must name a host and a user for Barman to connect")
    return Connection(host=params["host"], port=str(params.get("port") or 5432), user=params["user"],
                      dbname=params.get("dbname") or params["user"]), params.get("password")


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(temp, mode)
    os.replace(temp, path)


def write_global() -> Path:
    """``<home>/barman.conf``: the home, the user Barman runs as (this worker's), one directory of servers."""
    base = home()
    (base / "conf.d").mkdir(parents=True, exist_ok=True)
    (base / "pass").mkdir(mode=0o700, exist_ok=True)
    _write(config_path(), "\n".join([
        "; Written by the DR Panel; changes are overwritten.",
        "[barman]",
        f"barman_home = {base}",
        f"barman_user = {getpass.getuser()}",
        f"log_file = {base / 'barman.log'}",
        "log_level = INFO",
        f"configuration_files_directory = {base / 'conf.d'}",
        "",
    ]), 0o644)
    return config_path()


# How often Barman's pg_receivewal tells the server how far it has written (its default is 10 s).
STATUS_INTERVAL_SECONDS = 1


def receiver_wrapper() -> Path:
    """Where the ``pg_receivewal`` Barman runs lies: a wrapper in ``<home>/bin`` (``write_receiver_wrapper``)."""
    return home() / "bin" / "pg_receivewal"


def write_receiver_wrapper(real: str) -> Path:
    """``<home>/bin/pg_receivewal``: runs ``real`` with ``--status-interval`` of ``STATUS_INTERVAL_SECONDS``.

    Barman starts pg_receivewal without that option, so the server learns what the receiver has written only every
    10 s, and on a quiet server RPO now cannot tell "nothing written" from "not received" for that long. Barman finds
    its tools along ``path_prefix``, which names this directory first. The option goes after Barman's arguments: a
    ``--version`` (how Barman tells a real binary from a shim) must stay the first one.
    """
    wrapper = receiver_wrapper()
    _write(wrapper, "\n".join([
        "#!/bin/sh",
        "# Written by the DR Panel; changes are overwritten.",
        f'exec {shlex.quote(real)} "$@" --status-interval={STATUS_INTERVAL_SECONDS}',
        "",
    ]), 0o755)
    return wrapper


def server_config(system, connection: Connection, passfile: Path) -> str:
    """The text of a system's server section (what ``write_server`` writes)."""
    name = server_name(system)
    tools = pgbin.candidates("pg_receivewal")
    prefix = (f"path_prefix = {receiver_wrapper().parent}{os.pathsep}{os.path.dirname(tools[0].path)}"
              if tools else None)
    return "\n".join(line for line in [
        "; Written by the DR Panel from the system's settings; changes are overwritten.",
        f"[{name}]",
        f"description = DR Panel system {name}",
        f"conninfo = {connection.conninfo(passfile)}",
        f"streaming_conninfo = {connection.conninfo(passfile)}",
        "backup_method = postgres",
        "streaming_archiver = on",
        f"slot_name = {slot_name(system)}",
        "create_slot = auto",
        prefix,
        f"retention_policy = RECOVERY WINDOW OF {system.recovery_window_days} DAYS",
        "wal_retention_policy = main",
        "",
    ] if line is not None)


def write_server(system) -> Path:
    """Write (or rewrite) the system's server section and passfile; the path of the section."""
    write_global()
    connection, password = connection_for(system)
    name = server_name(system)
    passfile = home() / "pass" / name
    line = ":".join(_passfile_escape(v) for v in (connection.host, connection.port, "*", connection.user,
                                                  password or ""))
    _write(passfile, line + "\n" if password else "")
    tools = pgbin.candidates("pg_receivewal")
    if tools:
        write_receiver_wrapper(tools[0].path)
    path = home() / "conf.d" / f"{name}.conf"
    _write(path, server_config(system, connection, passfile), 0o644)
    return path


def remove_server(system) -> None:
    """Forget a system's configuration (protection off); what Barman holds of it stays on disk."""
    for path in (home() / "conf.d" / f"{system.name}.conf", home() / "pass" / system.name):
        path.unlink(missing_ok=True)


def run(*args: str, timeout: int | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """``barman -c <home>/barman.conf ARGS``; a failure raises ``BarmanError`` with Barman's last words."""
    command = [executable(), "-c", str(config_path()), *args]
    limit = timeout or settings.BARMAN_TIMEOUT_SECONDS
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise BarmanError(f"barman {args[0]} did not finish in {limit} s") from None
    except OSError as exc:
        raise BarmanError(f"barman could not be started: {exc.strerror}") from None
    if check and done.returncode != 0:
        words = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
        raise BarmanError(scrub(f"barman {' '.join(args)} failed: {' / '.join(words) or f'exit {done.returncode}'}"))
    return done


def run_json(*args: str, timeout: int | None = None, check: bool = True):
    done = run("-f", "json", *args, timeout=timeout, check=check)
    try:
        return json.loads(done.stdout or "{}")
    except ValueError:
        raise BarmanError(f"barman {args[0]} did not answer JSON") from None


def check(system) -> tuple[bool, list[dict]]:
    """``barman check``: whether every item passed, and the items (``name``, ``status``, ``hint``)."""
    name = server_name(system)
    answer = run_json("check", name, check=False)
    section = answer.get(name) if isinstance(answer, dict) else None
    if not isinstance(section, dict):
        raise BarmanError(f"barman check gave no answer for {name}")
    items = []
    for item, value in section.items():
        value = value if isinstance(value, dict) else {"status": str(value)}
        items.append({"name": item, "status": str(value.get("status", "")),
                      "hint": scrub(str(value.get("hint", "") or ""))})
    return all(i["status"].upper() == "OK" for i in items), items


# How often ``wal_moving`` commits a transaction on the system's server: what a closed segment waits for before
# Barman archives it (0.1 s: the wait after a switch fell from 0.41 s to 0.17 s, docs/benchmarks.md).
NUDGE_SECONDS = 0.1


@contextlib.contextmanager
def wal_moving(system) -> Iterator[None]:
    """Keep WAL flowing from the system's server while the block runs: a transaction id taken and committed every
    ``NUDGE_SECONDS`` (a commit record, no data; any role may).

    Barman's streaming archiver always leaves the newest complete segment in ``streaming/`` until the receiver has
    started the next one, and the receiver starts it only when the server writes more WAL. After a WAL switch on a
    quiet server that is its next standby snapshot, up to 15 s later: ``switch-wal --archive`` and ``backup --wait``
    then wait that long for nothing (6–20 s measured, see docs/benchmarks.md). A server that does not answer is not
    nudged: Barman's own wait then decides, as before.
    """
    def nudge(stop: threading.Event) -> None:
        try:
            connection, password = connection_for(system)
        except BarmanError:
            return
        with contextlib.suppress(psycopg.Error), psycopg.connect(
                host=connection.host, port=connection.port, user=connection.user, dbname=connection.dbname,
                password=password, connect_timeout=5, autocommit=True, application_name="drpanel_wal_moving") as conn:
            while not stop.wait(NUDGE_SECONDS):
                conn.execute("SELECT txid_current()")

    with running_beside(nudge, name=f"wal-moving-{system.name}"):
        yield


def switch_and_archive(system) -> None:
    """Close the segment being written on the system's server and wait until Barman has archived it."""
    with wal_moving(system):
        run("switch-wal", "--force", "--archive", "--archive-timeout", "60", server_name(system), timeout=120)


def backup(system, *, timeout: int) -> dict:
    """``barman backup --wait``: a base backup through the replication protocol, its WAL archived; its description."""
    name = server_name(system)
    with wal_moving(system):
        # Barman refuses a backup until WAL archiving is proven: the first time, close a segment and wait for it.
        if not any((home() / name / "wals").glob("*/*")):
            run("switch-wal", "--force", "--archive", "--archive-timeout", "60", name, timeout=120)
        run("backup", "--wait", name, timeout=timeout)
    return show_backup(system, "latest")


def show_backup(system, backup_id: str) -> dict:
    answer = run_json("show-backup", server_name(system), backup_id)
    found = answer.get(system.name) if isinstance(answer, dict) else None
    if not isinstance(found, dict):
        raise BarmanError(f"barman show-backup gave no answer for {system.name} {backup_id}")
    return found


def receiver_pid(system) -> int | None:
    """The pid of the running ``barman receive-wal`` of the system, or None when none runs."""
    lock = home() / f".{system.name}-receive-wal.lock"
    try:
        pid = int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return pid if b"receive-wal" in cmdline and system.name.encode() in cmdline else None


@dataclass(frozen=True)
class Segment:
    """One WAL segment file Barman holds: its timeline, its number, when it was last written."""

    name: str
    timeline: int
    number: int
    mtime: float
    partial: bool


def segment_number(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int]:
    """``(timeline, position)`` of a segment file name (``TTTTTTTTXXXXXXXXYYYYYYYY``)."""
    match = SEGMENT.match(name)
    if not match:
        raise ValueError(name)
    per_log = 0x100000000 // segment_size
    return int(match[1], 16), int(match[2], 16) * per_log + int(match[3], 16)


def segment_name(timeline: int, number: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{number // per_log:08X}{number % per_log:08X}"


def segments(system, segment_size: int = DEFAULT_SEGMENT_SIZE) -> list[Segment]:
    """Every WAL segment Barman holds for the system: archived (``wals/``) and being received (``streaming/``)."""
    base = home() / system.name
    found = []
    paths = list((base / "wals").glob("*/*")) + list((base / "streaming").glob("*"))
    for path in paths:
        stem = path.name.split(".")[0] + (".partial" if path.name.endswith(".partial") else "")
        if not SEGMENT.match(stem):
            continue
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue
        timeline, number = segment_number(stem, segment_size)
        found.append(Segment(stem[:24], timeline, number, mtime, stem.endswith(".partial")))
    return found


@dataclass(frozen=True)
class Timeline:
    """The continuity of one timeline: first and last segment held, newest arrival, the first one missing."""

    timeline: int
    first: str
    last: str
    count: int
    last_received: datetime
    first_missing: str
    missing: int


def timelines(held: list[Segment], segment_size: int = DEFAULT_SEGMENT_SIZE) -> list[Timeline]:
    """Group segments by timeline and find, in each, the first segment missing between its first and last."""
    result = []
    for timeline in sorted({s.timeline for s in held}):
        mine = [s for s in held if s.timeline == timeline]
        numbers = sorted({s.number for s in mine})
        first_missing, missing = "", 0
        for before, after in zip(numbers, numbers[1:], strict=False):
            if after - before > 1:
                missing += after - before - 1
                if not first_missing:
                    first_missing = segment_name(timeline, before + 1, segment_size)
        newest = max(s.mtime for s in mine)
        result.append(Timeline(timeline=timeline, first=segment_name(timeline, numbers[0], segment_size),
                               last=segment_name(timeline, numbers[-1], segment_size), count=len(numbers),
                               last_received=datetime.fromtimestamp(newest, tz=UTC), first_missing=first_missing,
                               missing=missing))
    return result
