"""The canonical JSON every audit hash and signature is computed over. No Django here.

Sorted keys, no whitespace (separators ``,`` and ``:``), non-ASCII kept as UTF-8, and
NaN or infinity refused: the same bytes as ``json.dumps(value, sort_keys=True,
separators=(",", ":"), ensure_ascii=False, allow_nan=False)``. Event hashes
(``compliance.audit.record``), streamed rows (``rows``), export lines and digests
(``export``), signed documents (``signing``) and certification hashes use it;
``compliance/verify_export.py`` repeats the rule because it must stay one self-contained file.

It calls json's C encoder directly: ``JSONEncoder.encode`` builds a new C encoder per
call, which costs as much again as the encoding itself at a million rows. Same bytes
either way (``tests/compliance/test_audit_chain.py`` compares them).
"""

import json
from json.encoder import encode_basestring

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

if json.encoder.c_make_encoder is not None:
    # Arguments: no circular-reference markers, default, string encoder, indent, key and item
    # separators, sort_keys, skipkeys, allow_nan.
    _C_ENCODE = json.encoder.c_make_encoder(None, _ENCODER.default, encode_basestring, None, ":", ",", True, False,
                                            False)

    def canonical_json(value) -> str:
        """The canonical text of a JSON value."""
        return "".join(_C_ENCODE(value, 0))
else:  # pragma: no cover - CPython always has the accelerator
    canonical_json = _ENCODER.encode


def canonical_bytes(value) -> bytes:
    """The canonical UTF-8 bytes of a JSON value (what is hashed or signed)."""
    return canonical_json(value).encode()
