"""Demo part of the audit log: the signing key under var/, a first checkpoint, and how to check an export."""

from compliance.audit.checkpoints import checkpoint_write
from compliance.audit.signing import current_public_key, fingerprint


def seed(out) -> None:
    """Make sure the signing key exists, checkpoint the head, and tell auditors how to verify."""
    key_fingerprint = fingerprint(current_public_key())
    _, message = checkpoint_write()
    out.write(f"Audit log: signing key {key_fingerprint[:16]}…; {message}")
    out.write("  Auditors: export from /audit/, then "
              "`python compliance/verify_export.py EXPORT --public-key KEY.pem` (see docs/auditor.md).")
