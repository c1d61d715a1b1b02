"""Verification of the audit chain: recompute every hash, follow every link, match every checkpoint.

``verify_chain()`` reads the table in ``seq`` order through a server-side cursor and stops
at the first broken ``seq``, naming why:

- ``missing seq`` — a ``seq`` is absent (an event was deleted), or the chain ends before a
  checkpoint's ``seq`` (the newest events were truncated);
- ``hash mismatch`` — an event's fields no longer give its stored hash (it was edited, or
  moved to another ``seq``);
- ``prev_hash mismatch`` — an event does not link to the one before it (that one was
  edited and its hash recomputed);
- ``checkpoint mismatch`` — the table's hash at a checkpointed ``seq`` differs from the
  signed checkpoint (the table was rewritten consistently), or a checkpoint in the store is
  unreadable or not signed by a known key.

``audit_verify(actor=…)`` is the audited service behind ``manage.py audit_verify`` and the
auditors' button.
"""

import hashlib
import time
from dataclasses import asdict, dataclass, field

from django.db import transaction

from compliance.audit import GENESIS_HASH, audit_record
from compliance.audit_query import canonical_line, event_rows
from compliance.checkpoints import Checkpoint, checkpoint_store, checkpoints_load
from compliance.signing import known_public_keys

MISSING_SEQ = "missing seq"
HASH_MISMATCH = "hash mismatch"
PREV_HASH_MISMATCH = "prev_hash mismatch"
CHECKPOINT_MISMATCH = "checkpoint mismatch"


@dataclass
class VerificationResult:
    """What a verification found: OK with the count and head, or the first broken ``seq`` and why."""

    ok: bool
    count: int
    head_seq: int | None
    head_hash: str | None
    checkpoints: int
    broken_seq: int | None = None
    reason: str = ""
    detail: str = ""
    seconds: float = 0.0
    latest_checkpoint: dict = field(default_factory=dict)

    def summary(self) -> str:
        rate = f"{self.count / self.seconds:,.0f} events/s" if self.seconds > 0 and self.count >= 10_000 else ""
        if self.ok:
            if self.count == 0:
                return f"OK: the audit log is empty; {self.checkpoints} checkpoint(s) checked."
            return (f"OK: {self.count:,} events, seq 1–{self.head_seq:,}, head hash {self.head_hash}; "
                    f"{self.checkpoints} checkpoint(s) match"
                    f"; {self.seconds:.2f} s" + (f", {rate}" if rate else "") + ".")
        where = f"seq {self.broken_seq:,}" if self.broken_seq is not None else "the checkpoint store"
        return f"BROKEN at {where}: {self.reason} — {self.detail}"

    def as_details(self) -> dict:
        """The result as recorded in the ``audit.verified`` event."""
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        return data


class _Broken(Exception):
    def __init__(self, seq: int | None, reason: str, detail: str):
        super().__init__(detail)
        self.seq, self.reason, self.detail = seq, reason, detail


def _short(value: str | None) -> str:
    return f"{value[:16]}…" if value else "nothing"


def verify_chain(*, keys: dict | None = None, store=None) -> VerificationResult:
    """Recompute the whole chain and check it against every stored checkpoint (not audited)."""
    started = time.monotonic()
    keys = keys if keys is not None else known_public_keys()
    checkpoints, bad_checkpoints = checkpoints_load(keys, store or checkpoint_store())
    by_seq: dict[int, list[Checkpoint]] = {}
    for checkpoint in checkpoints:
        by_seq.setdefault(checkpoint.seq, []).append(checkpoint)
    first_bad = bad_checkpoints[0] if bad_checkpoints else None
    # A bad checkpoint is reported at its seq, unless the chain breaks earlier.
    stop_at = first_bad.seq if first_bad and first_bad.seq is not None else None

    count, expected, prev_hash, last_good_checkpoint = 0, 1, GENESIS_HASH, None
    sha256 = hashlib.sha256
    try:
        with event_rows() as rows:
            for row in rows:
                seq, stored_hash = row[0], row[14]
                if stop_at is not None and seq >= stop_at:
                    break
                if seq != expected:
                    raise _Broken(expected, MISSING_SEQ, (
                        f"seq {expected:,} is missing: the event after seq {expected - 1:,} is seq {seq:,}"
                        if expected > 1 else f"the chain starts at seq {seq:,}, not 1"))
                if sha256(canonical_line(row).encode()).hexdigest() != stored_hash:
                    raise _Broken(seq, HASH_MISMATCH, (
                        f"the fields of seq {seq:,} no longer give its stored hash {_short(stored_hash)}: "
                        "the event was edited or moved"))
                if row[13] != prev_hash:
                    raise _Broken(seq, PREV_HASH_MISMATCH, (
                        f"seq {seq:,} links to {_short(row[13])} but seq {seq - 1:,} has hash {_short(prev_hash)}: "
                        f"seq {seq - 1:,} was altered"))
                for checkpoint in by_seq.get(seq, ()):
                    if checkpoint.hash != stored_hash:
                        after = (f"after seq {last_good_checkpoint.seq:,}, the last checkpoint that matches"
                                 if last_good_checkpoint else "no earlier checkpoint matches")
                        raise _Broken(seq, CHECKPOINT_MISMATCH, (
                            f"checkpoint {checkpoint.name} (signed {checkpoint.created_at}) pins seq {seq:,} to "
                            f"hash {_short(checkpoint.hash)} but the table has {_short(stored_hash)}: the log was "
                            f"rewritten at or before seq {seq:,} ({after})"))
                    last_good_checkpoint = checkpoint
                count, expected, prev_hash = count + 1, seq + 1, stored_hash
        if first_bad is not None:
            raise _Broken(first_bad.seq, CHECKPOINT_MISMATCH,
                          f"checkpoint {first_bad.name} cannot be trusted: {first_bad.reason}")
        beyond = [c for c in checkpoints if c.seq >= expected]
        if beyond:
            newest = max(beyond, key=lambda c: c.seq)
            raise _Broken(expected, MISSING_SEQ, (
                f"the chain ends at seq {expected - 1:,} but checkpoint {newest.name} (signed {newest.created_at}) "
                f"pins seq {newest.seq:,}: the newest events were removed"))
    except _Broken as broken:
        return VerificationResult(
            ok=False, count=count, head_seq=expected - 1 if count else None,
            head_hash=prev_hash if count else None, checkpoints=len(checkpoints), broken_seq=broken.seq,
            reason=broken.reason, detail=broken.detail, seconds=time.monotonic() - started,
        )
    latest = checkpoints[-1] if checkpoints else None
    return VerificationResult(
        ok=True, count=count, head_seq=expected - 1 if count else None, head_hash=prev_hash if count else None,
        checkpoints=len(checkpoints), seconds=time.monotonic() - started,
        latest_checkpoint={"seq": latest.seq, "created_at": latest.created_at, "name": latest.name} if latest else {},
    )


def audit_verify(*, actor, request=None, via: str = "web") -> VerificationResult:
    """Verify the chain and record the verification and its result (``audit.verified``).

    The result is only handed back once its event is written: a verification nobody can
    see in the log did not happen.
    """
    result = verify_chain()
    with transaction.atomic():
        audit_record(actor=actor, action="audit.verified", request=request,
                     outcome="success" if result.ok else "failure",
                     details={**result.as_details(), "via": via})
    return result
