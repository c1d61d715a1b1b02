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

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context

from django.db import connection, transaction

from compliance.audit.actions import AuditAction
from compliance.audit.checkpoints import checkpoint_store, checkpoints_load
from compliance.audit.models import AuditEvent
from compliance.audit.query import event_rows
from compliance.audit.record import GENESIS_HASH, audit_record
from compliance.audit.rows import (
    CHECKPOINT_MISMATCH,
    FETCH_ROWS,
    HASH_MISMATCH,
    MISSING_SEQ,
    PREV_HASH_MISMATCH,
    Scan,
    prev_hash_detail,
    scan,
    scan_range,
)
from compliance.audit.signing import known_public_keys

__all__ = ["CHECKPOINT_MISMATCH", "HASH_MISMATCH", "MISSING_SEQ", "PREV_HASH_MISMATCH", "VerificationResult",
           "audit_verify", "verify_chain"]

# From this many events on, verification runs in one process per CPU (up to 4), each on a
# range of seq: below it, starting the processes costs more than it saves (bench/audit.py).
PARALLEL_FROM = 200_000


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
    processes: int = 1

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


def _conninfo() -> dict:
    """Connection parameters a worker process can use (plain values only)."""
    params = connection.get_connection_params()
    return {key: value for key, value in params.items() if isinstance(value, str | int) and key != "prepare_threshold"}


def _scan_in_parallel(head: int, processes: int, pins: dict) -> list[Scan]:
    bounds = [head * n // processes for n in range(processes + 1)]
    conninfo = _conninfo()
    # spawn, not fork: a forked copy of a web or worker process would share its connections.
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(scan_range, conninfo, low, high,
                               {seq: pin for seq, pin in pins.items() if low < seq <= high})
                   for low, high in zip(bounds, bounds[1:], strict=False)]
        return [future.result() for future in futures]


def _combine(parts: list[Scan]) -> tuple[int, int, str, tuple | None]:
    """Join range scans in order: ``(count, next expected seq, head hash, first problem)``."""
    count, expected, prev_hash = 0, 1, GENESIS_HASH
    for part in parts:
        if part.first_seq is None:
            continue  # an empty range: the next one shows what is missing
        if part.first_seq != expected:
            return count, expected, prev_hash, (expected, MISSING_SEQ, (
                f"seq {expected:,} is missing: the event after seq {expected - 1:,} is seq {part.first_seq:,}"
                if expected > 1 else f"the chain starts at seq {part.first_seq:,}, not 1"))
        problem = part.problem
        first_is_broken = problem is not None and problem[0] == part.first_seq
        if not (first_is_broken and problem[1] in (MISSING_SEQ, HASH_MISMATCH)) and part.first_prev_hash != prev_hash:
            return count, expected, prev_hash, (part.first_seq, PREV_HASH_MISMATCH,
                                                prev_hash_detail(part.first_seq, part.first_prev_hash, prev_hash))
        count += part.count
        if part.count:
            expected, prev_hash = part.last_seq + 1, part.last_hash
        if problem is not None:
            return count, expected, prev_hash, problem
    return count, expected, prev_hash, None


def verify_chain(*, keys: dict | None = None, store=None, processes: int | None = None) -> VerificationResult:
    """Recompute the whole chain and check it against every stored checkpoint (not audited).

    Events appended while it runs are left for the next verification. ``processes`` forces
    the number of worker processes (1: none); other processes see only committed rows, so
    inside a transaction it is always 1.
    """
    started = time.monotonic()
    keys = keys if keys is not None else known_public_keys()
    checkpoints, bad_checkpoints = checkpoints_load(keys, store or checkpoint_store())
    pins: dict[int, list[tuple[str, str, str]]] = {}
    for checkpoint in checkpoints:
        pins.setdefault(checkpoint.seq, []).append((checkpoint.name, checkpoint.hash, checkpoint.created_at))
    head = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
    if processes is None:
        processes = min(os.cpu_count() or 1, 4) if head >= PARALLEL_FROM else 1
    if connection.in_atomic_block:
        processes = 1
    if processes > 1:
        parts = _scan_in_parallel(head, processes, pins)
    else:
        with event_rows(up_to_seq=head, batch=FETCH_ROWS) as rows:
            parts = [scan(rows, expected=1, prev_hash=GENESIS_HASH, checkpoints=pins)]
    count, expected, head_hash, problem = _combine(parts)
    if problem is not None and problem[1] == CHECKPOINT_MISMATCH:
        matched = [c.seq for c in checkpoints if c.seq < problem[0]]
        problem = (problem[0], problem[1], problem[2] + (
            f" (after seq {max(matched):,}, the last checkpoint that matches)" if matched
            else " (no earlier checkpoint matches)"))

    first_bad = bad_checkpoints[0] if bad_checkpoints else None
    if first_bad is not None and (problem is None or (first_bad.seq is not None and first_bad.seq < problem[0])):
        problem = (first_bad.seq, CHECKPOINT_MISMATCH,
                   f"checkpoint {first_bad.name} cannot be trusted: {first_bad.reason}")
    if problem is None:
        beyond = [c for c in checkpoints if c.seq >= expected]
        if beyond:
            newest = max(beyond, key=lambda c: c.seq)
            problem = (expected, MISSING_SEQ, (
                f"the chain ends at seq {expected - 1:,} but checkpoint {newest.name} (signed {newest.created_at}) "
                f"pins seq {newest.seq:,}: the newest events were removed"))
    seconds = time.monotonic() - started
    head_seq = expected - 1 if count else None
    if problem is not None:
        return VerificationResult(
            ok=False, count=count, head_seq=head_seq, head_hash=head_hash if count else None,
            checkpoints=len(checkpoints), broken_seq=problem[0], reason=problem[1], detail=problem[2],
            seconds=seconds, processes=processes,
        )
    latest = checkpoints[-1] if checkpoints else None
    return VerificationResult(
        ok=True, count=count, head_seq=head_seq, head_hash=head_hash if count else None,
        checkpoints=len(checkpoints), seconds=seconds, processes=processes,
        latest_checkpoint={"seq": latest.seq, "created_at": latest.created_at, "name": latest.name} if latest else {},
    )


def audit_verify(*, actor, request=None, via: str = "web") -> VerificationResult:
    """Verify the chain and record the verification and its result (``audit.verified``).

    The result is only handed back once its event is written: a verification nobody can
    see in the log did not happen.
    """
    result = verify_chain()
    with transaction.atomic():
        audit_record(actor=actor, action=AuditAction.AUDIT_VERIFIED, request=request,
                     outcome="success" if result.ok else "failure",
                     details={**result.as_details(), "via": via})
    return result
