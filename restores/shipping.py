"""Shipping a recovered data directory from the Barman host's worker to the target host's worker, through Redis.

Whole-server recovery onto another host: Barman recovers locally only, so the worker of the system's pool (the
host holding the Barman home) recovers into a scratch directory, and the run on the target's pool receives the
result. The sender streams a tar of the directory into the Redis list ``<prefix>ship:<run>`` in chunks of
``CHUNK_BYTES``, each one a line ``chunk <index> <sha256>`` then its bytes, and ends with
``end <chunks> <bytes> <sha256 of all>`` and a JSON summary (or ``error`` and a reason); while it is still
recovering it says ``alive`` every ``ALIVE_SECONDS``, so a sender that died is told from a slow one. No more than
``MAX_PENDING`` chunks wait in Redis: the sender waits for the receiver, so memory stays bounded on both sides.

While the sender's copy replays WAL, an ``alive`` line also carries where the replay stands, as one JSON word after
it: ``alive {"replayed": "0/5A000000", "start": ..., "end": ..., "fraction": 0.83, "in_recovery": true}`` (a
``restores.pitr.ReplayProgress``), said as soon as the position moves (at most every ``REPLAY_SAY_SECONDS``; the
end of the replay always) and repeated by every later ``alive``. The receiver hands it to ``on_replay``; a bare
``alive`` (a sender from before, or one not replaying yet) goes to ``on_alive`` as before, and a receiver from
before reads only the first word of the line, so both ends may be of either version. A progress that cannot be
read is logged and the line taken as a bare ``alive``: the replay is only shown, the chunks are what is checked.

The receiver checks every chunk as it arrives (its index follows the previous one, its SHA-256 matches) into a
file beside the target, then the end (count, bytes, overall SHA-256), and only then extracts it (no absolute
path, no ``..``, no link out: tarfile's ``data`` filter). Any mismatch, missing chunk or silent sender is
``ShipRefused``: nothing was extracted, the caller removes the target directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import pwd
import shutil
import socket
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from backups import barman
from drpanel import queues
from drpanel.beside import running_beside
from drpanel.scrub import scrub
from restores import pitr, wholeserver
from restores.models import RestoreRun

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
MAX_PENDING = 32
# How long the receiver waits for the next message, and the sender for room in the list.
IDLE_SECONDS = 300
ALIVE_SECONDS = 5
# A moving replay is said at most this often (the receiver saves it at most every 0.5 s anyway).
REPLAY_SAY_SECONDS = 0.5
# A channel nobody reads any more goes away on its own.
EXPIRE_SECONDS = 3600


class ShipRefused(Exception):
    """The shipped directory is refused (a checksum mismatch, a missing chunk, a silent or failed sender)."""


@dataclass(frozen=True)
class Shipped:
    """What went through the channel: the tar's size, its SHA-256, the chunks, and the sender's summary."""

    bytes: int
    sha256: str
    chunks: int
    summary: dict

    def as_dict(self) -> dict:
        return {"bytes": self.bytes, "sha256": self.sha256, "chunks": self.chunks}


def channel(run_id) -> str:
    """The Redis list one run's directory goes through (this installation's prefix: panels sharing a Redis never
    read each other's)."""
    return f"{settings.RQ_QUEUE_PREFIX}ship:{run_id}"


class _Chunks(io.RawIOBase):
    """A write-only stream that cuts what it is given into chunks and pushes each to the channel."""

    def __init__(self, connection, key: str, *, idle_seconds: float):
        self.connection, self.key, self.idle_seconds = connection, key, idle_seconds
        self.buffer = bytearray()
        self.index = 0
        self.total = 0
        self.digest = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.buffer += data
        while len(self.buffer) >= CHUNK_BYTES:
            self._push(bytes(self.buffer[:CHUNK_BYTES]))
            del self.buffer[:CHUNK_BYTES]
        return len(data)

    def _push(self, data: bytes) -> None:
        deadline = time.monotonic() + self.idle_seconds
        while self.connection.llen(self.key) >= MAX_PENDING:
            if time.monotonic() > deadline:
                raise ShipRefused(f"the receiver took nothing for {self.idle_seconds:.0f} s")
            time.sleep(0.05)
        header = f"chunk {self.index} {hashlib.sha256(data).hexdigest()}\n".encode()
        with self.connection.pipeline() as pipe:
            pipe.rpush(self.key, header + data)
            pipe.expire(self.key, EXPIRE_SECONDS)
            pipe.execute()
        self.index += 1
        self.total += len(data)
        self.digest.update(data)

    def finish(self, summary: dict) -> Shipped:
        if self.buffer:
            self._push(bytes(self.buffer))
            self.buffer.clear()
        shipped = Shipped(bytes=self.total, sha256=self.digest.hexdigest(), chunks=self.index, summary=summary)
        end = f"end {shipped.chunks} {shipped.bytes} {shipped.sha256}\n".encode() + json.dumps(summary).encode()
        with self.connection.pipeline() as pipe:
            pipe.rpush(self.key, end)
            pipe.expire(self.key, EXPIRE_SECONDS)
            pipe.execute()
        return shipped


def send(connection, key: str, root: Path, *, summary: dict, idle_seconds: float = IDLE_SECONDS) -> Shipped:
    """Stream a tar of the directory ``root`` (its contents, as ``.``) into ``key``; what was sent."""
    chunks = _Chunks(connection, key, idle_seconds=idle_seconds)
    with tarfile.open(fileobj=chunks, mode="w|") as archive:
        archive.add(str(root), arcname=".")
    return chunks.finish(summary)


def send_failure(connection, key: str, reason: str) -> None:
    """Tell the receiver the sender failed, and why (its reason names no secret)."""
    _push(connection, key, f"error\n{reason}".encode())


def _next(connection, key: str, idle_seconds: float):
    """The next message of ``key``, or None after ``idle_seconds`` of silence. Short waits: a blocking read longer
    than the connection's socket timeout would fail as a broken connection."""
    deadline = time.monotonic() + idle_seconds
    while (left := deadline - time.monotonic()) > 0:
        popped = connection.blpop([key], timeout=max(0.1, min(1.0, left)))
        if popped is not None:
            return popped
    return None


def receive(connection, key: str, into: Path, *, work: Path, idle_seconds: float | None = None,
            on_progress: Callable[[int], None] | None = None,
            on_alive: Callable[[str], None] | None = None,
            on_replay: Callable[[pitr.ReplayProgress], None] | None = None) -> Shipped:
    """Receive the directory sent through ``key``, check every chunk and the whole, then extract it into ``into``
    (which must exist and be empty). ``work``: where the checked tar waits (removed after); ``idle_seconds``: how
    long a silence is allowed (``IDLE_SECONDS``). While the sender recovers, ``on_replay`` hears where its WAL
    replay stands, ``on_alive`` what it says when it has no replay position to tell."""
    idle_seconds = IDLE_SECONDS if idle_seconds is None else idle_seconds
    held = work / f"{key.rsplit(':', 1)[-1]}.tar"
    digest, total, expected = hashlib.sha256(), 0, 0
    try:
        with open(held, "wb") as out:
            while True:
                popped = _next(connection, key, idle_seconds)
                if popped is None:
                    raise ShipRefused(f"chunk {expected} did not arrive in {idle_seconds:.0f} s")
                header, _, data = popped[1].partition(b"\n")
                words = header.decode(errors="replace").split()
                if words[:1] == ["alive"]:
                    # The sender is still recovering (Barman's copy, the WAL replay): nothing to check yet.
                    progress = _replay_said(header) if len(words) > 1 else None
                    if progress is not None and on_replay is not None:
                        on_replay(progress)
                    elif on_alive is not None:
                        on_alive(data.decode(errors="replace")[:200])
                    continue
                if words[:1] == ["error"]:
                    raise ShipRefused(f"the sender failed: {data.decode(errors='replace')[:500]}")
                if words[:1] == ["end"] and len(words) == 4:
                    count, size, whole = int(words[1]), int(words[2]), words[3]
                    if count != expected:
                        raise ShipRefused(f"{count - expected} chunks are missing: {expected} of {count} arrived")
                    if size != total or whole != digest.hexdigest():
                        raise ShipRefused("checksum mismatch of the whole directory: "
                                          f"{total} bytes, sha256 {digest.hexdigest()}; "
                                          f"the sender sent {size} bytes, sha256 {whole}")
                    summary = json.loads(data or b"{}")
                    break
                if words[:1] != ["chunk"] or len(words) != 3:
                    raise ShipRefused(f"chunk {expected} is not a chunk")
                index, sha = int(words[1]), words[2]
                if index != expected:
                    raise ShipRefused(f"chunk {expected} is missing (chunk {index} came next)")
                if hashlib.sha256(data).hexdigest() != sha:
                    raise ShipRefused(f"checksum mismatch in chunk {index}")
                out.write(data)
                digest.update(data)
                total += len(data)
                expected += 1
                if on_progress is not None:
                    on_progress(total)
        with tarfile.open(held, mode="r:") as archive:
            archive.extractall(into, filter="data")
    except (tarfile.TarError, ValueError, UnicodeDecodeError) as exc:
        raise ShipRefused(f"the shipped directory cannot be read: {exc}") from None
    finally:
        held.unlink(missing_ok=True)
        connection.delete(key)
    return Shipped(bytes=total, sha256=digest.hexdigest(), chunks=expected, summary=summary)


def _push(connection, key: str, message: bytes) -> None:
    with connection.pipeline() as pipe:
        pipe.rpush(key, message)
        pipe.expire(key, EXPIRE_SECONDS)
        pipe.execute()


def alive_message(what: str, progress: pitr.ReplayProgress | None = None) -> bytes:
    """An ``alive`` line saying ``what`` the sender does, with where its replay stands when it knows."""
    header = "alive" if progress is None else f"alive {json.dumps(progress.as_dict(), separators=(',', ':'))}"
    return f"{header}\n{what}".encode()


def _replay_said(header: bytes) -> pitr.ReplayProgress | None:
    """The ``ReplayProgress`` an ``alive`` line carries, or None (logged) when it cannot be read."""
    try:
        said = json.loads(header.partition(b" ")[2])
        progress = pitr.ReplayProgress(replayed=said["replayed"], start=said["start"], end=said["end"],
                                       fraction=float(said["fraction"]), in_recovery=said["in_recovery"])
        for lsn in (progress.replayed, progress.start, progress.end):
            pitr.lsn_value(lsn)
        if not 0 <= progress.fraction <= 1 or not isinstance(progress.in_recovery, bool):
            raise ValueError(f"fraction {progress.fraction}, in_recovery {progress.in_recovery!r}")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("a replay position the sender said cannot be read (%s): %r", exc, header[:300])
        return None
    return progress


@contextlib.contextmanager
def _saying_alive(connection, key: str, what: str):
    """``alive`` into the channel every ``ALIVE_SECONDS`` while the block runs; yields what to call with each
    ``ReplayProgress`` of the recovery, which is said at once (at most every ``REPLAY_SAY_SECONDS`` while it moves;
    its end always) and carried by every later ``alive``."""
    lock = threading.Lock()
    latest: list[pitr.ReplayProgress | None] = [None]
    said = [-REPLAY_SAY_SECONDS]

    # Both pushes hold the lock: a position said later never goes into the channel before an earlier one.
    def on_replay(progress: pitr.ReplayProgress) -> None:
        with lock:
            latest[0] = progress
            now = time.monotonic()
            if progress.in_recovery and now - said[0] < REPLAY_SAY_SECONDS:
                return
            said[0] = now
            _push(connection, key, alive_message(what, progress))

    def loop(stop: threading.Event) -> None:
        while not stop.wait(ALIVE_SECONDS):
            with lock:
                _push(connection, key, alive_message(what, latest[0]))

    with running_beside(loop, name=f"ship-alive-{key}"):
        yield on_replay


def ship_send(run_id, backup_id: str) -> Shipped | None:
    """On the Barman host's worker: recover the run's system at its point into a scratch directory (started
    privately, replayed until promoted, stopped cleanly), then send that directory to the run's receiver; what was
    sent, or None when the recovery failed (the receiver is told why)."""
    run = RestoreRun.objects.select_related("recovery_system").get(pk=run_id)
    system, point, key = run.recovery_system, run.recovery_point, channel(run.pk)
    connection = queues.get_connection()
    root = pitr.scratch_root(system, prefix=f"drpanel-ship-{run.pk}-")
    server_user = pitr._server_user()
    try:
        if server_user is not None:
            os.chown(root, server_user.pw_uid, server_user.pw_gid)  # the server's user creates the data directory
        # Barman reaches the system's server as this host sees it (its URL, resolved here), as a base backup does.
        barman.write_server(system)
        plan = wholeserver.HostPlan(data=root / "data", port=pitr._free_port(),
                                    user=server_user or pwd.getpwuid(os.geteuid()), create=True)
        with _saying_alive(connection, key, f"recovering {system.name} to {point} on {socket.gethostname()}") \
                as on_replay, wholeserver.recovered_privately(system, point, backup_id, plan,
                                                              on_replay=on_replay) as ready:
            last_commit = ready.query("SELECT pg_last_xact_replay_timestamp()")[0][0] or ready.wal_last_commit
            summary = {"user": ready.user, "replay_position": ready.replay_position(), "backup_id": backup_id,
                       "last_commit": last_commit.isoformat() if last_commit else None,
                       "recover_seconds": round(ready.recover_seconds, 3),
                       "start_seconds": round(ready.start_seconds, 3)}
        # Stopped cleanly after its promotion: the copy Barman made of the WAL to replay is not needed any more.
        shutil.rmtree(plan.data / "barman_wal", ignore_errors=True)
        return send(connection, key, plan.data, summary=summary)
    except Exception as exc:  # noqa: BLE001 - whatever stopped the sender, the receiver must hear it at once
        log.warning("shipping run %s: %s", run.pk, exc)
        send_failure(connection, key, scrub(str(exc))[:500])
        return None
    finally:
        shutil.rmtree(root, ignore_errors=True)
