"""Whole-server recovery (the guide's "complete system failure"): a system's cluster recovered at a point into a
new data directory on the target host, kept, and started on the target's port as the target's OS user.

A target of kind ``server`` names the data directory (under ``DRPANEL_SERVER_DATA_ROOTS``), the
port and the OS user; the worker that runs the restore is on the target host (its worker pool).

1. ``check_host`` refuses, before anything is written: a data directory that is not empty (or is a
   link, or lies outside the roots, or is writable by others), a port something already listens on, an
   OS user that is root or unknown, a worker that could not start a server as that user, a target URL
   naming another port;
2. ``recovered_privately`` recovers through Barman into that directory (``restores.pitr``), starts it
   **privately** (no TCP, its own socket and ``hba_file``) so nobody reaches a half-replayed server,
   follows the WAL replay until promotion, lets the caller check it, stops it;
3. ``go_live`` starts it for real, with its own configuration (the recovered ``pg_hba.conf``, the
   target's port written into ``postgresql.auto.conf``).

Anything failing before ``go_live`` succeeded removes what was written (the directory was empty or
absent before): the target host is as it was. After it, the server runs and is left running.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from psycopg.conninfo import conninfo_to_dict

from backups.barman import BarmanError
from restores import pitr

USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


class ServerTargetRefused(Exception):
    """The target host cannot take the recovered server; nothing was written. The message is for the operator."""


def data_roots() -> list[Path]:
    return [Path(root) for root in settings.SERVER_DATA_ROOTS]


def check_data_dir_setting(path: str) -> str:
    """A server target's data directory as saved: absolute, normalised, under a root of the deployment."""
    path = (path or "").strip()
    if not path.startswith("/") or "\x00" in path or ".." in path.split("/"):
        raise ServerTargetRefused(f"the data directory {path!r} must be an absolute path without ..")
    normalised = os.path.normpath(path)
    if normalised != path.rstrip("/"):
        raise ServerTargetRefused(f"write the data directory without '.' or repeated slashes ({normalised})")
    roots = data_roots()
    if not roots:
        raise ServerTargetRefused("this deployment allows no whole-server recovery: DRPANEL_SERVER_DATA_ROOTS is "
                                  "empty")
    if not any(Path(normalised).is_relative_to(root) and Path(normalised) != root for root in roots):
        raise ServerTargetRefused(f"the data directory {normalised} is not inside a directory of "
                                  "DRPANEL_SERVER_DATA_ROOTS")
    return normalised


def port_in_use(port: int) -> bool:
    """Whether something listens on ``port`` (any address, IPv4 or IPv6)."""
    # A probe bound and closed at once, never listening: binding every address is what finds any listener.
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):  # noqa: S104
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


@dataclass(frozen=True)
class HostPlan:
    """What ``check_host`` found: where the server goes, as whom, and whether the directory must be made."""

    data: Path
    port: int
    user: pwd.struct_passwd
    create: bool

    def as_dict(self) -> dict:
        return {"data_dir": str(self.data), "port": self.port, "user": self.user.pw_name,
                "directory": "created" if self.create else "existing and empty"}


def check_host(target, url: str) -> HostPlan:
    """Refuse (``ServerTargetRefused``) anything that would make the recovery touch what it must not."""
    path = check_data_dir_setting(target.server_data_dir)
    data = Path(path)
    if Path(os.path.realpath(path)) != data:
        raise ServerTargetRefused(f"{path} goes through a symbolic link ({os.path.realpath(path)})")
    if data.exists() or data.is_symlink():
        if not data.is_dir():
            raise ServerTargetRefused(f"{path} exists and is not a directory")
        entries = sorted(os.listdir(data))
        if entries:
            raise ServerTargetRefused(f"{path} is not empty ({len(entries)} entries, first {entries[0]!r})")
        if data.stat().st_mode & 0o022:
            # Someone else could plant files (or links) in it while Barman writes there.
            raise ServerTargetRefused(f"{path} is writable by its group or by others")
    elif not data.parent.is_dir():
        raise ServerTargetRefused(f"the parent of {path} does not exist on this host")
    port = target.server_port
    if port_in_use(port):
        raise ServerTargetRefused(f"port {port} is in use on this host")
    try:
        user = pwd.getpwnam(target.server_user)
    except KeyError:
        raise ServerTargetRefused(f"there is no OS user {target.server_user!r} on this host") from None
    if user.pw_uid == 0:
        raise ServerTargetRefused("PostgreSQL does not run as root: name another OS user")
    if os.geteuid() not in (0, user.pw_uid):
        raise ServerTargetRefused(f"this worker runs as uid {os.geteuid()} and cannot start a server as "
                                  f"{user.pw_name}")
    named = conninfo_to_dict(url).get("port")
    if named and int(named) != port:
        raise ServerTargetRefused(f"the target's database URL names port {named}, the new server listens on {port}: "
                                  "its health checks would reach another server")
    return HostPlan(data=data, port=port, user=user, create=not data.exists())


def _as_user(user) -> pwd.struct_passwd | None:
    return user if os.geteuid() == 0 and user.pw_uid != os.geteuid() else None


def remove_written(plan: HostPlan) -> None:
    """Undo what was written: the directory made (or the contents put into the empty one found)."""
    if plan.create:
        shutil.rmtree(plan.data, ignore_errors=True)
        return
    for entry in plan.data.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


@contextlib.contextmanager
def recovered_privately(system, point, backup_id: str, plan: HostPlan, *, on_replay=None
                        ) -> Iterator[pitr.Recovered]:
    """Recover ``system`` at ``point`` into ``plan.data``, start it privately, wait for the end of replay, yield it;
    stop it after. If anything fails (here or in the block), what was written is removed and the error goes on."""
    connection, closed = pitr.prepare(system, point, backup_id)

    def fill() -> tuple[float, str, None]:
        return pitr.recover_into(system, point, backup_id, plan.data, closed=closed), connection.user, None

    with _privately(system, point, plan, fill, on_replay=on_replay) as (ready, _):
        yield ready


@contextlib.contextmanager
def shipped_privately(system, point, plan: HostPlan, receive) -> Iterator[tuple[pitr.Recovered, object]]:
    """Receive into ``plan.data`` the directory recovered and replayed on the Barman host (``receive(into)`` returns
    ``restores.shipping.Shipped``, whose summary names the server's user), start it privately, yield it and what
    was shipped; stop it after. If anything fails, what was written is removed and the error goes on."""

    def fill():
        began = time.monotonic()
        shipped = receive(plan.data)
        return time.monotonic() - began, shipped.summary.get("user") or "postgres", shipped

    with _privately(system, point, plan, fill) as found:
        yield found


@contextlib.contextmanager
def _privately(system, point, plan: HostPlan, fill, *, on_replay=None):
    """``fill()`` writes the cluster into ``plan.data`` (seconds, the user to connect as, anything for the caller);
    then the server is started privately (no TCP, its own socket and ``hba_file``), followed until promoted,
    yielded with what ``fill`` returned, and stopped after."""
    user = _as_user(plan.user)
    private = Path(tempfile.mkdtemp(prefix=f"drpanel-server-{system.name}-",
                                    dir=settings.RESTORE_TEMP_DIR or None))
    started = False
    try:
        if plan.create:
            plan.data.mkdir(mode=0o700)  # made now, private: nothing can be planted in it before Barman writes
        recover_seconds, user_name, filled = fill()
        with open(plan.data / "postgresql.auto.conf", "a") as conf:
            conf.write(f"\n# Set by DR Panel: the target's port.\nport = {plan.port}\n")
        (private / "pg_hba.conf").write_text("local all all trust\n")
        socket_dir = private / "socket"
        socket_dir.mkdir(mode=0o700)
        os.chmod(plan.data, 0o700)
        pitr._chown_tree(plan.data, user)
        pitr._chown_tree(private, user)
        # Read before the start: the server renames backup_label as soon as it has taken the backup's start from it.
        wal_start = pitr.backup_start(plan.data)
        last_commit = pitr.last_commit_in_wal(plan.data, wal_start) if point.kind == "latest" else None
        started = True
        start_seconds = pitr.start_private(plan.data, socket_dir=socket_dir, port=plan.port,
                                           log=private / "server.log", user=user,
                                           extra=f"-c hba_file='{private / 'pg_hba.conf'}'")
        ready = pitr.Recovered(system=system, point=point, data=plan.data, socket_dir=socket_dir, port=plan.port,
                               bindir=pitr._bindir(plan.data), user=user_name, recover_seconds=recover_seconds,
                               start_seconds=start_seconds, wal_start=wal_start,
                               wal_end=pitr.wal_end(system, plan.data), wal_last_commit=last_commit)
        pitr.wait_promoted(ready, point, on_replay=on_replay)
        yield ready, filled
        started = False
        pitr.stop_server(plan.data, user)
    except BaseException:
        if started:
            with contextlib.suppress(BarmanError, OSError):
                pitr.stop_server(plan.data, user)
        remove_written(plan)
        raise
    finally:
        shutil.rmtree(private, ignore_errors=True)


def go_live(plan: HostPlan) -> float:
    """Start the recovered server for real (its own configuration, the target's port); seconds taken.

    Refused, and what was written removed, if the port was taken during the recovery.
    """
    if port_in_use(plan.port):
        remove_written(plan)
        raise ServerTargetRefused(f"port {plan.port} was taken while the server was recovered: the recovered "
                                  "directory was removed, nothing else was touched")
    user = _as_user(plan.user)
    log = plan.data / "log" / "drpanel-start.log"
    log.parent.mkdir(exist_ok=True)
    pitr._chown_tree(log.parent, user)
    began = time.monotonic()
    try:
        done = pitr._run_as(user, [str(pitr._bindir(plan.data) / "pg_ctl"), "-D", str(plan.data), "-l", str(log),
                                   "-w", "-t", str(pitr.START_TIMEOUT), "start"], timeout=pitr.START_TIMEOUT + 30)
    except BarmanError:
        done = None
    if done is None or done.returncode != 0:
        tail = pitr._log_tail(log)
        with contextlib.suppress(BarmanError, OSError):
            pitr.stop_server(plan.data, user)
        remove_written(plan)
        raise ServerTargetRefused(f"the recovered server did not start on port {plan.port}: {tail}; the recovered "
                                  "directory was removed")
    return time.monotonic() - began
