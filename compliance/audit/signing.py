"""The panel's Ed25519 audit key: signs checkpoints and export digests.

A signed document is a JSON object carrying ``key_fingerprint`` (lowercase hex SHA-256 of
the raw 32-byte public key) and ``signature`` (base64 of the Ed25519 signature over the
canonical bytes of the object *without* ``signature``: sorted keys, separators ``,`` and
``:``, UTF-8). The fingerprint is part of what is signed, so a signature names its key.

The private key comes from ``DRPANEL_AUDIT_SIGNING_KEY`` / ``_FILE`` (PEM); development
generates one under ``var/`` on first use. After a rotation, the old public key goes into
``DRPANEL_AUDIT_RETIRED_KEYS_DIR`` so what it signed stays verifiable.

Only ``cryptography`` (and the standard library) is needed at import time (``drpanel/settings.py`` uses
``load_private_key`` to refuse a malformed key at start-up).
"""

import base64
import hashlib
import os
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.db import transaction

from compliance.audit.actions import AuditAction
from compliance.audit.canonical import canonical_bytes


class SigningKeyError(Exception):
    """The audit signing key is missing, unreadable or not Ed25519."""


def _pem_bytes(pem: str | bytes) -> bytes:
    text = pem.decode() if isinstance(pem, bytes) else pem
    # A PEM passed through an environment variable often arrives with literal "\n".
    return text.replace("\\n", "\n").strip().encode() + b"\n"


def load_private_key(pem: str | bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_pem_bytes(pem), password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"not a readable unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"must be an Ed25519 key, not {type(key).__name__.removeprefix('_')}")
    return key


def load_public_key(pem: str | bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(_pem_bytes(pem))
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"not a readable PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError("must be an Ed25519 public key")
    return key


def fingerprint(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def private_pem(private_key: Ed25519PrivateKey) -> str:
    return private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode()


def write_new_key(path: Path) -> bool:
    """Create a new Ed25519 key at ``path`` (mode 0600) unless one is there; True if created.

    Written to a temporary file then linked into place, so concurrent first uses (web and
    workers starting together) end up with one key and nobody reads a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return False
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".audit-key-")
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, private_pem(Ed25519PrivateKey.generate()).encode())
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def signing_key() -> Ed25519PrivateKey:
    """The current private key (from the setting, or the development key under ``var/``)."""
    if settings.AUDIT_SIGNING_KEY:
        return load_private_key(settings.AUDIT_SIGNING_KEY)
    if settings.PRODUCTION:
        raise SigningKeyError("DRPANEL_AUDIT_SIGNING_KEY is required in production")
    path = Path(settings.AUDIT_SIGNING_KEY_DEV_PATH)
    write_new_key(path)
    return load_private_key(path.read_bytes())


def current_public_key() -> Ed25519PublicKey:
    return signing_key().public_key()


def retired_public_keys() -> list[tuple[str, Ed25519PublicKey]]:
    """``(file name, key)`` for every ``*.pem`` in the retired keys directory."""
    directory = Path(settings.AUDIT_RETIRED_KEYS_DIR)
    if not directory.is_dir():
        return []
    keys = []
    for path in sorted(directory.glob("*.pem")):
        try:
            keys.append((path.name, load_public_key(path.read_bytes())))
        except SigningKeyError as exc:
            raise SigningKeyError(f"retired key {path}: {exc}") from None
    return keys


def known_public_keys() -> dict[str, Ed25519PublicKey]:
    """Every public key whose signatures the panel accepts, by fingerprint (current first)."""
    current = current_public_key()
    keys = {fingerprint(current): current}
    for _, key in retired_public_keys():
        keys.setdefault(fingerprint(key), key)
    return keys


def sign(document: dict, key: Ed25519PrivateKey | None = None) -> dict:
    """Return ``document`` with ``key_fingerprint`` and ``signature`` added."""
    key = key or signing_key()
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    unsigned["key_fingerprint"] = fingerprint(key.public_key())
    signature = key.sign(canonical_bytes(unsigned))
    return {**unsigned, "signature": base64.b64encode(signature).decode()}


def check_signature(document: dict, keys: dict[str, Ed25519PublicKey]) -> str | None:
    """``None`` if ``document`` is signed by one of ``keys``, else the reason it is not."""
    signature = document.get("signature")
    key_fingerprint = document.get("key_fingerprint")
    if not signature or not key_fingerprint:
        return "it carries no signature"
    key = keys.get(key_fingerprint)
    if key is None:
        return f"it is signed by an unknown key ({str(key_fingerprint)[:16]}…)"
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    try:
        raw = base64.b64decode(signature, validate=True)
        # Base64 ignores the spare bits of its last character: only the canonical text counts.
        if base64.b64encode(raw).decode() != signature:
            raise ValueError("not canonical base64")
        key.verify(raw, canonical_bytes(unsigned))
    except (InvalidSignature, ValueError, TypeError):
        return "its signature does not verify"
    return None


def signing_key_rotate(*, actor) -> tuple[str, str]:
    """Development: retire the key under ``var/`` and make a new one; returns ``(old, new)`` fingerprints.

    The old public key goes to the retired keys directory first, so everything it signed
    stays verifiable; the switch is recorded (``audit.key_rotated``) in the same transaction.
    In production the key comes from the environment: rotate it there (docs/auditor.md, "Audit log").
    """
    # Here, not at the top: the settings import this module before the apps (and the audit model) load.
    from compliance.audit.record import audit_record

    if settings.AUDIT_SIGNING_KEY:
        raise SigningKeyError("the signing key comes from DRPANEL_AUDIT_SIGNING_KEY: rotate it there "
                              "(put the old public key in DRPANEL_AUDIT_RETIRED_KEYS_DIR)")
    old = signing_key()
    old_fingerprint = fingerprint(old.public_key())
    retired_dir = Path(settings.AUDIT_RETIRED_KEYS_DIR)
    retired_dir.mkdir(parents=True, exist_ok=True)
    (retired_dir / f"{old_fingerprint}.pem").write_text(public_pem(old.public_key()))
    path = Path(settings.AUDIT_SIGNING_KEY_DEV_PATH)
    staged = path.with_name(path.name + ".new")
    staged.unlink(missing_ok=True)
    write_new_key(staged)
    new_fingerprint = fingerprint(load_private_key(staged.read_bytes()).public_key())
    with transaction.atomic():
        audit_record(actor=actor, action=AuditAction.AUDIT_KEY_ROTATED,
                     details={"retired_key": old_fingerprint, "new_key": new_fingerprint})
        os.replace(staged, path)
    return old_fingerprint, new_fingerprint
