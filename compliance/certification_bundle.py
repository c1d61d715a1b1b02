"""The evidence bundle of a signed certification: one ZIP an auditor checks offline.

Inside ``drpanel-certification-YYYY-MM.zip``:

- ``certification.json`` — the record, its ``content_hash``, who signed, when, the attestation
  (``compliance.certifications.certification_document``);
- ``audit-YYYY-MM.jsonl`` — the signed JSON Lines export of the audit log from the month's
  first moment up to this download (so it holds the month, the ``certification.signed``
  event carrying the content hash, and this download), the same format
  ``compliance/verify_export.py`` verifies;
- ``public-key.pem`` — the panel's current audit public key (it signed the export's digest);
- ``README.txt`` — the offline verification commands;
- ``verify_export.py`` and ``verify_certification.py`` — copies of the panel's offline
  verifiers (an auditor may prefer their own copies from the source repository).

Every download is audited (``certification.bundle_downloaded``, then the export's own
``audit.exported``) before its first byte is made.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

from django.db import transaction
from django.http import FileResponse

from compliance.audit import audit_record
from compliance.audit.actions import AuditAction
from compliance.audit.export import audit_export_start, jsonl_chunks
from compliance.audit.query import AuditFilter
from compliance.audit.signing import current_public_key, fingerprint, public_pem
from compliance.certification_record import month_bounds
from compliance.certifications import certification_document
from compliance.models import Certification
from drpanel.permissions import Cap, require_cap

HERE = Path(__file__).resolve().parent
VERIFIERS = ("verify_export.py", "verify_certification.py")

README = """DR Panel - evidence bundle of the DR certification {period}
================================================================

certification.json     the signed record: content_hash, signed_by, signed_at, attestation, record
{export_padded}   the audit log from {start} up to this download, one event per line,
                       its signed digest on the last line
public-key.pem         the panel's audit public key (fingerprint {fingerprint})
verify_export.py       offline verifier of the export (Python 3.11+ and the 'cryptography' package)
verify_certification.py  offline verifier of the certification against the export

Check it offline (no panel, no network). Prefer your own copies of the two scripts
(compliance/ in the panel's source); the copies here are for convenience.

  python3 -m pip install cryptography        # if it is not installed yet
  python3 verify_export.py {export} --public-key public-key.pem
  python3 verify_certification.py certification.json {export} --public-key public-key.pem

The first command recomputes every event's hash, checks the chain links and the signature
of the digest. The second runs the same check, then recomputes the SHA-256 of the canonical
JSON of certification.json's "record" (sorted keys, separators "," and ":", UTF-8), compares
it with "content_hash", and finds the audit event "certification.signed" of this record whose
details carry that hash, the same signer and the same attestation. Each prints one line:
"OK: ..." (exit 0) or "FAILED (<reason>): ..." (exit 1).

Compare public-key.pem's fingerprint with the one the panel publishes
(GET /api/v1/audit/public-keys, or the audit page) before trusting it.
Downloaded by {downloaded_by} at {downloaded_at}.
"""


def bundle_name(cert: Certification) -> str:
    return f"drpanel-certification-{cert.label}"


def certification_bundle(*, actor, cert: Certification, request=None):
    """Record the download and build the ZIP (a temporary file, read back as the response streams)."""
    require_cap(actor, Cap.READ_AUDIT, action="certification.bundle", obj=cert)
    start, _ = month_bounds(cert.year, cert.month)
    with transaction.atomic():
        audit_record(actor=actor, action=AuditAction.CERTIFICATION_BUNDLE_DOWNLOADED, obj=cert, request=request,
                     details={"certification": cert.pk, "period": cert.label, "content_hash": cert.content_hash})
    plan = audit_export_start(actor=actor, format="jsonl", flt=AuditFilter(start=start), request=request,
                              via=f"certification bundle {cert.label}")
    export_name = f"audit-{cert.label}.jsonl"
    key = current_public_key()
    out = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the response, which closes it
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("certification.json",
                         json.dumps(certification_document(cert), indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        with archive.open(export_name, "w", force_zip64=True) as member:
            for chunk in jsonl_chunks(plan):
                member.write(chunk)
        archive.writestr("public-key.pem", public_pem(key))
        archive.writestr("README.txt", README.format(
            period=cert.label, export=export_name, export_padded=export_name.ljust(20), start=start.isoformat(),
            fingerprint=fingerprint(key), downloaded_by=plan.exported_by,
            downloaded_at=plan.exported_at.isoformat()))
        for name in VERIFIERS:
            archive.write(HERE / name, name)
    out.seek(0)
    return out


def bundle_response(*, actor, cert: Certification, request=None) -> FileResponse:
    data = certification_bundle(actor=actor, cert=cert, request=request)
    return FileResponse(data, as_attachment=True, filename=f"{bundle_name(cert)}.zip", content_type="application/zip")
