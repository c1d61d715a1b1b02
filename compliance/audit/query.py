"""Reading the audit log: the filter every reader shares, keyset pages, and streamed rows.

The list page, ``GET /api/v1/audit/events`` and the exports take the same filter
(``from``, ``to``, ``actor``, ``action``, ``object_type``, ``object_id``, ``outcome``).
Verification and exports read rows through ``event_rows``: a server-side cursor that
PostgreSQL feeds in batches, formatted for hashing by PostgreSQL itself, so memory stays
flat and no model instance is built.
"""

import contextlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from django.db import connection, transaction
from django.utils.dateparse import parse_date, parse_datetime

from compliance.audit.models import AuditEvent
from compliance.audit.record import canonical_time, event_fields
from compliance.audit.rows import ROW_FIELDS, ROW_SQL, Prefetched, canonical_line

TABLE = AuditEvent._meta.db_table
__all__ = ["ROW_SQL", "AuditFilter", "FilterError", "Page", "canonical_line", "event_json", "event_rows",
           "events_page", "row_fields"]
PAGE_SIZE = 50
FILTER_FIELDS = ("from", "to", "actor", "action", "object_type", "object_id", "outcome")


class FilterError(ValueError):
    """A filter parameter that cannot be understood (answered 400 with this message)."""


# What ``from``/``to`` accept (the API schema publishes this pattern): a date, or a date and a
# time with optional seconds, fraction and offset (an HTML datetime-local field sends no offset).
TIME_PATTERN = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}([.,]\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$"
_TIME = re.compile(TIME_PATTERN)


def _parse_time(name: str, value: str, *, end: bool) -> datetime:
    not_understood = FilterError(f"{name}={value!r} is not a date or an ISO 8601 date-time")
    if not _TIME.fullmatch(value):
        raise not_understood
    try:
        moment = parse_datetime(value)
        day = parse_date(value) if moment is None else None
    except ValueError:  # well-formed but impossible: 2026-02-30, 25:00
        raise not_understood from None
    if moment is None:
        if day is None:
            raise not_understood
        # A bare date means the whole day: "to=2026-11-25" includes the 25th.
        moment = datetime.combine(day + timedelta(days=1) if end else day, time.min)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class AuditFilter:
    """Which events a reader wants. ``start`` is inclusive, ``end`` exclusive (UTC).

    ``action`` matches exactly, or as a prefix when it ends in ``*`` (``restore.*``).
    """

    start: datetime | None = None
    end: datetime | None = None
    actor: str = ""
    action: str = ""
    object_type: str = ""
    object_id: str = ""
    outcome: str = ""

    @classmethod
    def from_params(cls, params) -> "AuditFilter":
        def text(name: str, limit: int) -> str:
            value = (params.get(name) or "").strip()
            if len(value) > limit:
                raise FilterError(f"{name} is longer than {limit} characters")
            return value

        outcome = text("outcome", 10)
        if outcome and outcome not in AuditEvent.Outcome.values:
            raise FilterError(f"outcome={outcome!r} is not one of: {', '.join(AuditEvent.Outcome.values)}")
        start = text("from", 40)
        end = text("to", 40)
        flt = cls(
            start=_parse_time("from", start, end=False) if start else None,
            end=_parse_time("to", end, end=True) if end else None,
            actor=text("actor", 150),
            action=text("action", 100),
            object_type=text("object_type", 100),
            object_id=text("object_id", 64),
            outcome=outcome,
        )
        if flt.start and flt.end and flt.start >= flt.end:
            raise FilterError("from must be before to")
        return flt

    def is_empty(self) -> bool:
        return not any(self.as_params().values())

    def as_params(self) -> dict[str, str]:
        """The filter as query parameters (also what an export's digest records)."""
        return {
            "from": canonical_time(self.start) if self.start else "",
            "to": canonical_time(self.end) if self.end else "",
            "actor": self.actor,
            "action": self.action,
            "object_type": self.object_type,
            "object_id": self.object_id,
            "outcome": self.outcome,
        }

    def query_params(self) -> dict[str, str]:
        return {k: v for k, v in self.as_params().items() if v}

    def apply(self, queryset):
        if self.start:
            queryset = queryset.filter(occurred_at__gte=self.start)
        if self.end:
            queryset = queryset.filter(occurred_at__lt=self.end)
        if self.actor:
            queryset = queryset.filter(actor_username=self.actor)
        if self.action.endswith("*"):
            queryset = queryset.filter(action__startswith=self.action[:-1])
        elif self.action:
            queryset = queryset.filter(action=self.action)
        if self.object_type:
            queryset = queryset.filter(object_type=self.object_type)
        if self.object_id:
            queryset = queryset.filter(object_id=self.object_id)
        if self.outcome:
            queryset = queryset.filter(outcome=self.outcome)
        return queryset

    def sql(self) -> tuple[list[str], list]:
        """The same filter as SQL conditions and their parameters."""
        conditions, params = [], []
        for condition, value in (
            ("occurred_at >= %s", self.start), ("occurred_at < %s", self.end),
            ("actor_username = %s", self.actor), ("object_type = %s", self.object_type),
            ("object_id = %s", self.object_id), ("outcome = %s", self.outcome),
        ):
            if value:
                conditions.append(condition)
                params.append(value)
        if self.action.endswith("*"):
            conditions.append("starts_with(action, %s)")
            params.append(self.action[:-1])
        elif self.action:
            conditions.append("action = %s")
            params.append(self.action)
        return conditions, params


@dataclass
class Page:
    """One keyset page, newest first; ``newer``/``older`` are the seqs to page from, if any."""

    events: list
    newer: int | None
    older: int | None


def events_page(flt: AuditFilter, *, before: int | None = None, after: int | None = None,
                size: int = PAGE_SIZE) -> Page:
    """Events matching ``flt``, ``size`` at a time, by ``seq`` (stable under appends, no OFFSET)."""
    queryset = flt.apply(AuditEvent.objects.all())
    if after is not None:
        rows = list(queryset.filter(seq__gt=after).order_by("seq")[:size + 1])
        has_more_newer = len(rows) > size
        events = rows[:size][::-1]
        has_more_older = queryset.filter(seq__lte=after).exists()
    else:
        if before is not None:
            queryset = queryset.filter(seq__lt=before)
        rows = list(queryset.order_by("-seq")[:size + 1])
        has_more_older = len(rows) > size
        events = rows[:size]
        has_more_newer = before is not None and flt.apply(AuditEvent.objects.filter(seq__gte=before)).exists()
    return Page(
        events=events,
        newer=events[0].seq if events and has_more_newer else None,
        older=events[-1].seq if events and has_more_older else None,
    )


# --- streamed rows ---------------------------------------------------------------------------

@contextlib.contextmanager
def event_rows(flt: AuditFilter | None = None, *, up_to_seq: int | None = None, batch: int = 1_000):
    """Rows of ``ROW_SQL`` by ascending ``seq``, fetched ``batch`` at a time from a server-side cursor.

    Up to three batches are in memory at once (``Prefetched``): exports keep the default, so
    their peak stays within its goal; verification takes ``FETCH_ROWS``.

    ``details`` arrive as PostgreSQL's text of the jsonb; ``canonical_line`` turns a row
    into the bytes its hash covers.
    """
    conditions, params = flt.sql() if flt else ([], [])
    if up_to_seq is not None:
        conditions.append("seq <= %s")
        params.append(up_to_seq)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    sql = f"SELECT {ROW_SQL} FROM {TABLE} {where} ORDER BY seq"  # noqa: S608 - fixed columns and conditions
    # A server-side cursor only lives inside a transaction.
    with transaction.atomic():
        connection.ensure_connection()
        with connection.connection.cursor(name=f"audit_rows_{uuid.uuid4().hex}") as cursor:
            cursor.execute(sql, params)
            rows = Prefetched(cursor, batch)
            try:
                yield rows
            finally:
                rows.close()


def row_fields(row) -> dict:
    """A streamed row as the dict of its hashed fields plus ``hash`` (for exports and the API)."""
    fields = dict(zip(ROW_FIELDS, row, strict=True))
    fields["details"] = json.loads(fields["details"])
    fields["v"] = 1
    return fields


def event_json(event: AuditEvent) -> dict:
    """An event as the API shows it: its hashed fields, plus ``hash``."""
    return {**event_fields(event), "hash": event.hash}
