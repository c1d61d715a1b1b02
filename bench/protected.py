"""What the continuous-protection benchmark drives: a PostgreSQL server of its own, and where Barman's WAL is.

``Server`` runs ``initdb`` as the ``postgres`` user (initdb and postgres refuse root) into a
temporary directory and starts it on a free port, configured for streaming (``wal_level =
replica``, WAL senders, slots, a ``replication`` line in ``pg_hba.conf``), with PostgreSQL's
defaults otherwise (``fsync`` stays on: these are timings). The panel's own server is never
the one measured. ``stop()`` stops it and removes its directory.

``written_lsn(directory)`` is the WAL position Barman's receiver has written into a server's
``streaming/`` (and ``wals/``) directory: past every complete segment, and, in the newest
``.partial`` one (``pg_receivewal`` fills it with zeros first, then writes the WAL as it
arrives), up to the end of the WAL in the last page whose header names its own position. It reads
what is on disk (the page cache), so it does not wait for the receiver's status messages to
the server (every 10 s by default) the way ``pg_stat_replication`` does.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import struct
import subprocess
import tempfile
from pathlib import Path

SEGMENT_SIZE = 16 * 1024 * 1024
PAGE_SIZE = 8192
SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$")


def bindir() -> Path:
    from drpanel import pgbin

    tools = pgbin.candidates("pg_ctl")
    if not tools:
        raise SystemExit("no PostgreSQL server binaries (pg_ctl) on this machine: set PG_BIN_DIR")
    return Path(tools[0].path).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_user() -> pwd.struct_passwd | None:
    """Who runs the benchmark's servers: this user, or ``postgres`` when the benchmark runs as root."""
    return pwd.getpwnam("postgres") if os.geteuid() == 0 else None


def as_server_user(command: list[str], *, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    user = server_user()

    def demote():
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    done = subprocess.run(command, preexec_fn=demote if user else None, capture_output=True, text=True,
                          timeout=timeout, cwd="/", env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
    if check and done.returncode != 0:
        raise SystemExit(f"{Path(command[0]).name} failed: {(done.stderr or done.stdout).strip()[-600:]}")
    return done


def chown_tree(root: Path) -> None:
    user = server_user()
    if user is None:
        return
    for directory, _dirs, files in os.walk(root):
        os.chown(directory, user.pw_uid, user.pw_gid)
        for name in files:
            os.lchown(os.path.join(directory, name), user.pw_uid, user.pw_gid)


class Server:
    """One PostgreSQL server of the benchmark's own, in a temporary directory, on a free port."""

    def __init__(self, parent: Path | None = None):
        self.bin = bindir()
        self.root = Path(tempfile.mkdtemp(prefix="server-", dir=parent))
        self.data = self.root / "data"
        self.port = free_port()
        chown_tree(self.root)
        as_server_user([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E",
                        "UTF8"])
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       "unix_socket_directories = ''\nwal_level = replica\nmax_wal_senders = 10\n"
                       "max_replication_slots = 10\n"
                       "shared_buffers = 128MB\nmax_wal_size = 2GB\n")
        (self.data / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n"
                                               "host replication all 127.0.0.1/32 trust\n")
        self.started = False
        done = as_server_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w",
                               "start"], check=False)
        if done.returncode != 0:
            tail = (self.root / "log").read_text()[-1500:] if (self.root / "log").exists() else "no log"
            shutil.rmtree(self.root, ignore_errors=True)
            raise SystemExit(f"the benchmark's PostgreSQL server did not start on port {self.port}: {tail}")
        self.started = True

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, autocommit=True)

    def execute(self, sql: str, dbname: str = "postgres"):
        with self.connect(dbname) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else None

    def tool(self, name: str) -> str:
        return str(self.bin / name)

    def stop(self) -> None:
        if self.started:
            with contextlib.suppress(SystemExit, subprocess.TimeoutExpired):
                as_server_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                               timeout=120)
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


def parse_lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def segment_start(name: str) -> int:
    """The WAL position where a segment file (``TTTTTTTTXXXXXXXXYYYYYYYY``) begins."""
    match = SEGMENT.match(name)
    if not match:
        raise ValueError(name)
    per_log = 0x100000000 // SEGMENT_SIZE
    return (int(match[2], 16) * per_log + int(match[3], 16)) * SEGMENT_SIZE


def _page_holds(handle, start: int, index: int) -> bool:
    """Whether page ``index`` of a segment beginning at ``start`` has been written (its header names it)."""
    handle.seek(index * PAGE_SIZE + 8)  # xlp_magic (2), xlp_info (2), xlp_tli (4), then xlp_pageaddr (8)
    raw = handle.read(8)
    return len(raw) == 8 and struct.unpack("<Q", raw)[0] == start + index * PAGE_SIZE


def partial_written(path: Path, start: int) -> int:
    """How far a ``.partial`` segment has been written (``start`` when not at all).

    The last page whose header names its own position is found by bisection; in it, the WAL ends after its last
    byte that is not zero, rounded up to 8 bytes (records are 8-byte aligned, their padding is zeros). A record
    whose own last bytes are zeros (a page image of a mostly empty page) makes this fall short of the real end
    until the next record arrives: a lag measured with it errs on the high side.
    """
    with open(path, "rb") as handle:
        if not _page_holds(handle, start, 0):
            return start
        low, high = 0, SEGMENT_SIZE // PAGE_SIZE - 1  # page ``low`` is written; find the last one that is
        while low < high:
            middle = (low + high + 1) // 2
            if _page_holds(handle, start, middle):
                low = middle
            else:
                high = middle - 1
        handle.seek(low * PAGE_SIZE)
        used = len(handle.read(PAGE_SIZE).rstrip(b"\0"))
        return start + low * PAGE_SIZE + (used + 7) // 8 * 8


def written_lsn(server_home: Path) -> int:
    """The WAL position Barman holds for a server (0 when nothing yet): see the module's docstring."""
    best = 0
    paths = [*(server_home / "streaming").glob("*"), *(server_home / "wals").glob("*/*")]
    for path in paths:
        name = path.name.split(".")[0]
        if not SEGMENT.match(name):
            continue
        start = segment_start(name)
        if path.name.endswith(".partial"):
            if start + SEGMENT_SIZE <= best:
                continue
            try:
                best = max(best, partial_written(path, start))
            except FileNotFoundError:  # renamed between the listing and the reading: it is complete
                best = max(best, start + SEGMENT_SIZE)
        else:
            best = max(best, start + SEGMENT_SIZE)
    return best


# --- what an interrupted run left ---------------------------------------------------------------

LEFTOVER_PREFIX = "drp-bench-cont-"


def _processes_under(prefix: str) -> list:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid != os.getpid() and any(prefix in arg for arg in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def stop_receivers(work: Path) -> int:
    """Kill Barman's receivers of the benchmark's Barman home (``barman cron`` starts them in the background)."""
    import psutil

    victims = [p for p in _processes_under(str(work)) if any(
        "receive-wal" in arg or "pg_receivewal" in arg for arg in p.info["cmdline"])]
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(victims, timeout=10)
    return len(victims)


def clear_leftovers(tag: str, keep: Path) -> int:
    """Stop the servers and receivers an interrupted run of this benchmark (same panel database) left, and remove
    its directories; nothing of another benchmark or installation (their directories are named otherwise)."""
    import psutil

    base = Path(tempfile.gettempdir())
    leftovers = [path for path in base.glob(f"{LEFTOVER_PREFIX}{tag}-*") if path != keep]
    victims = [proc for path in leftovers for proc in _processes_under(str(path) + "/")]
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(victims, timeout=30)
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return len(victims)
