#!/usr/bin/env python3
"""Verify a DR Panel audit export offline: no Django, no database, no network.

    python verify_export.py EXPORT --public-key KEY.pem [--public-key OLD.pem ...] [--digest FILE]

EXPORT is a JSON Lines export (``.jsonl``, its signed digest is the last line), a CSV
export (``.csv``, with its digest beside it in ``EXPORT.digest.json`` or ``--digest``), or
the ZIP the panel serves for CSV (both files inside). It needs Python 3.11+ and the
``cryptography`` package only; this file is self-contained, copy it anywhere.

Every event's hash is recomputed from its fields (canonical encoding version 1, see
docs/auditor.md), consecutive events must link (``prev_hash``) when the digest says the export is
one unbroken stretch of the chain, the order must be strictly by ``seq``, and the digest
must be signed by one of the given public keys and match the content byte for byte.

Exit status: 0 and one line ``OK: …`` when the export is intact; 1 and one line
``FAILED (<reason>): …`` when it is not, the reason being one of ``edited``, ``removed``,
``reordered``, ``added``, ``unsigned``, ``wrong-key``, ``bad-signature``; 2 when it cannot
be checked at all (unreadable file or key, wrong arguments).
"""

import argparse
import base64
import csv
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

DIGEST_TYPE = "drpanel-audit-export-digest"
EVENT_KEYS = frozenset({
    "v", "seq", "occurred_at", "actor_id", "actor_username", "client_ip", "user_agent", "request_id",
    "action", "object_type", "object_id", "object_repr", "outcome", "details", "prev_hash", "hash",
})
CSV_COLUMNS = ["seq", "occurred_at", "actor_id", "actor_username", "client_ip", "user_agent", "request_id",
               "action", "object_type", "object_id", "object_repr", "outcome", "details", "prev_hash", "hash", "v"]
# The rule of compliance.audit.canonical, repeated here: this file must stay self-contained.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class Failed(Exception):
    """The export is not intact: ``reason`` is one word, the message says where and why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Unusable(Exception):
    """The export or a key cannot be read at all."""


def canonical(value) -> str:
    return _ENCODER.encode(value)


def fingerprint(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).hexdigest()


def load_keys(paths: list[str]) -> dict[str, Ed25519PublicKey]:
    keys = {}
    for path in paths:
        try:
            key = serialization.load_pem_public_key(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise Unusable(f"cannot read the public key {path}: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise Unusable(f"{path} is not an Ed25519 public key")
        keys[fingerprint(key)] = key
    return keys


class Scan:
    """Walks the events in file order, keeping the first sign of each kind of damage."""

    def __init__(self):
        self.count = 0
        self.first_seq = self.last_seq = self.last_hash = None
        self.edited = self.reordered = self.repeated = self.gap = self.unlinked = None

    def event(self, where: str, fields: dict) -> None:
        if set(fields) != EVENT_KEYS or not isinstance(fields["seq"], int) or not isinstance(fields["hash"], str):
            self.edited = self.edited or f"{where} does not have the fields of an event"
            return
        stated = fields.pop("hash")
        seq = fields["seq"]
        if fields["v"] != 1:
            self.edited = self.edited or f"{where} (seq {seq}) claims encoding version {fields['v']!r}, not 1"
        elif hashlib.sha256(canonical(fields).encode()).hexdigest() != stated:
            self.edited = self.edited or f"{where} (seq {seq}): its fields do not give its hash"
        if self.last_seq is not None:
            if seq < self.last_seq:
                self.reordered = self.reordered or f"{where}: seq {seq} comes after seq {self.last_seq}"
            elif seq == self.last_seq:
                self.repeated = self.repeated or f"{where}: seq {seq} appears twice"
            elif seq != self.last_seq + 1:
                self.gap = self.gap or (f"{where}: seq {seq} follows seq {self.last_seq}, "
                                        f"so {seq - self.last_seq - 1} event(s) between them are missing")
            elif fields["prev_hash"] != self.last_hash:
                self.unlinked = self.unlinked or (f"{where} (seq {seq}) does not link to the line before it "
                                                  f"(seq {self.last_seq}): one of them was altered")
        if self.first_seq is None:
            self.first_seq = seq
        self.last_seq, self.last_hash = seq, stated
        self.count += 1


def read_jsonl(path: Path) -> tuple[Scan, dict | None, str]:
    scan, digest, content = Scan(), None, hashlib.sha256()
    with open(path, "rb") as stream:
        for number, line in enumerate(stream, start=1):
            where = f"line {number}"
            if digest is not None:
                scan.edited = scan.edited or f"{where} comes after the signed digest"
                continue
            try:
                value = json.loads(line)
                strict = canonical(value).encode() + b"\n" == line
            except (UnicodeDecodeError, ValueError):
                scan.edited = scan.edited or f"{where} is not valid JSON any more"
                content.update(line)
                continue
            if isinstance(value, dict) and value.get("type") == DIGEST_TYPE:
                digest = value
                if not strict:
                    scan.edited = scan.edited or f"{where} (the digest) is not in its canonical form"
                continue
            content.update(line)
            if not strict:
                scan.edited = scan.edited or f"{where} is not in its canonical form"
            if isinstance(value, dict):
                scan.event(where, value)
            else:
                scan.edited = scan.edited or f"{where} is not an event"
    return scan, digest, content.hexdigest()


class _Hashing(io.RawIOBase):
    """A readable stream that hashes every byte read through it."""

    def __init__(self, raw):
        self.raw = raw
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        buffer[:len(data)] = data
        self.sha256.update(data)
        return len(data)


def _cell(text: str) -> str:
    # The exporter puts an apostrophe before a cell a spreadsheet would run as a formula
    # (and before one that starts with an apostrophe): take exactly one away.
    return text[1:] if text.startswith("'") else text


def _csv_fields(row: list[str]) -> dict:
    cells = {name: _cell(text) for name, text in zip(CSV_COLUMNS, row, strict=True)}
    fields = dict(cells)
    fields["seq"] = int(cells["seq"])
    fields["v"] = int(cells["v"])
    fields["actor_id"] = int(cells["actor_id"]) if cells["actor_id"] else None
    fields["client_ip"] = cells["client_ip"] or None
    fields["details"] = json.loads(cells["details"])
    return fields


def read_csv(raw) -> tuple[Scan, str]:
    # A large details cell is not damage: lift the csv module's 128 KiB default.
    csv.field_size_limit(2**31 - 1)
    scan = Scan()
    hashing = _Hashing(raw)
    text = io.TextIOWrapper(io.BufferedReader(hashing), encoding="utf-8", newline="")
    try:
        reader = csv.reader(text, strict=True)
        header = next(reader, None)
        if header != CSV_COLUMNS:
            scan.edited = "the header line is not the export's"
        for row in reader:
            where = f"CSV row {reader.line_num}"
            try:
                fields = _csv_fields(row)
            except (ValueError, TypeError):
                scan.edited = scan.edited or f"{where} cannot be read as an event any more"
                continue
            scan.event(where, fields)
    except (UnicodeDecodeError, csv.Error) as exc:
        scan.edited = scan.edited or f"the CSV cannot be read any more ({exc})"
    while hashing.raw.read(1 << 16):  # whatever the reader did not consume still counts
        pass
    return scan, hashing.sha256.hexdigest()


def read_export(path: Path, digest_path: Path | None) -> tuple[Scan, dict | None, str, str]:
    """``(scan, digest, content_sha256, format)`` of an export file."""
    if not path.is_file():
        raise Unusable(f"{path} is not a file")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                csv_names = [n for n in names if n.endswith(".csv")]
                if len(csv_names) != 1:
                    raise Failed("edited", "the ZIP does not hold exactly one CSV export")
                digest_name = csv_names[0] + ".digest.json"
                with archive.open(csv_names[0]) as member:
                    scan, content = read_csv(member)
                digest = _parse_digest(archive.read(digest_name)) if digest_name in names else None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
            raise Failed("edited", f"the ZIP archive is damaged ({exc})") from None
        return scan, digest, content, "csv"
    if path.suffix.lower() == ".csv":
        digest_path = digest_path or path.with_name(path.name + ".digest.json")
        with open(path, "rb") as raw:
            scan, content = read_csv(raw)
        digest = _parse_digest(digest_path.read_bytes()) if digest_path.is_file() else None
        return scan, digest, content, "csv"
    scan, digest, content = read_jsonl(path)
    if digest_path is not None:
        raise Unusable("--digest is for CSV exports; a JSON Lines export carries its digest as its last line")
    return scan, digest, content, "jsonl"


def _parse_digest(data: bytes) -> dict:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise Failed("edited", "the digest file is not valid JSON any more") from None
    if not isinstance(value, dict) or value.get("type") != DIGEST_TYPE:
        raise Failed("edited", "the digest file is not an export digest")
    return value


def judge(scan: Scan, digest: dict | None, content_sha256: str, fmt: str, keys: dict) -> str:
    """The one-line verdict for an intact export; raises ``Failed`` with the first problem otherwise."""
    contiguous = bool(digest and digest.get("contiguous"))
    if scan.edited:
        raise Failed("edited", scan.edited)
    if scan.reordered:
        raise Failed("reordered", scan.reordered)
    if scan.repeated:
        raise Failed("added", scan.repeated)
    if contiguous and scan.gap:
        raise Failed("removed", scan.gap)
    if contiguous and scan.unlinked:
        raise Failed("edited", scan.unlinked)
    if digest is None:
        raise Failed("unsigned", "there is no signed digest: the signature was removed")
    signature, key_fingerprint = digest.get("signature"), digest.get("key_fingerprint")
    if not signature or not isinstance(key_fingerprint, str) or not key_fingerprint:
        raise Failed("unsigned", "the digest carries no signature: it was removed")
    key = keys.get(key_fingerprint)
    if key is None:
        given = ", ".join(f"{fp[:16]}…" for fp in keys)
        raise Failed("wrong-key", f"the digest is signed by key {str(key_fingerprint)[:16]}…, "
                                  f"which is none of the given public keys ({given})")
    unsigned = {k: v for k, v in digest.items() if k != "signature"}
    try:
        raw = base64.b64decode(signature, validate=True)
        # Base64 ignores the spare bits of its last character: only the canonical text counts.
        if base64.b64encode(raw).decode() != signature:
            raise ValueError("not canonical base64")
        key.verify(raw, canonical(unsigned).encode())
    except (InvalidSignature, ValueError, TypeError):
        raise Failed("bad-signature", "the digest's signature does not verify: the digest was altered "
                                      "after it was signed") from None
    if digest.get("format") != fmt:
        raise Failed("edited", f"the digest signs a {digest.get('format')} export, this is {fmt}")
    signed_count = digest.get("count")
    if scan.count < signed_count or (scan.count and scan.first_seq != digest.get("first_seq")):
        raise Failed("removed", f"the digest signs {signed_count} events (seq {digest.get('first_seq')}–"
                                f"{digest.get('last_seq')}), the file has {scan.count} (seq {scan.first_seq}–"
                                f"{scan.last_seq})")
    if scan.count > signed_count:
        raise Failed("added", f"the digest signs {signed_count} events, the file has {scan.count}")
    if scan.last_seq != digest.get("last_seq") or scan.last_hash != digest.get("last_hash"):
        raise Failed("removed", f"the digest signs seq {digest.get('last_seq')} as the last event, "
                                f"the file ends at seq {scan.last_seq}")
    if content_sha256 != digest.get("content_sha256"):
        raise Failed("edited", "the content is not what the digest signs")
    flt = ", ".join(f"{k}={v}" for k, v in sorted((digest.get("filter") or {}).items()) if v) or "none"
    if not scan.count:
        return (f"OK: 0 events (filter: {flt}); signed by key {key_fingerprint[:16]}… "
                f"on {digest.get('exported_at')} for {digest.get('exported_by')}")
    stretch = "one unbroken stretch of the chain" if contiguous else "a filtered selection"
    return (f"OK: {scan.count} events, seq {scan.first_seq}–{scan.last_seq} ({stretch}), "
            f"last hash {scan.last_hash}; signed by key {key_fingerprint[:16]}… on {digest.get('exported_at')} "
            f"for {digest.get('exported_by')}; filter: {flt}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a DR Panel audit export offline.")
    parser.add_argument("export", type=Path, help="the .jsonl, .csv or .zip export")
    parser.add_argument("--public-key", action="append", required=True, metavar="KEY.pem",
                        help="the panel's audit public key (repeat for keys retired by a rotation)")
    parser.add_argument("--digest", type=Path, help="a CSV export's digest (default: EXPORT.digest.json)")
    args = parser.parse_args(argv)
    try:
        keys = load_keys(args.public_key)
        scan, digest, content_sha256, fmt = read_export(args.export, args.digest)
        print(judge(scan, digest, content_sha256, fmt, keys))
        return 0
    except Failed as failure:
        print(f"FAILED ({failure.reason}): {failure}")
        return 1
    except Unusable as exc:
        print(f"cannot verify: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cannot verify: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
