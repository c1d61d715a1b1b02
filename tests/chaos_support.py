"""Helpers of the fault campaign (``make chaos``): kill a process tree, drop Redis, fill a disk, break S3.

Everything stays on this machine: the proxy listens on 127.0.0.1 and forwards to the local moto
server; the Redis "restart" drops only this test run's database and connections; the full disk
is a tmpfs (or a loop-mounted image) of a few hundred kilobytes.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest


def kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and every descendant (an RQ worker, its work horse, the horse's pg_dump)."""
    root = psutil.Process(pid)
    victims = [*root.children(recursive=True), root]
    for proc in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(victims, timeout=10)
    return [p.pid for p in victims]


def restart_redis_database(conn) -> int:
    """What a Redis restart without persistence does to us: every connection to our database is
    dropped and its data is gone. Other databases of the shared server are left alone."""
    db = conn.connection_pool.connection_kwargs.get("db", 0)
    own = conn.client_id()
    killed = 0
    for client in conn.client_list():
        if int(client.get("db", -1)) == db and int(client["id"]) != own:
            with contextlib.suppress(Exception):
                conn.client_kill_filter(_id=client["id"])
                killed += 1
    conn.flushdb()
    return killed


@contextlib.contextmanager
def small_filesystem(where: Path, size_kb: int):
    """A size-limited filesystem mounted at ``where``: tmpfs, else a loop-mounted ext2 image; skips
    the test (saying why) when this machine allows neither."""
    where.mkdir(parents=True, exist_ok=True)
    image = where.with_suffix(".img")
    tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0700", "tmpfs", str(where)],
                           capture_output=True, text=True)
    if tmpfs.returncode != 0:
        with open(image, "wb") as handle:
            handle.truncate(size_kb * 1024)
        mkfs = shutil.which("mkfs.ext2")
        made = subprocess.run([mkfs, "-q", "-F", str(image)], capture_output=True, text=True) if mkfs else None
        mounted = made is not None and made.returncode == 0 and subprocess.run(
            ["mount", "-o", "loop", str(image), str(where)], capture_output=True, text=True).returncode == 0
        if not mounted:
            image.unlink(missing_ok=True)
            loop = made.stderr.strip() if made else "no mkfs.ext2"
            pytest.skip(f"no size-limited filesystem can be mounted here (tmpfs: {tmpfs.stderr.strip()}; loop "
                        f"image: {loop or 'the mount was refused'}); run `make chaos` as root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        image.unlink(missing_ok=True)


def fill(where: Path, leave_bytes: int) -> Path:
    """Fill a filesystem until about ``leave_bytes`` are free."""
    free = os.statvfs(where).f_bavail * os.statvfs(where).f_frsize
    ballast = where / "ballast"
    with open(ballast, "wb") as handle:
        handle.write(b"\0" * max(0, free - leave_bytes))
    return ballast


class FaultyProxy:
    """A TCP proxy on 127.0.0.1 in front of an HTTP endpoint (the moto S3 server).

    ``mode``: ``pass`` forwards; ``slow`` waits ``delay`` seconds before forwarding each chunk;
    ``stall`` accepts connections and never answers. ``stop()`` closes the port: the endpoint is down.
    """

    def __init__(self, upstream: str, *, mode: str = "pass", delay: float = 0.0):
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.mode = mode
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.closing = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(client)
            if self.mode == "stall":
                continue  # accepted, read by nobody, answered never
            upstream = socket.create_connection(self.upstream)
            self.sockets.append(upstream)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket):
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if self.mode == "slow":
                    time.sleep(self.delay)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def stop(self):
        self.closing.set()
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
