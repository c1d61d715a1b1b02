"""Reads of the backup catalog: the artifact list (filters, sort, keyset pagination) and summaries.

The list never counts or offsets: it seeks from a cursor over an index (``created_at, id`` or
``size, id``), so page 2,000 costs what page 1 costs, and the number of queries does not grow
with the page (systems are joined, copies prefetched in one query).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, time

from django.db.models import Exists, OuterRef, Prefetch, Q
from django.utils import timezone
from django.utils.dateparse import parse_date

from backups.models import Artifact, ArtifactCopy

PAGE_SIZE = 50
SORTS = {
    "-created": ("created_at", True),
    "created": ("created_at", False),
    "-size": ("size", True),
    "size": ("size", False),
}


@dataclass
class ArtifactPage:
    """One page of the list and the cursor of the next (None on the last page)."""

    artifacts: list
    next_cursor: str | None
    sort: str


def encode_cursor(value, pk) -> str:
    if isinstance(value, datetime):
        value = value.isoformat()
    raw = json.dumps([value, str(pk)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, field: str):
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value, pk = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if field == "created_at":
            value = datetime.fromisoformat(value)
        elif value is not None:
            value = int(value)
        return value, pk
    except (ValueError, TypeError, json.JSONDecodeError):
        return None


def filtered_artifacts(params) -> tuple:
    """The queryset for list filters (system, kind, status, location, from, to); returns (qs, cleaned)."""
    qs = Artifact.objects.all()
    cleaned = {}
    for name in ("system", "location"):
        value = (params.get(name) or "").strip()
        if value.isdigit():
            cleaned[name] = int(value)
    for name, choices in (("kind", Artifact.Kind.values), ("status", Artifact.Status.values)):
        value = (params.get(name) or "").strip()
        if value in choices:
            cleaned[name] = value
    if "system" in cleaned:
        qs = qs.filter(system_id=cleaned["system"])
    if "kind" in cleaned:
        qs = qs.filter(kind=cleaned["kind"])
    qs = qs.filter(status=cleaned["status"]) if "status" in cleaned else qs.exclude(status=Artifact.Status.DELETED)
    if "location" in cleaned:
        qs = qs.filter(Exists(ArtifactCopy.objects.filter(artifact=OuterRef("pk"), location_id=cleaned["location"])
                              .exclude(status=ArtifactCopy.Status.DELETED)))
    tz = timezone.get_current_timezone()
    start = parse_date(params.get("from") or "") if params.get("from") else None
    end = parse_date(params.get("to") or "") if params.get("to") else None
    if start:
        cleaned["from"] = start
        qs = qs.filter(created_at__gte=datetime.combine(start, time.min, tzinfo=tz))
    if end:
        cleaned["to"] = end
        qs = qs.filter(created_at__lte=datetime.combine(end, time.max, tzinfo=tz))
    return qs, cleaned


def artifact_rows(params) -> tuple:
    """The API's artifact list before paging: the filtered, prefetched rows and their keyset order."""
    sort = params.get("sort") if params.get("sort") in SORTS else "-created"
    field, descending = SORTS[sort]
    qs, _ = filtered_artifacts(params)
    if field == "size":
        qs = qs.exclude(size=None)
    copies = Prefetch("copies", queryset=ArtifactCopy.objects.select_related("location").exclude(
        status=ArtifactCopy.Status.DELETED).order_by("-location__role", "location__name"))
    order = (f"-{field}", "-pk") if descending else (field, "pk")
    return qs.select_related("system", "adopted_by").prefetch_related(copies), order


def artifact_page(params, *, page_size: int = PAGE_SIZE) -> ArtifactPage:
    sort = params.get("sort") if params.get("sort") in SORTS else "-created"
    field, descending = SORTS[sort]
    qs, _ = filtered_artifacts(params)
    if field == "size":
        qs = qs.exclude(size=None)
    cursor = decode_cursor(params.get("cursor") or "", field) if params.get("cursor") else None
    if cursor is not None:
        value, pk = cursor
        if descending:
            qs = qs.filter(Q(**{f"{field}__lt": value}) | Q(**{field: value, "pk__lt": pk}))
        else:
            qs = qs.filter(Q(**{f"{field}__gt": value}) | Q(**{field: value, "pk__gt": pk}))
    order = [f"-{field}", "-pk"] if descending else [field, "pk"]
    copies = Prefetch("copies", queryset=ArtifactCopy.objects.select_related("location").exclude(
        status=ArtifactCopy.Status.DELETED).order_by("-location__role", "location__name"))
    rows = list(qs.select_related("system", "adopted_by").prefetch_related(copies).order_by(*order)[: page_size + 1])
    next_cursor = None
    if len(rows) > page_size:
        rows = rows[:page_size]
        last = rows[-1]
        next_cursor = encode_cursor(getattr(last, field), last.pk)
    return ArtifactPage(artifacts=rows, next_cursor=next_cursor, sort=sort)


def artifact_json(artifact: Artifact, *, with_manifest: bool = False) -> dict:
    """The API's shape of an artifact (DESIGN.md "Interfaces")."""
    data = {
        "id": str(artifact.id),
        "system": artifact.system.name,
        "system_id": artifact.system_id,
        "kind": artifact.kind,
        "format": artifact.format,
        "encryption": artifact.encryption,
        "key_id": artifact.key_id,
        "created_at": artifact.created_at.isoformat(),
        "size": artifact.size,
        "sha256": artifact.sha256,
        "plaintext_size": artifact.plaintext_size,
        "plaintext_sha256": artifact.plaintext_sha256 or None,
        "status": artifact.status,
        "source": artifact.source,
        "quarantine": {"reason": artifact.quarantine_reason} if artifact.is_quarantined else None,
        "adopted_by": artifact.adopted_by.get_username() if artifact.adopted_by_id else None,
        "adopted_at": artifact.adopted_at.isoformat() if artifact.adopted_at else None,
        "offsite_verified_at": artifact.offsite_verified_at.isoformat() if artifact.offsite_verified_at else None,
        "copies": [{"location": c.location.name, "role": c.location.role, "status": c.status, "size": c.size,
                    "sha256": c.sha256_seen or None,
                    "checked_at": c.checked_at.isoformat() if c.checked_at else None}
                   for c in artifact.copies.all() if c.status != ArtifactCopy.Status.DELETED],
        "last_verification": ({"level": artifact.last_verified_level,
                               "at": artifact.last_verified_at.isoformat() if artifact.last_verified_at else None}
                              if artifact.last_verified_level else None),
    }
    if with_manifest:
        data["manifest"] = artifact.manifest
    return data


def run_json(run) -> dict:
    return {"id": str(run.id), "system": run.system.name, "kind": run.kind, "state": run.state,
            "trigger": run.trigger, "created_at": run.created_at.isoformat(),
            "started_at": run.started_at.isoformat() if run.started_at else None,
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "progress": run.percent, "bytes_done": run.bytes_done, "steps": run.steps, "error": run.error or None,
            "artifact": str(run.artifact_id) if run.artifact_id else None, "worker_host": run.worker_host or None}
