#!/usr/bin/env python3
"""Verify a DR Panel monthly certification offline, against a signed audit export: no Django, no network.

    python verify_certification.py certification.json EXPORT.jsonl --public-key KEY.pem [--public-key OLD.pem ...]

Three checks, in order (all from the evidence bundle the panel serves):

1. the export is intact and signed by one of the keys (``verify_export.py``, beside this file);
2. ``content_hash`` in ``certification.json`` is the SHA-256 of the canonical JSON of its
   ``record`` (sorted keys, separators ``,`` and ``:``, UTF-8, non-ASCII kept);
3. the export holds the ``certification.signed`` event of this record: its details carry the
   same ``content_hash``, certification id and attestation, and its actor is the signer.

Exit status: 0 and one line ``OK: …``; 1 and ``FAILED (<reason>): …`` (reason ``export-<why>``,
``hash-mismatch``, ``not-in-chain``, ``signer-mismatch``); 2 when a file cannot be read.
Needs Python 3.11+ and ``cryptography`` (for the export's signature).
"""

import argparse
import hashlib
import importlib.util
import json
import sys
from pathlib import Path


def _load_verify_export():
    """``verify_export.py`` from beside this file (the bundle, or compliance/), whatever ``sys.path`` says."""
    path = Path(__file__).resolve().with_name("verify_export.py")
    spec = importlib.util.spec_from_file_location("drpanel_verify_export", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


verify_export = _load_verify_export()

SIGNED_ACTION = "certification.signed"


class Failed(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def record_hash(record) -> str:
    return hashlib.sha256(verify_export.canonical(record).encode()).hexdigest()


def load_certification(path: Path) -> dict:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise verify_export.Unusable(f"cannot read {path}: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("record"), dict) \
            or not isinstance(document.get("content_hash"), str):
        raise verify_export.Unusable(f"{path} is not a DR Panel certification (no record and content_hash)")
    return document


def signing_events(export: Path):
    """The ``certification.signed`` events of a JSON Lines export (already verified intact)."""
    with open(export, "rb") as stream:
        for line in stream:
            value = json.loads(line)
            if isinstance(value, dict) and value.get("action") == SIGNED_ACTION:
                yield value


def check(document: dict, export: Path) -> str:
    stated = document["content_hash"]
    computed = record_hash(document["record"])
    if computed != stated:
        raise Failed("hash-mismatch", f"the record hashes to {computed}, certification.json states {stated}: "
                                      "the record or its hash was changed")
    matching = [e for e in signing_events(export) if (e.get("details") or {}).get("content_hash") == stated]
    if not matching:
        raise Failed("not-in-chain", f"no {SIGNED_ACTION} event in the export carries the content hash {stated}")
    event = matching[-1]
    details, seq = event["details"], event["seq"]
    if details.get("certification") != document.get("id"):
        raise Failed("not-in-chain", f"the event (seq {seq}) signs certification #{details.get('certification')}, "
                                     f"this is #{document.get('id')}")
    if event.get("actor_username") != document.get("signed_by"):
        raise Failed("signer-mismatch", f"the event (seq {seq}) was written by {event.get('actor_username')!r}, "
                                        f"certification.json names {document.get('signed_by')!r}")
    if details.get("attestation") != document.get("attestation"):
        raise Failed("signer-mismatch", f"the attestation in the event (seq {event['seq']}) differs from "
                                        "certification.json's")
    return (f"OK: certification {document.get('period')} #{document.get('id')}, content hash {stated}, "
            f"signed by {document.get('signed_by')}: recorded in the audit chain at seq {event['seq']} "
            f"(event hash {event['hash']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a DR Panel certification against its audit export.")
    parser.add_argument("certification", type=Path, help="certification.json from the bundle")
    parser.add_argument("export", type=Path, help="the JSON Lines audit export from the bundle")
    parser.add_argument("--public-key", action="append", required=True, metavar="KEY.pem",
                        help="the panel's audit public key (repeat for keys retired by a rotation)")
    args = parser.parse_args(argv)
    try:
        keys = verify_export.load_keys(args.public_key)
        scan, digest, content_sha256, fmt = verify_export.read_export(args.export, None)
        if fmt != "jsonl":
            raise verify_export.Unusable("the export must be the JSON Lines one (audit-YYYY-MM.jsonl)")
        try:
            verify_export.judge(scan, digest, content_sha256, fmt, keys)
        except verify_export.Failed as failure:
            raise Failed(f"export-{failure.reason}", f"the audit export is not intact: {failure}") from None
        print(check(load_certification(args.certification), args.export))
        return 0
    except Failed as failure:
        print(f"FAILED ({failure.reason}): {failure}")
        return 1
    except (verify_export.Unusable, OSError) as exc:
        print(f"cannot verify: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
