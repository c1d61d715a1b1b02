"""The demo's protected PostgreSQL: its own instance under ``var/demo/pg``, never the panel's server.

``manage.py serve --demo`` starts it before the demo is seeded and stops it when the panel
stops. It is set up the way the system page asks a real server to be for continuous
protection: ``wal_level = replica``, WAL senders and replication slots, and ``pg_hba.conf``
lines for the replication protocol from 127.0.0.1, with a password (SCRAM) that lives only
in a 0600 file under ``var/demo/secrets``; its Unix socket is in a private directory.

PostgreSQL refuses to run as root: a root panel runs it as the ``postgres`` user. Its port is
``DRPANEL_DEMO_PG_PORT`` when set, else the one it had last time when still free, else a free
one; ``server.json`` beside the data directory says where it runs, so the seed, the workers and
the demo writer find it without flags.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from backups.errors import BackupError
from drpanel import pgbin

SUPERUSER = "postgres"
SETTINGS = ("listen_addresses = '127.0.0.1'", "wal_level = replica", "max_wal_senders = 10",
            "max_replication_slots = 10", "shared_buffers = 32MB", "log_min_messages = warning")
HBA = ("local all all peer", "host all all 127.0.0.1/32 scram-sha-256",
       "host replication all 127.0.0.1/32 scram-sha-256")
SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")


class DemoServerError(BackupError):
    """The demo's PostgreSQL could not be found, created or started; one line that says what to do."""


def root_dir() -> Path:
    return Path(settings.VAR_DIR) / "demo" / "pg"


def _state_path() -> Path:
    return root_dir() / "server.json"


def _password_path() -> Path:
    return Path(settings.VAR_DIR) / "demo" / "secrets" / "demo-pg-password"


@dataclass(frozen=True)
class DemoServer:
    """Where the demo's PostgreSQL runs: its port, its bindir, the OS user that runs it."""

    port: int
    bindir: str
    os_user: str

    def url(self, dbname: str = "postgres") -> str:
        """The libpq URL of ``dbname`` on it, with the superuser's password (handle as a secret)."""
        password = _password_path().read_text().strip()
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{self.port}/{dbname}"


def server_bindir(dirs: list[str] | None = None) -> Path:
    """The newest directory holding initdb, pg_ctl and postgres (PG_BIN_DIR first, as for the client tools)."""
    for directory in dirs if dirs is not None else pgbin.candidate_dirs():
        if all(os.access(os.path.join(directory, tool), os.X_OK) for tool in SERVER_TOOLS):
            return Path(directory)
    raise DemoServerError("the demo's protected database needs PostgreSQL's server programs (initdb, pg_ctl, "
                          "postgres) and none were found: install the postgresql package, or "
                          "pip install -e '.[embedded]', or set PG_BIN_DIR to their directory")


def _os_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise DemoServerError("the panel runs as root and PostgreSQL refuses to: create a 'postgres' user "
                              "(useradd --system postgres) or run the panel as another user") from None


def _run_as(user: pwd.struct_passwd, command: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    def demote():
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    as_other = user.pw_uid != os.geteuid()
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd="/",
                              preexec_fn=demote if as_other else None,  # noqa: PLW1509 - setuid only
                              env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
    except subprocess.TimeoutExpired:
        raise DemoServerError(f"{Path(command[0]).name} did not finish in {timeout} s") from None


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _choose_port() -> int:
    configured = settings.DEMO_PG_PORT
    if configured:
        if not _free(configured):
            raise DemoServerError(f"DRPANEL_DEMO_PG_PORT={configured}: something else listens on that port")
        return configured
    with contextlib.suppress(OSError, ValueError, KeyError):
        previous = int(json.loads(_state_path().read_text())["port"])
        if _free(previous):
            return previous
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _postmaster_pid() -> int | None:
    try:
        pid = int((root_dir() / "data" / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def created() -> bool:
    """Whether the demo's PostgreSQL was ever created here (its data directory exists)."""
    return (root_dir() / "data" / "PG_VERSION").exists()


def running() -> DemoServer | None:
    """The demo's PostgreSQL when it runs (started by this or another process of the panel), else None."""
    try:
        state = json.loads(_state_path().read_text())
    except (OSError, ValueError):
        return None
    if _postmaster_pid() is None or not _password_path().exists():
        return None
    return DemoServer(port=int(state["port"]), bindir=state["bindir"], os_user=state["os_user"])


def _initdb(user: pwd.struct_passwd, bindir: Path) -> None:
    root, data = root_dir(), root_dir() / "data"
    password = _password_path()
    password.parent.mkdir(parents=True, exist_ok=True)
    password.parent.chmod(0o700)
    if not password.exists():
        fd = os.open(password, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(18))
    # initdb reads the password from a file only its user can read, removed right after.
    pwfile = root / "initdb-password"
    shutil.copyfile(password, pwfile)
    os.chown(pwfile, user.pw_uid, user.pw_gid)
    pwfile.chmod(0o600)
    try:
        done = _run_as(user, [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--pwfile", str(pwfile),
                              "--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions"])
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        raise DemoServerError(f"initdb of the demo's PostgreSQL failed: {done.stderr.strip()[-300:]}")
    with open(data / "postgresql.conf", "a") as conf:
        conf.write("\n# The DR Panel demo: a protected server, streamed by Barman.\n" + "\n".join(SETTINGS) + "\n")
    (data / "pg_hba.conf").write_text("\n".join(HBA) + "\n")
    os.chown(data / "pg_hba.conf", user.pw_uid, user.pw_gid)


def start() -> DemoServer:
    """Create (first time) and start the demo's PostgreSQL, or find it running; where it runs."""
    found = running()
    if found is not None:
        return found
    bindir = server_bindir()
    user = _os_user()
    port = _choose_port()
    root = root_dir()
    root.mkdir(parents=True, exist_ok=True)
    os.chown(root, user.pw_uid, user.pw_gid)
    if _run_as(user, ["test", "-w", str(root)]).returncode != 0:
        raise DemoServerError(f"the user {user.pw_name!r} that runs the demo's PostgreSQL cannot reach {root} (a "
                              "parent directory is closed to it): set DRPANEL_VAR_DIR to a directory it can reach")
    if not (root / "data" / "PG_VERSION").exists():
        _initdb(user, bindir)
    sockets = root / "socket"
    sockets.mkdir(mode=0o700, exist_ok=True)
    os.chown(sockets, user.pw_uid, user.pw_gid)
    done = _run_as(user, [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "server.log"), "-w",
                          "-t", "60", "-o", f"-p {port} -c unix_socket_directories='{sockets}'", "start"])
    if done.returncode != 0:
        raise DemoServerError(f"the demo's PostgreSQL did not start (see {root / 'server.log'}): "
                              f"{done.stderr.strip()[-300:]}")
    state = {"port": port, "bindir": str(bindir), "os_user": user.pw_name}
    _state_path().write_text(json.dumps(state, indent=2))
    return DemoServer(port=port, bindir=str(bindir), os_user=user.pw_name)


def stop(*, receivers: list[int] = ()) -> None:
    """Stop the demo's PostgreSQL (fast shutdown), and the WAL receivers given (Barman's, streaming from it)."""
    for pid in receivers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    found = running()
    if found is None:
        return
    pid = _postmaster_pid()
    _run_as(pwd.getpwnam(found.os_user), [str(Path(found.bindir) / "pg_ctl"), "-D", str(root_dir() / "data"),
                                          "-m", "fast", "-w", "-t", "60", "stop"])
    deadline = time.monotonic() + 30
    while pid and _postmaster_pid() and time.monotonic() < deadline:
        time.sleep(0.1)
