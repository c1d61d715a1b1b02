"""The audit log: one append-only, hash-chained record of everything that happened.

The bottom layer above the core of ``drpanel``: every app may import it, and it imports
nothing from ``backups``, ``restores`` or the rest of ``compliance``.

- ``record`` — ``audit_record``, the one writer, and the version-1 encoding of an event;
- ``actions`` — every action the code writes, each with a description;
- ``canonical`` — the canonical JSON every hash and signature is computed over;
- ``models`` — the ``AuditEvent`` table;
- ``query`` / ``rows`` — reading the log (filters, pages, streamed rows);
- ``verify`` / ``checkpoints`` / ``signing`` — recomputing the chain, signed checkpoints, the Ed25519 key;
- ``export`` — signed exports (``compliance/verify_export.py`` checks them offline);
- ``signals`` / ``admin`` / ``jobs`` / ``demo`` — users and rights audited, the admin page, the
  hourly checkpoint, the demo seed.

The writer's names are importable from here (``from compliance.audit import audit_record``).
They load on first use, so that ``rows`` (imported by verification worker processes) and
``signing`` (imported by the settings) stay free of Django's models.
"""

import importlib

_LAZY = {
    "ANONYMOUS_ACTOR": "record",
    "CHAIN_LOCK_ID": "record",
    "ENCODING_VERSION": "record",
    "GENESIS_HASH": "record",
    "REDACTED": "record",
    "SYSTEM_ACTOR": "record",
    "audit_record": "record",
    "canonical_time": "record",
    "clean_details": "record",
    "clean_text": "record",
    "compute_hash": "record",
    "event_fields": "record",
    "canonical_bytes": "canonical",
    "canonical_json": "canonical",
    "AuditAction": "actions",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
