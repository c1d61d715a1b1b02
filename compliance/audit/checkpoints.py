"""Signed checkpoints of the chain head, kept outside the database.

Someone who can write to the database could rewrite the whole audit table and recompute
every hash; the chain alone would still look intact. A checkpoint pins the head (``seq``,
``hash``, the event's time) with the panel's Ed25519 signature in a store the database
cannot reach, and ``audit_verify`` checks the chain against every checkpoint.

A checkpoint is a small JSON document (``compliance.audit.signing`` explains the signature)::

    {"type": "drpanel-audit-checkpoint", "v": 1, "seq": 1234, "hash": "…",
     "event_time": "2026-11-25T19:00:00.123456Z", "created_at": "…",
     "key_fingerprint": "…", "signature": "…"}

Stores are small classes (``CheckpointStore``): a directory now
(``DRPANEL_AUDIT_CHECKPOINT_DIR``); a storage location can be added by subclassing and
returning it from ``checkpoint_store()``.
"""

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from compliance.audit.models import AuditEvent
from compliance.audit.record import canonical_time
from compliance.audit.signing import check_signature, sign

CHECKPOINT_TYPE = "drpanel-audit-checkpoint"
logger = logging.getLogger(__name__)


class CheckpointStore:
    """Where checkpoints live. Names are unique; a stored checkpoint is never rewritten."""

    description = "checkpoint store"

    def put(self, name: str, data: bytes) -> str:
        """Store ``data`` under ``name``; return where it went (for messages)."""
        raise NotImplementedError

    def items(self) -> Iterator[tuple[str, bytes]]:
        """Every stored checkpoint as ``(name, data)``."""
        raise NotImplementedError

    def names(self) -> Iterator[str]:
        """The names of the stored checkpoints (a store may list them without reading them)."""
        for name, _ in self.items():
            yield name


class DirectoryCheckpointStore(CheckpointStore):
    """One JSON file per checkpoint in a directory (mount it from outside the database host)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.description = f"directory {self.path}"

    def put(self, name: str, data: bytes) -> str:
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / name
        # Written aside and renamed into place: a reader never sees half a checkpoint.
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".checkpoint-")
        try:
            os.fchmod(fd, 0o644)
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return str(target)

    def items(self) -> Iterator[tuple[str, bytes]]:
        for name in self.names():
            yield name, (self.path / name).read_bytes()

    def names(self) -> Iterator[str]:
        if self.path.is_dir():
            yield from sorted(path.name for path in self.path.glob("checkpoint-*.json"))


def checkpoint_store() -> CheckpointStore:
    """The configured store (``DRPANEL_AUDIT_CHECKPOINT_DIR``)."""
    return DirectoryCheckpointStore(settings.AUDIT_CHECKPOINT_DIR)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back from the store (its signature already checked)."""

    name: str
    seq: int
    hash: str
    event_time: str
    created_at: str
    key_fingerprint: str


@dataclass(frozen=True)
class BadCheckpoint:
    """A stored checkpoint that cannot be trusted: unreadable, or not signed by a known key."""

    name: str
    seq: int | None
    reason: str


def _name(seq: int, created_at) -> str:
    return f"checkpoint-{seq:015d}-{created_at.strftime('%Y%m%dT%H%M%S%fZ')}.json"


def checkpoint_write(*, store: CheckpointStore | None = None, force: bool = False) -> tuple[dict | None, str]:
    """Sign the current head and put it in the store; returns ``(checkpoint, message)``.

    Nothing is written when the log is empty, or (unless ``force``) when the newest
    checkpoint already pins the current head.
    """
    store = store or checkpoint_store()
    head = AuditEvent.objects.order_by("-seq").values("seq", "hash", "occurred_at").first()
    if head is None:
        return None, "The audit log is empty: there is no head to checkpoint yet."
    if not force:
        latest = max((_seq_from_name(name) or 0 for name in store.names()), default=0)
        if latest == head["seq"]:
            return None, f"The head (seq {head['seq']}) is already checkpointed."
    created_at = timezone.now()
    checkpoint = sign({
        "type": CHECKPOINT_TYPE,
        "v": 1,
        "seq": head["seq"],
        "hash": head["hash"],
        "event_time": canonical_time(head["occurred_at"]),
        "created_at": canonical_time(created_at),
    })
    data = json.dumps(checkpoint, sort_keys=True, indent=2).encode() + b"\n"
    where = store.put(_name(head["seq"], created_at), data)
    logger.info("audit checkpoint seq %s hash %s written to %s", head["seq"], head["hash"], where)
    return checkpoint, f"Checkpoint of seq {head['seq']} (hash {head['hash']}) written to {where}."


def _seq_from_name(name: str) -> int | None:
    parts = name.split("-")
    return int(parts[1]) if len(parts) >= 3 and parts[1].isdigit() else None


def checkpoints_load(keys: dict, store: CheckpointStore | None = None) -> tuple[list[Checkpoint], list[BadCheckpoint]]:
    """Every stored checkpoint, sorted by ``seq``: the trustworthy ones, and the others with why."""
    store = store or checkpoint_store()
    good, bad = [], []
    for name, data in store.items():
        try:
            document = json.loads(data)
            if not isinstance(document, dict) or document.get("type") != CHECKPOINT_TYPE:
                raise ValueError("not a checkpoint")
            seq = document["seq"]
            if not isinstance(seq, int) or not isinstance(document["hash"], str):
                raise ValueError("no seq or hash")
        except (ValueError, KeyError):
            bad.append(BadCheckpoint(name, _seq_from_name(name), "it is not a readable checkpoint"))
            continue
        problem = check_signature(document, keys)
        if problem:
            bad.append(BadCheckpoint(name, seq, problem))
            continue
        good.append(Checkpoint(name=name, seq=seq, hash=document["hash"], event_time=document.get("event_time", ""),
                               created_at=document.get("created_at", ""),
                               key_fingerprint=document["key_fingerprint"]))
    good.sort(key=lambda c: (c.seq, c.created_at))
    bad.sort(key=lambda b: (b.seq is None, b.seq or 0))
    return good, bad
