"""Signed exports of the audit log for auditors: JSON Lines and CSV, streamed with flat memory.

An export holds the events matching a filter, oldest first, up to the head at the moment
it was asked for, each with ``seq``, ``prev_hash`` and ``hash``. Its **digest** — first
and last ``seq``, last hash, count, time range, filter, whether the events are one
unbroken stretch of the chain, the SHA-256 of the exported content, who exported it and
when — is signed with the panel's Ed25519 key (``compliance.audit.signing``):

- JSON Lines: one event per line (the canonical encoding of its fields plus ``hash``),
  then the signed digest as the last line;
- CSV: the file, and the signed digest beside it (``FILE.digest.json``); over HTTP both
  come in one ZIP, since a response cannot carry a second file.

``compliance/verify_export.py`` checks all of it offline. Every export is audited
(``audit.exported``) before its first byte leaves.
"""

import csv
import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from django.db import transaction
from django.http import HttpResponse, StreamingHttpResponse

from compliance.audit.actions import AuditAction
from compliance.audit.canonical import canonical_bytes, canonical_json
from compliance.audit.query import AuditFilter, event_rows, row_fields
from compliance.audit.record import audit_record, canonical_time
from compliance.audit.signing import fingerprint, public_pem, sign

FORMATS = ("jsonl", "csv")
DIGEST_TYPE = "drpanel-audit-export-digest"
CSV_COLUMNS = ("seq", "occurred_at", "actor_id", "actor_username", "client_ip", "user_agent", "request_id",
               "action", "object_type", "object_id", "object_repr", "outcome", "details", "prev_hash", "hash", "v")
# A spreadsheet runs a cell that starts with one of these as a formula. Such a cell gets a
# leading apostrophe (and so does one that starts with an apostrophe, so the rule can be
# undone exactly): the verifier strips one leading apostrophe from every cell.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class ExportPlan:
    """An export that was recorded and may now be streamed: its format, filter and upper bound."""

    format: str
    filter: AuditFilter
    up_to_seq: int
    exported_by: str
    exported_at: datetime

    @property
    def basename(self) -> str:
        return f"drpanel-audit-{self.exported_at.strftime('%Y%m%dT%H%M%SZ')}-seq{self.up_to_seq}"


def audit_export_start(*, actor, format: str, flt: AuditFilter, request=None, via: str = "web") -> ExportPlan:
    """Record an export (``audit.exported``) and fix its contents: events up to the head, this event included.

    Called before the first byte is sent: an export whose event cannot be written is not made.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r} (use {' or '.join(FORMATS)})")
    with transaction.atomic():
        event = audit_record(actor=actor, action=AuditAction.AUDIT_EXPORTED, request=request,
                             details={"format": format, "filter": flt.query_params(), "via": via})
    return ExportPlan(format=format, filter=flt, up_to_seq=event.seq, exported_by=event.actor_username,
                      exported_at=event.occurred_at)


def _csv_cell(value) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


class _Content:
    """Turns streamed rows into the export's bytes, tracking what the digest will say."""

    def __init__(self, plan: ExportPlan):
        self.plan = plan
        self.sha256 = hashlib.sha256()
        self.count = 0
        self.first = self.last = None
        self.contiguous = True

    def _track(self, fields: dict) -> None:
        if self.last is not None and (fields["seq"] != self.last["seq"] + 1
                                      or fields["prev_hash"] != self.last["hash"]):
            self.contiguous = False
        if self.first is None:
            self.first = {"seq": fields["seq"], "occurred_at": fields["occurred_at"]}
        self.last = {"seq": fields["seq"], "hash": fields["hash"], "occurred_at": fields["occurred_at"]}
        self.count += 1

    def chunks(self) -> Iterator[bytes]:
        """The content (JSON lines, or the CSV with its header), in chunks of about 64 KiB."""
        buffer = io.StringIO()
        writer = csv.writer(buffer) if self.plan.format == "csv" else None
        if writer:
            writer.writerow(CSV_COLUMNS)
        with event_rows(self.plan.filter, up_to_seq=self.plan.up_to_seq) as rows:
            for row in rows:
                fields = row_fields(row)
                self._track(fields)
                if writer:
                    cells = [fields[c] if c != "details" else canonical_json(fields["details"]) for c in CSV_COLUMNS]
                    writer.writerow([_csv_cell(cell) for cell in cells])
                else:
                    buffer.write(canonical_json(fields))
                    buffer.write("\n")
                if buffer.tell() >= _CHUNK:
                    yield self._take(buffer)
        if buffer.tell():
            yield self._take(buffer)

    def _take(self, buffer: io.StringIO) -> bytes:
        data = buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
        self.sha256.update(data)
        return data

    def digest(self) -> dict:
        """The signed digest; call once the content has been consumed."""
        return sign({
            "type": DIGEST_TYPE,
            "v": 1,
            "format": self.plan.format,
            "count": self.count,
            "first_seq": self.first["seq"] if self.first else None,
            "last_seq": self.last["seq"] if self.last else None,
            "last_hash": self.last["hash"] if self.last else None,
            "time_range": {"from": self.first["occurred_at"] if self.first else None,
                           "to": self.last["occurred_at"] if self.last else None},
            "filter": self.plan.filter.as_params(),
            "contiguous": self.contiguous,
            "up_to_seq": self.plan.up_to_seq,
            "content_sha256": self.sha256.hexdigest(),
            "exported_at": canonical_time(self.plan.exported_at),
            "exported_by": self.plan.exported_by,
        })


def digest_bytes(digest: dict) -> bytes:
    return canonical_bytes(digest) + b"\n"


def jsonl_chunks(plan: ExportPlan) -> Iterator[bytes]:
    """The JSON Lines export: events, then the signed digest as the last line."""
    content = _Content(plan)
    yield from content.chunks()
    yield digest_bytes(content.digest())


class _Sink(io.RawIOBase):
    """A write-only stream that hands over what was written (for ``zipfile`` on a response)."""

    def __init__(self):
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def csv_zip_chunks(plan: ExportPlan) -> Iterator[bytes]:
    """The CSV export for HTTP: a ZIP (streamed) holding ``NAME.csv`` and ``NAME.csv.digest.json``."""
    sink = _Sink()
    content = _Content(plan)
    name = f"{plan.basename}.csv"
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open(name, "w", force_zip64=True) as member:
            for chunk in content.chunks():
                member.write(chunk)
                compressed = sink.take()
                if compressed:
                    yield compressed
        archive.writestr(f"{name}.digest.json", json.dumps(content.digest(), indent=2, sort_keys=True) + "\n")
    yield sink.take()


def export_to_file(plan: ExportPlan, path: Path) -> tuple[dict, list[Path]]:
    """Write the export to ``path`` (and, for CSV, its digest beside it); returns the digest and the files."""
    path = Path(path)
    content = _Content(plan)
    with open(path, "wb") as out:
        for chunk in content.chunks():
            out.write(chunk)
        digest = content.digest()
        if plan.format == "jsonl":
            out.write(digest_bytes(digest))
            return digest, [path]
    digest_path = path.with_name(path.name + ".digest.json")
    digest_path.write_text(json.dumps(digest, indent=2, sort_keys=True) + "\n")
    return digest, [path, digest_path]


def export_response(plan: ExportPlan):
    """The streamed HTTP answer: JSON Lines, or for CSV a ZIP with the CSV and its digest."""
    if plan.format == "jsonl":
        response = StreamingHttpResponse(jsonl_chunks(plan), content_type="application/jsonl; charset=utf-8")
        filename = f"{plan.basename}.jsonl"
    else:
        response = StreamingHttpResponse(csv_zip_chunks(plan), content_type="application/zip")
        filename = f"{plan.basename}.zip"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def public_key_response(key):
    """The PEM of an audit public key as a download, its fingerprint in ``X-Key-Fingerprint``."""
    key_fingerprint = fingerprint(key)
    response = HttpResponse(public_pem(key), content_type="application/x-pem-file")
    response["Content-Disposition"] = f'attachment; filename="drpanel-audit-{key_fingerprint[:16]}.pem"'
    response["X-Key-Fingerprint"] = key_fingerprint
    return response
