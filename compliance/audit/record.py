"""The audit log's one writer, ``audit_record``, and its canonical encoding.

Encoding, version 1 (documented in docs/auditor.md so anyone can recompute a hash):
the event is the JSON object with exactly these keys —
``v, seq, occurred_at, actor_id, actor_username, client_ip, user_agent, request_id,
action, object_type, object_id, object_repr, outcome, details, prev_hash`` —
serialised with sorted keys, no whitespace (separators ``,`` and ``:``), non-ASCII kept
as UTF-8, and ``occurred_at`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC. ``hash`` is the
lowercase hex SHA-256 of those bytes. The first event's ``prev_hash`` is 64 zeros.
docs/auditor.md's "Audit log" section spells out every rule, so any tool can recompute a hash.

Every stored value hashes the same after a round trip through PostgreSQL: texts lose NUL
characters and unpaired surrogates before they are hashed, ``client_ip`` is normalised
by PostgreSQL (``host(inet)``) under the chain lock, and ``details`` go through
``clean_details``.
"""

import hashlib
import ipaddress
import math
import re
from datetime import UTC, datetime

from django.contrib.auth.models import AnonymousUser
from django.db import connection, transaction
from django.utils import timezone

from compliance.audit.actions import AuditAction, check_action
from compliance.audit.canonical import canonical_bytes
from compliance.audit.models import AuditEvent
from drpanel.client_ip import client_address
from drpanel.context import current_request

ENCODING_VERSION = 1
GENESIS_HASH = "0" * 64
# Any number will do as long as every writer uses the same one.
CHAIN_LOCK_ID = 0x6472_7061_6E65_6C01 & 0x7FFF_FFFF_FFFF_FFFF
SYSTEM_ACTOR = "system"
ANONYMOUS_ACTOR = "anonymous"

_SECRET_KEY_PATTERN = re.compile(r"pass(word|phrase)?|secret|token|api[_-]?key|private|credential", re.I)
REDACTED = "[redacted]"


def canonical_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def clean_text(value, limit: int) -> str:
    """A text PostgreSQL stores and gives back unchanged: no NUL, no lone surrogate, trimmed."""
    text = ("" if value is None else str(value)).replace("\x00", "")
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:limit]


def event_fields(event: AuditEvent) -> dict:
    """The hashed fields of a stored event, in the version-1 form."""
    return {
        "v": ENCODING_VERSION,
        "seq": event.seq,
        "occurred_at": canonical_time(event.occurred_at),
        "actor_id": event.actor_id,
        "actor_username": event.actor_username,
        "client_ip": event.client_ip,
        "user_agent": event.user_agent,
        "request_id": event.request_id,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "object_repr": event.object_repr,
        "outcome": event.outcome,
        "details": event.details,
        "prev_hash": event.prev_hash,
    }


def compute_hash(fields: dict) -> str:
    return hashlib.sha256(canonical_bytes(fields)).hexdigest()


def clean_details(value, *, key: str = ""):
    """Make details JSON-stable (what PostgreSQL's jsonb gives back hashes the same) and secret-free."""
    # A yes/no ("usable_password": true) is not a secret; any other value under such a key may be.
    if key and _SECRET_KEY_PATTERN.search(key) and value not in (None, "", [], {}) and not isinstance(value, bool):
        return REDACTED
    if isinstance(value, dict):
        return {clean_text(k, 200): clean_details(v, key=str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        items = sorted(value, key=str) if isinstance(value, set) else value
        return [clean_details(v) for v in items]
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        # jsonb prints 1e16 and larger as plain integers; store them as integers already.
        if value.is_integer() and abs(value) >= 1e15:
            return int(value)
        # jsonb has no negative zero: -0.0 comes back as 0.0.
        return 0.0 if value == 0 else value
    if isinstance(value, datetime):
        return canonical_time(value)
    return clean_text(value, 10_000)


_FIELD_LIMITS = {"object_type": 100, "object_id": 64, "object_repr": 200}


def _object_fields(obj) -> dict:
    if obj is None:
        return {"object_type": "", "object_id": "", "object_repr": ""}
    meta = getattr(obj, "_meta", None)
    return {
        "object_type": meta.label_lower if meta else type(obj).__name__.lower(),
        "object_id": getattr(obj, "pk", "") or "",
        "object_repr": str(obj),
    }


def _client_ip(request) -> str | None:
    if request is None:
        return None
    # The same address the sign-in lockout counts (REMOTE_ADDR, or X-Forwarded-For behind the
    # configured number of proxies only).
    value = getattr(request, "client_ip", None) or client_address(request) or ""
    try:
        return str(ipaddress.ip_address(str(value).split("%", 1)[0]))
    except ValueError:
        return None


def _actor_username(actor, user, request) -> str:
    if user is not None:
        return user.get_username()
    # Nobody signed in: a web request comes from an anonymous visitor, anything else is the system.
    return getattr(actor, "username", "") or (ANONYMOUS_ACTOR if request is not None else SYSTEM_ACTOR)


# The chain lock, then under it the head and the client address as PostgreSQL will give it back: two
# statements in one round trip (the cursor binds on the client, so one execute may hold both). The second
# takes its own snapshot after the first has the lock, so it reads the head as the last holder committed it.
_LOCK_AND_HEAD_SQL = " ".join((
    "SELECT pg_advisory_xact_lock(%s);",
    "SELECT head.seq, head.hash, host(%s::inet) FROM (SELECT 1) AS one LEFT JOIN (SELECT seq, hash FROM",
    AuditEvent._meta.db_table,
    "ORDER BY seq DESC LIMIT 1) AS head ON true",
))


def audit_record(
    *,
    actor,
    action: AuditAction | str,
    obj=None,
    outcome: str = AuditEvent.Outcome.SUCCESS,
    details: dict | None = None,
    request=None,
    object_type: str | None = None,
    object_id: str | None = None,
    object_repr: str | None = None,
) -> AuditEvent:
    """Append one event to the chain, inside the caller's transaction.

    Appends are serialised by a transaction-level advisory lock held until the caller
    commits, so concurrent writers keep one linear, gapless chain. If this fails, the
    exception propagates and the caller's change rolls back with it (fail closed).
    ``action`` must be declared in ``compliance.audit.actions`` (else ``UnknownAuditAction``).
    """
    action = check_action(action)
    if outcome not in AuditEvent.Outcome.values:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    request = request if request is not None else current_request()
    user = actor if actor is not None and not isinstance(actor, AnonymousUser) else None
    fields = _object_fields(obj)
    for name, value in (("object_type", object_type), ("object_id", object_id), ("object_repr", object_repr)):
        if value is not None:
            fields[name] = value
    fields = {name: clean_text(value, _FIELD_LIMITS[name]) for name, value in fields.items()}
    details = clean_details(details or {})
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(_LOCK_AND_HEAD_SQL, [CHAIN_LOCK_ID, _client_ip(request)])
            cursor.nextset()
            head_seq, head_hash, client_ip = cursor.fetchone()
        seq, prev_hash = (head_seq + 1, head_hash) if head_seq is not None else (1, GENESIS_HASH)
        event = AuditEvent(
            seq=seq,
            occurred_at=timezone.now(),
            actor=user,
            actor_username=clean_text(_actor_username(actor, user, request), 150),
            client_ip=client_ip,
            user_agent=clean_text(request.META.get("HTTP_USER_AGENT", "") if request is not None else "", 200),
            request_id=clean_text(getattr(request, "request_id", "") if request is not None else "", 64),
            action=clean_text(action, 100),
            outcome=str(outcome),
            details=details,
            prev_hash=prev_hash,
            **fields,
        )
        event.hash = compute_hash(event_fields(event))
        event.save(force_insert=True)
    return event
