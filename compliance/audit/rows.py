"""Audit rows as PostgreSQL streams them, and the scan that checks them. No Django here.

Verification of a long chain runs in several processes, each on one range of ``seq``
(``compliance.audit.verify``); they import only this module, psycopg and the standard
library (and ``compliance.audit.canonical``), so they start in a fraction of a second.
"""

import hashlib
import json
import queue
import threading
from dataclasses import dataclass
from json.encoder import encode_basestring

import psycopg

from compliance.audit.canonical import canonical_json

TABLE = "compliance_auditevent"
# The hashed fields, each already in its canonical text form, then the stored hash.
ROW_SQL = (
    "seq, to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), actor_id, "
    "actor_username, host(client_ip), user_agent, request_id, action, object_type, object_id, "
    "object_repr, outcome, details::text, prev_hash, hash"
)
ROW_FIELDS = ("seq", "occurred_at", "actor_id", "actor_username", "client_ip", "user_agent", "request_id",
              "action", "object_type", "object_id", "object_repr", "outcome", "details", "prev_hash", "hash")

# Rows per FETCH for verification: large enough that round trips do not count (three batches,
# ``Prefetched``'s most, are about 30 MiB of rows).
FETCH_ROWS = 5_000

MISSING_SEQ = "missing seq"
HASH_MISMATCH = "hash mismatch"
PREV_HASH_MISMATCH = "prev_hash mismatch"
CHECKPOINT_MISMATCH = "checkpoint mismatch"

# details::text parsed by json's scanner called directly: json.loads wraps it in Python,
# which costs as much again at a million rows. Same values either way.
_SCAN = json.JSONDecoder().scan_once


def _details_json(text: str) -> str:
    # details::text of a jsonb object starts with "{" and has nothing after its end.
    return canonical_json(_SCAN(text, 0)[0]) if text != "{}" else "{}"


def canonical_line(row) -> str:
    """The version-1 canonical encoding of a streamed row (what ``compliance.audit`` hashes).

    Written out key by key in sorted order: ~40 % faster than building and sorting a dict,
    which matters at a million rows. ``tests/compliance/test_audit_chain.py`` pins both to the same bytes.
    """
    e = encode_basestring
    (seq, occurred_at, actor_id, actor_username, client_ip, user_agent, request_id, action,
     object_type, object_id, object_repr, outcome, details, prev_hash, _hash) = row
    return (
        f'{{"action":{e(action)},"actor_id":{"null" if actor_id is None else actor_id},'
        f'"actor_username":{e(actor_username)},"client_ip":{"null" if client_ip is None else e(client_ip)},'
        f'"details":{_details_json(details)},"object_id":{e(object_id)},"object_repr":{e(object_repr)},'
        f'"object_type":{e(object_type)},"occurred_at":"{occurred_at}","outcome":{e(outcome)},'
        f'"prev_hash":{e(prev_hash)},"request_id":{e(request_id)},"seq":{seq},"user_agent":{e(user_agent)},'
        f'"v":1}}'
    )


def short(value: str | None) -> str:
    return f"{value[:16]}…" if value else "nothing"


@dataclass
class Scan:
    """What one pass over consecutive rows found: how far it got, and its first problem."""

    count: int = 0
    first_seq: int | None = None
    first_prev_hash: str | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    problem: tuple[int, str, str] | None = None  # (seq, reason, detail)


def scan(rows, *, expected: int, prev_hash: str | None, checkpoints: dict[int, list[tuple[str, str, str]]]) -> Scan:
    """Check rows in ``seq`` order from ``expected`` on, stopping at the first problem.

    ``prev_hash`` is what the first row must link to, or ``None`` when the caller checks
    that link itself (a range that starts in the middle of the chain). ``checkpoints`` maps
    a ``seq`` to the ``(name, hash, signed at)`` of the checkpoints pinning it.
    """
    result = Scan()
    sha256, line, pinned_at = hashlib.sha256, canonical_line, checkpoints.get
    count, last_seq, last_hash = 0, None, None  # locals: this loop runs a million times
    for row in rows:
        seq, stored_hash = row[0], row[14]
        if result.first_seq is None:
            result.first_seq, result.first_prev_hash = seq, row[13]
        if seq != expected:
            result.problem = (expected, MISSING_SEQ, (
                f"seq {expected:,} is missing: the event after seq {expected - 1:,} is seq {seq:,}"
                if expected > 1 else f"the chain starts at seq {seq:,}, not 1"))
            break
        if sha256(line(row).encode()).hexdigest() != stored_hash:
            result.problem = (seq, HASH_MISMATCH, (
                f"the fields of seq {seq:,} no longer give its stored hash {short(stored_hash)}: "
                "the event was edited or moved"))
            break
        if prev_hash is not None and row[13] != prev_hash:
            result.problem = (seq, PREV_HASH_MISMATCH, prev_hash_detail(seq, row[13], prev_hash))
            break
        pins = pinned_at(seq)
        if pins:
            mismatch = next((pin for pin in pins if pin[1] != stored_hash), None)
            if mismatch is not None:
                name, pinned, signed_at = mismatch
                result.problem = (seq, CHECKPOINT_MISMATCH, (
                    f"checkpoint {name} (signed {signed_at}) pins seq {seq:,} to hash {short(pinned)} but the table "
                    f"has {short(stored_hash)}: the log was rewritten at or before seq {seq:,}"))
                break
        count += 1
        last_seq, last_hash = seq, stored_hash
        expected, prev_hash = seq + 1, stored_hash
    result.count, result.last_seq, result.last_hash = count, last_seq, last_hash
    return result


class Prefetched:
    """A server-side cursor's rows, ``size`` at a time, the next batch fetched on a thread while this one is used.

    A ``FETCH`` makes PostgreSQL compute its rows only when asked: fetched in turn, the
    server's formatting and this process's hashing add up; here they overlap (psycopg
    releases the GIL while it waits). At most ``depth`` batches wait (and one is being fetched),
    so memory stays flat.
    ``close()`` stops the thread; call it before the cursor closes.
    """

    def __init__(self, cursor, size: int, depth: int = 1):
        self._batches: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fetch, args=(cursor, size), daemon=True,
                                        name="audit-prefetch")
        self._thread.start()

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._batches.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _fetch(self, cursor, size: int) -> None:
        try:
            while not self._stop.is_set():
                rows = cursor.fetchmany(size)
                self._put(rows)
                if not rows:
                    return
        except BaseException as exc:  # handed to the reader, raised there
            self._put(exc)

    def __iter__(self):
        while True:
            batch = self._batches.get()
            if isinstance(batch, BaseException):
                raise batch
            if not batch:
                return
            yield from batch

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def prev_hash_detail(seq: int, linked: str, previous: str) -> str:
    return (f"seq {seq:,} links to {short(linked)} but seq {seq - 1:,} has hash {short(previous)}: "
            f"seq {seq - 1:,} was altered")


def scan_range(conninfo: dict, low: int, high: int, checkpoints: dict) -> Scan:
    """A worker process's share: rows ``low < seq <= high``, on its own connection."""
    with psycopg.connect(**conninfo) as conn, conn.transaction(), conn.cursor(name="audit_range") as cursor:
        cursor.execute(f"SELECT {ROW_SQL} FROM {TABLE} WHERE seq > %s AND seq <= %s ORDER BY seq",  # noqa: S608
                       (low, high))
        rows = Prefetched(cursor, FETCH_ROWS)
        try:
            return scan(rows, expected=low + 1, prev_hash=None, checkpoints=checkpoints)
        finally:
            rows.close()
